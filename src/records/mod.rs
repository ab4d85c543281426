//! Collections and records: a tenant defines collections (typed fields with
//! `required`, `unique`, `indexed`, `personal`, `sensitive` flags) and
//! creates, reads, lists, updates and deletes records in them.
//!
//! Every change goes through the one write path (journal + audit, AUD-1)
//! inside the caller's tenant scope (TEN-1); another tenant's collection or
//! record is simply not found — `404`, never `403`, so ids leak nothing.
//! Values of `unique`/`indexed` fields are kept in `record_keys`, where a
//! unique constraint enforces uniqueness on both backends.
//!
//! Values of `sensitive` and `personal` fields are sealed before they reach
//! the database (ENC-2, see [`sealed`]); the journal's after-images carry
//! the ciphertext and the audit diffs a redaction.

mod http;
pub mod schema;
pub mod sealed;

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

pub use http::router;
pub use schema::{CollectionName, Field, FieldType};
pub use sealed::Place;

use crate::access::AccessError;
use crate::context::Permit;
use crate::context::RequestMeta;
use crate::crypto::{CryptoError, Vault};
use crate::store::Conn;
use crate::store::db;
use crate::store::sql::{Combined, Sql, decode_cursor, encode_cursor, one_page};
use crate::store::{Backend, Change, JournalOp, ReadTx, Store, StoreError, WriteTx};

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;
/// Filters in one list query at most (NET-5): each is a condition of its
/// own, and databases refuse deep enough expressions with an error that
/// would otherwise be a 500.
pub const MAX_FILTERS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("field {field:?}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("field {0:?} is not part of this collection")]
    UnknownField(String),
    #[error("field {0:?} is required")]
    MissingField(String),
    #[error("the record must be a JSON object")]
    NotAnObject,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("at most {MAX_FILTERS} filters in one query")]
    TooManyFilters,
    #[error("another record already has this value in unique field {0:?}")]
    UniqueViolation(String),
    #[error("a collection with this name already exists")]
    CollectionExists,
    #[error("collection not found")]
    CollectionNotFound,
    #[error("record not found")]
    RecordNotFound,
    #[error("the record has changed since you read it (If-Match does not match its ETag)")]
    VersionMismatch,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for RecordError {
    fn from(e: db::Error) -> Self {
        RecordError::Store(e.into())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Collection {
    #[serde(skip)]
    pub id: String,
    pub name: String,
    pub fields: Vec<Field>,
    pub created_at: String,
    pub updated_at: String,
}

impl Collection {
    fn from_row(row: &db::Row) -> Result<Collection, RecordError> {
        let fields: String = row.try_get("fields")?;
        Ok(Collection {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            fields: serde_json::from_str(&fields)
                .map_err(|e| StoreError::Corrupt(format!("collection fields: {e}")))?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Fields the audit trail shows only as "[redacted]": every encrypted one.
    pub fn sensitive(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| f.is_encrypted())
            .map(|f| f.name.clone())
            .collect()
    }

    fn has_encrypted(&self) -> bool {
        self.fields.iter().any(|f| f.is_encrypted())
    }

    fn image(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "fields": self.fields,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }
}

/// A stored record.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    pub collection: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub data: Map<String, Value>,
}

impl Record {
    /// The API shape: the fields beside `id`, `collection`, `version` and
    /// the times (field names cannot collide with those; they are reserved).
    pub fn to_json(&self) -> Value {
        let mut out = self.data.clone();
        out.insert("id".into(), json!(self.id));
        out.insert("collection".into(), json!(self.collection));
        out.insert("version".into(), json!(self.version));
        out.insert("created_at".into(), json!(self.created_at));
        out.insert("updated_at".into(), json!(self.updated_at));
        Value::Object(out)
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// The journal's after-image.
    pub fn image(&self) -> Value {
        json!({
            "id": self.id, "collection": self.collection, "version": self.version,
            "created_at": self.created_at, "updated_at": self.updated_at, "data": self.data,
        })
    }
}

/// How the JSON document column is written and read on each backend
/// (TEXT on SQLite, JSONB on PostgreSQL).
pub(crate) fn data_param(backend: Backend, n: u8) -> String {
    data_value(backend, &format!("${n}"))
}

/// The JSON text bound at `placeholder`, as the `data` column takes it.
fn data_value(backend: Backend, placeholder: &str) -> String {
    match backend {
        Backend::Sqlite => placeholder.to_owned(),
        Backend::Postgres => format!("CAST({placeholder} AS jsonb)"),
    }
}

fn data_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "data",
        Backend::Postgres => "data::text AS data",
    }
}

const COLLECTION_COLUMNS: &str = "id, name, fields, created_at, updated_at";

pub async fn find_collection(
    conn: &mut Conn,
    tenant_id: &str,
    name: &str,
) -> Result<Collection, RecordError> {
    let row = db::query(format!(
        "SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant_id = $1 AND name = $2"
    ))
    .bind(tenant_id)
    .bind(name)
    .fetch_optional(conn)
    .await?
    .ok_or(RecordError::CollectionNotFound)?;
    Collection::from_row(&row)
}

/// The collection `name` inside a write job: what an earlier job of the
/// writer read, unless a collection of the tenant changed since (every
/// change to one is recorded as a "collection" change, which forgets it).
async fn collection_for_write(
    tx: &mut WriteTx,
    name: &str,
) -> Result<Arc<Collection>, RecordError> {
    if let Some(known) = tx.remembered::<Arc<Collection>>("collection", name) {
        return Ok(known);
    }
    let tenant = tx.scope().id_str().to_owned();
    let collection = Arc::new(find_collection(tx.conn(), &tenant, name).await?);
    tx.remember("collection", name, Arc::clone(&collection));
    Ok(collection)
}

// ---- collections ---------------------------------------------------------

pub async fn create_collection(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    name: &str,
    fields: Vec<Field>,
) -> Result<Collection, RecordError> {
    let name = CollectionName::parse(name)?;
    schema::validate_fields(&fields)?;
    store
        .write(permit, meta, "collection.create", move |tx| {
            Box::pin(async move {
                let now = crate::clock::now();
                let collection = Collection {
                    id: uuid::Uuid::now_v7().to_string(),
                    name: name.as_str().to_owned(),
                    fields,
                    created_at: now.clone(),
                    updated_at: now,
                };
                let tenant = tx.scope().id_str().to_owned();
                db::query(
                    "INSERT INTO collections (id, tenant_id, name, fields, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(&collection.id)
                .bind(&tenant)
                .bind(&collection.name)
                .bind(json!(collection.fields).to_string())
                .bind(&collection.created_at)
                .execute(tx.conn())
                .await
                .map_err(|e| match StoreError::from(e) {
                    e if e.is_unique_violation_on("collections") => RecordError::CollectionExists,
                    e => RecordError::Store(e),
                })?;
                tx.record(Change {
                    entity: "collection",
                    entity_id: collection.id.clone(),
                    op: JournalOp::Insert,
                    before: None,
                    after: Some(collection.image()),
                    sensitive: vec![],
                    diff_of: None,
                });
                Ok(collection)
            })
        })
        .await
}

pub async fn list_collections(
    store: &Store,
    permit: &Permit,
) -> Result<Vec<Collection>, RecordError> {
    let mut tx = store.read(permit.scope()).await?;
    let rows = db::query(format!(
        "SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant_id = $1 ORDER BY name"
    ))
    .bind(permit.scope().id_str())
    .fetch_all(tx.conn())
    .await?;
    rows.iter().map(Collection::from_row).collect()
}

pub async fn get_collection(
    store: &Store,
    permit: &Permit,
    name: &str,
) -> Result<Collection, RecordError> {
    let mut tx = store.read(permit.scope()).await?;
    find_collection(tx.conn(), permit.scope().id_str(), name).await
}

/// Replaces the field list. Existing fields keep their type and their
/// unique/indexed flags (changing those would need a data migration); new
/// fields may be added and old ones removed (their values stay in stored
/// records until each is next written, but are no longer returned).
pub async fn update_collection(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    name: &str,
    fields: Vec<Field>,
) -> Result<Collection, RecordError> {
    schema::validate_fields(&fields)?;
    let name = name.to_owned();
    store
        .write(permit, meta, "collection.update", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let before = find_collection(tx.conn(), &tenant, &name).await?;
                for field in &fields {
                    if let Some(old) = before.field(&field.name)
                        && (old.kind != field.kind
                            || old.unique != field.unique
                            || old.indexed != field.indexed
                            || old.is_encrypted() != field.is_encrypted())
                    {
                        return Err(RecordError::InvalidSchema(format!(
                            "field {:?}: type, unique, indexed and whether it is encrypted \
                             (sensitive or personal) cannot change; add a new field instead",
                            field.name
                        )));
                    }
                }
                let mut after = before.clone();
                after.fields = fields;
                after.updated_at = crate::clock::now();
                for old in &before.fields {
                    if old.is_keyed() && after.field(&old.name).is_none() {
                        db::query(
                            "DELETE FROM record_keys WHERE tenant_id = $1 AND collection_id = $2 AND field = $3",
                        )
                        .bind(&tenant)
                        .bind(&before.id)
                        .bind(&old.name)
                        .execute(tx.conn())
                        .await?;
                    }
                }
                db::query(
                    "UPDATE collections SET fields = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
                )
                .bind(json!(after.fields).to_string())
                .bind(&after.updated_at)
                .bind(&tenant)
                .bind(&after.id)
                .execute(tx.conn())
                .await?;
                tx.record(Change {
                    entity: "collection",
                    entity_id: after.id.clone(),
                    op: JournalOp::Update,
                    before: Some(before.image()),
                    after: Some(after.image()),
                    sensitive: vec![],
                    diff_of: None,
                });
                Ok(after)
            })
        })
        .await
}

