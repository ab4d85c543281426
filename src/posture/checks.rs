//! Live checks (POS-1, the first of them): each looks at the running
//! instance — the database, the trail, the heartbeats — not at its
//! configuration alone, and answers `pass`, `fail` or `warn` with evidence
//! a person can read. A control without a check yet says so.

use std::time::{Duration, Instant};

use super::finding::{Finding, Probe, Reach, Verdict, finding};
use crate::config::Config;
use crate::context::TenantScope;
use crate::ops::JobRun;
use crate::store::{Backend, Store, StoreError, db};

/// Every check, now, over `scopes` (every tenant for the instance view,
/// one for a tenant's).
pub async fn run(
    probe: &Probe<'_>,
    scopes: &[TenantScope],
    reach: Reach,
) -> Result<Vec<Finding>, StoreError> {
    let (store, config) = (probe.store, probe.config);
    let checkpoint_key = probe.keyring.checkpoint_signing_key().verifying_key();
    // Read once: the retention and heartbeat checks both look at them.
    let runs = crate::ops::last_runs(store).await?;
    let files = super::sampled::sample_files(probe, scopes).await?;
    let [fil3, fil4] = super::sampled::file_records(&files, reach);
    let [journaled, bak7] = super::sampled::journal(probe, scopes, reach).await?;
    let [fil1, stores] = super::sampled::object_stores(probe, reach).await;
    let [bak1, enc4, bak2, bak4] =
        super::backups::check(probe, scopes, reach, journaled, stores).await;
    let mut findings = vec![
        super::sampled::tenant_keys(probe, scopes, reach).await?,
        row_level_security(store).await?,
        environment(config),
        super::sampled::password_hashes(probe, scopes, reach).await?,
        own_passwords(store, scopes, reach, &runs, config, probe.by_job).await?,
        second_factors(store, scopes, reach, config).await?,
        guessing(store, reach, config).await?,
        devices(store, scopes, reach, config).await?,
        sessions(store, scopes, reach, config).await?,
        roles(store, scopes, reach, config).await?,
        operators(store).await?,
        support(store, scopes, reach, "ACC-2").await?,
        support(store, scopes, reach, "AUD-5").await?,
        audit_fields(store, scopes, reach).await?,
        access_log(store, scopes, reach, config).await?,
        retention(store, scopes, reach, &runs, config).await?,
        super::sampled::exports(probe, scopes, reach).await?,
        log_shipping(config),
        audit_chains(store, scopes, reach, &checkpoint_key, config).await?,
        transport(config),
        super::sampled::sealed_at_rest(probe, scopes, reach, &files).await,
        data_keys(store, scopes, reach).await?,
        enc4,
        fil1,
        super::sampled::signed_links(probe),
        fil3,
        fil4,
        replica(config, &runs),
        bak1,
        bak2,
        super::backups::instance(probe, reach).await,
        super::backups::integrity(probe, scopes, reach, &runs, bak4),
        super::backups::standby(probe, reach).await,
        super::backups::drills(probe, scopes, reach, &runs),
        bak7,
        https_only(config),
        allow_lists(store, scopes, reach).await?,
        abuse(store, reach, config).await?,
        heartbeats(&runs, config, probe.by_job),
        install(store, config).await?,
        versions(store).await?,
        posture_job(&runs, config, probe.by_job),
    ];
    findings.push(advisories(config));
    Ok(findings)
}

