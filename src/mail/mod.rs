//! Mail: the transport of IAM-2 (invitations, password resets, temporary
//! passwords, change notices) and of every later notice.
//!
//! * A mail is queued in the outbox (`mail_outbox`) inside the write job of
//!   the change that sends it ([`enqueue`]), so it goes out if and only if
//!   that change committed. Its addressee, subject and bodies are sealed
//!   with the tenant's data key (ENC-2) and dropped once it is sent or
//!   given up: the table never keeps a link, a password or an address
//!   longer than it takes to deliver.
//! * The delivery job ([`deliver`], `mail.deliver`) runs on the node that
//!   holds its lease, at once when a queued mail commits (on any node: the
//!   write announces it) and every [`SWEEP`] for retries. Each mail is
//!   claimed with a guarded update before it is sent, so two nodes never
//!   both send it; a relay that defers is tried again with a growing
//!   backoff, up to [`MAX_ATTEMPTS`]; a 5xx refusal gives up at once.
//! * Messages come from templates compiled into the binary, one file per
//!   language ([`templates`]), in the tenant's language.
//! * Operators see the queue (`GET /api/v1/ops/mail`): counts by state,
//!   the oldest waiting mail's age, and recent failures — never addressees.

pub mod http;
pub mod sms;
pub mod smtp;
pub mod templates;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::context::TenantScope;
use crate::crypto::Vault;
use crate::store::db;
use crate::store::{Store, StoreError, WriteTx};
pub use smtp::Smtp;
pub use templates::Rendered;

/// The schema migration that brought the outbox.
pub const SCHEMA: i64 = 11;
/// The entity kind the delivery job watches: a job that queues a mail
/// touches it.
pub const KIND: &str = "mail";
const KINDS: &[&str] = &[KIND];
/// How often every tenant's queue is looked at, for retries and mails whose
/// announcement was missed.
pub const SWEEP: Duration = Duration::from_secs(30);
/// Attempts before a mail is given up.
pub const MAX_ATTEMPTS: i64 = 8;
/// A mail claimed longer ago than this by a node that then died is sent
/// again (delivery is at least once).
const CLAIM_LIFETIME: time::Duration = time::Duration::minutes(5);
/// Mails taken from one tenant's queue in one run at most.
const BATCH: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] templates::TemplateError),
    #[error("cannot seal the mail: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl From<db::Error> for MailError {
    fn from(e: db::Error) -> Self {
        MailError::Store(e.into())
    }
}

/// The instance's mail service: the relay (if one is configured), where
/// links point, and who to wake when mail is queued.
pub struct Mailer {
    smtp: Option<Smtp>,
    /// Where text messages go (IAM-3's SMS codes), if anywhere.
    sms: Option<std::sync::Arc<dyn sms::SmsSender>>,
    public_url: String,
    wake: Notify,
    /// Tenants with mail queued since the last run; `None` in it: any.
    woken: Mutex<HashSet<Option<String>>>,
}

