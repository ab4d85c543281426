//! IAM-3: second factors.
//!
//! * **Factors.** TOTP (RFC 6238, [`super::totp`]; the secret sealed with
//!   the tenant's key, each step accepted once) and one-time codes by mail
//!   (six digits, ten minutes, stored hashed). Ten single-use recovery codes
//!   (80 bits each, stored as SHA-256) come with the first factor.
//! * **Login.** A user with a confirmed factor gets `{mfa_required,
//!   mfa_token, methods}` from the password step; `POST /auth/mfa/verify`
//!   with a code completes it. The token is single-use, lives five minutes
//!   and allows five codes; it is signed, so the password step writes
//!   nothing ([`challenge`]).
//! * **Policy.** The tenant's `mfa_policy` (`off`, `all`, or a list of
//!   roles): a user it covers who has no factor can only enrol one.
//! * **Step-up.** Enrolling another factor, removing one, new recovery
//!   codes and a password change need a second factor from the last
//!   [`STEP_UP_MINUTES`] on the session (`POST /auth/mfa/step-up`).
//! * Admins see which users have which factors, never a secret, and can
//!   remove a user's factors (a lost phone).

mod challenge;
pub mod http;
pub mod passkeys;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::post::Post;
use super::{IdentityError, totp};
use crate::access::Principal;
use crate::context::{Permit, RequestMeta, TenantScope};
use crate::crypto::Vault;
use crate::mail::{self, Mail};
use crate::store::db;
use crate::store::{Change, JournalOp, Store, WriteTx};

/// The schema migration that brought second factors.
pub const SCHEMA: i64 = 13;
/// How long the second step of a login may take.
pub const CHALLENGE_MINUTES: i64 = 5;
/// Codes one login's second step allows.
pub const CHALLENGE_ATTEMPTS: i64 = 5;
/// How recent a second factor must be for a sensitive operation.
pub const STEP_UP_MINUTES: i64 = 10;
/// How long a mailed code works.
pub const EMAIL_CODE_MINUTES: i64 = 10;
/// Recovery codes issued at once.
pub const RECOVERY_CODES: usize = 10;

/// How a code is presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Totp,
    Email,
    Sms,
    Recovery,
    Passkey,
}

impl Method {
    pub fn parse(text: &str) -> Option<Method> {
        match text {
            "totp" => Some(Method::Totp),
            "email" => Some(Method::Email),
            "sms" => Some(Method::Sms),
            "recovery" => Some(Method::Recovery),
            "passkey" => Some(Method::Passkey),
            _ => None,
        }
    }

    /// The channel a one-time code of this method is sent by.
    fn channel(self) -> Option<&'static str> {
        match self {
            Method::Email => Some("email"),
            Method::Sms => Some("sms"),
            _ => None,
        }
    }
}

/// What a second step is shown: a code (TOTP, sent, recovery) or a
/// passkey's assertion (the JSON of `navigator.credentials.get()`).
pub enum Proof {
    Code(SecretString),
    Passkey(serde_json::Value),
}

impl Proof {
    fn code(&self) -> Result<&SecretString, IdentityError> {
        match self {
            Proof::Code(code) => Ok(code),
            Proof::Passkey(_) => Err(IdentityError::InvalidCode),
        }
    }
}

/// A tenant's `mfa_policy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    Off,
    All,
    Roles(Vec<String>),
}

impl Policy {
    /// As stored: `off`, `all`, or a JSON list of roles.
    pub fn from_stored(text: &str) -> Policy {
        match text {
            "all" => Policy::All,
            "off" | "" => Policy::Off,
            list => serde_json::from_str::<Vec<String>>(list)
                .map(Policy::Roles)
                .unwrap_or(Policy::All),
        }
    }

    pub fn to_stored(&self) -> String {
        match self {
            Policy::Off => "off".to_owned(),
            Policy::All => "all".to_owned(),
            Policy::Roles(roles) => serde_json::to_string(roles).unwrap_or_else(|_| "all".into()),
        }
    }

    /// The policy's JSON form in the settings: `"off"`, `"all"` or a list.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Policy::Off => json!("off"),
            Policy::All => json!("all"),
            Policy::Roles(roles) => json!(roles),
        }
    }

    /// The policy a settings value shows (`to_json`'s inverse).
    pub fn from_json(value: &serde_json::Value) -> Policy {
        match value {
            serde_json::Value::String(s) => Policy::from_stored(s),
            serde_json::Value::Array(items) => Policy::Roles(
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect(),
            ),
            _ => Policy::Off,
        }
    }

    pub fn requires(&self, role: &str) -> bool {
        match self {
            Policy::Off => false,
            Policy::All => true,
            Policy::Roles(roles) => roles.iter().any(|r| r == role),
        }
    }
}

/// A factor as its user and their admins see it: never its secret.
#[derive(Debug, Serialize)]
pub struct Factor {
    pub id: String,
    pub kind: String,
    /// An SMS number's last digits, or a passkey's name.
    pub label: Option<String>,
    pub confirmed: bool,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// A user's factors and how many recovery codes are left.
#[derive(Debug, Serialize)]
pub struct Factors {
    pub factors: Vec<Factor>,
    pub recovery_codes_left: i64,
}

fn sha256(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()))
}

fn aad(tenant: &str, factor: &str) -> Vec<u8> {
    format!("strongroom/v1/mfa/{tenant}/{factor}").into_bytes()
}

/// A recovery code as typed, normalised: upper case, no separators.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Ten fresh recovery codes: 16 base32 characters (80 bits) in groups of 4.
fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let text = totp::base32(&crate::crypto::random_bytes::<10>());
            text.as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// A six-digit code for mail, uniformly drawn.
