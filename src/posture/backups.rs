//! Live checks of the backups (BAK-1's shipping, ENC-4's backup target):
//! the target is opened now, a sealed canary goes through it and comes
//! back as ciphertext, and every tenant's journal is compared with what
//! the target holds.

use super::finding::{Finding, Probe, Reach, Verdict, finding};
use crate::backup::{BackupTarget, drill, follow, integrity, keys, ship, snapshot};
use crate::context::TenantScope;
use crate::store::db;

/// The target as the reader of the report may see it: an operator where
/// it is, a tenant only its kind.
fn shown(target: &BackupTarget, reach: Reach) -> String {
    match reach {
        Reach::Instance => target.describe().to_owned(),
        Reach::Tenant => target
            .describe()
            .split("://")
            .next()
            .unwrap_or("?")
            .to_owned(),
    }
}

/// BAK-1 (shipping) on top of what the journal check found, and ENC-4 (the
/// backup target) on top of the object stores' canary.
pub async fn check(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
    journal: Finding,
    stores: Finding,
) -> [Finding; 4] {
    if !probe.config.backup {
        let off = "backup is off: the journal is kept in the database but not shipped anywhere";
        return [
            finding(
                "BAK-1",
                Verdict::Warn,
                format!("{}; {off}", journal.evidence),
            ),
            stores,
            finding("BAK-2", Verdict::Warn, off.to_owned()),
            finding(
                "BAK-4",
                Verdict::Warn,
                format!("{off}: there is nothing to restore from"),
            ),
        ];
    }
    let target = match BackupTarget::open(probe.config) {
        Ok(target) => target,
        Err(why) => {
            let why = format!("the backup target cannot be opened: {why}");
            return [
                finding("BAK-1", Verdict::Fail, why.clone()),
                finding("ENC-4", Verdict::Fail, why.clone()),
                finding("BAK-2", Verdict::Fail, why.clone()),
                finding("BAK-4", Verdict::Fail, why),
            ];
        }
    };
    let enc4 = match (target.self_test().await, stores.verdict) {
        (Err(why), _) => finding("ENC-4", Verdict::Fail, why),
        (Ok(()), Verdict::Pass) => finding(
            "ENC-4",
            Verdict::Pass,
            format!(
                "{}; and a canary written now to the backup target ({}) is ciphertext in its \
                 raw bytes, and opens back",
                stores.evidence,
                shown(&target, reach)
            ),
        ),
        (Ok(()), _) => stores,
    };
    let (bak2, bak4) = snapshots(probe, scopes, reach, &target).await;
    if journal.verdict == Verdict::Fail {
        return [journal, enc4, bak2, bak4];
    }
    let bak1 = match shipping(probe, scopes, &target).await {
        Ok((lag, unshipped)) if lag <= probe.config.backup_lag_alert_seconds as f64 => finding(
            "BAK-1",
            journal.verdict,
            format!(
                "{}; shipped to the backup target ({}), sealed with each tenant's key: {} \
                 entries not there yet, the oldest {lag:.1} s old (alert past {} s)",
                journal
                    .evidence
                    .replace(" (not yet shipped to a second location)", ""),
                shown(&target, reach),
                unshipped,
                probe.config.backup_lag_alert_seconds
            ),
        ),
        Ok((lag, unshipped)) => finding(
            "BAK-1",
            Verdict::Fail,
            format!(
                "shipping to the backup target is {lag:.0} s behind ({unshipped} entries of {} \
                 not there), past the {} s alert threshold",
                reach.tenants(scopes.len()),
                probe.config.backup_lag_alert_seconds
            ),
        ),
        Err(why) => finding(
            "BAK-1",
            Verdict::Fail,
            format!("the backup target cannot be read: {why}"),
        ),
    };
    [bak1, enc4, bak2, bak4]
}

