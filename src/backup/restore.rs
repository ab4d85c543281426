//! BAK-4: restoring a tenant to a point in time from the backup target
//! alone — the newest snapshot at or before the point, then the journal's
//! images up to it — into the live instance (the tenant's state replaced in
//! one write, every other tenant untouched) or into an empty instance (the
//! machine is gone: `strongroom backup restore --all`).
//!
//! Nothing is applied before everything needed has been read and checked:
//! every segment from the first chains to the one before it and to the
//! head, opens with its key version and holds exactly its seq range; a
//! snapshot opens with its key. A tampered, missing or reordered object is
//! named and the restore refused. Key versions come from the target's key
//! objects, less every version the erasure log names (a destroyed key stays
//! destroyed; what it sealed stays unreadable). A restore ends every session
//! of the tenant, is itself an audit event (`backup.restored`), and leaves a
//! marker in the journal; a later restore never replays across that marker
//! (it starts from the snapshot taken right after the restore).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::segment::{self, Entry};
use super::snapshot::{self, Snapshot};
use super::{BackupTarget, keys};
use crate::context::{Permit, RequestMeta, TenantId, TenantScope};
use crate::crypto::Vault;
use crate::crypto::aead::DataKey;
use crate::files::Objects;
use crate::store::image::{self, CLEARED, Images, RESTORED};
use crate::store::{Change, JournalOp, Store, StoreError, db};

/// The journal entity a restore leaves behind.
pub const MARKER: &str = "backup_restore";
/// How many rows one insert statement carries at most.
const CHUNK_ROWS: usize = 500;

/// The point a restore brings a tenant to.
#[derive(Clone, Debug, PartialEq)]
pub enum Point {
    /// Everything the target holds.
    Latest,
    /// Up to and including journal entry `n`.
    Seq(i64),
    /// Every change committed at or before this time (RFC 3339).
    Time(time::OffsetDateTime),
}

impl Point {
    pub fn parse(text: &str) -> Result<Point, String> {
        if text == "latest" {
            return Ok(Point::Latest);
        }
        if let Some(n) = text.strip_prefix("seq:") {
            return match n.parse::<i64>() {
                Ok(n) if n > 0 => Ok(Point::Seq(n)),
                _ => Err(format!("seq:{n} is not a journal seq (a number from 1)")),
            };
        }
        crate::clock::parse_rfc3339(text).map(Point::Time).ok_or_else(|| {
            format!("{text:?}: expected `latest`, `seq:N` or an RFC 3339 time (2026-12-01T10:00:00Z)")
        })
    }
}

/// Where the restored state goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Replaces the tenant's data in a running instance; its audit trail
    /// and keys stay as they are, and the restore is appended to them.
    Live,
    /// Builds the tenant in an instance that does not have it: data,
    /// trail, counters and keys all from the target.
    Fresh,
    /// As [`Mode::Fresh`], for a standby that goes on applying the
    /// primary's journal: no event of its own, so its counters stay the
    /// primary's.
    Standby,
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub tenant: String,
    pub slug: Option<String>,
    pub snapshot_seq: i64,
    pub to_seq: i64,
    pub entries_replayed: usize,
    pub rows: usize,
    /// When the newest change restored was committed (the RPO side).
    pub newest_change_at: Option<String>,
    pub seconds: f64,
}

/// A segment as the target holds it, checked.
struct Segment {
    last: i64,
}

