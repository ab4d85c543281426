//! Strongroom: a multi-tenant backend for B2B SaaS products whose security
//! and privacy promises are true in code. Each domain folder says in its
//! `//!` doc which controls of `CONTROLS.md` it implements.
// No unsafe code, with one reviewed exception: `crypto::aead` wipes ring's
// AES key schedules on drop (ring does not), which takes one `unsafe` line.
#![deny(unsafe_code)]

pub mod access;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod crypto;
pub mod files;
pub mod http;
pub mod identity;
pub mod json;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod operators;
pub mod ops;
pub mod posture;
pub mod records;
pub mod store;
pub mod telemetry;
pub mod tenancy;

use std::sync::Arc;

use config::Config;
use crypto::{KeyError, Keyring};
use http::AppState;
use store::{Store, StoreError};

/// `<crate version>+<git hash>` of this build (DESIGN.md invariant 7).
pub const VERSION: &str = env!("STRONGROOM_BUILD_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object storage: {0}")]
    Objects(String),
    #[error("mail: {0}")]
    Mail(String),
}

/// Opens everything the server needs: data dir (mode 0700), keyring,
/// database (migrated), the write path and the object stores, which must
/// pass their encryption self-test (ENC-4) or nothing starts.
pub async fn open(config: Config) -> Result<AppState, StartupError> {
    // One TLS crypto provider (ring) for the S3 client; a second call
    // finds it installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    create_private_dir(&config.data_dir).map_err(|source| StartupError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let keyring = Keyring::load(&config.data_dir, config.master_key.as_ref())?;
    let store = Store::connect_migrated_until(
        &config.database_url(),
        config.database_max_connections,
        config.migrate_until,
    )
    .await?;
    store.set_environment(config.environment.as_str());
    // Validated when the configuration was loaded; a hand-built Config
    // (tests) with a bad entry trusts no proxy.
    let proxies = http::TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default();
    let objects = files::Objects::open(&config).map_err(StartupError::Objects)?;
    objects.self_test().await.map_err(StartupError::Objects)?;
    let vault = crypto::Vault::new(
        keyring.master_kek(),
        std::time::Duration::from_secs(config.key_cache_seconds),
    );
    let listening = vault.clone();
    store
        .on_announcement(crypto::vault::KEYS_CHANGED, move |tenant| match tenant {
            Some(tenant) => listening.forget(tenant),
            None => listening.forget_all(),
        })
        .await?;
    let sessions = Arc::new(identity::SessionCache::default());
    let forgetting = sessions.clone();
    store
        .watch(identity::SESSION_KINDS, move |tenant| {
            forgetting.forget(tenant)
        })
        .await?;
    let api_keys = Arc::new(identity::api_keys::KeyCache::default());
    let forgetting = api_keys.clone();
    store
        .watch(identity::api_keys::KEY_KINDS, move |tenant| {
            forgetting.forget(tenant)
        })
        .await?;
    let mailer = Arc::new(mail::Mailer::from_config(&config).map_err(StartupError::Mail)?);
    mailer.watch(&store).await?;
    let exempt = http::TrustedProxies::parse(&config.rate_limit_exempt).unwrap_or_default();
    let rates = http::limits::Rates {
        login_per_ip: http::limits::Rate::per_minute(config.login_attempts_per_minute_per_ip),
        login_per_account: http::limits::Rate::per_minute(
            config.login_attempts_per_minute_per_account,
        ),
        requests_per_user: http::limits::Rate::per_second(config.requests_per_second_per_user),
        requests_per_ip: http::limits::Rate::per_second(config.requests_per_second_per_ip),
        requests_per_tenant: http::limits::Rate::per_second(config.requests_per_second_per_tenant),
    };
    let limits = Arc::new(http::limits::RateLimits::for_store(
        rates,
        exempt.clone(),
        &store,
    ));
    let bans = Arc::new(http::bans::Bans::new(
        http::bans::BanPolicy {
            strikes: config.ban_after_strikes,
            window: std::time::Duration::from_secs(config.ban_window_seconds),
            first: std::time::Duration::from_secs(config.ban_seconds),
        },
        exempt,
    ));
    http::bans::Bans::start(&bans, &store).await?;
    let allowlists = Arc::new(tenancy::AllowLists::default());
    let forgetting = allowlists.clone();
    store
        .watch(tenancy::allowlist::SETTINGS_KIND, move |tenant| {
            forgetting.forget(tenant)
        })
        .await?;
    Ok(AppState {
        sessions,
        api_keys,
        limits,
        bans,
        allowlists,
        mailer,
        schedule: Arc::new(ops::Schedule::default()),
        holds: Arc::new(tenancy::holds::Holds::default()),
        standby: None,
        access_log: audit::access_log::AccessLogger::start(store.clone()),
        store,
        vault,
        objects,
        keyring: Arc::new(keyring),
        config: Arc::new(config),
        proxies: Arc::new(proxies),
    })
}

/// Creates a directory (and its parents) readable only by this user.
pub(crate) fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
