//! `strongroom backup list|verify|ship` (BAK-1): what the backup target
//! holds of each tenant's journal, and whether it is whole.

use std::sync::Arc;

use crate::backup::{BackupTarget, ship};
use crate::http::AppState;

fn target(state: &AppState) -> anyhow::Result<Arc<BackupTarget>> {
    Ok(Arc::new(
        BackupTarget::open(&state.config).map_err(anyhow::Error::msg)?,
    ))
}

pub async fn list(state: &AppState, tenant: Option<&str>, json: bool) -> anyhow::Result<()> {
    let target = target(state)?;
    for (scope, name) in super::tenant_scopes(&state.store, tenant).await? {
        let listing = ship::list(&target, scope.id_str())
            .await
            .map_err(anyhow::Error::msg)?;
        if json {
            println!("{}", serde_json::to_string(&listing)?);
        } else {
            match (listing.first, listing.last) {
                (Some(first), Some(last)) => println!(
                    "{name} ({}): {} segments, journal seq {first}..={last}, {} bytes, at {}",
                    listing.tenant,
                    listing.segments,
                    listing.bytes,
                    target.describe()
                ),
                _ => println!("{name} ({}): nothing shipped yet", listing.tenant),
            }
        }
    }
    Ok(())
}

pub async fn verify(state: &AppState, tenant: Option<&str>, json: bool) -> anyhow::Result<()> {
    let target = target(state)?;
    let mut failures = Vec::new();
    for (scope, name) in super::tenant_scopes(&state.store, tenant).await? {
        let report = ship::verify(&state.store, &state.vault, &target, &scope)
            .await
            .map_err(anyhow::Error::msg)?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else if report.problems.is_empty() {
            println!(
                "{name} ({}): ok ({} segments, {} entries, up to seq {})",
                report.tenant, report.segments, report.entries, report.last
            );
        } else {
            for problem in &report.problems {
                println!("{name} ({}): BAD {problem}", report.tenant);
            }
        }
        if !report.problems.is_empty() {
            failures.push(format!("tenant {name}: {}", report.problems.len()));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("backup verification failed: {}", failures.join(", "))
    }
}

/// One shipping pass now (what `serve` does every half second). Two
/// shippers at once would write the same segment twice with different
/// bytes, so this refuses while a server runs on the data dir or another
/// node holds the shipping job's lease.
pub async fn ship_now(state: &AppState) -> anyhow::Result<()> {
    if let Some(running) = crate::ops::supervise::running(&state.config.data_dir) {
        anyhow::bail!(
            "a server runs on this data dir ({running}) and ships by itself; not shipping \
             (if none runs, its last run stopped uncleanly: start and stop it once)"
        );
    }
    if !state.store.hold_lease(ship::JOB).await {
        anyhow::bail!("another node ships now (it holds the {} lease)", ship::JOB);
    }
    let target = target(state)?;
    let shipper = ship::Shipper::new(
        state.store.clone(),
        state.vault.clone(),
        target,
        std::time::Duration::from_secs(state.config.backup_lag_alert_seconds),
    );
    let pass = shipper.pass().await.map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string(&pass)?);
    if pass.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("shipping failed: {}", pass.failures.join("; "))
    }
}