/// Deletes a collection with all its records.
pub async fn delete_collection(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    name: &str,
) -> Result<(), RecordError> {
    let name = name.to_owned();
    store
        .write(permit, meta, "collection.delete", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let collection = find_collection(tx.conn(), &tenant, &name).await?;
                let records: i64 = db::query_scalar(
                    "SELECT COUNT(*) FROM records WHERE tenant_id = $1 AND collection_id = $2",
                )
                .bind(&tenant)
                .bind(&collection.id)
                .fetch_one(tx.conn())
                .await?;
                // Records and keys go with it (FK cascade); the journal entry
                // says so, so a replay does the same.
                db::query("DELETE FROM collections WHERE tenant_id = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&collection.id)
                    .execute(tx.conn())
                    .await?;
                let mut before = collection.image();
                before["records"] = json!(records);
                tx.record(Change {
                    entity: "collection",
                    entity_id: collection.id.clone(),
                    op: JournalOp::Delete,
                    before: Some(before),
                    after: None,
                    sensitive: vec![],
                    diff_of: None,
                });
                Ok(())
            })
        })
        .await
}

// ---- records -------------------------------------------------------------

fn record_from_row(row: &db::Row, collection: &str) -> Result<Record, RecordError> {
    record_from_columns(row, collection, "")
}

