//! IAM-3: passkeys (WebAuthn, [`crate::identity::webauthn`]) as a second
//! factor, for step-up, and for a login without a password.
//!
//! * **Registration** is a factor of kind `passkey`: enrolment returns the
//!   creation options (the challenge sealed in the factor until then), and
//!   confirming it with the browser's credential stores the public key
//!   (sealed like every factor) and the credential id.
//! * **Second step.** A login's `mfa_token` also stands for a WebAuthn
//!   challenge (the SHA-256 of the token's hash under a label), so the
//!   password step's answer carries the request options at once.
//! * **Tickets.** A login without a password, and a step-up, start from a
//!   ticket: a random token of the tenant with its expiry, signed with the
//!   instance's token key, so starting one writes nothing (an unknown
//!   tenant gets a ticket alike). Its SHA-256 is the challenge. Using it
//!   inserts its hash into `passkey_challenges`, whose uniqueness lets one
//!   use win.
//! * **Counters.** An assertion's signature counter must grow (a guarded
//!   update), unless the authenticator keeps it at zero; a counter that
//!   goes back is refused as a cloned key.
//! * A passkey that replaces the password must have verified its user (UV).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::super::IdentityError;
use super::super::post::Post;
use super::super::webauthn::{self, PublicKey, Registered, RelyingParty};
use crate::access::Principal;
use crate::context::TenantScope;
use crate::store::{Store, WriteTx, db};

/// The schema migration that brought SMS, passkeys and trusted devices.
pub const SCHEMA: i64 = 14;
/// How long a ticket works.
pub const TICKET_SECONDS: i64 = 300;
/// The longest name a passkey may have.
const NAME_CHARS: usize = 64;

impl From<webauthn::WebauthnError> for IdentityError {
    fn from(e: webauthn::WebauthnError) -> Self {
        IdentityError::BadPasskey(e.0)
    }
}

/// A passkey's name as shown: what the user typed (trimmed, at most 64
/// characters, no control characters), or "passkey".
pub fn label(name: Option<&str>) -> Result<String, IdentityError> {
    let name = name.map(str::trim).unwrap_or("");
    if name.chars().count() > NAME_CHARS || name.chars().any(char::is_control) {
        return Err(IdentityError::BadPasskey(format!(
            "a passkey's name is at most {NAME_CHARS} printable characters"
        )));
    }
    Ok(if name.is_empty() { "passkey" } else { name }.to_owned())
}

fn relying_party(post: &Post) -> Result<RelyingParty, IdentityError> {
    RelyingParty::of_url(post.mailer.public_url())
        .ok_or_else(|| IdentityError::BadPasskey("public_url names no host".into()))
}

/// The credential ids of the user's confirmed passkeys, with their factors.
async fn credentials(
    store: &Store,
    scope: &TenantScope,
    user_id: &str,
) -> Result<Vec<(String, Vec<u8>)>, IdentityError> {
    let mut tx = store.read(scope).await?;
    let rows = db::query(
        "SELECT id, credential_id FROM mfa_factors WHERE tenant_id = $1 AND user_id = $2 \
         AND kind = 'passkey' AND confirmed_at IS NOT NULL AND credential_id IS NOT NULL",
    )
    .bind(scope.id_str())
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let (id, credential): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if let Some(bytes) = webauthn::decode_b64url(&credential) {
            out.push((id, bytes));
        }
    }
    Ok(out)
}

/// The options for a new passkey of the caller's (their existing ones
/// excluded, so an authenticator does not register twice).
pub(super) async fn creation_options(
    store: &Store,
    post: &Post,
    principal: &Principal,
    tenant_name: &str,
    challenge: &[u8],
) -> Result<Value, IdentityError> {
    let rp = relying_party(post)?;
    let exclude: Vec<Vec<u8>> = credentials(store, principal.scope(), &principal.user_id)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    Ok(webauthn::creation_options(
        &rp,
        tenant_name,
        principal.user_id.as_bytes(),
        &principal.email,
        challenge,
        &exclude,
    ))
}

