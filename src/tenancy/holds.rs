//! BAK-4: tenants held while a restore replaces their state. A held
//! tenant's requests answer `503` with `Retry-After` instead of writing
//! into a state about to be replaced; every other tenant is untouched.
//! Held in this process's memory: the node that runs the restore holds
//! it (with several nodes on PostgreSQL, the restore's write holds the
//! tenant's sequence row, so other nodes' writes wait for it and land on
//! the restored state).
//!
//! BAK-4 too: tenants *refused* because their stored data failed an
//! integrity check (`backup::integrity`) answer `503` until a restore
//! replaces their state, or an operator lifts the refusal. A refusal is
//! kept by the process that found it (the node running the check), which
//! runs one check at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How long a client is asked to wait before trying again.
pub const RETRY_AFTER_SECONDS: u64 = 5;
/// How long a client of a refused tenant is asked to wait.
pub const REFUSED_RETRY_AFTER_SECONDS: u64 = 60;

/// Why a tenant is refused, and since when.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refusal {
    pub tenant: String,
    pub reason: String,
    pub since: String,
}

#[derive(Default)]
pub struct Holds {
    held: Mutex<HashMap<String, Instant>>,
    /// How many are held: every request asks, almost always of none, so
    /// that answer needs no lock.
    count: AtomicUsize,
    refused: Mutex<HashMap<String, Refusal>>,
    refused_count: AtomicUsize,
    /// One integrity check at a time in this process: two checks finding
    /// the same damage would otherwise refuse a tenant the other had just
    /// restored and lifted, or mail the operators twice.
    checks: tokio::sync::Mutex<()>,
}

/// Releases its hold when dropped (the restore ended, well or not).
pub struct Hold {
    holds: Arc<Holds>,
    tenant: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Ok(mut held) = self.holds.held.lock() {
            held.remove(&self.tenant);
            self.holds.count.store(held.len(), Ordering::SeqCst);
        }
    }
}

impl Holds {
    /// Waits for any integrity check of this process to end; the next one
    /// runs while the guard lives.
    pub async fn checking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.checks.lock().await
    }

    /// Holds `tenant` until the returned guard drops; `None` when it is
    /// held already (a restore runs).
    pub fn hold(self: &Arc<Self>, tenant: &str) -> Option<Hold> {
        let mut held = self.held.lock().ok()?;
        if held.contains_key(tenant) {
            return None;
        }
        held.insert(tenant.to_owned(), Instant::now());
        self.count.store(held.len(), Ordering::SeqCst);
        Some(Hold {
            holds: self.clone(),
            tenant: tenant.to_owned(),
        })
    }

    /// Whether `tenant` is held now.
    pub fn is_held(&self, tenant: &str) -> bool {
        self.count.load(Ordering::SeqCst) > 0
            && self
                .held
                .lock()
                .map(|held| held.contains_key(tenant))
                .unwrap_or(false)
    }

    /// Refuses `tenant` for `reason` until [`Holds::lift`]; whether it was
    /// not refused already.
    pub fn refuse(&self, tenant: &str, reason: &str) -> bool {
        let Ok(mut refused) = self.refused.lock() else {
            return false;
        };
        let new = !refused.contains_key(tenant);
        if new {
            refused.insert(
                tenant.to_owned(),
                Refusal {
                    tenant: tenant.to_owned(),
                    reason: reason.to_owned(),
                    since: crate::clock::now(),
                },
            );
        }
        self.refused_count.store(refused.len(), Ordering::SeqCst);
        new
    }

    /// Ends `tenant`'s refusal; whether there was one.
    pub fn lift(&self, tenant: &str) -> bool {
        let Ok(mut refused) = self.refused.lock() else {
            return false;
        };
        let was = refused.remove(tenant).is_some();
        self.refused_count.store(refused.len(), Ordering::SeqCst);
        was
    }

    /// Why `tenant` is refused, if it is.
    pub fn refusal(&self, tenant: &str) -> Option<Refusal> {
        if self.refused_count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        self.refused.lock().ok()?.get(tenant).cloned()
    }

    /// Every refusal, oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        let mut all: Vec<Refusal> = self
            .refused
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.since.cmp(&b.since));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_single_and_ends_with_its_guard() {
        let holds = Arc::new(Holds::default());
        let hold = holds.hold("t1").unwrap();
        assert!(holds.is_held("t1") && !holds.is_held("t2"));
        assert!(holds.hold("t1").is_none());
        drop(hold);
        assert!(!holds.is_held("t1"));
        assert!(holds.hold("t1").is_some());
    }

    #[test]
    fn a_refusal_lasts_until_lifted_and_keeps_its_first_reason() {
        let holds = Holds::default();
        assert!(holds.refusal("t1").is_none());
        assert!(holds.refuse("t1", "journal gap"));
        assert!(!holds.refuse("t1", "another"));
        assert_eq!(holds.refusal("t1").unwrap().reason, "journal gap");
        assert!(holds.refusal("t2").is_none());
        assert_eq!(holds.refusals().len(), 1);
        assert!(holds.lift("t1") && !holds.lift("t1"));
        assert!(holds.refusal("t1").is_none());
    }
}