impl Mailer {
    /// The mail service `config` describes: its relay (if `smtp_url` is
    /// set) and where links point.
    pub fn from_config(config: &crate::config::Config) -> Result<Mailer, String> {
        let smtp = match &config.smtp_url {
            Some(url) => Some(Smtp::new(
                url,
                &config.smtp_from,
                config.smtp_username.as_deref(),
                config.smtp_password.as_ref(),
            )?),
            None => None,
        };
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen));
        let mut mailer = Mailer::new(smtp, &public_url);
        if let (Some(url), Some(secret)) = (&config.sms_webhook_url, &config.sms_webhook_secret) {
            mailer.sms = Some(std::sync::Arc::new(sms::Webhook::new(url, secret.clone())?));
        }
        Ok(mailer)
    }

    pub fn new(smtp: Option<Smtp>, public_url: &str) -> Mailer {
        Mailer {
            smtp,
            sms: None,
            public_url: public_url.trim_end_matches('/').to_owned(),
            wake: Notify::new(),
            woken: Mutex::new(HashSet::new()),
        }
    }

    /// Whether mails are sent at all (`smtp_url` is set).
    pub fn is_configured(&self) -> bool {
        self.smtp.is_some()
    }

    /// Where the product's front end is (`public_url`), without a final `/`.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Where text messages go, when `sms_webhook_url` is set.
    pub fn sms(&self) -> Option<&dyn sms::SmsSender> {
        self.sms.as_deref()
    }

    pub fn smtp(&self) -> Option<&Smtp> {
        self.smtp.as_ref()
    }

    /// A link for a mail: `public_url`, the path the product's front end
    /// serves, and the token in the fragment (a browser never sends a
    /// fragment to a server, so the token stays out of access logs and
    /// `Referer` headers).
    pub fn link(&self, path: &str, token: &str) -> String {
        format!("{}{path}#token={token}", self.public_url)
    }

    /// Wakes the delivery job for `tenant`'s queue (`None`: every tenant's).
    pub fn wake(&self, tenant: Option<&str>) {
        if let Ok(mut woken) = self.woken.lock() {
            woken.insert(tenant.map(str::to_owned));
        }
        self.wake.notify_one();
    }

    /// Listens for mail queued on any node.
    pub async fn watch(self: &Arc<Self>, store: &Store) -> Result<(), StoreError> {
        let mailer = Arc::clone(self);
        store.watch(KINDS, move |tenant| mailer.wake(tenant)).await
    }

    /// Waits until mail is queued or `every` has passed.
    pub async fn woken_or(&self, every: Duration) {
        let _ = tokio::time::timeout(every, self.wake.notified()).await;
    }

    fn take_woken(&self) -> HashSet<Option<String>> {
        self.woken
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}