/// Checks a new passkey against the challenge its enrolment sealed; the
/// payload to seal in its place (the public key) comes back with it.
pub(super) async fn register(
    store: &Store,
    post: &Post,
    scope: &TenantScope,
    challenge: &[u8],
    credential: &Value,
) -> Result<(Registered, Vec<u8>), IdentityError> {
    let registered = webauthn::verify_registration(&relying_party(post)?, challenge, credential)?;
    let id = webauthn::encode_b64url(&registered.credential_id);
    let taken: i64 = {
        let mut tx = store.read(scope).await?;
        db::query_scalar(
            "SELECT COUNT(*) FROM mfa_factors WHERE tenant_id = $1 AND credential_id = $2",
        )
        .bind(scope.id_str())
        .bind(&id)
        .fetch_one(tx.conn())
        .await?
    };
    if taken > 0 {
        return Err(IdentityError::BadPasskey(
            "this passkey is registered already".into(),
        ));
    }
    let payload = serde_json::to_vec(&registered.public_key)
        .map_err(|_| IdentityError::Internal("a passkey's key does not serialise"))?;
    Ok((registered, payload))
}

/// The WebAuthn challenge a login's second step stands for.
fn second_step_challenge(token_hash: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"strongroom/v1/passkey/second-step/");
    hasher.update(token_hash.as_bytes());
    hasher.finalize().to_vec()
}

/// The request options of a login's second step, for the user's passkeys.
pub(super) async fn second_step_options(
    store: &Store,
    post: &Post,
    scope: &TenantScope,
    user_id: &str,
    token_hash: &str,
) -> Result<Option<Value>, IdentityError> {
    let allow: Vec<Vec<u8>> = credentials(store, scope, user_id)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    if allow.is_empty() {
        return Ok(None);
    }
    Ok(Some(webauthn::request_options(
        &relying_party(post)?,
        &second_step_challenge(token_hash),
        &allow,
        false,
    )))
}

/// A passkey of the user's, found by the credential id an assertion names.
struct Stored {
    factor_id: String,
    user_id: String,
    key: PublicKey,
    counter: i64,
}