/// IAM-2: users choose their own passwords. Invitations, reset links and
/// temporary passwords reach only the user, by mail: a relay is set, the
/// outbox delivers (nothing waits long, nothing was given up lately), and
/// no temporary password from an admin's reset stays unchanged for long.
async fn own_passwords(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
    runs: &[JobRun],
    config: &Config,
    by_job: bool,
) -> Result<Finding, StoreError> {
    let Some(url) = &config.smtp_url else {
        return Ok(finding(
            "IAM-2",
            Verdict::Warn,
            "no smtp_url: invitation tokens are handed to the inviter instead of mailed to the \
             invitee, and password resets are off"
                .to_owned(),
        ));
    };
    let relay = crate::mail::smtp::Relay::parse(url)
        .map(|r| format!("{:?} to {}:{}", r.security, r.host, r.port))
        .unwrap_or_else(|e| e);
    let queue = crate::mail::status(true, store, scopes).await?;
    let (job_verdict, job) = job_freshness(runs, "mail.deliver", crate::mail::SWEEP, false);
    let mut temporary = 0i64;
    let mut stale_temporary = 0i64;
    if store.schema_has(crate::mail::SCHEMA) {
        let week_ago =
            crate::clock::format(time::OffsetDateTime::now_utc() - time::Duration::days(7));
        for scope in scopes {
            let mut tx = store.read(scope).await?;
            let row = db::query(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN updated_at < $2 THEN 1 ELSE 0 END), 0) \
                 FROM users WHERE tenant_id = $1 AND password_change_required <> 0",
            )
            .bind(scope.id_str())
            .bind(&week_ago)
            .fetch_one(tx.conn())
            .await?;
            temporary += row.try_get::<i64, _>(0)?;
            stale_temporary += row.try_get::<i64, _>(1)?;
        }
    }
    let waited = queue.oldest_pending_seconds.unwrap_or(0);
    let given_up = queue
        .recent_problems
        .iter()
        .filter(|p| p.state == "failed")
        .count();
    let verdict = if waited > 3600 || (job_verdict == Verdict::Fail && !by_job) {
        Verdict::Fail
    } else if given_up > 0 || stale_temporary > 0 || queue.pending > 0 && waited > 300 {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    Ok(finding(
        "IAM-2",
        verdict,
        format!(
            "mail by {relay}; outbox of {}: {} sent, {} waiting (oldest {waited} s), {} given up \
             ({given_up} among the latest problems); {temporary} temporary passwords from admin \
             resets not yet changed ({stale_temporary} older than 7 days); {job}",
            reach.tenants(scopes.len()),
            queue.sent,
            queue.pending + queue.sending,
            queue.failed,
        ),
    ))
}

