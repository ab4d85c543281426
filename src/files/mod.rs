//! Files (FIL-1 … FIL-5; NET-5 for stored names): uploads into `file` fields of records, streamed
//! and sealed chunk by chunk with a fresh per-file key (itself wrapped by
//! the tenant's data key), stored in the configured object stores, served
//! back only after every chunk and the plaintext SHA-256 verify — from the
//! replica when the primary copy is missing or damaged, which is then
//! repaired. Content types are sniffed from the bytes; active content is
//! refused; downloads are attachments under a sandbox CSP (FIL-4). Every
//! upload, download, signed-URL use and deletion is an audit event and an
//! access-log row (FIL-3).

pub mod http;
mod objects;
pub mod signed;
mod sniff;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use objects::{ObjectWriter, Objects, StoreUrl, Target, check_canary};
pub use sniff::{KNOWN_TYPES, is_known_type, sniff};

use crate::access::AccessError;
use crate::context::Permit;
use crate::context::RequestMeta;
use crate::context::TenantScope;
use crate::crypto::aead::{DataKey, KeyBytes, generate_key};
use crate::crypto::stream::{Opener, Sealer, sealed_size};
use crate::crypto::{CryptoError, Vault};
use crate::records::{self, FieldType, Place, RecordError, sealed};
use crate::store::Conn;
use crate::store::db;
use crate::store::{Change, JournalOp, Store, StoreError};

/// Sealed bytes gathered before they are handed to the stores.
const FLUSH_BYTES: usize = 4 * 1024 * 1024;
/// Files up to this size are served from the plaintext their check before
/// serving opened (it is all in memory by then anyway: two pieces), rather
/// than read and opened a second time.
pub const KEEP_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes looked at to decide a file's type.
const SNIFF_BYTES: usize = 512;
/// After an over-size upload, how much more of the body is read (and
/// dropped) so the client hears the 413 instead of a reset connection.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file not found")]
    NotFound,
    #[error("field {0:?} is not a file field of this collection")]
    NotAFileField(String),
    #[error("the file is larger than field {field:?} allows ({limit} bytes)")]
    TooLarge { field: String, limit: u64 },
    #[error(
        "field {field:?} does not accept {sniffed} (the type was read from the file's bytes, not taken from the client)"
    )]
    TypeNotAccepted {
        field: String,
        sniffed: &'static str,
    },
    #[error("field {field:?} already holds its maximum of {max} files")]
    TooManyFiles { field: String, max: u32 },
    #[error("{0}")]
    BadUpload(String),
    #[error("the link is invalid or has expired")]
    BadSignature,
    #[error("object storage failed: {0}")]
    Objects(#[from] object_store::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<db::Error> for FileError {
    fn from(e: db::Error) -> Self {
        FileError::Store(e.into())
    }
}

/// How deeply a stored copy is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Every chunk's authentication tag, the end marker and the sizes.
    Tags,
    /// All of that and the plaintext SHA-256 recorded at upload.
    Checksum,
}

/// What the API shows of a stored file (also kept in the record's field).
#[derive(Clone, Debug, Serialize)]
pub struct FileInfo {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: String,
}

impl FileInfo {
    fn descriptor(&self) -> Value {
        json!(self)
    }
}

/// A file row with its key, ready to be served.
pub struct OpenFile {
    pub info: FileInfo,
    pub record_id: String,
    object_key: String,
    stored_size: u64,
    key: KeyBytes,
}

fn file_key_aad(tenant: &str, file_id: &str) -> Vec<u8> {
    format!("strongroom/v1/file-key/{tenant}/{file_id}").into_bytes()
}

fn name_aad(tenant: &str, file_id: &str) -> Vec<u8> {
    format!("strongroom/v1/file-name/{tenant}/{file_id}").into_bytes()
}

fn object_key(tenant: &str, file_id: &str) -> String {
    format!("t/{tenant}/{file_id}")
}

/// A client's file name, kept as metadata only: no path, no control
/// characters, no bidirectional controls (NET-5: `invoice\u{202E}fdp.exe`
/// must not show as `invoiceexe.pdf`), at most 255 characters.
pub fn clean_name(raw: Option<&str>) -> String {
    let base = raw
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .take(255)
        .collect::<String>();
    let base = base.trim();
    if base.is_empty() || base == "." || base == ".." {
        "file".to_owned()
    } else {
        base.to_owned()
    }
}

/// The characters that reorder how text is shown: embeddings, overrides
/// and isolates (U+202A–U+202E, U+2066–U+2069) and the direction marks.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// Where an upload goes: a file field of one record.
#[derive(Clone, Copy)]
pub struct Slot<'a> {
    pub collection: &'a str,
    pub record_id: &'a str,
    pub field: &'a str,
}

