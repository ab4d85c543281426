//! Per-tenant data keys (ENC-3): random AES-256 keys, versioned, stored
//! only wrapped by a key-encryption key — the master key, or the tenant's
//! own key (BYOK), which is itself kept wrapped by the master key until the
//! tenant revokes it. Exactly one version is active for new writes; older
//! ones stay readable until rotation has re-encrypted everything.
//!
//! Destroying a tenant's keys (crypto-shredding, for LIF-3) leaves every
//! ciphertext of that tenant — database values, objects, backups —
//! unreadable at once.
//!
//! Unwrapped keys are cached for at most `key_cache_seconds`. The process
//! that revokes, destroys or rewraps a tenant's keys forgets them at once,
//! and on PostgreSQL announces it ([`KEYS_CHANGED`]) in the same
//! transaction, so every other app server forgets them when it commits; a
//! server that may have missed an announcement forgets every key. The
//! cache lifetime remains the bound if announcements cannot be delivered
//! at all (a CLI on SQLite beside a running server).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::aead::{DataKey, KEY_BYTES, KeyBytes, generate_key};
use super::{CryptoError, KeyEncryptionKey, LocalKek, fingerprint};
use crate::store::Conn;
use crate::store::db;
use crate::store::{Backend, WriteTx};

/// The channel on which app servers announce that a tenant's cached keys
/// must be forgotten; the payload is the tenant id.
pub const KEYS_CHANGED: &str = "strongroom_keys";

/// The entity kind every change to a tenant's keys is recorded as.
pub const KEYS_ENTITY: &str = "tenant_keys";
/// The erasure log's kind for a destroyed key version (BAK-4).
pub const ERASED_KEY: &str = "key_version";

/// A key version as `tenant_keys` stores it.
#[derive(Clone, Debug)]
pub struct WrappedVersion {
    pub version: i64,
    pub wrapped_by: String,
    pub wrapped: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
    /// False for a vault used inside a write transaction: it reads the
    /// cache but never fills it, because what it sees (a key version it
    /// just created) may still roll back, and a version number rolled back
    /// is created again later with a different key.
    fills_cache: bool,
}

/// Unwrapped keys by (tenant, version), with when they were unwrapped.
type KeyCache = HashMap<(String, i64), (Instant, Arc<DataKey>)>;

struct Inner {
    master: Arc<dyn KeyEncryptionKey>,
    cache: Mutex<KeyCache>,
    ttl: Duration,
}

/// The version new writes use, and its key.
#[derive(Clone)]
pub struct ActiveKey {
    pub version: i64,
    pub key: Arc<DataKey>,
}

#[derive(Debug, Serialize)]
pub struct KeyVersion {
    pub version: i64,
    pub state: String,
    pub wrapped_by: String,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct Rotation {
    pub to_version: i64,
    pub state: String,
    pub records_done: i64,
    pub files_done: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KeyStatus {
    pub active_version: Option<i64>,
    pub versions: Vec<KeyVersion>,
    /// Fingerprint of the tenant's own key while it is supplied.
    pub byok_fingerprint: Option<String>,
    /// Set when the data keys are wrapped by a tenant key that was revoked.
    pub revoked_fingerprint: Option<String>,
    pub rotations: Vec<Rotation>,
}

/// What supplying a tenant key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ByokChange {
    /// The data keys are now wrapped by this key.
    Activated,
    /// The key had been revoked; the data is readable again.
    Restored,
    /// It was already in place.
    Unchanged,
}

fn dek_aad(tenant: &str, version: i64) -> Vec<u8> {
    format!("strongroom/v1/data-key/{tenant}/{version}").into_bytes()
}

fn byok_aad(tenant: &str) -> Vec<u8> {
    format!("strongroom/v1/tenant-key/{tenant}").into_bytes()
}

const BYOK_PREFIX: &str = "byok:";

impl Vault {
    pub fn new(master: Arc<dyn KeyEncryptionKey>, ttl: Duration) -> Vault {
        Vault {
            inner: Arc::new(Inner {
                master,
                cache: Mutex::new(HashMap::new()),
                ttl,
            }),
            fills_cache: true,
        }
    }

