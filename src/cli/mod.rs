//! The `strongroom` command line: `serve`, `migrate`, `tenant create|list`.
//! Operator commands work on the configured database directly, through the
//! same write path as the API, with the operator recorded as the actor.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

mod backup;
mod bench;
mod bench_backup;
mod bench_login;
mod dev_cert;
mod keys;

#[derive(Parser)]
#[command(name = "strongroom", version = crate::VERSION, about = "Strongroom: security controls that are true in code")]
pub struct Cli {
    /// TOML configuration file; STRONGROOM_* variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides STRONGROOM_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server until SIGINT/SIGTERM.
    Serve {
        /// Address to bind (overrides STRONGROOM_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Run as a read-only warm standby of the primary whose backup
        /// target this is (BAK-5): apply its journal as it arrives, refuse
        /// writes, until `strongroom promote`.
        #[arg(long, value_name = "BACKUP_URL")]
        follow: Option<String>,
    },
    /// Make the standby running on this data dir the primary (BAK-5): it
    /// applies what the target holds one last time, then takes writes and
    /// ships. Only once the old primary is down.
    Promote,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage tenants (companies).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The instance's operator accounts (ACC-3).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// The audit trail: verify its integrity, sign checkpoints.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Tenant data keys: status, rotation, crypto-shredding.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Backups (BAK-1): what the backup target holds, and whether it is
    /// whole.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Stored files: scrub every copy against its checksum.
    #[command(subcommand)]
    Files(FilesCommand),
    /// In-process benchmarks (HTTP benchmarks live in bench/).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The SHA-256 of this executable and of the effective configuration,
    /// beside those of the last server start recorded.
    VerifyInstall {
        #[arg(long)]
        json: bool,
    },
    /// Scheduled jobs: when each last ran, on which node, how often, and
    /// whether it succeeded.
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// The control catalog (POS-1): every control of CONTROLS.md, what is
    /// built of it and the tests that prove it. `--markdown` prints the
    /// README's control table.
    Controls {
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        #[arg(long)]
        json: bool,
    },
    /// The posture report: every control, and for those with a live check
    /// its verdict and evidence now. Exits 1 when a control fails its check.
    Verify {
        #[arg(long, conflicts_with = "signed")]
        json: bool,
        /// One tenant's view: its data, and the instance's settings.
        #[arg(long)]
        tenant: Option<String>,
        /// Print the report as a signed JSON document (check it with
        /// `strongroom posture check FILE`).
        #[arg(long)]
        signed: bool,
    },
    /// Signed posture reports.
    #[command(subcommand)]
    Posture(PostureCommand),
    /// Client addresses banned for failed or unknown requests (NET-3).
    #[command(subcommand)]
    Bans(BansCommand),
    /// Write a self-signed certificate for localhost / 127.0.0.1 / ::1
    /// (DIR/cert.pem, and DIR/key.pem readable by you only), for trying
    /// HTTPS locally: set tls_cert and tls_key to them.
    DevCert {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum PostureCommand {
    /// Verify a saved signed report: against this instance's key, or the
    /// base64 public key given (as `GET /api/v1/posture/key` publishes it).
    Check {
        file: PathBuf,
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum BansCommand {
    /// Every ban on record, newest first; `--active` for those in force.
    List {
        #[arg(long)]
        active: bool,
        #[arg(long)]
        json: bool,
    },
    /// End an address's ban now (every app server honours it within 2 s).
    Lift { ip: std::net::IpAddr },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Key versions, BYOK fingerprint and rotation progress of a tenant.
    Status {
        #[arg(long)]
        tenant: String,
    },
    /// Make a new data-key version active and re-encrypt existing data
    /// (progress on a terminal; run again to resume an interrupted one).
    Rotate {
        /// Only this tenant (slug); default all.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Rotate the master key (key file only; stop the server first): every
    /// tenant's data keys are rewrapped and audit checkpoints re-signed;
    /// run again to finish an interrupted rotation.
    RotateMaster,
    /// Crypto-shredding: destroy every key of a tenant. Irreversible.
    Destroy {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum FilesCommand {
    /// Check every copy of every file (primary and replica) against its
    /// checksum; exits non-zero when a damaged copy remains.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
        /// Overwrite damaged or missing copies with a good one.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Verification speed of the audit hash chain (events/s).
    AuditVerify {
        #[arg(long, default_value_t = 1_000_000)]
        events: i64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Time of one Argon2id password hash with the production parameters:
    /// what bounds login throughput (cores / time per hash).
    PasswordHash {
        #[arg(long, default_value_t = 20)]
        count: u32,
    },
    /// One core's speed (MB/s) at the two things every file byte goes
    /// through: the plaintext SHA-256 and sealing with AES-256-GCM. A
    /// transfer cannot be faster than the hash, which is serial.
    FileCrypto {
        #[arg(long, default_value_t = 100)]
        mb: usize,
    },
    /// Logins with a TOTP second step (two calls each) through the real
    /// server on a fresh SQLite instance, against the hash-bound limit
    /// measured in the same run. Each login is a user of its own.
    LoginMfa {
        #[arg(long, default_value_t = 2000)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Returning users: each logged in once during set-up and presents
        /// that device's token (otherwise each timed login is a new device).
        #[arg(long)]
        known_devices: bool,
        /// The peer in the same harness: users without a second factor,
        /// one call per login.
        #[arg(long)]
        without_mfa: bool,
    },
    /// Backups through the real server on a fresh SQLite instance: create
    /// throughput with shipping running vs paused, shipping lag at half the
    /// capacity, and one tenant's restore beside `cp -r` of the target.
    Backup {
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The restored tenant's size: 90% files, 10% rows.
        #[arg(long, default_value_t = 1024)]
        restore_mb: u64,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Each tenant's shipped journal segments: how many, which seqs, how
    /// many bytes.
    List {
        /// Only this tenant (slug); default all.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Open every segment with the tenant's keys and check the chain of
    /// segments; exits non-zero naming each bad, missing or reordered one.
    Verify {
        /// Only this tenant (slug); default all.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ship what the journal holds beyond the target now (the server does
    /// it every half second).
    Ship,
    /// Take each tenant's snapshot now (BAK-2; the server takes one daily).
    Now {
        /// Only this tenant (slug); default all.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A restore drill now (BAK-6): rebuild each tenant from the target and
    /// compare it with the live state; exits non-zero on any difference.
    Drill {
        /// Only this tenant (slug); default all.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The integrity checks now (BAK-4): SQLite's quick_check, each
    /// journal gap-free, no lost writes; with --drill each tenant's rows
    /// against its backup. Reports only (a running server refuses and
    /// restores); exits non-zero on any finding.
    Check {
        #[arg(long)]
        drill: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore a tenant to a point in time from the backup target (BAK-4):
    /// into this instance (stop the server first), into a new SQLite
    /// instance, or every tenant onto an empty data dir (`--all`).
    Restore {
        /// The tenant (slug).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        tenant: Option<String>,
        /// Every tenant the target holds, onto this (empty) instance.
        #[arg(long)]
        all: bool,
        /// `latest`, `seq:N` (journal entry N) or an RFC 3339 time.
        #[arg(long, default_value = "latest")]
        to: String,
        /// Build the tenant in a new SQLite instance in this directory
        /// instead of replacing it here.
        #[arg(long, conflicts_with = "all")]
        into_new_instance: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk each tenant's hash chain and signed checkpoints; exits non-zero
    /// naming the first bad seq when anything was modified, deleted,
    /// inserted or reordered.
    Verify {
        /// Only this tenant (slug); default all.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint of every tenant's trail now (the server does this
    /// every `audit_checkpoint_seconds`).
    Checkpoint,
    /// Export a tenant's audit events for forensic analysis.
    Export {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
        /// Output file (created; an existing file is not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Only events before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Create an operator account and print its single-use invitation; its
    /// holder sets a password and confirms a second factor before any use
    /// (POST /api/v1/ops/auth/accept, then /api/v1/ops/auth/mfa/confirm).
    Create {
        #[arg(long)]
        email: String,
        /// operator, support or security_officer.
        #[arg(long)]
        role: String,
        /// Print one JSON object as the last line of output.
        #[arg(long)]
        json: bool,
    },
    /// List operator accounts: role, status, when their second factor was
    /// confirmed.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and invite its first admin.
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        admin_email: String,
        /// Print one JSON object as the last line of output.
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Empty a tenant's IP allow-list, so its users may come from anywhere
    /// again (an admin who locked the tenant out).
    ClearAllowlist {
        #[arg(long)]
        tenant: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::VerifyInstall { json } => {
            let now = crate::ops::install::fingerprint(&config)?;
            let state = crate::open(config).await?;
            let last = crate::ops::install::last_start(&state.store).await;
            state.store.close().await;
            let last = last?;
            let same = last.as_ref().map(|l| l.fingerprint == now);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"now": now, "last_start": last, "same": same})
                );
            } else {
                println!("binary  {}", now.binary_sha256);
                println!("config  {}", now.config_sha256);
                match &last {
                    Some(last) => {
                        println!(
                            "last start {} on {} ({}):",
                            last.started_at, last.node, last.version
                        );
                        println!("binary  {}", last.fingerprint.binary_sha256);
                        println!("config  {}", last.fingerprint.config_sha256);
                    }
                    None => println!("no start recorded yet"),
                }
            }
            Ok(())
        }
        Command::Posture(PostureCommand::Check { file, key }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let expected = match key {
                Some(key) => {
                    use base64::Engine;
                    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
                        .decode(key.trim())
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .context("--key is the base64 of a 32-byte Ed25519 public key")?;
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                        .context("--key is not an Ed25519 public key")?
                }
                None => crate::crypto::Keyring::load(&config.data_dir, config.master_key.as_ref())?
                    .posture_signing_key()
                    .verifying_key(),
            };
            let report = crate::posture::signed::check(&text, Some(&expected))?;
            println!(
                "signature valid: report of {} at {} ({} controls)",
                report["node"].as_str().unwrap_or("?"),
                report["generated_at"].as_str().unwrap_or("?"),
                report["controls"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
        Command::Verify {
            json,
            signed,
            tenant,
        } => {
            let state = crate::open(config).await?;
            let taken = match &tenant {
                None => crate::http::probe::instance_report(&state).await,
                Some(_) => {
                    let scopes: Vec<_> = tenant_scopes(&state.store, tenant.as_deref())
                        .await?
                        .into_iter()
                        .map(|(scope, _)| scope)
                        .collect();
                    let probe = crate::posture::http::probe(&state);
                    crate::posture::take(&probe, &scopes, crate::posture::Reach::Tenant, Vec::new())
                        .await
                }
            };
            let report = taken?;
            let scope = match &tenant {
                None => serde_json::json!("instance"),
                Some(slug) => serde_json::json!({"tenant": {"slug": slug}}),
            };
            let document = crate::posture::signed::sign(
                state.keyring.posture_signing_key(),
                state.store.node(),
                scope,
                &report,
            );
            // The instance's report is kept, as the posture job's are
            // (`GET /api/v1/ops/posture` serves the newest).
            if tenant.is_none() {
                crate::posture::keep(&state.store, &document, crate::posture::failing(&report))
                    .await?;
            }
            state.access_log.flush().await;
            state.store.close().await;
            if signed {
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for control in &report {
                    let verdict = match control.verdict {
                        Some(crate::posture::Verdict::Pass) => "pass",
                        Some(crate::posture::Verdict::Fail) => "FAIL",
                        Some(crate::posture::Verdict::Warn) => "warn",
                        None => "-",
                    };
                    println!(
                        "{:<6} {:<9} {:<5} {}",
                        control.id,
                        control.status.as_str(),
                        verdict,
                        control.evidence.as_deref().unwrap_or("no live check yet")
                    );
                }
            }
            if crate::posture::fails(&report) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Controls { markdown, json } => {
            let controls = crate::posture::catalog();
            if markdown {
                print!("{}", crate::posture::markdown(&controls));
            } else if json {
                println!("{}", serde_json::to_string(&controls)?);
            } else {
                for control in &controls {
                    println!(
                        "{:<6} {:<9} {}",
                        control.id,
                        control.status.as_str(),
                        control.title
                    );
                }
            }
            Ok(())
        }
        Command::Bans(BansCommand::List { active, json }) => {
            let state = crate::open(config).await?;
            let bans = crate::http::bans::list(&state.store).await;
            state.store.close().await;
            let bans: Vec<_> = bans?
                .into_iter()
                .filter(|ban| !active || ban.is_active())
                .collect();
            if json {
                println!("{}", serde_json::to_string(&bans)?);
            } else if bans.is_empty() {
                println!("no bans");
            } else {
                for ban in &bans {
                    let state = match (&ban.lifted_at, ban.is_active()) {
                        (Some(at), _) => {
                            format!("lifted {at} by {}", ban.lifted_by.as_deref().unwrap_or("?"))
                        }
                        (None, true) => format!("until {}", ban.until),
                        (None, false) => format!("ended {}", ban.until),
                    };
                    println!(
                        "{}  banned {}  level {}  {}  ({})",
                        ban.ip, ban.banned_at, ban.level, state, ban.reason
                    );
                }
            }
            Ok(())
        }
        Command::Bans(BansCommand::Lift { ip }) => {
            let state = crate::open(config).await?;
            let by = format!("operator {}", std::env::var("USER").unwrap_or_default());
            let lifted = crate::http::bans::lift(&state.store, ip, by.trim()).await;
            state.store.close().await;
            if lifted? {
                println!("lifted the ban of {ip}");
                Ok(())
            } else {
                anyhow::bail!("{ip} is not banned")
            }
        }
        Command::Jobs { json } => {
            let state = crate::open(config).await?;
            let runs = crate::ops::last_runs(&state.store).await;
            state.store.close().await;
            let runs = runs?;
            if json {
                println!("{}", serde_json::to_string(&runs)?);
            } else {
                for r in runs {
                    println!(
                        "{}\t{}\t{}\t{} runs\t{}\t{}",
                        r.job,
                        r.last_run_at,
                        if r.ok { "ok" } else { "FAILED" },
                        r.runs,
                        r.node.unwrap_or_default(),
                        r.detail.unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Command::DevCert { out } => {
            let (cert, key) = dev_cert::write(&out)?;
            println!("wrote {} and {}", cert.display(), key.display());
            println!(
                "serve HTTPS with: STRONGROOM_TLS_CERT={} STRONGROOM_TLS_KEY={} strongroom serve",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        Command::Serve { listen, follow } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(url) = &follow {
                config.backup_url = Some(url.clone());
            }
            serve(config, follow.is_some()).await
        }
        Command::Promote => promote(&config).await,
        Command::Bench(BenchCommand::AuditVerify { events, rounds }) => {
            anyhow::ensure!(
                events > 0 && rounds > 0,
                "events and rounds must be positive"
            );
            bench::audit_verify(events, rounds).await
        }
        Command::Bench(BenchCommand::PasswordHash { count }) => {
            anyhow::ensure!(count > 0, "count must be positive");
            bench::password_hash(count).await
        }
        Command::Bench(BenchCommand::LoginMfa {
            users,
            seconds,
            concurrency,
            known_devices,
            without_mfa,
        }) => {
            anyhow::ensure!(
                users > 0 && seconds > 0 && (1..=256).contains(&concurrency),
                "users and seconds must be positive, concurrency 1-256"
            );
            bench_login::login_mfa(users, seconds, concurrency, known_devices, !without_mfa).await
        }
        Command::Bench(BenchCommand::Backup {
            seconds,
            rounds,
            concurrency,
            restore_mb,
        }) => {
            anyhow::ensure!(
                seconds > 0
                    && rounds > 0
                    && (1..=256).contains(&concurrency)
                    && (10..=65_536).contains(&restore_mb),
                "seconds and rounds must be positive, concurrency 1-256, restore-mb 10-65536"
            );
            bench_backup::backup(seconds, rounds, concurrency, restore_mb).await
        }
        Command::Bench(BenchCommand::FileCrypto { mb }) => {
            anyhow::ensure!((1..=4096).contains(&mb), "mb must be 1-4096");
            bench::file_crypto(mb);
            Ok(())
        }
        Command::Migrate => {
            let state = crate::open(config).await?;
            state.store.close().await;
            println!("migrations applied");
            Ok(())
        }
        Command::Tenant(TenantCommand::Create {
            slug,
            name,
            admin_email,
            json,
        }) => {
            let ttl = config.invitation_ttl_hours;
            let state = crate::open(config).await?;
            let created = crate::tenancy::create(
                &state.store,
                &state.post(),
                &slug,
                &name,
                &admin_email,
                ttl,
            )
            .await;
            // The invitation goes out now, not at the server's next sweep.
            let delivered = match &created {
                Ok(created) if created.invitation_mailed => {
                    let scopes: Vec<_> = crate::context::TenantId::parse(&created.tenant_id)
                        .map(crate::context::TenantScope::trusted)
                        .into_iter()
                        .collect();
                    Some(
                        crate::mail::deliver(
                            &state.mailer,
                            &state.store,
                            &state.vault,
                            &scopes,
                            true,
                        )
                        .await,
                    )
                }
                _ => None,
            };
            state.store.close().await;
            let created = created.context("tenant not created")?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                println!("created tenant {} ({})", created.slug, created.tenant_id);
                match &created.invitation_token {
                    Some(token) => {
                        println!(
                            "admin {} invited; invitation token (valid until {}):",
                            created.admin_email, created.invitation_expires_at
                        );
                        println!("{token}");
                        println!(
                            "accept with: POST /api/v1/auth/invitations/accept {{\"token\": \"…\", \"password\": \"…\"}}"
                        );
                    }
                    None => println!(
                        "admin {} invited by mail (valid until {}): {}",
                        created.admin_email,
                        created.invitation_expires_at,
                        match delivered {
                            Some(Ok(done)) => done,
                            Some(Err(e)) => format!("not sent yet ({e}); the server retries"),
                            None => String::new(),
                        }
                    ),
                }
            }
            Ok(())
        }
        Command::Audit(command) => {
            let state = crate::open(config).await?;
            let result = match command {
                AuditCommand::Verify { tenant, json } => audit_verify(&state, tenant, json).await,
                AuditCommand::Export {
                    tenant,
                    format,
                    out,
                    from,
                    to,
                } => audit_export(&state, &tenant, &format, &out, from, to).await,
                AuditCommand::Checkpoint => crate::audit::checkpoint_all(
                    &state.store,
                    state.keyring.checkpoint_signing_key(),
                    backup_target(&state)?.as_ref(),
                )
                .await
                .map(|n| println!("{n} checkpoints signed"))
                .map_err(Into::into),
            };
            state.store.close().await;
            result
        }
        Command::Backup(command) => {
            // A new master key would open none of the target's key versions.
            if let BackupCommand::Restore { all: true, .. } = &command
                && config.master_key.is_none()
                && !config.data_dir.join(crate::crypto::KEY_FILE).exists()
            {
                anyhow::bail!(
                    "restoring the whole instance needs the lost instance's master key: set master_key \
                     (STRONGROOM_MASTER_KEY) or put its {} into {}",
                    crate::crypto::KEY_FILE,
                    config.data_dir.display()
                );
            }
            let state = crate::open(config).await?;
            let result = match command {
                BackupCommand::List { tenant, json } => {
                    backup::list(&state, tenant.as_deref(), json).await
                }
                BackupCommand::Verify { tenant, json } => {
                    backup::verify(&state, tenant.as_deref(), json).await
                }
                BackupCommand::Ship => backup::ship_now(&state).await,
                BackupCommand::Drill { tenant, json } => {
                    backup::drill(&state, tenant.as_deref(), json).await
                }
                BackupCommand::Check { drill, json } => backup::check(&state, drill, json).await,
                BackupCommand::Now { tenant, json } => {
                    backup::snapshot_now(&state, tenant.as_deref(), json).await
                }
                BackupCommand::Restore {
                    tenant,
                    all,
                    to,
                    into_new_instance,
                    json,
                } => {
                    backup::restore(
                        &state,
                        backup::RestoreArgs {
                            tenant,
                            all,
                            to,
                            into_new_instance,
                            json,
                        },
                    )
                    .await
                }
            };
            state.store.close().await;
            result
        }
        Command::Keys(KeysCommand::RotateMaster) => keys::rotate_master(&config).await,
        Command::Keys(command) => {
            let state = crate::open(config).await?;
            let result = match command {
                KeysCommand::Status { tenant } => keys::status(&state, &tenant).await,
                KeysCommand::Rotate { tenant } => keys::rotate(&state, tenant.as_deref()).await,
                KeysCommand::Destroy { tenant, yes } => keys::destroy(&state, &tenant, yes).await,
                KeysCommand::RotateMaster => unreachable!("handled before the server state opens"),
            };
            state.store.close().await;
            result
        }
        Command::Files(FilesCommand::Verify {
            tenant,
            repair,
            json,
        }) => {
            let state = crate::open(config).await?;
            let result = keys::verify_files(&state, tenant.as_deref(), repair, json).await;
            state.store.close().await;
            result
        }
        Command::Tenant(TenantCommand::ClearAllowlist { tenant }) => {
            let state = crate::open(config).await?;
            let cleared = clear_allowlist(&state, &tenant).await;
            state.store.close().await;
            let before = cleared?;
            println!("cleared the IP allow-list of {tenant} (it had {before} entries)");
            Ok(())
        }
        Command::Operator(OperatorCommand::Create { email, role, json }) => {
            let state = crate::open(config).await?;
            let created = crate::operators::create(&state.store, &email, &role).await;
            state.store.close().await;
            let (operator, token) = created?;
            if json {
                let mut out = serde_json::to_value(&operator)?;
                out["invitation_token"] = token.into();
                println!("{out}");
            } else {
                println!(
                    "operator {} ({}) invited; invitation token (valid 72 hours):\n{token}\n\
                     accept with: POST /api/v1/ops/auth/accept {{\"token\": \"…\", \"password\": \"…\"}}, \
                     then confirm the second factor: POST /api/v1/ops/auth/mfa/confirm {{\"code\": \"…\"}}",
                    operator.email, operator.role
                );
            }
            Ok(())
        }
        Command::Operator(OperatorCommand::List { json }) => {
            let state = crate::open(config).await?;
            let operators = crate::operators::list(&state.store).await;
            state.store.close().await;
            let operators = operators?;
            if json {
                println!("{}", serde_json::to_string(&operators)?);
            } else {
                for o in operators {
                    println!(
                        "{}\t{}\t{}\t{}\tmfa {}",
                        o.email,
                        o.role,
                        o.status,
                        o.id,
                        o.mfa_confirmed_at.as_deref().unwrap_or("not confirmed")
                    );
                }
            }
            Ok(())
        }
        Command::Tenant(TenantCommand::List { json }) => {
            let state = crate::open(config).await?;
            let tenants = crate::tenancy::list(&state.store).await;
            state.store.close().await;
            let tenants = tenants?;
            if json {
                println!("{}", serde_json::to_string(&tenants)?);
            } else {
                for t in tenants {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        t.slug, t.id, t.status, t.created_at, t.name
                    );
                }
            }
            Ok(())
        }
    }
}

/// The tenant named by `slug` (active), or every tenant; each with its slug.
async fn tenant_scopes(
    store: &crate::store::Store,
    slug: Option<&str>,
) -> anyhow::Result<Vec<(crate::tenancy::TenantScope, String)>> {
    let slugs: std::collections::HashMap<String, String> = crate::tenancy::list(store)
        .await?
        .into_iter()
        .map(|t| (t.id, t.slug))
        .collect();
    let scopes = match slug {
        Some(slug) => vec![
            crate::tenancy::find_active_by_slug(store, slug)
                .await?
                .with_context(|| format!("no active tenant with slug {slug:?}"))?,
        ],
        None => crate::tenancy::all_scopes(store).await?,
    };
    Ok(scopes
        .into_iter()
        .map(|scope| {
            let slug = slugs
                .get(scope.id_str())
                .cloned()
                .unwrap_or_else(|| "?".into());
            (scope, slug)
        })
        .collect())
}

/// The backup target, when backups are on.
fn backup_target(
    state: &crate::http::AppState,
) -> anyhow::Result<Option<crate::backup::BackupTarget>> {
    if !state.config.backup {
        return Ok(None);
    }
    Ok(Some(
        crate::backup::BackupTarget::open(&state.config).map_err(anyhow::Error::msg)?,
    ))
}

async fn audit_verify(
    state: &crate::http::AppState,
    tenant: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let key = state.keyring.checkpoint_signing_key().verifying_key();
    let target = backup_target(state)?;
    let mut failures = Vec::new();
    for (scope, name) in tenant_scopes(&state.store, tenant.as_deref()).await? {
        let report =
            crate::audit::verify_with_target(&state.store, &scope, &key, target.as_ref()).await?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else if report.ok {
            println!(
                "{}: ok ({} events from seq {}, {} signed checkpoints)",
                report.tenant_id,
                report.events_checked,
                report.first_seq,
                report.checkpoints_checked
            );
        } else {
            println!(
                "{name} ({}): TAMPERED at seq {}: {}",
                report.tenant_id,
                report.first_bad_seq.unwrap_or_default(),
                report.problem.as_deref().unwrap_or_default()
            );
        }
        if !report.ok {
            failures.push(format!(
                "tenant {name} at seq {}",
                report.first_bad_seq.unwrap_or_default()
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("audit trail verification failed: {}", failures.join(", "))
    }
}

/// Empties `tenant`'s allow-list through the write path, as the operator.
async fn clear_allowlist(state: &crate::http::AppState, tenant: &str) -> anyhow::Result<usize> {
    let scope = crate::tenancy::find_active_by_slug(&state.store, tenant)
        .await?
        .with_context(|| format!("no active tenant with slug {tenant:?}"))?;
    let permit = crate::access::Permit::operator(scope, crate::audit::Actor::operator());
    let before = crate::tenancy::get_settings(&state.store, &permit).await?;
    let patch = crate::tenancy::SettingsPatch {
        ip_allowlist: Some(Vec::new()),
        ..Default::default()
    };
    crate::tenancy::update_settings(
        &state.store,
        &permit,
        &crate::audit::RequestMeta::cli(),
        patch,
    )
    .await?;
    Ok(before.ip_allowlist.len())
}

async fn audit_export(
    state: &crate::http::AppState,
    tenant: &str,
    format: &str,
    out: &std::path::Path,
    from: Option<String>,
    to: Option<String>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::io::{IsTerminal, Write};
    let scope = crate::tenancy::find_active_by_slug(&state.store, tenant)
        .await?
        .with_context(|| format!("no active tenant with slug {tenant:?}"))?;
    let format = crate::audit::export::Format::parse(Some(format))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    pairs.extend(from.map(|f| ("from".to_owned(), f)));
    pairs.extend(to.map(|t| ("to".to_owned(), t)));
    let filter = crate::audit::AuditFilter::take(&mut pairs)?;
    let permit = crate::access::Permit::operator(scope.clone(), crate::audit::Actor::operator());
    let meta = crate::audit::RequestMeta::cli();
    crate::audit::export::record_export(&state.store, &permit, &meta, "audit.export", format)
        .await?;
    let mut file = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .with_context(|| format!("cannot create {}", out.display()))?,
    );
    let progress = std::io::stderr().is_terminal();
    let mut stream = std::pin::pin!(crate::audit::export::audit_stream(
        state.store.clone(),
        permit,
        filter,
        format
    ));
    let mut lines: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        file.write_all(&chunk)?;
        if progress {
            eprint!("\rexported {lines} lines");
        }
    }
    file.flush()?;
    if progress {
        eprintln!();
    }
    println!("wrote {} ({lines} lines)", out.display());
    Ok(())
}

/// `strongroom promote`: asks the standby on this data dir to become the
/// primary, and waits until it has.
async fn promote(config: &Config) -> anyhow::Result<()> {
    let Some(running) = crate::ops::supervise::running(&config.data_dir) else {
        anyhow::bail!(
            "no server runs on {}: start the standby (`serve --follow BACKUP_URL`) or, to make this \
             instance the primary, start it with `serve`",
            config.data_dir.display()
        );
    };
    let file = crate::backup::follow::promote_file(&config.data_dir);
    std::fs::write(&file, b"promote\n").context("cannot ask the standby to promote")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while file.exists() {
        if std::time::Instant::now() > deadline {
            let _ = std::fs::remove_file(&file);
            anyhow::bail!(
                "the server on {} ({running}) did not take the promotion in 60 s: is it a standby?",
                config.data_dir.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!(
        "promoted: the server on {} is the primary now",
        config.data_dir.display()
    );
    Ok(())
}

async fn serve(config: Config, follow: bool) -> anyhow::Result<()> {
    if config.environment == crate::config::Environment::Production {
        let mut problems = config.production_problems();
        problems.extend(crate::crypto::Keyring::production_problems(
            &config.data_dir,
            config.master_key.as_ref(),
        ));
        if !problems.is_empty() {
            for problem in &problems {
                eprintln!("refusing to start in production: {problem}");
            }
            std::process::exit(2);
        }
    }
    crate::telemetry::init(
        config.log_format,
        &config.log_level,
        config.syslog_url.as_deref(),
    );
    tracing::info!(version = crate::VERSION, config = ?config, "starting");
    let listen = config.listen;
    let fingerprint = crate::ops::install::fingerprint(&config)
        .context("cannot read this executable to take its digest")?;
    let notifier = crate::ops::supervise::Notifier::from_env();
    let mut state = crate::open(config).await?;
    crate::ops::install::record_start(&state.store, &fingerprint).await?;
    report_unclean_stop(&state).await?;
    crate::identity::warm_up();
    // ENC-4 for backups: no canary through the target, no server.
    let backups = match state.config.backup || follow {
        true => {
            let target =
                crate::backup::BackupTarget::open(&state.config).map_err(anyhow::Error::msg)?;
            target.self_test().await.map_err(anyhow::Error::msg)?;
            Some(std::sync::Arc::new(target))
        }
        false => None,
    };
    match (follow, backups) {
        (true, Some(target)) => {
            let standby = crate::backup::follow::Standby::new(
                target.describe().to_owned(),
                state.config.backup_primary_url.clone(),
            );
            state.standby = Some(standby.clone());
            let follower = crate::backup::follow::Follower::new(
                state.store.clone(),
                state.vault.clone(),
                state.objects.clone(),
                target.clone(),
            );
            let (promoted, data_dir) = (state.clone(), state.config.data_dir.clone());
            tokio::spawn(crate::backup::follow::run(
                follower,
                standby,
                data_dir,
                move || start_primary_jobs(&promoted, Some(target)),
            ));
        }
        (_, backups) => start_primary_jobs(&state, backups),
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, database = state.store.backend().name(), "listening");
    let data_dir = state.config.data_dir.clone();
    let stopping = notifier.clone();
    if let Some(notifier) = notifier {
        notifier.send(&format!(
            "READY=1\nSTATUS=listening on {}",
            listener.local_addr()?
        ));
        if let Some(every) = notifier.watchdog() {
            // Alive is more than running: the pings stop while the
            // database does not answer, and the manager restarts us.
            let store = state.store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match store.ping().await {
                        Ok(()) => notifier.send("WATCHDOG=1"),
                        Err(e) => {
                            tracing::error!(error = %e, "the database does not answer: no watchdog ping")
                        }
                    }
                }
            });
        }
    }
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(notifier) = stopping {
            notifier.send("STOPPING=1");
        }
    };
    crate::http::run(listener, state, shutdown).await?;
    crate::ops::supervise::mark_stopped(&data_dir);
    tracing::info!("stopped");
    Ok(())
}

/// BAK-7: a start after an unclean stop says so, and what it found: the
/// database opened (SQLite replayed its write-ahead log), its integrity
/// check, and what resumes by itself.
async fn report_unclean_stop(state: &crate::http::AppState) -> anyhow::Result<()> {
    let Some(earlier) = crate::ops::supervise::mark_running(&state.config.data_dir)
        .context("cannot write the running marker in the data dir")?
    else {
        return Ok(());
    };
    let check = match state.store.backend() {
        crate::store::Backend::Sqlite => {
            let mut tx = state.store.read_unscoped().await?;
            let result: String = crate::store::db::query_scalar("PRAGMA quick_check")
                .fetch_one(tx.conn())
                .await?;
            format!("SQLite replayed its write-ahead log; quick_check: {result}")
        }
        crate::store::Backend::Postgres => {
            "PostgreSQL recovers by itself; this process lost nothing it acknowledged".to_owned()
        }
    };
    let rotations = crate::keys::unfinished(&state.store).await?.len();
    tracing::warn!(
        event = "server.unclean_stop",
        earlier = %earlier,
        "the last run ({earlier}) did not stop cleanly: {check}; {rotations} unfinished key \
         rotations resume; queued mail and backups carry on from where they were"
    );
    Ok(())
}

/// A primary's jobs: the scheduled ones, and with backups on, snapshots,
/// drills and shipping.
fn start_primary_jobs(
    state: &crate::http::AppState,
    backups: Option<std::sync::Arc<crate::backup::BackupTarget>>,
) {
    start_jobs(state, backups.clone());
    let integrity = std::sync::Arc::new(crate::backup::http::integrity_of(state, backups.clone()));
    let every = state.config.integrity_check_minutes;
    crate::backup::integrity::start(
        state.store.clone(),
        &state.schedule,
        integrity.clone(),
        (every > 0).then(|| std::time::Duration::from_secs(every * 60)),
    );
    if let Some(target) = backups {
        crate::backup::snapshot::start(
            state.store.clone(),
            state.vault.clone(),
            target.clone(),
            &state.schedule,
            std::time::Duration::from_secs(state.config.backup_snapshot_hours * 3600),
            state.config.backup_retention_days,
            (state.keyring.clone(), state.config.clone()),
        );
        crate::backup::integrity::start_drills(
            &state.schedule,
            integrity,
            target.clone(),
            std::time::Duration::from_secs(state.config.backup_drill_hours * 3600),
        );
        crate::backup::ship::start(
            state.store.clone(),
            &state.schedule,
            crate::backup::ship::Shipper::new(
                state.store.clone(),
                state.vault.clone(),
                state.objects.clone(),
                target,
                std::time::Duration::from_secs(state.config.backup_lag_alert_seconds),
            ),
        );
    }
}

/// The server's scheduled jobs; each records a heartbeat.
fn start_jobs(
    state: &crate::http::AppState,
    backups: Option<std::sync::Arc<crate::backup::BackupTarget>>,
) {
    let files = state.files();
    let resume = files.clone();
    tokio::spawn(async move {
        match crate::keys::unfinished(&resume.store).await {
            Ok(scopes) => {
                for scope in scopes {
                    tracing::info!(
                        tenant = scope.id_str(),
                        "resuming an unfinished key rotation"
                    );
                    crate::keys::spawn_reencrypt(resume.clone(), scope);
                }
            }
            Err(e) => tracing::error!(error = %e, "could not look for unfinished key rotations"),
        }
    });
    crate::ops::every(
        state.store.clone(),
        &state.schedule,
        "files.sweep",
        std::time::Duration::from_secs(state.config.file_sweep_seconds),
        move || {
            let files = files.clone();
            async move {
                let scopes = crate::tenancy::all_scopes(&files.store)
                    .await
                    .map_err(|e| e.to_string())?;
                for scope in &scopes {
                    files.sweep(scope).await;
                }
                Ok(format!("{} tenants swept", scopes.len()))
            }
        },
    );
    let store = state.store.clone();
    let anonymous_days = state.config.anonymous_log_retention_days;
    crate::ops::every(
        state.store.clone(),
        &state.schedule,
        "audit.retention",
        std::time::Duration::from_secs(state.config.retention_interval_seconds),
        move || {
            let store = store.clone();
            async move {
                crate::audit::apply_retention(&store, anonymous_days)
                    .await
                    .map(|s| serde_json::to_string(&s).unwrap_or_default())
                    .map_err(|e| e.to_string())
            }
        },
    );
    start_mail_delivery(state);
    // The posture report reads the other jobs' heartbeats: it runs first
    // once they have run.
    let job_state = state.clone();
    crate::ops::every_from(
        state.store.clone(),
        &state.schedule,
        crate::posture::JOB,
        crate::ops::FIRST_RUN_AFTER * 4,
        std::time::Duration::from_secs(state.config.posture_interval_seconds),
        move || {
            let state = job_state.clone();
            async move { crate::http::probe::posture_job(&state).await }
        },
    );
    let every = std::time::Duration::from_secs(state.config.audit_checkpoint_seconds);
    let job_state = state.clone();
    let schedule = state.schedule.clone();
    crate::ops::every(
        state.store.clone(),
        &schedule,
        "audit.checkpoint",
        every,
        move || {
            let (state, backups) = (job_state.clone(), backups.clone());
            async move {
                crate::audit::checkpoint_all(
                    &state.store,
                    state.keyring.checkpoint_signing_key(),
                    backups.as_deref(),
                )
                .await
                .map(|n| format!("{n} checkpoints signed"))
                .map_err(|e| e.to_string())
            }
        },
    );
}

/// The outbox's delivery job (`mail.deliver`): at once when mail is queued
/// on any node, and every `mail::SWEEP` for retries.
pub fn start_mail_delivery(state: &crate::http::AppState) {
    let job_state = state.clone();
    let waker = state.mailer.clone();
    crate::ops::every_or_woken(
        state.store.clone(),
        &state.schedule,
        "mail.deliver",
        crate::mail::SWEEP,
        move |within| {
            let mailer = waker.clone();
            async move { mailer.woken_or(within).await }
        },
        move |sweep| {
            let state = job_state.clone();
            async move {
                let scopes = crate::tenancy::all_scopes(&state.store)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::mail::deliver(&state.mailer, &state.store, &state.vault, &scopes, sweep)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    );
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining requests");
}