/// What an upload needs from the server.
#[derive(Clone)]
pub struct Files {
    pub store: Store,
    pub vault: Vault,
    pub objects: Objects,
}

struct Upload {
    field: String,
    limit: u64,
    accept: Option<Vec<String>>,
}

impl Files {
    async fn check_target(
        &self,
        scope: &TenantScope,
        collection: &str,
        record_id: &str,
        field: &str,
    ) -> Result<Upload, FileError> {
        let mut tx = self.store.read(scope).await?;
        let backend = tx.backend();
        let tenant = scope.id_str();
        let collection = records::find_collection(tx.conn(), tenant, collection).await?;
        let spec = collection
            .field(field)
            .filter(|f| f.kind == FieldType::File)
            .ok_or_else(|| FileError::NotAFileField(field.to_owned()))?
            .clone();
        records::find_record(tx.conn(), backend, tenant, &collection, record_id).await?;
        Ok(Upload {
            field: spec.name.clone(),
            limit: spec.max_file_bytes(),
            accept: spec.accept.clone(),
        })
    }

    /// Streams one upload into the stores, then records it in one write.
    /// Nothing is stored when the upload is refused or fails.
    pub async fn upload<S, E>(
        &self,
        permit: &Permit,
        meta: &RequestMeta,
        slot: Slot<'_>,
        name: String,
        mut body: S,
    ) -> Result<FileInfo, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let spec = self
            .check_target(permit.scope(), slot.collection, slot.record_id, slot.field)
            .await?;
        let tenant = permit.scope().id_str().to_owned();
        let file_id = uuid::Uuid::now_v7().to_string();
        let key_bytes = generate_key();
        let mut pipeline = Pipeline::new(DataKey::new(&key_bytes));
        let mut size: u64 = 0;
        let mut head: Vec<u8> = Vec::new();
        let mut writer: Option<(ObjectWriter, &'static str)> = None;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut parts_len = 0;
        let read_err = |e: E| FileError::BadUpload(format!("the upload was interrupted: {e}"));
        let object = object_key(&tenant, &file_id);
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(e)) => {
                    abort(writer.take()).await;
                    return Err(read_err(e));
                }
                None => None,
            };
            let Some(chunk) = chunk else {
                break;
            };
            size += chunk.len() as u64;
            if size > spec.limit {
                abort(writer.take()).await;
                drain(&mut body, size).await;
                return Err(FileError::TooLarge {
                    field: spec.field.clone(),
                    limit: spec.limit,
                });
            }
            let chunk = if writer.is_none() {
                head.extend_from_slice(&chunk);
                if head.len() < SNIFF_BYTES {
                    continue;
                }
                writer = Some(self.start(&spec, &head, &object).await?);
                Bytes::from(std::mem::take(&mut head))
            } else {
                chunk
            };
            parts_len += chunk.len();
            parts.push(chunk);
            if parts_len >= FLUSH_BYTES {
                let (w, _) = writer.as_mut().expect("started");
                let batch = std::mem::take(&mut parts);
                parts_len = 0;
                if let Err(e) = pipeline.hand_over(batch, w).await {
                    abort(writer.take()).await;
                    return Err(e);
                }
            }
        }
        if writer.is_none() {
            writer = Some(self.start(&spec, &head, &object).await?);
            parts.push(Bytes::from(head));
        }
        let (mut w, content_type) = writer.expect("started");
        let sha = match pipeline.finish(parts, &mut w).await {
            Ok(sha) => sha,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        };
        w.finish().await?;
        let info = FileInfo {
            id: file_id.clone(),
            name,
            content_type: content_type.to_owned(),
            size,
            sha256: crate::audit::chain::to_hex(&sha),
            created_at: crate::clock::now(),
        };
        let saved = self
            .record_upload(permit, meta, slot, &info, key_bytes)
            .await;
        if saved.is_err()
            && let Err(e) = self.objects.delete(&object).await
        {
            tracing::warn!(error = %e, "could not remove the object of a failed upload");
        }
        saved.map(|()| info)
    }

    /// Sniffs the first bytes and opens the writers once the type is allowed.
    async fn start(
        &self,
        spec: &Upload,
        head: &[u8],
        object: &str,
    ) -> Result<(ObjectWriter, &'static str), FileError> {
        let sniffed = sniff(head);
        let allowed = match &spec.accept {
            Some(list) => list.iter().any(|t| t == sniffed),
            None => is_known_type(sniffed),
        };
        if !allowed {
            return Err(FileError::TypeNotAccepted {
                field: spec.field.clone(),
                sniffed,
            });
        }
        Ok((self.objects.writer(object).await?, sniffed))
    }

    async fn record_upload(
        &self,
        permit: &Permit,
        meta: &RequestMeta,
        slot: Slot<'_>,
        info: &FileInfo,
        key_bytes: KeyBytes,
    ) -> Result<(), FileError> {
        let (collection, record_id, field, info) = (
            slot.collection.to_owned(),
            slot.record_id.to_owned(),
            slot.field.to_owned(),
            info.clone(),
        );
        let vault = self.vault.in_write();
        self.store
            .write(permit, meta, "file.upload", move |tx| {
                Box::pin(async move {
                    let tenant = tx.scope().id_str().to_owned();
                    let backend = tx.backend();
                    let coll = records::find_collection(tx.conn(), &tenant, &collection).await?;
                    let spec = coll
                        .field(&field)
                        .filter(|f| f.kind == FieldType::File)
                        .ok_or_else(|| FileError::NotAFileField(field.clone()))?
                        .clone();
                    let before =
                        records::find_record(tx.conn(), backend, &tenant, &coll, &record_id)
                            .await?;
                    let key = vault.active_in(tx).await?;
                    let place = Place {
                        tenant: &tenant,
                        collection: &coll,
                        record_id: &record_id,
                    };
                    let mut list = field_files(&vault, tx.conn(), &place, &before, &spec).await?;
                    if list.len() >= spec.max_files() as usize {
                        return Err(FileError::TooManyFiles {
                            field: field.clone(),
                            max: spec.max_files(),
                        });
                    }
                    list.push(info.descriptor());
                    let wrapped = key.key.wrap(&file_key_aad(&tenant, &info.id), &key_bytes);
                    let file_key = DataKey::new(&key_bytes);
                    let sealed_name = file_key.seal(&name_aad(&tenant, &info.id), info.name.as_bytes());
                    let object = object_key(&tenant, &info.id);
                    db::query(
                        "INSERT INTO files (id, tenant_id, collection_id, record_id, field, name, \
                         content_type, size, sha256, stored_size, object_key, key_version, wrapped_key, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    )
                    .bind(&info.id)
                    .bind(&tenant)
                    .bind(&coll.id)
                    .bind(&record_id)
                    .bind(&field)
                    .bind(STANDARD.encode(&sealed_name))
                    .bind(&info.content_type)
                    .bind(info.size as i64)
                    .bind(&info.sha256)
                    .bind(sealed_size(info.size) as i64)
                    .bind(&object)
                    .bind(key.version)
                    .bind(wrapped.clone())
                    .bind(&info.created_at)
                    .execute(tx.conn())
                    .await?;
                    set_field_files(tx, &vault, &coll, before, &spec, list).await?;
                    tx.record(Change {
                        entity: "file",
                        entity_id: info.id.clone(),
                        op: JournalOp::Insert,
                        before: None,
                        after: Some(json!({
                            "id": info.id, "record_id": record_id, "field": field,
                            "content_type": info.content_type, "size": info.size,
                            "sha256": info.sha256, "object_key": object,
                            "key_version": key.version,
                            "wrapped_key": crate::audit::chain::to_hex(&wrapped),
                            "name_sealed": crate::audit::chain::to_hex(&sealed_name),
                        })),
                        sensitive: vec!["wrapped_key".into(), "name_sealed".into()],
                        diff_of: None,
                    });
                    tx.set_target("file", info.id.clone());
                    Ok(())
                })
            })
            .await
    }

    /// Finds a file of a record and unwraps its key.
    pub async fn open(
        &self,
        scope: &TenantScope,
        collection: &str,
        record_id: &str,
        file_id: &str,
    ) -> Result<OpenFile, FileError> {
        let mut tx = self.store.read(scope).await?;
        let tenant = scope.id_str();
        let collection = records::find_collection(tx.conn(), tenant, collection).await?;
        let row = db::query(format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE tenant_id = $1 AND id = $2 AND record_id = $3 AND collection_id = $4"
        ))
        .bind(tenant)
        .bind(file_id)
        .bind(record_id)
        .bind(&collection.id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(FileError::NotFound)?;
        open_row(&self.vault, tx.conn(), tenant, &row).await
    }

    /// Finds a file by id alone (signed URLs carry no collection or record).
    /// The name of the collection whose record holds file `file_id`.
    pub async fn collection_of(
        &self,
        scope: &TenantScope,
        file_id: &str,
    ) -> Result<String, FileError> {
        let mut tx = self.store.read(scope).await?;
        db::query_scalar(
            "SELECT c.name FROM files f JOIN collections c ON c.id = f.collection_id \
             WHERE f.tenant_id = $1 AND f.id = $2",
        )
        .bind(scope.id_str())
        .bind(file_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(FileError::NotFound)
    }

    pub async fn open_by_id(
        &self,
        scope: &TenantScope,
        file_id: &str,
    ) -> Result<OpenFile, FileError> {
        let mut tx = self.store.read(scope).await?;
        let tenant = scope.id_str();
        let row = db::query(format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(file_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(FileError::NotFound)?;
        open_row(&self.vault, tx.conn(), tenant, &row).await
    }

    /// Checks a copy end to end: every chunk authenticates and the sizes
    /// match; with `Depth::Checksum` the plaintext's SHA-256 is compared to
    /// the one recorded at upload too (the scrub does; serving relies on
    /// the authentication tags, which already cover every byte). With
    /// `keep`, returns the verified plaintext (for files of at most
    /// [`KEEP_BYTES`]).
    pub async fn verify_copy(
        &self,
        target: &Target,
        file: &OpenFile,
        depth: Depth,
        keep: bool,
    ) -> Result<Option<Vec<Bytes>>, String> {
        let mut stream = target
            .raw(&file.object_key)
            .await
            .map_err(|e| e.to_string())?;
        // Each piece opens on a blocking thread while the next one is read.
        let checksum = depth == Depth::Checksum;
        let mut check: Background<Result<Check, CryptoError>> =
            Background::Idle(Box::new(Ok(Check {
                opener: Opener::parallel(DataKey::new(&file.key)),
                tally: Tally {
                    sha: Sha256::new(),
                    size: 0,
                    kept: (keep && file.info.size <= KEEP_BYTES).then(Vec::new),
                },
            })));
        let mut stored = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| e.to_string())?;
            stored += piece.len() as u64;
            let mut state = check
                .settle()
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            check = Background::start(move || {
                let opened = state.opener.push(piece)?;
                state.tally.absorb(opened, checksum);
                Ok(state)
            });
        }
        let Check { opener, mut tally } = check
            .settle()
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tally.absorb(vec![opener.finish().map_err(|e| e.to_string())?], checksum);
        let Tally { sha, size, kept } = tally;
        if stored != file.stored_size {
            return Err(format!(
                "stored size {stored}, expected {}",
                file.stored_size
            ));
        }
        if size != file.info.size
            || (depth == Depth::Checksum
                && crate::audit::chain::to_hex(&sha.finalize()) != file.info.sha256)
        {
            return Err("the plaintext checksum does not match".into());
        }
        Ok(kept)
    }

    /// FIL-5: finds a good copy (primary first), repairs a bad primary from
    /// the replica, and says where to serve from.
    pub async fn good_copy(&self, file: &OpenFile) -> Result<GoodCopy, FileError> {
        let targets = self.objects.targets();
        let mut failures = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            match self.verify_copy(target, file, Depth::Tags, true).await {
                Ok(kept) => {
                    if i > 0 {
                        self.repair(file, i, &failures).await;
                    }
                    return Ok(GoodCopy { store: i, kept });
                }
                Err(why) => {
                    tracing::error!(file = %file.info.id, store = %target.describe, role = target.role,
                        error = %why, "stored copy failed verification");
                    failures.push(i);
                }
            }
        }
        Err(
            CryptoError::Integrity(format!("no stored copy of file {} verifies", file.info.id))
                .into(),
        )
    }

    /// Overwrites the copies in `bad` stores with the one in `good`.
    pub async fn repair(&self, file: &OpenFile, good: usize, bad: &[usize]) {
        let targets = self.objects.targets();
        let bytes = match targets[good].raw_bytes(&file.object_key).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the good copy for repair");
                return;
            }
        };
        for &i in bad {
            match targets[i].put_bytes(&file.object_key, bytes.clone()).await {
                Ok(()) => tracing::warn!(file = %file.info.id, store = %targets[i].describe,
                    "repaired a damaged or missing copy from the {} store", targets[good].role),
                Err(e) => tracing::error!(file = %file.info.id, error = %e, "repair failed"),
            }
        }
    }

    /// The verified plaintext of a copy, piece by piece. A chunk that fails
    /// here (the object changed after verification) ends the stream with
    /// an error, so the client sees a broken transfer, not altered bytes.
    /// A task reads and opens the next piece (on a blocking thread) while
    /// the response sends the previous one.
    pub async fn plaintext(
        &self,
        file: &OpenFile,
        target: usize,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + use<>, FileError> {
        type Opened = Result<Vec<Bytes>, std::io::Error>;
        let mut raw = self.objects.targets()[target].raw(&file.object_key).await?;
        let mut opener = Some(Opener::new(DataKey::new(&file.key)));
        let (pieces, received) = tokio::sync::mpsc::channel::<Opened>(2);
        tokio::spawn(async move {
            let failed = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
            while let Some(mut current) = opener.take() {
                let (next, done) = match raw.next().await {
                    Some(Ok(piece)) => {
                        let opened = tokio::task::spawn_blocking(move || {
                            let result = current.push(piece);
                            (current, result)
                        })
                        .await;
                        match opened {
                            Ok((back, result)) => {
                                opener = Some(back);
                                let done = result.is_err();
                                (result.map_err(|e| failed(&e)), done)
                            }
                            Err(e) => (Err(failed(&e)), true),
                        }
                    }
                    Some(Err(e)) => (Err(failed(&e)), true),
                    None => (
                        current
                            .finish()
                            .map(|last| vec![last])
                            .map_err(|e| failed(&e)),
                        true,
                    ),
                };
                let empty = matches!(&next, Ok(opened) if opened.is_empty());
                // A closed channel means the client went away.
                if (!empty && pieces.send(next).await.is_err()) || done {
                    return;
                }
            }
        });
        let received = futures_util::stream::unfold(received, |mut received| async move {
            received.recv().await.map(|item| (item, received))
        });
        Ok(received.flat_map(|item: Opened| {
            let parts: Vec<Result<Bytes, std::io::Error>> = match item {
                Ok(opened) => opened.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(parts)
        }))
    }

    /// Deletes one file; its objects are swept from the stores after commit.
    pub async fn delete(
        &self,
        permit: &Permit,
        meta: &RequestMeta,
        collection: &str,
        record_id: &str,
        file_id: &str,
    ) -> Result<(), FileError> {
        let (collection, record_id, file_id) = (
            collection.to_owned(),
            record_id.to_owned(),
            file_id.to_owned(),
        );
        let vault = self.vault.in_write();
        self.store
            .write(permit, meta, "file.delete", move |tx| {
                Box::pin(async move {
                    let tenant = tx.scope().id_str().to_owned();
                    let backend = tx.backend();
                    let coll = records::find_collection(tx.conn(), &tenant, &collection).await?;
                    let field: String = db::query_scalar(
                        "SELECT field FROM files WHERE tenant_id = $1 AND id = $2 AND record_id = $3 AND collection_id = $4",
                    )
                    .bind(&tenant)
                    .bind(&file_id)
                    .bind(&record_id)
                    .bind(&coll.id)
                    .fetch_optional(tx.conn())
                    .await?
                    .ok_or(FileError::NotFound)?;
                    db::query("DELETE FROM files WHERE tenant_id = $1 AND id = $2")
                        .bind(&tenant)
                        .bind(&file_id)
                        .execute(tx.conn())
                        .await?;
                    let before =
                        records::find_record(tx.conn(), backend, &tenant, &coll, &record_id).await?;
                    if let Some(spec) = coll.field(&field).cloned() {
                        let place = Place { tenant: &tenant, collection: &coll, record_id: &record_id };
                        let mut list = field_files(&vault, tx.conn(), &place, &before, &spec).await?;
                        list.retain(|d| d["id"] != json!(file_id));
                        set_field_files(tx, &vault, &coll, before, &spec, list).await?;
                    }
                    tx.record(Change {
                        entity: "file",
                        entity_id: file_id.clone(),
                        op: JournalOp::Delete,
                        before: None,
                        after: None,
                        sensitive: vec![],
                        diff_of: None,
                    });
                    tx.set_target("file", file_id.clone());
                    Ok::<_, FileError>(())
                })
            })
            .await?;
        self.sweep(permit.scope()).await;
        Ok(())
    }

    /// Removes the objects of deleted files from every store.
    pub async fn sweep(&self, scope: &TenantScope) {
        if let Err(e) = self.try_sweep(scope).await {
            tracing::warn!(error = %e, "file sweep failed; it runs again later");
        }
    }

    async fn try_sweep(&self, scope: &TenantScope) -> Result<(), FileError> {
        let keys: Vec<String> = {
            let mut tx = self.store.read(scope).await?;
            db::query_scalar(
                "SELECT object_key FROM file_tombstones WHERE tenant_id = $1 LIMIT 500",
            )
            .bind(scope.id_str())
            .fetch_all(tx.conn())
            .await?
        };
        for key in keys {
            self.objects.delete(&key).await?;
            self.store
                .append_internal(Some(scope), move |conn| {
                    Box::pin(async move {
                        db::query("DELETE FROM file_tombstones WHERE object_key = $1")
                            .bind(key)
                            .execute(conn)
                            .await?;
                        Ok(())
                    })
                })
                .await?;
        }
        Ok(())
    }

    /// Rotation (ENC-3): rewraps up to `limit` file keys wrapped by an
    /// older data-key version. The objects themselves do not change.
    pub async fn rewrap_batch(
        &self,
        permit: &Permit,
        meta: &RequestMeta,
        limit: i64,
    ) -> Result<u64, FileError> {
        let vault = self.vault.in_write();
        self.store
            .write(permit, meta, "keys.rewrap_files", move |tx| {
                Box::pin(async move {
                    let tenant = tx.scope().id_str().to_owned();
                    let backend = tx.backend();
                    let key = vault.active(tx.conn(), backend, &tenant).await?;
                    let rows = db::query(format!(
                        "SELECT id, key_version, wrapped_key FROM files \
                         WHERE tenant_id = $1 AND key_version < $2 ORDER BY id LIMIT {limit}"
                    ))
                    .bind(&tenant)
                    .bind(key.version)
                    .fetch_all(tx.conn())
                    .await?;
                    for row in &rows {
                        let id: String = row.try_get("id")?;
                        let version: i64 = row.try_get("key_version")?;
                        let wrapped: Vec<u8> = row.try_get("wrapped_key")?;
                        let old = vault.key(tx.conn(), &tenant, version).await?;
                        let aad = file_key_aad(&tenant, &id);
                        let bytes = old.unwrap(&aad, &wrapped)?;
                        let rewrapped = key.key.wrap(&aad, &bytes);
                        db::query(
                            "UPDATE files SET wrapped_key = $1, key_version = $2 WHERE tenant_id = $3 AND id = $4",
                        )
                        .bind(rewrapped.clone())
                        .bind(key.version)
                        .bind(&tenant)
                        .bind(&id)
                        .execute(tx.conn())
                        .await?;
                        tx.record(Change {
                            entity: "file",
                            entity_id: id.clone(),
                            op: JournalOp::Update,
                            before: None,
                            after: Some(json!({
                                "id": id, "key_version": key.version,
                                "wrapped_key": crate::audit::chain::to_hex(&rewrapped),
                            })),
                            sensitive: vec!["wrapped_key".into()],
                            diff_of: None,
                        });
                    }
                    tx.set_target("key_version", key.version.to_string());
                    Ok(rows.len() as u64)
                })
            })
            .await
    }

    /// Every file of a tenant, in pages by id, for scrubs (`files verify`):
    /// the first page, then the one after the last id seen.
    pub async fn list_ids(
        &self,
        scope: &TenantScope,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, FileError> {
        let mut tx = self.store.read(scope).await?;
        let query = match after {
            Some(after) => db::query_scalar(format!(
                "SELECT id FROM files WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT {limit}"
            ))
            .bind(scope.id_str())
            .bind(after),
            None => db::query_scalar(format!(
                "SELECT id FROM files WHERE tenant_id = $1 ORDER BY id LIMIT {limit}"
            ))
            .bind(scope.id_str()),
        };
        Ok(query.fetch_all(tx.conn()).await?)
    }
}

/// What a look at a tenant's stored files showed (posture: ENC-2, FIL-3,
/// FIL-4).
#[derive(Debug, Default)]
pub struct FileSample {
    pub files: i64,
    /// Sampled objects whose raw bytes opened with the file's key.
    pub sealed: usize,
    /// Sampled objects that could not be checked: keys revoked or
    /// destroyed on purpose.
    pub locked: usize,
    /// Files (within the trail's retention) with no upload event.
    pub unaudited: i64,
    /// Stored content types that are active content.
    pub active: Vec<String>,
    pub problems: Vec<String>,
}

impl Files {
    /// Counts a tenant's files, checks every stored content type against
    /// the active-content rule and that each file of the retained trail
    /// has its upload event, and reads the raw bytes of the newest `sample`
    /// objects from the primary store: each must authenticate, chunk by
    /// chunk, under its file key — ciphertext, not the file.
    pub async fn sample(&self, scope: &TenantScope, sample: i64) -> Result<FileSample, FileError> {
        let tenant = scope.id_str();
        let (files, unaudited, types, newest) = {
            let mut tx = self.store.read(scope).await?;
            let files: i64 = db::query_scalar("SELECT COUNT(*) FROM files WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(tx.conn())
                .await?;
            let unaudited: i64 = db::query_scalar(
                "SELECT COUNT(*) FROM files f WHERE f.tenant_id = $1 AND f.created_at >= \
                 COALESCE((SELECT MIN(occurred_at) FROM audit_events WHERE tenant_id = $1), \
                 f.created_at) AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE \
                 a.tenant_id = $1 AND a.action = 'file.upload' AND a.target_id = CAST(f.id AS TEXT))",
            )
            .bind(tenant)
            .fetch_one(tx.conn())
            .await?;
            let types: Vec<String> =
                db::query_scalar("SELECT DISTINCT content_type FROM files WHERE tenant_id = $1")
                    .bind(tenant)
                    .fetch_all(tx.conn())
                    .await?;
            let newest: Vec<String> = db::query_scalar(format!(
                "SELECT id FROM files WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC \
                 LIMIT {sample}"
            ))
            .bind(tenant)
            .fetch_all(tx.conn())
            .await?;
            (files, unaudited, types, newest)
        };
        let mut out = FileSample {
            files,
            unaudited,
            active: types.into_iter().filter(|t| !is_known_type(t)).collect(),
            ..FileSample::default()
        };
        let Some(primary) = self.objects.targets().first() else {
            return Ok(out);
        };
        for id in newest {
            match self.open_by_id(scope, &id).await {
                Ok(file) => match self.verify_copy(primary, &file, Depth::Tags, false).await {
                    Ok(_) => out.sealed += 1,
                    Err(why) => out.problems.push(format!("file {id}: {why}")),
                },
                Err(FileError::Crypto(
                    CryptoError::KeyRevoked { .. } | CryptoError::KeysDestroyed,
                )) => out.locked += 1,
                Err(e) => out.problems.push(format!("file {id}: {e}")),
            }
        }
        Ok(out)
    }
}

const FILE_COLUMNS: &str = "id, record_id, name, content_type, size, sha256, stored_size, object_key, key_version, wrapped_key, created_at";

async fn open_row(
    vault: &Vault,
    conn: &mut Conn,
    tenant: &str,
    row: &db::Row,
) -> Result<OpenFile, FileError> {
    let id: String = row.try_get("id")?;
    let version: i64 = row.try_get("key_version")?;
    let wrapped: Vec<u8> = row.try_get("wrapped_key")?;
    let data_key = vault.key(conn, tenant, version).await?;
    let key = data_key.unwrap(&file_key_aad(tenant, &id), &wrapped)?;
    let sealed_name: String = row.try_get("name")?;
    let sealed_name = STANDARD
        .decode(sealed_name)
        .map_err(|_| CryptoError::Integrity("file name is not sealed".into()))?;
    let name = DataKey::new(&key).open(&name_aad(tenant, &id), &sealed_name)?;
    let size: i64 = row.try_get("size")?;
    let stored_size: i64 = row.try_get("stored_size")?;
    Ok(OpenFile {
        info: FileInfo {
            id,
            name: String::from_utf8_lossy(&name).into_owned(),
            content_type: row.try_get("content_type")?,
            size: size as u64,
            sha256: row.try_get("sha256")?,
            created_at: row.try_get("created_at")?,
        },
        record_id: row.try_get("record_id")?,
        object_key: row.try_get("object_key")?,
        stored_size: stored_size as u64,
        key,
    })
}

/// The descriptors a record's file field holds (opened if it is sealed).
async fn field_files(
    vault: &Vault,
    conn: &mut Conn,
    place: &Place<'_>,
    record: &records::Record,
    spec: &records::Field,
) -> Result<Vec<Value>, FileError> {
    let mut data = serde_json::Map::new();
    if let Some(value) = record.data.get(&spec.name) {
        data.insert(spec.name.clone(), value.clone());
    }
    if spec.is_encrypted() {
        sealed::open_fields(vault, conn, place, &mut data).await?;
    }
    Ok(match data.remove(&spec.name) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    })
}

/// Writes a file field's new descriptor list into the record (sealed if
/// the field is encrypted), bumping its version, journaled and audited.
async fn set_field_files(
    tx: &mut crate::store::WriteTx,
    vault: &Vault,
    collection: &records::Collection,
    before: records::Record,
    spec: &records::Field,
    list: Vec<Value>,
) -> Result<(), FileError> {
    let tenant = tx.scope().id_str().to_owned();
    let backend = tx.backend();
    let mut after = before.clone();
    after.version += 1;
    after.updated_at = crate::clock::now();
    if list.is_empty() {
        after.data.remove(&spec.name);
    } else {
        after.data.insert(spec.name.clone(), Value::Array(list));
        if spec.is_encrypted() {
            let key = vault.active(tx.conn(), backend, &tenant).await?;
            let place = Place {
                tenant: &tenant,
                collection,
                record_id: &after.id,
            };
            sealed::seal_fields(
                &place,
                &key,
                &mut after.data,
                std::iter::once(spec.name.as_str()),
            );
        }
    }
    db::query(format!(
        "UPDATE records SET data = {}, version = $2, updated_at = $3, key_version = $4 \
         WHERE tenant_id = $5 AND id = $6",
        records::data_param(backend, 1)
    ))
    .bind(Value::Object(after.data.clone()).to_string())
    .bind(after.version)
    .bind(&after.updated_at)
    .bind(sealed::oldest_version(collection, &after.data))
    .bind(&tenant)
    .bind(&after.id)
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "record",
        entity_id: after.id.clone(),
        op: JournalOp::Update,
        before: Some(before.image()),
        after: Some(after.image()),
        sensitive: collection.sensitive(),
        diff_of: Some("data"),
    });
    Ok(())
}