/// A mail to queue: the addressee, the template and its values.
pub struct Mail {
    pub to: String,
    pub template: &'static str,
    pub values: Vec<(&'static str, String)>,
}

/// What a tenant's mails say about it.
#[derive(Clone, Debug)]
pub struct Letterhead {
    pub tenant_name: String,
    pub language: String,
}

/// The tenant's name and mail language, read before the write that mails.
pub async fn letterhead(store: &Store, scope: &TenantScope) -> Result<Letterhead, StoreError> {
    let mut tx = store.read(scope).await?;
    letterhead_of(tx.conn(), scope, store.schema_has(SCHEMA)).await
}

/// The letterhead, read inside a write (where mail is on, so the schema
/// has the tenant's language).
pub async fn letterhead_in(
    conn: &mut db::Conn,
    scope: &TenantScope,
) -> Result<Letterhead, StoreError> {
    letterhead_of(conn, scope, true).await
}

async fn letterhead_of(
    conn: &mut db::Conn,
    scope: &TenantScope,
    has_language: bool,
) -> Result<Letterhead, StoreError> {
    let language = if has_language {
        "(SELECT language FROM tenant_settings WHERE tenant_id = t.id)"
    } else {
        "NULL"
    };
    let row = db::query(format!(
        "SELECT t.name, {language} FROM tenants t WHERE t.id = $1"
    ))
    .bind(scope.id_str())
    .fetch_optional(conn)
    .await?;
    let (tenant_name, language): (String, Option<String>) = match row {
        Some(row) => (row.try_get(0)?, row.try_get(1)?),
        None => (String::new(), None),
    };
    Ok(Letterhead {
        tenant_name,
        language: language.unwrap_or_else(|| templates::DEFAULT_LANGUAGE.to_owned()),
    })
}

/// What is sealed in an outbox row.
#[derive(Serialize, Deserialize)]
struct Envelope {
    to: String,
    #[serde(flatten)]
    message: Rendered,
}

fn aad(tenant: &str, id: &str) -> Vec<u8> {
    format!("strongroom/v1/mail/{tenant}/{id}").into_bytes()
}

/// Queues `mail` in the job's transaction: rendered in the tenant's
/// language with `letterhead`'s name as `{{tenant}}`, sealed with the
/// tenant's key. The delivery job hears of it when the job commits.
pub async fn enqueue(
    tx: &mut WriteTx,
    vault: &Vault,
    letterhead: &Letterhead,
    mail: Mail,
) -> Result<(), MailError> {
    let mut values: Vec<(&str, &str)> = vec![("tenant", &letterhead.tenant_name)];
    values.extend(mail.values.iter().map(|(k, v)| (*k, v.as_str())));
    let message = templates::render(mail.template, &letterhead.language, &values)?;
    let id = uuid::Uuid::now_v7().to_string();
    let tenant = tx.scope().id_str().to_owned();
    let key = vault.active_in(tx).await?;
    let envelope = serde_json::to_vec(&Envelope {
        to: mail.to,
        message,
    })
    .expect("an envelope serialises");
    let sealed = key.key.seal(&aad(&tenant, &id), &envelope);
    let now = crate::clock::now();
    db::query(
        "INSERT INTO mail_outbox (id, tenant_id, template, state, attempts, next_attempt_at, \
         key_version, sealed, created_at) VALUES ($1, $2, $3, 'pending', 0, $4, $5, $6, $4)",
    )
    .bind(&id)
    .bind(&tenant)
    .bind(mail.template)
    .bind(&now)
    .bind(key.version)
    .bind(sealed)
    .execute(tx.conn())
    .await?;
    tx.touch(KIND);
    Ok(())
}

/// Backoff before attempt `attempts + 1`: 30 s, 1, 2, 4 … minutes, at
/// most 2 hours.
fn backoff(attempts: i64) -> time::Duration {
    let seconds = 30i64.saturating_mul(1 << attempts.clamp(0, 8));
    time::Duration::seconds(seconds.min(7200))
}

/// One run of the delivery job over `scopes` (every tenant) — only the
/// tenants woken since the last run, unless `sweep` (or a missed
/// announcement) asks for all. Returns what it did, for the heartbeat.
pub async fn deliver(
    mailer: &Mailer,
    store: &Store,
    vault: &Vault,
    scopes: &[TenantScope],
    sweep: bool,
) -> Result<String, MailError> {
    let Some(smtp) = mailer.smtp() else {
        return Ok("no smtp_url: mail is off".to_owned());
    };
    if !store.schema_has(SCHEMA) {
        return Ok("the schema has no outbox yet".to_owned());
    }
    let woken = mailer.take_woken();
    let all = sweep || woken.contains(&None);
    let mut sent = 0;
    let mut failed = 0;
    let mut deferred = 0;
    for scope in scopes {
        if !all && !woken.contains(&Some(scope.id_str().to_owned())) {
            continue;
        }
        if all {
            release_stale_claims(store, scope).await?;
        }
        let (s, d, f) = deliver_tenant(smtp, store, vault, scope).await?;
        sent += s;
        deferred += d;
        failed += f;
    }
    Ok(format!(
        "{sent} sent, {deferred} deferred, {failed} given up ({})",
        if all { "all tenants" } else { "woken tenants" }
    ))
}

async fn release_stale_claims(store: &Store, scope: &TenantScope) -> Result<(), StoreError> {
    let before = crate::clock::format(time::OffsetDateTime::now_utc() - CLAIM_LIFETIME);
    let tenant = scope.id_str().to_owned();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                db::query(
                    "UPDATE mail_outbox SET state = 'pending', claimed_at = NULL \
                     WHERE tenant_id = $1 AND state = 'sending' AND claimed_at < $2",
                )
                .bind(tenant)
                .bind(before)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
}

/// Sends what is due in one tenant's queue: (sent, deferred, given up).
async fn deliver_tenant(
    smtp: &Smtp,
    store: &Store,
    vault: &Vault,
    scope: &TenantScope,
) -> Result<(u32, u32, u32), MailError> {
    let tenant = scope.id_str().to_owned();
    let mut tx = store.read(scope).await?;
    let due = db::query(
        "SELECT id, attempts, key_version, sealed FROM mail_outbox \
         WHERE tenant_id = $1 AND state = 'pending' AND next_attempt_at <= $2 \
         ORDER BY created_at, id LIMIT $3",
    )
    .bind(&tenant)
    .bind(crate::clock::now())
    .bind(BATCH)
    .fetch_all(tx.conn())
    .await?;
    let (mut sent, mut deferred, mut failed) = (0, 0, 0);
    for row in due {
        let id: String = row.try_get(0)?;
        let attempts: i64 = row.try_get(1)?;
        let version: Option<i64> = row.try_get(2)?;
        let sealed: Option<Vec<u8>> = row.try_get(3)?;
        if !claim(store, scope, &id).await? {
            continue; // another node took it
        }
        let opened = match (version, sealed) {
            (Some(version), Some(sealed)) => match vault.key(tx.conn(), &tenant, version).await {
                Ok(key) => key
                    .open(&aad(&tenant, &id), &sealed)
                    .ok()
                    .and_then(|clear| serde_json::from_slice::<Envelope>(&clear).ok())
                    .ok_or("the sealed mail does not open"),
                Err(_) => Err("the tenant's key is gone"),
            },
            _ => Err("the mail has no content"),
        };
        let outcome = match opened {
            Ok(envelope) => smtp.send(&envelope.to, &envelope.message).await,
            Err(reason) => Err(smtp::SendError {
                permanent: true,
                reason: reason.to_owned(),
            }),
        };
        let attempts = attempts + 1;
        match outcome {
            Ok(()) => {
                settle(store, scope, &id, Settled::Sent, attempts).await?;
                sent += 1;
            }
            Err(e) if !e.permanent && attempts < MAX_ATTEMPTS => {
                tracing::warn!(
                    tenant,
                    mail = id,
                    reason = e.reason,
                    attempts,
                    "mail deferred"
                );
                settle(store, scope, &id, Settled::Retry(e.reason), attempts).await?;
                deferred += 1;
            }
            Err(e) => {
                tracing::error!(
                    tenant,
                    mail = id,
                    reason = e.reason,
                    attempts,
                    "mail given up"
                );
                settle(store, scope, &id, Settled::Failed(e.reason), attempts).await?;
                failed += 1;
            }
        }
    }
    Ok((sent, deferred, failed))
}

/// Takes a pending mail for this node: true if no other node took it first.
async fn claim(store: &Store, scope: &TenantScope, id: &str) -> Result<bool, StoreError> {
    let (tenant, id) = (scope.id_str().to_owned(), id.to_owned());
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                let done = db::query(
                    "UPDATE mail_outbox SET state = 'sending', claimed_at = $3 \
                     WHERE tenant_id = $1 AND id = $2 AND state = 'pending'",
                )
                .bind(tenant)
                .bind(id)
                .bind(crate::clock::now())
                .execute(conn)
                .await?;
                Ok(done.rows_affected() == 1)
            })
        })
        .await
}

