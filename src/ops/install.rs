//! Integrity at start (OPS-3): the server logs the SHA-256 of its own
//! executable and of its effective configuration (printed with every
//! secret masked, so the digest holds none), records both in
//! `instance_starts`, and writes a security event when either differs from
//! the last start recorded. `strongroom verify-install` shows them.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::store::{Store, StoreError, db};

/// What this process is, by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub binary_sha256: String,
    pub config_sha256: String,
}

/// A start as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Start {
    pub started_at: String,
    pub node: String,
    pub version: String,
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digests of the running executable and of `config`.
pub fn fingerprint(config: &Config) -> std::io::Result<Fingerprint> {
    // The image this process runs, even when its file was replaced or
    // removed since it started (Linux); elsewhere, the file by its path.
    let mut file = std::fs::File::open("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(std::fs::File::open))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(Fingerprint {
        binary_sha256: hex(&hasher.finalize()),
        // `Config`'s Debug masks the master key, passwords and secrets.
        config_sha256: hex(&Sha256::digest(format!("{config:?}").as_bytes())),
    })
}

/// The schema migration that brought `instance_starts`.
const SCHEMA: i64 = 7;

/// The last start recorded, if any.
pub async fn last_start(store: &Store) -> Result<Option<Start>, StoreError> {
    if !store.schema_has(SCHEMA) {
        return Ok(None);
    }
    let mut tx = store.read_unscoped().await?;
    let row = db::query(
        "SELECT started_at, node, version, binary_sha256, config_sha256 FROM instance_starts \
         ORDER BY started_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(|row| {
        Ok(Start {
            started_at: row.try_get(0)?,
            node: row.try_get(1)?,
            version: row.try_get(2)?,
            fingerprint: Fingerprint {
                binary_sha256: row.try_get(3)?,
                config_sha256: row.try_get(4)?,
            },
        })
    })
    .transpose()
    .map_err(|e: db::Error| StoreError::from(e))
}

/// Records this start, and says as a security event what changed since
/// the last one.
pub async fn record_start(store: &Store, now: &Fingerprint) -> Result<(), StoreError> {
    let last = last_start(store).await?;
    tracing::info!(
        binary_sha256 = %now.binary_sha256,
        config_sha256 = %now.config_sha256,
        "integrity at start"
    );
    if let Some(last) = &last {
        let compared = [
            (
                "the executable",
                &last.fingerprint.binary_sha256,
                &now.binary_sha256,
            ),
            (
                "the configuration",
                &last.fingerprint.config_sha256,
                &now.config_sha256,
            ),
        ];
        for (what, previous, current) in compared {
            if previous != current {
                tracing::warn!(
                    target: "security",
                    %previous,
                    now = %current,
                    since = %last.started_at,
                    "{what} changed since the last start"
                );
            }
        }
    }
    if !store.schema_has(SCHEMA) {
        tracing::warn!(
            "the schema is held back before instance_starts: this start is not recorded"
        );
        return Ok(());
    }
    let now = now.clone();
    let node = store.node().to_owned();
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                db::query(
                    "INSERT INTO instance_starts (id, started_at, node, version, binary_sha256, \
                     config_sha256) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(crate::clock::now())
                .bind(node)
                .bind(crate::VERSION)
                .bind(now.binary_sha256)
                .bind(now.config_sha256)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
}
