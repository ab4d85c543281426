//! BAK-4: tenants held while a restore replaces their state. A held
//! tenant's requests answer `503` with `Retry-After` instead of writing
//! into a state about to be replaced; every other tenant is untouched.
//! Held in this process's memory: the node that runs the restore holds
//! it (with several nodes on PostgreSQL, the restore's write holds the
//! tenant's sequence row, so other nodes' writes wait for it and land on
//! the restored state).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How long a client is asked to wait before trying again.
pub const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Default)]
pub struct Holds {
    held: Mutex<HashMap<String, Instant>>,
    /// How many are held: every request asks, almost always of none, so
    /// that answer needs no lock.
    count: AtomicUsize,
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
}