enum Settled {
    Sent,
    Retry(String),
    Failed(String),
}

async fn settle(
    store: &Store,
    scope: &TenantScope,
    id: &str,
    settled: Settled,
    attempts: i64,
) -> Result<(), StoreError> {
    let (tenant, id) = (scope.id_str().to_owned(), id.to_owned());
    let now = time::OffsetDateTime::now_utc();
    store
        .append_internal(Some(scope), move |conn| {
            Box::pin(async move {
                let query = match settled {
                    // What was sent is dropped: only that it was stays.
                    Settled::Sent => db::query(
                        "UPDATE mail_outbox SET state = 'sent', sent_at = $3, attempts = $4, \
                         sealed = NULL, claimed_at = NULL, last_error = NULL \
                         WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant)
                    .bind(id)
                    .bind(crate::clock::format(now))
                    .bind(attempts),
                    Settled::Retry(reason) => db::query(
                        "UPDATE mail_outbox SET state = 'pending', next_attempt_at = $3, \
                         attempts = $4, claimed_at = NULL, last_error = $5 \
                         WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant)
                    .bind(id)
                    .bind(crate::clock::format(now + backoff(attempts)))
                    .bind(attempts)
                    .bind(reason),
                    Settled::Failed(reason) => db::query(
                        "UPDATE mail_outbox SET state = 'failed', attempts = $3, sealed = NULL, \
                         claimed_at = NULL, last_error = $4 WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant)
                    .bind(id)
                    .bind(attempts)
                    .bind(reason),
                };
                query.execute(conn).await?;
                Ok(())
            })
        })
        .await
}

/// The queue as operators see it.
#[derive(Debug, Default, Serialize)]
pub struct QueueStatus {
    pub configured: bool,
    pub pending: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    /// Seconds the oldest pending mail has waited.
    pub oldest_pending_seconds: Option<i64>,
    /// The latest mails given up or deferred: template, attempts, reason.
    pub recent_problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub tenant_id: String,
    pub template: String,
    pub state: String,
    pub attempts: i64,
    pub error: String,
    pub created_at: String,
}

/// The queue of every tenant in `scopes`.
pub async fn status(
    configured: bool,
    store: &Store,
    scopes: &[TenantScope],
) -> Result<QueueStatus, StoreError> {
    let mut out = QueueStatus {
        configured,
        ..QueueStatus::default()
    };
    if !store.schema_has(SCHEMA) {
        return Ok(out);
    }
    let now = time::OffsetDateTime::now_utc();
    for scope in scopes {
        let mut tx = store.read(scope).await?;
        let rows = db::query(
            "SELECT state, COUNT(*), MIN(created_at) FROM mail_outbox WHERE tenant_id = $1 \
             GROUP BY state",
        )
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?;
        for row in rows {
            let state: String = row.try_get(0)?;
            let count: i64 = row.try_get(1)?;
            match state.as_str() {
                "pending" => {
                    out.pending += count;
                    let oldest: Option<String> = row.try_get(2)?;
                    let age = oldest
                        .as_deref()
                        .and_then(crate::clock::parse_rfc3339)
                        .map(|at| (now - at).whole_seconds().max(0));
                    out.oldest_pending_seconds = out.oldest_pending_seconds.max(age);
                }
                "sending" => out.sending += count,
                "sent" => out.sent += count,
                _ => out.failed += count,
            }
        }
        let problems = db::query(
            "SELECT template, state, attempts, last_error, created_at FROM mail_outbox \
             WHERE tenant_id = $1 AND last_error IS NOT NULL ORDER BY created_at DESC LIMIT 20",
        )
        .bind(scope.id_str())
        .fetch_all(tx.conn())
        .await?;
        for row in problems {
            out.recent_problems.push(Problem {
                tenant_id: scope.id_str().to_owned(),
                template: row.try_get(0)?,
                state: row.try_get(1)?,
                attempts: row.try_get(2)?,
                error: row.try_get(3)?,
                created_at: row.try_get(4)?,
            });
        }
    }
    out.recent_problems
        .sort_by(|a, b| b.created_at.cmp(&a.created_at));
    out.recent_problems.truncate(20);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_two_hours() {
        assert_eq!(backoff(0), time::Duration::seconds(30));
        assert_eq!(backoff(1), time::Duration::minutes(1));
        assert_eq!(backoff(3), time::Duration::minutes(4));
        assert_eq!(backoff(20), time::Duration::hours(2));
    }

    #[test]
    fn links_carry_the_token_in_the_fragment() {
        let mailer = Mailer::new(None, "https://app.example.com/");
        assert_eq!(
            mailer.link("/invitation", "sr_inv_x"),
            "https://app.example.com/invitation#token=sr_inv_x"
        );
    }
}