/// A record from the columns named `{prefix}id`, `{prefix}data`, ….
fn record_from_columns(
    row: &db::Row,
    collection: &str,
    prefix: &str,
) -> Result<Record, RecordError> {
    let column = |name: &str| format!("{prefix}{name}");
    let data: String = row.try_get(column("data").as_str())?;
    let data = match serde_json::from_str(&data) {
        Ok(Value::Object(map)) => map,
        _ => return Err(StoreError::Corrupt("record data is not an object".into()).into()),
    };
    Ok(Record {
        id: row.try_get(column("id").as_str())?,
        collection: collection.to_owned(),
        version: row.try_get(column("version").as_str())?,
        created_at: row.try_get(column("created_at").as_str())?,
        updated_at: row.try_get(column("updated_at").as_str())?,
        data,
    })
}

/// Drops values of fields no longer in the schema from what is returned.
fn visible(mut record: Record, collection: &Collection) -> Record {
    record.data.retain(|k, _| collection.field(k).is_some());
    record
}

pub async fn find_record(
    conn: &mut Conn,
    backend: Backend,
    tenant_id: &str,
    collection: &Collection,
    id: &str,
) -> Result<Record, RecordError> {
    let row = db::query(format!(
        "SELECT id, {}, version, created_at, updated_at FROM records \
         WHERE tenant_id = $1 AND collection_id = $2 AND id = $3",
        data_column(backend)
    ))
    .bind(tenant_id)
    .bind(&collection.id)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(RecordError::RecordNotFound)?;
    record_from_row(&row, &collection.name)
}

