//! `strongroom backup list|verify|ship` (BAK-1): what the backup target
//! holds of each tenant's journal, and whether it is whole.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;

use crate::backup::{BackupTarget, drill, restore, ship, snapshot};
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
        state.objects.clone(),
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

/// `backup now`: each tenant's snapshot, taken now (BAK-2).
pub async fn snapshot_now(
    state: &AppState,
    tenant: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let target = target(state)?;
    let mut failures = Vec::new();
    for (scope, name) in super::tenant_scopes(&state.store, tenant).await? {
        match snapshot::take(&state.store, &state.vault, &target, &scope).await {
            Ok(taken) if json => println!("{}", serde_json::to_string(&taken)?),
            Ok(taken) => println!(
                "{name} ({}): snapshot at journal seq {}, {} rows, {} bytes sealed: {}",
                scope.id_str(),
                taken.seq,
                taken.rows,
                taken.bytes,
                taken.key
            ),
            Err(e) => {
                eprintln!("{name} ({}): {e}", scope.id_str());
                failures.push(name);
            }
        }
    }
    // The instance's own (BAK-3), with every `backup now` of all tenants.
    if tenant.is_none() {
        match snapshot::take_instance(&state.store, &state.keyring, &target, &state.config).await {
            Ok(key) if json => println!("{}", serde_json::json!({"instance": key})),
            Ok(key) => println!("instance: tenants and configuration: {key}"),
            Err(e) => {
                eprintln!("instance: {e}");
                failures.push("the instance".to_owned());
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("no snapshot of {}", failures.join(", "))
    }
}

pub struct RestoreArgs {
    pub tenant: Option<String>,
    pub all: bool,
    pub to: String,
    pub into_new_instance: Option<std::path::PathBuf>,
    pub json: bool,
}

/// A progress line on a terminal, nothing otherwise.
fn progress_for(label: String) -> impl Fn(usize, usize) {
    let terminal = std::io::stderr().is_terminal();
    move |done, total| {
        if terminal && total > 0 {
            eprint!("\r{label}: segment {}/{total}", done + 1);
            if done + 1 == total {
                eprintln!();
            }
        }
    }
}

fn report(restored: &restore::Restored, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(restored)?);
    } else {
        println!(
            "restored {} ({}) to journal seq {}: snapshot at seq {} plus {} entries, {} rows, newest change {}, in {:.2} s",
            restored.slug.as_deref().unwrap_or("?"),
            restored.tenant,
            restored.to_seq,
            restored.snapshot_seq,
            restored.entries_replayed,
            restored.rows,
            restored.newest_change_at.as_deref().unwrap_or("-"),
            restored.seconds
        );
    }
    Ok(())
}

