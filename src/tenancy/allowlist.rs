//! Tenant IP allow-lists (NET-2): a tenant admin names the addresses and
//! CIDR blocks its users may come from (`ip_allowlist` in the tenant's
//! settings; empty, everyone). A request authenticated for the tenant from
//! anywhere else is refused with `403` before any data is read, and so are
//! password login and invitation acceptance; each refusal is an audit event
//! (outcome `denied`) besides its access-log row. The client address is the
//! one the trusted proxies resolve (`RequestMeta::ip`).
//!
//! The lists are cached per tenant and forgotten when a tenant's settings
//! change (on every node: `Store::watch`), so the check costs no database
//! round trip on a normal request. A change nobody announces (the CLI
//! beside a server on SQLite) holds within [`LIST_TTL`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::TrustedProxies;
use crate::context::{Actor, Outcome, Permit, RequestMeta, TenantScope};
use crate::store::{Store, StoreError, db};

/// The schema migration that brought the lists.
pub const SCHEMA: i64 = 6;

/// The entity kind whose changes end cached lists.
pub const SETTINGS_KIND: &[&str] = &["tenant_settings"];

/// How long a list read is trusted at most.
pub const LIST_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Tenants' lists, as last read, and when.
#[derive(Default)]
pub struct AllowLists {
    lists: Mutex<HashMap<String, (Arc<List>, std::time::Instant)>>,
    /// Moves on every forgetting, so that a read that raced a change is
    /// not kept.
    epoch: std::sync::atomic::AtomicU64,
}

/// One tenant's list: the entries as saved, and parsed.
pub struct List {
    pub entries: Vec<String>,
    parsed: TrustedProxies,
}

impl List {
    pub fn parse(entries: Vec<String>) -> Result<List, String> {
        let parsed = TrustedProxies::parse(&entries)?;
        Ok(List { entries, parsed })
    }

    /// Whether `ip` may come in: an empty list lets everyone in; an
    /// address that is not known (no peer) is let in by none.
    pub fn admits(&self, ip: Option<&str>) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        ip.and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| self.parsed.contains(ip))
    }
}

/// Why a request was turned away.
#[derive(Debug, thiserror::Error)]
pub enum AllowListError {
    #[error("this tenant admits requests only from its allowed addresses")]
    NotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AllowLists {
    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The tenant's list, from the cache or read once.
    pub async fn of(&self, store: &Store, scope: &TenantScope) -> Result<Arc<List>, StoreError> {
        if let Some(list) = self.lists.lock().ok().and_then(|lists| {
            lists
                .get(scope.id_str())
                .filter(|(_, read)| read.elapsed() < LIST_TTL)
                .map(|(list, _)| list.clone())
        }) {
            return Ok(list);
        }
        if !store.schema_has(SCHEMA) {
            // Held back before the lists existed: there are none.
            return List::parse(Vec::new())
                .map(Arc::new)
                .map_err(StoreError::Corrupt);
        }
        let epoch = self.epoch();
        let mut tx = store.read_each(scope).await?;
        let stored: Option<String> =
            db::query_scalar("SELECT ip_allowlist FROM tenant_settings WHERE tenant_id = $1")
                .bind(scope.id_str())
                .fetch_optional(tx.conn())
                .await?;
        let entries: Vec<String> = match stored {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("ip_allowlist: {e}")))?,
            None => Vec::new(),
        };
        let list = Arc::new(List::parse(entries).map_err(StoreError::Corrupt)?);
        if let Ok(mut lists) = self.lists.lock()
            && self.epoch() == epoch
        {
            lists.insert(
                scope.id_str().to_owned(),
                (list.clone(), std::time::Instant::now()),
            );
        }
        Ok(list)
    }

    /// Forgets `tenant`'s list (every list when `None`).
    pub fn forget(&self, tenant: Option<&str>) {
        if let Ok(mut lists) = self.lists.lock() {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match tenant {
                Some(tenant) => {
                    lists.remove(tenant);
                }
                None => lists.clear(),
            }
        }
    }

    /// Lets the request in, or records the refusal in the tenant's trail
    /// and turns it away. `actor` is who it would have been.
    pub async fn admit(
        &self,
        store: &Store,
        scope: &TenantScope,
        actor: Actor,
        meta: &RequestMeta,
        action: &'static str,
    ) -> Result<(), AllowListError> {
        let list = self.of(store, scope).await?;
        if list.admits(meta.ip.as_deref()) {
            return Ok(());
        }
        let permit = Permit::authentication(scope.clone(), actor);
        let ip = meta.ip.clone().unwrap_or_else(|| "unknown".to_owned());
        store
            .write(&permit, meta, action, move |tx| {
                Box::pin(async move {
                    tx.set_outcome(Outcome::Denied);
                    tx.set_target("ip", ip);
                    Ok::<_, StoreError>(())
                })
            })
            .await?;
        tracing::warn!(target: "security", tenant = scope.id_str(), ip = ?meta.ip, action, "request from outside the tenant's allowed addresses");
        Err(AllowListError::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_admits_everyone_and_a_list_only_its_addresses() {
        let everyone = List::parse(vec![]).unwrap();
        assert!(everyone.admits(Some("198.51.100.7")));
        assert!(everyone.admits(None));
        let office = List::parse(vec!["203.0.113.0/24".into(), "2001:db8::/32".into()]).unwrap();
        assert!(office.admits(Some("203.0.113.9")));
        assert!(office.admits(Some("2001:db8::1")));
        assert!(!office.admits(Some("203.0.114.1")));
        assert!(!office.admits(None));
        assert!(List::parse(vec!["300.1.1.1/8".into()]).is_err());
    }
}
