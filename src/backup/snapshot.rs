//! BAK-2: a tenant's logical snapshot — every row of its restorable state
//! at one journal seq, sealed with the tenant's data key — taken daily by a
//! scheduled job and by `strongroom backup now`; a new tenant gets its first
//! within seconds (BAK-4: restorable from the start, not from the next day).
//!
//! The rows are read in one consistent read (SQLite's read transaction,
//! PostgreSQL's `REPEATABLE READ`) together with the tenant's counters, and
//! the journal is written in the same transactions as the rows: the
//! snapshot is exactly the state after its seq, however many writes run
//! while it is taken. Object: `strongroom-snapshot-v1\n`, a header line
//! (tenant, seq, times, key version, build; no data) and the body sealed
//! with AES-256-GCM, magic and header as associated data.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::BackupTarget;
use super::keys;
use super::segment::sha256_hex;
use crate::context::TenantScope;
use crate::crypto::Vault;
use crate::crypto::aead::DataKey;
use crate::store::image::{FOLLOWED, Images, RESTORED};
use crate::store::{Store, db};

const MAGIC: &[u8] = b"strongroom-snapshot-v1\n";

/// What a snapshot says of itself, readable without the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub tenant: String,
    /// The journal seq it includes up to.
    pub seq: i64,
    pub audit_seq: i64,
    pub taken_at: String,
    pub key_version: i64,
    pub app_version: String,
    /// The backend whose stored form the rows are in.
    pub backend: String,
    /// Rows by table.
    pub rows: BTreeMap<String, usize>,
}

/// The tenant's counters at the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sequences {
    pub journal_seq: i64,
    pub audit_seq: i64,
    pub audit_head: Option<String>,
    pub audit_anchor_seq: i64,
    pub audit_anchor_hash: Option<String>,
}

/// An opened snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub header: Header,
    pub sequences: Sequences,
    /// Rows by table, as JSON objects.
    pub tables: BTreeMap<String, Vec<Value>>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    sequences: Sequences,
    tables: BTreeMap<String, Vec<Value>>,
}

pub fn folder(tenant: &str) -> String {
    format!("t/{tenant}/snapshots/")
}

fn object_key(tenant: &str, seq: i64, taken_at: &str) -> String {
    // Time after seq: two snapshots at one seq (nothing written between)
    // are both kept, the later sorting last.
    let stamp: String = taken_at.chars().filter(char::is_ascii_digit).collect();
    format!("{}{seq:020}-{stamp}.snap", folder(tenant))
}

/// What a snapshot took.
#[derive(Debug, Serialize)]
pub struct Taken {
    pub key: String,
    pub seq: i64,
    pub rows: usize,
    pub bytes: usize,
    pub sha256: String,
}

/// Takes the tenant's snapshot now and writes it to the target.
pub async fn take(
    store: &Store,
    vault: &Vault,
    target: &BackupTarget,
    scope: &TenantScope,
) -> Result<Taken, String> {
    let images = store
        .images()
        .ok_or("the schema predates restorable backups (migrate_until holds it back)")?;
    let tenant = scope.id_str().to_owned();
    let (version, key) = super::ship::active_key(store, vault, scope).await?;
    keys::ship_keys(store, vault, target, scope, &mut HashSet::new()).await?;
    let (sequences, tables) = read_state(store, images, scope).await?;
    let header = Header {
        tenant: tenant.clone(),
        seq: sequences.journal_seq,
        audit_seq: sequences.audit_seq,
        taken_at: crate::clock::now(),
        key_version: version,
        app_version: crate::VERSION.to_owned(),
        backend: store.backend().name().to_owned(),
        rows: tables
            .iter()
            .map(|(t, rows)| (t.clone(), rows.len()))
            .collect(),
    };
    let body = serde_json::to_vec(&Body { sequences, tables }).map_err(|e| e.to_string())?;
    let sealed = seal(&header, &body, &key);
    let object = object_key(&tenant, header.seq, &header.taken_at);
    let taken = Taken {
        key: object.clone(),
        seq: header.seq,
        rows: header.rows.values().sum(),
        bytes: sealed.len(),
        sha256: sha256_hex(&sealed),
    };
    target
        .put(&object, sealed)
        .await
        .map_err(|e| format!("cannot write the snapshot: {e}"))?;
    Ok(taken)
}