/// The CPU side of an upload: hashing and sealing each run on a blocking
/// thread of their own while the request reads the next part of the body,
/// so the three overlap instead of taking turns.
struct Pipeline {
    sealing: Background<Sealer>,
    hashing: Background<Sha256>,
}

impl Pipeline {
    fn new(key: DataKey) -> Pipeline {
        Pipeline {
            sealing: Background::Idle(Box::new(Sealer::new(key))),
            hashing: Background::Idle(Box::new(Sha256::new())),
        }
    }

    /// Starts hashing and sealing `parts`, then hands what earlier batches
    /// sealed to the stores.
    async fn hand_over(
        &mut self,
        parts: Vec<Bytes>,
        writer: &mut ObjectWriter,
    ) -> Result<(), FileError> {
        let mut sha = self.hashing.settle().await?;
        let hashed = parts.clone();
        self.hashing = Background::start(move || {
            hashed.iter().for_each(|part| sha.update(part));
            sha
        });
        let mut sealer = self.sealing.settle().await?;
        let sealed = sealer.take_sealed(parts.iter().map(Bytes::len).sum());
        self.sealing = Background::start(move || {
            parts.iter().for_each(|part| sealer.push(part));
            sealer
        });
        if !sealed.is_empty() {
            writer.write(sealed.into()).await?;
        }
        Ok(())
    }

