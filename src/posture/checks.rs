//! Live checks (POS-1, the first of them): each looks at the running
//! instance — the database, the trail, the heartbeats — not at its
//! configuration alone, and answers `pass`, `fail` or `warn` with evidence
//! a person can read. A control without a check yet says so.

use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::config::Config;
use crate::ops::JobRun;
use crate::store::{Backend, Store, StoreError, db};

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Warn,
}

/// What one check found.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub control: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
}

fn finding(control: &'static str, verdict: Verdict, evidence: String) -> Finding {
    Finding {
        control,
        verdict,
        evidence,
    }
}

/// Every check, now.
pub async fn run(
    store: &Store,
    checkpoint_key: &VerifyingKey,
    config: &Config,
) -> Result<Vec<Finding>, StoreError> {
    let scopes = crate::tenancy::all_scopes(store).await?;
    // Read once: the retention and heartbeat checks both look at them.
    let runs = crate::ops::last_runs(store).await?;
    Ok(vec![
        audit_fields(store, &scopes).await?,
        audit_chains(store, &scopes, checkpoint_key).await?,
        row_level_security(store).await?,
        retention(store, &scopes, &runs, config).await?,
        data_keys(store, &scopes).await?,
        heartbeats(&runs, config),
        install(store, config).await?,
        versions(store).await?,
        access_log(store, &scopes, config).await?,
        environment(config),
        transport(config),
        replica(config),
    ])
}

/// OPS-6: the version of the last start is this build's, and events carry it.
async fn versions(store: &Store) -> Result<Finding, StoreError> {
    let last = crate::ops::install::last_start(store).await?;
    Ok(match last {
        Some(last) if last.version == crate::VERSION => finding(
            "OPS-6",
            Verdict::Pass,
            format!(
                "running version {} (the last start's, {}), stamped on every audit event, \
                 access-log row and journal entry",
                crate::VERSION,
                last.started_at
            ),
        ),
        Some(last) => finding(
            "OPS-6",
            Verdict::Warn,
            format!(
                "the last start ran {}, this executable is {}",
                last.version,
                crate::VERSION
            ),
        ),
        None => finding(
            "OPS-6",
            Verdict::Warn,
            format!("version {}; no server start recorded yet", crate::VERSION),
        ),
    })
}

/// AUD-2: the access log is on, and what it holds for the last day.
async fn access_log(
    store: &Store,
    scopes: &[crate::context::TenantScope],
    config: &Config,
) -> Result<Finding, StoreError> {
    if !config.access_log {
        return Ok(finding(
            "AUD-2",
            Verdict::Fail,
            "access_log is off: requests are not recorded".to_owned(),
        ));
    }
    let since = crate::clock::in_seconds(-86_400);
    let mut rows = 0;
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let n: i64 = db::query_scalar(
            "SELECT COUNT(*) FROM access_log WHERE tenant_id = $1 AND occurred_at >= $2",
        )
        .bind(scope.id_str())
        .bind(&since)
        .fetch_one(tx.conn())
        .await?;
        rows += n;
    }
    Ok(finding(
        "AUD-2",
        Verdict::Pass,
        format!(
            "the access log is on; {rows} rows of {} tenants in the last 24 h",
            scopes.len()
        ),
    ))
}

/// TEN-3: which environment this is, and for production, that nothing
/// it refuses is configured.
fn environment(config: &Config) -> Finding {
    let name = config.environment.as_str();
    let problems = match config.environment {
        crate::config::Environment::Production => config.production_problems(),
        _ => Vec::new(),
    };
    if problems.is_empty() {
        finding(
            "TEN-3",
            Verdict::Pass,
            format!(
                "environment {name}, named in every response, /healthz and every audit event{}",
                if name == "production" {
                    "; none of production's refusals applies"
                } else {
                    ""
                }
            ),
        )
    } else {
        finding("TEN-3", Verdict::Fail, problems.join("; "))
    }
}