pub(crate) async fn read_state(
    store: &Store,
    images: &Images,
    scope: &TenantScope,
) -> Result<(Sequences, BTreeMap<String, Vec<Value>>), String> {
    let tenant = scope.id_str();
    let mut tx = store
        .read_consistent(scope)
        .await
        .map_err(|e| e.to_string())?;
    let row = db::query(
        "SELECT journal_seq, audit_seq, audit_head, audit_anchor_seq, audit_anchor_hash \
         FROM tenant_sequences WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| e.to_string())?
    .ok_or("the tenant has no counters")?;
    let read = || -> Result<Sequences, db::Error> {
        Ok(Sequences {
            journal_seq: row.try_get(0)?,
            audit_seq: row.try_get(1)?,
            audit_head: row.try_get(2)?,
            audit_anchor_seq: row.try_get(3)?,
            audit_anchor_hash: row.try_get(4)?,
        })
    };
    let sequences = read().map_err(|e| e.to_string())?;
    let mut tables = BTreeMap::new();
    // What a standby follows too (sessions), which restores leave out.
    for table in RESTORED.iter().chain(FOLLOWED) {
        let text: String = db::query_scalar(images.snapshot_query(table))
            .bind(tenant)
            .fetch_one(tx.conn())
            .await
            .map_err(|e| format!("cannot read {table}: {e}"))?;
        let rows: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| format!("{table} as read: {e}"))?;
        tables.insert((*table).to_owned(), rows);
    }
    Ok((sequences, tables))
}

fn seal(header: &Header, body: &[u8], key: &DataKey) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(header).unwrap_or_default());
    out.push(b'\n');
    let sealed = key.seal(&out, body);
    out.extend(sealed);
    out
}

/// The header of a snapshot object, without opening it.
pub fn header(bytes: &[u8]) -> Result<(Header, usize), String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a snapshot (no header)")?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("not a snapshot (no header)")?;
    let header: Header = serde_json::from_slice(&rest[..end])
        .map_err(|e| format!("its header does not parse: {e}"))?;
    Ok((header, MAGIC.len() + end + 1))
}

/// Opens a snapshot object with the key of the version its header names.
pub fn open(bytes: &[u8], key: &DataKey) -> Result<Snapshot, String> {
    let (header, body_at) = header(bytes)?;
    let (aad, sealed) = bytes.split_at(body_at);
    let body = key.open(aad, sealed).map_err(|_| {
        format!(
            "it does not open with key version {}: changed, or not ours",
            header.key_version
        )
    })?;
    let body: Body =
        serde_json::from_slice(&body).map_err(|e| format!("its body does not parse: {e}"))?;
    Ok(Snapshot {
        header,
        sequences: body.sequences,
        tables: body.tables,
    })
}

/// The job name its heartbeats and lease go by.
pub const JOB: &str = "backup.snapshot";
/// The job that gives a new tenant its first snapshot.
pub const FIRST_JOB: &str = "backup.first_snapshot";
/// How often [`FIRST_JOB`] looks for tenants the target has no snapshot of.
pub const FIRST_SNAPSHOT_SECONDS: u64 = 10;

/// When the tenant's newest snapshot was taken, from its object's name
/// (digits of the time), without reading it.
async fn newest_stamp(target: &BackupTarget, tenant: &str) -> Result<Option<String>, String> {
    let keys = target
        .keys(&folder(tenant))
        .await
        .map_err(|e| format!("cannot list the snapshots: {e}"))?;
    Ok(keys
        .iter()
        .filter_map(|k| {
            k.strip_suffix(".snap")?
                .rsplit_once('-')
                .map(|(_, s)| s.to_owned())
        })
        .max())
}

/// One run of the scheduled job: a snapshot of every tenant whose newest
/// is older than `every` (or that has none).
pub async fn take_due(
    store: &Store,
    vault: &Vault,
    target: &BackupTarget,
    every: std::time::Duration,
    retention_days: u64,
    instance: (&crate::crypto::Keyring, &crate::config::Config),
) -> Result<String, String> {
    let due_before: String = crate::clock::format(
        time::OffsetDateTime::now_utc() - time::Duration::seconds(every.as_secs() as i64),
    )
    .chars()
    .filter(char::is_ascii_digit)
    .collect();
    let mut taken = 0;
    let mut failures = Vec::new();
    for scope in store.tenant_scopes().await.map_err(|e| e.to_string())? {
        let newest = newest_stamp(target, scope.id_str()).await?;
        if newest.is_some_and(|n| n >= due_before) {
            continue;
        }
        match take(store, vault, target, &scope).await {
            Ok(_) => taken += 1,
            Err(e) => failures.push(format!("tenant {}: {e}", scope.id_str())),
        }
    }
    // The instance's own, on the same schedule.
    let newest_instance = target
        .keys(INSTANCE_FOLDER)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|k| {
            k.strip_prefix(INSTANCE_FOLDER)?
                .strip_suffix(".snap")
                .map(str::to_owned)
        })
        .max();
    if newest_instance.is_none_or(|n| n < due_before) {
        take_instance(store, instance.0, target, instance.1).await?;
        taken += 1;
    }
    let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(retention_days as i64);
    let mut pruned = Pruned::default();
    for scope in store.tenant_scopes().await.map_err(|e| e.to_string())? {
        match prune(target, scope.id_str(), cutoff).await {
            Ok(p) => {
                pruned.snapshots += p.snapshots;
                pruned.segments += p.segments;
            }
            Err(e) => failures.push(format!("tenant {}: pruning: {e}", scope.id_str())),
        }
    }
    if failures.is_empty() {
        Ok(format!(
            "{taken} snapshots taken; {} snapshots and {} segments older than {retention_days} days pruned",
            pruned.snapshots, pruned.segments
        ))
    } else {
        Err(failures.join("; "))
    }
}

