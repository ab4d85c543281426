//! ACC-3: the instance's operator accounts, apart from every tenant's
//! users, each with one role of least privilege:
//!
//! * `operator` runs the instance: tenants' health, restores, integrity,
//!   the outbox, the posture report — names, counts and health, never a
//!   tenant's data;
//! * `support` may ask a tenant for support access (ACC-2, not built yet);
//! * `security_officer` reads the posture report and will record legal
//!   orders, incidents and bans.
//!
//! An account is created at the console (`strongroom operator create`) and
//! gets a single-use invitation; accepting it sets a password and starts
//! the enrolment of a second factor (TOTP, its secret sealed with a key
//! derived from the master key), which must be confirmed before the
//! account can do anything else. Every later login needs the password and
//! a fresh code (each step accepted once). Sessions are opaque bearer
//! tokens (`sr_ops_…`, SHA-256 stored, 8 hours). No operator route reads a
//! tenant's records, files, users or audit diffs: the tenant routes take
//! tenant principals only, so an operator token is refused there.

pub mod http;
pub mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crypto::Keyring;
use crate::identity::{password, totp};
use crate::store::db;
use crate::store::{Store, StoreError};

/// The schema version that has `operators`.
pub const SCHEMA: i64 = 17;

/// How long an operator session lives.
pub const SESSION_HOURS: i64 = 8;
/// How long an invitation stays good.
const INVITATION_HOURS: i64 = 72;
const INVITATION_PREFIX: &str = "sr_opi_";
const SESSION_PREFIX: &str = "sr_ops_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorRole {
    Operator,
    Support,
    SecurityOfficer,
}

impl OperatorRole {
    pub const ALL: [OperatorRole; 3] = [
        OperatorRole::Operator,
        OperatorRole::Support,
        OperatorRole::SecurityOfficer,
    ];

    pub fn parse(text: &str) -> Option<OperatorRole> {
        OperatorRole::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Operator => "operator",
            OperatorRole::Support => "support",
            OperatorRole::SecurityOfficer => "security_officer",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("unknown operator role {0:?}: use operator, support or security_officer")]
    UnknownRole(String),
    #[error("invalid e-mail address")]
    InvalidEmail,
    #[error("an operator with this e-mail address exists already")]
    EmailTaken,
    #[error("invalid or expired invitation")]
    InvalidInvitation,
    #[error("invalid e-mail address, password or code")]
    InvalidCredentials,
    #[error("missing, invalid or expired operator token")]
    Unauthenticated,
    #[error("confirm your second factor first (POST /api/v1/ops/auth/mfa/confirm)")]
    MfaEnrolmentRequired,
    #[error("the second factor is confirmed already")]
    AlreadyEnrolled,
    #[error("this operation is for the {0} role")]
    WrongRole(&'static str),
    #[error("no such operator")]
    NotFound,
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for OperatorError {
    fn from(e: db::Error) -> Self {
        OperatorError::Store(e.into())
    }
}

/// An operator as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct OperatorView {
    pub id: String,
    pub email: String,
    pub role: String,
    pub status: String,
    pub mfa_confirmed_at: Option<String>,
    pub created_at: String,
}

/// An authenticated operator; `mfa_passed` is false on the session that
/// accepting an invitation gives, which may only confirm the factor.
#[derive(Clone, Debug)]
pub struct OperatorPrincipal {
    pub id: String,
    pub email: String,
    pub role: OperatorRole,
    pub session_id: String,
    pub mfa_passed: bool,
}

impl OperatorPrincipal {
    /// Refuses unless the operator holds one of `roles`.
    pub fn require(&self, roles: &[OperatorRole]) -> Result<(), OperatorError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(OperatorError::WrongRole(
                roles.first().map(|r| r.as_str()).unwrap_or("operator"),
            ))
        }
    }
}

fn random_token(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(crate::crypto::random_bytes::<32>())
    )
}

