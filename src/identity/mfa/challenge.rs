//! IAM-3: the second step of a login, as its token and its row keep it.
//!
//! The password step writes nothing: the `mfa_token` it hands out names
//! the tenant, the user, the device and the end of the step, signed with
//! the instance's token-signing key (`<sr_mfa_… random>.<user/device/end>.
//! <Ed25519 signature>`). What happens to the step later — a wrong code
//! counted, a code mailed or texted, the step spent by the code that
//! opened a session — is recorded in its `mfa_challenges` row, keyed by
//! the hash of the random part, which the first of those creates. Each
//! is one guarded upsert: an existing row changes only while it is
//! unspent and has attempts left, so of racing codes one spends the step
//! and a spent or exhausted step stays so.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};

use super::super::IdentityError;
use super::super::tokens::{OpaqueToken, TokenKind};
use super::{CHALLENGE_ATTEMPTS, CHALLENGE_MINUTES};
use crate::context::TenantScope;
use crate::store::{Store, db};

/// A login's second step, as its token names it.
#[derive(Clone, Debug)]
pub(in crate::identity) struct Step {
    pub scope: TenantScope,
    pub user_id: String,
    pub device_id: Option<String>,
    /// When the step ends (RFC 3339).
    pub expires_at: String,
    /// The hash of the token's random part: the key of its row.
    pub hash: String,
}

fn message(random: &str, payload: &str) -> String {
    format!("strongroom/v1/mfa-step/{random}/{payload}")
}

/// The token of a new second step; issuing it writes nothing.
pub(super) fn issue(
    key: &SigningKey,
    scope: &TenantScope,
    user_id: &str,
    device_id: Option<&str>,
) -> (String, Step) {
    let random = OpaqueToken::generate(TokenKind::MfaChallenge, scope.tenant_id());
    let ends = crate::clock::unix_now() + CHALLENGE_MINUTES * 60;
    let payload = URL_SAFE_NO_PAD.encode(format!("{user_id}/{}/{ends}", device_id.unwrap_or("")));
    let signature = key.sign(message(&random.reveal(), &payload).as_bytes());
    let token = format!(
        "{}.{payload}.{}",
        random.reveal(),
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    );
    let step = Step {
        scope: scope.clone(),
        user_id: user_id.to_owned(),
        device_id: device_id.map(str::to_owned),
        expires_at: rfc3339(ends).unwrap_or_default(),
        hash: random.hash(),
    };
    (token, step)
}