/// IAM-3: who the tenants' policies cover and how many of them have a
/// second factor, of which kinds; TOTP secrets are sealed (nonce, secret,
/// tag: 48 bytes, never 20 clear ones), SMS numbers and passkey keys sealed
/// (never clear JSON), every passkey has its credential id, recovery codes
/// are stored as hashes; which tenants let devices skip the second factor
/// and how many devices do.
async fn second_factors(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
    config: &Config,
) -> Result<Finding, StoreError> {
    use crate::identity::mfa::{Policy, SCHEMA};
    if !store.schema_has(SCHEMA) {
        return Ok(finding(
            "IAM-3",
            Verdict::Warn,
            "the schema is held back before second factors (migrate_until)".to_owned(),
        ));
    }
    let (mut covered, mut lacking, mut enrolled, mut totp, mut mailed) = (0, 0, 0, 0, 0);
    let (mut badly_sealed, mut clear_codes, mut policies) = (0usize, 0usize, 0);
    let (mut texted, mut passkeys, mut trusting, mut trusted) = (0, 0, 0, 0i64);
    let later = store.schema_has(crate::identity::mfa::passkeys::SCHEMA);
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let policy: Option<String> =
            db::query_scalar("SELECT mfa_policy FROM tenant_settings WHERE tenant_id = $1")
                .bind(scope.id_str())
                .fetch_optional(tx.conn())
                .await?;
        let policy = Policy::from_stored(policy.as_deref().unwrap_or("off"));
        if policy != Policy::Off {
            policies += 1;
        }
        let users = db::query(
            "SELECT role, mfa_enrolled FROM users WHERE tenant_id = $1 AND status = 'active'",
        )
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?;
        for row in users {
            let role: String = row.try_get(0)?;
            let has = row.try_get::<i64, _>(1)? != 0;
            enrolled += i64::from(has);
            if crate::access::held_roles(&role)
                .iter()
                .any(|r| policy.requires(r))
            {
                covered += 1;
                lacking += i64::from(!has);
            }
        }
        let factors = db::query(format!(
            "SELECT kind, sealed, {} FROM mfa_factors WHERE tenant_id = $1 \
             AND confirmed_at IS NOT NULL",
            if later { "credential_id" } else { "NULL" }
        ))
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?;
        for row in factors {
            let kind: String = row.try_get(0)?;
            let sealed: Vec<u8> = row.try_get(1)?;
            let credential: Option<String> = row.try_get(2)?;
            // A sealed payload is a nonce, the ciphertext and a tag; a clear
            // one would show its JSON keys.
            let shows = |key: &[u8]| sealed.windows(key.len()).any(|w| w == key);
            let clear = sealed.len() < 12 + 16 + 1 || shows(b"\"phone\"") || shows(b"\"alg\"");
            match kind.as_str() {
                "totp" => {
                    totp += 1;
                    badly_sealed += usize::from(sealed.len() != 12 + 20 + 16);
                }
                "sms" => {
                    texted += 1;
                    badly_sealed += usize::from(clear);
                }
                "passkey" => {
                    passkeys += 1;
                    badly_sealed += usize::from(clear || credential.is_none());
                }
                _ => mailed += 1,
            }
        }
        if later {
            let days: Option<i64> =
                db::query_scalar("SELECT mfa_trust_days FROM tenant_settings WHERE tenant_id = $1")
                    .bind(scope.id_str())
                    .fetch_optional(tx.conn())
                    .await?;
            if days.unwrap_or(0) > 0 {
                trusting += 1;
                trusted += db::query_scalar::<i64>(
                    "SELECT COUNT(*) FROM devices WHERE tenant_id = $1 AND mfa_trusted_until > $2",
                )
                .bind(scope.id_str())
                .bind(crate::clock::now())
                .fetch_one(tx.conn())
                .await?;
            }
        }
        let hashes: Vec<String> =
            db::query_scalar("SELECT code_hash FROM recovery_codes WHERE tenant_id = $1")
                .bind(scope.id_str())
                .fetch_all(tx.conn())
                .await?;
        clear_codes += hashes.iter().filter(|h| h.len() != 43).count();
    }
    let evidence = format!(
        "{policies} of {} require a second factor; {covered} active users are covered, \
         {lacking} of them without a factor yet (they can only enrol); {enrolled} users have one \
         ({totp} TOTP, {mailed} mail, {texted} SMS, {passkeys} passkey factors); secrets, numbers \
         and keys sealed, recovery codes hashed; SMS {}; {trusting} tenants let devices skip the \
         second factor, {trusted} devices do now",
        reach.tenants(scopes.len()),
        match &config.sms_webhook_url {
            Some(url) if url.starts_with("https://") => "by a signed HTTPS webhook",
            Some(_) => "by a signed plain-HTTP webhook (local use only)",
            None => "off (no sms_webhook_url)",
        }
    );
    Ok(if badly_sealed > 0 || clear_codes > 0 {
        finding(
            "IAM-3",
            Verdict::Fail,
            format!(
                "{badly_sealed} factors not sealed as expected, {clear_codes} recovery codes not \
                 stored as hashes; {evidence}"
            ),
        )
    } else if lacking > 0 {
        finding("IAM-3", Verdict::Warn, evidence)
    } else {
        finding("IAM-3", Verdict::Pass, evidence)
    })
}

