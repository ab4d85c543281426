//! Backups (BAK-1, BAK-2, BAK-4, and the backup half of ENC-2 and ENC-4):
//! the backup target, its start-up canary, the shipping of every tenant's
//! journal to it, snapshots and restores; `strongroom backup
//! list|verify|now|restore`.
//!
//! * **Target.** `backup_url`: by default a local directory beside the
//!   data dir (`<parent>/strongroom-backups/<data dir name>`, never inside
//!   it), or `s3://bucket/prefix` with credentials of its own. A target
//!   inside the data dir, or on the file store's own bucket and prefix, is
//!   refused: a backup must not share the fate of what it backs up.
//! * **Canary (ENC-4).** At start `serve` writes a sealed canary through the
//!   backup writer and reads the stored bytes back raw; plaintext, or a
//!   target it cannot write and read, stops the server.
//! * **Shipping (BAK-1).** [`ship`] tails each tenant's journal and writes
//!   segments sealed with the tenant's data key ([`segment`]) at most about
//!   half a second after commit. It never holds up a write: when the target
//!   fails it retries with backoff while the lag grows, shown on `/metrics`
//!   (`strongroom_backup_lag_seconds`) and `/readyz`, and raised as a
//!   security event past `backup_lag_alert_seconds`.
//!
//! * **Checkpoints (AUD-7).** Every signed audit checkpoint is written here
//!   before the database keeps it (`audit::checkpoint_all`), and `audit
//!   verify` holds the database against the newest one here.
//!
//! * **Snapshots (BAK-2)** and **restore (BAK-4)**: [`snapshot`] seals a
//!   tenant's whole restorable state at one journal seq; [`restore`] rebuilds
//!   a tenant (or the instance) from the newest snapshot before a point plus
//!   the journal's row images ([`crate::store::image`]) up to it; [`keys`]
//!   keeps each key version once in the target and applies the erasure log.
//!
//! * **Drills (BAK-6)** ([`drill`]), **corruption** (BAK-4,
//!   [`integrity`]) and the **warm standby** (BAK-5, [`follow`]).

pub mod drill;
pub mod follow;
pub mod http;
pub mod integrity;
pub mod keys;
pub mod restore;
pub mod segment;
pub mod ship;
pub mod snapshot;

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::{Config, StoreUrl};
use crate::files::Target;

/// The backup target: where segments (and later snapshots) go.
pub struct BackupTarget {
    target: Target,
}

/// Where the backups of an instance with this data dir go by default.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    let data = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "strongroom-data".to_owned());
    data.parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("strongroom-backups")
        .join(name)
}

/// Where this configuration's backups go, refusing places that share the
/// fate of the data: the data dir, or the file store's own location.
pub fn location(config: &Config) -> Result<StoreUrl, String> {
    let url = match &config.backup_url {
        Some(url) => StoreUrl::parse(url).map_err(|e| format!("backup_url: {e}"))?,
        None => StoreUrl::Local(default_dir(&config.data_dir)),
    };
    let data = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let stores = [&config.object_store_url, &config.object_store_replica_url];
    let mut file_stores: Vec<StoreUrl> = stores
        .into_iter()
        .flatten()
        .filter_map(|u| StoreUrl::parse(u).ok())
        .collect();
    if config.object_store_url.is_none() {
        file_stores.push(StoreUrl::Local(data.join("objects")));
    }
    match &url {
        StoreUrl::Local(dir) => {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            if dir.starts_with(&data) || data.starts_with(&dir) {
                return Err(format!(
                    "backup_url {} overlaps the data dir {}: backups must live apart from the data",
                    dir.display(),
                    data.display()
                ));
            }
            for store in &file_stores {
                if let StoreUrl::Local(files) = store
                    && (dir.starts_with(files) || files.starts_with(&dir))
                {
                    return Err(format!(
                        "backup_url {} overlaps the file store {}",
                        dir.display(),
                        files.display()
                    ));
                }
            }
        }
        StoreUrl::S3 { bucket, prefix, .. } => {
            for store in &file_stores {
                if let StoreUrl::S3 {
                    bucket: files_bucket,
                    prefix: files_prefix,
                    ..
                } = store
                    && files_bucket == bucket
                    && prefixes_overlap(prefix, files_prefix)
                {
                    return Err(format!(
                        "backup_url s3://{bucket}/{prefix} overlaps the file store's \
                         s3://{files_bucket}/{files_prefix}"
                    ));
                }
            }
        }
    }
    Ok(url)
}

/// Whether one key prefix contains the other (by whole path segments).
fn prefixes_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_matches('/'), b.trim_matches('/'));
    let within = |inner: &str, outer: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
    };
    within(a, b) || within(b, a)
}