fn six_digits() -> String {
    loop {
        let n = u32::from_be_bytes(crate::crypto::random_bytes::<4>());
        // Below the largest multiple of 10^6, every code is equally likely.
        if n < u32::MAX - (u32::MAX % 1_000_000) {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// The kinds of the user's confirmed factors, and `recovery` if codes are
/// left: the methods the second step of a login offers.
pub(super) async fn methods(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
) -> Result<Vec<&'static str>, IdentityError> {
    if !store.schema_has(SCHEMA) {
        return Ok(Vec::new());
    }
    let mut tx = store.read(scope).await?;
    let kinds: Vec<String> = db::query_scalar(
        "SELECT DISTINCT kind FROM mfa_factors WHERE tenant_id = $1 AND user_id = $2 \
         AND confirmed_at IS NOT NULL ORDER BY kind",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    let mut methods: Vec<&'static str> = kinds
        .iter()
        .filter_map(|k| match k.as_str() {
            "totp" => Some("totp"),
            "email" => Some("email"),
            "sms" => Some("sms"),
            "passkey" => Some("passkey"),
            _ => None,
        })
        .collect();
    if !methods.is_empty() {
        let left: i64 = db::query_scalar(
            "SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 \
             AND used_at IS NULL",
        )
        .bind(scope.id_str())
        .bind(user_id)
        .fetch_one(tx.conn())
        .await?;
        if left > 0 {
            methods.push("recovery");
        }
    }
    Ok(methods)
}

/// The second step a login must take.
#[derive(Debug, Serialize)]
pub struct Challenge {
    pub mfa_required: bool,
    pub mfa_token: String,
    pub methods: Vec<&'static str>,
    pub expires_in: i64,
    /// With a passkey among the methods: the options to pass to
    /// `navigator.credentials.get()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey: Option<serde_json::Value>,
}

/// Opens the second step of a login whose password was right: a signed
/// token, and nothing written ([`challenge`]).
pub(super) async fn open_challenge(
    store: &Store,
    post: &Post,
    key: &ed25519_dalek::SigningKey,
    scope: &TenantScope,
    user_id: &str,
    device_id: Option<&str>,
    methods: Vec<&'static str>,
) -> Result<Challenge, IdentityError> {
    let (token, step) = challenge::issue(key, scope, user_id, device_id);
    let passkey = if methods.contains(&"passkey") {
        passkeys::second_step_options(store, post, scope, user_id, &step.hash).await?
    } else {
        None
    };
    Ok(Challenge {
        mfa_required: true,
        mfa_token: token,
        methods,
        expires_in: CHALLENGE_MINUTES * 60,
        passkey,
    })
}

/// Who a completed second step logs in.
pub(super) struct Passed {
    pub scope: TenantScope,
    pub user_id: String,
    pub email: String,
    pub device_id: Option<String>,
    /// An admin's reset is waiting for the user's own password (IAM-2).
    pub must_change_password: bool,
    /// To spend when the session opens ([`spend_in`]): the second step,
    /// and what its code uses up.
    pub spend: Spend,
}

/// Checks a code against a login's second step: at most
/// [`CHALLENGE_ATTEMPTS`] codes, and the step is spent by the one that
/// succeeds (a guarded update: racing codes, one wins).
pub(super) async fn pass_challenge(
    store: &Store,
    post: &Post,
    key: &ed25519_dalek::SigningKey,
    token: &str,
    method: Method,
    proof: &Proof,
) -> Result<Passed, IdentityError> {
    let vault = &post.vault;
    let step = challenge::open(key, token)?;
    let open = challenge::state(store, &step).await?;
    let (scope, user_id, hash) = (step.scope.clone(), step.user_id.clone(), step.hash.clone());
    let (mailed, mailed_until, channel) = (open.code_hash, open.code_until, open.code_channel);
    // What the code would spend is found first (pure work on what was
    // read); counting the attempt and spending then go in one job, so no
    // code is accepted without its attempt counted.
    let spends = match method {
        Method::Email | Method::Sms => {
            let code = proof.code()?;
            let fresh = mailed_until
                .as_deref()
                .is_some_and(|until| until > crate::clock::now().as_str());
            // A code counts only by the channel it was sent by (rows from
            // before SMS existed were mailed).
            let by = channel.as_deref().unwrap_or("email");
            Spends::Nothing(
                fresh
                    && method.channel() == Some(by)
                    && mailed.is_some_and(|h| {
                        use subtle::ConstantTimeEq;
                        bool::from(
                            h.as_bytes()
                                .ct_eq(sha256(code.expose_secret().trim()).as_bytes()),
                        )
                    }),
            )
        }
        Method::Totp => {
            match totp_candidate(store, vault, &scope, &user_id, proof.code()?).await? {
                Some((factor, step)) => Spends::Step(factor, step),
                None => Spends::Nothing(false),
            }
        }
        Method::Recovery => recovery_spends(store, &scope, &user_id, proof.code()?).await?,
        Method::Passkey => {
            let Proof::Passkey(credential) = proof else {
                return Err(IdentityError::InvalidCode);
            };
            match passkeys::second_step(store, post, &scope, &user_id, &hash, credential).await? {
                Some((factor, count)) => Spends::Counter(factor, count),
                None => Spends::Nothing(false),
            }
        }
    };
    // A wrong code is counted in a job of its own (it must count although
    // nothing else commits); a right one is counted, and what it uses
    // spent, in the write that opens the session ([`spend_in`]), one
    // durable write fewer per login.
    if let Spends::Nothing(false) = spends {
        return Err(if count_attempt(store, &step).await? {
            IdentityError::InvalidCode
        } else {
            IdentityError::InvalidToken
        });
    }
    Ok(Passed {
        scope,
        user_id,
        email: open.email,
        device_id: step.device_id.clone(),
        must_change_password: open.must_change_password,
        spend: Spend::Challenge { step, spends },
    })
}

/// A second factor that passed, to spend in the write job that opens its
/// session.
pub(in crate::identity) enum Spend {
    /// A login's second step, and what the right code uses up.
    Challenge {
        step: challenge::Step,
        spends: Spends,
    },
    /// A passkey ticket (a login without a password) and its counter.
    Ticket {
        hash: String,
        expires_at: String,
        factor_id: String,
        counter: i64,
    },
}

/// Spends what a login passed in the write job that opens its session: of
/// racing uses of one second step or ticket, one opens a session.
pub(in crate::identity) async fn spend_in(
    tx: &mut WriteTx,
    spend: &Spend,
) -> Result<(), IdentityError> {
    let (step, spends) = match spend {
        Spend::Challenge { step, spends } => (step, spends),
        Spend::Ticket {
            hash,
            expires_at,
            factor_id,
            counter,
        } => {
            passkeys::spend_ticket(tx, hash, expires_at).await?;
            let tenant = tx.scope().id_str().to_owned();
            if !passkeys::spend_counter(tx.conn(), &tenant, factor_id, *counter).await? {
                return Err(IdentityError::PasskeyRefused);
            }
            journal_spend(tx, "", &Spends::Counter(factor_id.clone(), *counter));
            return Ok(());
        }
    };
    // Counted and spent in one guarded upsert: of racing codes for one
    // second step, one gets here; the others roll back.
    if !challenge::record(tx.conn(), step, challenge::Record::Spent).await? {
        return Err(IdentityError::InvalidToken);
    }
    let tenant = tx.scope().id_str().to_owned();
    if spend_what(tx.conn(), &tenant, &step.user_id, spends).await? {
        journal_spend(tx, &step.user_id, spends);
        Ok(())
    } else {
        Err(IdentityError::InvalidCode)
    }
}

/// Journals what a code used up, so that no restore brings back a spent
/// recovery code or an earlier TOTP step (BAK-4).
fn journal_spend(tx: &mut WriteTx, user: &str, spends: &Spends) {
    let (entity, entity_id) = match spends {
        Spends::Nothing(_) => return,
        Spends::Step(factor, _) | Spends::Counter(factor, _) => ("mfa_factor", factor.clone()),
        Spends::Recovery(_) => ("recovery_codes", user.to_owned()),
    };
    tx.record(Change {
        entity,
        entity_id,
        op: JournalOp::Update,
        before: None,
        after: Some(json!({"used_at": crate::clock::now()})),
        sensitive: Vec::new(),
        diff_of: None,
    });
}

/// Uses up what a right code spends, each by a guarded update: whether it
/// was still there (a step not yet used, a recovery code not yet used, a
/// passkey counter that grew).
async fn spend_what(
    conn: &mut db::Conn,
    tenant: &str,
    user: &str,
    spends: &Spends,
) -> Result<bool, db::Error> {
    let now = crate::clock::now();
    Ok(match spends {
        Spends::Nothing(right) => *right,
        Spends::Step(factor, step) => {
            db::query(
                "UPDATE mfa_factors SET last_step = $3, last_used_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND last_step < $3",
            )
            .bind(tenant)
            .bind(factor)
            .bind(*step)
            .bind(&now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1
        }
        Spends::Counter(factor, count) => {
            passkeys::spend_counter(conn, tenant, factor, *count).await?
        }
        Spends::Recovery(hash) => {
            db::query(
                "UPDATE recovery_codes SET used_at = $4 WHERE tenant_id = $1 \
                 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(tenant)
            .bind(user)
            .bind(hash)
            .bind(&now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1
        }
    })
}

/// What a code presented to a second step uses up if it is right.
pub(in crate::identity) enum Spends {
    /// Nothing, and whether the code was right (a mailed code).
    Nothing(bool),
    /// A TOTP factor's step.
    Step(String, i64),
    /// A recovery code, by its hash.
    Recovery(String),
    /// A passkey's signature counter (which must grow, unless it is kept
    /// at zero).
    Counter(String, i64),
}

/// Counts a wrong code against a login's second step (a guarded upsert):
/// whether it counted (false: the step is used or out of attempts).
async fn count_attempt(store: &Store, step: &challenge::Step) -> Result<bool, IdentityError> {
    let step = step.clone();
    Ok(store
        .append_internal(Some(&step.scope.clone()), move |conn| {
            Box::pin(async move {
                Ok(challenge::record(conn, &step, challenge::Record::Attempt).await?)
            })
        })
        .await?)
}

/// The factor and step whose TOTP code `code` is, among the user's
/// confirmed factors, if any (not yet spent).
async fn totp_candidate(
    store: &Store,
    vault: &Vault,
    scope: &TenantScope,
    user_id: &str,
    code: &SecretString,
) -> Result<Option<(String, i64)>, IdentityError> {
    let tenant = scope.id_str().to_owned();
    let rows = {
        let mut tx = store.read(scope).await?;
        let rows = db::query(
            "SELECT id, key_version, sealed, last_step FROM mfa_factors WHERE tenant_id = $1 \
             AND user_id = $2 AND kind = 'totp' AND confirmed_at IS NOT NULL",
        )
        .bind(&tenant)
        .bind(user_id)
        .fetch_all(tx.conn())
        .await?;
        let mut opened = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let sealed: Vec<u8> = row.try_get(2)?;
            let last: i64 = row.try_get(3)?;
            let key = vault
                .key(tx.conn(), &tenant, version)
                .await
                .map_err(|e| IdentityError::Mail(crate::mail::MailError::Crypto(e)))?;
            if let Ok(secret) = key.open(&aad(&tenant, &id), &sealed) {
                opened.push((id, secret, last));
            }
        }
        opened
    };
    // A step used already is no candidate (a replay counts as a wrong
    // code); the guarded update still decides between racing uses.
    let now = totp::step_at(crate::clock::unix_now());
    Ok(rows.into_iter().find_map(|(id, secret, last)| {
        totp::matching_step(&secret, code.expose_secret(), now)
            .filter(|step| *step > last)
            .map(|step| (id, step))
    }))
}

/// What a recovery code would spend: itself, if it is one of the user's
/// unused codes (else it is a wrong code, counted as one).
async fn recovery_spends(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
    code: &SecretString,
) -> Result<Spends, IdentityError> {
    let hash = sha256(&normalise(code.expose_secret()));
    let mut tx = store.read(scope).await?;
    let left: i64 = db::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 \
         AND code_hash = $3 AND used_at IS NULL",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .bind(&hash)
    .fetch_one(tx.conn())
    .await?;
    Ok(if left == 1 {
        Spends::Recovery(hash)
    } else {
        Spends::Nothing(false)
    })
}

/// Sends a code for a login's second step by mail or SMS, if the user has
/// a confirmed factor of that kind (404 otherwise).
pub async fn send_login_code(
    store: &Store,
    post: &Post,
    key: &ed25519_dalek::SigningKey,
    token: &str,
    method: Method,
) -> Result<(), IdentityError> {
    let channel = method.channel().ok_or(IdentityError::NoSuchFactor)?;
    let step = challenge::open(key, token)?;
    let email = challenge::state(store, &step).await?.email;
    let (scope, user_id) = (step.scope.clone(), step.user_id.clone());
    // The phone of an SMS factor (its sealed payload), or the mail factor.
    let phone = match method {
        Method::Sms => Some(
            sms_phone(store, &post.vault, &scope, &user_id)
                .await?
                .ok_or(IdentityError::NoSuchFactor)?,
        ),
        _ => {
            if !has_factor(store, &scope, &user_id, "email").await? {
                return Err(IdentityError::NoSuchFactor);
            }
            None
        }
    };
    let letterhead = match method {
        Method::Sms => {
            post.mailer.sms().ok_or(IdentityError::SmsOff)?;
            None
        }
        _ => Some(
            post.letterhead(store, &scope)
                .await?
                .ok_or(IdentityError::MailOff)?,
        ),
    };
    let code = six_digits();
    let code_hash = sha256(&code);
    let permit = Permit::authentication(
        scope.clone(),
        crate::context::Actor::user(user_id.clone(), email.clone()),
    );
    let post_in = post.clone();
    let with_channel = store.schema_has(passkeys::SCHEMA);
    let code_in = code.clone();
    store
        .write(
            &permit,
            &RequestMeta::default(),
            if phone.is_some() {
                "auth.mfa.code_texted"
            } else {
                "auth.mfa.code_mailed"
            },
            move |tx| {
                Box::pin(async move {
                    let until = crate::clock::in_seconds(EMAIL_CODE_MINUTES * 60);
                    let sent = challenge::Record::Code {
                        hash: &code_hash,
                        until: &until,
                        channel: with_channel.then_some(channel),
                    };
                    if !challenge::record(tx.conn(), &step, sent).await? {
                        return Err(IdentityError::InvalidToken);
                    }
                    if let Some(letterhead) = &letterhead {
                        mail_code(tx, &post_in, letterhead, &email, &code_in).await?;
                    }
                    tx.set_target("user", user_id);
                    Ok::<_, IdentityError>(())
                })
            },
        )
        .await?;
    if let Some(phone) = phone {
        text_code(store, post, &scope, &phone, &code).await?;
    }
    Ok(())
}

/// Whether the user has a confirmed factor of `kind`.
async fn has_factor(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
    kind: &str,
) -> Result<bool, IdentityError> {
    let mut tx = store.read(scope).await?;
    let n: i64 = db::query_scalar(
        "SELECT COUNT(*) FROM mfa_factors WHERE tenant_id = $1 AND user_id = $2 \
         AND kind = $3 AND confirmed_at IS NOT NULL",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .bind(kind)
    .fetch_one(tx.conn())
    .await?;
    Ok(n > 0)
}

/// What an SMS factor seals: its number and, until it is confirmed, the
/// hash of the code that confirms it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SmsPayload {
    phone: String,
    #[serde(default)]
    code: Option<String>,
}

/// The number of the user's (newest) confirmed SMS factor.
async fn sms_phone(
    store: &Store,
    vault: &Vault,
    scope: &TenantScope,
    user_id: &str,
) -> Result<Option<String>, IdentityError> {
    let tenant = scope.id_str().to_owned();
    let mut tx = store.read(scope).await?;
    let row = db::query(
        "SELECT id, key_version, sealed FROM mfa_factors WHERE tenant_id = $1 \
         AND user_id = $2 AND kind = 'sms' AND confirmed_at IS NOT NULL \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&tenant)
    .bind(user_id)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (id, version, sealed): (String, i64, Vec<u8>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let opened = open_sealed(vault, &mut tx, &tenant, &id, version, &sealed).await?;
    let payload: SmsPayload = serde_json::from_slice(&opened)
        .map_err(|_| IdentityError::Internal("an SMS factor's payload does not parse"))?;
    Ok(Some(payload.phone))
}

/// Opens a factor's sealed payload.
async fn open_sealed(
    vault: &Vault,
    tx: &mut crate::store::ReadTx,
    tenant: &str,
    factor_id: &str,
    version: i64,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, IdentityError> {
    let key = vault
        .key(tx.conn(), tenant, version)
        .await
        .map_err(|e| IdentityError::Mail(crate::mail::MailError::Crypto(e)))?;
    key.open(&aad(tenant, factor_id), sealed)
        .map_err(|_| IdentityError::Internal("a factor's secret does not open"))
}

/// Sends `code` by SMS to `phone`, in the tenant's language.
async fn text_code(
    store: &Store,
    post: &Post,
    scope: &TenantScope,
    phone: &str,
    code: &str,
) -> Result<(), IdentityError> {
    let sender = post.mailer.sms().ok_or(IdentityError::SmsOff)?;
    let letterhead = mail::letterhead(store, scope).await?;
    let minutes = EMAIL_CODE_MINUTES.to_string();
    let text = mail::templates::render(
        "sms_code",
        &letterhead.language,
        &[
            ("tenant", letterhead.tenant_name.as_str()),
            ("code", code),
            ("minutes", minutes.as_str()),
        ],
    )
    .map_err(|e| IdentityError::Mail(e.into()))?
    .text;
    sender
        .send(phone, text.trim())
        .await
        .map_err(IdentityError::SmsNotSent)
}

async fn mail_code(
    tx: &mut WriteTx,
    post: &Post,
    letterhead: &mail::Letterhead,
    email: &str,
    code: &str,
) -> Result<(), IdentityError> {
    mail::enqueue(
        tx,
        &post.vault.in_write(),
        letterhead,
        Mail {
            to: email.to_owned(),
            template: "mfa_code",
            values: vec![
                ("email", email.to_owned()),
                ("code", code.to_owned()),
                ("minutes", EMAIL_CODE_MINUTES.to_string()),
            ],
        },
    )
    .await?;
    Ok(())
}

/// Refuses a sensitive operation without a recent second factor, for a
/// user who has one.
pub fn require_recent(principal: &Principal) -> Result<(), IdentityError> {
    if !principal.mfa_enrolled {
        return Ok(());
    }
    let recent = principal
        .mfa_at
        .as_deref()
        .and_then(crate::clock::parse_rfc3339)
        .is_some_and(|at| {
            time::OffsetDateTime::now_utc() - at <= time::Duration::minutes(STEP_UP_MINUTES)
        });
    if recent {
        Ok(())
    } else {
        Err(IdentityError::StepUpRequired)
    }
}

/// A factor being enrolled, until it is confirmed: for TOTP the secret to
/// show once (as text and as the URI of a QR code); for mail and SMS,
/// nothing (the code is sent); for a passkey, the options to pass to
/// `navigator.credentials.create()`.
#[derive(Debug, Serialize)]
pub struct Enrolment {
    pub factor_id: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey: Option<serde_json::Value>,
}

/// What a user asks to enrol.
pub struct NewFactor {
    pub kind: String,
    /// For SMS: the number, as typed.
    pub phone: Option<String>,
    /// For a passkey: a name to tell it by.
    pub name: Option<String>,
}

/// Starts a factor for the caller: TOTP (the secret is returned once),
/// mail or SMS (a code is sent), or a passkey (the browser creates it). It
/// counts once confirmed.
pub async fn enrol(
    store: &Store,
    post: &Post,
    principal: &Principal,
    request: &NewFactor,
    meta: &RequestMeta,
) -> Result<Enrolment, IdentityError> {
    require_recent(principal)?;
    let kind = match request.kind.as_str() {
        "totp" => "totp",
        "email" => "email",
        "sms" => "sms",
        "passkey" => "passkey",
        _ => return Err(IdentityError::NoSuchFactor),
    };
    if matches!(kind, "sms" | "passkey") && !store.schema_has(passkeys::SCHEMA) {
        return Err(IdentityError::NoSuchFactor);
    }
    let phone = match kind {
        "sms" => {
            post.mailer.sms().ok_or(IdentityError::SmsOff)?;
            Some(
                request
                    .phone
                    .as_deref()
                    .and_then(crate::mail::sms::parse_phone)
                    .ok_or(IdentityError::InvalidPhone)?,
            )
        }
        _ => None,
    };
    let label = match kind {
        "sms" => phone.as_deref().map(crate::mail::sms::masked),
        "passkey" => Some(passkeys::label(request.name.as_deref())?),
        _ => None,
    };
    let letterhead = post.letterhead(store, principal.scope()).await?;
    if kind == "email" && letterhead.is_none() {
        return Err(IdentityError::MailOff);
    }
    let tenant_name = mail::letterhead(store, principal.scope())
        .await?
        .tenant_name;
    let secret = crate::crypto::random_bytes::<{ totp::SECRET_BYTES }>();
    let challenge = crate::crypto::random_bytes::<32>();
    let passkey = match kind {
        "passkey" => Some(
            passkeys::creation_options(store, post, principal, &tenant_name, &challenge).await?,
        ),
        _ => None,
    };
    let code = six_digits();
    let code_in = code.clone();
    let factor_id = uuid::Uuid::now_v7().to_string();
    let (user_id, email) = (principal.user_id.clone(), principal.email.clone());
    let post_in = post.clone();
    let id = factor_id.clone();
    // A TOTP factor seals its secret; a mail factor the hash of the code
    // that confirms it; an SMS factor its number and that hash; a passkey
    // the challenge its creation must sign.
    let payload = zeroize::Zeroizing::new(match kind {
        "totp" => secret.to_vec(),
        "sms" => serde_json::to_vec(&SmsPayload {
            phone: phone.clone().unwrap_or_default(),
            code: Some(sha256(&code)),
        })
        .map_err(|_| IdentityError::Internal("an SMS factor does not serialise"))?,
        "passkey" => challenge.to_vec(),
        _ => sha256(&code).into_bytes(),
    });
    let labelled = store.schema_has(passkeys::SCHEMA);
    store
        .write(&principal.own_permit(), meta, "auth.mfa.enrol", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let key = post_in
                    .vault
                    .in_write()
                    .active_in(tx)
                    .await
                    .map_err(|e| IdentityError::Mail(crate::mail::MailError::Crypto(e)))?;
                let sealed = key.key.seal(&aad(&tenant, &id), &payload);
                let now = crate::clock::now();
                db::query(format!(
                    "INSERT INTO mfa_factors (id, tenant_id, user_id, kind, key_version, \
                     sealed, last_step, created_at{}) VALUES ($1, $2, $3, $4, $5, $6, 0, $7{})",
                    if labelled { ", label" } else { "" },
                    if labelled { ", $8" } else { "" }
                ))
                .bind(&id)
                .bind(&tenant)
                .bind(&user_id)
                .bind(kind)
                .bind(key.version)
                .bind(sealed)
                .bind(&now)
                .bind(label.clone())
                .execute(tx.conn())
                .await?;
                tx.record(Change {
                    entity: "mfa_factor",
                    entity_id: id.clone(),
                    op: JournalOp::Insert,
                    before: None,
                    after: Some(json!({
                        "id": id, "user_id": user_id, "kind": kind, "label": label,
                        "created_at": now,
                    })),
                    sensitive: vec![],
                    diff_of: None,
                });
                if let (true, Some(letterhead)) = (kind == "email", &letterhead) {
                    mail_code(tx, &post_in, letterhead, &email, &code_in).await?;
                }
                tx.set_target("mfa_factor", id);
                Ok::<_, IdentityError>(())
            })
        })
        .await?;
    if let Some(phone) = &phone {
        text_code(store, post, principal.scope(), phone, &code).await?;
    }
    let totp = kind == "totp";
    Ok(Enrolment {
        otpauth_uri: totp.then(|| {
            totp::uri(
                &format!("Strongroom {tenant_name}"),
                &principal.email,
                &secret,
            )
        }),
        secret: totp.then(|| totp::base32(&secret)),
        kind,
        factor_id,
        passkey,
    })
}

/// What confirming a factor changes besides marking it confirmed: its
/// first counter or step, and for a passkey its key and credential id.
struct Confirmed {
    step: i64,
    /// The payload to seal in place of the pending one (an SMS number
    /// without its confirming code, a passkey's public key).
    reseal: Option<Vec<u8>>,
    /// A passkey's credential id.
    credential_id: Option<String>,
}

/// Confirms one of the caller's factors with a code (or, for a passkey,
/// the browser's new credential); the first factor comes with recovery
/// codes (returned once). The session counts as having just passed a
/// second factor.
pub async fn confirm(
    store: &Store,
    post: &Post,
    principal: &Principal,
    factor_id: &str,
    proof: &Proof,
    meta: &RequestMeta,
) -> Result<Option<Vec<String>>, IdentityError> {
    let tenant = principal.scope().id_str().to_owned();
    let (kind, opened) = {
        let mut tx = store.read(principal.scope()).await?;
        let row = db::query(
            "SELECT kind, key_version, sealed FROM mfa_factors WHERE tenant_id = $1 \
             AND user_id = $2 AND CAST(id AS TEXT) = $3 AND confirmed_at IS NULL",
        )
        .bind(&tenant)
        .bind(&principal.user_id)
        .bind(factor_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(IdentityError::NoSuchFactor)?;
        let kind: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let sealed: Vec<u8> = row.try_get(2)?;
        let opened =
            open_sealed(&post.vault, &mut tx, &tenant, factor_id, version, &sealed).await?;
        (kind, opened)
    };
    let matches_hash = |hash: &[u8], code: &SecretString| {
        use subtle::ConstantTimeEq;
        bool::from(hash.ct_eq(sha256(code.expose_secret().trim()).as_bytes()))
    };
    let confirmed = match kind.as_str() {
        "totp" => totp::matching_step(
            &opened,
            proof.code()?.expose_secret(),
            totp::step_at(crate::clock::unix_now()),
        )
        .map(|step| Confirmed {
            step,
            reseal: None,
            credential_id: None,
        }),
        "sms" => {
            let payload: SmsPayload = serde_json::from_slice(&opened)
                .map_err(|_| IdentityError::Internal("an SMS factor's payload does not parse"))?;
            let code = proof.code()?;
            let right = payload
                .code
                .as_deref()
                .is_some_and(|h| matches_hash(h.as_bytes(), code));
            // The factor keeps its number and forgets the confirming code.
            let kept = serde_json::to_vec(&SmsPayload {
                phone: payload.phone,
                code: None,
            })
            .map_err(|_| IdentityError::Internal("an SMS factor does not serialise"))?;
            right.then_some(Confirmed {
                step: 0,
                reseal: Some(kept),
                credential_id: None,
            })
        }
        "passkey" => {
            let Proof::Passkey(credential) = proof else {
                return Err(IdentityError::BadPasskey(
                    "send the credential the browser created".into(),
                ));
            };
            let (registered, payload) =
                passkeys::register(store, post, principal.scope(), &opened, credential).await?;
            Some(Confirmed {
                step: i64::from(registered.sign_count),
                reseal: Some(payload),
                credential_id: Some(crate::identity::webauthn::encode_b64url(
                    &registered.credential_id,
                )),
            })
        }
        _ => matches_hash(&opened, proof.code()?).then_some(Confirmed {
            step: 0,
            reseal: None,
            credential_id: None,
        }),
    };
    let confirmed = confirmed.ok_or(IdentityError::InvalidCode)?;
    let codes = new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| sha256(&normalise(c))).collect();
    let (user_id, session_id, id) = (
        principal.user_id.clone(),
        principal.session_id.clone(),
        factor_id.to_owned(),
    );
    let post_in = post.clone();
    let issued = store
        .write(
            &principal.own_permit(),
            meta,
            "auth.mfa.confirm",
            move |tx| {
                Box::pin(async move {
                    let tenant = tx.scope().id_str().to_owned();
                    let now = crate::clock::now();
                    let done = db::query(
                        "UPDATE mfa_factors SET confirmed_at = $1, last_step = $2, \
                         last_used_at = $1 WHERE tenant_id = $3 AND CAST(id AS TEXT) = $4 \
                         AND confirmed_at IS NULL",
                    )
                    .bind(&now)
                    .bind(confirmed.step)
                    .bind(&tenant)
                    .bind(&id)
                    .execute(tx.conn())
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(IdentityError::NoSuchFactor);
                    }
                    if let Some(payload) = &confirmed.reseal {
                        let key =
                            post_in.vault.in_write().active_in(tx).await.map_err(|e| {
                                IdentityError::Mail(crate::mail::MailError::Crypto(e))
                            })?;
                        let sealed = key.key.seal(&aad(&tenant, &id), payload);
                        db::query(
                            "UPDATE mfa_factors SET key_version = $1, sealed = $2, \
                             credential_id = $3 WHERE tenant_id = $4 AND CAST(id AS TEXT) = $5",
                        )
                        .bind(key.version)
                        .bind(sealed)
                        .bind(confirmed.credential_id.clone())
                        .bind(&tenant)
                        .bind(&id)
                        .execute(tx.conn())
                        .await?;
                    }
                    tx.record(Change {
                        entity: "mfa_factor",
                        entity_id: id.clone(),
                        op: JournalOp::Update,
                        before: None,
                        after: Some(json!({"confirmed_at": now})),
                        sensitive: vec![],
                        diff_of: None,
                    });
                    let left: i64 = db::query_scalar(
                        "SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1 \
                         AND user_id = $2 AND used_at IS NULL",
                    )
                    .bind(&tenant)
                    .bind(&user_id)
                    .fetch_one(tx.conn())
                    .await?;
                    let issue = left == 0;
                    if issue {
                        store_recovery_codes(tx, &user_id, &hashes).await?;
                    }
                    set_enrolled(tx, &user_id, true).await?;
                    passed_on_session(tx, &session_id).await?;
                    tx.set_target("mfa_factor", id);
                    Ok(issue)
                })
            },
        )
        .await?;
    Ok(issued.then_some(codes))
}

async fn store_recovery_codes(
    tx: &mut WriteTx,
    user_id: &str,
    hashes: &[String],
) -> Result<(), IdentityError> {
    let tenant = tx.scope().id_str().to_owned();
    let now = crate::clock::now();
    db::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2")
        .bind(&tenant)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
    for hash in hashes {
        db::query(
            "INSERT INTO recovery_codes (id, tenant_id, user_id, code_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&tenant)
        .bind(user_id)
        .bind(hash)
        .bind(&now)
        .execute(tx.conn())
        .await?;
    }
    tx.record(Change {
        entity: "recovery_codes",
        entity_id: user_id.to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(json!({"issued": hashes.len(), "at": now})),
        sensitive: vec![],
        diff_of: None,
    });
    Ok(())
}

/// Marks whether the user has a confirmed factor (read by the session
/// check, with the tenant's policy).
async fn set_enrolled(
    tx: &mut WriteTx,
    user_id: &str,
    enrolled: bool,
) -> Result<(), IdentityError> {
    db::query("UPDATE users SET mfa_enrolled = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(i64::from(enrolled))
        .bind(tx.scope().id_str().to_owned())
        .bind(user_id)
        .execute(tx.conn())
        .await?;
    tx.record(Change {
        entity: "user",
        entity_id: user_id.to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(json!({"mfa_enrolled": enrolled})),
        sensitive: vec![],
        diff_of: None,
    });
    Ok(())
}

/// The session just passed a second factor (step-up), in `tx`.
pub(super) async fn passed_on_session(
    tx: &mut WriteTx,
    session_id: &str,
) -> Result<(), IdentityError> {
    let now = crate::clock::now();
    db::query("UPDATE sessions SET mfa_at = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(&now)
        .bind(tx.scope().id_str().to_owned())
        .bind(session_id)
        .execute(tx.conn())
        .await?;
    tx.record(Change {
        entity: "session",
        entity_id: session_id.to_owned(),
        op: JournalOp::Update,
        before: None,
        after: Some(json!({"mfa_at": now})),
        sensitive: vec![],
        diff_of: None,
    });
    Ok(())
}

/// What a step-up shows: the method, its code or credential, and for a
/// passkey the ticket it answers.
pub struct StepUp<'a> {
    pub method: Method,
    pub proof: &'a Proof,
    pub ticket: Option<&'a str>,
}

/// The caller proves a second factor now (TOTP, a recovery code, or a
/// passkey answering a ticket from `POST /auth/mfa/step-up/passkey`), for
/// the sensitive operations of the next minutes.
pub async fn step_up(
    store: &Store,
    post: &Post,
    key: &ed25519_dalek::SigningKey,
    principal: &Principal,
    shown: StepUp<'_>,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    let StepUp {
        method,
        proof,
        ticket,
    } = shown;
    // What the proof spends is found first; it is spent, by the guarded
    // updates a login's second step uses, in the write that marks the
    // session (of racing step-ups with one code, one passes).
    let mut ticket_used = None;
    let spends = match (method, proof) {
        (Method::Totp, Proof::Code(code)) => {
            match totp_candidate(
                store,
                &post.vault,
                principal.scope(),
                &principal.user_id,
                code,
            )
            .await?
            {
                Some((factor, step)) => Spends::Step(factor, step),
                None => Spends::Nothing(false),
            }
        }
        (Method::Recovery, Proof::Code(code)) => {
            recovery_spends(store, principal.scope(), &principal.user_id, code).await?
        }
        (Method::Passkey, Proof::Passkey(credential)) => {
            let ticket = ticket.ok_or(IdentityError::InvalidToken)?;
            let presented = passkeys::open_step_up_ticket(key, ticket, principal)?;
            let (factor, counter) =
                passkeys::step_up(store, post, principal, &presented, credential).await?;
            ticket_used = Some(presented);
            Spends::Counter(factor, counter)
        }
        (Method::Passkey, _) | (_, Proof::Passkey(_)) => return Err(IdentityError::InvalidCode),
        _ => return Err(IdentityError::NoSuchFactor),
    };
    if let Spends::Nothing(false) = spends {
        return Err(IdentityError::InvalidCode);
    }
    let (session_id, user_id) = (principal.session_id.clone(), principal.user_id.clone());
    store
        .write(
            &principal.own_permit(),
            meta,
            "auth.mfa.step_up",
            move |tx| {
                Box::pin(async move {
                    if let Some(presented) = &ticket_used {
                        passkeys::spend_ticket(tx, &presented.hash, &presented.expires_at).await?;
                    }
                    let tenant = tx.scope().id_str().to_owned();
                    if !spend_what(tx.conn(), &tenant, &user_id, &spends).await? {
                        return Err(IdentityError::InvalidCode);
                    }
                    journal_spend(tx, &user_id, &spends);
                    passed_on_session(tx, &session_id).await
                })
            },
        )
        .await
}

/// A user's factors (never their secrets), for them or their admins.
pub async fn factors(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
) -> Result<Factors, IdentityError> {
    let mut tx = store.read(scope).await?;
    let labelled = store.schema_has(passkeys::SCHEMA);
    let rows = db::query(format!(
        "SELECT id, kind, confirmed_at, created_at, last_used_at{} FROM mfa_factors \
         WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at, id",
        if labelled { ", label" } else { "" }
    ))
    .bind(scope.id_str())
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    let factors = rows
        .iter()
        .map(|row| {
            Ok(Factor {
                id: row.try_get(0)?,
                kind: row.try_get(1)?,
                label: if labelled { row.try_get(5)? } else { None },
                confirmed: row.try_get::<Option<String>, _>(2)?.is_some(),
                created_at: row.try_get(3)?,
                last_used_at: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, db::Error>>()?;
    let left: i64 = db::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 \
         AND used_at IS NULL",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .fetch_one(tx.conn())
    .await?;
    Ok(Factors {
        factors,
        recovery_codes_left: left,
    })
}

/// Removes factors of `user_id` (one, or all when `factor_id` is `None`):
/// without a confirmed factor left, the recovery codes go too.
async fn remove(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    action: &'static str,
    user_id: &str,
    factor_id: Option<&str>,
) -> Result<(), IdentityError> {
    let (user_id, factor_id) = (user_id.to_owned(), factor_id.map(str::to_owned));
    store
        .write(permit, meta, action, move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let ids: Vec<String> = db::query_scalar(
                    "SELECT id FROM mfa_factors WHERE tenant_id = $1 AND user_id = $2 \
                     AND ($3 = '' OR CAST(id AS TEXT) = $3)",
                )
                .bind(&tenant)
                .bind(&user_id)
                .bind(factor_id.as_deref().unwrap_or(""))
                .fetch_all(tx.conn())
                .await?;
                if ids.is_empty() && factor_id.is_some() {
                    return Err(IdentityError::NoSuchFactor);
                }
                for id in &ids {
                    db::query("DELETE FROM mfa_factors WHERE tenant_id = $1 AND id = $2")
                        .bind(&tenant)
                        .bind(id)
                        .execute(tx.conn())
                        .await?;
                    tx.record(Change {
                        entity: "mfa_factor",
                        entity_id: id.clone(),
                        op: JournalOp::Delete,
                        before: None,
                        after: None,
                        sensitive: vec![],
                        diff_of: None,
                    });
                }
                let left: i64 = db::query_scalar(
                    "SELECT COUNT(*) FROM mfa_factors WHERE tenant_id = $1 AND user_id = $2 \
                     AND confirmed_at IS NOT NULL",
                )
                .bind(&tenant)
                .bind(&user_id)
                .fetch_one(tx.conn())
                .await?;
                if left == 0 {
                    store_recovery_codes(tx, &user_id, &[]).await?;
                    set_enrolled(tx, &user_id, false).await?;
                }
                tx.set_target("user", user_id);
                Ok(())
            })
        })
        .await
}

/// The caller removes one of their factors (step-up first).
pub async fn remove_own(
    store: &Store,
    principal: &Principal,
    factor_id: &str,
    meta: &RequestMeta,
) -> Result<(), IdentityError> {
    require_recent(principal)?;
    remove(
        store,
        &principal.own_permit(),
        meta,
        "auth.mfa.remove",
        &principal.user_id,
        Some(factor_id),
    )
    .await
}

/// An admin removes every factor of a user (a lost phone): they log in
/// with their password again and, if the policy covers them, enrol anew.
pub async fn admin_remove(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    user_id: &str,
) -> Result<(), IdentityError> {
    super::get_user(store, permit, user_id).await?;
    remove(store, permit, meta, "user.mfa.remove", user_id, None).await
}

/// New recovery codes for the caller (step-up first); the old ones end.
pub async fn new_codes(
    store: &Store,
    principal: &Principal,
    meta: &RequestMeta,
) -> Result<Vec<String>, IdentityError> {
    if !principal.mfa_enrolled {
        return Err(IdentityError::NoSuchFactor);
    }
    require_recent(principal)?;
    let codes = new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| sha256(&normalise(c))).collect();
    let user_id = principal.user_id.clone();
    store
        .write(
            &principal.own_permit(),
            meta,
            "auth.mfa.recovery_codes",
            move |tx| {
                Box::pin(async move {
                    store_recovery_codes(tx, &user_id, &hashes).await?;
                    tx.set_target("user", user_id);
                    Ok::<_, IdentityError>(())
                })
            },
        )
        .await?;
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_and_cover_roles() {
        for policy in [
            Policy::Off,
            Policy::All,
            Policy::Roles(vec!["admin".into()]),
        ] {
            assert_eq!(Policy::from_stored(&policy.to_stored()), policy);
        }
        let admins = Policy::Roles(vec!["admin".into()]);
        assert!(admins.requires("admin") && !admins.requires("member"));
        assert!(Policy::All.requires("viewer") && !Policy::Off.requires("admin"));
    }

    #[test]
    fn recovery_codes_are_random_grouped_and_normalised() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(codes[0].len(), 19);
        assert_ne!(codes[0], codes[1]);
        assert_eq!(
            normalise(&codes[0].to_lowercase()),
            codes[0].replace('-', "")
        );
        let digits = six_digits();
        assert!(digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()));
    }
}
