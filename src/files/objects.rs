//! Object storage (FIL-1, FIL-5, ENC-4): a primary store — a local
//! directory by default, or any S3-compatible service — and an optional
//! replica that receives every object. Only sealed bytes reach either
//! (see `crypto::stream`); object keys are generated (`t/<tenant>/<file>`),
//! never derived from a client's file name.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::CryptoError;
use crate::crypto::aead::{DataKey, generate_key};
use crate::crypto::stream::{Opener, Sealer};

/// S3 parts are at least 5 MiB; bigger parts mean fewer requests.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight per upload.
const PARTS_IN_FLIGHT: usize = 4;

pub use crate::config::StoreUrl;

/// One store and the prefix objects live under.
pub struct Target {
    pub role: &'static str,
    pub describe: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The directory of a local store, which uploads write to directly.
    local: Option<std::path::PathBuf>,
}

impl Target {
    pub(crate) fn open(
        role: &'static str,
        url: &StoreUrl,
        key_id: Option<&str>,
        secret: Option<&SecretString>,
    ) -> Result<Target, String> {
        match url {
            StoreUrl::Local(dir) => {
                crate::create_private_dir(dir).map_err(|e| {
                    format!("cannot create the object directory {}: {e}", dir.display())
                })?;
                // fsync files and directories: an upload is acknowledged
                // only once it is durable (DESIGN.md invariant 5).
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| e.to_string())?
                    .with_fsync(true);
                Ok(Target {
                    role,
                    describe: format!("file://{}", dir.display()),
                    store: Arc::new(store),
                    prefix: String::new(),
                    local: Some(dir.clone()),
                })
            }
            StoreUrl::S3 {
                bucket,
                prefix,
                endpoint,
                region,
            } => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                builder = builder.with_region(region.as_deref().unwrap_or("us-east-1"));
                if let Some(id) = key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = secret {
                    builder = builder.with_secret_access_key(secret.expose_secret());
                }
                let store = builder.build().map_err(|e| e.to_string())?;
                Ok(Target {
                    role,
                    describe: format!("s3://{bucket}/{prefix}"),
                    store: Arc::new(store),
                    prefix: prefix.clone(),
                    local: None,
                })
            }
        }
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The stored (sealed) bytes of an object, as a stream. Local files are
    /// read in 4 MiB pieces (object_store's own stream reads 8 KiB per
    /// blocking task, which made downloads three times slower).
    pub async fn raw(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        let result = counted("get", self.store.get(&self.path(key)).await)?;
        Ok(match result.payload {
            GetResultPayload::File(file, _) => file_pieces(file),
            GetResultPayload::Stream(stream) => stream,
        })
    }

    pub async fn raw_bytes(&self, key: &str) -> Result<Bytes, object_store::Error> {
        let got = match self.store.get(&self.path(key)).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        counted("get", got)
    }

    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        counted(
            "delete",
            match self.store.delete(&self.path(key)).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            },
        )
    }

    /// Every object key under the prefix (for scrubs and tests).
    pub async fn list_keys(&self) -> Result<Vec<String>, object_store::Error> {
        Ok(self
            .list_folder("")
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// Every object under `folder` (keys below the prefix that start with
    /// `folder/`; `""` for all), with its size, listed by the store under
    /// that folder alone.
    pub async fn list_folder(
        &self,
        folder: &str,
    ) -> Result<Vec<(String, u64)>, object_store::Error> {
        let folder = folder.trim_end_matches('/');
        let within = match (folder.is_empty(), self.prefix.is_empty()) {
            (true, true) => None,
            (true, false) => Some(ObjectPath::from(self.prefix.as_str())),
            (false, _) => Some(self.path(folder)),
        };
        let mut objects = Vec::new();
        let mut listing = self.store.list(within.as_ref());
        while let Some(meta) = listing.next().await {
            let meta = counted("list", meta)?;
            let path = meta.location.to_string();
            let key = match self.prefix.is_empty() {
                true => path,
                false => path
                    .strip_prefix(&format!("{}/", self.prefix))
                    .unwrap_or(&path)
                    .to_owned(),
            };
            objects.push((key, meta.size));
        }
        Ok(objects)
    }

    /// Copies a good object over this store's copy (FIL-5 repair).
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), object_store::Error> {
        counted("put", self.store.put(&self.path(key), bytes.into()).await)?;
        Ok(())
    }
}

