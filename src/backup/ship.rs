//! BAK-1: shipping every tenant's journal to the backup target, and reading
//! it back (`strongroom backup list|verify`).
//!
//! A pass reads each tenant's journal counter; for a tenant whose journal
//! is ahead of what the target holds (known from the tenant's head object,
//! remembered after), it reads the new entries — at most
//! [`SEGMENT_ENTRIES`] a segment — seals them with the tenant's active key,
//! writes the segment, then the head. A segment is written before the head
//! that names it, so a crash between the two leaves a segment the next
//! pass writes again under the same key, never a head without its segment.
//! Passes run every [`PASS_EVERY`] on the node holding the job's lease; a
//! failed pass is retried with backoff (up to [`MAX_BACKOFF`]) while the
//! lag grows. Writes never wait for any of it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::segment::{self, Entry, Head, Header, NO_SEGMENT, SegmentError};
use super::{BackupTarget, keys};
use crate::context::{Permit, RequestMeta, TenantScope};
use crate::crypto::Vault;
use crate::crypto::aead::DataKey;
use crate::files::Objects;
use crate::store::image::Images;
use crate::store::{Store, db};

/// Journal entries in one segment at most.
pub const SEGMENT_ENTRIES: i64 = 5_000;
/// How often a pass looks for new entries.
pub const PASS_EVERY: Duration = Duration::from_millis(500);
/// The longest wait between failed passes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The job name its heartbeats and lease go by.
pub const JOB: &str = "backup.ship";

/// What the target holds of a tenant.
#[derive(Clone, Debug)]
struct Position {
    last: i64,
    sha256: String,
}

pub struct Shipper {
    store: Store,
    vault: Vault,
    /// The file store, whose objects are copied to the target.
    objects: Objects,
    target: Arc<BackupTarget>,
    /// By tenant id: what the target holds, once read or written.
    positions: std::sync::Mutex<HashMap<String, Position>>,
    alert_after: Duration,
    alerted: AtomicBool,
    /// By tenant id: the key versions the target holds, once written.
    keys: std::sync::Mutex<HashMap<String, HashSet<i64>>>,
}

/// What one pass did.
#[derive(Debug, Default, Serialize)]
pub struct Pass {
    pub tenants: usize,
    pub segments: usize,
    pub entries: i64,
    /// Age of the oldest entry left unshipped (0: none left).
    pub lag_seconds: f64,
    pub failures: Vec<String>,
}