/// Rewrites the `record_keys` rows of one record.
/// Adds the INSERT of a new `record` to `batch`.
fn push_insert(
    batch: &mut Combined,
    backend: Backend,
    tenant: &str,
    collection_id: &str,
    record: &Record,
    key_version: Option<i64>,
) {
    let id = batch.param(record.id.clone());
    let tenant = batch.param(tenant.to_owned());
    let collection = batch.param(collection_id.to_owned());
    let data = batch.param(Value::Object(record.data.clone()).to_string());
    let at = batch.param(record.created_at.clone());
    let key_version = batch.param(key_version);
    let data = data_value(backend, &data);
    batch.push(format!(
        "INSERT INTO records (id, tenant_id, collection_id, data, version, created_at, updated_at, \
         key_version) VALUES ({id}, {tenant}, {collection}, {data}, 1, {at}, {at}, {key_version})"
    ));
}

async fn write_keys(
    tx: &mut WriteTx,
    collection: &Collection,
    record: &Record,
    replace: bool,
) -> Result<(), RecordError> {
    let tenant = tx.scope().id_str().to_owned();
    if replace {
        db::query("DELETE FROM record_keys WHERE tenant_id = $1 AND record_id = $2")
            .bind(&tenant)
            .bind(&record.id)
            .execute(tx.conn())
            .await?;
    }
    for field in collection.fields.iter().filter(|f| f.is_keyed()) {
        let Some(value) = record.data.get(&field.name) else {
            continue;
        };
        let value = value.to_string();
        let unique_value = field.unique.then(|| value.clone());
        db::query(
            "INSERT INTO record_keys (tenant_id, collection_id, record_id, field, value, unique_value) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&tenant)
        .bind(&collection.id)
        .bind(&record.id)
        .bind(&field.name)
        .bind(&value)
        .bind(unique_value)
        .execute(tx.conn())
        .await
        .map_err(|e| match StoreError::from(e) {
            e if e.is_unique_violation_on("record_keys") => {
                RecordError::UniqueViolation(field.name.clone())
            }
            e => RecordError::Store(e),
        })?;
    }
    Ok(())
}

pub async fn create_record(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
    collection: &str,
    body: Value,
) -> Result<Record, RecordError> {
    let collection = collection.to_owned();
    let vault = vault.in_write();
    let personal = permit.reach().personal();
    store
        .write(permit, meta, "record.create", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let backend = tx.backend();
                let collection = collection_for_write(tx, &collection).await?;
                let data = schema::validate_record(&collection.fields, &body, None)?;
                let now = crate::clock::now();
                let mut record = Record {
                    id: uuid::Uuid::now_v7().to_string(),
                    collection: collection.name.clone(),
                    version: 1,
                    created_at: now.clone(),
                    updated_at: now,
                    data,
                };
                // Only a record with values to seal pays for the key and
                // for keeping its clear values to return.
                let sensitive = collection.sensitive();
                let mut clear = None;
                let key_version = if sensitive.iter().any(|n| record.data.contains_key(n)) {
                    clear = Some(record.data.clone());
                    let key = vault.active_in(tx).await?;
                    let place = Place {
                        tenant: &tenant,
                        collection: &collection,
                        record_id: &record.id,
                    };
                    sealed::seal_fields(
                        &place,
                        &key,
                        &mut record.data,
                        sensitive.iter().map(String::as_str),
                    );
                    Some(key.version)
                } else {
                    None
                };
                // A record without keys to check for uniqueness is inserted
                // with the journal and audit appends, one round trip fewer.
                let keyed = collection
                    .fields
                    .iter()
                    .any(|f| f.is_keyed() && record.data.contains_key(&f.name));
                let mut own = Combined::default();
                let insert = if keyed { &mut own } else { tx.defer() };
                push_insert(
                    insert,
                    backend,
                    &tenant,
                    &collection.id,
                    &record,
                    key_version,
                );
                if keyed {
                    own.execute(tx.conn(), backend)
                        .await
                        .map_err(StoreError::from)?;
                    write_keys(tx, &collection, &record, false).await?;
                }
                tx.record(Change {
                    entity: "record",
                    entity_id: record.id.clone(),
                    op: JournalOp::Insert,
                    before: None,
                    after: Some(record.image()),
                    sensitive,
                    diff_of: Some("data"),
                });
                tx.set_target("record", record.id.clone());
                if let Some(clear) = clear {
                    record.data = clear;
                }
                if !personal {
                    redact(&collection, &mut record);
                }
                Ok(record)
            })
        })
        .await
}