/// `backup restore` (BAK-4).
pub async fn restore(state: &AppState, args: RestoreArgs) -> anyhow::Result<()> {
    let point = restore::Point::parse(&args.to).map_err(anyhow::Error::msg)?;
    let target = target(state)?;
    let meta = crate::context::RequestMeta::default();
    if args.all {
        if !crate::tenancy::list(&state.store).await?.is_empty() {
            anyhow::bail!(
                "--all restores onto an empty instance, and this one has tenants: point the data dir \
                 (or database_url) at an empty one"
            );
        }
        let tenants = restore::tenants_in(&target)
            .await
            .map_err(anyhow::Error::msg)?;
        if tenants.is_empty() {
            anyhow::bail!(
                "the backup target {} holds no tenant snapshot",
                target.describe()
            );
        }
        if let Some(instance) = snapshot::newest_instance(&target, &state.keyring)
            .await
            .map_err(anyhow::Error::msg)?
        {
            for t in &instance.tenants {
                let id = t["id"].as_str().unwrap_or_default();
                if !tenants.iter().any(|have| have == id) {
                    eprintln!(
                        "tenant {} ({id}) was in the instance at {} but has no snapshot in the target: not restored",
                        t["slug"].as_str().unwrap_or("?"),
                        instance.taken_at
                    );
                }
            }
        }
        for tenant in tenants {
            let restored = restore::restore_tenant(
                &state.store,
                &state.vault,
                &state.objects,
                &target,
                &tenant,
                &point,
                restore::Mode::Fresh,
                &meta,
                &progress_for(format!("tenant {tenant}")),
            )
            .await
            .map_err(|e| anyhow::anyhow!("tenant {tenant}: {e}"))?;
            report(&restored, args.json)?;
        }
        return Ok(());
    }
    let slug = args.tenant.unwrap_or_default();
    match args.into_new_instance {
        None => {
            if let Some(running) = crate::ops::supervise::running(&state.config.data_dir) {
                anyhow::bail!(
                    "a server runs on this data dir ({running}): ask it to restore the tenant with \
                     POST /api/v1/ops/tenants/{slug}/restore (bearer operator_token; the tenant \
                     answers 503 meanwhile), stop it first, or restore with --into-new-instance DIR"
                );
            }
            let (scope, _) = super::tenant_scopes(&state.store, Some(&slug))
                .await?
                .pop()
                .context("no such tenant")?;
            let restored = restore::restore_tenant(
                &state.store,
                &state.vault,
                &state.objects,
                &target,
                scope.id_str(),
                &point,
                restore::Mode::Live,
                &meta,
                &progress_for(format!("restoring {slug}")),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            report(&restored, args.json)?;
            // The next restore of this tenant starts from here.
            snapshot::take(&state.store, &state.vault, &target, &scope)
                .await
                .map_err(|e| anyhow::anyhow!("restored, but the snapshot after it failed: {e}"))?;
            Ok(())
        }
        Some(dir) => {
            if state.store.backend() == crate::store::Backend::Postgres {
                anyhow::bail!(
                    "--into-new-instance builds a SQLite instance; for PostgreSQL run `backup restore` \
                     with the new instance's configuration (its database_url)"
                );
            }
            if dir.join("strongroom.db").exists() {
                anyhow::bail!("{} already holds an instance", dir.display());
            }
            let tenant = restore::find_by_slug(&state.vault, &target, &slug)
                .await
                .map_err(anyhow::Error::msg)?
                .with_context(|| format!("the backup target holds no tenant with slug {slug:?}"))?;
            crate::create_private_dir(&dir)?;
            let key_file = state.config.data_dir.join(crate::crypto::KEY_FILE);
            if state.config.master_key.is_none() && key_file.exists() {
                std::fs::copy(&key_file, dir.join(crate::crypto::KEY_FILE))?;
            }
            let mut config = (*state.config).clone();
            config.data_dir = dir.clone();
            config.database_url = None;
            config.backup = false;
            let fresh = crate::open(config).await?;
            let restored = restore::restore_tenant(
                &fresh.store,
                &fresh.vault,
                &fresh.objects,
                &target,
                &tenant,
                &point,
                restore::Mode::Fresh,
                &meta,
                &progress_for(format!("restoring {slug}")),
            )
            .await
            .map_err(anyhow::Error::msg);
            fresh.store.close().await;
            report(&restored?, args.json)?;
            println!("the new instance is in {}", dir.display());
            Ok(())
        }
    }
}

/// `backup check`: the integrity checks, reported (BAK-4).
pub async fn check(state: &AppState, drill: bool, json: bool) -> anyhow::Result<()> {
    let target = if state.config.backup {
        Some(target(state)?)
    } else {
        None
    };
    let mut checks = crate::backup::http::integrity_of(state, target);
    checks.acting = false;
    let report = checks.run(drill).await.map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} tenants checked; database: {}",
            report.tenants_checked, report.database
        );
        for f in &report.findings {
            println!(
                "{} ({}): {}\n  what mends it: {}",
                f.named(),
                f.check,
                f.detail,
                f.remedy
            );
        }
    }
    let found = report.findings.len();
    let outcome = crate::backup::integrity::outcome(Ok(report));
    crate::ops::heartbeat(
        &state.store,
        crate::backup::integrity::JOB,
        outcome.is_ok(),
        outcome.unwrap_or_else(|e| e),
    )
    .await?;
    if found > 0 {
        anyhow::bail!("the integrity check found {found} problems");
    }
    Ok(())
}

/// `backup drill`: each tenant rebuilt from the target and compared with
/// the live state (BAK-6).
pub async fn drill(state: &AppState, tenant: Option<&str>, json: bool) -> anyhow::Result<()> {
    let target = target(state)?;
    let mut failures = Vec::new();
    let mut drills = Vec::new();
    for (scope, name) in super::tenant_scopes(&state.store, tenant).await? {
        match drill::drill_tenant(&state.store, &state.vault, &target, &scope).await {
            Ok(drill) => {
                drills.push(drill.clone());
                if json {
                    println!("{}", serde_json::to_string(&drill)?);
                } else {
                    println!(
                        "{name} ({}): {} — seq {} rebuilt from snapshot seq {} plus {} entries, {} rows compared, RTO {:.3} s, RPO {:.1} s",
                        drill.tenant,
                        if drill.passed { "passed" } else { "FAILED" },
                        drill.to_seq,
                        drill.snapshot_seq,
                        drill.entries_replayed,
                        drill.rows_compared,
                        drill.rto_seconds,
                        drill.rpo_seconds
                    );
                    for mismatch in &drill.mismatches {
                        println!("{name}: {mismatch}");
                    }
                }
                if !drill.passed {
                    failures.push(name);
                }
            }
            Err(e) => {
                eprintln!("{name} ({}): {e}", scope.id_str());
                failures.push(name);
            }
        }
    }
    // Recorded as the job's run, for the posture report (BAK-6).
    let detail = if failures.is_empty() {
        serde_json::to_string(&drills)?
    } else {
        format!("failed for {}", failures.join(", "))
    };
    crate::ops::heartbeat(&state.store, drill::JOB, failures.is_empty(), detail).await?;
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("restore drill failed for {}", failures.join(", "))
    }
}