    /// Seals the rest and the end marker, writes everything still held, and
    /// returns the plaintext's SHA-256.
    async fn finish(
        mut self,
        parts: Vec<Bytes>,
        writer: &mut ObjectWriter,
    ) -> Result<[u8; 32], FileError> {
        self.hand_over(parts, writer).await?;
        let sealer = self.sealing.settle().await?;
        let sha = self.hashing.settle().await?;
        writer.write(sealer.finish().into()).await?;
        Ok(sha.finalize().into())
    }
}

/// A copy that verified: the store to serve it from, and its plaintext when
/// the file is small enough to have been kept ([`KEEP_BYTES`]).
pub struct GoodCopy {
    pub store: usize,
    pub kept: Option<Vec<Bytes>>,
}

/// What verifying a copy carries from one piece to the next.
struct Check {
    opener: Opener,
    tally: Tally,
}

/// What a check has seen of the plaintext.
struct Tally {
    sha: Sha256,
    size: u64,
    kept: Option<Vec<Bytes>>,
}

impl Tally {
    /// Counts (and with `checksum`, hashes) the plaintext just opened, and
    /// keeps it when asked to.
    fn absorb(&mut self, opened: Vec<Bytes>, checksum: bool) {
        for part in &opened {
            if checksum {
                self.sha.update(part);
            }
            self.size += part.len() as u64;
        }
        if let Some(kept) = &mut self.kept {
            kept.extend(opened);
        }
    }
}

