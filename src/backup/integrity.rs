//! BAK-4: corrupted data is found, refused and restored from the latest
//! good backup. The `backup.integrity` job runs at start and every
//! `integrity_check_minutes` (default 60); `POST /api/v1/ops/integrity`
//! runs it now. It checks:
//!
//! * **the database file** (SQLite): `PRAGMA quick_check`. When it fails,
//!   every tenant's restorable state is read in full, to name the tenants
//!   whose rows cannot be read; corruption no tenant's rows show (an index,
//!   a free page) is an instance finding, whose remedy is a whole-instance
//!   restore onto a new data dir.
//! * **each tenant's journal**: gap-free up to the tenant's counter (a
//!   deleted or lost entry shows as a hole or a counter that does not
//!   match).
//! * **the backup target against the database**: a target holding journal
//!   entries the database does not means committed writes were lost (the
//!   database was rolled back or replaced by an old copy).
//! * **each tenant's rows against its backup**, when a restore drill
//!   ([`super::drill`]) runs: the backup is sealed and hash-chained, so a
//!   live row that differs from its authentic rebuild was changed behind
//!   the write path, or damaged.
//!
//! A tenant a check fails is **refused** (`503 tenant-integrity` on every
//! request, [`crate::tenancy::holds`]), a `backup.integrity_failed` security
//! event is raised and the operators (`operator_email`, when a mailer is
//! configured) are mailed what failed and what to run. With
//! `backup_auto_restore = true`, a tenant whose damage a live restore mends
//! (rows changed or unreadable, the journal whole) is restored from the
//! newest point of its backup at once, then served again; the restore is
//! an audit event of the tenant (`backup.restored`) and a
//! `backup.auto_restored` security event. Lost writes are never mended in
//! place: the tenant stays refused until an operator restores the instance
//! from the target, or lifts the refusal
//! (`DELETE /api/v1/ops/tenants/{slug}/refusal`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::restore::{self, Mode, Point};
use super::{BackupTarget, drill, ship, snapshot};
use crate::context::{RequestMeta, TenantScope};
use crate::crypto::Vault;
use crate::files::Objects;
use crate::mail::{Mailer, Rendered};
use crate::store::{Backend, Store, db};
use crate::tenancy::holds::Holds;

pub const JOB: &str = "backup.integrity";

/// What a check found wrong.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    /// The tenant it concerns (none: the database as a whole).
    pub tenant: Option<String>,
    pub slug: Option<String>,
    /// `database`, `journal`, `lost_writes`, `unreadable` or `rows`.
    pub check: String,
    /// What is wrong, by table and count, never a value.
    pub detail: String,
    /// What mends it.
    pub remedy: String,
    /// What was done: `refused`, `restored`, or why a restore failed.
    pub outcome: String,
}

impl Finding {
    /// A finding, with what mends it; what was done is filled in later.
    fn new(tenant: Option<&str>, slug: Option<String>, check: &str, detail: String) -> Finding {
        let mut finding = Finding {
            tenant: tenant.map(str::to_owned),
            slug,
            check: check.to_owned(),
            detail,
            remedy: String::new(),
            outcome: String::new(),
        };
        finding.remedy = remedy(&finding);
        finding
    }

    /// The tenant's slug (its id if it has none), or "the database".
    pub fn named(&self) -> &str {
        self.slug
            .as_deref()
            .or(self.tenant.as_deref())
            .unwrap_or("the database")
    }

    /// Whether a restore of the tenant into the live instance mends it.
    fn mended_by_live_restore(&self) -> bool {
        self.tenant.is_some() && matches!(self.check.as_str(), "unreadable" | "rows")
    }
}

/// One run of the checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub at: String,
    pub tenants_checked: usize,
    /// SQLite's `quick_check` answer, or what PostgreSQL checks itself.
    pub database: String,
    pub findings: Vec<Finding>,
}

/// The checks and what answers their findings.
pub struct Integrity {
    pub store: Store,
    pub vault: Vault,
    pub objects: Objects,
    /// The backup target, when backups are on.
    pub target: Option<Arc<BackupTarget>>,
    pub holds: Arc<Holds>,
    pub mailer: Arc<Mailer>,
    pub operators: Vec<String>,
    pub auto_restore: bool,
    /// Whether findings are answered (refused, mailed, restored): a
    /// server's checks; `strongroom backup check` only reports.
    pub acting: bool,
}