fn digest(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn secret_aad(operator_id: &str) -> Vec<u8> {
    format!("strongroom/v1/operator-totp/{operator_id}").into_bytes()
}

/// A new operator account (at the console) and its invitation token.
pub async fn create(
    store: &Store,
    email: &str,
    role: &str,
) -> Result<(OperatorView, String), OperatorError> {
    let role = OperatorRole::parse(role).ok_or_else(|| OperatorError::UnknownRole(role.into()))?;
    let email = crate::identity::Email::parse(email).map_err(|_| OperatorError::InvalidEmail)?;
    let token = random_token(INVITATION_PREFIX);
    let now = crate::clock::now();
    let view = OperatorView {
        id: uuid::Uuid::now_v7().to_string(),
        email: email.as_str().to_owned(),
        role: role.as_str().to_owned(),
        status: "invited".to_owned(),
        mfa_confirmed_at: None,
        created_at: now.clone(),
    };
    let (row, hash) = (view.clone(), digest(&token));
    let expires = crate::clock::in_seconds(INVITATION_HOURS * 3600);
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                db::query(
                    "INSERT INTO operators (id, email, role, status, invitation_hash, \
                     invitation_expires_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'invited', $4, $5, $6, $6)",
                )
                .bind(&row.id)
                .bind(&row.email)
                .bind(&row.role)
                .bind(&hash)
                .bind(&expires)
                .bind(&row.created_at)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
        .map_err(|e| match e {
            e if e.is_unique_violation_on("operators") => OperatorError::EmailTaken,
            e => OperatorError::Store(e),
        })?;
    tracing::info!(target: "security", operator = %view.id, email = %view.email,
        role = %view.role, "operator account created at the console");
    Ok((view, token))
}

pub async fn list(store: &Store) -> Result<Vec<OperatorView>, OperatorError> {
    let mut tx = store.read_unscoped().await?;
    let rows = db::query(
        "SELECT id, email, role, status, mfa_confirmed_at, created_at FROM operators \
         ORDER BY created_at, id",
    )
    .fetch_all(tx.conn())
    .await?;
    let mut out = Vec::new();
    for row in &rows {
        out.push(OperatorView {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            role: row.try_get("role")?,
            status: row.try_get("status")?,
            mfa_confirmed_at: row.try_get("mfa_confirmed_at")?,
            created_at: row.try_get("created_at")?,
        });
    }
    Ok(out)
}

/// What accepting an invitation gives: a session that may only confirm
/// the second factor, and the factor's secret to put in an authenticator.
#[derive(Serialize)]
pub struct Accepted {
    pub token: String,
    pub expires_at: String,
    pub totp_secret: String,
    pub otpauth_uri: String,
}

/// Spends an invitation (once, by a guarded update): sets the password and
/// a new TOTP secret, and opens a session restricted to confirming it.
pub async fn accept(
    store: &Store,
    keyring: &Keyring,
    token: &str,
    new_password: SecretString,
) -> Result<Accepted, OperatorError> {
    let invitation = digest(token);
    // The invitation first: without a good one, nothing about the password
    // is said (the guarded update below still decides who spends it).
    let open: Option<String> = {
        let mut tx = store.read_unscoped().await?;
        db::query_scalar(
            "SELECT email FROM operators WHERE invitation_hash = $1 \
             AND invitation_expires_at > $2 AND status = 'invited'",
        )
        .bind(&invitation)
        .bind(crate::clock::now())
        .fetch_optional(tx.conn())
        .await?
    };
    let email = open.ok_or(OperatorError::InvalidInvitation)?;
    password::check_policy(&new_password, &[&email])?;
    let hash = password::hash(new_password).await?;
    let secret = crate::crypto::random_bytes::<20>();
    let key = keyring.operator_secret_key();
    let session = random_token(SESSION_PREFIX);
    let (session_hash, now) = (digest(&session), crate::clock::now());
    let expires_at = crate::clock::in_seconds(SESSION_HOURS * 3600);
    let expires = expires_at.clone();
    let email = store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                let row = db::query(
                    "SELECT id, email FROM operators WHERE invitation_hash = $1 \
                     AND invitation_expires_at > $2 AND status = 'invited'",
                )
                .bind(&invitation)
                .bind(&now)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let (id, email): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                let sealed = key.seal(&secret_aad(&id), &secret);
                // Guarded: of racing accepts one spends the invitation.
                let done = db::query(
                    "UPDATE operators SET status = 'enrolling', password_hash = $1, \
                     totp_secret = $2, invitation_hash = NULL, updated_at = $3 \
                     WHERE id = $4 AND invitation_hash = $5",
                )
                .bind(&hash)
                .bind(sealed)
                .bind(&now)
                .bind(&id)
                .bind(&invitation)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(None);
                }
                insert_session(conn, &id, &session_hash, false, &now, &expires).await?;
                Ok(Some(email))
            })
        })
        .await?
        .ok_or(OperatorError::InvalidInvitation)?;
    Ok(Accepted {
        token: session,
        expires_at,
        totp_secret: totp::base32(&secret),
        otpauth_uri: totp::uri("Strongroom operators", &email, &secret),
    })
}

