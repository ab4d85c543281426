//! Sessions (IAM-5): login opens a session and returns a 60-second access
//! token plus a refresh token. Each refresh token works once: using it
//! returns a new pair, and presenting an already-used one means it was
//! stolen or replayed, so the whole session is revoked (reuse detection,
//! as in OAuth 2.0 Security BCP §4.14). Every request re-checks that the
//! session is live, so logout and revocation take effect at once rather
//! than after the access token expires. A node reuses a check for at most
//! [`SESSION_CHECK_TTL`], and forgets it as soon as the write path commits
//! a change to a session, user or tenant ([`SessionCache`]).

use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;

use super::lockout;
use super::post::Post;
use super::revoke::{revoke_all_but, revoke_session};
use super::tokens::{
    ACCESS_TOKEN_TTL_SECONDS, AccessClaims, OpaqueToken, TokenKind, sign_access_token,
    verify_access_token,
};
use super::{Email, IdentityError, password};
use crate::access::{Abilities, Principal, PrincipalKind, Role};
use crate::context::Permit;
use crate::context::{Actor, ActorKind, Outcome, RequestMeta};
use crate::context::{TenantId, TenantScope};
use crate::store::db;
use crate::store::{Change, JournalOp, Store, WriteTx};
use crate::tenancy;

/// What a successful login, refresh or invitation acceptance returns.
#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    /// A new device's token (IAM-7): present it at the next login
    /// (`device_token`, or the `__Host-sr_device` cookie) to be recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    /// Set after an admin's reset: the tokens allow only the password
    /// change until it is made (IAM-2).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub password_change_required: bool,
    /// Until when this device skips the second factor, when the second
    /// step asked to trust it and the tenant allows it (IAM-3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_trusted_until: Option<String>,
    /// Who the tokens belong to (for the access log; not sent).
    #[serde(skip)]
    pub tenant_id: String,
    #[serde(skip)]
    pub user_id: String,
    #[serde(skip)]
    pub session_id: String,
}

fn token_pair(
    key: &SigningKey,
    scope: &TenantScope,
    user_id: &str,
    session_id: &str,
    refresh: &OpaqueToken,
) -> TokenPair {
    let claims = AccessClaims::new(user_id, scope.id_str(), session_id);
    TokenPair {
        access_token: sign_access_token(key, &claims),
        token_type: "Bearer",
        expires_in: ACCESS_TOKEN_TTL_SECONDS,
        refresh_token: refresh.reveal(),
        password_change_required: false,
        device_trusted_until: None,
        device_token: None,
        tenant_id: scope.id_str().to_owned(),
        user_id: user_id.to_owned(),
        session_id: session_id.to_owned(),
    }
}

struct LoginAccount {
    id: String,
    email: String,
    status: String,
    password_hash: Option<String>,
    must_change_password: bool,
}

/// What a login presents: the tenant and account as typed, the password,
/// and the device token of an earlier login, if the client kept one.
pub struct Credentials<'a> {
    pub tenant: &'a str,
    pub email: &'a str,
    pub password: SecretString,
    pub device_token: Option<SecretString>,
    /// Whether failures slow and lock (`login_lockout`).
    pub lockout: bool,
}

/// What a login's password step leads to: a session, or the second step.
#[derive(Debug)]
pub enum LoginOutcome {
    Tokens(TokenPair),
    SecondFactor(super::mfa::Challenge),
}

pub async fn login(
    store: &Store,
    post: &Post,
    key: &SigningKey,
    session_ttl_hours: u32,
    credentials: Credentials<'_>,
    meta: &RequestMeta,
) -> Result<LoginOutcome, IdentityError> {
    let Credentials {
        tenant: tenant_slug,
        email: typed_email,
        password,
        device_token,
        lockout,
    } = credentials;
    let scope = tenancy::find_active_by_slug(store, tenant_slug).await?;
    let email = Email::parse(typed_email).ok();
    let account = match (&scope, &email) {
        (Some(scope), Some(email)) => find_account(store, scope, email).await?,
        _ => None,
    };
    // IAM-6: the account's failures as typed (known or not alike), or a
    // known device's own, so that an attack elsewhere does not lock it.
    let device = match (&scope, &account) {
        (Some(scope), Some(account)) => {
            super::devices::recognise(
                store,
                scope,
                &account.id,
                device_token.as_ref().map(|t| t.expose_secret()),
            )
            .await?
        }
        _ => None,
    };
    let counter = match &device {
        Some(device) => lockout::device_key(&device.id),
        None => lockout::account_key(tenant_slug, typed_email),
    };
    let had_failures = lockout && lockout::gate(store, &counter).await?;
    // Always one Argon2 verification, whether or not the account exists.
    let matches = password::verify(
        password,
        account.as_ref().and_then(|a| a.password_hash.clone()),
    )
    .await?;
    let failed = match &account {
        Some(a) => !(matches && a.status == "active"),
        None => true,
    };
    if failed && lockout {
        let counted = lockout::failed(store, &counter).await?;
        if counted.locked_now {
            tracing::warn!(
                target: "security",
                event = "auth.account_locked",
                failures = counted.failures,
                device = device.is_some(),
                "too many failed logins: locked for {} minutes",
                lockout::LOCK_FOR.whole_minutes()
            );
        }
        if let Some(scope) = &scope {
            audit_failed_login(
                store,
                scope,
                email.as_ref(),
                account.as_ref().map(|a| a.id.clone()),
                counted.locked_now,
                meta,
            );
        }
    } else if failed && let Some(scope) = &scope {
        audit_failed_login(
            store,
            scope,
            email.as_ref(),
            account.as_ref().map(|a| a.id.clone()),
            false,
            meta,
        );
    }
    let Some(scope) = scope else {
        tracing::info!(
            event = "auth.login",
            outcome = "failure",
            "login for an unknown tenant"
        );
        return Err(IdentityError::InvalidCredentials);
    };
    let account = match account {
        Some(a) if !failed => a,
        _ => return Err(IdentityError::InvalidCredentials),
    };
    if had_failures {
        lockout::clear(store, &counter).await?;
    }
    // IAM-3: a user with a second factor gets the second step, not a
    // session, unless this device is trusted to skip it (and the tenant
    // still allows that).
    let methods = super::mfa::methods(store, &scope, &account.id).await?;
    let trusted = match &device {
        Some(device) if !methods.is_empty() => {
            super::devices::trusted(store, &scope, device).await?
        }
        _ => false,
    };
    if !methods.is_empty() && !trusted {
        let device_id = device.as_ref().map(|d| d.id.as_str());
        return Ok(LoginOutcome::SecondFactor(
            super::mfa::open_challenge(store, post, key, &scope, &account.id, device_id, methods)
                .await?,
        ));
    }
    let session = NewSession {
        scope,
        user_id: account.id,
        email: account.email,
        device,
        passed: None,
        trusted_device: trusted,
        trust_days: None,
        must_change_password: account.must_change_password,
    };
    Ok(LoginOutcome::Tokens(
        finish_login(store, post, key, session_ttl_hours, session, meta).await?,
    ))
}