impl Integrity {
    /// Runs every check (with `drills`, the restore drills' row comparison
    /// too), then refuses, reports and (if configured) restores.
    pub async fn run(&self, drills: bool) -> Result<Report, String> {
        let _one_at_a_time = self.holds.checking().await;
        let slugs: HashMap<String, String> = crate::tenancy::list(&self.store)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| (t.id, t.slug))
            .collect();
        let scopes = self
            .store
            .tenant_scopes()
            .await
            .map_err(|e| e.to_string())?;
        let database = database_check(&self.store).await?;
        let mut findings = Vec::new();
        let database_ok = database == "ok" || self.store.backend() == Backend::Postgres;
        for scope in &scopes {
            let tenant = scope.id_str();
            let mut found = |check: &str, detail: String| {
                findings.push(Finding::new(
                    Some(tenant),
                    slugs.get(tenant).cloned(),
                    check,
                    detail,
                ))
            };
            // The target's head is read before the database's counter, so
            // entries shipped in between cannot look lost.
            let head = match &self.target {
                Some(target) => ship::head(target, tenant).await?.map(|h| h.last),
                None => None,
            };
            match journal_check(&self.store, scope).await {
                Ok((counter, None)) => {
                    if let Some(head) = head.filter(|head| *head > counter) {
                        found(
                            "lost_writes",
                            format!(
                                "the backup target holds the journal up to seq {head}, the \
                                 database only up to {counter}: committed writes were lost \
                                 (the database was rolled back or replaced)"
                            ),
                        );
                    }
                }
                Ok((_, Some(hole))) => found("journal", hole),
                Err(e) => found("unreadable", format!("the journal cannot be read: {e}")),
            }
            if !database_ok
                && let Some(images) = self.store.images()
                && let Err(e) = snapshot::read_state(&self.store, images, scope).await
            {
                found(
                    "unreadable",
                    format!("the tenant's rows cannot be read: {e}"),
                );
            }
        }
        if drills && let Some(target) = &self.target {
            for scope in &scopes {
                let tenant = scope.id_str();
                if findings.iter().any(|f| f.tenant.as_deref() == Some(tenant)) {
                    continue;
                }
                // A drill that cannot run (the target behind) is no finding
                // about the live rows; only a difference is.
                if let Ok(drilled) =
                    drill::drill_tenant(&self.store, &self.vault, target, scope).await
                    && !drilled.passed
                {
                    findings.push(rows_finding(&drilled, slugs.get(tenant).cloned()));
                }
            }
        }
        if !database_ok && findings.is_empty() {
            findings.push(Finding::new(
                None,
                None,
                "database",
                format!("SQLite's quick_check: {database}"),
            ));
        }
        for finding in &mut findings {
            finding.outcome = self.answer(finding).await;
        }
        Ok(Report {
            at: crate::clock::now(),
            tenants_checked: scopes.len(),
            database,
            findings,
        })
    }
}

impl drill::Differs for Integrity {
    /// A drill's differences, as the scheduled drill job finds them.
    async fn differs(&self, drilled: &drill::Drill) {
        let _one_at_a_time = self.holds.checking().await;
        // A check that ran meanwhile may have restored the tenant already:
        // only a difference that is still there is answered.
        let (Some(target), Some(scope)) = (
            &self.target,
            crate::context::TenantId::parse(&drilled.tenant).map(TenantScope::trusted),
        ) else {
            return;
        };
        let drilled = match drill::drill_tenant(&self.store, &self.vault, target, &scope).await {
            Ok(again) if !again.passed => again,
            _ => return,
        };
        let drilled = &drilled;
        let slug = crate::tenancy::list(&self.store)
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|t| t.id == drilled.tenant))
            .map(|t| t.slug);
        let mut finding = rows_finding(drilled, slug);
        finding.outcome = self.answer(&finding).await;
    }
}