impl BackupTarget {
    pub fn open(config: &Config) -> Result<BackupTarget, String> {
        let url = location(config)?;
        let target = Target::open(
            "backup",
            &url,
            config.backup_access_key_id.as_deref(),
            config.backup_secret_access_key.as_ref(),
        )?;
        Ok(BackupTarget { target })
    }

    pub fn describe(&self) -> &str {
        &self.target.describe
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), object_store::Error> {
        self.target.put_bytes(key, Bytes::from(bytes)).await
    }

    /// An object's bytes; `None` when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, object_store::Error> {
        match self.target.raw_bytes(key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        self.target.delete(key).await
    }

    /// Every key in `folder` (e.g. `t/<tenant>/journal/`; `""` for all),
    /// sorted.
    pub async fn keys(&self, folder: &str) -> Result<Vec<String>, object_store::Error> {
        Ok(self
            .objects(folder)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Every object in `folder` with its size, sorted by key. Only that
    /// folder is listed, not the whole target.
    pub async fn objects(&self, folder: &str) -> Result<Vec<(String, u64)>, object_store::Error> {
        let mut objects = self.target.list_folder(folder).await?;
        objects.sort();
        Ok(objects)
    }

    /// AUD-7: a signed audit checkpoint, kept apart from the database.
    pub async fn put_checkpoint(
        &self,
        tenant: &str,
        seq: i64,
        signed: Vec<u8>,
    ) -> Result<(), object_store::Error> {
        self.put(&format!("t/{tenant}/checkpoints/{seq:020}.json"), signed)
            .await
    }

    /// The newest signed audit checkpoint the target holds of a tenant.
    pub async fn newest_checkpoint(
        &self,
        tenant: &str,
    ) -> Result<Option<Bytes>, object_store::Error> {
        let keys = self.keys(&format!("t/{tenant}/checkpoints/")).await?;
        match keys.last() {
            Some(key) => self.get(key).await,
            None => Ok(None),
        }
    }

    /// ENC-4: a canary sealed the way segments are, written to the target
    /// and read back raw: the plaintext must not show, and the bytes must
    /// open back to it. Fails when the target cannot be written or read.
    pub async fn self_test(&self) -> Result<(), String> {
        let canary = format!(
            "strongroom-canary-{}",
            crate::store::chain::to_hex(&crate::crypto::random_bytes::<16>())
        );
        let plaintext = canary.repeat(64);
        let key = crate::crypto::aead::generate_key();
        let sealed =
            crate::crypto::aead::DataKey::new(&key).seal(b"backup-canary", plaintext.as_bytes());
        let object = format!("selftest/{}", uuid::Uuid::new_v4());
        let refuse = |why: String| {
            format!(
                "backup target self-test failed on {}: {why}; refusing to start",
                self.describe()
            )
        };
        self.put(&object, sealed)
            .await
            .map_err(|e| refuse(format!("cannot write: {e}")))?;
        let stored = self
            .get(&object)
            .await
            .map_err(|e| refuse(format!("cannot read back: {e}")))?
            .ok_or_else(|| refuse("what was written is not there".into()))?;
        let _ = self.delete(&object).await;
        if stored.windows(canary.len()).any(|w| w == canary.as_bytes()) {
            return Err(refuse("the plaintext canary is visible".into()));
        }
        let opened = crate::crypto::aead::DataKey::new(&key)
            .open(b"backup-canary", &stored)
            .map_err(|e| refuse(format!("the stored canary does not open: {e}")))?;
        if opened.as_slice() != plaintext.as_bytes() {
            return Err(refuse("the stored canary opens to different bytes".into()));
        }
        tracing::info!(backup_target = %self.describe(), "backup target self-test passed: only ciphertext is stored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_target_is_beside_the_data_dir_not_in_it() {
        assert_eq!(
            default_dir(Path::new("/srv/strongroom-data")),
            PathBuf::from("/srv/strongroom-backups/strongroom-data")
        );
    }

    #[test]
    fn targets_sharing_the_datas_fate_are_refused() {
        let config = |backup: &str, objects: Option<&str>| Config {
            data_dir: "/srv/data".into(),
            backup_url: Some(backup.to_owned()),
            object_store_url: objects.map(str::to_owned),
            ..Config::default()
        };
        assert!(location(&config("file:///srv/data/backups", None)).is_err());
        assert!(location(&config("file:///srv", None)).is_err());
        assert!(location(&config("file:///srv/backups", None)).is_ok());
        assert!(location(&config("s3://files/a", Some("s3://files/a"))).is_err());
        assert!(location(&config("s3://files/a/b", Some("s3://files/a"))).is_err());
        assert!(location(&config("s3://files/backups", Some("s3://files/objects"))).is_ok());
        assert!(location(&config("s3://other/a", Some("s3://files/a"))).is_ok());
        assert!(location(&config("file:///srv/files", Some("file:///srv/files/x"))).is_err());
    }
}
