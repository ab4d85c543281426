//! Live checks of the backups (BAK-1's shipping, ENC-4's backup target):
//! the target is opened now, a sealed canary goes through it and comes
//! back as ciphertext, and every tenant's journal is compared with what
//! the target holds.

use super::finding::{Finding, Probe, Reach, Verdict, finding};
use crate::backup::{BackupTarget, ship};
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
) -> [Finding; 2] {
    if !probe.config.backup {
        let off = "backup is off: the journal is kept in the database but not shipped anywhere";
        return [
            finding(
                "BAK-1",
                Verdict::Warn,
                format!("{}; {off}", journal.evidence),
            ),
            stores,
        ];
    }
    let target = match BackupTarget::open(probe.config) {
        Ok(target) => target,
        Err(why) => {
            let why = format!("the backup target cannot be opened: {why}");
            return [
                finding("BAK-1", Verdict::Fail, why.clone()),
                finding("ENC-4", Verdict::Fail, why),
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
    if journal.verdict == Verdict::Fail {
        return [journal, enc4];
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
    [bak1, enc4]
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