impl Integrity {
    /// Refuses the finding's tenant, raises the event, mails the
    /// operators, and restores it when configured and a restore mends it.
    async fn answer(&self, finding: &Finding) -> String {
        if !self.acting {
            return "reported (a server refuses the tenant when its own check finds this)"
                .to_owned();
        }
        let named = finding.named();
        let newly = match &finding.tenant {
            Some(tenant) => self.holds.refuse(tenant, &finding.detail),
            None => true,
        };
        let mut outcome = if finding.tenant.is_some() {
            "refused".to_owned()
        } else {
            "reported".to_owned()
        };
        if newly {
            tracing::error!(
                target: "security",
                event = "backup.integrity_failed",
                tenant = named,
                check = %finding.check,
                detail = %finding.detail,
                "an integrity check failed: {}",
                finding.remedy
            );
            self.mail(
                &format!(
                    "integrity check failed for {}",
                    match finding.tenant {
                        Some(_) => format!("tenant {named}"),
                        None => named.to_owned(),
                    }
                ),
                &format!(
                    "Check: {}\nWhat it found: {}\nWhat mends it: {}\n",
                    finding.check, finding.detail, finding.remedy
                ),
            )
            .await;
        }
        if let (true, true, Some(tenant), Some(target)) = (
            self.auto_restore,
            finding.mended_by_live_restore(),
            &finding.tenant,
            &self.target,
        ) {
            outcome = match self.restore(target, tenant).await {
                Ok(to_seq) => {
                    self.holds.lift(tenant);
                    tracing::warn!(
                        target: "security",
                        event = "backup.auto_restored",
                        tenant = named,
                        to_seq,
                        "a tenant that failed an integrity check was restored from its backup"
                    );
                    self.mail(
                        &format!("tenant {} restored from its backup", named),
                        &format!(
                            "The tenant failed an integrity check ({}: {}) and was restored \
                             from its backup to journal seq {to_seq}; it is served again. Its \
                             sessions ended.\n",
                            finding.check, finding.detail
                        ),
                    )
                    .await;
                    format!("restored to seq {to_seq}")
                }
                Err(why) => {
                    tracing::error!(
                        target: "security",
                        event = "backup.auto_restore_failed",
                        tenant = named,
                        error = %why,
                        "the automatic restore failed: the tenant stays refused"
                    );
                    format!("refused; the automatic restore failed: {why}")
                }
            };
        }
        outcome
    }

    async fn restore(&self, target: &BackupTarget, tenant: &str) -> Result<i64, String> {
        let _hold = self
            .holds
            .hold(tenant)
            .ok_or("a restore of this tenant runs already")?;
        let restored = restore::restore_tenant(
            &self.store,
            &self.vault,
            &self.objects,
            target,
            tenant,
            &Point::Latest,
            Mode::Live,
            &RequestMeta::default(),
            &|_, _| {},
        )
        .await?;
        if let Some(scope) = crate::context::TenantId::parse(tenant).map(TenantScope::trusted) {
            // The next restore of this tenant starts from here.
            if let Err(why) = snapshot::take(&self.store, &self.vault, target, &scope).await {
                tracing::warn!(error = %why, "no snapshot after the automatic restore");
            }
        }
        Ok(restored.to_seq)
    }

    /// Mails every operator, when there is a relay; never fails the check.
    async fn mail(&self, subject: &str, text: &str) {
        let Some(smtp) = self.mailer.smtp() else {
            return;
        };
        let message = Rendered {
            subject: format!("Strongroom: {subject}"),
            text: text.to_owned(),
            html: format!(
                "<pre>{}</pre>",
                text.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            ),
        };
        for to in &self.operators {
            if let Err(e) = smtp.send(to, &message).await {
                tracing::warn!(error = %e.reason, "an operator alert was not sent");
            }
        }
    }
}

fn rows_finding(drilled: &drill::Drill, slug: Option<String>) -> Finding {
    Finding::new(
        Some(&drilled.tenant),
        slug,
        "rows",
        format!(
            "the live rows differ from their backup at seq {}: {}",
            drilled.to_seq,
            drilled.mismatches.join("; ")
        ),
    )
}

fn remedy(finding: &Finding) -> String {
    if finding.tenant.is_none() {
        return "restore the whole instance from the backup target onto a new data dir \
                (`strongroom backup restore --all --into-new-instance DIR`) and move to it"
            .to_owned();
    }
    let name = finding.named();
    if finding.mended_by_live_restore() {
        format!(
            "restore the tenant from its backup (`POST /api/v1/ops/tenants/{name}/restore` \
             with {{\"to\": \"latest\"}}, or set backup_auto_restore = true)"
        )
    } else {
        format!(
            "the database lost what the backup holds: restore the instance from the backup \
             target onto a new data dir (`strongroom backup restore --all --into-new-instance \
             DIR`); the tenant {name} stays refused until then, or until an operator lifts the \
             refusal (`DELETE /api/v1/ops/tenants/{name}/refusal`)"
        )
    }
}