/// Counts an object-store operation by its result (`/metrics`).
fn counted<T>(op: &str, result: Result<T, object_store::Error>) -> Result<T, object_store::Error> {
    crate::metrics::get().object_store(op, result.is_ok());
    result
}

const FILE_PIECE: usize = 4 * 1024 * 1024;

/// A local object as a stream of 4 MiB pieces, each read on a blocking
/// thread. The next piece is read while the caller works on this one (one
/// read ahead); no thread is held while nobody asks for more.
fn file_pieces(file: std::fs::File) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    type Read = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Vec<u8>)>>;
    fn read_next(mut file: std::fs::File) -> Read {
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut piece = Vec::with_capacity(FILE_PIECE);
            (&mut file)
                .take(FILE_PIECE as u64)
                .read_to_end(&mut piece)?;
            Ok((file, piece))
        })
    }
    let io_error = |e: std::io::Error| object_store::Error::Generic {
        store: "local",
        source: Box::new(e),
    };
    futures_util::stream::try_unfold(Some(read_next(file)), move |pending| async move {
        let Some(pending) = pending else {
            return Ok(None);
        };
        let (file, piece) = pending
            .await
            .map_err(|e| io_error(std::io::Error::other(e)))?
            .map_err(io_error)?;
        // A short piece is the end of the file.
        let next = (piece.len() == FILE_PIECE).then(|| read_next(file));
        Ok((!piece.is_empty()).then(|| (Bytes::from(piece), next)))
    })
    .boxed()
}

/// The configured stores.
#[derive(Clone)]
pub struct Objects {
    targets: Arc<Vec<Target>>,
}

impl Objects {
    pub fn open(config: &Config) -> Result<Objects, String> {
        let primary = match &config.object_store_url {
            Some(url) => StoreUrl::parse(url)?,
            None => StoreUrl::Local(absolute(&config.data_dir.join("objects"))),
        };
        let mut targets = vec![Target::open(
            "primary",
            &primary,
            config.object_store_access_key_id.as_deref(),
            config.object_store_secret_access_key.as_ref(),
        )?];
        if let Some(url) = &config.object_store_replica_url {
            let replica = StoreUrl::parse(url)?;
            if replica == primary {
                return Err("the replica object store must differ from the primary".into());
            }
            targets.push(Target::open(
                "replica",
                &replica,
                config.object_store_replica_access_key_id.as_deref(),
                config.object_store_replica_secret_access_key.as_ref(),
            )?);
        }
        Ok(Objects {
            targets: Arc::new(targets),
        })
    }

    /// Primary first, then the replica.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Starts writing one object to every store.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, object_store::Error> {
        let mut uploads = Vec::with_capacity(self.targets.len());
        for target in self.targets.iter() {
            uploads.push(match &target.local {
                Some(dir) => Upload::Local(LocalWrite::start(dir, key).await?),
                None => {
                    let upload = target.store.put_multipart(&target.path(key)).await?;
                    Upload::Remote(WriteMultipart::new_with_chunk_size(upload, PART_BYTES))
                }
            });
        }
        Ok(ObjectWriter { uploads })
    }

    /// Removes an object from every store (missing is fine).
    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        for target in self.targets.iter() {
            target.delete(key).await?;
        }
        Ok(())
    }

    /// ENC-4: writes a canary through the same sealing writer uploads use,
    /// reads the stored bytes back raw and refuses if the plaintext shows,
    /// or if the store cannot be written and read at all (fail closed).
    pub async fn self_test(&self) -> Result<(), String> {
        let canary = format!(
            "strongroom-canary-{}",
            crate::audit::chain::to_hex(&crate::crypto::random_bytes::<16>())
        );
        let plaintext = canary.repeat(64);
        let key = generate_key();
        let object = format!("selftest/{}", uuid::Uuid::new_v4());
        let mut writer = self
            .writer(&object)
            .await
            .map_err(|e| format!("object store self-test: cannot write: {e}"))?;
        let mut sealer = Sealer::new(DataKey::new(&key));
        sealer.push(plaintext.as_bytes());
        let out = sealer.finish();
        writer
            .write(out.into())
            .await
            .map_err(|e| format!("object store self-test: cannot write: {e}"))?;
        writer
            .finish()
            .await
            .map_err(|e| format!("object store self-test: cannot write: {e}"))?;
        let mut result = Ok(());
        for target in self.targets.iter() {
            let outcome = match target.raw_bytes(&object).await {
                Err(e) => Err(format!(
                    "object store self-test: cannot read back from the {} store {}: {e}",
                    target.role, target.describe
                )),
                Ok(stored) => check_canary(&stored, canary.as_bytes(), &key, plaintext.as_bytes())
                    .map_err(|why| {
                        format!(
                            "object store self-test failed on the {} store {}: {why}; refusing to start",
                            target.role, target.describe
                        )
                    }),
            };
            if result.is_ok() {
                result = outcome;
            }
        }
        let _ = self.delete(&object).await;
        result?;
        for target in self.targets.iter() {
            tracing::info!(store = %target.describe, role = target.role,
                "object store self-test passed: only ciphertext is stored");
        }
        Ok(())
    }
}

