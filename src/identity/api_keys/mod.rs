//! ACC-1: API keys. A key is a tenant's credential for a program: it acts
//! with the roles it names — never more than its maker may do — until it
//! expires or is revoked. `POST /api/v1/api-keys` returns `sr_key_…` once;
//! only its SHA-256 is stored. It is used as `Authorization: Bearer`, its
//! requests pass the tenant's IP allow-list and rate limits as a user's do,
//! and the trail records it as actor type `api_key`. When and from where it
//! was last used is kept (at most once a minute, beside the key).
//!
//! A key has no account of its own: no `/me`, sessions or second factors,
//! and no step-up, so operations that ask for a fresh second factor refuse
//! it.

pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::IdentityError;
use super::tokens::{OpaqueToken, TokenKind};
use crate::access::roles::{self, RoleError};
use crate::access::{Abilities, Principal, PrincipalKind, held_roles};
use crate::context::{Permit, RequestMeta, TenantId, TenantScope};
use crate::store::db;
use crate::store::{Change, JournalOp, Store, StoreError};

/// The entity kinds whose changes end cached key checks.
pub const KEY_KINDS: &[&str] = &["api_key", "role", "tenant"];

/// Longest lifetime a key may be given.
pub const MAX_DAYS: i64 = 730;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("name must be 1-100 characters")]
    InvalidName,
    #[error("expires_at must be an RFC 3339 time in the future, at most {MAX_DAYS} days away")]
    InvalidExpiry,
    #[error("no such API key")]
    NotFound,
    #[error("the API key is revoked already")]
    Revoked,
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for KeyError {
    fn from(e: db::Error) -> Self {
        KeyError::Store(e.into())
    }
}

/// A key as the API lists it: never its secret.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub created_by: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub last_used_ip: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

impl ApiKey {
    fn from_row(row: &db::Row) -> Result<ApiKey, db::Error> {
        let roles: String = row.try_get("roles")?;
        let expires_at: Option<String> = row.try_get("expires_at")?;
        let revoked_at: Option<String> = row.try_get("revoked_at")?;
        let now = crate::clock::now();
        let state = if revoked_at.is_some() {
            "revoked"
        } else if expires_at.as_deref().is_some_and(|e| e <= now.as_str()) {
            "expired"
        } else {
            "active"
        };
        Ok(ApiKey {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            roles: held_roles(&roles),
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            expires_at,
            revoked_at,
            last_used_at: row.try_get("last_used_at")?,
            last_used_ip: row.try_get("last_used_ip")?,
            state,
        })
    }

    fn image(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "roles": self.roles.join(","),
            "created_by": self.created_by, "created_at": self.created_at,
            "expires_at": self.expires_at, "revoked_at": self.revoked_at,
        })
    }
}

const SELECT: &str = "SELECT k.id, k.name, k.roles, k.created_by, k.created_at, k.expires_at, \
     k.revoked_at, u.last_used_at, u.last_used_ip \
     FROM api_keys k LEFT JOIN api_key_uses u ON u.key_id = k.id";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub roles: Vec<String>,
    /// RFC 3339; `null` for a key that never expires (the posture report
    /// flags those older than `api_key_max_age_days`).
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A new key and its secret, shown once.
#[derive(Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

pub async fn create(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    maker: &Abilities,
    new: NewKey,
) -> Result<CreatedKey, KeyError> {
    let name = new.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(KeyError::InvalidName);
    }
    let expires_at = match new.expires_at.as_deref() {
        None => None,
        Some(text) => {
            let at = crate::clock::parse_rfc3339(text).ok_or(KeyError::InvalidExpiry)?;
            let now = time::OffsetDateTime::now_utc();
            if at <= now || at > now + time::Duration::days(MAX_DAYS) {
                return Err(KeyError::InvalidExpiry);
            }
            Some(crate::clock::format(at))
        }
    };
    let token = OpaqueToken::generate(TokenKind::ApiKey, permit.scope().tenant_id());
    let secret_hash = token.hash();
    let secret = token.reveal();
    let maker = maker.clone();
    let created_by = permit.actor().id.clone();
    store
        .write(permit, meta, "api_key.create", move |tx| {
            Box::pin(async move {
                let (roles, _) = roles::assignable(tx, &new.roles, &maker).await?;
                let key = ApiKey {
                    id: uuid::Uuid::now_v7().to_string(),
                    name,
                    roles: held_roles(&roles),
                    created_by,
                    created_at: crate::clock::now(),
                    expires_at,
                    revoked_at: None,
                    last_used_at: None,
                    last_used_ip: None,
                    state: "active",
                };
                db::query(
                    "INSERT INTO api_keys (id, tenant_id, name, secret_hash, roles, created_by, \
                     created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&key.id)
                .bind(tx.scope().id_str().to_owned())
                .bind(&key.name)
                .bind(&secret_hash)
                .bind(&roles)
                .bind(&key.created_by)
                .bind(&key.created_at)
                .bind(&key.expires_at)
                .execute(tx.conn())
                .await?;
                tx.record(Change::of(
                    "api_key",
                    key.id.clone(),
                    JournalOp::Insert,
                    None,
                    Some(key.image()),
                ));
                tx.set_target("api_key", key.id.clone());
                Ok(CreatedKey { key, secret })
            })
        })
        .await
}