/// BAK-2: every tenant's newest snapshot is younger than the schedule
/// allows (an hour of slack); BAK-4: every tenant has a snapshot whose key
/// version the target holds, so the target alone restores it.
async fn snapshots(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
    target: &BackupTarget,
) -> (Finding, Finding) {
    let allowed = (probe.config.backup_snapshot_hours * 3600 + 3600) as f64;
    let (mut oldest, mut missing, mut unopenable) = (0.0f64, 0usize, 0usize);
    for scope in scopes {
        let listed = match snapshot::list(target, scope.id_str()).await {
            Ok(listed) => listed,
            Err(why) => {
                let why = format!("the snapshots cannot be read: {why}");
                return (
                    finding("BAK-2", Verdict::Fail, why.clone()),
                    finding("BAK-4", Verdict::Fail, why),
                );
            }
        };
        let Some(newest) = listed.last() else {
            missing += 1;
            continue;
        };
        oldest = oldest.max(ship::age_seconds(&newest.header.taken_at));
        let key = keys::key_object(scope.id_str(), newest.header.key_version);
        if !matches!(target.get(&key).await, Ok(Some(_))) {
            unopenable += 1;
        }
    }
    let every = probe.config.backup_snapshot_hours;
    let bak2 = if missing > 0 {
        finding(
            "BAK-2",
            Verdict::Warn,
            format!(
                "{missing} of {} have no snapshot yet (taken within the hour of a start, then every {every} h, or `strongroom backup now`)",
                reach.tenants(scopes.len())
            ),
        )
    } else if oldest > allowed {
        finding(
            "BAK-2",
            Verdict::Fail,
            format!(
                "the oldest newest snapshot is {:.1} h old, past the {every} h schedule",
                oldest / 3600.0
            ),
        )
    } else {
        finding(
            "BAK-2",
            Verdict::Pass,
            format!(
                "each of {} has a snapshot sealed with its key in the backup target ({}), the oldest newest {:.1} h old (every {every} h)",
                reach.tenants(scopes.len()),
                shown(target, reach),
                oldest / 3600.0
            ),
        )
    };
    let bak4 = if unopenable > 0 {
        finding(
            "BAK-4",
            Verdict::Fail,
            format!(
                "{unopenable} newest snapshots are sealed with a key version the target no longer holds"
            ),
        )
    } else if missing > 0 {
        finding(
            "BAK-4",
            Verdict::Warn,
            format!("{missing} tenants cannot be restored yet: no snapshot"),
        )
    } else {
        finding(
            "BAK-4",
            Verdict::Pass,
            format!(
                "{} can be restored from the target alone to any journal seq from its newest snapshot to the head (`strongroom backup restore`), with every key version it needs there and none the erasure log names",
                reach.tenants(scopes.len())
            ),
        )
    };
    (bak2, bak4)
}

/// The oldest unshipped entry's age over all tenants, and how many
/// entries the target lacks.
async fn shipping(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    target: &BackupTarget,
) -> Result<(f64, i64), String> {
    let (mut lag, mut unshipped) = (0.0f64, 0i64);
    for scope in scopes {
        let shipped = ship::head(target, scope.id_str())
            .await?
            .map_or(0, |head| head.last);
        let mut tx = probe.store.read(scope).await.map_err(|e| e.to_string())?;
        let row = db::query(
            "SELECT COUNT(*), MIN(occurred_at) FROM journal WHERE tenant_id = $1 AND seq > $2",
        )
        .bind(scope.id_str())
        .bind(shipped)
        .fetch_one(tx.conn())
        .await
        .map_err(|e| e.to_string())?;
        let count: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        let oldest: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
        unshipped += count;
        if let Some(oldest) = oldest {
            lag = lag.max(ship::age_seconds(&oldest));
        }
    }
    Ok((lag, unshipped))
}