/// What the self-test demands of the bytes a store kept: no trace of the
/// canary, and they open back to the exact plaintext.
pub fn check_canary(
    stored: &[u8],
    canary: &[u8],
    key: &[u8; 32],
    plaintext: &[u8],
) -> Result<(), String> {
    if stored.windows(canary.len()).any(|w| w == canary) {
        return Err("the plaintext canary is visible in the stored bytes".into());
    }
    let refused = |e: CryptoError| format!("the stored canary does not open: {e}");
    let mut opener = Opener::new(DataKey::new(key));
    let mut clear = opener
        .push(Bytes::copy_from_slice(stored))
        .map_err(refused)?;
    clear.push(opener.finish().map_err(refused)?);
    if clear.concat() != plaintext {
        return Err("the stored canary opens to different bytes".into());
    }
    Ok(())
}

fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// One object being written to every store at once.
pub struct ObjectWriter {
    uploads: Vec<Upload>,
}

enum Upload {
    Remote(WriteMultipart),
    Local(LocalWrite),
}

impl ObjectWriter {
    /// Queues sealed bytes for every store, without copying them.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), object_store::Error> {
        for upload in &mut self.uploads {
            match upload {
                Upload::Remote(upload) => {
                    upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                    upload.put(bytes.clone());
                }
                Upload::Local(upload) => upload.write(bytes.clone()).await?,
            }
        }
        Ok(())
    }

    pub async fn finish(self) -> Result<(), object_store::Error> {
        for upload in self.uploads {
            counted(
                "put",
                match upload {
                    Upload::Remote(upload) => upload.finish().await.map(drop),
                    Upload::Local(upload) => upload.finish().await,
                },
            )?;
        }
        Ok(())
    }

    /// Leaves nothing behind (over-size or refused uploads).
    pub async fn abort(self) {
        for upload in self.uploads {
            let aborted = match upload {
                Upload::Remote(upload) => upload.abort().await,
                Upload::Local(upload) => upload.abort().await,
            };
            if let Err(e) = aborted {
                tracing::warn!(error = %e, "could not abort an object upload");
            }
        }
    }
}

/// Unsynced bytes a local upload lets build up before it flushes them.
const SYNC_EVERY: u64 = 16 * 1024 * 1024;

/// An object being written to a local store: into a staging file beside
/// its final name (`<name>#<digits>`, which listings skip), one write in
/// flight on a blocking thread while the next batch is sealed, flushed to
/// disk as it grows so the closing fsync has little left to do, then
/// renamed into place and its directory synced. object_store's local
/// multipart writer flushed only at the end, which left the whole file to
/// wait for.
///
/// Each flush runs on a thread of its own (through a second handle to the
/// file) while later batches are written, so the disk and the CPU work at
/// the same time; a flush waits only for the one before it, which bounds
/// what is unsynced to two windows of [`SYNC_EVERY`].
struct LocalWrite {
    dest: std::path::PathBuf,
    staging: std::path::PathBuf,
    state: Option<LocalState>,
    flushing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

enum LocalState {
    Ready(Box<LocalFile>),
    Writing(tokio::task::JoinHandle<std::io::Result<LocalFile>>),
}

struct LocalFile {
    file: std::fs::File,
    unsynced: u64,
}

fn local_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    object_store::Error::Generic {
        store: "local",
        source: e.into(),
    }
}

