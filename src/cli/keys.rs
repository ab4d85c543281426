//! `strongroom keys …` and `strongroom files verify`: key rotation,
//! crypto-shredding and the object scrub, for the operator at the console.

use std::io::IsTerminal;

use anyhow::Context;

use crate::context::Permit;
use crate::context::{Actor, RequestMeta};
use crate::http::AppState;

pub(super) async fn status(state: &AppState, tenant: &str) -> anyhow::Result<()> {
    let (scope, _) = super::tenant_scopes(&state.store, Some(tenant))
        .await?
        .remove(0);
    let status = crate::keys::status(&state.store, &state.vault, &scope).await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

pub(super) async fn rotate(state: &AppState, tenant: Option<&str>) -> anyhow::Result<()> {
    let files = state.files();
    let tty = std::io::stderr().is_terminal();
    for (scope, slug) in super::tenant_scopes(&state.store, tenant).await? {
        let permit = Permit::operator(scope.clone(), Actor::operator());
        let version = crate::keys::rotate(&state.store, &state.vault, &permit, &RequestMeta::cli())
            .await
            .with_context(|| format!("{slug}: rotation not started"))?;
        println!(
            "{slug}: key version {version} is active for new writes; re-encrypting existing data"
        );
        let report = |records: u64, file_keys: u64| {
            if tty {
                eprint!(
                    "\r{slug}: {records} records re-encrypted, {file_keys} file keys rewrapped"
                );
            }
        };
        let (records, file_keys) = crate::keys::reencrypt(&files, &scope, &report)
            .await
            .with_context(|| {
                format!("{slug}: re-encryption stopped; run the command again to resume")
            })?;
        if tty {
            eprintln!();
        }
        println!("{slug}: done ({records} records re-encrypted, {file_keys} file keys rewrapped)");
    }
    Ok(())
}

/// Master-key rotation: works on the database directly (the server must be
/// stopped: it holds the old key), then swaps the key file.
pub(super) async fn rotate_master(config: &crate::config::Config) -> anyhow::Result<()> {
    let (old, new) =
        crate::crypto::Keyring::begin_rotation(&config.data_dir, config.master_key.as_ref())?;
    let store = crate::store::Store::connect_migrated_until(
        &config.database_url(),
        4,
        config.migrate_until,
    )
    .await?;
    let result = async {
        for (scope, slug) in super::tenant_scopes(&store, None).await? {
            let (moved, resigned) = crate::keys::rotate_master(&store, &scope, &old, &new)
                .await
                .with_context(|| format!("{slug}: not rotated; run the command again to resume"))?;
            println!("{slug}: {moved} keys rewrapped, {resigned} audit checkpoints re-signed");
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result?;
    crate::crypto::Keyring::finish_rotation(&config.data_dir)?;
    println!(
        "master key rotated ({} → {}); the audit checkpoint public key changed: fetch it again from /api/v1/audit/checkpoint-key",
        old.master_kek_id(),
        new.master_kek_id()
    );
    Ok(())
}

pub(super) async fn destroy(state: &AppState, tenant: &str, yes: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        yes,
        "destroying a tenant's keys makes all its encrypted data unreadable for good; \
         pass --yes to confirm"
    );
    let (scope, slug) = super::tenant_scopes(&state.store, Some(tenant))
        .await?
        .remove(0);
    let permit = Permit::operator(scope, Actor::operator());
    let n = crate::keys::destroy(&state.store, &state.vault, &permit, &RequestMeta::cli()).await?;
    println!(
        "{slug}: {n} key versions destroyed; its encrypted values and files can no longer be read"
    );
    Ok(())
}

#[derive(Default, serde::Serialize)]
struct Scrub {
    files: u64,
    good: u64,
    damaged: u64,
    repaired: u64,
    unreadable: u64,
}

impl Scrub {
    fn summary(&self, stores: usize) -> String {
        format!(
            "{} files in {stores} stores: {} good, {} damaged, {} repaired, {} unreadable",
            self.files, self.good, self.damaged, self.repaired, self.unreadable
        )
    }
}

/// FIL-5: checks every copy of every file against its recorded checksum.
pub(super) async fn verify_files(
    state: &AppState,
    tenant: Option<&str>,
    repair: bool,
    json: bool,
) -> anyhow::Result<()> {
    let files = state.files();
    let tty = std::io::stderr().is_terminal() && !json;
    let mut scrub = Scrub::default();
    for (scope, slug) in super::tenant_scopes(&state.store, tenant).await? {
        let mut after: Option<String> = None;
        loop {
            let ids = files.list_ids(&scope, after.as_deref(), 200).await?;
            let Some(last) = ids.last() else {
                break;
            };
            after = Some(last.clone());
            for id in ids {
                scrub.files += 1;
                let file = match files.open_by_id(&scope, &id).await {
                    Ok(file) => file,
                    Err(e) => {
                        scrub.unreadable += 1;
                        println!("{slug}: file {id}: cannot be checked: {e}");
                        continue;
                    }
                };
                let mut good = None;
                let mut bad = Vec::new();
                for (i, target) in files.objects.targets().iter().enumerate() {
                    match files
                        .verify_copy(target, &file, crate::files::Depth::Checksum, false)
                        .await
                    {
                        Ok(_) => good = good.or(Some(i)),
                        Err(why) => {
                            println!(
                                "{slug}: file {id}: {} copy ({}) damaged: {why}",
                                target.role, target.describe
                            );
                            bad.push(i);
                        }
                    }
                }
                match (bad.is_empty(), good) {
                    (true, _) => scrub.good += 1,
                    (false, Some(good)) if repair => {
                        files.repair(&file, good, &bad).await;
                        scrub.repaired += 1;
                        println!(
                            "{slug}: file {id}: repaired from the {} copy",
                            files.objects.targets()[good].role
                        );
                    }
                    _ => scrub.damaged += 1,
                }
                if tty {
                    eprint!("\rchecked {} files", scrub.files);
                }
            }
        }
    }
    if tty {
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string(&scrub)?);
    } else {
        println!("checked {}", scrub.summary(files.objects.targets().len()));
    }
    // A scrub of every tenant is what the FIL-5 check reports.
    if tenant.is_none() {
        let detail = scrub.summary(files.objects.targets().len());
        let ok = scrub.damaged == 0 && scrub.unreadable == 0;
        crate::ops::heartbeat(&state.store, crate::posture::checks::SCRUB_JOB, ok, detail).await?;
    }
    anyhow::ensure!(
        scrub.damaged == 0 && scrub.unreadable == 0,
        "{} damaged and {} unreadable files{}",
        scrub.damaged,
        scrub.unreadable,
        if repair {
            ""
        } else {
            "; run with --repair to restore damaged copies from a good one"
        }
    );
    Ok(())
}
