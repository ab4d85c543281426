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
use crate::access::{Permission, Principal, authorize};
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, Who};
use crate::http::state::AppState;
use crate::identity::IdentityError;
use crate::identity::http::{LoginMode, session_response};

const METHODS: [&str; 3] = ["totp", "email", "recovery"];

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
                "type": "object", "required": ["mfa_token", "method", "code"],
                "additionalProperties": false,
                "properties": {"mfa_token": {"type": "string"}, "method": {"enum": METHODS},
                               "code": {"type": "string", "writeOnly": true},
                               "mode": {"enum": ["token", "cookie"]}}
            })),
            post(verify),
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
                "Start a second factor: `totp` (its secret is returned once) or `email` (a code is \
                 mailed); a code confirms it",
            )
            .tag("auth")
            .bearer()
            .errors(&[404, 409, 410, 423])
            .body(json!({
                "type": "object", "required": ["kind"], "additionalProperties": false,
                "properties": {"kind": {"enum": ["totp", "email"]}}
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
                "type": "object", "required": ["code"], "additionalProperties": false,
                "properties": {"code": {"type": "string", "writeOnly": true}}
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
                "type": "object", "required": ["method", "code"], "additionalProperties": false,
                "properties": {"method": {"enum": ["totp", "recovery"]},
                               "code": {"type": "string", "writeOnly": true}}
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
            .permission(Permission::UsersManage),
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
            .permission(Permission::UsersManage)
            .ok(204),
            delete(remove_of_user),
        )
}

fn method(text: &str) -> Result<Method, ApiError> {
    Method::parse(text).ok_or_else(|| {
        ApiError::validation("method is totp, email or recovery").with_field("method")
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    mfa_token: SecretString,
    method: String,
    code: SecretString,
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
    let tokens = crate::identity::complete_login(
        &state.store,
        &state.post(),
        state.keyring.token_signing_key(),
        state.config.session_ttl_hours,
        crate::identity::SecondStep {
            mfa_token: body.mfa_token.expose_secret(),
            method,
            code: &body.code,
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
    use secrecy::ExposeSecret;
    super::mail_login_code(&state.store, &state.post(), body.mfa_token.expose_secret()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"mailed": true}))))
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
}

async fn enrol(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<EnrolBody>,
) -> Result<impl IntoResponse, ApiError> {
    let started = super::enrol(&state.store, &state.post(), &principal, &body.kind, &meta).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: SecretString,
}

async fn confirm(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<impl IntoResponse, ApiError> {
    let codes = super::confirm(
        &state.store,
        &state.vault,
        &principal,
        &id,
        &body.code,
        &meta,
    )
    .await?;
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
    code: SecretString,
}

async fn step_up(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<StepUpBody>,
) -> Result<StatusCode, ApiError> {
    let method = method(&body.method)?;
    super::step_up(
        &state.store,
        &state.vault,
        &principal,
        method,
        &body.code,
        &meta,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn of_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let permit = authorize(
        &state.store,
        &principal,
        Permission::UsersManage,
        "user.mfa.read",
        &meta,
    )
    .await?;
    let user = crate::identity::get_user(&state.store, &permit, &id).await?;
    Ok(Json(
        super::factors(&state.store, permit.scope(), &user.id).await?,
    ))
}

async fn remove_of_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    super::require_recent(&principal).map_err(ApiError::from)?;
    let permit = authorize(
        &state.store,
        &principal,
        Permission::UsersManage,
        "user.mfa.remove",
        &meta,
    )
    .await?;
    super::admin_remove(&state.store, &permit, &meta, &id)
        .await
        .map_err(|e: IdentityError| ApiError::from(e))?;
    Ok(StatusCode::NO_CONTENT)
}
