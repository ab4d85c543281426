//! Tenant key management (ENC-3): status, rotation, BYOK and
//! crypto-shredding, over the API (`/api/v1/tenant/keys…`) and the CLI
//! (`strongroom keys …`). Each change goes through the one write path.
//!
//! Rotation makes a new data-key version active for all new writes at
//! once, then re-seals records and rewraps file keys that still use an
//! older version, in batches, until none is left. The work is driven by
//! what still carries an old version, so it resumes by simply running
//! again (the server restarts unfinished rotations on start). Reads and
//! writes go on throughout: old versions stay readable.

pub mod http;

use serde_json::json;

use crate::context::Permit;
use crate::context::RequestMeta;
use crate::context::TenantScope;
use crate::crypto::vault::{ByokChange, KeyStatus};
use crate::crypto::{CryptoError, KeyBytes, Vault};
use crate::files::{FileError, Files};
use crate::records::RecordError;
use crate::store::db;
use crate::store::{Change, JournalOp, Store, StoreError};

const BATCH: i64 = 200;

impl From<db::Error> for KeysError {
    fn from(e: db::Error) -> Self {
        KeysError::Store(e.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("no customer-managed key is configured for this tenant")]
    NoByok,
    #[error(
        "another key change for this tenant committed first; look at GET /api/v1/tenant/keys and retry"
    )]
    Conflict,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn key_change(scope: &TenantScope, after: serde_json::Value) -> Change {
    Change {
        entity: crate::crypto::vault::KEYS_ENTITY,
        entity_id: scope.id_str().to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(after),
        sensitive: vec![],
        diff_of: None,
    }
}

pub async fn status(
    store: &Store,
    vault: &Vault,
    scope: &TenantScope,
) -> Result<KeyStatus, KeysError> {
    let mut tx = store.read(scope).await?;
    Ok(vault.status(tx.conn(), scope.id_str()).await?)
}

/// Makes a new version active; the caller then runs [`reencrypt`].
pub async fn rotate(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
) -> Result<i64, KeysError> {
    let vault = vault.in_write();
    store
        .write(permit, meta, "keys.rotate", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let backend = tx.backend();
                let version =
                    vault
                        .rotate(tx.conn(), backend, &tenant)
                        .await
                        .map_err(|e| match e {
                            CryptoError::Store(e) if e.is_unique_violation_on("tenant_keys") => {
                                KeysError::Conflict
                            }
                            e => e.into(),
                        })?;
                let change = key_change(tx.scope(), json!({"active_version": version}));
                tx.record(change);
                tx.set_target("key_version", version.to_string());
                Ok::<_, KeysError>(version)
            })
        })
        .await
}

