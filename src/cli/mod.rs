//! The `strongroom` command line: `serve`, `migrate`, `tenant create|list`.
//! Operator commands work on the configured database directly, through the
//! same write path as the API, with the operator recorded as the actor.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

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
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage tenants (companies).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The audit trail: verify its integrity, sign checkpoints.
    #[command(subcommand)]
    Audit(AuditCommand),
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
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            serve(config).await
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
            let created =
                crate::tenancy::create(&state.store, &slug, &name, &admin_email, ttl).await;
            state.store.close().await;
            let created = created.context("tenant not created")?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                println!("created tenant {} ({})", created.slug, created.tenant_id);
                println!(
                    "admin {} invited; invitation token (valid until {}):",
                    created.admin_email, created.invitation_expires_at
                );
                println!("{}", created.invitation_token);
                println!(
                    "accept with: POST /api/v1/auth/invitations/accept {{\"token\": \"…\", \"password\": \"…\"}}"
                );
            }
            Ok(())
        }
        Command::Audit(command) => {
            let state = crate::open(config).await?;
            let result = match command {
                AuditCommand::Verify { tenant, json } => audit_verify(&state, tenant, json).await,
                AuditCommand::Checkpoint => crate::audit::checkpoint_all(
                    &state.store,
                    state.keyring.checkpoint_signing_key(),
                )
                .await
                .map(|n| println!("{n} checkpoints signed"))
                .map_err(Into::into),
            };
            state.store.close().await;
            result
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

async fn audit_verify(
    state: &crate::http::AppState,
    tenant: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let scopes = match tenant {
        Some(slug) => vec![
            crate::tenancy::find_active_by_slug(&state.store, &slug)
                .await?
                .with_context(|| format!("no active tenant with slug {slug:?}"))?,
        ],
        None => crate::tenancy::all_scopes(&state.store).await?,
    };
    let key = state.keyring.checkpoint_signing_key().verifying_key();
    let mut failures = Vec::new();
    for scope in scopes {
        let report = crate::audit::verify(&state.store, &scope, &key).await?;
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
                "{}: TAMPERED at seq {}: {}",
                report.tenant_id,
                report.first_bad_seq.unwrap_or_default(),
                report.problem.as_deref().unwrap_or_default()
            );
        }
        if !report.ok {
            failures.push(format!(
                "tenant {} at seq {}",
                report.tenant_id,
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

async fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(config.log_format, &config.log_level);
    tracing::info!(version = crate::VERSION, config = ?config, "starting");
    let listen = config.listen;
    let state = crate::open(config).await?;
    crate::identity::warm_up();
    start_jobs(&state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, database = state.store.backend().name(), "listening");
    crate::http::run(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The server's scheduled jobs; each records a heartbeat.
fn start_jobs(state: &crate::http::AppState) {
    let every = std::time::Duration::from_secs(state.config.audit_checkpoint_seconds);
    let job_state = state.clone();
    crate::ops::every(state.store.clone(), "audit.checkpoint", every, move || {
        let state = job_state.clone();
        async move {
            crate::audit::checkpoint_all(&state.store, state.keyring.checkpoint_signing_key())
                .await
                .map(|n| format!("{n} checkpoints signed"))
                .map_err(|e| e.to_string())
        }
    });
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