/// Reads and checks the chain of the tenant's segments: each names its
/// predecessor's hash and follows its seq range, the head names the last.
/// Opens each (with `keys`) to check its entries; calls `visit` with them.
async fn walk_segments(
    target: &BackupTarget,
    tenant: &str,
    keys: &HashMap<i64, (DataKey, keys::KeyObject)>,
    mut visit: impl FnMut(&Segment, Vec<Entry>) -> bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<usize, String> {
    let names = target
        .keys(&segment::journal_prefix(tenant))
        .await
        .map_err(|e| format!("cannot list the segments: {e}"))?;
    let head = super::ship::head(target, tenant).await?;
    let mut previous = super::ship::chain_start(target, tenant).await?;
    let start = previous.0;
    let mut at_head: Option<String> = None;
    let mut walked = 0;
    let mut visiting = true;
    for (i, name) in names.iter().enumerate() {
        progress(i, names.len());
        let bytes = target
            .get(name)
            .await
            .map_err(|e| format!("cannot read segment {name}: {e}"))?
            .ok_or_else(|| format!("segment {name} vanished while read"))?;
        let (header, _) = segment::header(&bytes).map_err(|e| format!("segment {name}: {e}"))?;
        if header.tenant != tenant {
            return Err(format!(
                "segment {name} belongs to tenant {}",
                header.tenant
            ));
        }
        if header.first != previous.0 + 1 || header.previous != previous.1 {
            return Err(format!(
                "segment {name} does not follow the one before it (expected seq {} after a segment \
                 hashing {}): a segment is missing, reordered or replaced",
                previous.0 + 1,
                previous.1
            ));
        }
        let (key, _) = keys.get(&header.key_version).ok_or_else(|| {
            format!(
                "segment {name} is sealed with key version {}, which the backup target no longer \
                 holds (destroyed): the tenant cannot be restored past it",
                header.key_version
            )
        })?;
        let (header, entries) =
            segment::open(&bytes, key).map_err(|e| format!("segment {name}: {e}"))?;
        let seg = Segment { last: header.last };
        previous = (header.last, segment::sha256_hex(&bytes));
        if head.as_ref().is_some_and(|h| h.last == header.last) {
            at_head = Some(previous.1.clone());
        }
        if visiting {
            visiting = visit(&seg, entries);
        }
        walked += 1;
    }
    match head {
        Some(head) if head.last > previous.0 => Err(format!(
            "the head names seq {} but the segments end at {}: the newest segments are missing",
            head.last, previous.0
        )),
        // A segment past the head is one written just before a crash, its
        // head not yet: it chains and opens, so it counts.
        Some(head) if at_head.as_deref() != Some(head.sha256.as_str()) && head.last > start => {
            Err(format!(
                "the head names a segment ending at seq {} that is not the one the target holds: \
                 segments were replaced",
                head.last
            ))
        }
        None if !names.is_empty() => Err("segments without a head".into()),
        _ => Ok(walked),
    }
}

/// The rows of one table, grouped by the column entities find them by.
#[derive(Default)]
struct Rows {
    key: Option<&'static str>,
    by_key: BTreeMap<String, Vec<Value>>,
    unkeyed: Vec<Value>,
}

fn key_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Rows {
    fn new(table: &str) -> Rows {
        Rows {
            key: image::key_column(table),
            ..Rows::default()
        }
    }

    fn add(&mut self, row: Value) {
        match self.key.and_then(|k| row.get(k)).map(key_text) {
            Some(key) => self.by_key.entry(key).or_default().push(row),
            None => self.unkeyed.push(row),
        }
    }

    fn replace(&mut self, key: &str, rows: Vec<Value>) {
        if rows.is_empty() {
            self.by_key.remove(key);
        } else {
            self.by_key.insert(key.to_owned(), rows);
        }
    }

    fn all(&self) -> impl Iterator<Item = &Value> {
        self.by_key.values().flatten().chain(self.unkeyed.iter())
    }

    fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum::<usize>() + self.unkeyed.len()
    }
}

/// The tenant's state being rebuilt.
struct State {
    tables: BTreeMap<String, Rows>,
}

impl State {
    fn from_snapshot(snapshot: Snapshot) -> State {
        let mut tables: BTreeMap<String, Rows> = RESTORED
            .iter()
            .chain(image::FOLLOWED)
            .map(|t| ((*t).to_owned(), Rows::new(t)))
            .collect();
        for (table, rows) in snapshot.tables {
            if let Some(target) = tables.get_mut(&table) {
                for row in rows {
                    target.add(row);
                }
            }
        }
        State { tables }
    }

    fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        if !image::restorable(&entry.entity) {
            return Ok(());
        }
        let text = entry.rows.as_deref().ok_or_else(|| {
            format!(
                "journal entry {} ({}) has no stored image: it predates restorable backups; \
                 restore to a point after a snapshot taken since",
                entry.seq, entry.entity
            )
        })?;
        let image: BTreeMap<String, Vec<Value>> = serde_json::from_str(text)
            .map_err(|e| format!("journal entry {}: its image does not parse: {e}", entry.seq))?;
        for (table, rows) in image {
            match self.tables.get_mut(&table) {
                Some(target) => target.replace(&entry.entity_id, rows),
                // What a standby follows and a restore does not keep.
                None if image::FOLLOWED.contains(&table.as_str()) => {}
                None => return Err(format!("journal entry {} names table {table}", entry.seq)),
            }
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.tables.values().map(Rows::len).sum()
    }
}