pub async fn list(store: &Store, permit: &Permit) -> Result<Vec<ApiKey>, KeyError> {
    let mut tx = store.read(permit.scope()).await?;
    let rows = db::query(format!(
        "{SELECT} WHERE k.tenant_id = $1 ORDER BY k.created_at, k.id"
    ))
    .bind(permit.scope().id_str())
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .iter()
        .map(ApiKey::from_row)
        .collect::<Result<_, _>>()?)
}

pub async fn get(store: &Store, permit: &Permit, id: &str) -> Result<ApiKey, KeyError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(KeyError::NotFound);
    }
    let mut tx = store.read(permit.scope()).await?;
    let row = db::query(format!("{SELECT} WHERE k.tenant_id = $1 AND k.id = $2"))
        .bind(permit.scope().id_str())
        .bind(id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(KeyError::NotFound)?;
    Ok(ApiKey::from_row(&row)?)
}

/// Revokes a key: its next request is refused, on every node.
pub async fn revoke(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    id: &str,
) -> Result<ApiKey, KeyError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(KeyError::NotFound);
    }
    let id = id.to_owned();
    store
        .write(permit, meta, "api_key.revoke", move |tx| {
            Box::pin(async move {
                let row = db::query(format!("{SELECT} WHERE k.tenant_id = $1 AND k.id = $2"))
                    .bind(tx.scope().id_str().to_owned())
                    .bind(&id)
                    .fetch_optional(tx.conn())
                    .await?
                    .ok_or(KeyError::NotFound)?;
                let before = ApiKey::from_row(&row)?;
                if before.revoked_at.is_some() {
                    return Err(KeyError::Revoked);
                }
                let mut after = before.clone();
                after.revoked_at = Some(crate::clock::now());
                after.state = "revoked";
                db::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3")
                    .bind(&after.revoked_at)
                    .bind(tx.scope().id_str().to_owned())
                    .bind(&id)
                    .execute(tx.conn())
                    .await?;
                tx.record(Change::of(
                    "api_key",
                    id.clone(),
                    JournalOp::Update,
                    Some(before.image()),
                    Some(after.image()),
                ));
                tx.set_target("api_key", id.clone());
                Ok(after)
            })
        })
        .await
}

/// Whether `bearer` is shaped as an API key (`sr_key_…`).
pub fn is_api_key(bearer: &str) -> bool {
    bearer.starts_with("sr_key_")
}

/// A key check, as [`KeyCache`] keeps it.
#[derive(Clone)]
struct LiveKey {
    tenant: TenantId,
    id: String,
    name: String,
    roles: Arc<[String]>,
    abilities: Arc<Abilities>,
    expires_at: Option<String>,
}

/// Recent key checks by secret hash, reused for at most a second and
/// forgotten when a key, a role or the tenant changes (as session checks
/// are), so that a revocation ends a key's next request.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (LiveKey, Instant)>>,
    epoch: std::sync::atomic::AtomicU64,
    /// When each key's use was last written, by key id.
    uses: Mutex<HashMap<String, Instant>>,
}

const KEY_CHECK_TTL: Duration = Duration::from_secs(1);
const KEY_CACHE_MAX: usize = 10_000;
/// How often a key's last use is written at most.
const USE_EVERY: Duration = Duration::from_secs(60);

impl KeyCache {
    /// Forgets the checks of `tenant` (of every tenant when `None`).
    pub fn forget(&self, tenant: Option<&str>) {
        if let Ok(mut entries) = self.entries.lock() {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match tenant {
                Some(tenant) => entries.retain(|_, (k, _)| k.tenant.to_string() != tenant),
                None => entries.clear(),
            }
        }
    }

