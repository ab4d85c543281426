//! `/api/v1/ops/auth/…`: an operator accepts their invitation, confirms
//! their second factor, logs in and out (ACC-3).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::support::{self, NewLegalOrder, NewRequest, SupportError};
use super::{OperatorError, OperatorRole};
use crate::access::Permission;
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, Operator, OperatorSession};
use crate::http::guard::Granted;
use crate::http::state::AppState;

pub fn router() -> Api {
    let code = json!({"type": "string", "pattern": "^[0-9]{6}$"});
    Api::new()
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/auth/accept",
                "Accept an operator invitation: sets the password and returns the TOTP secret to confirm before anything else",
            )
            .tag("operators")
            .errors(&[401])
            .body(json!({"type": "object", "required": ["token", "password"], "additionalProperties": false,
                         "properties": {"token": {"type": "string", "maxLength": 200},
                                        "password": {"type": "string", "minLength": 12, "maxLength": 256}}})),
            post(accept),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/auth/mfa/confirm",
                "Confirm the operator's second factor with a code; the session becomes a full one",
            )
            .tag("operators")
            .errors(&[401, 409])
            .body(json!({"type": "object", "required": ["code"], "additionalProperties": false,
                         "properties": {"code": code.clone()}}))
            .ok(204),
            post(confirm),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/auth/login",
                "An operator's login: e-mail, password and a TOTP code",
            )
            .tag("operators")
            .errors(&[401])
            .body(json!({"type": "object", "required": ["email", "password", "code"],
                         "additionalProperties": false,
                         "properties": {"email": {"type": "string", "maxLength": 254},
                                        "password": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "code": code}})),
            post(login),
        )
        .route(
            Op::new("POST", "/api/v1/ops/auth/logout", "End the operator's session")
                .tag("operators")
                .errors(&[401])
                .ok(204),
            post(logout),
        )
        .route(
            Op::new("GET", "/api/v1/ops/auth/me", "The operator of this session and their role")
                .tag("operators")
                .errors(&[401]),
            get(me),
        )
        .merge(support_router())
}

fn scope_schema() -> serde_json::Value {
    json!({"type": "object", "required": ["collections", "access"], "additionalProperties": false,
           "properties": {
               "collections": {"type": "array", "minItems": 1, "maxItems": 50,
                               "items": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}},
               "access": {"enum": ["read_only", "read_write"]},
               "files": {"type": "boolean"}}})
}

/// ACC-2, AUD-5: support access, from both sides.
fn support_router() -> Api {
    let reason = json!({"type": "string", "minLength": 10, "maxLength": 1000});
    let hours = json!({"type": "integer", "minimum": 1, "maximum": super::support::MAX_HOURS});
    let text = json!({"type": "string", "minLength": 1, "maxLength": 200});
    Api::new()
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/support-access/requests",
                "A support operator asks a tenant for access (scope, reason, at most 72 h); its admins are mailed and decide",
            )
            .tag("support access")
            .operator(&[OperatorRole::Support])
            .errors(&[404])
            .body(json!({"type": "object", "required": ["tenant", "scope", "reason", "duration_hours"],
                         "additionalProperties": false,
                         "properties": {"tenant": {"type": "string", "maxLength": 63},
                                        "scope": scope_schema(), "reason": reason.clone(),
                                        "duration_hours": hours.clone()}}))
            .ok(201),
            post(request),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/ops/support-access/grants/{handle}",
                "A grant as its operator (or a security officer) sees it: state, scope, expiry",
            )
            .tag("support access")
            .operator(&[OperatorRole::Support, OperatorRole::SecurityOfficer]),
            get(grant_for_operator),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/legal-orders",
                "A security officer records a legal order: access for a support operator at once; the tenant is told unless notify is false",
            )
            .tag("support access")
            .operator(&[OperatorRole::SecurityOfficer])
            .errors(&[404])
            .body(json!({"type": "object",
                         "required": ["tenant", "grantee", "scope", "reason", "duration_hours",
                                      "reference", "authority", "notify"],
                         "additionalProperties": false,
                         "properties": {"tenant": {"type": "string", "maxLength": 63},
                                        "grantee": {"type": "string", "maxLength": 254},
                                        "scope": scope_schema(), "reason": reason,
                                        "duration_hours": hours, "reference": text.clone(),
                                        "authority": text, "notify": {"type": "boolean"}}}))
            .ok(201),
            post(legal_order),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/ops/legal-orders/{handle}/release",
                "The tenant may be told of a legal order now: the grant and its trail show to it, and its admins are mailed",
            )
            .tag("support access")
            .operator(&[OperatorRole::SecurityOfficer])
            .errors(&[409]),
            post(release),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/support-access/grants",
                "Every support grant ever made for the tenant, with what was accessed under each",
            )
            .tag("support access")
            .permission(Permission::SupportManage, "support.list"),
            get(tenant_grants),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/support-access/requests/{id}/approve",
                "Approve a support request: the grant runs from now for its hours",
            )
            .tag("support access")
            .permission(Permission::SupportManage, "support.approve")
            .errors(&[409]),
            post(approve),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/support-access/requests/{id}/deny",
                "Deny a support request",
            )
            .tag("support access")
            .permission(Permission::SupportManage, "support.deny")
            .errors(&[409]),
            post(deny),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/support-access/grants/{id}/revoke",
                "End a support grant now",
            )
            .tag("support access")
            .permission(Permission::SupportManage, "support.revoke")
            .errors(&[409]),
            post(revoke),
        )
}