pub async fn get_record(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    collection: &str,
    id: &str,
) -> Result<Record, RecordError> {
    // Point reads, each its own snapshot: a definition changed between the
    // two is one a read a moment later would see anyway.
    let mut tx = store.read_each(permit.scope()).await?;
    let backend = tx.backend();
    let tenant = permit.scope().id_str();
    let (collection, record) =
        find_collection_and_record(tx.conn(), backend, tenant, collection, id).await?;
    let mut record = visible(record, &collection);
    reveal(
        vault,
        tx.conn(),
        tenant,
        &collection,
        &mut record,
        permit.reach(),
    )
    .await?;
    Ok(record)
}

/// A collection and one of its records, in one statement (one snapshot,
/// one round trip).
async fn find_collection_and_record(
    conn: &mut Conn,
    backend: Backend,
    tenant_id: &str,
    name: &str,
    id: &str,
) -> Result<(Collection, Record), RecordError> {
    let data = match backend {
        Backend::Sqlite => "r.data",
        Backend::Postgres => "r.data::text",
    };
    let row = db::query(format!(
        "SELECT c.id, c.name, c.fields, c.created_at, c.updated_at, r.id AS record_id, \
         {data} AS record_data, r.version AS record_version, \
         r.created_at AS record_created_at, r.updated_at AS record_updated_at \
         FROM collections c LEFT JOIN records r \
         ON r.tenant_id = c.tenant_id AND r.collection_id = c.id AND r.id = $3 \
         WHERE c.tenant_id = $1 AND c.name = $2"
    ))
    .bind(tenant_id)
    .bind(name)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(RecordError::CollectionNotFound)?;
    let collection = Collection::from_row(&row)?;
    let record_id: Option<String> = row.try_get("record_id")?;
    if record_id.is_none() {
        return Err(RecordError::RecordNotFound);
    }
    let record = record_from_columns(&row, &collection.name, "record_")?;
    Ok((collection, record))
}

