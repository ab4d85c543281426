//! BAK-6: restore drills. The `backup.drill` job (daily by default) reads a
//! tenant's live state in one consistent read, rebuilds the same journal
//! seq from the backup target alone (snapshot, segments, key versions, as
//! a restore would), and compares them table by table, row by row; it
//! checks the rebuilt audit trail's hash links too. Its result — rows
//! compared, mismatches (by table and count, never a value), the rebuild's
//! duration (RTO) and how far the target was behind the live journal when
//! the drill began (RPO) — is the job's heartbeat, metrics, and the
//! evidence of the posture check; a failed drill is a security event.
//! `strongroom backup drill` runs one now.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::restore::{self, Point};
use super::{BackupTarget, ship, snapshot};
use crate::context::TenantScope;
use crate::crypto::Vault;
use crate::store::Store;
use crate::store::image::RESTORED;

pub const JOB: &str = "backup.drill";
/// Tenants drilled in every run while there are at most this many; beyond,
/// this many a run, in turn.
pub const TENANTS_PER_RUN: usize = 10;
/// How long a drill waits for the shipper to reach the live state.
const CATCH_UP: Duration = Duration::from_secs(15);

/// One tenant's drill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drill {
    pub tenant: String,
    pub passed: bool,
    pub to_seq: i64,
    pub snapshot_seq: i64,
    pub entries_replayed: usize,
    pub rows_compared: usize,
    /// What differs, by table: counts and the kind of difference only.
    pub mismatches: Vec<String>,
    /// How long rebuilding the tenant from the target took.
    pub rto_seconds: f64,
    /// How far behind the live journal the target was when the drill began.
    pub rpo_seconds: f64,
    pub at: String,
}

/// Drills one tenant.
pub async fn drill_tenant(
    store: &Store,
    vault: &Vault,
    target: &BackupTarget,
    scope: &TenantScope,
) -> Result<Drill, String> {
    let images = store
        .images()
        .ok_or("the schema predates restorable backups (migrate_until holds it back)")?;
    let tenant = scope.id_str().to_owned();
    let (sequences, live) = snapshot::read_state(store, images, scope).await?;
    let wanted = sequences.journal_seq;
    let rpo_seconds = ship::unshipped_age_of(store, target, scope).await?;
    let waited = Instant::now();
    loop {
        let head = ship::head(target, &tenant).await?.map_or(0, |h| h.last);
        if head >= wanted {
            break;
        }
        if waited.elapsed() > CATCH_UP {
            return Err(format!(
                "the backup target is still behind the live journal (seq {head} of {wanted}) after {} s",
                CATCH_UP.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let rebuilt = restore::rebuild(
        vault,
        target,
        &tenant,
        &Point::Seq(wanted),
        store.backend(),
        &|_, _| {},
    )
    .await?;
    let rto_seconds = started.elapsed().as_secs_f64();
    let mut mismatches = Vec::new();
    let mut rows_compared = 0;
    for table in RESTORED {
        let mut expected: Vec<String> = live
            .get(*table)
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        expected.sort();
        let got = rebuilt.table_texts(table);
        rows_compared += expected.len();
        if expected != got {
            let missing = expected.iter().filter(|r| !got.contains(r)).count();
            let extra = got.iter().filter(|r| !expected.contains(r)).count();
            mismatches.push(format!(
                "{table}: {} rows live, {} rebuilt; {missing} live rows not rebuilt as they are, {extra} rebuilt rows not live",
                expected.len(),
                got.len()
            ));
        }
    }
    if let Some(broken) = broken_link(&rebuilt.table_texts("audit_events")) {
        mismatches.push(broken);
    }
    Ok(Drill {
        tenant,
        passed: mismatches.is_empty(),
        to_seq: wanted,
        snapshot_seq: rebuilt.snapshot_seq,
        entries_replayed: rebuilt.entries_replayed,
        rows_compared,
        mismatches,
        rto_seconds,
        rpo_seconds,
        at: crate::clock::now(),
    })
}

/// The first audit event of the rebuilt trail that does not name its
/// predecessor's hash.
fn broken_link(events: &[String]) -> Option<String> {
    let mut events: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    events.sort_by_key(|e| e["seq"].as_i64().unwrap_or(0));
    for pair in events.windows(2) {
        if pair[1]["prev_hash"] != pair[0]["hash"] {
            return Some(format!(
                "audit_events: seq {} does not chain to seq {}",
                pair[1]["seq"], pair[0]["seq"]
            ));
        }
    }
    None
}

/// Who hears of a drill whose rebuild differs from the live rows (the
/// integrity checks: `super::integrity`).
pub trait Differs {
    fn differs(&self, drill: &Drill) -> impl std::future::Future<Output = ()> + Send;
}

/// One run of the job: every tenant while there are few, else the next
/// [`TENANTS_PER_RUN`] in turn (by the day). Fails when any drill fails;
/// `differs` hears of each drill whose rebuild differs from the live rows.
pub async fn run(
    store: &Store,
    vault: &Vault,
    target: &BackupTarget,
    differs: &impl Differs,
) -> Result<String, String> {
    let scopes = store.tenant_scopes().await.map_err(|e| e.to_string())?;
    let chosen: Vec<&TenantScope> = if scopes.len() <= TENANTS_PER_RUN {
        scopes.iter().collect()
    } else {
        let day = (crate::clock::unix_now() / 86_400) as usize;
        let start = (day * TENANTS_PER_RUN) % scopes.len();
        scopes
            .iter()
            .cycle()
            .skip(start)
            .take(TENANTS_PER_RUN)
            .collect()
    };
    let mut drills = Vec::new();
    let mut failures = Vec::new();
    for scope in chosen {
        match drill_tenant(store, vault, target, scope).await {
            Ok(drill) => {
                let metrics = crate::metrics::get();
                metrics.backup_drill_rto_seconds.set(drill.rto_seconds);
                metrics.backup_drill_rpo_seconds.set(drill.rpo_seconds);
                if !drill.passed {
                    failures.push(format!(
                        "tenant {}: {}",
                        drill.tenant,
                        drill.mismatches.join("; ")
                    ));
                    differs.differs(&drill).await;
                }
                drills.push(drill);
            }
            Err(e) => failures.push(format!("tenant {}: {e}", scope.id_str())),
        }
    }
    if !failures.is_empty() {
        crate::metrics::get().backup_drill_failures.inc();
        tracing::warn!(
            target: "security",
            event = "backup.drill_failed",
            failures = %failures.join(" | "),
            "a restore drill failed: the backup does not rebuild the live state"
        );
        return Err(failures.join(" | "));
    }
    Ok(serde_json::to_string(&drills).unwrap_or_default())
}