impl From<SupportError> for ApiError {
    fn from(e: SupportError) -> Self {
        use SupportError::*;
        match e {
            Invalid(_) => ApiError::validation(e.to_string()),
            NoTenant(_) | NotFound | NoGrantee(_) => ApiError::not_found(e.to_string()),
            WrongState(..) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            NoActiveGrant => {
                ApiError::new(StatusCode::UNAUTHORIZED, "no-active-grant", e.to_string())
            }
            Operator(e) => e.into(),
            Mail(crate::mail::MailError::Store(e)) => e.into(),
            Mail(crate::mail::MailError::Crypto(e)) => e.into(),
            Mail(e) => ApiError::internal(&e),
            Store(e) => e.into(),
        }
    }
}

async fn request(
    State(state): State<AppState>,
    meta: RequestMeta,
    Operator(operator): Operator,
    ApiJson(body): ApiJson<NewRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let grant = support::request(&state.store, &state.post(), &operator, &meta, body).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

async fn grant_for_operator(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ApiPath(handle): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        support::get_for_operator(&state.store, &operator, &handle).await?,
    ))
}

async fn legal_order(
    State(state): State<AppState>,
    meta: RequestMeta,
    Operator(officer): Operator,
    ApiJson(body): ApiJson<NewLegalOrder>,
) -> Result<impl IntoResponse, ApiError> {
    let grant = support::legal_order(&state.store, &state.post(), &officer, &meta, body).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

async fn release(
    State(state): State<AppState>,
    meta: RequestMeta,
    Operator(officer): Operator,
    ApiPath(handle): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        support::release(&state.store, &state.post(), &officer, &meta, &handle).await?,
    ))
}

async fn tenant_grants(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    let items = support::list_for_tenant(&state.store, &permit).await?;
    Ok(Json(json!({"items": items})))
}

async fn approve(
    state: State<AppState>,
    meta: RequestMeta,
    granted: Granted,
    id: ApiPath<String>,
) -> Result<Json<support::GrantView>, ApiError> {
    decided(state, meta, granted, id, true).await
}

async fn deny(
    state: State<AppState>,
    meta: RequestMeta,
    granted: Granted,
    id: ApiPath<String>,
) -> Result<Json<support::GrantView>, ApiError> {
    decided(state, meta, granted, id, false).await
}

/// The tenant's admins' answer to a request, either way.
async fn decided(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
    approve: bool,
) -> Result<Json<support::GrantView>, ApiError> {
    let grant = support::decide(&state.store, &permit, &meta, &id, approve).await?;
    Ok(Json(grant))
}

async fn revoke(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        support::revoke(&state.store, &permit, &meta, &id).await?,
    ))
}

impl From<OperatorError> for ApiError {
    fn from(e: OperatorError) -> Self {
        use OperatorError::*;
        match e {
            UnknownRole(_) => ApiError::validation(e.to_string()).with_field("role"),
            InvalidEmail => ApiError::validation(e.to_string()).with_field("email"),
            EmailTaken | AlreadyEnrolled => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            InvalidInvitation => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid-token", e.to_string())
            }
            InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                e.to_string(),
            ),
            Unauthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            MfaEnrolmentRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "mfa-enrolment-required",
                e.to_string(),
            ),
            WrongRole(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            NotFound => ApiError::not_found(e.to_string()),
            Identity(e) => e.into(),
            Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    token: String,
    password: SecretString,
}

async fn accept(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AcceptBody>,
) -> Result<impl IntoResponse, ApiError> {
    let accepted = super::accept(&state.store, &state.keyring, &body.token, body.password).await?;
    Ok(Json(accepted))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

async fn confirm(
    State(state): State<AppState>,
    OperatorSession(operator): OperatorSession,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<StatusCode, ApiError> {
    super::confirm_mfa(&state.store, &state.keyring, &operator, body.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: SecretString,
    code: String,
}

async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<impl IntoResponse, ApiError> {
    let done = super::login(
        &state.store,
        &state.keyring,
        &body.email,
        body.password,
        body.code,
    )
    .await?;
    Ok(Json(done))
}

async fn logout(
    State(state): State<AppState>,
    OperatorSession(operator): OperatorSession,
) -> Result<StatusCode, ApiError> {
    super::logout(&state.store, &operator).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(OperatorSession(operator): OperatorSession) -> impl IntoResponse {
    Json(json!({
        "id": operator.id, "email": operator.email, "role": operator.role,
        "mfa_confirmed": operator.mfa_passed,
    }))
}