/// Opens the sealed values of a record for a reader who may see personal
/// values; for one who may not (no `records.read_personal`, ACC-1) they
/// read `"[redacted]"` and are never decrypted.
async fn reveal(
    vault: &Vault,
    conn: &mut Conn,
    tenant: &str,
    collection: &Collection,
    record: &mut Record,
    reach: &crate::context::Reach,
) -> Result<(), RecordError> {
    if reach.personal() {
        open_record(vault, conn, tenant, collection, record).await
    } else {
        redact(collection, record);
        Ok(())
    }
}

/// Replaces each personal or sensitive value by `"[redacted]"`.
fn redact(collection: &Collection, record: &mut Record) {
    for field in collection.fields.iter().filter(|f| f.is_encrypted()) {
        if let Some(value) = record.data.get_mut(&field.name)
            && !value.is_null()
        {
            *value = Value::String(REDACTED.into());
        }
    }
}

/// What a personal or sensitive value reads to a reader who may not see it.
pub const REDACTED: &str = "[redacted]";

/// Opens the sealed values of a record read from the database.
pub async fn open_record(
    vault: &Vault,
    conn: &mut Conn,
    tenant: &str,
    collection: &Collection,
    record: &mut Record,
) -> Result<(), RecordError> {
    if !collection.has_encrypted() {
        return Ok(());
    }
    let place = Place {
        tenant,
        collection,
        record_id: &record.id,
    };
    sealed::open_fields(vault, conn, &place, &mut record.data).await
}

/// What `If-Match` asked for.
#[derive(Clone, Debug)]
pub enum Precondition {
    None,
    /// Any of these ETags (or `*`).
    IfMatch(Vec<String>),
}

impl Precondition {
    fn check(&self, record: &Record) -> Result<(), RecordError> {
        match self {
            Precondition::None => Ok(()),
            Precondition::IfMatch(tags) => {
                let etag = record.etag();
                if tags.iter().any(|t| t == "*" || *t == etag) {
                    Ok(())
                } else {
                    Err(RecordError::VersionMismatch)
                }
            }
        }
    }
}

pub async fn update_record(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
    (collection, id): (&str, &str),
    patch: Value,
    precondition: Precondition,
) -> Result<Record, RecordError> {
    let (collection, id) = (collection.to_owned(), id.to_owned());
    let vault = vault.in_write();
    let reach = permit.reach().clone();
    store
        .write(permit, meta, "record.update", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let backend = tx.backend();
                let collection = find_collection(tx.conn(), &tenant, &collection).await?;
                let before = find_record(tx.conn(), backend, &tenant, &collection, &id).await?;
                precondition.check(&before)?;
                let before = visible(before, &collection);
                let data = schema::validate_record(&collection.fields, &patch, Some(&before.data))?;
                let mut after = Record {
                    version: before.version + 1,
                    updated_at: crate::clock::now(),
                    data,
                    ..before.clone()
                };
                // Seal what the patch set; untouched values keep their
                // ciphertext, so the audit diff sees them unchanged.
                let patched: Vec<&str> = collection
                    .fields
                    .iter()
                    .filter(|f| f.is_encrypted() && after.data.contains_key(&f.name))
                    .filter(|f| patch.get(&f.name).is_some_and(|v| !v.is_null()))
                    .map(|f| f.name.as_str())
                    .collect();
                if !patched.is_empty() {
                    let key = vault.active_in(tx).await?;
                    let place = Place {
                        tenant: &tenant,
                        collection: &collection,
                        record_id: &after.id,
                    };
                    sealed::seal_fields(&place, &key, &mut after.data, patched.into_iter());
                }
                // The version guard makes a concurrent writer on another
                // node lose cleanly instead of overwriting.
                let updated = db::query(format!(
                    "UPDATE records SET data = {}, version = $2, updated_at = $3, key_version = $7 \
                     WHERE tenant_id = $4 AND id = $5 AND version = $6",
                    data_param(backend, 1)
                ))
                .bind(Value::Object(after.data.clone()).to_string())
                .bind(after.version)
                .bind(&after.updated_at)
                .bind(&tenant)
                .bind(&after.id)
                .bind(before.version)
                .bind(sealed::oldest_version(&collection, &after.data))
                .execute(tx.conn())
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(RecordError::VersionMismatch);
                }
                write_keys(tx, &collection, &after, true).await?;
                tx.record(Change {
                    entity: "record",
                    entity_id: after.id.clone(),
                    op: JournalOp::Update,
                    before: Some(before.image()),
                    after: Some(after.image()),
                    sensitive: collection.sensitive(),
                    diff_of: Some("data"),
                });
                reveal(&vault, tx.conn(), &tenant, &collection, &mut after, &reach).await?;
                Ok(after)
            })
        })
        .await
}