/// A value that a blocking thread works on, one batch at a time.
enum Background<T> {
    Idle(Box<T>),
    Busy(tokio::task::JoinHandle<T>),
    Taken,
}

impl<T: Send + 'static> Background<T> {
    fn start(work: impl FnOnce() -> T + Send + 'static) -> Background<T> {
        Background::Busy(tokio::task::spawn_blocking(work))
    }

    /// Waits for the batch in progress and takes the value.
    async fn settle(&mut self) -> Result<T, FileError> {
        match std::mem::replace(self, Background::Taken) {
            Background::Idle(value) => Ok(*value),
            Background::Busy(job) => job
                .await
                .map_err(|e| FileError::Internal(format!("a background step failed: {e}"))),
            Background::Taken => Err(FileError::Internal("a background step was lost".into())),
        }
    }
}

async fn abort(writer: Option<(ObjectWriter, &'static str)>) {
    if let Some((w, _)) = writer {
        w.abort().await;
    }
}

/// Reads and drops the rest of a refused body, up to [`DRAIN_LIMIT`].
async fn drain<S, E>(body: &mut S, mut seen: u64)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    while seen < DRAIN_LIMIT {
        match body.next().await {
            Some(Ok(chunk)) => seen += chunk.len() as u64,
            _ => break,
        }
    }
}
