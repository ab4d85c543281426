//! BAK-4, ENC-2: the tenant key versions and the erasure log in the backup
//! target.
//!
//! Each key version the target's segments and snapshots are sealed with is
//! kept there once, as the database keeps it (wrapped by the master key),
//! in an object of its own (`t/<tenant>/keys/<version>.json`); no segment
//! or snapshot carries key material. When a tenant's keys are destroyed
//! the database records each version in its erasure log; the shipper
//! copies the log to the target (`erasures/<tenant>/…`) and deletes the
//! key objects, so the tenant's backups stop opening too. A restore reads
//! the log from the target and refuses every version it names, whatever
//! else is still there: an erasure is never undone by a restore.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::BackupTarget;
use crate::context::TenantScope;
use crate::crypto::Vault;
use crate::crypto::aead::DataKey;
use crate::crypto::vault::ERASED_KEY;
use crate::store::{Store, db};

/// A key version as the target keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyObject {
    pub tenant: String,
    pub version: i64,
    pub wrapped_by: String,
    /// Base64 of the wrapped key.
    pub wrapped: String,
}

/// One entry of the erasure log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    pub tenant: String,
    pub kind: String,
    pub subject: String,
    pub recorded_at: String,
}

pub fn key_object(tenant: &str, version: i64) -> String {
    format!("t/{tenant}/keys/{version:06}.json")
}

fn erasure_object(erasure: &Erasure) -> String {
    format!(
        "erasures/{}/{}-{}.json",
        erasure.tenant, erasure.kind, erasure.subject
    )
}

/// Copies to the target every key version of the tenant it lacks
/// (`shipped` remembers which it holds).
pub async fn ship_keys(
    store: &Store,
    vault: &Vault,
    target: &BackupTarget,
    scope: &TenantScope,
    shipped: &mut HashSet<i64>,
) -> Result<(), String> {
    let tenant = scope.id_str();
    let versions = {
        let mut tx = store.read(scope).await.map_err(|e| e.to_string())?;
        vault
            .wrapped_versions(tx.conn(), tenant)
            .await
            .map_err(|e| e.to_string())?
    };
    for version in versions {
        let Some(wrapped) = version.wrapped else {
            continue;
        };
        if shipped.contains(&version.version) {
            continue;
        }
        let object = KeyObject {
            tenant: tenant.to_owned(),
            version: version.version,
            wrapped_by: version.wrapped_by,
            wrapped: STANDARD.encode(wrapped),
        };
        target
            .put(
                &key_object(tenant, version.version),
                serde_json::to_vec(&object).unwrap_or_default(),
            )
            .await
            .map_err(|e| format!("cannot write key version {}: {e}", version.version))?;
        shipped.insert(version.version);
    }
    Ok(())
}

/// Copies the tenant's new erasures to the target and applies them there
/// (a destroyed key version's object is deleted); each is marked shipped
/// once both are done. Returns the key versions erased.
pub async fn ship_erasures(
    store: &Store,
    target: &BackupTarget,
    scope: &TenantScope,
) -> Result<Vec<i64>, String> {
    let tenant = scope.id_str().to_owned();
    let rows = {
        let mut tx = store.read(scope).await.map_err(|e| e.to_string())?;
        db::query(
            "SELECT id, kind, subject, recorded_at FROM erasures \
             WHERE tenant_id = $1 AND shipped_at IS NULL ORDER BY recorded_at, id",
        )
        .bind(&tenant)
        .fetch_all(tx.conn())
        .await
        .map_err(|e| e.to_string())?
    };
    let mut erased = Vec::new();
    for row in rows {
        let read = || -> Result<(String, Erasure), db::Error> {
            Ok((
                row.try_get("id")?,
                Erasure {
                    tenant: tenant.clone(),
                    kind: row.try_get("kind")?,
                    subject: row.try_get("subject")?,
                    recorded_at: row.try_get("recorded_at")?,
                },
            ))
        };
        let (id, erasure) = read().map_err(|e| e.to_string())?;
        target
            .put(
                &erasure_object(&erasure),
                serde_json::to_vec(&erasure).unwrap_or_default(),
            )
            .await
            .map_err(|e| format!("cannot write the erasure log: {e}"))?;
        if erasure.kind == ERASED_KEY
            && let Ok(version) = erasure.subject.parse::<i64>()
        {
            target
                .delete(&key_object(&tenant, version))
                .await
                .map_err(|e| format!("cannot delete key version {version}: {e}"))?;
            erased.push(version);
        }
        store
            .append_internal(Some(scope), move |conn| {
                Box::pin(async move {
                    db::query("UPDATE erasures SET shipped_at = $1 WHERE id = $2")
                        .bind(crate::clock::now())
                        .bind(id)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(erased)
}

/// The erasure log of a tenant, as the target holds it.
pub async fn erasures(target: &BackupTarget, tenant: &str) -> Result<Vec<Erasure>, String> {
    let mut out = Vec::new();
    for key in target
        .keys(&format!("erasures/{tenant}/"))
        .await
        .map_err(|e| format!("cannot list the erasure log: {e}"))?
    {
        let Some(bytes) = target.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let erasure: Erasure = serde_json::from_slice(&bytes)
            .map_err(|e| format!("erasure {key} does not parse: {e}"))?;
        out.push(erasure);
    }
    Ok(out)
}

/// The tenant's key versions the target holds and may use: opened with
/// the master key, without any the erasure log names. With their wrapped
/// forms, for the restored `tenant_keys`.
pub async fn load(
    vault: &Vault,
    target: &BackupTarget,
    tenant: &str,
) -> Result<HashMap<i64, (DataKey, KeyObject)>, String> {
    let erased: HashSet<String> = erasures(target, tenant)
        .await?
        .into_iter()
        .filter(|e| e.kind == ERASED_KEY)
        .map(|e| e.subject)
        .collect();
    let mut keys = HashMap::new();
    for key in target
        .keys(&format!("t/{tenant}/keys/"))
        .await
        .map_err(|e| format!("cannot list the key versions: {e}"))?
    {
        let Some(bytes) = target.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let object: KeyObject = serde_json::from_slice(&bytes)
            .map_err(|e| format!("key object {key} does not parse: {e}"))?;
        if object.tenant != tenant || erased.contains(&object.version.to_string()) {
            continue;
        }
        let wrapped = STANDARD
            .decode(&object.wrapped)
            .map_err(|e| format!("key object {key}: {e}"))?;
        let opened = vault
            .open_wrapped(tenant, object.version, &object.wrapped_by, &wrapped)
            .await
            .map_err(|e| format!("key version {} does not open: {e}", object.version))?;
        keys.insert(object.version, (opened, object));
    }
    Ok(keys)
}
