//! Configuration: one TOML file plus `STRONGROOM_*` environment overrides,
//! loaded once and passed down as a value. Every setting has a safe default:
//! with no configuration at all the server runs on `./strongroom-data` with
//! SQLite, bound to 127.0.0.1.

mod addresses;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use addresses::{SmtpRelay, SmtpSecurity, StoreUrl, SyslogTarget, TrustedProxies};

/// Keys that may come from `STRONGROOM_*` variables. Other variables with the
/// prefix (e.g. test-harness settings) are ignored rather than refused.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "environment",
    "log_format",
    "log_level",
    "invitation_ttl_hours",
    "api_key_max_age_days",
    "session_ttl_hours",
    "master_key",
    "database_max_connections",
    "audit_checkpoint_seconds",
    "trusted_proxies",
    "access_log",
    "retention_interval_seconds",
    "syslog_url",
    "object_store_url",
    "object_store_access_key_id",
    "object_store_secret_access_key",
    "object_store_replica_url",
    "object_store_replica_access_key_id",
    "object_store_replica_secret_access_key",
    "backup",
    "backup_url",
    "backup_access_key_id",
    "backup_secret_access_key",
    "backup_lag_alert_seconds",
    "backup_snapshot_hours",
    "backup_drill_hours",
    "backup_retention_days",
    "backup_primary_url",
    "backup_auto_restore",
    "integrity_check_minutes",
    "operator_email",
    "file_sweep_seconds",
    "key_cache_seconds",
    "migrate_until",
    "tls_cert",
    "tls_key",
    "http_redirect_listen",
    "header_read_timeout_seconds",
    "request_timeout_seconds",
    "keep_alive_seconds",
    "max_connections",
    "max_connections_per_ip",
    "login_attempts_per_minute_per_ip",
    "login_attempts_per_minute_per_account",
    "rate_limit_exempt",
    "requests_per_second_per_user",
    "requests_per_second_per_ip",
    "requests_per_second_per_tenant",
    "ban_after_strikes",
    "ban_window_seconds",
    "ban_seconds",
    "metrics_listen",
    "body_idle_timeout_seconds",
    "anonymous_log_retention_days",
    "posture_interval_seconds",
    "advisory_db",
    "smtp_url",
    "smtp_username",
    "smtp_password",
    "smtp_from",
    "public_url",
    "login_lockout",
    "sms_webhook_url",
    "sms_webhook_secret",
];

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds to.
    pub listen: SocketAddr,
    /// Where the SQLite database, the master key file and local files live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; defaults to `<data_dir>/strongroom.db`.
    pub database_url: Option<SecretString>,
    pub environment: Environment,
    pub log_format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `strongroom=debug`.
    pub log_level: String,
    pub invitation_ttl_hours: u32,
    /// The age past which the posture report fails an API key that never
    /// expires (ACC-1).
    pub api_key_max_age_days: u32,
    /// Absolute lifetime of a login session (its refresh tokens).
    pub session_ttl_hours: u32,
    /// Base64 of 32 bytes. When unset, the key file in the data dir is used
    /// (created with mode 0600 on first start).
    pub master_key: Option<SecretString>,
    pub database_max_connections: u32,
    /// How often the head of every tenant's audit chain is signed.
    pub audit_checkpoint_seconds: u64,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR blocks
    /// (a TOML list, or comma-separated in the environment).
    #[serde(deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<String>,
    /// Record every request in the access log (AUD-2). Only benchmarks turn
    /// it off, to measure what it costs.
    pub access_log: bool,
    /// How often expired audit events and access-log rows are purged.
    pub retention_interval_seconds: u64,
    /// Ship logs, audit events and security events to syslog (RFC 5424):
    /// `udp://host:port` or `tcp://host:port`.
    pub syslog_url: Option<String>,
    /// Where files go (FIL-1): `file:///path` or
    /// `s3://bucket/prefix?endpoint=https://…&region=…`; defaults to
    /// `<data_dir>/objects`.
    pub object_store_url: Option<String>,
    /// S3 credentials; when unset, the standard `AWS_*` variables apply.
    pub object_store_access_key_id: Option<String>,
    pub object_store_secret_access_key: Option<SecretString>,
    /// A second store that receives every object (FIL-5).
    pub object_store_replica_url: Option<String>,
    pub object_store_replica_access_key_id: Option<String>,
    pub object_store_replica_secret_access_key: Option<SecretString>,
    /// BAK-1: ship every tenant's journal to the backup target (`serve`).
    pub backup: bool,
    /// The backup target: `file:///path` or `s3://bucket/prefix?…`; by
    /// default `<data dir's parent>/strongroom-backups/<data dir name>`.
    /// Never inside the data dir, nor on the file store's location.
    pub backup_url: Option<String>,
    /// S3 credentials of the backup target's own.
    pub backup_access_key_id: Option<String>,
    pub backup_secret_access_key: Option<SecretString>,
    /// Past this lag of shipping behind the journal, a security event.
    pub backup_lag_alert_seconds: u64,
    /// How old a tenant's newest snapshot may get before the next is taken
    /// (BAK-2; default 24: daily).
    pub backup_snapshot_hours: u64,
    /// How long snapshots and segments are kept (BAK-2; default 30, at
    /// least 7): every point in that window stays restorable.
    pub backup_retention_days: u64,
    /// How often the restore drill runs (BAK-6; default 24: daily).
    pub backup_drill_hours: u64,
    /// On a standby (`serve --follow`): the primary its refused writes name.
    pub backup_primary_url: Option<String>,
    /// Whether a tenant whose live rows fail the integrity check is
    /// restored from its latest backup at once (BAK-4; default off: it is
    /// refused, and the operators are told how to restore it).
    pub backup_auto_restore: bool,
    /// How often the integrity check runs (BAK-4; default 60; 0: only at
    /// start).
    pub integrity_check_minutes: u64,
    /// Who is mailed when a check finds corruption (needs `smtp_url`).
    #[serde(deserialize_with = "list_or_commas")]
    pub operator_email: Vec<String>,
    /// How often objects of deleted files are removed from the stores.
    pub file_sweep_seconds: u64,
    /// How long unwrapped data keys stay in memory. A key revoked or
    /// destroyed through another server process stops working here within
    /// this time (at once on the process that did it); 0 disables the cache.
    pub key_cache_seconds: u64,
    /// Apply schema migrations only up to this version (an upgrade rehearsal,
    /// or app servers of two releases on one database during a roll-out);
    /// unset, all of them.
    pub migrate_until: Option<i64>,
    /// PEM certificate chain and private key: with both, the listener
    /// speaks HTTPS only (TLS 1.2/1.3, HTTP/2 and HTTP/1.1), and reloads
    /// them on SIGHUP or when the files change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// With TLS on: a plain-HTTP address that answers only with a `308`
    /// redirect to HTTPS.
    pub http_redirect_listen: Option<SocketAddr>,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout_seconds: u64,
    /// How long a request may take in all (streaming file routes excepted).
    pub request_timeout_seconds: u64,
    /// How long an idle kept-alive connection stays open.
    pub keep_alive_seconds: u64,
    /// Open connections at most; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_ip: usize,
    /// Password attempts (login, invitation acceptance) a minute from one
    /// client address, and for one account, in bursts of as many.
    pub login_attempts_per_minute_per_ip: u32,
    pub login_attempts_per_minute_per_account: u32,
    /// Addresses or CIDR blocks never rate-limited (a load generator).
    #[serde(deserialize_with = "list_or_commas")]
    pub rate_limit_exempt: Vec<String>,
    /// Authenticated requests a second for one user, from one client
    /// address, and for one tenant, in bursts of as many.
    pub requests_per_second_per_user: u32,
    pub requests_per_second_per_ip: u32,
    pub requests_per_second_per_tenant: u32,
    /// A client address with more than this many `401`, `404` or `405`
    /// answers within `ban_window_seconds` is refused for `ban_seconds`
    /// (doubling for each ban within a day, up to 24 h).
    pub ban_after_strikes: u32,
    pub ban_window_seconds: u64,
    pub ban_seconds: u64,
    /// Serve Prometheus metrics on this address (`GET /metrics`); off when
    /// unset, and never on the public listener.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a request body may stall between two chunks.
    pub body_idle_timeout_seconds: u64,
    /// How long access-log rows of requests nobody was authenticated for
    /// are kept (they belong to no tenant's retention).
    pub anonymous_log_retention_days: u32,
    /// How often the posture job runs every live check and keeps the
    /// signed report (POS-1).
    pub posture_interval_seconds: u64,
    /// A RustSec advisory-db checkout the posture check of OPS-2 reads.
    pub advisory_db: Option<PathBuf>,
    /// The mail relay (`mail::smtp`): `smtp://host:port` (plain, for a relay
    /// on this machine), `smtp+starttls://host:port` or `smtps://host:port`.
    /// Unset, nothing is mailed, and invitation tokens are returned to the
    /// inviter instead.
    pub smtp_url: Option<String>,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<SecretString>,
    /// The sender of every mail, e.g. `Acme <noreply@acme.example>`.
    pub smtp_from: String,
    /// Where the product's front end is, for links in mails: it serves
    /// `/invitation` and `/password-reset`, which take `#token=…`. Unset,
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// Failed logins slow the next attempt (1, 3, 5, 10 s) and ten within
    /// 15 minutes lock the account for 15 minutes (IAM-6). Only load and
    /// limiter tests turn it off.
    pub login_lockout: bool,
    /// Where SMS one-time codes go (IAM-3, `mail::sms`): an HTTP(S) webhook
    /// in front of the operator's SMS provider, given `{"to", "text"}` and
    /// an HMAC-SHA-256 signature under `sms_webhook_secret`. Unset, there
    /// is no SMS factor.
    pub sms_webhook_url: Option<String>,
    pub sms_webhook_secret: Option<SecretString>,
}