impl Shipper {
    pub fn new(
        store: Store,
        vault: Vault,
        objects: Objects,
        target: Arc<BackupTarget>,
        alert_after: Duration,
    ) -> Arc<Shipper> {
        Arc::new(Shipper {
            store,
            vault,
            objects,
            target,
            positions: std::sync::Mutex::new(HashMap::new()),
            alert_after,
            alerted: AtomicBool::new(false),
            keys: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn target(&self) -> &BackupTarget {
        &self.target
    }

    /// Ships what every tenant's journal has beyond the target's copy. A
    /// tenant that fails does not stop the others; its failure is in the
    /// result, and its entries count towards the lag.
    pub async fn pass(&self) -> Result<Pass, String> {
        let scopes = self
            .store
            .tenant_scopes()
            .await
            .map_err(|e| e.to_string())?;
        let mut pass = Pass {
            tenants: scopes.len(),
            ..Pass::default()
        };
        for scope in &scopes {
            match self.ship_tenant(scope).await {
                Ok((segments, entries)) => {
                    pass.segments += segments;
                    pass.entries += entries;
                }
                Err(e) => {
                    crate::metrics::get().backup_failures.inc();
                    pass.failures
                        .push(format!("tenant {}: {e}", scope.id_str()));
                    if let Ok(age) = self.unshipped_age(scope).await {
                        pass.lag_seconds = pass.lag_seconds.max(age);
                    }
                }
            }
        }
        crate::metrics::get()
            .backup_lag_seconds
            .set(pass.lag_seconds);
        self.judge_lag(pass.lag_seconds);
        Ok(pass)
    }

    /// A security event once when the lag passes the alert threshold, and
    /// an all-clear when it is back.
    fn judge_lag(&self, lag: f64) {
        let over = lag > self.alert_after.as_secs_f64();
        if over && !self.alerted.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                target: "security",
                event = "backup.lagging",
                lag_seconds = lag,
                backup_target = %self.target.describe(),
                "backups are {lag:.0} s behind the journal: the backup target is failing"
            );
        } else if !over && lag == 0.0 && self.alerted.swap(false, Ordering::SeqCst) {
            tracing::info!(
                event = "backup.caught_up",
                "backups caught up with the journal"
            );
        }
    }

    /// How long the oldest entry the target lacks has waited.
    async fn unshipped_age(&self, scope: &TenantScope) -> Result<f64, String> {
        let shipped = self.position(scope).await.map(|p| p.last).unwrap_or(0);
        oldest_after(&self.store, scope, shipped).await
    }

    /// What the target holds of the tenant: remembered, else its head.
    async fn position(&self, scope: &TenantScope) -> Result<Position, String> {
        let tenant = scope.id_str();
        if let Some(known) = self
            .positions
            .lock()
            .ok()
            .and_then(|p| p.get(tenant).cloned())
        {
            return Ok(known);
        }
        let head = head(&self.target, tenant).await?;
        let mut known = match head {
            Some(head) => Position {
                last: head.last,
                sha256: head.sha256,
            },
            None => Position {
                last: 0,
                sha256: NO_SEGMENT.to_owned(),
            },
        };
        // A segment past the head (written just before a crash, or by the
        // primary a promoted standby replaces) is where shipping goes on.
        if let Some((_, last, key)) = segment_keys(&self.target, tenant).await?.pop()
            && last > known.last
            && let Some(bytes) = self.target.get(&key).await.map_err(|e| e.to_string())?
        {
            known = Position {
                last,
                sha256: segment::sha256_hex(&bytes),
            };
        }
        if let Ok(mut positions) = self.positions.lock() {
            positions.insert(tenant.to_owned(), known.clone());
        }
        Ok(known)
    }

    /// Ships the tenant's new entries: how many segments and entries.
    async fn ship_tenant(&self, scope: &TenantScope) -> Result<(usize, i64), String> {
        let tenant = scope.id_str().to_owned();
        let mut position = self.position(scope).await?;
        let mut shipped = (0, 0);
        loop {
            let entries = {
                let mut tx = self.store.read(scope).await.map_err(|e| e.to_string())?;
                read_entries(tx.conn(), self.store.images(), &tenant, position.last).await?
            };
            if entries.is_empty() {
                return Ok(shipped);
            }
            // Keys destroyed in these entries: their copies go first (a
            // tenant whose keys are all destroyed has none to seal with).
            if entries
                .iter()
                .any(|e| e.entity == crate::crypto::vault::KEYS_ENTITY)
            {
                let erased = keys::ship_erasures(&self.store, &self.target, scope).await?;
                if let Ok(mut keys) = self.keys.lock()
                    && let Some(known) = keys.get_mut(&tenant)
                {
                    known.retain(|v| !erased.contains(v));
                }
            }
            let (key_version, key) = active_key(&self.store, &self.vault, scope).await?;
            // The key a segment is sealed with is in the target before it.
            let known = self
                .keys
                .lock()
                .ok()
                .and_then(|k| k.get(&tenant).cloned())
                .unwrap_or_default();
            if !known.contains(&key_version) {
                let mut known = known;
                keys::ship_keys(&self.store, &self.vault, &self.target, scope, &mut known).await?;
                if let Ok(mut keys) = self.keys.lock() {
                    keys.insert(tenant.clone(), known);
                }
            }
            let (first, last) = (entries[0].seq, entries[entries.len() - 1].seq);
            if first != position.last + 1 {
                return Err(format!(
                    "the journal skips from seq {} to {first}",
                    position.last
                ));
            }
            let header = Header {
                tenant: tenant.clone(),
                first,
                last,
                entries: entries.len(),
                key_version,
                app_version: crate::VERSION.to_owned(),
                sealed_at: crate::clock::now(),
                previous: position.sha256.clone(),
            };
            // A file's object is in the target before the entry naming it.
            for object in uploaded_objects(&entries) {
                copy_object(&self.objects, &self.target, &object).await?;
            }
            let sealed = segment::seal(&header, &entries, &key);
            let sha256 = segment::sha256_hex(&sealed);
            self.target
                .put(&segment::segment_key(&tenant, first, last), sealed)
                .await
                .map_err(|e| format!("cannot write segment {first}-{last}: {e}"))?;
            let head = Head {
                tenant: tenant.clone(),
                last,
                sha256: sha256.clone(),
                app_version: crate::VERSION.to_owned(),
                shipped_at: crate::clock::now(),
            };
            self.target
                .put(
                    &segment::head_key(&tenant),
                    serde_json::to_vec(&head).unwrap_or_default(),
                )
                .await
                .map_err(|e| format!("cannot write the head: {e}"))?;
            crate::metrics::get().backup_segments.inc();
            position = Position { last, sha256 };
            if let Ok(mut positions) = self.positions.lock() {
                positions.insert(tenant.clone(), position.clone());
            }
            shipped.0 += 1;
            shipped.1 += entries.len() as i64;
        }
    }
}

/// How long the oldest journal entry the target lacks has waited (0: none).
pub async fn unshipped_age_of(
    store: &Store,
    target: &BackupTarget,
    scope: &TenantScope,
) -> Result<f64, String> {
    let shipped = head(target, scope.id_str()).await?.map_or(0, |h| h.last);
    oldest_after(store, scope, shipped).await
}

/// The age of the tenant's oldest journal entry after seq `shipped`.
async fn oldest_after(store: &Store, scope: &TenantScope, shipped: i64) -> Result<f64, String> {
    let mut tx = store.read(scope).await.map_err(|e| e.to_string())?;
    let oldest: Option<String> = db::query_scalar(
        "SELECT occurred_at FROM journal WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT 1",
    )
    .bind(scope.id_str())
    .bind(shipped)
    .fetch_optional(tx.conn())
    .await
    .map_err(|e| e.to_string())?;
    Ok(oldest.map_or(0.0, |at| age_seconds(&at)))
}

/// The tenant's segments in the target by their names: first and last seq
/// and key, in seq order.
pub async fn segment_keys(
    target: &BackupTarget,
    tenant: &str,
) -> Result<Vec<(i64, i64, String)>, String> {
    let mut segments: Vec<(i64, i64, String)> = target
        .keys(&segment::journal_prefix(tenant))
        .await
        .map_err(|e| format!("cannot list the segments: {e}"))?
        .into_iter()
        .filter_map(|key| range_of(&key).map(|(first, last)| (first, last, key)))
        .collect();
    segments.sort();
    Ok(segments)
}

/// The object keys of the files the entries add.
pub(super) fn uploaded_objects(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.entity == "file" && e.op == "insert")
        .filter_map(|e| e.rows.as_deref())
        .filter_map(|rows| serde_json::from_str::<serde_json::Value>(rows).ok())
        .flat_map(|image| {
            image["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|row| row["object_key"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Where the target keeps a copy of the file store's object `key`.
pub fn file_copy(key: &str) -> String {
    format!("files/{key}")
}

/// Copies one object, as stored (sealed under its file key), from the
/// file store to the target; objects never change, so once is enough. An
/// object already gone (the file was deleted since) is skipped.
async fn copy_object(objects: &Objects, target: &BackupTarget, key: &str) -> Result<(), String> {
    let primary = &objects.targets()[0];
    match primary.raw_bytes(key).await {
        Ok(bytes) => target
            .put(&file_copy(key), bytes.to_vec())
            .await
            .map_err(|e| format!("cannot copy object {key}: {e}")),
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(format!("cannot read object {key}: {e}")),
    }
}

/// The tenant's active key version and key. A tenant that never sealed
/// anything has none yet: one is made the way any first sealed write makes
/// it, through the write path.
pub async fn active_key(
    store: &Store,
    vault: &Vault,
    scope: &TenantScope,
) -> Result<(i64, Arc<DataKey>), String> {
    let tenant = scope.id_str();
    for _ in 0..2 {
        let mut tx = store.read(scope).await.map_err(|e| e.to_string())?;
        let version: Option<i64> = db::query_scalar(
            "SELECT version FROM tenant_keys WHERE tenant_id = $1 AND state = 'active'",
        )
        .bind(tenant)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| e.to_string())?;
        if let Some(version) = version {
            let key = vault
                .key(tx.conn(), tenant, version)
                .await
                .map_err(|e| e.to_string())?;
            return Ok((version, key));
        }
        drop(tx);
        let vault = vault.in_write();
        store
            .write(
                &Permit::system(scope.clone(), JOB),
                &RequestMeta::default(),
                "keys.created",
                move |tx| {
                    Box::pin(async move {
                        vault
                            .active_in(tx)
                            .await
                            .map(|_| ())
                            .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))
                    })
                },
            )
            .await
            .map_err(|e| format!("cannot make the tenant's first key: {e}"))?;
    }
    Err("the tenant has no active key".into())
}

async fn read_entries(
    conn: &mut db::Conn,
    images: Option<&Images>,
    tenant: &str,
    after: i64,
) -> Result<Vec<Entry>, String> {
    let rows = images.map_or_else(|| "journal.rows".to_owned(), Images::rows_at_read);
    let rows = db::query(format!(
        "SELECT seq, occurred_at, entity, entity_id, op, after, app_version, {rows} FROM journal \
         WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    ))
    .bind(tenant)
    .bind(after)
    .bind(SEGMENT_ENTRIES)
    .fetch_all(conn)
    .await
    .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            Ok(Entry {
                seq: row.try_get(0)?,
                occurred_at: row.try_get(1)?,
                entity: row.try_get(2)?,
                entity_id: row.try_get(3)?,
                op: row.try_get(4)?,
                after: row.try_get(5)?,
                app_version: row.try_get(6)?,
                rows: row.try_get(7)?,
            })
        })
        .collect::<Result<_, db::Error>>()
        .map_err(|e| e.to_string())
}

/// Where the tenant's chain begins: after the last pruned segment, or at
/// seq 1 with no predecessor. As (last seq before it, hash named).
pub async fn chain_start(target: &BackupTarget, tenant: &str) -> Result<(i64, String), String> {
    let Some(bytes) = target
        .get(&segment::base_key(tenant))
        .await
        .map_err(|e| format!("cannot read the base: {e}"))?
    else {
        return Ok((0, NO_SEGMENT.to_owned()));
    };
    let base: segment::Base =
        serde_json::from_slice(&bytes).map_err(|e| format!("the base does not parse: {e}"))?;
    Ok((base.first - 1, base.previous))
}

/// The tenant's head object: the newest segment the target holds.
pub async fn head(target: &BackupTarget, tenant: &str) -> Result<Option<Head>, String> {
    let Some(bytes) = target
        .get(&segment::head_key(tenant))
        .await
        .map_err(|e| format!("cannot read the head: {e}"))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("the head does not parse: {e}"))
}