/// IAM-6: failed logins slow and lock, on by default; the counters hold
/// hashes, never an address (every key read is a SHA-256 in hex).
async fn guessing(store: &Store, reach: Reach, config: &Config) -> Result<Finding, StoreError> {
    if !config.login_lockout {
        return Ok(finding(
            "IAM-6",
            if config.environment == crate::config::Environment::Production {
                Verdict::Fail
            } else {
                Verdict::Warn
            },
            "login_lockout is off: failed logins neither slow the next attempt nor lock".to_owned(),
        ));
    }
    if !store.schema_has(crate::identity::lockout::SCHEMA) {
        return Ok(finding(
            "IAM-6",
            Verdict::Warn,
            "the schema is held back before the login counters (migrate_until)".to_owned(),
        ));
    }
    let mut tx = store.read_unscoped().await?;
    let keys: Vec<String> = db::query_scalar("SELECT key FROM login_failures")
        .fetch_all(tx.conn())
        .await?;
    let now = crate::clock::now();
    let locked: i64 =
        db::query_scalar("SELECT COUNT(*) FROM login_failures WHERE locked_until > $1")
            .bind(&now)
            .fetch_one(tx.conn())
            .await?;
    let clear = keys
        .iter()
        .filter(|k| k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        .count();
    let limits = format!(
        "{} attempts a minute per account and {} per address",
        config.login_attempts_per_minute_per_account, config.login_attempts_per_minute_per_ip
    );
    let scope = match reach {
        Reach::Instance => String::new(),
        // Counters belong to no tenant (an account that does not exist is
        // counted too): a tenant's view shows the policy, not the counts.
        Reach::Tenant => " (instance-wide)".to_owned(),
    };
    Ok(if clear > 0 {
        finding(
            "IAM-6",
            Verdict::Fail,
            format!("{clear} login counters are keyed by something other than a hash"),
        )
    } else {
        finding(
            "IAM-6",
            Verdict::Pass,
            format!(
                "failed logins wait 1, 3, 5, then 10 s before the next attempt and {} within {} \
                 minutes lock for {} minutes, counted alike for accounts that do not exist; {limits}; \
                 {} accounts or devices with recent failures, {locked} locked now{scope}, every \
                 counter keyed by a SHA-256",
                crate::identity::lockout::LOCK_AFTER,
                crate::identity::lockout::WINDOW.whole_minutes(),
                crate::identity::lockout::LOCK_FOR.whole_minutes(),
                keys.len()
            ),
        )
    })
}

/// IAM-7: the devices users log in from are remembered by the hash of
/// their token alone, and a new one is announced by mail.
async fn devices(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
    config: &Config,
) -> Result<Finding, StoreError> {
    if !store.schema_has(crate::identity::lockout::SCHEMA) {
        return Ok(finding(
            "IAM-7",
            Verdict::Warn,
            "the schema is held back before devices (migrate_until)".to_owned(),
        ));
    }
    let month_ago =
        crate::clock::format(time::OffsetDateTime::now_utc() - time::Duration::days(30));
    let (mut devices, mut users, mut announced, mut bad) = (0i64, 0i64, 0i64, 0usize);
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let row = db::query(
            "SELECT COUNT(*), COUNT(DISTINCT user_id), \
             COALESCE(SUM(CASE WHEN not_me_hash IS NOT NULL AND first_seen_at >= $2 THEN 1 ELSE 0 END), 0) \
             FROM devices WHERE tenant_id = $1",
        )
        .bind(scope.id_str())
        .bind(&month_ago)
        .fetch_one(tx.conn())
        .await?;
        devices += row.try_get::<i64, _>(0)?;
        users += row.try_get::<i64, _>(1)?;
        announced += row.try_get::<i64, _>(2)?;
        let hashes: Vec<String> =
            db::query_scalar("SELECT token_hash FROM devices WHERE tenant_id = $1")
                .bind(scope.id_str())
                .fetch_all(tx.conn())
                .await?;
        // A SHA-256 in base64url: 43 characters, never a token (`sr_dev_…`).
        bad += hashes
            .iter()
            .filter(|h| h.len() != 43 || h.starts_with("sr_"))
            .count();
    }
    let evidence = format!(
        "{devices} devices of {users} users in {}, each by the hash of its token; {announced} new \
         devices announced by mail in the last 30 days; impossible travel is not judged (no GeoIP)",
        reach.tenants(scopes.len())
    );
    Ok(if bad > 0 {
        finding(
            "IAM-7",
            Verdict::Fail,
            format!("{bad} device tokens are stored other than hashed; {evidence}"),
        )
    } else if config.smtp_url.is_none() {
        finding(
            "IAM-7",
            Verdict::Warn,
            format!(
                "no smtp_url: new devices are audited but not mailed to their users; {evidence}"
            ),
        )
    } else {
        finding("IAM-7", Verdict::Pass, evidence)
    })
}

/// POS-1: the catalog is whole and the posture job keeps the signed report.
fn posture_job(runs: &[JobRun], config: &Config, by_job: bool) -> Finding {
    let every = Duration::from_secs(config.posture_interval_seconds);
    let (verdict, job) = job_freshness(runs, super::JOB, every, by_job);
    finding(
        "POS-1",
        verdict,
        format!(
            "{} controls in the catalog, each with its status; {job}",
            super::catalog().len()
        ),
    )
}