    /// The vault to use inside a write transaction (see `fills_cache`).
    pub fn in_write(&self) -> Vault {
        Vault {
            inner: self.inner.clone(),
            fills_cache: false,
        }
    }

    fn cached(&self, tenant: &str, version: i64) -> Option<Arc<DataKey>> {
        let cache = self.inner.cache.lock().expect("key cache lock");
        cache
            .get(&(tenant.to_owned(), version))
            .filter(|(at, _)| at.elapsed() < self.inner.ttl)
            .map(|(_, key)| key.clone())
    }

    fn remember(&self, tenant: &str, version: i64, key: Arc<DataKey>) {
        if self.inner.ttl.is_zero() || !self.fills_cache {
            return;
        }
        let mut cache = self.inner.cache.lock().expect("key cache lock");
        cache.insert((tenant.to_owned(), version), (Instant::now(), key));
    }

    /// Drops a tenant's unwrapped keys from memory (after revoke/destroy).
    pub fn forget(&self, tenant: &str) {
        let mut cache = self.inner.cache.lock().expect("key cache lock");
        cache.retain(|(t, _), _| t != tenant);
    }

    /// Drops every unwrapped key from memory.
    pub fn forget_all(&self) {
        self.inner.cache.lock().expect("key cache lock").clear();
    }

    /// Forgets a tenant's keys here, and on every other app server once
    /// `conn`'s transaction commits.
    async fn forget_everywhere(&self, conn: &mut Conn, tenant: &str) -> Result<(), CryptoError> {
        self.forget(tenant);
        conn.announce(KEYS_CHANGED, tenant).await?;
        Ok(())
    }

    /// The active key for a write in `conn`'s transaction, created on first
    /// use. On PostgreSQL the row is share-locked, so a rotation commits
    /// either before this write (which then uses the new version) or after.
    pub async fn active(
        &self,
        conn: &mut Conn,
        backend: Backend,
        tenant: &str,
    ) -> Result<ActiveKey, CryptoError> {
        let lock = match backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        // A rotation committing while this waits for the row lock leaves
        // the old row no longer 'active' and returns nothing (PostgreSQL
        // re-checks the condition); the next statement sees the new one.
        let mut found = None;
        for _ in 0..3 {
            found = db::query_scalar(format!(
                "SELECT version FROM tenant_keys WHERE tenant_id = $1 AND state = 'active'{lock}"
            ))
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
            if found.is_some() {
                break;
            }
            let states: Vec<String> =
                db::query_scalar("SELECT state FROM tenant_keys WHERE tenant_id = $1")
                    .bind(tenant)
                    .fetch_all(&mut *conn)
                    .await?;
            if states.iter().any(|s| s == "destroyed") {
                return Err(CryptoError::KeysDestroyed);
            }
            if states.is_empty() {
                self.create_version(conn, tenant, None).await?;
            }
        }
        let version = found.ok_or_else(|| {
            CryptoError::Integrity("the tenant has data keys but none is active".into())
        })?;
        let key = self.key(conn, tenant, version).await?;
        Ok(ActiveKey { version, key })
    }

    /// [`Vault::active`] inside a write job. The version an earlier job of
    /// the writer found active is remembered until a change of kind
    /// [`KEYS_ENTITY`] is recorded, as every rotation, BYOK change and
    /// destruction does (a failed job forgets its tenant's memo). The key
    /// itself still comes through [`Vault::key`] and its cache.
    pub async fn active_in(&self, tx: &mut WriteTx) -> Result<ActiveKey, CryptoError> {
        let tenant = tx.scope().id_str().to_owned();
        if let Some(version) = tx.remembered::<i64>(KEYS_ENTITY, "active") {
            let key = self.key(tx.conn(), &tenant, version).await?;
            return Ok(ActiveKey { version, key });
        }
        let backend = tx.backend();
        let active = self.active(tx.conn(), backend, &tenant).await?;
        tx.remember(KEYS_ENTITY, "active", active.version);
        Ok(active)
    }