/// A login that passed: who, from which device, with a second factor or not.
struct NewSession {
    scope: TenantScope,
    user_id: String,
    email: String,
    device: Option<super::devices::KnownDevice>,
    /// The second factor passed, to spend as the session opens.
    passed: Option<super::mfa::Spend>,
    /// A trusted device let the login skip the second factor.
    trusted_device: bool,
    /// Trust the device for so many days (the second step asked to).
    trust_days: Option<i64>,
    must_change_password: bool,
}

/// Opens the session of a login that passed, and takes note of its device.
async fn finish_login(
    store: &Store,
    post: &Post,
    key: &SigningKey,
    session_ttl_hours: u32,
    session: NewSession,
    meta: &RequestMeta,
) -> Result<TokenPair, IdentityError> {
    let NewSession {
        scope,
        user_id,
        email,
        device,
        passed,
        trusted_device,
        trust_days,
        must_change_password,
    } = session;
    let actor = Actor::user(user_id.clone(), email.clone());
    let permit = Permit::authentication(scope.clone(), actor);
    let session_ttl_hours = Bounds::of(store, &scope)
        .await?
        .ttl_hours(session_ttl_hours);
    // IAM-7: a known device is marked seen; any other is registered (and
    // announced to the user when they had another before), both in the
    // login's own write.
    let new_device = match &device {
        None if store.schema_has(super::devices::SCHEMA) => {
            Some(super::devices::NewDevice::new(store, post, &scope))
        }
        _ => None,
    };
    let device_id = match (&device, &new_device) {
        (Some(device), _) => Some(device.id.clone()),
        (None, Some(new)) => Some(new.id().to_owned()),
        (None, None) => None,
    };
    let device_token = new_device.as_ref().map(super::devices::NewDevice::reveal);
    let (user, mail, post_in) = (user_id.clone(), email.clone(), post.clone());
    let (session_id, refresh) = store
        .write(&permit, meta, "auth.login", move |tx| {
            Box::pin(async move {
                if let Some(passed) = &passed {
                    super::mfa::spend_in(tx, passed).await?;
                }
                let opened = open_session(tx, &user, session_ttl_hours).await?;
                if passed.is_some() {
                    super::mfa::passed_on_session(tx, &opened.0).await?;
                    tx.set_target("session", opened.0.clone());
                }
                if trusted_device {
                    tx.record(Change {
                        entity: "session",
                        entity_id: opened.0.clone(),
                        op: JournalOp::Update,
                        before: None,
                        after: Some(json!({"second_factor": "trusted_device"})),
                        sensitive: vec![],
                        diff_of: None,
                    });
                }
                match (&device, &new_device) {
                    (Some(device), _) => super::devices::seen_in(tx, device),
                    (None, Some(new)) => {
                        super::devices::register_in(tx, &post_in, new, &user, &mail).await?
                    }
                    (None, None) => {}
                }
                Ok::<_, IdentityError>(opened)
            })
        })
        .await?;
    // A second step that asked to trust its device (the tenant allowing).
    let trusted_until = match (trust_days, &device_id) {
        (Some(days), Some(id)) => {
            Some(super::devices::trust(store, &scope, &user_id, &email, id, days, meta).await?)
        }
        _ => None,
    };
    let mut pair = token_pair(key, &scope, &user_id, &session_id, &refresh);
    pair.password_change_required = must_change_password;
    pair.device_token = device_token;
    pair.device_trusted_until = trusted_until;
    Ok(pair)
}

/// The second step of a login: its token, and the code presented.
pub struct SecondStep<'a> {
    pub mfa_token: &'a str,
    pub method: super::mfa::Method,
    pub proof: &'a super::mfa::Proof,
    /// Trust this device to skip the second factor for the tenant's
    /// `mfa_trust_days` (ignored when the tenant allows none).
    pub trust_device: bool,
}

/// Completes a login's second step with a code (IAM-3).
pub async fn complete_login(
    store: &Store,
    post: &Post,
    key: &SigningKey,
    session_ttl_hours: u32,
    step: SecondStep<'_>,
    meta: &RequestMeta,
) -> Result<TokenPair, IdentityError> {
    let passed =
        super::mfa::pass_challenge(store, post, key, step.mfa_token, step.method, step.proof)
            .await?;
    let trust_days = if step.trust_device {
        super::devices::trust_days(store, &passed.scope).await?
    } else {
        None
    };
    let session = NewSession {
        device: passed.device_id.map(|id| super::devices::KnownDevice {
            id,
            trusted_until: None,
        }),
        scope: passed.scope,
        user_id: passed.user_id,
        email: passed.email,
        must_change_password: passed.must_change_password,
        passed: Some(passed.spend),
        trusted_device: false,
        trust_days,
    };
    finish_login(store, post, key, session_ttl_hours, session, meta).await
}