/// AUD-6: where committed audit and security events go.
fn log_shipping(config: &Config) -> Finding {
    let to = match &config.syslog_url {
        Some(url) => format!(" and to syslog at {url} (RFC 5424)"),
        None => String::new(),
    };
    finding(
        "AUD-6",
        Verdict::Pass,
        format!(
            "every committed audit event (log target audit) and security event (target \
             security) goes to the {:?} log on stdout{to}",
            config.log_format
        ),
    )
}

/// IAM-5: access tokens live 60 s, and refresh tokens are stored only as
/// hashes.
async fn sessions(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
    config: &Config,
) -> Result<Finding, StoreError> {
    let (mut live, mut raw) = (0i64, 0i64);
    let (mut idle_bounded, mut life_bounded, mut bounds) = (0, 0, String::new());
    let now = crate::clock::now();
    for scope in scopes {
        if store.schema_has(crate::tenancy::SESSION_SETTINGS_SCHEMA) {
            let mut tx = store.read(scope).await?;
            let row = db::query(
                "SELECT session_idle_minutes, session_max_hours FROM tenant_settings \
                 WHERE tenant_id = $1",
            )
            .bind(scope.id_str())
            .fetch_optional(tx.conn())
            .await?;
            if let Some(row) = row {
                let (idle, max): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                idle_bounded += i64::from(idle > 0);
                life_bounded += i64::from(max > 0);
                bounds = format!(
                    "; sessions end after {} idle and {} in all",
                    if idle > 0 {
                        format!("{idle} min")
                    } else {
                        "no time".into()
                    },
                    if max > 0 {
                        format!("{max} h")
                    } else {
                        format!("{} h", config.session_ttl_hours)
                    }
                );
            }
        }
        let mut tx = store.read(scope).await?;
        let row = db::query(
            "SELECT (SELECT COUNT(*) FROM sessions WHERE tenant_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2), \
             (SELECT COUNT(*) FROM refresh_tokens WHERE tenant_id = $1 AND \
              LENGTH(token_hash) <> 43)",
        )
        .bind(scope.id_str())
        .bind(&now)
        .fetch_one(tx.conn())
        .await?;
        live += row.try_get::<i64, _>(0)?;
        raw += row.try_get::<i64, _>(1)?;
    }
    Ok(if raw == 0 {
        let bounded = match reach {
            Reach::Tenant => bounds,
            Reach::Instance => format!(
                "; {idle_bounded} tenants bound idle time, {life_bounded} the lifetime \
                 (checked on every session check and refresh)"
            ),
        };
        finding(
            "IAM-5",
            Verdict::Pass,
            format!(
                "access tokens live {} s; {live} open sessions of {} (at most {} h){bounded}; \
                 every stored refresh token is a SHA-256 digest, never the token",
                crate::identity::ACCESS_TOKEN_TTL_SECONDS,
                reach.tenants(scopes.len()),
                config.session_ttl_hours
            ),
        )
    } else {
        finding(
            "IAM-5",
            Verdict::Fail,
            format!("{raw} refresh tokens are not stored as SHA-256 digests"),
        )
    })
}

