//! BAK-5: a warm standby. `strongroom serve --follow BACKUP_URL` keeps an
//! instance of its own (data dir and database) in step with a primary by
//! applying the primary's shipped journal as it arrives: a tenant it does
//! not have yet is restored from its newest snapshot; after that each new
//! segment is checked (it must name the hash of the one before) and its
//! entries' row images are applied in journal order, in one transaction per
//! tenant and pass. Meanwhile it serves reads and answers every write with
//! `503`, naming the primary (`backup_primary_url`).
//!
//! `strongroom promote` (on the standby's data dir) makes it the primary:
//! it applies what the target holds one last time, stops following, and
//! starts the primary's jobs — shipping included, which continues the same
//! chain of segments in the same target. Promote only once the old primary
//! is down: two primaries would ship two histories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::restore::{self, Mode, Point};
use super::segment::{self, Entry};
use super::{BackupTarget, keys};
use crate::context::{RequestMeta, TenantId, TenantScope};
use crate::crypto::Vault;
use crate::files::Objects;
use crate::store::image::{self, Images, PARENTS};
use crate::store::{Store, StoreError, db};

/// How often a standby looks for new segments.
pub const PASS_EVERY: Duration = Duration::from_millis(250);
/// How often a standby tells the target where it stands.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Where standbys report in the target, one object each.
pub const STANDBYS: &str = "standbys/";

/// What a standby last told the target of itself.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Report {
    pub node: String,
    pub at: String,
    pub lag_seconds: f64,
}

/// The file `strongroom promote` leaves in the standby's data dir.
const PROMOTE_FILE: &str = "promote";

/// The request a standby's `promote` is: asked for by the file.
pub fn promote_file(data_dir: &Path) -> PathBuf {
    data_dir.join(PROMOTE_FILE)
}

/// Whether this instance follows a primary now, and whom to name.
pub struct Standby {
    following: AtomicBool,
    pub target: String,
    pub primary: Option<String>,
}

impl Standby {
    pub fn new(target: String, primary: Option<String>) -> Arc<Standby> {
        Arc::new(Standby {
            following: AtomicBool::new(true),
            target,
            primary,
        })
    }

    pub fn following(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }

    fn promoted(&self) {
        self.following.store(false, Ordering::SeqCst);
    }

    /// What a refused write is told.
    pub fn refusal(&self) -> String {
        match &self.primary {
            Some(primary) => format!(
                "this is a read-only standby following {}: write to the primary, {primary}",
                self.target
            ),
            None => format!(
                "this is a read-only standby following {}: write to the primary",
                self.target
            ),
        }
    }
}

/// What one pass applied.
#[derive(Debug, Default, Serialize)]
pub struct FollowPass {
    pub tenants_restored: usize,
    pub entries_applied: usize,
    /// How long the oldest entry the target holds and this standby had
    /// not applied had waited in the target (0: caught up).
    pub lag_seconds: f64,
}

/// Where a tenant stands in the chain: the last seq applied and the hash
/// of the segment holding it (once known).
#[derive(Clone)]
struct Applied {
    seq: i64,
    segment: Option<(i64, String)>,
}

pub struct Follower {
    store: Store,
    vault: Vault,
    objects: Objects,
    target: Arc<BackupTarget>,
    applied: std::sync::Mutex<HashMap<String, Applied>>,
}