/// Re-seals and rewraps everything that uses an older version than the
/// active one. `progress(records, files)` hears the running totals.
pub async fn reencrypt(
    files: &Files,
    scope: &TenantScope,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(u64, u64), KeysError> {
    let permit = Permit::system(scope.clone(), "keys.rotation");
    let meta = RequestMeta::cli();
    let (mut records, mut file_keys) = (0u64, 0u64);
    loop {
        let (active, stale_records, stale_files) = pending(&files.store, scope).await?;
        if stale_records == 0 && stale_files == 0 {
            finish(&files.store, scope, active).await?;
            return Ok((records, file_keys));
        }
        let mut batch = (0, 0);
        if stale_records > 0 {
            batch.0 =
                crate::records::reseal_batch(&files.store, &files.vault, &permit, &meta, BATCH)
                    .await?;
        }
        if stale_files > 0 {
            batch.1 = files.rewrap_batch(&permit, &meta, BATCH).await?;
        }
        records += batch.0;
        file_keys += batch.1;
        note_progress(&files.store, scope, active, batch.0, batch.1).await?;
        progress(records, file_keys);
    }
}

/// (active version, records and files still on an older one)
async fn pending(store: &Store, scope: &TenantScope) -> Result<(i64, i64, i64), KeysError> {
    let mut tx = store.read(scope).await?;
    let tenant = scope.id_str();
    let active: Option<i64> = db::query_scalar(
        "SELECT version FROM tenant_keys WHERE tenant_id = $1 AND state = 'active'",
    )
    .bind(tenant)
    .fetch_optional(tx.conn())
    .await?;
    let Some(active) = active else {
        return Ok((0, 0, 0));
    };
    let count = |table: &str| {
        format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = $1 AND key_version < $2")
    };
    let records: i64 = db::query_scalar(count("records"))
        .bind(tenant)
        .bind(active)
        .fetch_one(tx.conn())
        .await?;
    let files: i64 = db::query_scalar(count("files"))
        .bind(tenant)
        .bind(active)
        .fetch_one(tx.conn())
        .await?;
    Ok((active, records, files))
}

async fn note_progress(
    store: &Store,
    scope: &TenantScope,
    active: i64,
    records: u64,
    files: u64,
) -> Result<(), KeysError> {
    let tenant = scope.id_str().to_owned();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                db::query(
                    "UPDATE key_rotations SET records_done = records_done + $1, files_done = files_done + $2 \
                     WHERE tenant_id = $3 AND to_version = $4",
                )
                .bind(records as i64)
                .bind(files as i64)
                .bind(tenant)
                .bind(active)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await?;
    Ok(())
}

async fn finish(store: &Store, scope: &TenantScope, active: i64) -> Result<(), KeysError> {
    let tenant = scope.id_str().to_owned();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                db::query(
                    "UPDATE key_rotations SET state = 'done', finished_at = $1 \
                     WHERE tenant_id = $2 AND state = 'running' AND to_version <= $3",
                )
                .bind(crate::clock::now())
                .bind(tenant)
                .bind(active)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await?;
    Ok(())
}

/// Tenants with a rotation still running (resumed at start).
pub async fn unfinished(store: &Store) -> Result<Vec<TenantScope>, StoreError> {
    let mut scopes = Vec::new();
    for scope in crate::tenancy::all_scopes(store).await? {
        let mut tx = store.read(&scope).await?;
        let running: i64 = db::query_scalar(
            "SELECT COUNT(*) FROM key_rotations WHERE tenant_id = $1 AND state = 'running'",
        )
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
        if running > 0 {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

/// Runs a tenant's re-encryption in the background, logging the outcome.
pub fn spawn_reencrypt(files: Files, scope: TenantScope) {
    tokio::spawn(async move {
        match reencrypt(&files, &scope, &|_, _| {}).await {
            Ok((records, file_keys)) => tracing::info!(
                tenant = scope.id_str(),
                records,
                file_keys,
                "key rotation finished: everything uses the active key version"
            ),
            Err(e) => tracing::error!(tenant = scope.id_str(), error = %e,
                "key rotation stopped; it resumes at the next start or rotation"),
        }
    });
}

pub async fn supply_byok(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
    key: KeyBytes,
) -> Result<(String, ByokChange), KeysError> {
    let vault_in = vault.in_write();
    let result = store
        .write(permit, meta, "keys.byok_supply", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let (fp, change) = vault_in.supply_byok(tx.conn(), &tenant, key).await?;
                let record = key_change(
                    tx.scope(),
                    json!({"byok_fingerprint": fp, "change": change}),
                );
                tx.record(record);
                tx.set_target("tenant_key", fp.clone());
                Ok::<_, KeysError>((fp, change))
            })
        })
        .await?;
    vault.forget(permit.scope().id_str());
    Ok(result)
}

pub async fn revoke_byok(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
) -> Result<String, KeysError> {
    let vault_in = vault.in_write();
    let fp = store
        .write(permit, meta, "keys.byok_revoke", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let fp = vault_in
                    .revoke_byok(tx.conn(), &tenant)
                    .await?
                    .ok_or(KeysError::NoByok)?;
                let record = key_change(tx.scope(), json!({"byok_revoked": fp}));
                tx.record(record);
                tx.set_target("tenant_key", fp.clone());
                Ok::<_, KeysError>(fp)
            })
        })
        .await?;
    vault.forget(permit.scope().id_str());
    Ok(fp)
}

/// Master-key rotation for one tenant: its data keys (and stored tenant
/// key) are rewrapped from `old` to `new` in one audited write, and its
/// audit checkpoints re-signed with `new`'s checkpoint key. The data
/// itself is untouched. Returns (keys rewrapped, checkpoints re-signed).
pub async fn rotate_master(
    store: &Store,
    scope: &TenantScope,
    old: &crate::crypto::Keyring,
    new: &crate::crypto::Keyring,
) -> Result<(u64, u64), KeysError> {
    let permit = Permit::operator(scope.clone(), crate::audit::Actor::operator());
    let (old_kek, new_kek) = (old.master_kek(), new.master_kek());
    let vault = Vault::new(old_kek.clone(), std::time::Duration::ZERO);
    let moved = store
        .write(
            &permit,
            &RequestMeta::cli(),
            "keys.rotate_master",
            move |tx| {
                Box::pin(async move {
                    let tenant = tx.scope().id_str().to_owned();
                    let moved = vault
                        .rewrap_master(tx.conn(), &tenant, old_kek.as_ref(), new_kek.as_ref())
                        .await?;
                    let change = key_change(
                        tx.scope(),
                        json!({"master_key": new_kek.id(), "keys_rewrapped": moved}),
                    );
                    tx.record(change);
                    Ok::<_, KeysError>(moved)
                })
            },
        )
        .await?;
    let resigned = crate::audit::resign_checkpoints(
        store,
        scope,
        &old.checkpoint_signing_key().verifying_key(),
        new.checkpoint_signing_key(),
    )
    .await?;
    Ok((moved, resigned))
}

/// Crypto-shredding (the primitive LIF-3 purge calls): destroys every key
/// version of the tenant. Irreversible.
pub async fn destroy(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
) -> Result<u64, KeysError> {
    let vault_in = vault.in_write();
    let n = store
        .write(permit, meta, "keys.destroy", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let n = vault_in.destroy(tx.conn(), &tenant).await?;
                let record = key_change(tx.scope(), json!({"destroyed_versions": n}));
                tx.record(record);
                Ok::<_, KeysError>(n)
            })
        })
        .await?;
    vault.forget(permit.scope().id_str());
    Ok(n)
}