/// How long ago an RFC 3339 time was (0 if it does not parse).
pub fn age_seconds(rfc3339: &str) -> f64 {
    let Ok(at) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return 0.0;
    };
    ((time::OffsetDateTime::now_utc() - at).as_seconds_f64()).max(0.0)
}

/// Runs the shipper as the `backup.ship` job: a pass every [`PASS_EVERY`],
/// sooner never, later after failures (doubling up to [`MAX_BACKOFF`]); a
/// heartbeat every half minute.
pub fn start(store: Store, schedule: &crate::ops::Schedule, shipper: Arc<Shipper>) {
    let backoff = Arc::new(std::sync::Mutex::new(PASS_EVERY));
    let waits = backoff.clone();
    crate::ops::every_or_woken(
        store,
        schedule,
        JOB,
        Duration::from_secs(30),
        move |_| {
            let wait = waits.lock().map(|w| *w).unwrap_or(PASS_EVERY);
            tokio::time::sleep(wait)
        },
        move |_| {
            let (shipper, backoff) = (shipper.clone(), backoff.clone());
            async move {
                let pass = shipper.pass().await;
                let failed = pass.as_ref().map_or(true, |p| !p.failures.is_empty());
                if let Ok(mut wait) = backoff.lock() {
                    *wait = if failed {
                        (*wait * 2).min(MAX_BACKOFF)
                    } else {
                        PASS_EVERY
                    };
                }
                let pass = pass?;
                if pass.failures.is_empty() {
                    Ok(serde_json::to_string(&pass).unwrap_or_default())
                } else {
                    Err(pass.failures.join("; "))
                }
            }
        },
    );
}