/// ENC-1: how the listener is reached: TLS with a certificate that loads,
/// behind a proxy that ends TLS, or plain HTTP on loopback only.
fn transport(config: &Config) -> Finding {
    use rustls_pki_types::pem::PemObject;
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let chain: Result<Vec<_>, _> =
                rustls_pki_types::CertificateDer::pem_file_iter(cert).and_then(|c| c.collect());
            let key_ok = rustls_pki_types::PrivateKeyDer::from_pem_file(key).is_ok();
            match chain {
                Ok(chain) if !chain.is_empty() && key_ok => finding(
                    "ENC-1",
                    Verdict::Pass,
                    format!(
                        "HTTPS only (TLS 1.3/1.2, AEAD suites), a chain of {} certificates from {}",
                        chain.len(),
                        cert.display()
                    ),
                ),
                _ => finding(
                    "ENC-1",
                    Verdict::Fail,
                    format!(
                        "tls_cert {} or tls_key {} does not load",
                        cert.display(),
                        key.display()
                    ),
                ),
            }
        }
        _ if !config.trusted_proxies.is_empty() => finding(
            "ENC-1",
            Verdict::Warn,
            "plain HTTP behind trusted proxies, which must end TLS".to_owned(),
        ),
        _ if config.listen.ip().is_loopback() => finding(
            "ENC-1",
            Verdict::Warn,
            format!("plain HTTP on {} (loopback only)", config.listen),
        ),
        _ => finding(
            "ENC-1",
            Verdict::Fail,
            format!("plain HTTP on the public address {}", config.listen),
        ),
    }
}

/// FIL-5: a second object store receives every object.
fn replica(config: &Config) -> Finding {
    match &config.object_store_replica_url {
        Some(url) => finding(
            "FIL-5",
            Verdict::Pass,
            format!(
                "every object is written to a replica too ({}); `strongroom files verify` \
                 scrubs both against their checksums",
                url.split('?').next().unwrap_or(url)
            ),
        ),
        None => finding(
            "FIL-5",
            Verdict::Warn,
            "no object_store_replica_url: objects are kept once (checksummed)".to_owned(),
        ),
    }
}

/// AUD-1: every tenant's newest event carries who, from where, which
/// request and which version.
async fn audit_fields(
    store: &Store,
    scopes: &[crate::context::TenantScope],
) -> Result<Finding, StoreError> {
    let mut lacking = Vec::new();
    let mut seen = 0;
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let row = db::query(
            "SELECT seq, actor_type, request_id, app_version, occurred_at FROM audit_events \
             WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(scope.id_str())
        .fetch_optional(tx.conn())
        .await?;
        let Some(row) = row else { continue };
        seen += 1;
        let fields: [(&str, Option<String>); 4] = [
            ("actor", row.try_get(1)?),
            ("request id", row.try_get(2)?),
            ("version", row.try_get(3)?),
            ("time", row.try_get(4)?),
        ];
        for (name, value) in fields {
            if value.as_deref().is_none_or(str::is_empty) {
                let seq: i64 = row.try_get(0)?;
                lacking.push(format!(
                    "tenant {} event {seq} has no {name}",
                    scope.id_str()
                ));
            }
        }
    }
    Ok(if lacking.is_empty() {
        finding(
            "AUD-1",
            Verdict::Pass,
            format!(
                "the newest event of each of {seen} tenants names actor, request, version and time"
            ),
        )
    } else {
        finding("AUD-1", Verdict::Fail, lacking.join("; "))
    })
}

/// ENC-3: every tenant that holds sealed data has an active wrapped key,
/// unless its keys were destroyed on purpose.
async fn data_keys(
    store: &Store,
    scopes: &[crate::context::TenantScope],
) -> Result<Finding, StoreError> {
    let (mut keyed, mut shredded, mut missing) = (0, 0, Vec::new());
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let row = db::query(
            "SELECT (SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = $1 AND state = 'active'), \
             (SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = $1 AND state = 'destroyed'), \
             (SELECT COUNT(*) FROM records WHERE tenant_id = $1 AND key_version IS NOT NULL) + \
             (SELECT COUNT(*) FROM files WHERE tenant_id = $1)",
        )
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
        let (active, destroyed, sealed): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if active > 0 {
            keyed += 1;
        } else if destroyed > 0 {
            shredded += 1;
        } else if sealed > 0 {
            missing.push(format!(
                "tenant {} holds {sealed} sealed records and files but no active key",
                scope.id_str()
            ));
        }
    }
    Ok(if missing.is_empty() {
        finding(
            "ENC-3",
            Verdict::Pass,
            format!(
                "{keyed} of {} tenants have an active wrapped data key, {shredded} had theirs \
                 destroyed (crypto-shredded); the others hold no sealed data yet (a key is made \
                 at the first sealed write)",
                scopes.len()
            ),
        )
    } else {
        finding("ENC-3", Verdict::Fail, missing.join("; "))
    })
}