const INSTANCE_MAGIC: &[u8] = b"strongroom-instance-v1\n";
/// Where the instance's own snapshots go (BAK-3).
pub const INSTANCE_FOLDER: &str = "instance/snapshots/";

/// BAK-3: what the instance itself is, beside its tenants' snapshots: the
/// tenants it holds and its configuration (secrets redacted as the log
/// shows it), sealed with a key derived from the master key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    pub taken_at: String,
    pub app_version: String,
    pub backend: String,
    pub tenants: Vec<Value>,
    pub config: String,
}

/// Takes the instance snapshot now; its object key.
pub async fn take_instance(
    store: &Store,
    keyring: &crate::crypto::Keyring,
    target: &BackupTarget,
    config: &crate::config::Config,
) -> Result<String, String> {
    let tenants = crate::tenancy::list(store)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|t| serde_json::to_value(t).unwrap_or_default())
        .collect::<Vec<_>>();
    let instance = Instance {
        taken_at: crate::clock::now(),
        app_version: crate::VERSION.to_owned(),
        backend: store.backend().name().to_owned(),
        tenants,
        config: format!("{config:?}"),
    };
    let mut out = INSTANCE_MAGIC.to_vec();
    out.extend(
        serde_json::to_vec(
            &json!({"taken_at": instance.taken_at, "tenants": instance.tenants.len()}),
        )
        .unwrap_or_default(),
    );
    out.push(b'\n');
    let body = serde_json::to_vec(&instance).map_err(|e| e.to_string())?;
    let sealed = keyring.instance_backup_key().seal(&out, &body);
    out.extend(sealed);
    let stamp: String = instance
        .taken_at
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let key = format!("{INSTANCE_FOLDER}{stamp}.snap");
    target
        .put(&key, out)
        .await
        .map_err(|e| format!("cannot write the instance snapshot: {e}"))?;
    Ok(key)
}

/// The newest instance snapshot, opened.
pub async fn newest_instance(
    target: &BackupTarget,
    keyring: &crate::crypto::Keyring,
) -> Result<Option<Instance>, String> {
    let keys = target
        .keys(INSTANCE_FOLDER)
        .await
        .map_err(|e| format!("cannot list the instance snapshots: {e}"))?;
    let Some(key) = keys.last() else {
        return Ok(None);
    };
    let Some(bytes) = target.get(key).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let rest = bytes
        .strip_prefix(INSTANCE_MAGIC)
        .ok_or_else(|| format!("{key}: not an instance snapshot"))?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| format!("{key}: no header"))?;
    let (aad, sealed) = bytes.split_at(INSTANCE_MAGIC.len() + end + 1);
    let body = keyring
        .instance_backup_key()
        .open(aad, sealed)
        .map_err(|_| format!("{key} does not open with this master key: changed, or not ours"))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("{key}: {e}"))
}

/// What pruning removed.
#[derive(Debug, Default, Serialize)]
pub struct Pruned {
    pub snapshots: usize,
    pub segments: usize,
}

/// BAK-2 retention: keeps every snapshot taken at or after `cutoff`, the
/// newest one before it (so every point since `cutoff` stays restorable)
/// and the segments after that one; removes the older snapshots and
/// segments. The chain then begins at the base object, which names the
/// hash of the last segment removed.
pub async fn prune(
    target: &BackupTarget,
    tenant: &str,
    cutoff: time::OffsetDateTime,
) -> Result<Pruned, String> {
    let listed = list(target, tenant).await?;
    let Some(base) = listed
        .iter()
        .rev()
        .find(|s| crate::clock::parse_rfc3339(&s.header.taken_at).is_some_and(|t| t < cutoff))
        .cloned()
    else {
        return Ok(Pruned::default());
    };
    let mut pruned = Pruned::default();
    let segments = super::ship::segment_keys(target, tenant).await?;
    let (old, kept): (Vec<_>, Vec<_>) = segments
        .into_iter()
        .partition(|(_, last, _)| *last <= base.header.seq);
    if let Some((_, last_old, last_key)) = old.last() {
        // The base first, then the removals: a crash between leaves
        // segments the base already skips, never a chain without its start.
        let (first, previous) = match kept.first() {
            Some((_, _, key)) => {
                let bytes = target
                    .get(key)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("a segment vanished while pruning")?;
                let (header, _) = super::segment::header(&bytes).map_err(|e| e.to_string())?;
                (header.first, header.previous)
            }
            None => {
                let bytes = target
                    .get(last_key)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("a segment vanished while pruning")?;
                (last_old + 1, sha256_hex(&bytes))
            }
        };
        let record = super::segment::Base {
            tenant: tenant.to_owned(),
            first,
            previous,
            pruned_at: crate::clock::now(),
        };
        target
            .put(
                &super::segment::base_key(tenant),
                serde_json::to_vec(&record).unwrap_or_default(),
            )
            .await
            .map_err(|e| format!("cannot write the base: {e}"))?;
        for (_, _, key) in &old {
            target.delete(key).await.map_err(|e| e.to_string())?;
            pruned.segments += 1;
        }
    }
    for older in listed.iter().filter(|s| s.key < base.key) {
        target.delete(&older.key).await.map_err(|e| e.to_string())?;
        pruned.snapshots += 1;
    }
    Ok(pruned)
}

