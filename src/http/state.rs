//! What every handler is given: the application's state, and the id of
//! the request being served. The domains' handlers take it from here, so
//! that they import the HTTP toolkit (`api`, `error`, `extract`, `state`)
//! and never the wiring in `http/mod.rs` that merges their routers.

use std::sync::Arc;

use super::client_ip::TrustedProxies;
use crate::audit::access_log::AccessLogger;
use crate::config::Config;
use crate::crypto::{Keyring, Vault};
use crate::files::Objects;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub vault: Vault,
    pub objects: Objects,
    pub config: Arc<Config>,
    pub access_log: AccessLogger,
    pub proxies: Arc<TrustedProxies>,
    /// Recent session checks, forgotten when sessions or users change.
    pub sessions: Arc<crate::identity::SessionCache>,
    /// Recent API key checks, forgotten when keys, roles or tenants change.
    pub api_keys: Arc<crate::identity::api_keys::KeyCache>,
    /// Password-attempt limits (NET-3).
    pub limits: Arc<super::limits::RateLimits>,
    /// Automatic bans of abusive client addresses (NET-3).
    pub bans: Arc<super::bans::Bans>,
    /// Tenants' IP allow-lists (NET-2), cached.
    pub allowlists: Arc<crate::tenancy::allowlist::AllowLists>,
    /// The mail relay and outbox delivery (IAM-2).
    pub mailer: Arc<crate::mail::Mailer>,
    /// The jobs this process schedules (OPS-1).
    pub schedule: Arc<crate::ops::Schedule>,
    /// Tenants held while a restore replaces their state (BAK-4).
    pub holds: Arc<crate::tenancy::holds::Holds>,
    /// Set on a warm standby (`serve --follow`, BAK-5): writes are refused
    /// while it follows.
    pub standby: Option<Arc<crate::backup::follow::Standby>>,
}

impl AppState {
    /// `503` with `Retry-After` while the tenant is being restored, or is
    /// refused after a failed integrity check.
    pub fn admit_unheld(&self, tenant: &str) -> Result<(), super::ApiError> {
        if self.holds.is_held(tenant) {
            return Err(super::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "tenant-restoring",
                "this tenant is being restored from its backup; try again shortly",
            )
            .with_retry_after(crate::tenancy::holds::RETRY_AFTER_SECONDS));
        }
        if self.holds.refusal(tenant).is_some() {
            return Err(super::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "tenant-integrity",
                "this tenant's stored data failed an integrity check; it is refused until it is \
                 restored from its backup (the operators have been told)",
            )
            .with_retry_after(crate::tenancy::holds::REFUSED_RETRY_AFTER_SECONDS));
        }
        Ok(())
    }
}

impl AppState {
    /// Where identity's mails go out from.
    pub fn post(&self) -> crate::identity::Post {
        crate::identity::Post {
            mailer: self.mailer.clone(),
            vault: self.vault.clone(),
        }
    }

    /// The file service over this state's store, keys and object store.
    pub fn files(&self) -> crate::files::Files {
        crate::files::Files {
            store: self.store.clone(),
            vault: self.vault.clone(),
            objects: self.objects.clone(),
        }
    }
}

tokio::task_local! {
    /// The id of the request being served, for problem bodies.
    pub(crate) static REQUEST_ID: String;
}
