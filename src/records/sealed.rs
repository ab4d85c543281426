//! Field encryption (ENC-2): a value of a `sensitive` or `personal` field is
//! stored as `sr1:<key version>:<base64url(nonce · ciphertext · tag)>`,
//! sealed with the tenant's data key and bound by associated data to
//! (tenant, collection, record, field), so a ciphertext copied into another
//! row or field does not open. Only authorized reads see the clear value.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{Collection, RecordError};
use crate::crypto::vault::ActiveKey;
use crate::crypto::{CryptoError, Vault};
use crate::store::Conn;

const PREFIX: &str = "sr1:";

fn aad(tenant: &str, collection_id: &str, record_id: &str, field: &str) -> Vec<u8> {
    format!("strongroom/v1/field/{tenant}/{collection_id}/{record_id}/{field}").into_bytes()
}

/// The key version a stored value names, if it is a sealed value.
pub fn version_of(value: &Value) -> Option<i64> {
    let rest = value.as_str()?.strip_prefix(PREFIX)?;
    rest.split_once(':')?.0.parse().ok()
}

/// Where a record's sealed values live.
pub struct Place<'a> {
    pub tenant: &'a str,
    pub collection: &'a Collection,
    pub record_id: &'a str,
}

impl Place<'_> {
    fn aad(&self, field: &str) -> Vec<u8> {
        aad(self.tenant, &self.collection.id, self.record_id, field)
    }
}

/// Seals the clear values of encrypted fields named in `fields`.
pub fn seal_fields<'f>(
    place: &Place<'_>,
    key: &ActiveKey,
    data: &mut Map<String, Value>,
    fields: impl Iterator<Item = &'f str>,
) {
    for name in fields {
        let Some(value) = data.get_mut(name) else {
            continue;
        };
        let clear = serde_json::to_vec(value).expect("a JSON value serialises");
        let sealed = key.key.seal(&place.aad(name), &clear);
        *value = Value::String(format!(
            "{PREFIX}{}:{}",
            key.version,
            URL_SAFE_NO_PAD.encode(sealed)
        ));
    }
}

/// The oldest key version among the record's sealed values.
pub fn oldest_version(collection: &Collection, data: &Map<String, Value>) -> Option<i64> {
    collection
        .fields
        .iter()
        .filter(|f| f.is_encrypted())
        .filter_map(|f| data.get(&f.name).and_then(version_of))
        .min()
}

/// Opens every sealed value of the record in place.
pub async fn open_fields(
    vault: &Vault,
    conn: &mut Conn,
    place: &Place<'_>,
    data: &mut Map<String, Value>,
) -> Result<(), RecordError> {
    for field in place.collection.fields.iter().filter(|f| f.is_encrypted()) {
        let Some(value) = data.get_mut(&field.name) else {
            continue;
        };
        let clear = open_one(vault, conn, place, &field.name, value).await?;
        *value = clear;
    }
    Ok(())
}

async fn open_one(
    vault: &Vault,
    conn: &mut Conn,
    place: &Place<'_>,
    field: &str,
    value: &Value,
) -> Result<Value, RecordError> {
    let malformed = || {
        CryptoError::Integrity(format!(
            "field {field:?} of record {} is not a sealed value",
            place.record_id
        ))
    };
    let text = value.as_str().ok_or_else(malformed)?;
    let (version, body) = text
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(malformed)?;
    let version: i64 = version.parse().map_err(|_| malformed())?;
    let sealed = URL_SAFE_NO_PAD.decode(body).map_err(|_| malformed())?;
    let key = vault.key(conn, place.tenant, version).await?;
    let clear = key.open(&place.aad(field), &sealed).map_err(|_| {
        CryptoError::Integrity(format!(
            "field {field:?} of record {} does not open: it was altered or belongs elsewhere",
            place.record_id
        ))
    })?;
    serde_json::from_slice(&clear).map_err(|_| malformed().into())
}

/// Re-seals the record's values that use an older version than `key`.
/// Returns whether anything changed.
pub async fn reseal(
    vault: &Vault,
    conn: &mut Conn,
    place: &Place<'_>,
    key: &ActiveKey,
    data: &mut Map<String, Value>,
) -> Result<bool, RecordError> {
    let mut stale = Vec::new();
    for field in place.collection.fields.iter().filter(|f| f.is_encrypted()) {
        if let Some(value) = data.get_mut(&field.name)
            && version_of(value).is_some_and(|v| v < key.version)
        {
            *value = open_one(vault, conn, place, &field.name, value).await?;
            stale.push(field.name.as_str());
        }
    }
    let changed = !stale.is_empty();
    seal_fields(place, key, data, stale.into_iter());
    Ok(changed)
}

/// What a sample of stored values showed (the posture check of ENC-2).
#[derive(Debug, Default)]
pub struct Sample {
    /// Collections with encrypted fields.
    pub collections: usize,
    pub records: usize,
    /// Encrypted-field values that were sealed and opened with the key.
    pub values: usize,
    /// Values that could not be checked because the tenant's keys are
    /// revoked or destroyed (on purpose).
    pub locked: usize,
    /// Values stored in clear, or sealed values that do not open.
    pub problems: Vec<String>,
}

/// Reads the raw stored values of the newest `per_collection` records of
/// every collection of the tenant with encrypted fields, and checks that
/// each encrypted field's value is ciphertext that opens with the
/// tenant's key, in its own place.
pub async fn sample(
    vault: &Vault,
    conn: &mut Conn,
    backend: crate::store::Backend,
    tenant: &str,
    per_collection: i64,
) -> Result<Sample, RecordError> {
    use crate::store::db;
    let rows = db::query(
        "SELECT id, name, fields, created_at, updated_at FROM collections \
         WHERE tenant_id = $1 ORDER BY name",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let mut sample = Sample::default();
    for row in &rows {
        let collection = Collection::from_row(row)?;
        if !collection.has_encrypted() {
            continue;
        }
        sample.collections += 1;
        let data = match backend {
            crate::store::Backend::Sqlite => "data",
            crate::store::Backend::Postgres => "data::text AS data",
        };
        let records = db::query(format!(
            "SELECT id, {data} FROM records WHERE tenant_id = $1 AND collection_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT {per_collection}"
        ))
        .bind(tenant)
        .bind(&collection.id)
        .fetch_all(&mut *conn)
        .await?;
        for record in &records {
            sample.records += 1;
            let id: String = record.try_get("id")?;
            let text: String = record.try_get("data")?;
            let Ok(Value::Object(data)) = serde_json::from_str::<Value>(&text) else {
                sample
                    .problems
                    .push(format!("record {id}: its data is not a JSON object"));
                continue;
            };
            let place = Place {
                tenant,
                collection: &collection,
                record_id: &id,
            };
            for field in collection.fields.iter().filter(|f| f.is_encrypted()) {
                let Some(value) = data.get(&field.name) else {
                    continue;
                };
                if version_of(value).is_none() {
                    sample.problems.push(format!(
                        "{}.{} of record {id} is stored in clear",
                        collection.name, field.name
                    ));
                    continue;
                }
                match open_one(vault, conn, &place, &field.name, value).await {
                    Ok(_) => sample.values += 1,
                    Err(RecordError::Crypto(
                        CryptoError::KeyRevoked { .. } | CryptoError::KeysDestroyed,
                    )) => sample.locked += 1,
                    Err(e) => sample.problems.push(format!(
                        "{}.{} of record {id}: {e}",
                        collection.name, field.name
                    )),
                }
            }
        }
    }
    Ok(sample)
}