    fn get(&self, hash: &str) -> Option<LiveKey> {
        let now = crate::clock::now();
        let entries = self.entries.lock().ok()?;
        let (key, at) = entries.get(hash)?;
        (at.elapsed() < KEY_CHECK_TTL && key.expires_at.as_deref().is_none_or(|e| e > now.as_str()))
            .then(|| key.clone())
    }

    fn put(&self, epoch: u64, hash: String, key: LiveKey) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if self.epoch.load(std::sync::atomic::Ordering::SeqCst) != epoch {
            return;
        }
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (key, Instant::now()));
    }
}

/// Turns an `sr_key_…` bearer into its principal: the key exists, is
/// neither revoked nor expired, and its tenant is active.
pub async fn authenticate(
    cache: &KeyCache,
    store: &Store,
    bearer: &SecretString,
    ip: Option<&str>,
) -> Result<Principal, IdentityError> {
    let token = OpaqueToken::parse(TokenKind::ApiKey, bearer.expose_secret())
        .ok_or(IdentityError::Unauthenticated)?;
    let hash = token.hash();
    let key = match cache.get(&hash) {
        Some(key) => key,
        None => {
            let epoch = cache.epoch.load(std::sync::atomic::Ordering::SeqCst);
            let key = check(store, token.tenant(), &hash).await?;
            cache.put(epoch, hash.clone(), key.clone());
            key
        }
    };
    note_use(cache, store, &key, ip);
    Ok(Principal {
        scope: TenantScope::trusted(key.tenant),
        kind: PrincipalKind::ApiKey,
        user_id: key.id,
        email: key.name,
        roles: key.roles,
        abilities: key.abilities,
        session_id: String::new(),
        support: None,
        must_change_password: false,
        mfa_enrolled: false,
        mfa_at: None,
        must_enrol_mfa: false,
    })
}

async fn check(store: &Store, tenant: TenantId, hash: &str) -> Result<LiveKey, IdentityError> {
    if !store.schema_has(roles::SCHEMA) {
        return Err(IdentityError::Unauthenticated);
    }
    let scope = TenantScope::trusted(tenant);
    let mut tx = store.read(&scope).await?;
    let now = crate::clock::now();
    let row = db::query(
        "SELECT k.id, k.name, k.roles, k.expires_at FROM api_keys k \
         JOIN tenants t ON t.id = k.tenant_id \
         WHERE k.tenant_id = $1 AND k.secret_hash = $2 AND k.revoked_at IS NULL \
         AND (k.expires_at IS NULL OR k.expires_at > $3) AND t.status = 'active'",
    )
    .bind(scope.id_str())
    .bind(hash)
    .bind(&now)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(IdentityError::Unauthenticated)?;
    let stored: String = row.try_get("roles")?;
    let held = held_roles(&stored);
    let abilities = roles::resolve(tx.conn(), scope.id_str(), &held)
        .await
        .map_err(|e| match e {
            RoleError::Store(e) => IdentityError::Store(e),
            _ => IdentityError::Internal("a key's roles could not be read"),
        })?;
    Ok(LiveKey {
        tenant,
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        roles: held.into(),
        abilities: Arc::new(abilities),
        expires_at: row.try_get("expires_at")?,
    })
}

/// Records the key's use now, in the background, unless this node did so
/// less than a minute ago.
fn note_use(cache: &KeyCache, store: &Store, key: &LiveKey, ip: Option<&str>) {
    {
        let Ok(mut uses) = cache.uses.lock() else {
            return;
        };
        if uses.get(&key.id).is_some_and(|at| at.elapsed() < USE_EVERY) {
            return;
        }
        if uses.len() >= KEY_CACHE_MAX {
            uses.clear();
        }
        uses.insert(key.id.clone(), Instant::now());
    }
    let store = store.clone();
    let scope = TenantScope::trusted(key.tenant);
    let (tenant, id, ip) = (
        key.tenant.to_string(),
        key.id.clone(),
        ip.map(str::to_owned),
    );
    tokio::spawn(async move {
        let done = store
            .append_internal(Some(&scope), move |conn| {
                Box::pin(async move {
                    let now = crate::clock::now();
                    let updated = db::query(
                        "UPDATE api_key_uses SET last_used_at = $1, last_used_ip = $2 \
                         WHERE tenant_id = $3 AND key_id = $4",
                    )
                    .bind(&now)
                    .bind(&ip)
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                    if updated.rows_affected() == 0 {
                        db::query(
                            "INSERT INTO api_key_uses (key_id, tenant_id, last_used_at, \
                             last_used_ip) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(&id)
                        .bind(&tenant)
                        .bind(&now)
                        .bind(&ip)
                        .execute(conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not record an API key's use");
        }
    });
}