impl Follower {
    pub fn new(
        store: Store,
        vault: Vault,
        objects: Objects,
        target: Arc<BackupTarget>,
    ) -> Follower {
        Follower {
            store,
            vault,
            objects,
            target,
            applied: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Applies what the target holds beyond this instance, every tenant.
    pub async fn pass(&self) -> Result<FollowPass, String> {
        let mut pass = FollowPass::default();
        for tenant in restore::tenants_in(&self.target).await? {
            self.follow_tenant(&tenant, &mut pass)
                .await
                .map_err(|e| format!("tenant {tenant}: {e}"))?;
        }
        crate::metrics::get()
            .backup_follow_lag_seconds
            .set(pass.lag_seconds);
        Ok(pass)
    }

    /// Tells the target where this standby stands, for the primary's
    /// posture report; a failure only costs the report.
    async fn report(&self, pass: &FollowPass) {
        let report = Report {
            node: self.store.node().to_owned(),
            at: crate::clock::now(),
            lag_seconds: pass.lag_seconds,
        };
        let key = format!("{STANDBYS}{}.json", report.node.replace('/', "_"));
        if let Err(e) = self
            .target
            .put(&key, serde_json::to_vec(&report).unwrap_or_default())
            .await
        {
            tracing::debug!(error = %e, "the standby could not report to the target");
        }
    }

    async fn local_seq(&self, scope: &TenantScope) -> Result<Option<i64>, String> {
        let mut tx = self.store.read(scope).await.map_err(|e| e.to_string())?;
        db::query_scalar("SELECT journal_seq FROM tenant_sequences WHERE tenant_id = $1")
            .bind(scope.id_str())
            .fetch_optional(tx.conn())
            .await
            .map_err(|e| e.to_string())
    }

    async fn follow_tenant(&self, tenant: &str, pass: &mut FollowPass) -> Result<(), String> {
        let id = TenantId::parse(tenant).ok_or("not a tenant id")?;
        let scope = TenantScope::trusted(id);
        let applied = match self.local_seq(&scope).await? {
            Some(seq) => seq,
            None => {
                self.restore_whole(tenant).await?;
                pass.tenants_restored += 1;
                return Ok(());
            }
        };
        let memo = self
            .applied
            .lock()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
            .filter(|a| a.seq == applied);
        let segments = super::ship::segment_keys(&self.target, tenant).await?;
        // The hash the first new segment must name: of the segment before it.
        let first_new = segments.iter().position(|(_, last, _)| *last > applied);
        let Some(first_new) = first_new else {
            return Ok(());
        };
        let keys = keys::load(&self.vault, &self.target, tenant).await?;
        let mut previous = match (&memo, first_new) {
            (_, 0) => super::ship::chain_start(&self.target, tenant).await?.1,
            (
                Some(Applied {
                    segment: Some((last, sha)),
                    ..
                }),
                i,
            ) if segments[i - 1].1 == *last => sha.clone(),
            (_, i) => {
                let bytes = self
                    .target
                    .get(&segments[i - 1].2)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("a segment vanished while read")?;
                segment::sha256_hex(&bytes)
            }
        };
        let mut entries: Vec<Entry> = Vec::new();
        let mut last_segment = None;
        for (_, last, key) in &segments[first_new..] {
            let bytes = self
                .target
                .get(key)
                .await
                .map_err(|e| format!("cannot read segment {key}: {e}"))?
                .ok_or_else(|| format!("segment {key} vanished while read"))?;
            let (header, _) = segment::header(&bytes).map_err(|e| format!("segment {key}: {e}"))?;
            if header.previous != previous {
                return Err(format!(
                    "segment {key} does not follow the one before it: missing, reordered or replaced; not applied"
                ));
            }
            let (dk, _) = keys.get(&header.key_version).ok_or_else(|| {
                format!(
                    "segment {key} needs key version {}, not in the target",
                    header.key_version
                )
            })?;
            let (_, opened) =
                segment::open(&bytes, dk).map_err(|e| format!("segment {key}: {e}"))?;
            previous = segment::sha256_hex(&bytes);
            last_segment = Some((*last, previous.clone()));
            entries.extend(opened.into_iter().filter(|e| e.seq > applied));
        }
        if let Some(first) = entries.first() {
            pass.lag_seconds = pass
                .lag_seconds
                .max(super::ship::age_seconds(&first.occurred_at));
        }
        if entries.iter().any(|e| e.entity == restore::MARKER) {
            // The primary replaced the tenant's state: so does the standby.
            self.forget_tenant(&scope).await?;
            self.restore_whole(tenant).await?;
            pass.tenants_restored += 1;
            return Ok(());
        }
        let images = self
            .store
            .images()
            .ok_or("the schema predates restorable backups")?
            .clone();
        self.put_back_files(tenant, &entries).await?;
        let count = entries.len();
        let last_seq = entries.last().map_or(applied, |e| e.seq);
        let scope_for_write = scope.clone();
        self.store
            .append_internal(Some(&scope_for_write), move |conn| {
                Box::pin(async move { apply(conn, &images, &scope, &entries).await })
            })
            .await
            .map_err(|e| format!("cannot apply seq {}..={last_seq}: {e}", applied + 1))?;
        pass.entries_applied += count;
        if let Ok(mut memo) = self.applied.lock() {
            memo.insert(
                tenant.to_owned(),
                Applied {
                    seq: last_seq,
                    segment: last_segment,
                },
            );
        }
        Ok(())
    }

    /// A tenant new to the standby (or replaced by a restore on the
    /// primary) comes whole from its newest snapshot and the journal.
    async fn restore_whole(&self, tenant: &str) -> Result<(), String> {
        restore::restore_tenant(
            &self.store,
            &self.vault,
            &self.objects,
            &self.target,
            tenant,
            &Point::Latest,
            Mode::Standby,
            &RequestMeta::default(),
            &|_, _| {},
        )
        .await
        .map(|_| ())
    }

    async fn forget_tenant(&self, scope: &TenantScope) -> Result<(), String> {
        let tenant = scope.id_str().to_owned();
        self.store
            .append_internal(Some(scope), move |conn| {
                Box::pin(async move {
                    db::query("DELETE FROM tenants WHERE id = $1")
                        .bind(&tenant)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The objects of files the entries add, from the target's copies.
    async fn put_back_files(&self, tenant: &str, entries: &[Entry]) -> Result<(), String> {
        let own = format!("t/{tenant}/");
        for key in super::ship::uploaded_objects(entries)
            .iter()
            .filter(|k| k.starts_with(&own))
        {
            let copy = self
                .target
                .get(&super::ship::file_copy(key))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(bytes) = copy {
                for store in self.objects.targets() {
                    store
                        .put_bytes(key, bytes.clone())
                        .await
                        .map_err(|e| format!("cannot put object {key}: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

/// Applies entries' images in journal order and moves the tenant's
/// counters to the last, in the caller's transaction.
async fn apply(
    conn: &mut db::Conn,
    images: &Images,
    scope: &TenantScope,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let tenant = scope.id_str();
    let mut audit: Option<(i64, String)> = None;
    for entry in entries {
        if !image::has_image(&entry.entity) {
            continue;
        }
        let Some(text) = entry.rows.as_deref() else {
            continue;
        };
        let image: std::collections::BTreeMap<String, Vec<Value>> = serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("entry {}: {e}", entry.seq)))?;
        for (table, rows) in image {
            let Some(key) = image::key_column(&table) else {
                continue;
            };
            if PARENTS.contains(&table.as_str()) && !rows.is_empty() {
                // In place: deleting would take its children along.
                let text = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
                db::query(images.upsert_rows(&table))
                    .bind(text)
                    .execute(&mut *conn)
                    .await?;
                continue;
            }
            db::query(images.delete_by_key(&table, key))
                .bind(tenant)
                .bind(entry.entity_id.clone())
                .execute(&mut *conn)
                .await?;
            if !rows.is_empty() {
                if table == "audit_events"
                    && let Some(row) = rows.last()
                    && let (Some(seq), Some(hash)) = (row["seq"].as_i64(), row["hash"].as_str())
                {
                    audit = Some((seq, hash.to_owned()));
                }
                let text = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
                db::query(images.insert_rows(&table))
                    .bind(text)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    let last = entries.last().map_or(0, |e| e.seq);
    db::query("UPDATE tenant_sequences SET journal_seq = $1 WHERE tenant_id = $2")
        .bind(last)
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    if let Some((seq, hash)) = audit {
        db::query(
            "UPDATE tenant_sequences SET audit_seq = $1, audit_head = $2 WHERE tenant_id = $3",
        )
        .bind(seq)
        .bind(hash)
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Runs the standby until promoted: a pass every [`PASS_EVERY`] (a
/// failing pass is logged and retried), then, when the promote file
/// appears, one last pass, and `on_promoted`.
pub async fn run(
    follower: Follower,
    standby: Arc<Standby>,
    data_dir: PathBuf,
    on_promoted: impl FnOnce(),
) {
    let mut failing = false;
    let mut reported = std::time::Instant::now() - REPORT_EVERY;
    loop {
        let promote = promote_file(&data_dir).exists();
        match follower.pass().await {
            Ok(pass) => {
                if reported.elapsed() >= REPORT_EVERY {
                    reported = std::time::Instant::now();
                    follower.report(&pass).await;
                }
                if failing {
                    tracing::info!("the standby applies the primary's journal again");
                }
                failing = false;
                if pass.entries_applied > 0 || pass.tenants_restored > 0 {
                    tracing::debug!(?pass, "standby applied");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "the standby cannot apply the primary's journal");
            }
            Err(_) => {}
        }
        if promote {
            let _ = std::fs::remove_file(promote_file(&data_dir));
            standby.promoted();
            tracing::warn!(
                event = "backup.promoted",
                target = %standby.target,
                "this standby is the primary now: writes are accepted and it ships to the same target"
            );
            on_promoted();
            return;
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
}