    /// The key of one version, for reading what it sealed.
    pub async fn key(
        &self,
        conn: &mut Conn,
        tenant: &str,
        version: i64,
    ) -> Result<Arc<DataKey>, CryptoError> {
        if let Some(key) = self.cached(tenant, version) {
            return Ok(key);
        }
        let row = db::query(
            "SELECT wrapped, wrapped_by FROM tenant_keys WHERE tenant_id = $1 AND version = $2",
        )
        .bind(tenant)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(CryptoError::Integrity(format!(
                "a value names key version {version}, which this tenant never had"
            )));
        };
        let wrapped: Option<Vec<u8>> = row.try_get("wrapped")?;
        let wrapped_by: String = row.try_get("wrapped_by")?;
        let Some(wrapped) = wrapped else {
            return Err(CryptoError::KeysDestroyed);
        };
        let kek = self.wrapping_key(conn, tenant, &wrapped_by).await?;
        let bytes = kek.unwrap(&dek_aad(tenant, version), &wrapped).await?;
        let key = Arc::new(DataKey::new(&bytes));
        self.remember(tenant, version, key.clone());
        Ok(key)
    }

    /// Every key version of the tenant as stored (wrapped; `None` once
    /// destroyed), for the backup target's copy of each (BAK-4).
    pub async fn wrapped_versions(
        &self,
        conn: &mut Conn,
        tenant: &str,
    ) -> Result<Vec<WrappedVersion>, CryptoError> {
        let rows = db::query(
            "SELECT version, wrapped_by, wrapped FROM tenant_keys WHERE tenant_id = $1 ORDER BY version",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WrappedVersion {
                    version: row.try_get("version")?,
                    wrapped_by: row.try_get("wrapped_by")?,
                    wrapped: row.try_get("wrapped")?,
                })
            })
            .collect::<Result<_, db::Error>>()
            .map_err(CryptoError::from)
    }

    /// Opens a key version from its wrapped form alone (a restore's, from
    /// the backup target): only what the master key wrapped.
    pub async fn open_wrapped(
        &self,
        tenant: &str,
        version: i64,
        wrapped_by: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        if wrapped_by != self.inner.master.id() {
            return Err(CryptoError::UnknownWrappingKey(wrapped_by.to_owned()));
        }
        let bytes = self
            .inner
            .master
            .unwrap(&dek_aad(tenant, version), wrapped)
            .await?;
        Ok(DataKey::new(&bytes))
    }

    /// The key-encryption key named by `wrapped_by`.
    async fn wrapping_key(
        &self,
        conn: &mut Conn,
        tenant: &str,
        wrapped_by: &str,
    ) -> Result<Arc<dyn KeyEncryptionKey>, CryptoError> {
        if wrapped_by == self.inner.master.id() {
            return Ok(self.inner.master.clone());
        }
        let Some(fp) = wrapped_by.strip_prefix(BYOK_PREFIX) else {
            return Err(CryptoError::UnknownWrappingKey(wrapped_by.to_owned()));
        };
        let row = db::query(
            "SELECT fingerprint, wrapped, wrapped_by FROM tenant_byok WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
        let revoked = || CryptoError::KeyRevoked {
            fingerprint: fp.to_owned(),
        };
        let row = row.ok_or_else(revoked)?;
        let stored_fp: String = row.try_get("fingerprint")?;
        if stored_fp != fp {
            return Err(revoked());
        }
        let wrapped: Vec<u8> = row.try_get("wrapped")?;
        let by: String = row.try_get("wrapped_by")?;
        if by != self.inner.master.id() {
            return Err(CryptoError::UnknownWrappingKey(by));
        }
        let bytes = self
            .inner
            .master
            .unwrap(&byok_aad(tenant), &wrapped)
            .await?;
        Ok(Arc::new(LocalKek::new(wrapped_by.to_owned(), &bytes)))
    }

    /// The key-encryption key new data-key versions are wrapped by: the
    /// tenant's own key if it has supplied one, else the master key.
    async fn current_wrapper(
        &self,
        conn: &mut Conn,
        tenant: &str,
    ) -> Result<Arc<dyn KeyEncryptionKey>, CryptoError> {
        let wrappers: Vec<String> = db::query_scalar(
            "SELECT DISTINCT wrapped_by FROM tenant_keys WHERE tenant_id = $1 AND state <> 'destroyed'",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        match wrappers.first() {
            // All versions share one wrapper: BYOK changes rewrap them all.
            Some(by) => self.wrapping_key(conn, tenant, by).await,
            None => Ok(self.inner.master.clone()),
        }
    }

    /// Adds a new version and makes it the active one; returns it.
    async fn create_version(
        &self,
        conn: &mut Conn,
        tenant: &str,
        retire: Option<i64>,
    ) -> Result<i64, CryptoError> {
        let destroyed: i64 = db::query_scalar(
            "SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = $1 AND state = 'destroyed'",
        )
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
        if destroyed > 0 {
            return Err(CryptoError::KeysDestroyed);
        }
        let wrapper = self.current_wrapper(conn, tenant).await?;
        let next: i64 = db::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM tenant_keys WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(old) = retire {
            db::query(
                "UPDATE tenant_keys SET state = 'retired' WHERE tenant_id = $1 AND version = $2",
            )
            .bind(tenant)
            .bind(old)
            .execute(&mut *conn)
            .await?;
        }
        let bytes = generate_key();
        let wrapped = wrapper.wrap(&dek_aad(tenant, next), &bytes).await?;
        // The first version may be created by two writers at once on
        // PostgreSQL; the loser keeps the winner's (a rotation never races
        // here: it holds the active row).
        let conflict = if retire.is_none() {
            " ON CONFLICT DO NOTHING"
        } else {
            ""
        };
        let inserted = db::query(format!(
            "INSERT INTO tenant_keys (tenant_id, version, state, wrapped, wrapped_by, created_at) \
             VALUES ($1, $2, 'active', $3, $4, $5){conflict}"
        ))
        .bind(tenant)
        .bind(next)
        .bind(wrapped)
        .bind(wrapper.id())
        .bind(crate::clock::now())
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            self.remember(tenant, next, Arc::new(DataKey::new(&bytes)));
        }
        Ok(next)
    }

    /// Starts a rotation: a new active version and a progress row. The
    /// re-encryption itself is the caller's background job.
    pub async fn rotate(
        &self,
        conn: &mut Conn,
        backend: Backend,
        tenant: &str,
    ) -> Result<i64, CryptoError> {
        if backend == Backend::Postgres {
            // Two rotations at once would both share-lock the active row
            // and then deadlock upgrading it; take it exclusively first, so
            // the second waits and then rotates from the first's result.
            db::query(
                "SELECT version FROM tenant_keys WHERE tenant_id = $1 AND state = 'active' FOR UPDATE",
            )
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
        }
        let current = self.active(conn, backend, tenant).await?;
        let next = self
            .create_version(conn, tenant, Some(current.version))
            .await?;
        db::query(
            "INSERT INTO key_rotations (tenant_id, to_version, state, started_at) \
             VALUES ($1, $2, 'running', $3)",
        )
        .bind(tenant)
        .bind(next)
        .bind(crate::clock::now())
        .execute(&mut *conn)
        .await?;
        Ok(next)
    }

    /// Makes `key` (the tenant's own) wrap all its data keys.
    pub async fn supply_byok(
        &self,
        conn: &mut Conn,
        tenant: &str,
        key: KeyBytes,
    ) -> Result<(String, ByokChange), CryptoError> {
        let fp = fingerprint(key.as_ref());
        let new_id = format!("{BYOK_PREFIX}{fp}");
        // Make sure there is something to wrap (without unwrapping it: the
        // current wrapper may be a revoked tenant key).
        let live: i64 = db::query_scalar(
            "SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = $1 AND state <> 'destroyed'",
        )
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
        if live == 0 {
            self.create_version(conn, tenant, None).await?;
        }
        let rows = db::query(
            "SELECT version, wrapped, wrapped_by FROM tenant_keys \
             WHERE tenant_id = $1 AND state <> 'destroyed' ORDER BY version",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        let has_byok: bool =
            db::query_scalar::<i64>("SELECT COUNT(*) FROM tenant_byok WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&mut *conn)
                .await?
                > 0;
        let current: String = rows[0].try_get("wrapped_by")?;
        let change = if current == new_id {
            if has_byok {
                ByokChange::Unchanged
            } else {
                ByokChange::Restored
            }
        } else if let Some(expected) = current.strip_prefix(BYOK_PREFIX)
            && !has_byok
        {
            return Err(CryptoError::WrongKey {
                expected: expected.to_owned(),
            });
        } else {
            let old = self.wrapping_key(conn, tenant, &current).await?;
            let new = LocalKek::new(new_id.clone(), &key);
            for row in &rows {
                let version: i64 = row.try_get("version")?;
                let wrapped: Vec<u8> = row.try_get("wrapped")?;
                let aad = dek_aad(tenant, version);
                let bytes = old.unwrap(&aad, &wrapped).await?;
                let rewrapped = new.wrap(&aad, &bytes).await?;
                db::query(
                    "UPDATE tenant_keys SET wrapped = $1, wrapped_by = $2 \
                     WHERE tenant_id = $3 AND version = $4",
                )
                .bind(rewrapped)
                .bind(&new_id)
                .bind(tenant)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            ByokChange::Activated
        };
        let stored = self.inner.master.wrap(&byok_aad(tenant), &key).await?;
        db::query("DELETE FROM tenant_byok WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
        db::query(
            "INSERT INTO tenant_byok (tenant_id, fingerprint, wrapped, wrapped_by, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(&fp)
        .bind(stored)
        .bind(self.inner.master.id())
        .bind(crate::clock::now())
        .execute(&mut *conn)
        .await?;
        Ok((fp, change))
    }

    /// Master-key rotation: rewraps whatever `old` wraps for this tenant
    /// (data keys, the stored tenant key) under `new`. Idempotent: what
    /// `new` already wraps is left alone. Returns how many keys moved.
    pub async fn rewrap_master(
        &self,
        conn: &mut Conn,
        tenant: &str,
        old: &dyn KeyEncryptionKey,
        new: &dyn KeyEncryptionKey,
    ) -> Result<u64, CryptoError> {
        let mut moved = 0;
        let rows = db::query(
            "SELECT version, wrapped FROM tenant_keys \
             WHERE tenant_id = $1 AND wrapped_by = $2 AND wrapped IS NOT NULL",
        )
        .bind(tenant)
        .bind(old.id())
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let version: i64 = row.try_get("version")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let aad = dek_aad(tenant, version);
            let bytes = old.unwrap(&aad, &wrapped).await?;
            db::query(
                "UPDATE tenant_keys SET wrapped = $1, wrapped_by = $2 WHERE tenant_id = $3 AND version = $4",
            )
            .bind(new.wrap(&aad, &bytes).await?)
            .bind(new.id())
            .bind(tenant)
            .bind(version)
            .execute(&mut *conn)
            .await?;
            moved += 1;
        }
        let byok: Option<Vec<u8>> = db::query_scalar(
            "SELECT wrapped FROM tenant_byok WHERE tenant_id = $1 AND wrapped_by = $2",
        )
        .bind(tenant)
        .bind(old.id())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(wrapped) = byok {
            let aad = byok_aad(tenant);
            let bytes = old.unwrap(&aad, &wrapped).await?;
            db::query("UPDATE tenant_byok SET wrapped = $1, wrapped_by = $2 WHERE tenant_id = $3")
                .bind(new.wrap(&aad, &bytes).await?)
                .bind(new.id())
                .bind(tenant)
                .execute(&mut *conn)
                .await?;
            moved += 1;
        }
        self.forget_everywhere(conn, tenant).await?;
        Ok(moved)
    }

    /// Forgets the tenant's own key: data wrapped by it is unreadable until
    /// the tenant supplies the key again. Returns its fingerprint, if any.
    pub async fn revoke_byok(
        &self,
        conn: &mut Conn,
        tenant: &str,
    ) -> Result<Option<String>, CryptoError> {
        let fp: Option<String> =
            db::query_scalar("SELECT fingerprint FROM tenant_byok WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await?;
        db::query("DELETE FROM tenant_byok WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
        self.forget_everywhere(conn, tenant).await?;
        Ok(fp)
    }

    /// Crypto-shredding: every version loses its key material for good.
    /// Returns how many versions were destroyed.
    pub async fn destroy(&self, conn: &mut Conn, tenant: &str) -> Result<u64, CryptoError> {
        // BAK-4: each version destroyed stays destroyed through any restore.
        let versions: Vec<i64> = db::query_scalar(
            "SELECT version FROM tenant_keys WHERE tenant_id = $1 AND wrapped IS NOT NULL",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        for version in versions {
            db::query(
                "INSERT INTO erasures (id, tenant_id, kind, subject, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, kind, subject) DO NOTHING",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(tenant)
            .bind(ERASED_KEY)
            .bind(version.to_string())
            .bind(crate::clock::now())
            .execute(&mut *conn)
            .await?;
        }
        let done = db::query(
            "UPDATE tenant_keys SET state = 'destroyed', wrapped = NULL WHERE tenant_id = $1",
        )
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
        db::query("DELETE FROM tenant_byok WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
        self.forget_everywhere(conn, tenant).await?;
        Ok(done.rows_affected())
    }

    pub async fn status(&self, conn: &mut Conn, tenant: &str) -> Result<KeyStatus, CryptoError> {
        let rows = db::query(
            "SELECT version, state, wrapped_by, created_at FROM tenant_keys \
             WHERE tenant_id = $1 ORDER BY version",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        let versions = rows
            .iter()
            .map(|r| {
                Ok(KeyVersion {
                    version: r.try_get("version")?,
                    state: r.try_get("state")?,
                    wrapped_by: r.try_get("wrapped_by")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, db::Error>>()?;
        let byok: Option<String> =
            db::query_scalar("SELECT fingerprint FROM tenant_byok WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await?;
        let revoked = versions
            .iter()
            .filter(|v| v.state != "destroyed")
            .find_map(|v| v.wrapped_by.strip_prefix(BYOK_PREFIX))
            .filter(|fp| byok.as_deref() != Some(*fp))
            .map(str::to_owned);
        let rotations = db::query(
            "SELECT to_version, state, records_done, files_done, started_at, finished_at \
             FROM key_rotations WHERE tenant_id = $1 ORDER BY to_version DESC LIMIT 10",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(Rotation {
                to_version: r.try_get("to_version")?,
                state: r.try_get("state")?,
                records_done: r.try_get("records_done")?,
                files_done: r.try_get("files_done")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
            })
        })
        .collect::<Result<Vec<_>, db::Error>>()?;
        Ok(KeyStatus {
            active_version: versions
                .iter()
                .find(|v| v.state == "active")
                .map(|v| v.version),
            versions,
            byok_fingerprint: byok,
            revoked_fingerprint: revoked,
            rotations,
        })
    }
}

/// Parses a tenant-supplied key: base64 of exactly 32 bytes.
pub fn parse_tenant_key(b64: &str) -> Result<KeyBytes, CryptoError> {
    use base64::Engine;
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| CryptoError::MalformedKey)?,
    );
    let key: [u8; KEY_BYTES] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::MalformedKey)?;
    Ok(zeroize::Zeroizing::new(key))
}