/// What a login with a passkey shows: the ticket it answers, the
/// browser's assertion, and the device token of an earlier login.
pub struct PasskeyLogin<'a> {
    pub ticket: &'a str,
    pub credential: &'a serde_json::Value,
    pub device_token: Option<&'a SecretString>,
}

/// A login with a passkey and no password (IAM-3): the assertion answers a
/// ticket from [`passkey_ticket`], by a passkey that verified its user. It
/// counts as password and second factor at once. Failures of every kind
/// (unknown tenant, unknown passkey, a bad signature) are the same 401.
pub async fn passkey_login(
    store: &Store,
    post: &Post,
    key: &SigningKey,
    session_ttl_hours: u32,
    shown: PasskeyLogin<'_>,
    meta: &RequestMeta,
) -> Result<TokenPair, IdentityError> {
    let PasskeyLogin {
        ticket,
        credential,
        device_token,
    } = shown;
    if !store.schema_has(super::mfa::passkeys::SCHEMA) {
        return Err(IdentityError::PasskeyRefused);
    }
    let presented = super::mfa::passkeys::open_login_ticket(store, key, ticket).await?;
    let found = super::mfa::passkeys::passwordless(store, post, &presented, credential).await?;
    let account = {
        let mut tx = store.read(&presented.scope).await?;
        db::query(
            "SELECT email, password_change_required FROM users WHERE tenant_id = $1 AND id = $2 \
             AND status = 'active'",
        )
        .bind(presented.scope.id_str())
        .bind(&found.user_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(IdentityError::PasskeyRefused)?
    };
    let (email, must_change): (String, i64) = (account.try_get(0)?, account.try_get(1)?);
    let device = match device_token {
        Some(token) => {
            super::devices::recognise(
                store,
                &presented.scope,
                &found.user_id,
                Some(token.expose_secret()),
            )
            .await?
        }
        None => None,
    };
    let session = NewSession {
        device,
        user_id: found.user_id,
        email,
        passed: Some(super::mfa::Spend::Ticket {
            hash: presented.hash,
            expires_at: presented.expires_at,
            factor_id: found.factor_id,
            counter: found.counter,
        }),
        scope: presented.scope,
        trusted_device: false,
        trust_days: None,
        must_change_password: must_change != 0,
    };
    finish_login(store, post, key, session_ttl_hours, session, meta).await
}

/// A ticket to log in with a passkey: for any tenant slug alike (the
/// tenant is looked up when the ticket is used; an unknown one then finds
/// no passkey), and nothing is read or written.
pub fn passkey_ticket(
    post: &Post,
    key: &SigningKey,
    tenant_slug: &str,
) -> Result<serde_json::Value, IdentityError> {
    let ticket = super::mfa::passkeys::issue_ticket(
        key,
        super::mfa::passkeys::TicketFor::Login(tenant_slug),
    );
    let options = super::mfa::passkeys::ticket_options(post, &ticket, &[], true)?;
    Ok(json!({
        "ticket": ticket.token,
        "expires_in": super::mfa::passkeys::TICKET_SECONDS,
        "passkey": options,
    }))
}

/// Audits a failed login (and a lock it caused) in the tenant's trail,
/// without the answer waiting for the commit: a failure for a tenant that
/// exists then answers in the time of one for a tenant that does not, so
/// timing does not tell which slugs exist.
fn audit_failed_login(
    store: &Store,
    scope: &TenantScope,
    email: Option<&Email>,
    user_id: Option<String>,
    locked: bool,
    meta: &RequestMeta,
) {
    let permit = Permit::authentication(
        scope.clone(),
        Actor::anonymous(email.map(|e| e.as_str().to_owned())),
    );
    let (store, meta) = (store.clone(), meta.clone());
    tokio::spawn(async move {
        for action in ["auth.login", "auth.account_locked"]
            .into_iter()
            .take(if locked { 2 } else { 1 })
        {
            let target = user_id.clone();
            let audited = store
                .write(&permit, &meta, action, move |tx| {
                    Box::pin(async move {
                        tx.set_outcome(Outcome::Failure);
                        if let Some(id) = target {
                            tx.set_target("user", id);
                        }
                        Ok::<_, IdentityError>(())
                    })
                })
                .await;
            if let Err(e) = audited {
                tracing::error!(error = %e, action, "could not audit a failed login");
            }
        }
    });
}

async fn find_account(
    store: &Store,
    scope: &TenantScope,
    email: &Email,
) -> Result<Option<LoginAccount>, IdentityError> {
    let mut tx = store.read(scope).await?;
    let must_change = if store.schema_has(crate::mail::SCHEMA) {
        "password_change_required"
    } else {
        "0"
    };
    let row = db::query(format!(
        "SELECT id, email, status, password_hash, {must_change} FROM users \
         WHERE tenant_id = $1 AND email = $2"
    ))
    .bind(scope.id_str())
    .bind(email.as_str())
    .fetch_optional(tx.conn())
    .await?;
    row.map(|row| {
        Ok(LoginAccount {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            status: row.try_get("status")?,
            password_hash: row.try_get("password_hash")?,
            must_change_password: row.try_get::<i64, _>(4)? != 0,
        })
    })
    .transpose()
}

/// Opens a session and issues its first refresh token, inside `tx`.
/// A tenant's bounds on its sessions (IAM-5): minutes without a refresh,
/// hours in all; 0 where the tenant leaves the instance's.
#[derive(Clone, Copy, Default)]
struct Bounds {
    idle_minutes: i64,
    max_hours: i64,
}

impl Bounds {
    async fn of(store: &Store, scope: &TenantScope) -> Result<Bounds, IdentityError> {
        if !store.schema_has(tenancy::SESSION_SETTINGS_SCHEMA) {
            return Ok(Bounds::default());
        }
        let mut tx = store.read(scope).await?;
        let row = db::query(
            "SELECT session_idle_minutes, session_max_hours FROM tenant_settings \
             WHERE tenant_id = $1",
        )
        .bind(scope.id_str())
        .fetch_optional(tx.conn())
        .await?;
        Ok(match row {
            Some(row) => Bounds {
                idle_minutes: row.try_get(0)?,
                max_hours: row.try_get(1)?,
            },
            None => Bounds::default(),
        })
    }

    /// A new session's lifetime: the instance's, or the tenant's if shorter.
    fn ttl_hours(self, instance: u32) -> u32 {
        match u32::try_from(self.max_hours) {
            Ok(max) if max > 0 => max.min(instance),
            _ => instance,
        }
    }

    /// Whether a session created and last used at these times is still
    /// within the tenant's bounds now (lowering a bound ends sessions at
    /// once, not only new ones).
    fn admit(self, created_at: &str, last_used_at: &str) -> bool {
        let now = time::OffsetDateTime::now_utc();
        let within = |at: &str, limit: time::Duration| {
            crate::clock::parse_rfc3339(at).is_some_and(|at| now - at <= limit)
        };
        (self.idle_minutes <= 0 || within(last_used_at, time::Duration::minutes(self.idle_minutes)))
            && (self.max_hours <= 0 || within(created_at, time::Duration::hours(self.max_hours)))
    }
}

async fn open_session(
    tx: &mut WriteTx,
    user_id: &str,
    ttl_hours: u32,
) -> Result<(String, OpaqueToken), IdentityError> {
    let tenant = tx.scope().id_str().to_owned();
    let now = crate::clock::now();
    let session_id = uuid::Uuid::now_v7().to_string();
    let expires_at = crate::clock::in_seconds(i64::from(ttl_hours) * 3600);
    let ip = tx.meta().ip.clone();
    let user_agent = tx.meta().user_agent.clone();
    db::query(
        "INSERT INTO sessions (id, tenant_id, user_id, created_at, last_used_at, expires_at, ip, user_agent) \
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
    )
    .bind(&session_id)
    .bind(&tenant)
    .bind(user_id)
    .bind(&now)
    .bind(&expires_at)
    .bind(ip.as_deref())
    .bind(user_agent.as_deref())
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "session",
        entity_id: session_id.clone(),
        op: JournalOp::Insert,
        before: None,
        after: Some(json!({
            "id": session_id, "user_id": user_id, "created_at": now,
            "expires_at": expires_at, "ip": ip, "user_agent": user_agent,
        })),
        sensitive: vec![],
        diff_of: None,
    });
    let refresh = issue_refresh_token(tx, &session_id).await?;
    tx.set_target("session", session_id.clone());
    Ok((session_id, refresh))
}