async fn find(
    store: &Store,
    post: &Post,
    scope: &TenantScope,
    credential: &Value,
) -> Result<Option<Stored>, IdentityError> {
    let id = webauthn::encode_b64url(&webauthn::credential_id(credential)?);
    let tenant = scope.id_str().to_owned();
    let mut tx = store.read(scope).await?;
    let row = db::query(
        "SELECT f.id, f.user_id, f.key_version, f.sealed, f.last_step FROM mfa_factors f \
         JOIN users u ON u.id = f.user_id WHERE f.tenant_id = $1 AND f.credential_id = $2 \
         AND f.kind = 'passkey' AND f.confirmed_at IS NOT NULL AND u.status = 'active'",
    )
    .bind(&tenant)
    .bind(&id)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (factor_id, user_id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    let (version, sealed, counter): (i64, Vec<u8>, i64) =
        (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
    let opened =
        super::open_sealed(&post.vault, &mut tx, &tenant, &factor_id, version, &sealed).await?;
    let key: PublicKey = serde_json::from_slice(&opened)
        .map_err(|_| IdentityError::Internal("a passkey's key does not parse"))?;
    Ok(Some(Stored {
        factor_id,
        user_id,
        key,
        counter,
    }))
}

/// Checks an assertion by one of `user_id`'s passkeys for a login's
/// second step: the factor and counter to spend if it verifies.
pub(super) async fn second_step(
    store: &Store,
    post: &Post,
    scope: &TenantScope,
    user_id: &str,
    token_hash: &str,
    credential: &Value,
) -> Result<Option<(String, i64)>, IdentityError> {
    let Some(stored) = find(store, post, scope, credential).await? else {
        return Ok(None);
    };
    if stored.user_id != user_id {
        return Ok(None);
    }
    let challenge = second_step_challenge(token_hash);
    Ok(check(post, &stored, &challenge, credential, false)?.map(|count| (stored.factor_id, count)))
}

/// The assertion's counter if it verifies (and did not go back).
fn check(
    post: &Post,
    stored: &Stored,
    challenge: &[u8],
    credential: &Value,
    require_uv: bool,
) -> Result<Option<i64>, IdentityError> {
    match webauthn::verify_assertion(
        &relying_party(post)?,
        challenge,
        &stored.key,
        credential,
        require_uv,
    ) {
        Ok(asserted) if webauthn::counter_ok(stored.counter, asserted.sign_count) => {
            Ok(Some(i64::from(asserted.sign_count)))
        }
        Ok(_) => {
            tracing::warn!(
                target: "security",
                event = "auth.passkey_cloned",
                factor = %stored.factor_id,
                "a passkey's signature counter went back: refused as a possible clone"
            );
            Ok(None)
        }
        Err(_) => Ok(None),
    }
}

/// Spends an assertion's counter by a guarded update: of two uses with one
/// counter value, one succeeds.
pub(super) async fn spend_counter(
    conn: &mut db::Conn,
    tenant: &str,
    factor_id: &str,
    count: i64,
) -> Result<bool, db::Error> {
    let done = db::query(
        "UPDATE mfa_factors SET last_step = $3, last_used_at = $4 WHERE tenant_id = $1 \
         AND id = $2 AND (last_step < $3 OR ($3 = 0 AND last_step = 0))",
    )
    .bind(tenant)
    .bind(factor_id)
    .bind(count)
    .bind(crate::clock::now())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A signed, single-use passkey ticket:
/// `sr_pk_<random>.<realm>.<expiry>.<signature>`, where the realm says what
/// it is for: a login to the tenant slug as typed, or a step-up in one
/// tenant. A ticket names no tenant id, so one for a slug that does not
/// exist looks like one for a slug that does.
pub struct Ticket {
    pub token: String,
    pub challenge: Vec<u8>,
}

/// What a ticket is for.
pub enum TicketFor<'a> {
    Login(&'a str),
    StepUp(&'a TenantScope),
}

impl TicketFor<'_> {
    fn realm(&self) -> String {
        match self {
            TicketFor::Login(slug) => format!("login:{slug}"),
            TicketFor::StepUp(scope) => format!("step-up:{}", scope.id_str()),
        }
    }
}

/// A presented ticket that verified: its tenant, challenge, and the hash
/// its use records.
pub(in crate::identity) struct Presented {
    pub scope: TenantScope,
    pub challenge: Vec<u8>,
    pub hash: String,
    pub expires_at: String,
}

fn ticket_message(random: &str, realm: &str, expires: i64) -> String {
    format!("strongroom/v1/passkey-ticket/{random}/{realm}/{expires}")
}

/// Issues a ticket; starting one writes nothing.
pub fn issue_ticket(key: &SigningKey, purpose: TicketFor<'_>) -> Ticket {
    let random = format!(
        "sr_pk_{}",
        webauthn::encode_b64url(&crate::crypto::random_bytes::<32>())
    );
    let realm = purpose.realm();
    let expires = crate::clock::unix_now() + TICKET_SECONDS;
    let signature = key.sign(ticket_message(&random, &realm, expires).as_bytes());
    let token = format!(
        "{random}.{}.{expires}.{}",
        webauthn::encode_b64url(realm.as_bytes()),
        webauthn::encode_b64url(&signature.to_bytes())
    );
    Ticket {
        challenge: Sha256::digest(token.as_bytes()).to_vec(),
        token,
    }
}

/// A ticket this instance signed and that has not expired: its realm, the
/// challenge, the hash its use records and when it ends.
fn open_ticket(
    key: &SigningKey,
    token: &str,
) -> Result<(String, Vec<u8>, String, String), IdentityError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [random, realm, expires, signature] = parts[..] else {
        return Err(IdentityError::InvalidToken);
    };
    if !random.starts_with("sr_pk_") || random.len() != 6 + 43 {
        return Err(IdentityError::InvalidToken);
    }
    let realm = webauthn::decode_b64url(realm)
        .and_then(|r| String::from_utf8(r).ok())
        .ok_or(IdentityError::InvalidToken)?;
    let expires: i64 = expires.parse().map_err(|_| IdentityError::InvalidToken)?;
    let signature = webauthn::decode_b64url(signature)
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(IdentityError::InvalidToken)?;
    key.verifying_key()
        .verify(
            ticket_message(random, &realm, expires).as_bytes(),
            &signature,
        )
        .map_err(|_| IdentityError::InvalidToken)?;
    if expires <= crate::clock::unix_now() {
        return Err(IdentityError::InvalidToken);
    }
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .ok_or(IdentityError::InvalidToken)?;
    let hash = webauthn::encode_b64url(&Sha256::digest(random.as_bytes()));
    Ok((
        realm,
        Sha256::digest(token.as_bytes()).to_vec(),
        hash,
        expires_at,
    ))
}

/// A login ticket, for an active tenant (else the same 401 as any other
/// failed login).
pub(in crate::identity) async fn open_login_ticket(
    store: &Store,
    key: &SigningKey,
    token: &str,
) -> Result<Presented, IdentityError> {
    let (realm, challenge, hash, expires_at) =
        open_ticket(key, token).map_err(|_| IdentityError::PasskeyRefused)?;
    let slug = realm
        .strip_prefix("login:")
        .ok_or(IdentityError::PasskeyRefused)?;
    let scope = crate::tenancy::find_active_by_slug(store, slug)
        .await?
        .ok_or(IdentityError::PasskeyRefused)?;
    Ok(Presented {
        scope,
        challenge,
        hash,
        expires_at,
    })
}

/// A step-up ticket issued in the caller's tenant.
pub(in crate::identity) fn open_step_up_ticket(
    key: &SigningKey,
    token: &str,
    principal: &Principal,
) -> Result<Presented, IdentityError> {
    let (realm, challenge, hash, expires_at) = open_ticket(key, token)?;
    if realm != TicketFor::StepUp(principal.scope()).realm() {
        return Err(IdentityError::InvalidToken);
    }
    Ok(Presented {
        scope: principal.scope().clone(),
        challenge,
        hash,
        expires_at,
    })
}

/// Records a ticket's use in `tx`: a second use of it fails (the hash is
/// unique), so of racing uses one commits.
pub(in crate::identity) async fn spend_ticket(
    tx: &mut WriteTx,
    presented_hash: &str,
    expires_at: &str,
) -> Result<(), IdentityError> {
    let tenant = tx.scope().id_str().to_owned();
    let done = db::query(
        "INSERT INTO passkey_challenges (id, tenant_id, token_hash, expires_at, used_at, \
         created_at) VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (token_hash) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(tenant)
    .bind(presented_hash)
    .bind(expires_at)
    .bind(crate::clock::now())
    .execute(tx.conn())
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(IdentityError::InvalidToken)
    }
}

/// Who a passkey login without a password is for: the user and the factor
/// whose counter to spend.
pub(in crate::identity) struct Passwordless {
    pub user_id: String,
    pub factor_id: String,
    pub counter: i64,
}

/// Checks a passkey assertion for a login without a password: the passkey
/// must be registered in the ticket's tenant, name its user, and have
/// verified the user.
pub(in crate::identity) async fn passwordless(
    store: &Store,
    post: &Post,
    presented: &Presented,
    credential: &Value,
) -> Result<Passwordless, IdentityError> {
    let stored = find(store, post, &presented.scope, credential)
        .await?
        .ok_or(IdentityError::PasskeyRefused)?;
    if let Some(handle) = webauthn::user_handle(credential)
        && handle != stored.user_id.as_bytes()
    {
        return Err(IdentityError::PasskeyRefused);
    }
    let counter = check(post, &stored, &presented.challenge, credential, true)?
        .ok_or(IdentityError::PasskeyRefused)?;
    Ok(Passwordless {
        user_id: stored.user_id,
        factor_id: stored.factor_id,
        counter,
    })
}

/// Checks an assertion by one of the caller's passkeys for step-up: the
/// factor and counter to spend.
pub(in crate::identity) async fn step_up(
    store: &Store,
    post: &Post,
    principal: &Principal,
    presented: &Presented,
    credential: &Value,
) -> Result<(String, i64), IdentityError> {
    let stored = find(store, post, principal.scope(), credential)
        .await?
        .filter(|s| s.user_id == principal.user_id)
        .ok_or(IdentityError::InvalidCode)?;
    let counter = check(post, &stored, &presented.challenge, credential, false)?
        .ok_or(IdentityError::InvalidCode)?;
    Ok((stored.factor_id, counter))
}

/// The request options of a ticket: for these credentials, or (none) any
/// passkey of this RP, verified by its user.
pub fn ticket_options(
    post: &Post,
    ticket: &Ticket,
    allow: &[Vec<u8>],
    require_uv: bool,
) -> Result<Value, IdentityError> {
    Ok(webauthn::request_options(
        &relying_party(post)?,
        &ticket.challenge,
        allow,
        require_uv,
    ))
}

/// The caller's passkeys' credential ids, for step-up's options.
pub async fn own_credentials(
    store: &Store,
    principal: &Principal,
) -> Result<Vec<Vec<u8>>, IdentityError> {
    Ok(credentials(store, principal.scope(), &principal.user_id)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}