/// One `@` between a local part and a dotted domain, no spaces.
fn looks_like_address(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !text.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::Text(text) => text
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line: what log collectors and SIEMs ingest.
    #[default]
    Json,
    Text,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./strongroom-data"),
            database_url: None,
            environment: Environment::Development,
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
            invitation_ttl_hours: 72,
            api_key_max_age_days: 90,
            session_ttl_hours: 24 * 30,
            master_key: None,
            database_max_connections: 16,
            audit_checkpoint_seconds: 60,
            trusted_proxies: Vec::new(),
            access_log: true,
            retention_interval_seconds: 3600,
            syslog_url: None,
            object_store_url: None,
            object_store_access_key_id: None,
            object_store_secret_access_key: None,
            object_store_replica_url: None,
            object_store_replica_access_key_id: None,
            object_store_replica_secret_access_key: None,
            backup: true,
            backup_url: None,
            backup_access_key_id: None,
            backup_secret_access_key: None,
            backup_lag_alert_seconds: 60,
            backup_snapshot_hours: 24,
            backup_drill_hours: 24,
            backup_retention_days: 30,
            backup_primary_url: None,
            backup_auto_restore: false,
            integrity_check_minutes: 60,
            operator_email: Vec::new(),
            file_sweep_seconds: 60,
            key_cache_seconds: 60,
            migrate_until: None,
            tls_cert: None,
            tls_key: None,
            http_redirect_listen: None,
            header_read_timeout_seconds: 10,
            request_timeout_seconds: 30,
            keep_alive_seconds: 75,
            max_connections: 1000,
            max_connections_per_ip: 50,
            login_attempts_per_minute_per_ip: 30,
            login_attempts_per_minute_per_account: 5,
            rate_limit_exempt: Vec::new(),
            requests_per_second_per_user: 50,
            requests_per_second_per_ip: 300,
            requests_per_second_per_tenant: 1000,
            ban_after_strikes: 100,
            ban_window_seconds: 60,
            ban_seconds: 600,
            metrics_listen: None,
            body_idle_timeout_seconds: 10,
            anonymous_log_retention_days: 90,
            posture_interval_seconds: 3600,
            advisory_db: None,
            smtp_url: None,
            smtp_username: None,
            smtp_password: None,
            smtp_from: "Strongroom <noreply@localhost>".to_owned(),
            public_url: None,
            login_lockout: true,
            sms_webhook_url: None,
            sms_webhook_secret: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults, then the TOML file (when given), then `STRONGROOM_*`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("STRONGROOM_").only(ENV_KEYS));
        if std::env::var_os("STRONGROOM_OPERATOR_TOKEN").is_some() {
            return Err(ConfigError(
                "STRONGROOM_OPERATOR_TOKEN is gone: operators have accounts of their own with a \
                 second factor (`strongroom operator create --email … --role operator`)"
                    .into(),
            ));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.invitation_ttl_hours == 0 || self.session_ttl_hours == 0 {
            return Err(ConfigError(
                "invitation_ttl_hours and session_ttl_hours must be at least 1".into(),
            ));
        }
        if let Some(url) = &self.syslog_url {
            SyslogTarget::parse(url).map_err(ConfigError)?;
        }
        if self.retention_interval_seconds == 0 {
            return Err(ConfigError(
                "retention_interval_seconds must be at least 1".into(),
            ));
        }
        if self.audit_checkpoint_seconds == 0 {
            return Err(ConfigError(
                "audit_checkpoint_seconds must be at least 1".into(),
            ));
        }
        TrustedProxies::parse(&self.trusted_proxies).map_err(ConfigError)?;
        TrustedProxies::parse(&self.rate_limit_exempt)
            .map_err(|e| ConfigError(format!("rate_limit_exempt: {e}")))?;
        if self.login_attempts_per_minute_per_ip == 0
            || self.login_attempts_per_minute_per_account == 0
        {
            return Err(ConfigError(
                "login_attempts_per_minute_per_ip and _per_account must be at least 1".into(),
            ));
        }
        for url in [&self.object_store_url, &self.object_store_replica_url]
            .into_iter()
            .flatten()
        {
            StoreUrl::parse(url).map_err(ConfigError)?;
        }
        if let Some(url) = &self.backup_url {
            StoreUrl::parse(url).map_err(|e| ConfigError(format!("backup_url: {e}")))?;
        }
        if !(1..=24 * 7).contains(&self.backup_snapshot_hours) {
            return Err(ConfigError(
                "backup_snapshot_hours must be 1 to 168 (a snapshot at least weekly)".into(),
            ));
        }
        if !(7..=36_500).contains(&self.backup_retention_days) {
            return Err(ConfigError(
                "backup_retention_days must be at least 7 (and at most 36500)".into(),
            ));
        }
        if !(1..=24 * 183).contains(&self.backup_drill_hours) {
            return Err(ConfigError(
                "backup_drill_hours must be 1 to 4392 (a drill at least twice a year)".into(),
            ));
        }
        if self.integrity_check_minutes > 24 * 60 {
            return Err(ConfigError(
                "integrity_check_minutes must be 0 (at start only) to 1440 (daily)".into(),
            ));
        }
        if let Some(bad) = self.operator_email.iter().find(|a| !looks_like_address(a)) {
            return Err(ConfigError(format!(
                "operator_email: {bad:?} is not an e-mail address"
            )));
        }
        if self.file_sweep_seconds == 0 {
            return Err(ConfigError("file_sweep_seconds must be at least 1".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError(
                "tls_cert and tls_key go together: set both or neither".into(),
            ));
        }
        if self.http_redirect_listen.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError(
                "http_redirect_listen redirects to HTTPS: it needs tls_cert and tls_key".into(),
            ));
        }
        for (name, value) in [
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("request_timeout_seconds", self.request_timeout_seconds),
            ("keep_alive_seconds", self.keep_alive_seconds),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            (
                "requests_per_second_per_user",
                u64::from(self.requests_per_second_per_user),
            ),
            (
                "requests_per_second_per_ip",
                u64::from(self.requests_per_second_per_ip),
            ),
            (
                "requests_per_second_per_tenant",
                u64::from(self.requests_per_second_per_tenant),
            ),
            ("ban_after_strikes", u64::from(self.ban_after_strikes)),
            ("ban_window_seconds", self.ban_window_seconds),
            ("ban_seconds", self.ban_seconds),
            ("body_idle_timeout_seconds", self.body_idle_timeout_seconds),
            ("posture_interval_seconds", self.posture_interval_seconds),
            (
                "anonymous_log_retention_days",
                u64::from(self.anonymous_log_retention_days),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        if self.metrics_listen == Some(self.listen) {
            return Err(ConfigError(
                "metrics_listen must be an address of its own, never the public listener".into(),
            ));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError(
                "database_max_connections must be at least 1".into(),
            ));
        }
        if let Some(url) = &self.smtp_url {
            SmtpRelay::parse(url).map_err(ConfigError)?;
        }
        if self.smtp_username.is_some() != self.smtp_password.is_some() {
            return Err(ConfigError(
                "smtp_username and smtp_password go together: set both or neither".into(),
            ));
        }
        if self.sms_webhook_url.is_some() != self.sms_webhook_secret.is_some() {
            return Err(ConfigError(
                "sms_webhook_url and sms_webhook_secret go together: set both or neither".into(),
            ));
        }
        if let Some(url) = &self.sms_webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError(format!(
                "sms_webhook_url {url:?} must start with https:// (or http:// for local use)"
            )));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError(format!(
                "public_url {url:?} must start with https:// (or http:// for local use)"
            )));
        }
        Ok(())
    }

    /// What keeps this configuration from running as production (TEN-3),
    /// one line per problem; the master key is checked by the keyring.
    pub fn production_problems(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut problems = Vec::new();
        if self.tls_cert.is_none()
            && !self.listen.ip().is_loopback()
            && self.trusted_proxies.is_empty()
        {
            problems.push(format!(
                "listen {} is plain HTTP on a public address: set tls_cert and tls_key, \
                 or trusted_proxies for the proxy that ends TLS",
                self.listen
            ));
        }
        let level = self.log_level.to_ascii_lowercase();
        if level.contains("debug") || level.contains("trace") {
            problems.push(format!(
                "log_level {:?} logs debug detail: use info or above",
                self.log_level
            ));
        }
        if !self.access_log {
            problems.push("access_log is off: production records every request".to_owned());
        }
        if let Ok(meta) = std::fs::metadata(&self.data_dir)
            && meta.permissions().mode() & 0o077 != 0
        {
            problems.push(format!(
                "the data dir {} is open to group or others (chmod 700)",
                self.data_dir.display()
            ));
        }
        if let Some(relay) = self
            .smtp_url
            .as_deref()
            .and_then(|url| SmtpRelay::parse(url).ok())
            && relay.security == SmtpSecurity::Plain
            && !relay.is_local()
        {
            problems.push(format!(
                "smtp_url is plain SMTP to {}: links and passwords would cross the network in \
                 clear (use smtp+starttls:// or smtps://)",
                relay.host
            ));
        }
        if self
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with("http://"))
        {
            problems.push("public_url is http://: links in mails must be https://".to_owned());
        }
        if self
            .sms_webhook_url
            .as_deref()
            .is_some_and(|url| url.starts_with("http://"))
        {
            problems.push(
                "sms_webhook_url is http://: one-time codes would cross the network in clear"
                    .to_owned(),
            );
        }
        problems
    }

    /// The database URL, defaulting to the SQLite file in the data dir.
    pub fn database_url(&self) -> SecretString {
        match &self.database_url {
            Some(url) => url.clone(),
            None => SecretString::from(format!(
                "sqlite://{}",
                self.data_dir.join("strongroom.db").display()
            )),
        }
    }
}