pub async fn delete_record(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    collection: &str,
    id: &str,
    precondition: Precondition,
) -> Result<(), RecordError> {
    let (collection, id) = (collection.to_owned(), id.to_owned());
    store
        .write(permit, meta, "record.delete", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let backend = tx.backend();
                let collection = find_collection(tx.conn(), &tenant, &collection).await?;
                let before = find_record(tx.conn(), backend, &tenant, &collection, &id).await?;
                precondition.check(&before)?;
                db::query("DELETE FROM records WHERE tenant_id = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .execute(tx.conn())
                    .await?;
                tx.record(Change {
                    entity: "record",
                    entity_id: id.clone(),
                    op: JournalOp::Delete,
                    before: Some(before.image()),
                    after: None,
                    sensitive: collection.sensitive(),
                    diff_of: Some("data"),
                });
                Ok(())
            })
        })
        .await
}

/// A parsed list request.
#[derive(Debug, Default)]
pub struct ListQuery {
    /// (field, value as written in the query string)
    pub filters: Vec<(String, String)>,
    pub descending: bool,
    pub limit: i64,
    pub cursor: Option<String>,
}

#[derive(Debug)]
pub struct Page {
    pub items: Vec<Record>,
    pub next_cursor: Option<String>,
}

/// Lists records in creation order (or its reverse), `(created_at, id)`
/// being the cursor, so pages stay stable while records are added.
pub async fn list_records(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    collection: &str,
    query: ListQuery,
) -> Result<Page, RecordError> {
    let mut tx: ReadTx = store.read(permit.scope()).await?;
    let backend = tx.backend();
    let tenant = permit.scope().id_str();
    let collection = find_collection(tx.conn(), tenant, collection).await?;

    let mut sql = Sql::new(
        format!(
            "SELECT id, {}, version, created_at, updated_at FROM records \
             WHERE tenant_id = $1 AND collection_id = $2",
            data_column(backend)
        ),
        vec![tenant.to_owned(), collection.id.clone()],
    );
    for (name, text) in &query.filters {
        let field = collection
            .field(name)
            .ok_or_else(|| RecordError::InvalidQuery(format!("filter[{name}]: no such field")))?;
        let value = schema::filter_value(field, text)?;
        if field.is_keyed() {
            let (f, v) = (sql.param(field.name.clone()), sql.param(value));
            sql.push(&format!(
                " AND id IN (SELECT record_id FROM record_keys WHERE tenant_id = $1 \
                 AND collection_id = $2 AND field = ${f} AND value = ${v})"
            ));
        } else {
            let (path, cast) = match backend {
                Backend::Sqlite => (format!("$.\"{}\"", field.name), ""),
                Backend::Postgres => (field.name.clone(), "::text"),
            };
            let (p, v) = (sql.param(path), sql.param(value));
            sql.push(&format!(" AND (data -> ${p}){cast} = ${v}"));
        }
    }
    if let Some(cursor) = &query.cursor {
        let cursor = decode_cursor(cursor)
            .ok_or_else(|| RecordError::InvalidQuery("malformed cursor".into()))?;
        sql.after("created_at", query.descending, &cursor);
    }
    let order = if query.descending { "DESC" } else { "ASC" };
    sql.push(&format!(
        " ORDER BY created_at {order}, id {order} LIMIT {}",
        query.limit + 1
    ));
    let (rows, cut) = sql
        .fetch_within(tx.conn(), crate::store::sql::PAGE_BYTES)
        .await?;
    let mut items = rows
        .iter()
        .map(|row| record_from_row(row, &collection.name).map(|r| visible(r, &collection)))
        .collect::<Result<Vec<_>, _>>()?;
    let cursor_of = |r: &Record| encode_cursor(&r.created_at, &r.id);
    let next_cursor = match one_page(&mut items, query.limit, cursor_of) {
        // Cut short by bytes: the page ends where the budget did.
        None if cut => items.last().map(cursor_of),
        next => next,
    };
    for record in &mut items {
        reveal(
            vault,
            tx.conn(),
            tenant,
            &collection,
            record,
            permit.reach(),
        )
        .await?;
    }
    Ok(Page { items, next_cursor })
}