async fn insert_session(
    conn: &mut db::Conn,
    operator_id: &str,
    token_hash: &str,
    mfa_passed: bool,
    now: &str,
    expires: &str,
) -> Result<(), StoreError> {
    db::query(
        "INSERT INTO operator_sessions (id, operator_id, token_hash, mfa_passed, created_at, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(operator_id)
    .bind(token_hash)
    .bind(i64::from(mfa_passed))
    .bind(now)
    .bind(expires)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checks `code` against the operator's secret and spends its step (a
/// guarded update: a code works once, also when two requests race).
async fn spend_code(
    conn: &mut db::Conn,
    key: &crate::crypto::DataKey,
    operator_id: &str,
    code: &str,
) -> Result<bool, StoreError> {
    let row = db::query("SELECT totp_secret, totp_last_step FROM operators WHERE id = $1")
        .bind(operator_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let (sealed, last): (Option<Vec<u8>>, i64) = (row.try_get(0)?, row.try_get(1)?);
    let Some(sealed) = sealed else {
        return Ok(false);
    };
    let Ok(secret) = key.open(&secret_aad(operator_id), &sealed) else {
        tracing::error!(
            operator = operator_id,
            "an operator's TOTP secret does not open"
        );
        return Ok(false);
    };
    let now_step = totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp());
    let Some(step) = totp::matching_step(&secret, code, now_step).filter(|s| *s > last) else {
        return Ok(false);
    };
    let done =
        db::query("UPDATE operators SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1")
            .bind(step)
            .bind(operator_id)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Confirms the second factor with a code from the authenticator; the
/// session that asks becomes a full one.
pub async fn confirm_mfa(
    store: &Store,
    keyring: &Keyring,
    principal: &OperatorPrincipal,
    code: String,
) -> Result<(), OperatorError> {
    if principal.mfa_passed {
        return Err(OperatorError::AlreadyEnrolled);
    }
    let (key, id, session) = (
        keyring.operator_secret_key(),
        principal.id.clone(),
        principal.session_id.clone(),
    );
    let confirmed = store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                if !spend_code(conn, &key, &id, &code).await? {
                    return Ok(false);
                }
                let now = crate::clock::now();
                db::query(
                    "UPDATE operators SET status = 'active', mfa_confirmed_at = $1, \
                     updated_at = $1 WHERE id = $2 AND status = 'enrolling'",
                )
                .bind(&now)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
                db::query("UPDATE operator_sessions SET mfa_passed = 1 WHERE id = $1")
                    .bind(&session)
                    .execute(conn)
                    .await?;
                Ok(true)
            })
        })
        .await?;
    if !confirmed {
        return Err(OperatorError::InvalidCredentials);
    }
    tracing::info!(target: "security", operator = %principal.id, "operator confirmed a second factor");
    Ok(())
}

#[derive(Serialize)]
pub struct LoggedIn {
    pub token: String,
    pub expires_at: String,
}