/// OPS-3: this executable and configuration against the last start.
async fn install(store: &Store, config: &Config) -> Result<Finding, StoreError> {
    let now = match crate::ops::install::fingerprint(config) {
        Ok(now) => now,
        Err(e) => {
            return Ok(finding(
                "OPS-3",
                Verdict::Fail,
                format!("cannot read this executable to take its digest: {e}"),
            ));
        }
    };
    let last = crate::ops::install::last_start(store).await?;
    Ok(match last {
        None => finding(
            "OPS-3",
            Verdict::Warn,
            format!(
                "no server start recorded yet; this binary {}",
                &now.binary_sha256[..16]
            ),
        ),
        Some(last) if last.fingerprint == now => finding(
            "OPS-3",
            Verdict::Pass,
            format!(
                "binary {} and configuration {} are those of the last start ({} on {})",
                &now.binary_sha256[..16],
                &now.config_sha256[..16],
                last.started_at,
                last.node
            ),
        ),
        Some(last) => finding(
            "OPS-3",
            Verdict::Warn,
            format!(
                "differs from the last start ({} on {}, version {}): binary {} then {} now, \
                 configuration {} then {} now (the server records a security event at start)",
                last.started_at,
                last.node,
                last.version,
                &last.fingerprint.binary_sha256[..16],
                &now.binary_sha256[..16],
                &last.fingerprint.config_sha256[..16],
                &now.config_sha256[..16]
            ),
        ),
    })
}

/// AUD-7: every tenant's chain verified now, against its signed checkpoints.
async fn audit_chains(
    store: &Store,
    scopes: &[crate::context::TenantScope],
    key: &VerifyingKey,
) -> Result<Finding, StoreError> {
    let started = Instant::now();
    let (mut events, mut checkpoints, mut broken) = (0, 0, Vec::new());
    for scope in scopes {
        let report = crate::audit::verify(store, scope, key).await?;
        events += report.events_checked;
        checkpoints += report.checkpoints_checked;
        if !report.ok {
            broken.push(format!(
                "tenant {} fails at seq {}: {}",
                report.tenant_id,
                report.first_bad_seq.unwrap_or_default(),
                report.problem.unwrap_or_default()
            ));
        }
    }
    let took = started.elapsed().as_secs_f64();
    Ok(if broken.is_empty() {
        finding(
            "AUD-7",
            Verdict::Pass,
            format!(
                "{} tenants' chains verified now: {events} events, {checkpoints} signed \
                 checkpoints, in {took:.3} s",
                scopes.len()
            ),
        )
    } else {
        finding("AUD-7", Verdict::Fail, broken.join("; "))
    })
}