/// Rotation (ENC-3): re-seals up to `limit` records whose values use an
/// older key version than the active one, in one write. Returns how many
/// records it re-sealed; 0 means none is left. Record versions and ETags
/// do not change: the content is the same.
pub async fn reseal_batch(
    store: &Store,
    vault: &Vault,
    permit: &Permit,
    meta: &RequestMeta,
    limit: i64,
) -> Result<u64, RecordError> {
    let vault = vault.in_write();
    store
        .write(permit, meta, "keys.reencrypt", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let backend = tx.backend();
                let key = vault.active(tx.conn(), backend, &tenant).await?;
                // Only the records: a lock on their collection would block
                // every create in it (the foreign key) until this commits.
                let lock = match backend {
                    Backend::Postgres => " FOR UPDATE OF r",
                    Backend::Sqlite => "",
                };
                let rows = db::query(format!(
                    "SELECT r.id, {}, r.version, r.created_at, r.updated_at, c.name AS collection \
                     FROM records r JOIN collections c ON c.id = r.collection_id \
                     WHERE r.tenant_id = $1 AND r.key_version < $2 ORDER BY r.id LIMIT {limit}{lock}",
                    match backend {
                        Backend::Sqlite => "r.data",
                        Backend::Postgres => "r.data::text AS data",
                    }
                ))
                .bind(&tenant)
                .bind(key.version)
                .fetch_all(tx.conn())
                .await?;
                let mut done = 0;
                let mut collections: Vec<Collection> = Vec::new();
                for row in &rows {
                    let name: String = row.try_get("collection")?;
                    if !collections.iter().any(|c| c.name == name) {
                        collections.push(find_collection(tx.conn(), &tenant, &name).await?);
                    }
                    let collection = collections
                        .iter()
                        .find(|c| c.name == name)
                        .expect("just loaded")
                        .clone();
                    let mut record = record_from_row(row, &name)?;
                    let place = Place { tenant: &tenant, collection: &collection, record_id: &record.id };
                    sealed::reseal(&vault, tx.conn(), &place, &key, &mut record.data).await?;
                    db::query(format!(
                        "UPDATE records SET data = {}, key_version = $2 WHERE tenant_id = $3 AND id = $4",
                        data_param(backend, 1)
                    ))
                    .bind(Value::Object(record.data.clone()).to_string())
                    .bind(sealed::oldest_version(&collection, &record.data))
                    .bind(&tenant)
                    .bind(&record.id)
                    .execute(tx.conn())
                    .await?;
                    tx.record(Change {
                        entity: "record",
                        entity_id: record.id.clone(),
                        op: JournalOp::Update,
                        before: None,
                        after: Some(record.image()),
                        sensitive: collection.sensitive(),
                        diff_of: Some("data"),
                    });
                    done += 1;
                }
                tx.set_target("key_version", key.version.to_string());
                Ok(done)
            })
        })
        .await
}