/// SQLite's `quick_check` (`ok`, or what it found); PostgreSQL checks its
/// own pages (data checksums, when the cluster has them).
async fn database_check(store: &Store) -> Result<String, String> {
    match store.backend() {
        Backend::Sqlite => {
            let mut tx = store.read_unscoped().await.map_err(|e| e.to_string())?;
            // A page too damaged to walk stops the check itself: that is
            // its answer too.
            Ok(
                match db::query_scalar::<String>("PRAGMA quick_check(20)")
                    .fetch_all(tx.conn())
                    .await
                {
                    Ok(lines) => lines.join("; "),
                    Err(e) => format!("quick_check could not finish: {e}"),
                },
            )
        }
        Backend::Postgres => {
            Ok("PostgreSQL (its own page checksums, when the cluster has them)".to_owned())
        }
    }
}

/// The tenant's counter, and what is wrong with its journal if anything:
/// it must hold every seq from its first to the counter. (A restore into a
/// new instance or a standby starts the journal past the restored seq.)
async fn journal_check(
    store: &Store,
    scope: &TenantScope,
) -> Result<(i64, Option<String>), String> {
    let mut tx = store
        .read_consistent(scope)
        .await
        .map_err(|e| e.to_string())?;
    let counter: i64 =
        db::query_scalar("SELECT journal_seq FROM tenant_sequences WHERE tenant_id = $1")
            .bind(scope.id_str())
            .fetch_optional(tx.conn())
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
    let row = db::query(
        "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM journal \
         WHERE tenant_id = $1",
    )
    .bind(scope.id_str())
    .fetch_one(tx.conn())
    .await
    .map_err(|e| e.to_string())?;
    let (count, first, last): (i64, i64, i64) = (
        row.try_get(0).map_err(|e| e.to_string())?,
        row.try_get(1).map_err(|e| e.to_string())?,
        row.try_get(2).map_err(|e| e.to_string())?,
    );
    // An empty journal under a counter is a standby's (or a promoted
    // one's before its first write): its history is the primary's, in the
    // target.
    let hole = if count == 0 {
        None
    } else if last != counter {
        Some(format!(
            "the journal ends at seq {last} but the tenant's counter is at {counter}"
        ))
    } else if count != last - first + 1 {
        Some(format!(
            "the journal misses {} of the seqs {first} to {last}",
            last - first + 1 - count
        ))
    } else {
        None
    };
    Ok((counter, hole))
}

/// Runs the checks as the `backup.integrity` job: at start, then every
/// `every` (none: at start only). The heartbeat fails while anything does.
pub fn start(
    store: Store,
    schedule: &crate::ops::Schedule,
    integrity: Arc<Integrity>,
    every: Option<Duration>,
) {
    // "At start only" is a run a century apart.
    let every = every.unwrap_or(Duration::from_secs(100 * 365 * 86_400));
    crate::ops::every(store, schedule, JOB, every, move || {
        let integrity = integrity.clone();
        async move { outcome(integrity.run(false).await) }
    });
}

/// Runs the restore drills as the `backup.drill` job, every `every`; a
/// drill that differs is answered here (the tenant refused, and restored
/// when configured).
pub fn start_drills(
    schedule: &crate::ops::Schedule,
    integrity: Arc<Integrity>,
    target: Arc<BackupTarget>,
    every: Duration,
) {
    let store = integrity.store.clone();
    crate::ops::every(store, schedule, drill::JOB, every, move || {
        let (integrity, target) = (integrity.clone(), target.clone());
        async move { drill::run(&integrity.store, &integrity.vault, &target, &*integrity).await }
    });
}

/// A report as a job's outcome: its findings fail it.
pub fn outcome(report: Result<Report, String>) -> Result<String, String> {
    let report = report?;
    let text = serde_json::to_string(&report).unwrap_or_default();
    if report.findings.is_empty() {
        Ok(text)
    } else {
        Err(text)
    }
}