/// BAK-4's corruption half, on top of what `restorable` (the snapshots)
/// found: the last integrity check, as its heartbeat recorded it. A
/// finding about these tenants (or, to an operator, the database) fails.
pub fn integrity(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
    runs: &[crate::ops::JobRun],
    restorable: Finding,
) -> Finding {
    let Some(run) = runs.iter().find(|r| r.job == integrity::JOB) else {
        let verdict = match restorable.verdict {
            Verdict::Fail => Verdict::Fail,
            _ => Verdict::Warn,
        };
        return finding(
            "BAK-4",
            verdict,
            format!(
                "{}; no integrity check recorded yet (`backup.integrity` runs at start and every \
                 `integrity_check_minutes`; `POST /api/v1/ops/integrity` runs one now)",
                restorable.evidence
            ),
        );
    };
    let Some(report) = run
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str::<integrity::Report>(d).ok())
    else {
        return finding(
            "BAK-4",
            Verdict::Fail,
            format!(
                "the last integrity check ({}) did not run: {}",
                run.last_run_at,
                run.detail.as_deref().unwrap_or("no detail")
            ),
        );
    };
    let ours: Vec<&integrity::Finding> = report
        .findings
        .iter()
        .filter(|f| match &f.tenant {
            Some(tenant) => scopes.iter().any(|s| s.id_str() == tenant),
            None => reach == Reach::Instance,
        })
        .collect();
    if !ours.is_empty() {
        let named: Vec<String> = ours
            .iter()
            .map(|f| match reach {
                Reach::Instance => {
                    format!("{} ({}): {}; {}", f.named(), f.check, f.detail, f.outcome)
                }
                Reach::Tenant => format!("{}: {}", f.check, f.outcome),
            })
            .collect();
        return finding(
            "BAK-4",
            Verdict::Fail,
            format!(
                "the integrity check at {} found: {}",
                report.at,
                named.join(" | ")
            ),
        );
    }
    let database = match reach {
        Reach::Instance => format!(" (database: {})", report.database),
        Reach::Tenant => String::new(),
    };
    finding(
        "BAK-4",
        restorable.verdict,
        format!(
            "{}; the integrity check at {} found nothing wrong with {}{database} (a failure \
             refuses the tenant{})",
            restorable.evidence,
            report.at,
            reach.tenants(scopes.len()),
            if probe.config.backup_auto_restore {
                " and restores it from its backup: backup_auto_restore is on"
            } else {
                "; backup_auto_restore is off: an operator restores it"
            }
        ),
    )
}