/// ACC-1: every user and API key holds roles that exist (built-in or the
/// tenant's own), every custom role's permissions are ones the code knows,
/// and no API key that never expires is older than `api_key_max_age_days`.
async fn roles(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
    config: &Config,
) -> Result<Finding, StoreError> {
    use crate::access::{Grant, held_roles};
    let (mut users, mut custom, mut keys, mut problems) = (0i64, 0i64, 0i64, Vec::new());
    let since = crate::clock::format(
        time::OffsetDateTime::now_utc()
            - time::Duration::days(i64::from(config.api_key_max_age_days)),
    );
    let has_roles = store.schema_has(crate::access::roles::SCHEMA);
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let mut known: Vec<String> = crate::access::Role::ALL
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect();
        if has_roles {
            let rows = db::query("SELECT name, permissions FROM roles WHERE tenant_id = $1")
                .bind(scope.id_str())
                .fetch_all(tx.conn())
                .await?;
            for row in rows {
                let (name, permissions): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                custom += 1;
                let listed: Vec<String> = serde_json::from_str(&permissions).unwrap_or_default();
                if let Some(bad) = listed.iter().find(|p| Grant::parse(p).is_err()) {
                    problems.push(format!("role {name:?} lists unknown permission {bad:?}"));
                }
                known.push(name);
            }
        }
        let mut holders = vec![(
            "users",
            db::query("SELECT role, COUNT(*) FROM users WHERE tenant_id = $1 GROUP BY role")
                .bind(scope.id_str())
                .fetch_all(tx.conn())
                .await?,
        )];
        if has_roles {
            holders.push((
                "API keys",
                db::query(
                    "SELECT roles, COUNT(*) FROM api_keys WHERE tenant_id = $1 \
                     AND revoked_at IS NULL GROUP BY roles",
                )
                .bind(scope.id_str())
                .fetch_all(tx.conn())
                .await?,
            ));
            let old: i64 = db::query_scalar(
                "SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL \
                 AND expires_at IS NULL AND created_at < $2",
            )
            .bind(scope.id_str())
            .bind(&since)
            .fetch_one(tx.conn())
            .await?;
            if old > 0 {
                problems.push(format!(
                    "{old} API keys without an expiry are older than {} days \
                     (api_key_max_age_days): give them an expiry or revoke them",
                    config.api_key_max_age_days
                ));
            }
        }
        for (what, rows) in holders {
            for row in rows {
                let (stored, n): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                if what == "users" {
                    users += n;
                } else {
                    keys += n;
                }
                let held = held_roles(&stored);
                if held.is_empty() || held.iter().any(|r| !known.contains(r)) {
                    problems.push(format!(
                        "{n} {what} with roles {stored:?}, not all of which exist"
                    ));
                }
            }
        }
    }
    Ok(if problems.is_empty() {
        finding(
            "ACC-1",
            Verdict::Pass,
            format!(
                "the {users} users and {keys} active API keys of {} hold existing roles \
                 (built-in, or {custom} of the tenants' own), each a set of named \
                 permissions checked on every operation; no API key without an expiry \
                 is older than {} days",
                reach.tenants(scopes.len()),
                config.api_key_max_age_days
            ),
        )
    } else {
        finding("ACC-1", Verdict::Fail, problems.join("; "))
    })
}

/// ACC-3: the operators are accounts of their own, each in one role, and
/// every active one has a confirmed second factor.
async fn operators(store: &Store) -> Result<Finding, StoreError> {
    let (active, without, roles) = crate::operators::census(store).await?;
    let by_role: Vec<String> = roles.iter().map(|(r, n)| format!("{n} {r}")).collect();
    Ok(if without > 0 {
        finding(
            "ACC-3",
            Verdict::Fail,
            format!("{without} of {active} active operators have no confirmed second factor"),
        )
    } else {
        finding(
            "ACC-3",
            Verdict::Pass,
            format!(
                "{active} active operator accounts ({}), each with a confirmed TOTP factor and \
                 one role; the shared operator token is gone, and no operator route reads \
                 tenant records, files, users or audit diffs",
                if by_role.is_empty() {
                    "none yet".to_owned()
                } else {
                    by_role.join(", ")
                }
            ),
        )
    })
}

/// ACC-2 and AUD-5: support access only under grants, each ended by its
/// expiry or revocation: no access is recorded under a grant after it
/// ended, and the active and sealed ones are counted.
async fn support(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
    control: &'static str,
) -> Result<Finding, StoreError> {
    let (active, sealed, late) = crate::operators::support::census(store, scopes).await?;
    Ok(if late > 0 {
        finding(
            control,
            Verdict::Fail,
            format!("{late} accesses were recorded under support grants after they had ended"),
        )
    } else {
        finding(
            control,
            Verdict::Pass,
            format!(
                "operators reach {} only under support grants (consent or a legal order), \
                 scoped, at most 72 h, every request in the tenant's trail with the grant and \
                 its reason; {active} active now, {sealed} legal orders the tenant may not be \
                 told of yet; no access after a grant ended",
                reach.tenants(scopes.len())
            ),
        )
    })
}