/// A login: password and a fresh TOTP code, both always checked, with the
/// same answer for every failure.
pub async fn login(
    store: &Store,
    keyring: &Keyring,
    email: &str,
    given: SecretString,
    code: String,
) -> Result<LoggedIn, OperatorError> {
    let email = email.trim().to_lowercase();
    let row = {
        let mut tx = store.read_unscoped().await?;
        db::query(
            "SELECT id, password_hash FROM operators WHERE email = $1 AND status = 'active' \
             AND mfa_confirmed_at IS NOT NULL",
        )
        .bind(&email)
        .fetch_optional(tx.conn())
        .await?
    };
    let (id, stored): (Option<String>, Option<String>) = match &row {
        Some(row) => (Some(row.try_get(0)?), row.try_get(1)?),
        None => (None, None),
    };
    let matches = password::verify(given, stored).await?;
    let Some(id) = id.filter(|_| matches) else {
        tracing::warn!(target: "security", email = %email, "operator login refused");
        return Err(OperatorError::InvalidCredentials);
    };
    let session = random_token(SESSION_PREFIX);
    let (session_hash, now) = (digest(&session), crate::clock::now());
    let expires_at = crate::clock::in_seconds(SESSION_HOURS * 3600);
    let (key, expires, who) = (
        keyring.operator_secret_key(),
        expires_at.clone(),
        id.clone(),
    );
    let opened = store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                if !spend_code(conn, &key, &who, &code).await? {
                    return Ok(false);
                }
                insert_session(conn, &who, &session_hash, true, &now, &expires).await?;
                Ok(true)
            })
        })
        .await?;
    if !opened {
        tracing::warn!(target: "security", operator = %id, "operator login refused: code");
        return Err(OperatorError::InvalidCredentials);
    }
    tracing::info!(target: "security", operator = %id, "operator logged in");
    Ok(LoggedIn {
        token: session,
        expires_at,
    })
}

/// Whether `bearer` is shaped as an operator session token.
pub fn is_operator_token(bearer: &str) -> bool {
    bearer.starts_with(SESSION_PREFIX)
}

/// The operator of a live session.
pub async fn authenticate(
    store: &Store,
    bearer: &SecretString,
) -> Result<OperatorPrincipal, OperatorError> {
    if !is_operator_token(bearer.expose_secret()) || !store.schema_has(SCHEMA) {
        return Err(OperatorError::Unauthenticated);
    }
    let mut tx = store.read_unscoped().await?;
    let row = db::query(
        "SELECT o.id, o.email, o.role, s.id, s.mfa_passed FROM operator_sessions s \
         JOIN operators o ON o.id = s.operator_id \
         WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
         AND o.status IN ('active', 'enrolling')",
    )
    .bind(digest(bearer.expose_secret()))
    .bind(crate::clock::now())
    .fetch_optional(tx.conn())
    .await?
    .ok_or(OperatorError::Unauthenticated)?;
    let role: String = row.try_get(2)?;
    Ok(OperatorPrincipal {
        id: row.try_get(0)?,
        email: row.try_get(1)?,
        role: OperatorRole::parse(&role).ok_or(OperatorError::Unauthenticated)?,
        session_id: row.try_get(3)?,
        mfa_passed: row.try_get::<i64, _>(4)? != 0,
    })
}

pub async fn logout(store: &Store, principal: &OperatorPrincipal) -> Result<(), OperatorError> {
    let session = principal.session_id.clone();
    store
        .append_internal(None, move |conn| {
            Box::pin(async move {
                db::query("UPDATE operator_sessions SET revoked_at = $1 WHERE id = $2")
                    .bind(crate::clock::now())
                    .bind(&session)
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .await?;
    Ok(())
}

/// For the posture check: operators by status, and the active ones without
/// a confirmed second factor (none can exist: confirming it activates).
pub async fn census(store: &Store) -> Result<(i64, i64, Vec<(String, i64)>), StoreError> {
    if !store.schema_has(SCHEMA) {
        return Ok((0, 0, Vec::new()));
    }
    let mut tx = store.read_unscoped().await?;
    let active: i64 = db::query_scalar("SELECT COUNT(*) FROM operators WHERE status = 'active'")
        .fetch_one(tx.conn())
        .await?;
    let without: i64 = db::query_scalar(
        "SELECT COUNT(*) FROM operators WHERE status = 'active' AND mfa_confirmed_at IS NULL",
    )
    .fetch_one(tx.conn())
    .await?;
    let rows = db::query(
        "SELECT role, COUNT(*) FROM operators WHERE status = 'active' GROUP BY role ORDER BY role",
    )
    .fetch_all(tx.conn())
    .await?;
    let mut roles = Vec::new();
    for row in &rows {
        roles.push((row.try_get(0)?, row.try_get(1)?));
    }
    Ok((active, without, roles))
}