async fn issue_refresh_token(
    tx: &mut WriteTx,
    session_id: &str,
) -> Result<OpaqueToken, IdentityError> {
    let token = OpaqueToken::generate(TokenKind::Refresh, tx.scope().tenant_id());
    let now = crate::clock::now();
    db::query(
        "INSERT INTO refresh_tokens (token_hash, tenant_id, session_id, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token.hash())
    .bind(tx.scope().id_str().to_owned())
    .bind(session_id)
    .bind(&now)
    .execute(tx.conn())
    .await?;
    tx.record(Change {
        entity: "refresh_token",
        entity_id: token.hash(),
        op: JournalOp::Insert,
        before: None,
        after: Some(json!({"session_id": session_id, "created_at": now})),
        sensitive: vec![],
        diff_of: None,
    });
    Ok(token)
}

/// Accepts an invitation: sets the password the user chose, activates the
/// account and logs them in.
pub async fn accept_invitation(
    store: &Store,
    key: &SigningKey,
    session_ttl_hours: u32,
    token: &str,
    password: SecretString,
    meta: &RequestMeta,
) -> Result<TokenPair, IdentityError> {
    let token =
        OpaqueToken::parse(TokenKind::Invitation, token).ok_or(IdentityError::InvalidToken)?;
    let scope = TenantScope::trusted(token.tenant());
    let hash = token.hash();
    let email: Option<String> = {
        let mut tx = store.read(&scope).await?;
        db::query_scalar(
            "SELECT u.email FROM invitations i JOIN users u ON u.id = i.user_id \
             WHERE i.tenant_id = $1 AND i.token_hash = $2 AND i.used_at IS NULL AND i.expires_at > $3 \
             AND u.status = 'invited'",
        )
        .bind(scope.id_str())
        .bind(&hash)
        .bind(crate::clock::now())
        .fetch_optional(tx.conn())
        .await?
    };
    let email = email.ok_or(IdentityError::InvalidToken)?;
    password::check_policy(&password, &[&email])?;
    let password_hash = password::hash(password).await?;
    let actor = Actor {
        kind: ActorKind::User,
        id: None,
        email: Some(email),
    };
    let permit = Permit::authentication(scope.clone(), actor);
    let session_ttl_hours = Bounds::of(store, &scope)
        .await?
        .ttl_hours(session_ttl_hours);
    let (user_id, session_id, refresh) = store
        .write(&permit, meta, "auth.invitation.accept", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let now = crate::clock::now();
                // Re-checked inside the write: two concurrent accepts, one
                // wins; an invitation whose user was disabled (cancelled)
                // or deleted meanwhile lets nobody in.
                let row = db::query(
                    "SELECT i.id, i.user_id FROM invitations i JOIN users u ON u.id = i.user_id \
                     WHERE i.tenant_id = $1 AND i.token_hash = $2 AND i.used_at IS NULL \
                     AND i.expires_at > $3 AND u.status = 'invited'",
                )
                .bind(&tenant)
                .bind(&hash)
                .bind(&now)
                .fetch_optional(tx.conn())
                .await?
                .ok_or(IdentityError::InvalidToken)?;
                let invitation_id: String = row.try_get("id")?;
                let user_id: String = row.try_get("user_id")?;
                // Used once: the statement itself says whether this use won.
                let used = db::query(
                    "UPDATE invitations SET used_at = $1 \
                     WHERE tenant_id = $2 AND id = $3 AND used_at IS NULL",
                )
                .bind(&now)
                .bind(&tenant)
                .bind(&invitation_id)
                .execute(tx.conn())
                .await?;
                if used.rows_affected() != 1 {
                    return Err(IdentityError::InvalidToken);
                }
                db::query(
                    "UPDATE users SET password_hash = $1, status = 'active', updated_at = $2 \
                     WHERE tenant_id = $3 AND id = $4",
                )
                .bind(&password_hash)
                .bind(&now)
                .bind(&tenant)
                .bind(&user_id)
                .execute(tx.conn())
                .await?;
                tx.record(Change {
                    entity: "invitation",
                    entity_id: invitation_id,
                    op: JournalOp::Update,
                    before: None,
                    after: Some(json!({"used_at": now})),
                    sensitive: vec![],
                    diff_of: None,
                });
                tx.record(Change {
                    entity: "user",
                    entity_id: user_id.clone(),
                    op: JournalOp::Update,
                    before: Some(json!({"status": "invited", "password_hash": null})),
                    after: Some(json!({
                        "status": "active", "password_hash": password_hash, "updated_at": now,
                    })),
                    sensitive: vec!["password_hash".into()],
                    diff_of: None,
                });
                let mut actor = tx.actor().clone();
                actor.id = Some(user_id.clone());
                tx.set_actor(actor);
                let (session_id, refresh) = open_session(tx, &user_id, session_ttl_hours).await?;
                tx.set_target("user", user_id.clone());
                Ok::<_, IdentityError>((user_id, session_id, refresh))
            })
        })
        .await?;
    Ok(token_pair(key, &scope, &user_id, &session_id, &refresh))
}