fn entry_time(entry: &Entry) -> Option<time::OffsetDateTime> {
    crate::clock::parse_rfc3339(&entry.occurred_at)
}

/// A tenant's state as the target rebuilds it at a point, not yet
/// written anywhere.
pub struct Rebuilt {
    state: State,
    pub snapshot_key: String,
    pub snapshot_seq: i64,
    pub to_seq: i64,
    pub entries_replayed: usize,
    pub newest_change_at: Option<String>,
    sequences: snapshot::Sequences,
    keys: HashMap<i64, (DataKey, keys::KeyObject)>,
    erased: Vec<keys::Erasure>,
}

impl Rebuilt {
    pub fn rows(&self) -> usize {
        self.state.rows()
    }

    /// The rows of `table`, each as JSON text, sorted (for comparisons).
    pub fn table_texts(&self, table: &str) -> Vec<String> {
        let mut rows: Vec<String> = self
            .state
            .tables
            .get(table)
            .into_iter()
            .flat_map(Rows::all)
            .map(Value::to_string)
            .collect();
        rows.sort();
        rows
    }

    pub fn slug(&self) -> Option<String> {
        self.state
            .tables
            .get("tenants")
            .and_then(|t| t.all().next())
            .and_then(|row| row.get("slug"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// Reads and checks everything needed to bring tenant `tenant` (its id)
/// to `point` from `target`, and rebuilds its state in memory.
pub async fn rebuild(
    vault: &Vault,
    target: &BackupTarget,
    tenant: &str,
    point: &Point,
    backend: crate::store::Backend,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Rebuilt, String> {
    let keys = keys::load(vault, target, tenant).await?;
    let snapshots = snapshot::list(target, tenant).await?;
    if snapshots.is_empty() {
        return Err(format!(
            "the backup target holds no snapshot of tenant {tenant}: take one with `strongroom backup now`"
        ));
    }

    // First pass: the chain, and the seq the point stands for.
    let mut to_seq = None;
    let mut newest_seen = super::ship::chain_start(target, tenant).await?.0;
    walk_segments(
        target,
        tenant,
        &keys,
        |seg, entries| {
            newest_seen = seg.last;
            match point {
                Point::Latest => true,
                Point::Seq(n) => seg.last < *n,
                Point::Time(at) => {
                    for entry in &entries {
                        if entry_time(entry).is_none_or(|t| t > *at) {
                            to_seq = Some(entry.seq - 1);
                            return false;
                        }
                    }
                    true
                }
            }
        },
        progress,
    )
    .await?;
    let to_seq = match point {
        Point::Latest => newest_seen,
        Point::Seq(n) if *n > newest_seen => {
            return Err(format!(
                "seq {n} is beyond what the target holds (up to {newest_seen})"
            ));
        }
        Point::Seq(n) => *n,
        Point::Time(_) => to_seq.unwrap_or(newest_seen),
    };

    // The newest snapshot at or before the point.
    let chosen = snapshots
        .iter()
        .rev()
        .find(|s| {
            s.header.seq <= to_seq
                && match point {
                    Point::Time(at) => {
                        crate::clock::parse_rfc3339(&s.header.taken_at).is_some_and(|t| t <= *at)
                    }
                    _ => true,
                }
        })
        .ok_or_else(|| {
            format!("no snapshot of tenant {tenant} is at or before the point (seq {to_seq})")
        })?;
    let snapshot_bytes = target
        .get(&chosen.key)
        .await
        .map_err(|e| format!("cannot read snapshot {}: {e}", chosen.key))?
        .ok_or_else(|| format!("snapshot {} vanished while read", chosen.key))?;
    let (snapshot_key, _) = keys.get(&chosen.header.key_version).ok_or_else(|| {
        format!(
            "snapshot {} is sealed with key version {}, which the backup target no longer holds \
             (destroyed): the tenant cannot be restored",
            chosen.key, chosen.header.key_version
        )
    })?;
    let opened = snapshot::open(&snapshot_bytes, snapshot_key)
        .map_err(|e| format!("snapshot {}: {e}", chosen.key))?;
    if opened.header.backend != backend.name() {
        return Err(format!(
            "snapshot {} holds {} rows; this instance is {}",
            chosen.key,
            opened.header.backend,
            backend.name()
        ));
    }
    let snapshot_seq = opened.header.seq;
    let sequences = opened.sequences.clone();
    let mut state = State::from_snapshot(opened);

    // Second pass: the entries after the snapshot, up to the point.
    let mut replayed = 0;
    let mut newest_change_at = None;
    let mut failure = None;
    walk_segments(
        target,
        tenant,
        &keys,
        |seg, entries| {
            if seg.last <= snapshot_seq {
                return true;
            }
            for entry in entries {
                if entry.seq <= snapshot_seq {
                    continue;
                }
                if entry.seq > to_seq {
                    return false;
                }
                if entry.entity == MARKER {
                    failure = Some(format!(
                        "the journal passes a restore at seq {} between snapshot {} and the point: \
                         restore to a point before it, or after the snapshot that followed it",
                        entry.seq, chosen.key
                    ));
                    return false;
                }
                if let Err(e) = state.apply(&entry) {
                    failure = Some(e);
                    return false;
                }
                replayed += 1;
                newest_change_at = Some(entry.occurred_at.clone());
            }
            true
        },
        &|_, _| {},
    )
    .await?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let _ = newest_change_at.get_or_insert_with(|| chosen.header.taken_at.clone());
    let erased = keys::erasures(target, tenant).await?;
    Ok(Rebuilt {
        state,
        snapshot_key: chosen.key.clone(),
        snapshot_seq,
        to_seq,
        entries_replayed: replayed,
        newest_change_at,
        sequences,
        keys,
        erased,
    })
}

/// Restores tenant `tenant` (its id) to `point` from `target` into `store`.
#[allow(clippy::too_many_arguments)]
pub async fn restore_tenant(
    store: &Store,
    vault: &Vault,
    objects: &Objects,
    target: &BackupTarget,
    tenant: &str,
    point: &Point,
    mode: Mode,
    meta: &RequestMeta,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Restored, String> {
    let started = Instant::now();
    let images = store
        .images()
        .ok_or("the schema predates restorable backups (migrate_until holds it back)")?;
    let id = TenantId::parse(tenant).ok_or_else(|| format!("{tenant:?} is not a tenant id"))?;
    let scope = TenantScope::trusted(id);
    let rebuilt = rebuild(vault, target, tenant, point, store.backend(), progress).await?;
    let rows = rebuilt.rows();
    let slug = rebuilt.slug();
    let Rebuilt {
        state,
        snapshot_key,
        snapshot_seq,
        to_seq,
        entries_replayed: replayed,
        newest_change_at,
        sequences,
        keys,
        erased,
    } = rebuilt;
    // Files first: objects never change, so putting back one the restored
    // rows name is harmless even if the restore then fails.
    let files = put_back_files(objects, target, tenant, &state).await?;

    let summary = serde_json::json!({
        "snapshot": snapshot_key, "snapshot_seq": snapshot_seq, "to_seq": to_seq,
        "entries_replayed": replayed, "rows": rows, "files_put_back": files,
    });
    match mode {
        Mode::Live => write_live(store, images, &scope, state, summary, meta).await?,
        Mode::Fresh | Mode::Standby => {
            let restored_keys: Vec<(i64, Vec<u8>)> = keys
                .iter()
                .filter_map(|(version, (_, object))| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(&object.wrapped)
                        .ok()
                        .map(|w| (*version, w))
                })
                .collect();
            write_fresh(
                store,
                images,
                &scope,
                state,
                FreshParts {
                    to_seq,
                    anchor: (sequences.audit_anchor_seq, sequences.audit_anchor_hash),
                    keys: restored_keys,
                    erased,
                    audited: mode == Mode::Fresh,
                },
                summary,
                meta,
            )
            .await?
        }
    }
    Ok(Restored {
        tenant: tenant.to_owned(),
        slug,
        snapshot_seq,
        to_seq,
        entries_replayed: replayed,
        rows,
        newest_change_at,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Copies back from the target every object the restored file rows name
/// that a file store lacks; how many copies it made.
async fn put_back_files(
    objects: &Objects,
    target: &BackupTarget,
    tenant: &str,
    state: &State,
) -> Result<usize, String> {
    let wanted: Vec<String> = state
        .tables
        .get("files")
        .into_iter()
        .flat_map(Rows::all)
        .filter_map(|row| row.get("object_key")?.as_str().map(str::to_owned))
        .collect();
    let mut copied = 0;
    for store in objects.targets() {
        let present: std::collections::HashSet<String> = store
            .list_folder(&format!("t/{tenant}/"))
            .await
            .map_err(|e| format!("cannot list the file store: {e}"))?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for key in wanted.iter().filter(|k| !present.contains(*k)) {
            let bytes = target
                .get(&super::ship::file_copy(key))
                .await
                .map_err(|e| format!("cannot read the copy of {key}: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "the backup target has no copy of object {key}, which a restored file names"
                    )
                })?;
            store
                .put_bytes(key, bytes)
                .await
                .map_err(|e| format!("cannot put back object {key}: {e}"))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Inserts `rows` into `table`, a chunk a statement.
async fn insert_all<'a>(
    conn: &mut db::Conn,
    images: &Images,
    table: &str,
    rows: impl Iterator<Item = &'a Value>,
) -> Result<(), StoreError> {
    let statement = images.insert_rows(table);
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        chunk.clear();
        chunk.extend(rows.by_ref().take(CHUNK_ROWS));
        let text = serde_json::to_string(&chunk).unwrap_or_else(|_| "[]".into());
        db::query(statement.as_str())
            .bind(text)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// What a live restore replaces: the tenant's data and accounts, not its
/// trail (what happened stays recorded), its keys, or its own row.
fn replaced_live(table: &str) -> bool {
    !matches!(
        table,
        "tenants" | "tenant_keys" | "key_rotations" | "audit_events" | "audit_checkpoints"
    )
}

async fn write_live(
    store: &Store,
    images: &Images,
    scope: &TenantScope,
    state: State,
    summary: Value,
    meta: &RequestMeta,
) -> Result<(), String> {
    let images = images.clone();
    let tenant = scope.id_str().to_owned();
    store
        .write(
            &Permit::system(scope.clone(), "backup.restore"),
            meta,
            "backup.restored",
            move |tx| {
                Box::pin(async move {
                    for table in CLEARED
                        .iter()
                        .chain(RESTORED.iter().rev().filter(|t| replaced_live(t)))
                    {
                        db::query(Images::delete_rows(table))
                            .bind(&tenant)
                            .execute(tx.conn())
                            .await?;
                    }
                    for table in RESTORED.iter().filter(|t| replaced_live(t)) {
                        if let Some(rows) = state.tables.get(*table) {
                            insert_all(tx.conn(), &images, table, rows.all()).await?;
                        }
                    }
                    for kind in crate::identity::SESSION_KINDS {
                        tx.touch(kind);
                    }
                    tx.record(marker(&tenant, summary));
                    tx.set_target("tenant", tenant);
                    Ok::<_, StoreError>(())
                })
            },
        )
        .await
        .map_err(|e| format!("the restore did not commit (nothing changed): {e}"))
}

fn marker(tenant: &str, summary: Value) -> Change {
    Change {
        entity: MARKER,
        entity_id: tenant.to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(summary),
        sensitive: Vec::new(),
        diff_of: None,
    }
}

struct FreshParts {
    to_seq: i64,
    anchor: (i64, Option<String>),
    keys: Vec<(i64, Vec<u8>)>,
    erased: Vec<keys::Erasure>,
    /// Whether the restore is an event of the restored trail.
    audited: bool,
}

async fn write_fresh(
    store: &Store,
    images: &Images,
    scope: &TenantScope,
    state: State,
    parts: FreshParts,
    summary: Value,
    meta: &RequestMeta,
) -> Result<(), String> {
    let images = images.clone();
    let tenant = scope.id_str().to_owned();
    let (audit_seq, audit_head) = state
        .tables
        .get("audit_events")
        .and_then(|events| {
            events
                .all()
                .filter_map(|e| {
                    Some((e.get("seq")?.as_i64()?, e.get("hash")?.as_str()?.to_owned()))
                })
                .max_by_key(|(seq, _)| *seq)
        })
        .map_or((0, None), |(seq, hash)| (seq, Some(hash)));
    let restored_audit = audit_seq.max(parts.anchor.0);
    let audit_head = audit_head.or(parts.anchor.1.clone());
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                let exists: Option<String> =
                    db::query_scalar("SELECT slug FROM tenants WHERE id = $1")
                        .bind(&tenant)
                        .fetch_optional(&mut *conn)
                        .await?;
                if let Some(slug) = exists {
                    return Err(StoreError::Corrupt(format!(
                        "this instance already has the tenant ({slug}): restore into it without \
                         --into-new-instance, or onto an empty data dir"
                    )));
                }
                for table in RESTORED {
                    if let Some(rows) = state.tables.get(*table) {
                        insert_all(conn, &images, table, rows.all()).await?;
                    }
                    if *table == "tenants" {
                        db::query(
                            "INSERT INTO tenant_sequences (tenant_id, journal_seq, audit_seq, audit_head, \
                             audit_anchor_seq, audit_anchor_hash) VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(&tenant)
                        .bind(parts.to_seq)
                        .bind(restored_audit)
                        .bind(audit_head.clone())
                        .bind(parts.anchor.0)
                        .bind(parts.anchor.1.clone())
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                // A standby keeps the sessions it follows (BAK-5).
                if !parts.audited {
                    for table in image::FOLLOWED {
                        if let Some(rows) = state.tables.get(*table) {
                            insert_all(conn, &images, table, rows.all()).await?;
                        }
                    }
                }
                for (version, wrapped) in &parts.keys {
                    db::query("UPDATE tenant_keys SET wrapped = $1 WHERE tenant_id = $2 AND version = $3")
                        .bind(wrapped.clone())
                        .bind(&tenant)
                        .bind(*version)
                        .execute(&mut *conn)
                        .await?;
                }
                // Versions the target does not hold (destroyed) stay so.
                db::query(
                    "UPDATE tenant_keys SET state = 'destroyed' WHERE tenant_id = $1 AND wrapped IS NULL",
                )
                .bind(&tenant)
                .execute(&mut *conn)
                .await?;
                for erasure in &parts.erased {
                    db::query(
                        "INSERT INTO erasures (id, tenant_id, kind, subject, recorded_at, shipped_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&tenant)
                    .bind(erasure.kind.clone())
                    .bind(erasure.subject.clone())
                    .bind(erasure.recorded_at.clone())
                    .bind(crate::clock::now())
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| format!("the restore did not commit (nothing changed): {e}"))?;
    if !parts.audited {
        return Ok(());
    }
    let tenant = scope.id_str().to_owned();
    store
        .write(
            &Permit::system(scope.clone(), "backup.restore"),
            meta,
            "backup.restored",
            move |tx| {
                Box::pin(async move {
                    tx.record(marker(&tenant, summary));
                    tx.set_target("tenant", tenant);
                    Ok::<_, StoreError>(())
                })
            },
        )
        .await
        .map_err(|e| format!("the tenant is restored but its restore event failed: {e}"))
}

/// The tenants the target holds (by id), for `--all`.
pub async fn tenants_in(target: &BackupTarget) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = target
        .keys("t/")
        .await
        .map_err(|e| format!("cannot list the target: {e}"))?
        .iter()
        .filter(|k| k.contains("/snapshots/"))
        .filter_map(|k| k.strip_prefix("t/")?.split('/').next().map(str::to_owned))
        .collect();
    ids.dedup();
    Ok(ids)
}

/// The tenant with `slug` in the target's newest snapshots.
pub async fn find_by_slug(
    vault: &Vault,
    target: &BackupTarget,
    slug: &str,
) -> Result<Option<String>, String> {
    for tenant in tenants_in(target).await? {
        let keys = keys::load(vault, target, &tenant).await?;
        let Some(newest) = snapshot::list(target, &tenant).await?.pop() else {
            continue;
        };
        let Some((key, _)) = keys.get(&newest.header.key_version) else {
            continue;
        };
        let Some(bytes) = target.get(&newest.key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let opened = snapshot::open(&bytes, key)?;
        let found = opened
            .tables
            .get("tenants")
            .into_iter()
            .flatten()
            .any(|row| row.get("slug").and_then(Value::as_str) == Some(slug));
        if found {
            return Ok(Some(tenant));
        }
    }
    Ok(None)
}