/// The step a token names, if this instance signed it and it has not
/// ended (whether it is still open is its row's to say: [`state`]).
pub(super) fn open(key: &SigningKey, token: &str) -> Result<Step, IdentityError> {
    let invalid = || IdentityError::InvalidToken;
    let mut parts = token.split('.');
    let (Some(random), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let random = OpaqueToken::parse(TokenKind::MfaChallenge, random).ok_or_else(invalid)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(invalid)?;
    key.verifying_key()
        .verify(message(&random.reveal(), payload).as_bytes(), &signature)
        .map_err(|_| invalid())?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or_else(invalid)?;
    let mut fields = payload.split('/');
    let (Some(user_id), Some(device_id), Some(ends), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(invalid());
    };
    let ends: i64 = ends.parse().map_err(|_| invalid())?;
    if ends <= crate::clock::unix_now() {
        return Err(invalid());
    }
    Ok(Step {
        scope: TenantScope::trusted(random.tenant()),
        user_id: user_id.to_owned(),
        device_id: (!device_id.is_empty()).then(|| device_id.to_owned()),
        expires_at: rfc3339(ends).ok_or_else(invalid)?,
        hash: random.hash(),
    })
}

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// What a step's user and row say now, for a step still open.
pub(super) struct Open {
    pub email: String,
    pub must_change_password: bool,
    /// A code sent for it, by hash, until when, and by which channel.
    pub code_hash: Option<String>,
    pub code_until: Option<String>,
    pub code_channel: Option<String>,
}

/// The step's user (active) and row, if the step is still open: not
/// spent and with attempts left.
pub(super) async fn state(store: &Store, step: &Step) -> Result<Open, IdentityError> {
    let channel = if store.schema_has(super::passkeys::SCHEMA) {
        "c.code_channel"
    } else {
        "NULL"
    };
    let must_change = if store.schema_has(crate::mail::SCHEMA) {
        "u.password_change_required"
    } else {
        "0"
    };
    let mut tx = store.read(&step.scope).await?;
    let row = db::query(format!(
        "SELECT u.email, {must_change}, c.used_at, c.attempts, c.email_code_hash, \
         c.email_code_expires_at, {channel} FROM users u \
         LEFT JOIN mfa_challenges c ON c.tenant_id = u.tenant_id AND c.token_hash = $3 \
         WHERE u.tenant_id = $1 AND u.id = $2 AND u.status = 'active'"
    ))
    .bind(step.scope.id_str())
    .bind(&step.user_id)
    .bind(&step.hash)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(IdentityError::InvalidToken)?;
    let used: Option<String> = row.try_get(2)?;
    let attempts: Option<i64> = row.try_get(3)?;
    if used.is_some() || attempts.unwrap_or(0) >= CHALLENGE_ATTEMPTS {
        return Err(IdentityError::InvalidToken);
    }
    Ok(Open {
        email: row.try_get(0)?,
        must_change_password: row.try_get::<i64, _>(1)? != 0,
        code_hash: row.try_get(4)?,
        code_until: row.try_get(5)?,
        code_channel: row.try_get(6)?,
    })
}

/// What one upsert records of a step.
pub(super) enum Record<'a> {
    /// A wrong code: one attempt.
    Attempt,
    /// The right code: one attempt, and the step spent.
    Spent,
    /// A code sent, by hash, until when, and by which channel (`None`
    /// on a schema from before SMS).
    Code {
        hash: &'a str,
        until: &'a str,
        channel: Option<&'a str>,
    },
}

/// Records `what` of `step` in its row, creating the row if nothing had
/// happened to the step yet. Whether it did: false when the step was
/// spent or out of attempts (an existing row changes only while it is
/// neither).
pub(super) async fn record(
    conn: &mut db::Conn,
    step: &Step,
    what: Record<'_>,
) -> Result<bool, db::Error> {
    let now = crate::clock::now();
    let (attempts, used_at, code_hash, code_until, channel) = match &what {
        Record::Attempt => (1, None, None, None, None),
        Record::Spent => (1, Some(now.clone()), None, None, None),
        Record::Code {
            hash,
            until,
            channel,
        } => (0, None, Some(*hash), Some(*until), *channel),
    };
    let (channel_column, channel_value, set) = match &what {
        Record::Attempt => ("", "", "attempts = mfa_challenges.attempts + 1"),
        Record::Spent => (
            "",
            "",
            "attempts = mfa_challenges.attempts + 1, used_at = excluded.used_at",
        ),
        Record::Code { channel: None, .. } => (
            "",
            "",
            "email_code_hash = excluded.email_code_hash, \
             email_code_expires_at = excluded.email_code_expires_at",
        ),
        Record::Code {
            channel: Some(_), ..
        } => (
            ", code_channel",
            ", $12",
            "email_code_hash = excluded.email_code_hash, \
             email_code_expires_at = excluded.email_code_expires_at, \
             code_channel = excluded.code_channel",
        ),
    };
    let mut query = db::query(format!(
        "INSERT INTO mfa_challenges (id, tenant_id, user_id, token_hash, device_id, expires_at, \
         attempts, used_at, email_code_hash, email_code_expires_at, created_at{channel_column}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11{channel_value}) \
         ON CONFLICT (token_hash) DO UPDATE SET {set} \
         WHERE mfa_challenges.used_at IS NULL AND mfa_challenges.attempts < {CHALLENGE_ATTEMPTS}"
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(step.scope.id_str())
    .bind(&step.user_id)
    .bind(&step.hash)
    .bind(step.device_id.as_deref())
    .bind(&step.expires_at)
    .bind(attempts)
    .bind(used_at)
    .bind(code_hash)
    .bind(code_until)
    .bind(&now);
    if let Some(channel) = channel {
        query = query.bind(channel);
    }
    Ok(query.execute(conn).await?.rows_affected() == 1)
}