enum RefreshResult {
    Rotated {
        user_id: String,
        session_id: String,
        refresh: OpaqueToken,
    },
    Invalid,
    Reused,
}

pub async fn refresh(
    store: &Store,
    key: &SigningKey,
    token: &str,
    meta: &RequestMeta,
) -> Result<TokenPair, IdentityError> {
    let token = OpaqueToken::parse(TokenKind::Refresh, token).ok_or(IdentityError::InvalidToken)?;
    let scope = TenantScope::trusted(token.tenant());
    let permit = Permit::authentication(scope.clone(), Actor::anonymous(None));
    let hash = token.hash();
    let bounds = Bounds::of(store, &scope).await?;
    let result = store
        .write(&permit, meta, "auth.refresh", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let now = crate::clock::now();
                let row = db::query(
                    "SELECT r.session_id, r.used_at, s.revoked_at, s.expires_at, u.id AS user_id, \
                     u.email, u.status, t.status AS tenant_status, s.created_at, s.last_used_at \
                     FROM refresh_tokens r \
                     JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id \
                     JOIN tenants t ON t.id = r.tenant_id \
                     WHERE r.tenant_id = $1 AND r.token_hash = $2",
                )
                .bind(&tenant)
                .bind(&hash)
                .fetch_optional(tx.conn())
                .await?;
                tx.set_outcome(Outcome::Failure);
                let Some(row) = row else {
                    return Ok(RefreshResult::Invalid);
                };
                let session_id: String = row.try_get("session_id")?;
                let used_at: Option<String> = row.try_get("used_at")?;
                let revoked_at: Option<String> = row.try_get("revoked_at")?;
                let expires_at: String = row.try_get("expires_at")?;
                let user_id: String = row.try_get("user_id")?;
                let status: String = row.try_get("status")?;
                let tenant_status: String = row.try_get("tenant_status")?;
                let created_at: String = row.try_get("created_at")?;
                let last_used_at: String = row.try_get("last_used_at")?;
                tx.set_actor(Actor {
                    kind: ActorKind::User,
                    id: Some(user_id.clone()),
                    email: row.try_get("email")?,
                });
                tx.set_target("session", session_id.clone());
                if used_at.is_some() {
                    if revoked_at.is_none() {
                        revoke_session(tx, &session_id, "refresh_token_reuse").await?;
                    }
                    tracing::warn!(
                        event = "auth.refresh_token_reuse",
                        session_id = %session_id,
                        "a used refresh token was presented again; session revoked"
                    );
                    return Ok(RefreshResult::Reused);
                }
                if revoked_at.is_some()
                    || expires_at <= now
                    || status != "active"
                    || tenant_status != "active"
                    || !bounds.admit(&created_at, &last_used_at)
                {
                    return Ok(RefreshResult::Invalid);
                }
                // Used once: a use that lost a race to another is reuse.
                let used = db::query(
                    "UPDATE refresh_tokens SET used_at = $1 \
                     WHERE tenant_id = $2 AND token_hash = $3 AND used_at IS NULL",
                )
                .bind(&now)
                .bind(&tenant)
                .bind(&hash)
                .execute(tx.conn())
                .await?;
                if used.rows_affected() != 1 {
                    revoke_session(tx, &session_id, "refresh_token_reuse").await?;
                    return Ok(RefreshResult::Reused);
                }
                db::query("UPDATE sessions SET last_used_at = $1 WHERE tenant_id = $2 AND id = $3")
                    .bind(&now)
                    .bind(&tenant)
                    .bind(&session_id)
                    .execute(tx.conn())
                    .await?;
                tx.record(Change {
                    entity: "refresh_token",
                    entity_id: hash.clone(),
                    op: JournalOp::Update,
                    before: None,
                    after: Some(json!({"used_at": now})),
                    sensitive: vec![],
                    diff_of: None,
                });
                let refresh = issue_refresh_token(tx, &session_id).await?;
                tx.set_outcome(Outcome::Success);
                Ok::<_, IdentityError>(RefreshResult::Rotated {
                    user_id,
                    session_id,
                    refresh,
                })
            })
        })
        .await?;
    match result {
        RefreshResult::Rotated {
            user_id,
            session_id,
            refresh,
        } => Ok(token_pair(key, &scope, &user_id, &session_id, &refresh)),
        RefreshResult::Invalid => Err(IdentityError::InvalidToken),
        RefreshResult::Reused => Err(IdentityError::RefreshTokenReuse),
    }
}