/// Runs [`take_due`] hourly as the `backup.snapshot` job, and gives new
/// tenants their first snapshot at once (`backup.first_snapshot`).
pub fn start(
    store: Store,
    vault: Vault,
    target: std::sync::Arc<BackupTarget>,
    schedule: &crate::ops::Schedule,
    every: std::time::Duration,
    retention_days: u64,
    instance: (
        std::sync::Arc<crate::crypto::Keyring>,
        std::sync::Arc<crate::config::Config>,
    ),
) {
    start_first(
        store.clone(),
        vault.clone(),
        target.clone(),
        schedule,
        instance.clone(),
    );
    let run_store = store.clone();
    crate::ops::every(
        store,
        schedule,
        JOB,
        std::time::Duration::from_secs(3600).min(every),
        move || {
            let (store, vault, target) = (run_store.clone(), vault.clone(), target.clone());
            let (keyring, config) = (instance.0.clone(), instance.1.clone());
            async move {
                take_due(
                    &store,
                    &vault,
                    &target,
                    every,
                    retention_days,
                    (&keyring, &config),
                )
                .await
            }
        },
    );
}

/// BAK-4: a tenant is restorable from its first minute, not from the next
/// daily run: every [`FIRST_SNAPSHOT_SECONDS`] the tenants the target
/// holds no snapshot of get one, and the instance snapshot is taken anew
/// so it names them. What the target holds is read once per tenant; a
/// tenant seen with a snapshot is not asked about again.
fn start_first(
    store: Store,
    vault: Vault,
    target: std::sync::Arc<BackupTarget>,
    schedule: &crate::ops::Schedule,
    instance: (
        std::sync::Arc<crate::crypto::Keyring>,
        std::sync::Arc<crate::config::Config>,
    ),
) {
    let known: std::sync::Arc<std::sync::Mutex<HashSet<String>>> = Default::default();
    let run_store = store.clone();
    crate::ops::every(
        store,
        schedule,
        FIRST_JOB,
        std::time::Duration::from_secs(FIRST_SNAPSHOT_SECONDS),
        move || {
            let (store, vault, target) = (run_store.clone(), vault.clone(), target.clone());
            let (keyring, config, known) = (instance.0.clone(), instance.1.clone(), known.clone());
            async move {
                let mut taken = 0;
                let mut failures = Vec::new();
                for scope in store.tenant_scopes().await.map_err(|e| e.to_string())? {
                    let tenant = scope.id_str().to_owned();
                    if known.lock().is_ok_and(|k| k.contains(&tenant)) {
                        continue;
                    }
                    if newest_stamp(&target, &tenant).await?.is_none() {
                        if let Err(e) = take(&store, &vault, &target, &scope).await {
                            failures.push(format!("tenant {tenant}: {e}"));
                            continue;
                        }
                        taken += 1;
                    }
                    if let Ok(mut known) = known.lock() {
                        known.insert(tenant);
                    }
                }
                if taken > 0 {
                    take_instance(&store, &keyring, &target, &config).await?;
                }
                if failures.is_empty() {
                    Ok(format!("{taken} first snapshots taken"))
                } else {
                    Err(failures.join("; "))
                }
            }
        },
    );
}

/// A snapshot in the target, by its header.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub key: String,
    pub bytes: u64,
    pub header: Header,
}

/// The tenant's snapshots in the target, oldest first. Only headers are
/// read (the first bytes of each object are enough, but objects are read
/// whole: the target has no ranged reads here).
pub async fn list(target: &BackupTarget, tenant: &str) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    for (key, bytes) in target
        .objects(&folder(tenant))
        .await
        .map_err(|e| format!("cannot list the snapshots: {e}"))?
    {
        let Some(object) = target.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let (header, _) = header(&object).map_err(|e| format!("{key}: {e}"))?;
        out.push(Listed { key, bytes, header });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}