/// TEN-2: on PostgreSQL, row-level security enabled and forced on every
/// table with a `tenant_id`, and the application role cannot bypass it.
async fn row_level_security(store: &Store) -> Result<Finding, StoreError> {
    if store.backend() == Backend::Sqlite {
        return Ok(finding(
            "TEN-2",
            Verdict::Warn,
            "SQLite has no row-level security: the tenant scope is held by the code's types \
             alone (use PostgreSQL for isolation in depth)"
                .to_owned(),
        ));
    }
    let mut tx = store.read_unscoped().await?;
    let rows = db::query(
        "SELECT c.relname, CAST(c.relrowsecurity AS int), CAST(c.relforcerowsecurity AS int) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND EXISTS \
         (SELECT 1 FROM information_schema.columns i WHERE i.table_schema = n.nspname \
          AND i.table_name = c.relname AND i.column_name = 'tenant_id') ORDER BY c.relname",
    )
    .fetch_all(tx.conn())
    .await?;
    let bypass: Option<i64> = db::query_scalar(
        "SELECT CAST(rolbypassrls AS int) FROM pg_roles WHERE rolname = 'strongroom_app'",
    )
    .fetch_optional(tx.conn())
    .await?;
    let mut open = Vec::new();
    for row in &rows {
        let (table, enabled, forced): (String, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if enabled == 0 || forced == 0 {
            open.push(format!(
                "{table} ({})",
                if enabled == 0 {
                    "RLS off"
                } else {
                    "RLS not forced"
                }
            ));
        }
    }
    Ok(match (open.is_empty(), bypass) {
        (true, Some(0)) => finding(
            "TEN-2",
            Verdict::Pass,
            format!(
                "row-level security enabled and forced on all {} tenant tables; \
                 strongroom_app cannot bypass it",
                rows.len()
            ),
        ),
        (_, bypass) => {
            if bypass != Some(0) {
                open.push("strongroom_app may bypass row-level security, or is missing".into());
            }
            finding("TEN-2", Verdict::Fail, open.join("; "))
        }
    })
}

/// AUD-3: every tenant keeps its trail at least 90 days, and the
/// retention job has run within twice its interval.
async fn retention(
    store: &Store,
    scopes: &[crate::context::TenantScope],
    runs: &[JobRun],
    config: &Config,
) -> Result<Finding, StoreError> {
    let mut short = Vec::new();
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let days: i64 = db::query_scalar(
            "SELECT audit_retention_days FROM tenant_settings WHERE tenant_id = $1",
        )
        .bind(scope.id_str())
        .fetch_one(tx.conn())
        .await?;
        if days < 90 {
            short.push(format!("tenant {} keeps {days} days", scope.id_str()));
        }
    }
    if !short.is_empty() {
        return Ok(finding("AUD-3", Verdict::Fail, short.join("; ")));
    }
    let every = Duration::from_secs(config.retention_interval_seconds);
    let (verdict, job) = job_freshness(runs, crate::audit::RETENTION_JOB, every);
    Ok(finding(
        "AUD-3",
        verdict,
        format!(
            "all {} tenants keep their trail ≥ 90 days; {job}",
            scopes.len()
        ),
    ))
}

/// OPS-1: every scheduled job has run within twice its interval.
fn heartbeats(runs: &[JobRun], config: &Config) -> Finding {
    let jobs = [
        (
            "audit.checkpoint",
            Duration::from_secs(config.audit_checkpoint_seconds),
        ),
        (
            crate::audit::RETENTION_JOB,
            Duration::from_secs(config.retention_interval_seconds),
        ),
        (
            "files.sweep",
            Duration::from_secs(config.file_sweep_seconds),
        ),
    ];
    let mut worst = Verdict::Pass;
    let mut evidence = Vec::new();
    for (job, every) in jobs {
        let (verdict, said) = job_freshness(runs, job, every);
        worst = match (worst, verdict) {
            (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
            (Verdict::Warn, _) | (_, Verdict::Warn) => Verdict::Warn,
            _ => Verdict::Pass,
        };
        evidence.push(said);
    }
    finding("OPS-1", worst, evidence.join("; "))
}

/// Whether `job` last ran, successfully, within twice `every`.
fn job_freshness(runs: &[JobRun], job: &str, every: Duration) -> (Verdict, String) {
    let Some(run) = runs.iter().find(|r| r.job == job) else {
        return (
            Verdict::Warn,
            format!("{job} has not run yet (every {} s)", every.as_secs()),
        );
    };
    let age = crate::clock::parse_rfc3339(&run.last_run_at).map(|at| {
        (time::OffsetDateTime::now_utc() - at)
            .whole_seconds()
            .max(0) as u64
    });
    match age {
        Some(age) if run.ok && age <= 2 * every.as_secs() => (
            Verdict::Pass,
            format!(
                "{job} ran {age} s ago on {} (every {} s, {} runs)",
                run.node.as_deref().unwrap_or("?"),
                every.as_secs(),
                run.runs
            ),
        ),
        Some(age) if run.ok => (
            Verdict::Fail,
            format!(
                "{job} last ran {age} s ago, more than twice its interval of {} s",
                every.as_secs()
            ),
        ),
        _ => (
            Verdict::Fail,
            format!(
                "{job} failed at its last run ({}): {}",
                run.last_run_at,
                run.detail.as_deref().unwrap_or("")
            ),
        ),
    }
}