pub async fn logout(
    store: &Store,
    principal: &Principal,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    let session_id = principal.session_id.clone();
    store
        .write(&principal.own_permit(), meta, "auth.logout", move |tx| {
            Box::pin(async move {
                revoke_session(tx, &session_id, "logout").await?;
                Ok::<_, IdentityError>(())
            })
        })
        .await
}

/// One live session, as its user (or an admin) sees it (IAM-5).
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session the request itself belongs to.
    pub current: bool,
}

/// A user's live sessions, newest first; `current` marks the caller's.
pub async fn list_sessions(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
    current: Option<&str>,
) -> Result<Vec<SessionInfo>, IdentityError> {
    let mut tx = store.read(scope).await?;
    let rows = db::query(
        "SELECT id, created_at, last_used_at, expires_at, ip, user_agent FROM sessions \
         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > $3 \
         ORDER BY created_at DESC, id DESC",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .bind(crate::clock::now())
    .fetch_all(tx.conn())
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Ok(SessionInfo {
                current: current == Some(id.as_str()),
                id,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                expires_at: row.try_get("expires_at")?,
                ip: row.try_get("ip")?,
                user_agent: row.try_get("user_agent")?,
            })
        })
        .collect::<Result<_, db::Error>>()
        .map_err(|e| IdentityError::from(crate::store::StoreError::from(e)))
}

/// Ends one of the caller's own live sessions.
pub async fn revoke_own_session(
    store: &Store,
    principal: &Principal,
    meta: &RequestMeta,
    session_id: &str,
) -> Result<(), IdentityError> {
    let (user_id, session_id) = (principal.user_id.clone(), session_id.to_owned());
    store
        .write(
            &principal.own_permit(),
            meta,
            "auth.session.revoke",
            move |tx| {
                Box::pin(async move {
                    let live: Option<String> = db::query_scalar(
                        "SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2 \
                         AND CAST(id AS TEXT) = $3 AND revoked_at IS NULL",
                    )
                    .bind(tx.scope().id_str().to_owned())
                    .bind(&user_id)
                    .bind(&session_id)
                    .fetch_optional(tx.conn())
                    .await?;
                    if live.is_none() {
                        return Err(IdentityError::SessionNotFound);
                    }
                    revoke_session(tx, &session_id, "revoked_by_user").await
                })
            },
        )
        .await
}

/// Ends every live session of the caller but the current one; how many.
pub async fn revoke_other_sessions(
    store: &Store,
    principal: &Principal,
    meta: &RequestMeta,
) -> Result<usize, IdentityError> {
    let (user_id, keep) = (principal.user_id.clone(), principal.session_id.clone());
    store
        .write(
            &principal.own_permit(),
            meta,
            "auth.session.revoke_others",
            move |tx| {
                Box::pin(async move {
                    let ended =
                        revoke_all_but(tx, &user_id, Some(&keep), "revoked_by_user").await?;
                    tx.set_target("user", user_id);
                    Ok(ended)
                })
            },
        )
        .await
}

/// An admin ends every live session of a user of the tenant; how many.
pub async fn revoke_user_sessions(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    user_id: &str,
) -> Result<usize, IdentityError> {
    let user_id = user_id.to_owned();
    store
        .write(permit, meta, "user.sessions.revoke", move |tx| {
            Box::pin(async move {
                let exists: Option<String> = db::query_scalar(
                    "SELECT id FROM users WHERE tenant_id = $1 AND CAST(id AS TEXT) = $2",
                )
                .bind(tx.scope().id_str().to_owned())
                .bind(&user_id)
                .fetch_optional(tx.conn())
                .await?;
                if exists.is_none() {
                    return Err(IdentityError::UserNotFound);
                }
                let ended = revoke_all_but(tx, &user_id, None, "revoked_by_admin").await?;
                tx.set_target("user", user_id);
                Ok(ended)
            })
        })
        .await
}

/// Tokens whose signature was already checked, by SHA-256 of (verifying key,
/// token), until they expire. A client reuses its token for up to a minute;
/// an Ed25519 verification per request would be a large share of a cheap
/// GET. Revocation is unaffected: the session is still checked every time.
static VERIFIED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<[u8; 32], AccessClaims>>,
> = std::sync::LazyLock::new(Default::default);
const VERIFIED_MAX: usize = 50_000;