/// NET-1: HTTPS only, with HSTS, when this server ends TLS.
fn https_only(config: &Config) -> Finding {
    match (&config.tls_cert, config.http_redirect_listen) {
        (Some(_), redirect) => finding(
            "NET-1",
            Verdict::Pass,
            format!(
                "HTTPS only on {}, HSTS on every response{}",
                config.listen,
                match redirect {
                    Some(at) => format!("; {at} answers only 308 to HTTPS"),
                    None => String::new(),
                }
            ),
        ),
        (None, _) if !config.trusted_proxies.is_empty() => finding(
            "NET-1",
            Verdict::Warn,
            "TLS ends at the trusted proxies; HSTS is sent when they say X-Forwarded-Proto: https"
                .to_owned(),
        ),
        (None, _) => finding(
            "NET-1",
            Verdict::Warn,
            format!("plain HTTP on {}: no TLS configured", config.listen),
        ),
    }
}

/// NET-2: every tenant's allow-list parses, and who restricts.
async fn allow_lists(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
) -> Result<Finding, StoreError> {
    let (mut restricted, mut broken, mut entries) = (0, Vec::new(), Vec::new());
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let text: String =
            db::query_scalar("SELECT ip_allowlist FROM tenant_settings WHERE tenant_id = $1")
                .bind(scope.id_str())
                .fetch_one(tx.conn())
                .await?;
        let list: Result<Vec<String>, String> =
            serde_json::from_str(&text).map_err(|e| e.to_string());
        match list.and_then(crate::tenancy::allowlist::List::parse) {
            Ok(list) if list.entries.is_empty() => {}
            Ok(list) => {
                restricted += 1;
                entries = list.entries;
            }
            Err(e) => broken.push(format!("tenant {}: {e}", scope.id_str())),
        }
    }
    if !broken.is_empty() {
        return Ok(finding("NET-2", Verdict::Fail, broken.join("; ")));
    }
    let evidence = match reach {
        Reach::Tenant if restricted == 1 => format!(
            "this tenant admits its users only from {}; anything else is 403 before data is read",
            entries.join(", ")
        ),
        Reach::Tenant => "this tenant has no allow-list: its users may come from any address \
                          (PATCH /api/v1/tenant/settings sets one)"
            .to_owned(),
        Reach::Instance => format!(
            "{restricted} of {} tenants admit their users only from their allow-lists, each \
             list valid; the others admit every address",
            scopes.len()
        ),
    };
    Ok(finding("NET-2", Verdict::Pass, evidence))
}

/// NET-3: the limits in force and the bans.
async fn abuse(store: &Store, reach: Reach, config: &Config) -> Result<Finding, StoreError> {
    let limits = format!(
        "password attempts {}/min per address and {}/min per account{}; requests {}/s per \
         user, {}/s per address, {}/s per tenant; more than {} 401/404/405 in {} s ban an \
         address for {} s, doubling",
        config.login_attempts_per_minute_per_ip,
        config.login_attempts_per_minute_per_account,
        if store.backend() == Backend::Postgres {
            " shared by every node"
        } else {
            ""
        },
        config.requests_per_second_per_user,
        config.requests_per_second_per_ip,
        config.requests_per_second_per_tenant,
        config.ban_after_strikes,
        config.ban_window_seconds,
        config.ban_seconds
    );
    if reach == Reach::Tenant || !store.schema_has(8) {
        return Ok(finding("NET-3", Verdict::Pass, limits));
    }
    let mut tx = store.read_unscoped().await?;
    let active: i64 =
        db::query_scalar("SELECT COUNT(*) FROM ip_bans WHERE until > $1 AND lifted_at IS NULL")
            .bind(crate::clock::now())
            .fetch_one(tx.conn())
            .await?;
    Ok(finding(
        "NET-3",
        Verdict::Pass,
        format!("{limits}; {active} addresses banned now"),
    ))
}