/// Masks the database password and the master key (STYLE.md rule 5).
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &mask_url_password(self.database_url().expose_secret()),
            )
            .field("environment", &self.environment)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("invitation_ttl_hours", &self.invitation_ttl_hours)
            .field("api_key_max_age_days", &self.api_key_max_age_days)
            .field("session_ttl_hours", &self.session_ttl_hours)
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "[redacted]"),
            )
            .field("database_max_connections", &self.database_max_connections)
            .field("audit_checkpoint_seconds", &self.audit_checkpoint_seconds)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("access_log", &self.access_log)
            .field(
                "retention_interval_seconds",
                &self.retention_interval_seconds,
            )
            .field("syslog_url", &self.syslog_url)
            .field("object_store_url", &self.object_store_url)
            .field(
                "object_store_access_key_id",
                &self.object_store_access_key_id,
            )
            .field(
                "object_store_secret_access_key",
                &self
                    .object_store_secret_access_key
                    .as_ref()
                    .map(|_| "[redacted]"),
            )
            .field("object_store_replica_url", &self.object_store_replica_url)
            .field(
                "object_store_replica_access_key_id",
                &self.object_store_replica_access_key_id,
            )
            .field(
                "object_store_replica_secret_access_key",
                &self
                    .object_store_replica_secret_access_key
                    .as_ref()
                    .map(|_| "[redacted]"),
            )
            .field("backup", &self.backup)
            .field("backup_url", &self.backup_url)
            .field("backup_access_key_id", &self.backup_access_key_id)
            .field(
                "backup_secret_access_key",
                &self.backup_secret_access_key.as_ref().map(|_| "[redacted]"),
            )
            .field("backup_lag_alert_seconds", &self.backup_lag_alert_seconds)
            .field("backup_snapshot_hours", &self.backup_snapshot_hours)
            .field("backup_drill_hours", &self.backup_drill_hours)
            .field("backup_retention_days", &self.backup_retention_days)
            .field("backup_primary_url", &self.backup_primary_url)
            .field("backup_auto_restore", &self.backup_auto_restore)
            .field("integrity_check_minutes", &self.integrity_check_minutes)
            .field("operator_email", &self.operator_email)
            .field("file_sweep_seconds", &self.file_sweep_seconds)
            .field("key_cache_seconds", &self.key_cache_seconds)
            .field("migrate_until", &self.migrate_until)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("http_redirect_listen", &self.http_redirect_listen)
            .field(
                "header_read_timeout_seconds",
                &self.header_read_timeout_seconds,
            )
            .field("request_timeout_seconds", &self.request_timeout_seconds)
            .field("keep_alive_seconds", &self.keep_alive_seconds)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field(
                "login_attempts_per_minute_per_ip",
                &self.login_attempts_per_minute_per_ip,
            )
            .field(
                "login_attempts_per_minute_per_account",
                &self.login_attempts_per_minute_per_account,
            )
            .field("rate_limit_exempt", &self.rate_limit_exempt)
            .field(
                "requests_per_second_per_user",
                &self.requests_per_second_per_user,
            )
            .field(
                "requests_per_second_per_ip",
                &self.requests_per_second_per_ip,
            )
            .field(
                "requests_per_second_per_tenant",
                &self.requests_per_second_per_tenant,
            )
            .field("ban_after_strikes", &self.ban_after_strikes)
            .field("ban_window_seconds", &self.ban_window_seconds)
            .field("ban_seconds", &self.ban_seconds)
            .field("metrics_listen", &self.metrics_listen)
            .field("body_idle_timeout_seconds", &self.body_idle_timeout_seconds)
            .field(
                "anonymous_log_retention_days",
                &self.anonymous_log_retention_days,
            )
            .field("posture_interval_seconds", &self.posture_interval_seconds)
            .field("advisory_db", &self.advisory_db)
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:[redacted]@host/db`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_database_password() {
        let config = Config {
            database_url: Some(SecretString::from("postgres://app:hunter2hunter2@db/app")),
            master_key: Some(SecretString::from("c2VjcmV0")),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2hunter2"), "{shown}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(
            shown.contains("postgres://app:[redacted]@db/app"),
            "{shown}"
        );
    }
}