impl LocalWrite {
    /// `key` is one we generated (`t/<tenant>/<file>`), never a client's.
    async fn start(dir: &std::path::Path, key: &str) -> Result<LocalWrite, object_store::Error> {
        let dest = dir.join(key);
        let mut staging = dest.clone().into_os_string();
        staging.push(format!(
            "#{}",
            u64::from_le_bytes(crate::crypto::random_bytes::<8>())
        ));
        let staging = std::path::PathBuf::from(staging);
        let opened = staging.clone();
        let file = tokio::task::spawn_blocking(move || {
            if let Some(parent) = opened.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&opened)
        })
        .await
        .map_err(local_error)?
        .map_err(local_error)?;
        Ok(LocalWrite {
            dest,
            staging,
            state: Some(LocalState::Ready(Box::new(LocalFile { file, unsynced: 0 }))),
            flushing: None,
        })
    }

    /// Waits for the write in flight.
    async fn settle(&mut self) -> Result<LocalFile, object_store::Error> {
        match self.state.take() {
            Some(LocalState::Ready(file)) => Ok(*file),
            Some(LocalState::Writing(job)) => job.await.map_err(local_error)?.map_err(local_error),
            None => Err(local_error("the upload failed earlier")),
        }
    }

    /// Waits for the flush in flight, if any.
    async fn flushed(&mut self) -> Result<(), object_store::Error> {
        match self.flushing.take() {
            Some(job) => job.await.map_err(local_error)?.map_err(local_error),
            None => Ok(()),
        }
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), object_store::Error> {
        let mut local = self.settle().await?;
        if local.unsynced >= SYNC_EVERY {
            self.flushed().await?;
            let file = local.file.try_clone().map_err(local_error)?;
            self.flushing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
            local.unsynced = 0;
        }
        self.state = Some(LocalState::Writing(tokio::task::spawn_blocking(
            move || {
                use std::io::Write;
                local.file.write_all(&bytes)?;
                local.unsynced += bytes.len() as u64;
                Ok(local)
            },
        )));
        Ok(())
    }

    async fn finish(mut self) -> Result<(), object_store::Error> {
        let local = self.settle().await?;
        self.flushed().await?;
        let (staging, dest) = (self.staging.clone(), self.dest.clone());
        let published = tokio::task::spawn_blocking(move || {
            local.file.sync_all()?;
            drop(local);
            std::fs::rename(&staging, &dest)?;
            match dest.parent() {
                Some(parent) => std::fs::File::open(parent)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(local_error)?;
        // On failure, dropping `self` removes the staging file.
        published.map_err(local_error)
    }

    async fn abort(mut self) -> Result<(), object_store::Error> {
        let _ = self.settle().await;
        let _ = self.flushed().await;
        match tokio::fs::remove_file(&self.staging).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(local_error(e)),
            _ => Ok(()),
        }
    }
}

impl Drop for LocalWrite {
    /// An upload dropped half-way (its client went away) leaves no staging
    /// file; after a publish or an abort there is nothing left to remove.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_refuse_clearly() {
        assert_eq!(
            StoreUrl::parse(
                "s3://files-bucket/acme/prod?endpoint=http://127.0.0.1:9000&region=eu-central-1"
            )
            .unwrap(),
            StoreUrl::S3 {
                bucket: "files-bucket".into(),
                prefix: "acme/prod".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-central-1".into()),
            }
        );
        assert!(matches!(
            StoreUrl::parse("file:///srv/objects"),
            Ok(StoreUrl::Local(_))
        ));
        assert!(StoreUrl::parse("file://relative").is_err());
        assert!(StoreUrl::parse("s3://b").is_err());
        assert!(StoreUrl::parse("ftp://x/y").is_err());
        assert!(StoreUrl::parse("s3://bucket?colour=red").is_err());
    }

    #[test]
    fn the_self_test_refuses_plaintext_and_accepts_sealed_bytes() {
        let key = generate_key();
        let canary = b"strongroom-canary-0123456789abcdef";
        let plaintext = canary.repeat(4);
        // A store that kept the plaintext (an unencrypted write path).
        assert!(check_canary(&plaintext, canary, &key, &plaintext).is_err());
        let mut sealer = Sealer::new(DataKey::new(&key));
        sealer.push(&plaintext);
        let mut sealed = sealer.finish();
        assert!(check_canary(&sealed, canary, &key, &plaintext).is_ok());
        sealed.truncate(sealed.len() - 3);
        assert!(check_canary(&sealed, canary, &key, &plaintext).is_err());
    }
}