/// OPS-2: the dependencies compiled in, against the advisory database.
fn advisories(config: &Config) -> Finding {
    super::advisories::check(config.advisory_db.as_deref())
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
    scopes: &[TenantScope],
    reach: Reach,
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
            "the access log is on; {rows} rows of {} in the last 24 h",
            reach.tenants(scopes.len())
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

/// The heartbeat `strongroom files verify` leaves after a scrub of every
/// tenant's files.
pub const SCRUB_JOB: &str = "files.scrub";

/// FIL-5: a second object store receives every object, and what the last
/// scrub found.
fn replica(config: &Config, runs: &[JobRun]) -> Finding {
    let scrub = runs.iter().find(|r| r.job == SCRUB_JOB);
    let scrubbed = match scrub {
        Some(run) => format!(
            "the last scrub (`strongroom files verify`, {} on {}): {}",
            run.last_run_at,
            run.node.as_deref().unwrap_or("?"),
            run.detail.as_deref().unwrap_or("")
        ),
        None => "no scrub recorded yet (`strongroom files verify`)".to_owned(),
    };
    match (&config.object_store_replica_url, scrub) {
        (_, Some(run)) if !run.ok => finding("FIL-5", Verdict::Fail, scrubbed),
        (Some(url), _) => finding(
            "FIL-5",
            Verdict::Pass,
            format!(
                "every object is written to a replica too ({}), reads fall back to it and \
                 repair the primary; {scrubbed}",
                url.split('?').next().unwrap_or(url)
            ),
        ),
        (None, _) => finding(
            "FIL-5",
            Verdict::Warn,
            format!("no object_store_replica_url: objects are kept once (checksummed); {scrubbed}"),
        ),
    }
}

/// AUD-1: every tenant's newest event carries who, from where, which
/// request and which version.
async fn audit_fields(
    store: &Store,
    scopes: &[TenantScope],
    reach: Reach,
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
                "the newest event of {} ({seen} with events) names actor, request, version and time",
                reach.tenants(scopes.len())
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
    scopes: &[TenantScope],
    reach: Reach,
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
                "of {}: {keyed} with an active wrapped data key, {shredded} with theirs \
                 destroyed (crypto-shredded); any other holds no sealed data yet (a key is made \
                 at the first sealed write)",
                reach.tenants(scopes.len())
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
    scopes: &[TenantScope],
    reach: Reach,
    key: &ed25519_dalek::VerifyingKey,
    config: &Config,
) -> Result<Finding, StoreError> {
    let started = Instant::now();
    let (mut events, mut checkpoints, mut broken) = (0, 0, Vec::new());
    let target = match config.backup {
        true => crate::backup::BackupTarget::open(config).ok(),
        false => None,
    };
    for scope in scopes {
        let report = crate::audit::verify_with_target(store, scope, key, target.as_ref()).await?;
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
                "the chain of {} verified now: {events} events, {checkpoints} signed \
                 checkpoints, in {took:.3} s",
                reach.tenants(scopes.len())
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
    scopes: &[TenantScope],
    reach: Reach,
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
    let (verdict, job) = job_freshness(runs, crate::audit::RETENTION_JOB, every, false);
    Ok(finding(
        "AUD-3",
        verdict,
        format!(
            "the trail of {} is kept ≥ 90 days; {job}",
            reach.tenants(scopes.len())
        ),
    ))
}

/// OPS-1: every scheduled job has run within twice its interval.
fn heartbeats(runs: &[JobRun], config: &Config, by_job: bool) -> Finding {
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
        ("mail.deliver", crate::mail::SWEEP),
        (
            super::JOB,
            Duration::from_secs(config.posture_interval_seconds),
        ),
    ];
    let mut worst = Verdict::Pass;
    let mut evidence = Vec::new();
    for (job, every) in jobs {
        let (verdict, said) = job_freshness(runs, job, every, by_job && job == super::JOB);
        worst = match (worst, verdict) {
            (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
            (Verdict::Warn, _) | (_, Verdict::Warn) => Verdict::Warn,
            _ => Verdict::Pass,
        };
        evidence.push(said);
    }
    finding("OPS-1", worst, evidence.join("; "))
}

/// Whether `job` last ran, successfully, within twice `every` — or is
/// running now, taking this very report.
fn job_freshness(runs: &[JobRun], job: &str, every: Duration, now: bool) -> (Verdict, String) {
    if now {
        let before = runs
            .iter()
            .find(|r| r.job == job)
            .map_or("its first run".to_owned(), |r| {
                format!("its last run before this one {}", r.last_run_at)
            });
        return (
            Verdict::Pass,
            format!(
                "{job} is taking this report now (every {} s; {before})",
                every.as_secs()
            ),
        );
    }
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