/// One tenant's segments as the target holds them.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub tenant: String,
    pub segments: usize,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub bytes: u64,
    pub head: Option<Head>,
}

/// What `backup list` shows of each tenant.
pub async fn list(target: &BackupTarget, tenant: &str) -> Result<Listing, String> {
    let objects = target
        .objects(&segment::journal_prefix(tenant))
        .await
        .map_err(|e| e.to_string())?;
    let mut listing = Listing {
        tenant: tenant.to_owned(),
        segments: objects.len(),
        first: None,
        last: None,
        bytes: objects.iter().map(|(_, size)| size).sum(),
        head: head(target, tenant).await?,
    };
    for (key, _) in &objects {
        if let Some((first, last)) = range_of(key) {
            listing.first = Some(listing.first.map_or(first, |f: i64| f.min(first)));
            listing.last = Some(listing.last.map_or(last, |l: i64| l.max(last)));
        }
    }
    Ok(listing)
}

fn range_of(key: &str) -> Option<(i64, i64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".seg")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// What `backup verify` found for a tenant: every problem names its
/// segment.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub tenant: String,
    pub segments: usize,
    pub entries: i64,
    pub last: i64,
    pub problems: Vec<String>,
}

/// Opens every segment of the tenant with its keys and checks the chain:
/// each segment opens, holds exactly its range in order, starts where the
/// previous ended and names the previous one's hash; the head names the
/// last. The journal's own counter is compared too: what the target lacks
/// is reported as a lag, not a problem.
pub async fn verify(
    store: &Store,
    vault: &Vault,
    target: &BackupTarget,
    scope: &TenantScope,
) -> Result<Verified, String> {
    let tenant = scope.id_str().to_owned();
    let keys = target
        .keys(&segment::journal_prefix(&tenant))
        .await
        .map_err(|e| e.to_string())?;
    let mut report = Verified {
        tenant: tenant.clone(),
        segments: keys.len(),
        entries: 0,
        last: 0,
        problems: Vec::new(),
    };
    // The head first: a pass that ships while this reads makes the
    // segments go past it, never the head past the segments.
    let head_now = head(target, &tenant).await?;
    let mut at_head = None;
    let (start, mut previous) = chain_start(target, &tenant).await?;
    report.last = start;
    for key in &keys {
        let Some(bytes) = target.get(key).await.map_err(|e| e.to_string())? else {
            report.problems.push(format!("{key}: listed but gone"));
            continue;
        };
        let problem = |why: String| format!("{key}: {why}");
        let header = match segment::header(&bytes) {
            Ok((header, _)) => header,
            Err(e) => {
                report.problems.push(problem(e.to_string()));
                continue;
            }
        };
        if range_of(key) != Some((header.first, header.last)) {
            report.problems.push(problem(format!(
                "its name and its header disagree (seq {}..={})",
                header.first, header.last
            )));
        }
        if header.first != report.last + 1 {
            report
                .problems
                .push(problem(if header.first > report.last + 1 {
                    format!(
                        "seq {}..={} are missing before it",
                        report.last + 1,
                        header.first - 1
                    )
                } else {
                    format!(
                        "it starts at seq {}, inside what came before (up to {})",
                        header.first, report.last
                    )
                }));
        }
        if header.previous != previous {
            report.problems.push(problem(
                "it does not follow the segment before it (the chain of hashes breaks: \
                 a segment was removed, swapped or replaced)"
                    .into(),
            ));
        }
        let key_bytes = {
            let mut tx = store.read(scope).await.map_err(|e| e.to_string())?;
            vault.key(tx.conn(), &tenant, header.key_version).await
        };
        match key_bytes
            .map_err(|e| e.to_string())
            .and_then(|k| segment::open(&bytes, &k).map_err(|e: SegmentError| e.to_string()))
        {
            Ok((_, entries)) => report.entries += entries.len() as i64,
            Err(e) => report.problems.push(problem(e)),
        }
        previous = segment::sha256_hex(&bytes);
        if head_now.as_ref().is_some_and(|h| h.last == header.last) {
            at_head = Some(previous.clone());
        }
        report.last = report.last.max(header.last);
    }
    match head_now {
        Some(head) if head.last > report.last => {
            report.problems.push(format!(
                "{}: it names seq {} as the newest shipped, the segments end at {} \
                 (segments were cut off)",
                segment::head_key(&tenant),
                head.last,
                report.last
            ));
        }
        Some(head) if head.last > start && at_head.as_deref() != Some(head.sha256.as_str()) => {
            report.problems.push(format!(
                "{}: the segment ending at seq {} is not the one it names (replaced)",
                segment::head_key(&tenant),
                head.last
            ));
        }
        None if !keys.is_empty() => report
            .problems
            .push(format!("{}: missing", segment::head_key(&tenant))),
        _ => {}
    }
    Ok(report)
}