fn verified_claims(key: &VerifyingKey, token: &str) -> Result<AccessClaims, IdentityError> {
    use sha2::{Digest, Sha256};
    let now = crate::clock::unix_now();
    let mut digest = Sha256::new();
    digest.update(key.as_bytes());
    digest.update(token.as_bytes());
    let id: [u8; 32] = digest.finalize().into();
    if let Ok(cache) = VERIFIED.lock()
        && let Some(claims) = cache.get(&id)
        && claims.exp > now
    {
        return Ok(claims.clone());
    }
    let claims =
        verify_access_token(key, token, now).map_err(|_| IdentityError::Unauthenticated)?;
    if let Ok(mut cache) = VERIFIED.lock() {
        if cache.len() >= VERIFIED_MAX {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
        }
        cache.insert(id, claims.clone());
    }
    Ok(claims)
}

/// Turns a bearer token into a principal: verifies the signature and
/// lifetime, then checks that the session is live and the user active, and
/// takes the user's current role (a role change applies at once).
pub async fn authenticate(
    store: &Store,
    key: &VerifyingKey,
    bearer: &SecretString,
) -> Result<Principal, IdentityError> {
    let claims = verified_claims(key, bearer.expose_secret())?;
    let live = live_session(store, &claims).await?;
    live.principal(claims)
}

/// [`authenticate`], answering from `cache` what a request checked less
/// than [`SESSION_CHECK_TTL`] ago and nothing has changed since.
pub async fn authenticate_cached(
    cache: &SessionCache,
    store: &Store,
    key: &VerifyingKey,
    bearer: &SecretString,
) -> Result<Principal, IdentityError> {
    let claims = verified_claims(key, bearer.expose_secret())?;
    let (live, _) = checked(cache, store, &claims).await?;
    live.principal(claims)
}

/// The session check for `claims`, from `cache` when it is fresh there;
/// says whether the database was asked.
async fn checked(
    cache: &SessionCache,
    store: &Store,
    claims: &AccessClaims,
) -> Result<(LiveSession, bool), IdentityError> {
    if let Some(live) = cache.get(claims) {
        return Ok((live, false));
    }
    let epoch = cache.epoch();
    let live = live_session(store, claims).await?;
    cache.put(epoch, claims, &live);
    Ok((live, true))
}

/// A browser session cookie's principal: the same session check as a
/// token's (cached alike), for the session the signed cookie names.
pub async fn authenticate_cookie(
    cache: &SessionCache,
    store: &Store,
    key: &[u8; 32],
    value: &str,
) -> Result<Principal, IdentityError> {
    let named =
        super::cookies::open_session_cookie(key, value).ok_or(IdentityError::Unauthenticated)?;
    let claims = AccessClaims {
        sub: named.user,
        tid: named.tenant,
        sid: named.session,
        iat: 0,
        exp: i64::MAX,
        jti: String::new(),
    };
    let (live, asked) = checked(cache, store, &claims).await?;
    // A browser session has no refresh to mark it used: its use does, at
    // most once a minute, so the tenant's idle bound counts real idleness.
    let stale = crate::clock::parse_rfc3339(&live.last_used_at)
        .is_none_or(|at| time::OffsetDateTime::now_utc() - at > time::Duration::minutes(1));
    if asked && stale {
        touch_session(store.clone(), &claims);
    }
    live.principal(claims)
}

