//! Second factors over HTTP (IAM-3): the login's second step, the caller's
//! own factors, step-up, and an admin's view of a user's factors.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::Method;
use crate::access::{Permission, Principal};
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, Who};
use crate::http::guard::Granted;
use crate::http::state::AppState;
use crate::identity::IdentityError;
use crate::identity::http::{LoginMode, session_response};

const METHODS: [&str; 5] = ["totp", "email", "sms", "recovery", "passkey"];

/// A body that proves with `method`: a passkey sends its credential and no
/// code, every other method a code and no credential.
fn proof_rule(others: &[&str]) -> serde_json::Value {
    json!({"oneOf": [
        {"properties": {"method": {"const": "passkey"}},
         "required": ["credential"], "not": {"required": ["code"]}},
        {"properties": {"method": {"enum": others}},
         "required": ["code"], "not": {"required": ["credential"]}}
    ]})
}

/// A passkey's answer as JSON (`PublicKeyCredential.toJSON()`).
fn credential_schema() -> serde_json::Value {
    let text = json!({"type": "string"});
    let name = json!({"pattern": "^[A-Za-z][A-Za-z0-9]{0,31}$"});
    json!({"type": "object", "description":
        "the browser's PublicKeyCredential as JSON (byte fields in base64url)",
        "required": ["type", "response"], "additionalProperties": false,
        "properties": {
            "id": text, "rawId": text, "type": {"const": "public-key"},
            "authenticatorAttachment": text,
            // Extension results are named by identifiers (`credProps`, `rk`).
            "clientExtensionResults": {"type": "object", "propertyNames": name,
                "additionalProperties": {"type": "object", "propertyNames": name,
                                         "additionalProperties": {"type": "boolean"}}},
            "response": {"type": "object", "additionalProperties": false, "properties": {
                "clientDataJSON": text, "attestationObject": text,
                "authenticatorData": text, "signature": text,
                "userHandle": {"type": ["string", "null"], "pattern": "^[^\\u0000]*$"},
                "publicKey": text,
                "publicKeyAlgorithm": {"type": "integer"},
                "transports": {"type": "array", "items": text}}}}})
}

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/verify",
                "Complete a login's second step with a code (TOTP, mailed or recovery)",
            )
            .tag("auth")
            .errors(&[401, 410, 423])
            .body(json!({
                "type": "object", "required": ["mfa_token", "method"],
                "additionalProperties": false,
                "allOf": [proof_rule(&["totp", "email", "sms", "recovery"])],
                "properties": {"mfa_token": {"type": "string"}, "method": {"enum": METHODS},
                               "code": {"type": "string", "writeOnly": true, "description":
                                   "the code (every method but passkey)"},
                               "credential": credential_schema(),
                               "trust_device": {"type": "boolean", "description":
                                   "skip the second factor on this device for the tenant's \
                                    mfa_trust_days (when it allows any)"},
                               "mode": {"enum": ["token", "cookie"]}}
            })),
            post(verify),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/sms-code",
                "Text a one-time code for a login's second step",
            )
            .tag("auth")
            .errors(&[401, 404, 409, 410, 423, 502])
            .body(json!({
                "type": "object", "required": ["mfa_token"], "additionalProperties": false,
                "properties": {"mfa_token": {"type": "string"}}
            }))
            .ok(202),
            post(sms_code),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/passkey/start",
                "Start a login with a passkey and no password: a ticket and the options for \
                 navigator.credentials.get()",
            )
            .tag("auth")
            .body(json!({
                "type": "object", "required": ["tenant"], "additionalProperties": false,
                "properties": {"tenant": {"type": "string"}}
            })),
            post(passkey_start),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/passkey/login",
                "Log in with a passkey that verified its user, answering a ticket",
            )
            .tag("auth")
            .errors(&[401, 410, 423])
            .body(json!({
                "type": "object", "required": ["ticket", "credential"],
                "additionalProperties": false,
                "properties": {"ticket": {"type": "string"}, "credential": credential_schema(),
                               "device_token": {"type": "string", "writeOnly": true},
                               "mode": {"enum": ["token", "cookie"]}}
            })),
            post(passkey_login),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/step-up/passkey",
                "A ticket and options to step up with one of the caller's passkeys",
            )
            .tag("auth")
            .bearer()
            .errors(&[404]),
            post(step_up_ticket),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/auth/devices",
                "The caller's devices (IAM-7) and until when each skips the second factor",
            )
            .tag("auth")
            .bearer(),
            get(devices),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/auth/devices/{id}/trust",
                "End a device's trust: its next login takes the second factor again",
            )
            .tag("auth")
            .bearer()
            .errors(&[404])
            .ok(204),
            delete(untrust),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/email-code",
                "Mail a one-time code for a login's second step",
            )
            .tag("auth")
            .errors(&[401, 404, 409, 410, 423])
            .body(json!({
                "type": "object", "required": ["mfa_token"], "additionalProperties": false,
                "properties": {"mfa_token": {"type": "string"}}
            }))
            .ok(202),
            post(mail_code),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/auth/mfa",
                "The caller's second factors (never their secrets) and recovery codes left",
            )
            .tag("auth")
            .bearer(),
            get(mine),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/factors",
                "Start a second factor: `totp` (its secret is returned once), `email` or `sms` (a \
                 code is sent) or `passkey` (options for navigator.credentials.create()); a code \
                 or the new credential confirms it",
            )
            .tag("auth")
            .bearer()
            .errors(&[404, 409, 410, 423, 502])
            .body(json!({
                "type": "object", "required": ["kind"], "additionalProperties": false,
                "properties": {"kind": {"enum": ["totp", "email", "sms", "passkey"]},
                               "phone": {"type": "string", "description":
                                   "for sms: the number in international form (+420 …)"},
                               "name": {"type": "string", "maxLength": 64,
                                        "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
                                        "description": "for passkey: a name to tell it by"}}
            }))
            .ok(201),
            post(enrol),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/factors/{id}/confirm",
                "Confirm a factor with a code; the first one comes with recovery codes, shown once",
            )
            .tag("auth")
            .bearer()
            .errors(&[401, 404, 410, 423])
            .body(json!({
                "type": "object", "additionalProperties": false,
                "oneOf": [{"required": ["code"]}, {"required": ["credential"]}],
                "properties": {"code": {"type": "string", "writeOnly": true},
                               "credential": credential_schema()}
            })),
            post(confirm),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/auth/mfa/factors/{id}",
                "Remove one of the caller's factors (needs a recent second factor)",
            )
            .tag("auth")
            .bearer()
            .errors(&[404])
            .ok(204),
            delete(remove),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/recovery-codes",
                "New recovery codes, shown once; the old ones end (needs a recent second factor)",
            )
            .tag("auth")
            .bearer()
            .errors(&[404]),
            post(recovery_codes),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/mfa/step-up",
                "Prove a second factor now, for the sensitive operations of the next minutes",
            )
            .tag("auth")
            .bearer()
            .errors(&[401, 404, 410, 423])
            .body(json!({
                "type": "object", "required": ["method"], "additionalProperties": false,
                "allOf": [proof_rule(&["totp", "recovery"])],
                "properties": {"method": {"enum": ["totp", "recovery", "passkey"]},
                               "code": {"type": "string", "writeOnly": true},
                               "ticket": {"type": "string", "description":
                                   "for passkey: from POST /api/v1/auth/mfa/step-up/passkey"},
                               "credential": credential_schema()}
            }))
            .ok(204),
            post(step_up),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/users/{id}/mfa",
                "Which second factors a user has (never their secrets)",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.mfa.read"),
            get(of_user),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/users/{id}/mfa",
                "Remove every second factor of a user (a lost phone); needs the admin's own \
                 recent second factor if they have one",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.mfa.remove")
            .ok(204),
            delete(remove_of_user),
        )
}