/// BAK-6: the last restore drill, as its heartbeat recorded it.
pub fn drills(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
    runs: &[crate::ops::JobRun],
) -> Finding {
    let every = probe.config.backup_drill_hours;
    if !probe.config.backup {
        return finding(
            "BAK-6",
            Verdict::Warn,
            "backup is off: there is nothing to drill".to_owned(),
        );
    }
    let Some(run) = runs.iter().find(|r| r.job == drill::JOB) else {
        return finding(
            "BAK-6",
            Verdict::Warn,
            format!(
                "no restore drill recorded yet (`backup.drill` runs every {every} h; `strongroom backup drill` runs one now)"
            ),
        );
    };
    if !run.ok {
        // The failure names tenants and tables, never values.
        let why = match reach {
            Reach::Instance => run.detail.clone().unwrap_or_default(),
            Reach::Tenant => "a tenant's rebuild did not match its live state".to_owned(),
        };
        return finding(
            "BAK-6",
            Verdict::Fail,
            format!("the last restore drill ({}) failed: {why}", run.last_run_at),
        );
    }
    let drilled: Vec<drill::Drill> = run
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    let ours: Vec<&drill::Drill> = drilled
        .iter()
        .filter(|d| scopes.iter().any(|s| s.id_str() == d.tenant))
        .collect();
    let rows: usize = ours.iter().map(|d| d.rows_compared).sum();
    let rto = ours.iter().map(|d| d.rto_seconds).fold(0.0, f64::max);
    let rpo = ours.iter().map(|d| d.rpo_seconds).fold(0.0, f64::max);
    let age_hours = ship::age_seconds(&run.last_run_at) / 3600.0;
    let verdict = if age_hours > (2 * every) as f64 {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    finding(
        "BAK-6",
        verdict,
        format!(
            "the last restore drill ({}, {age_hours:.1} h ago; every {every} h) rebuilt {} of {} from the backup target alone and matched the live state row by row ({rows} rows, the audit chain linked); RTO up to {rto:.3} s, RPO up to {rpo:.1} s",
            run.last_run_at,
            ours.len(),
            reach.tenants(scopes.len())
        ),
    )
}

/// BAK-5: a standby that follows the backup target reported within the
/// last minute, and how far behind it was.
pub async fn standby(probe: &Probe<'_>, reach: Reach) -> Finding {
    if !probe.config.backup {
        return finding(
            "BAK-5",
            Verdict::Warn,
            "backup is off: nothing to follow".to_owned(),
        );
    }
    let target = match BackupTarget::open(probe.config) {
        Ok(target) => target,
        Err(why) => return finding("BAK-5", Verdict::Fail, why),
    };
    let mut fresh = Vec::new();
    for key in target.keys(follow::STANDBYS).await.unwrap_or_default() {
        let Ok(Some(bytes)) = target.get(&key).await else {
            continue;
        };
        let Ok(report) = serde_json::from_slice::<follow::Report>(&bytes) else {
            continue;
        };
        if ship::age_seconds(&report.at) <= 60.0 {
            fresh.push(report);
        }
    }
    let shipped = format!(
        "every commit is shipped to the backup target ({}) about every half second",
        shown(&target, reach)
    );
    match fresh.iter().map(|r| r.lag_seconds).reduce(f64::max) {
        Some(lag) => finding(
            "BAK-5",
            Verdict::Pass,
            format!(
                "{shipped}; {} standby (`serve --follow`) applied it within the last minute, {lag:.1} s behind at most; `strongroom promote` makes one the primary",
                fresh.len()
            ),
        ),
        None => finding(
            "BAK-5",
            Verdict::Warn,
            format!(
                "{shipped}, but no standby follows it (`strongroom serve --follow BACKUP_URL` on a second site)"
            ),
        ),
    }
}

/// BAK-3: the instance's own snapshot (its tenants and configuration) is
/// in the target, opens with the master key, and is on schedule.
pub async fn instance(probe: &Probe<'_>, reach: Reach) -> Finding {
    if !probe.config.backup {
        return finding("BAK-3", Verdict::Warn, "backup is off".to_owned());
    }
    let target = match BackupTarget::open(probe.config) {
        Ok(target) => target,
        Err(why) => return finding("BAK-3", Verdict::Fail, why),
    };
    let every = probe.config.backup_snapshot_hours;
    match snapshot::newest_instance(&target, probe.keyring).await {
        Err(why) => finding("BAK-3", Verdict::Fail, why),
        Ok(None) => finding(
            "BAK-3",
            Verdict::Warn,
            format!(
                "no instance snapshot yet (taken with the tenants' every {every} h, or `strongroom backup now`)"
            ),
        ),
        Ok(Some(instance)) => {
            let age = ship::age_seconds(&instance.taken_at) / 3600.0;
            let verdict = if age > (every + 1) as f64 {
                Verdict::Fail
            } else {
                Verdict::Pass
            };
            let what = match reach {
                Reach::Instance => format!(
                    "{} tenants and the configuration (secrets redacted)",
                    instance.tenants.len()
                ),
                Reach::Tenant => "the instance's tenants and configuration".to_owned(),
            };
            finding(
                "BAK-3",
                verdict,
                format!(
                    "the instance snapshot of {age:.1} h ago ({what}) is in the backup target, sealed with a key derived from the master key, every {every} h; each tenant's settings, users, collections and key versions are in its own snapshot and key objects"
                ),
            )
        }
    }
}