/// Marks a session used now, in the background.
fn touch_session(store: Store, claims: &AccessClaims) {
    let Some(tenant) = TenantId::parse(&claims.tid) else {
        return;
    };
    let scope = TenantScope::trusted(tenant);
    let (tenant, session) = (claims.tid.clone(), claims.sid.clone());
    tokio::spawn(async move {
        let done = store
            .append_internal(Some(&scope), move |conn| {
                Box::pin(async move {
                    db::query(
                        "UPDATE sessions SET last_used_at = $1 WHERE tenant_id = $2 AND id = $3",
                    )
                    .bind(crate::clock::now())
                    .bind(tenant)
                    .bind(session)
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not mark a browser session used");
        }
    });
}

/// What the session check found: the session is live and its user active.
#[derive(Clone)]
struct LiveSession {
    email: String,
    roles: Arc<[String]>,
    abilities: Arc<Abilities>,
    expires_at: String,
    last_used_at: String,
    /// An admin's reset set a temporary password (IAM-2).
    must_change_password: bool,
    mfa_enrolled: bool,
    mfa_at: Option<String>,
    must_enrol_mfa: bool,
}

impl LiveSession {
    fn principal(self, claims: AccessClaims) -> Result<Principal, IdentityError> {
        let tenant = TenantId::parse(&claims.tid).ok_or(IdentityError::Unauthenticated)?;
        Ok(Principal {
            kind: PrincipalKind::User,
            roles: self.roles,
            abilities: self.abilities,
            email: self.email,
            scope: TenantScope::trusted(tenant),
            user_id: claims.sub,
            session_id: claims.sid,
            support: None,
            must_change_password: self.must_change_password,
            mfa_enrolled: self.mfa_enrolled,
            mfa_at: self.mfa_at,
            must_enrol_mfa: self.must_enrol_mfa,
        })
    }
}

async fn live_session(store: &Store, claims: &AccessClaims) -> Result<LiveSession, IdentityError> {
    let tenant = TenantId::parse(&claims.tid).ok_or(IdentityError::Unauthenticated)?;
    let scope = TenantScope::trusted(tenant);
    let now = crate::clock::now();
    // One statement, the tenant's session bounds with it (0 where unset,
    // or before the schema has them).
    let bounds = if store.schema_has(tenancy::SESSION_SETTINGS_SCHEMA) {
        "COALESCE(ts.session_idle_minutes, 0), COALESCE(ts.session_max_hours, 0)"
    } else {
        "0, 0"
    };
    let must_change = if store.schema_has(crate::mail::SCHEMA) {
        "u.password_change_required"
    } else {
        "0"
    };
    let mfa = if store.schema_has(super::mfa::SCHEMA) {
        "u.mfa_enrolled, COALESCE(ts.mfa_policy, 'off'), s.mfa_at"
    } else {
        "0, 'off', NULL"
    };
    let sql = format!(
        "SELECT u.email, u.role, s.expires_at, s.created_at, s.last_used_at, {bounds}, \
         {must_change}, {mfa} \
         FROM sessions s JOIN users u ON u.id = s.user_id JOIN tenants t ON t.id = s.tenant_id \
         LEFT JOIN tenant_settings ts ON ts.tenant_id = s.tenant_id \
         WHERE s.tenant_id = $1 AND s.id = $2 AND s.user_id = $3 AND s.revoked_at IS NULL \
         AND s.expires_at > $4 AND u.status = 'active' AND t.status = 'active'"
    );
    let row = store
        .read_text_row(
            &scope,
            &sql,
            &[scope.id_str(), &claims.sid, &claims.sub, &now],
        )
        .await?
        .ok_or(IdentityError::Unauthenticated)?;
    let [
        Some(email),
        Some(role),
        Some(expires_at),
        Some(created_at),
        Some(last_used_at),
        Some(idle),
        Some(max),
        Some(must_change),
        Some(enrolled),
        Some(policy),
        mfa_at,
    ] = row.as_slice()
    else {
        return Err(IdentityError::Internal(
            "session row without email, role or times",
        ));
    };
    // The tenant's idle and absolute bounds (IAM-5): lowering one ends the
    // sessions beyond it at once.
    let bounds = Bounds {
        idle_minutes: idle.parse().unwrap_or(0),
        max_hours: max.parse().unwrap_or(0),
    };
    if !bounds.admit(created_at, last_used_at) {
        return Err(IdentityError::Unauthenticated);
    }
    let held = crate::access::held_roles(role);
    let abilities = abilities(store, &scope, &held).await?;
    let policy = super::mfa::Policy::from_stored(policy);
    Ok(LiveSession {
        email: email.clone(),
        must_enrol_mfa: enrolled == "0" && held.iter().any(|r| policy.requires(r)),
        roles: held.into(),
        abilities: Arc::new(abilities),
        expires_at: expires_at.clone(),
        last_used_at: last_used_at.clone(),
        must_change_password: must_change != "0",
        mfa_enrolled: enrolled != "0",
        mfa_at: mfa_at.clone(),
    })
}

/// What the roles `held` allow; the tenant's own roles are read only when
/// a user holds one (built-in roles need no query).
async fn abilities(
    store: &Store,
    scope: &TenantScope,
    held: &[String],
) -> Result<Abilities, IdentityError> {
    let mut abilities = Abilities::default();
    let mut custom = Vec::new();
    for name in held {
        match Role::parse(name) {
            Some(role) => abilities.add(&Abilities::of_role(role)),
            None => custom.push(name.clone()),
        }
    }
    if custom.is_empty() || !store.schema_has(crate::access::roles::SCHEMA) {
        return Ok(abilities);
    }
    let mut tx = store.read(scope).await?;
    let more = crate::access::roles::resolve(tx.conn(), scope.id_str(), &custom)
        .await
        .map_err(|e| match e {
            crate::access::roles::RoleError::Store(e) => IdentityError::Store(e),
            _ => IdentityError::Internal("a user's roles could not be read"),
        })?;
    abilities.add(&more);
    Ok(abilities)
}

/// How long a session check is reused at most. Within it a logout,
/// revocation, role change or disabled user still ends what the cache
/// holds at once: the write path tells this node's cache before the
/// change is acknowledged, and other nodes' when PostgreSQL delivers the
/// announcement ([`Store::watch`]). The lifetime bounds only what a node
/// that lost its announcements could miss.
pub const SESSION_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The entity kinds whose updates and deletions end cached session checks.
pub const SESSION_KINDS: &[&str] = &["session", "user", "tenant", "role"];

/// Entries kept at most; beyond it the cache starts over.
const SESSION_CACHE_MAX: usize = 100_000;

/// Recent session checks (IAM-5), by session id.
#[derive(Default)]
pub struct SessionCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, CachedCheck>>,
    /// Moves on every forgetting, so that a check that raced a change is
    /// not kept.
    epoch: std::sync::atomic::AtomicU64,
}

struct CachedCheck {
    tenant: String,
    user_id: String,
    live: LiveSession,
    checked: std::time::Instant,
}

impl SessionCache {
    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn get(&self, claims: &AccessClaims) -> Option<LiveSession> {
        let now = crate::clock::now();
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(&claims.sid)?;
        (cached.tenant == claims.tid
            && cached.user_id == claims.sub
            && cached.checked.elapsed() < SESSION_CHECK_TTL
            && cached.live.expires_at > now)
            .then(|| cached.live.clone())
    }

    /// Keeps a check made since `epoch`, unless something was forgotten
    /// meanwhile (the check may have read what changed).
    fn put(&self, epoch: u64, claims: &AccessClaims, live: &LiveSession) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if self.epoch() != epoch {
            return;
        }
        if entries.len() >= SESSION_CACHE_MAX {
            entries.clear();
        }
        entries.insert(
            claims.sid.clone(),
            CachedCheck {
                tenant: claims.tid.clone(),
                user_id: claims.sub.clone(),
                live: live.clone(),
                checked: std::time::Instant::now(),
            },
        );
    }

    /// Forgets the checks of `tenant` (of everyone when `None`).
    pub fn forget(&self, tenant: Option<&str>) {
        if let Ok(mut entries) = self.entries.lock() {
            // Under the lock: a `put` either ran before (and is removed
            // now) or sees the new epoch.
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match tenant {
                Some(tenant) => entries.retain(|_, c| c.tenant != tenant),
                None => entries.clear(),
            }
        }
    }
}