fn method(text: &str) -> Result<Method, ApiError> {
    Method::parse(text).ok_or_else(|| {
        ApiError::validation("method is totp, email, sms, recovery or passkey").with_field("method")
    })
}

/// What a body proves with: a passkey's credential for `passkey`, else a
/// code; the other one is a client's mistake.
fn proof(
    method: Method,
    code: Option<SecretString>,
    credential: Option<serde_json::Value>,
) -> Result<super::Proof, ApiError> {
    match (method, code, credential) {
        (Method::Passkey, None, Some(credential)) => Ok(super::Proof::Passkey(credential)),
        (Method::Passkey, _, _) => Err(ApiError::validation(
            "a passkey sends its credential (and no code)",
        )
        .with_field("credential")),
        (_, Some(code), None) => Ok(super::Proof::Code(code)),
        _ => Err(ApiError::validation("send the code (and no credential)").with_field("code")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    mfa_token: SecretString,
    method: String,
    #[serde(default)]
    code: Option<SecretString>,
    #[serde(default)]
    credential: Option<serde_json::Value>,
    #[serde(default)]
    trust_device: bool,
    #[serde(default)]
    mode: LoginMode,
}

async fn verify(
    State(state): State<AppState>,
    meta: RequestMeta,
    who: Who,
    ApiJson(body): ApiJson<VerifyBody>,
) -> Result<axum::response::Response, ApiError> {
    use secrecy::ExposeSecret;
    let method = method(&body.method)?;
    let proof = proof(method, body.code, body.credential)?;
    let tokens = crate::identity::complete_login(
        &state.store,
        &state.post(),
        state.keyring.token_signing_key(),
        state.config.session_ttl_hours,
        crate::identity::SecondStep {
            mfa_token: body.mfa_token.expose_secret(),
            method,
            proof: &proof,
            trust_device: body.trust_device,
        },
        &meta,
    )
    .await?;
    Ok(session_response(&state, &who, tokens, body.mode))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailCodeBody {
    mfa_token: SecretString,
}

async fn mail_code(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<MailCodeBody>,
) -> Result<impl IntoResponse, ApiError> {
    send_code(&state, &body, Method::Email, "mailed").await
}

async fn sms_code(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<MailCodeBody>,
) -> Result<impl IntoResponse, ApiError> {
    send_code(&state, &body, Method::Sms, "texted").await
}

/// Sends a login's second-step code by `method`; `202 {<said>: true}`.
async fn send_code(
    state: &AppState,
    body: &MailCodeBody,
    method: Method,
    said: &str,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    use secrecy::ExposeSecret;
    super::send_login_code(
        &state.store,
        &state.post(),
        state.keyring.token_signing_key(),
        body.mfa_token.expose_secret(),
        method,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ said: true }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasskeyStartBody {
    tenant: String,
}

async fn passkey_start(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PasskeyStartBody>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(crate::identity::passkey_ticket(
        &state.post(),
        state.keyring.token_signing_key(),
        &body.tenant,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasskeyLoginBody {
    ticket: String,
    credential: serde_json::Value,
    #[serde(default)]
    device_token: Option<SecretString>,
    #[serde(default)]
    mode: LoginMode,
}

async fn passkey_login(
    State(state): State<AppState>,
    meta: RequestMeta,
    who: Who,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<PasskeyLoginBody>,
) -> Result<axum::response::Response, ApiError> {
    let device_token = body
        .device_token
        .or_else(|| crate::identity::http::device_cookie(&headers));
    let tokens = crate::identity::passkey_login(
        &state.store,
        &state.post(),
        state.keyring.token_signing_key(),
        state.config.session_ttl_hours,
        crate::identity::PasskeyLogin {
            ticket: &body.ticket,
            credential: &body.credential,
            device_token: device_token.as_ref(),
        },
        &meta,
    )
    .await?;
    Ok(session_response(&state, &who, tokens, body.mode))
}

async fn step_up_ticket(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let allow = super::passkeys::own_credentials(&state.store, &principal).await?;
    if allow.is_empty() {
        return Err(IdentityError::NoSuchFactor.into());
    }
    let ticket = super::passkeys::issue_ticket(
        state.keyring.token_signing_key(),
        super::passkeys::TicketFor::StepUp(principal.scope()),
    );
    let options = super::passkeys::ticket_options(&state.post(), &ticket, &allow, false)?;
    Ok(Json(json!({
        "ticket": ticket.token,
        "expires_in": super::passkeys::TICKET_SECONDS,
        "passkey": options,
    })))
}

async fn devices(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(json!({
        "items": crate::identity::list_devices(&state.store, &principal).await?
    })))
}

async fn untrust(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    crate::identity::untrust_device(&state.store, &principal, &id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn mine(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        super::factors(&state.store, principal.scope(), &principal.user_id).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    kind: String,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

async fn enrol(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<EnrolBody>,
) -> Result<impl IntoResponse, ApiError> {
    let request = super::NewFactor {
        kind: body.kind,
        phone: body.phone,
        name: body.name,
    };
    let started = super::enrol(&state.store, &state.post(), &principal, &request, &meta).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    #[serde(default)]
    code: Option<SecretString>,
    #[serde(default)]
    credential: Option<serde_json::Value>,
}

async fn confirm(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ConfirmBody>,
) -> Result<impl IntoResponse, ApiError> {
    let proof = match (body.code, body.credential) {
        (Some(code), None) => super::Proof::Code(code),
        (None, Some(credential)) => super::Proof::Passkey(credential),
        _ => {
            return Err(ApiError::validation(
                "send the code, or for a passkey the credential (one of them)",
            )
            .with_field("code"));
        }
    };
    let codes = super::confirm(&state.store, &state.post(), &principal, &id, &proof, &meta).await?;
    Ok(Json(json!({"confirmed": true, "recovery_codes": codes})))
}

async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    super::remove_own(&state.store, &principal, &id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn recovery_codes(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let codes = super::new_codes(&state.store, &principal, &meta).await?;
    Ok(Json(json!({"recovery_codes": codes})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepUpBody {
    method: String,
    #[serde(default)]
    code: Option<SecretString>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    credential: Option<serde_json::Value>,
}

async fn step_up(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<StepUpBody>,
) -> Result<StatusCode, ApiError> {
    let method = method(&body.method)?;
    let proof = proof(method, body.code, body.credential)?;
    super::step_up(
        &state.store,
        &state.post(),
        state.keyring.token_signing_key(),
        &principal,
        super::StepUp {
            method,
            proof: &proof,
            ticket: body.ticket.as_deref(),
        },
        &meta,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn of_user(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = crate::identity::get_user(&state.store, &permit, &id).await?;
    Ok(Json(
        super::factors(&state.store, permit.scope(), &user.id).await?,
    ))
}

async fn remove_of_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    super::require_recent(&principal).map_err(ApiError::from)?;
    super::admin_remove(&state.store, &permit, &meta, &id)
        .await
        .map_err(|e: IdentityError| ApiError::from(e))?;
    Ok(StatusCode::NO_CONTENT)
}
