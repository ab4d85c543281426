//! Identity endpoints: authentication under `/api/v1/auth`, users under
//! `/api/v1/users`, and `/api/v1/me`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::{IdentityError, UserPatch};
use crate::access::{Permission, Principal};
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, Who};
use crate::http::guard::Granted;
use crate::http::state::AppState;

/// What `Email::parse` accepts, as a JSON Schema pattern.
const EMAIL_PATTERN: &str = "^[^@\\s<>\",\\u0000-\\u001f\\u007f-\\u009f]{1,64}@[^@\\s<>\",.\\u0000-\\u001f\\u007f-\\u009f][^@\\s<>\",\\u0000-\\u001f\\u007f-\\u009f]*\\.[^@\\s<>\",\\u0000-\\u001f\\u007f-\\u009f]*[^@\\s<>\",.\\u0000-\\u001f\\u007f-\\u009f]$";

pub fn sessions_router() -> Api {
    password_routes(Api::new())
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/login",
                "Log in with tenant, e-mail and password",
            )
            .tag("auth")
            .errors(&[401, 410, 423, 429])
            .body(json!({
                "type": "object", "required": ["tenant", "email", "password"],
                "additionalProperties": false,
                "properties": {"tenant": {"type": "string"}, "email": {"type": "string"},
                               "password": {"type": "string", "writeOnly": true},
                               "device_token": {"type": "string", "writeOnly": true, "description":
                                   "the device_token an earlier login returned: a known device is \
                                    not announced, and not locked out by an attack elsewhere"},
                               "mode": {"enum": ["token", "cookie"], "description":
                                   "cookie: a __Host- session cookie and a CSRF token instead of tokens"}}
            })),
            post(login),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/refresh",
                "Rotate a refresh token for a new token pair",
            )
            .tag("auth")
            .errors(&[401, 429])
            .body(json!({"type": "object", "required": ["refresh_token"], "additionalProperties": false,
                             "properties": {"refresh_token": {"type": "string"}}})),
            post(refresh),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/auth/sessions",
                "The caller's live sessions: device, address, created, last used, which is current",
            )
            .tag("auth")
            .bearer(),
            get(my_sessions),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/auth/sessions",
                "End every live session of the caller but the current one",
            )
            .tag("auth")
            .bearer(),
            axum::routing::delete(end_other_sessions),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/auth/sessions/{id}",
                "End one of the caller's live sessions",
            )
            .tag("auth")
            .bearer()
            .ok(204),
            axum::routing::delete(end_session),
        )
        .route(
            Op::new("POST", "/api/v1/auth/logout", "Revoke the current session")
                .tag("auth")
                .bearer()
                .ok(204),
            post(logout),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/auth/invitations/accept",
                "Accept an invitation: choose a password and log in",
            )
            .tag("auth")
            .errors(&[401, 429])
            .body(json!({"type": "object", "required": ["token", "password"], "additionalProperties": false,
                         "properties": {"token": {"type": "string"},
                                        "password": {"type": "string", "writeOnly": true}}})),
            post(accept_invitation),
        )
}

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "GET",
                "/api/v1/me",
                "The authenticated user and their permissions",
            )
            .tag("users")
            .bearer(),
            get(me),
        )
        .route(
            Op::new("GET", "/api/v1/users", "List the tenant's users")
                .tag("users")
                .permission(Permission::UsersRead, "user.list"),
            get(list_users),
        )
        .route(
            Op::new("POST", "/api/v1/users", "Invite a user with one role (role) or several (roles): built-in or the tenant's own, never beyond your own")
                .tag("users")
                .permission(Permission::UsersManage, "user.create")
                .errors(&[409, 410, 423])
                .body(json!({"type": "object", "required": ["email"],
                             "additionalProperties": false,
                             "properties": {"email": {"type": "string", "maxLength": 254,
                                                      "pattern": EMAIL_PATTERN},
                                            "role": {"type": "string", "pattern": ROLE_PATTERN},
                                            "roles": {"type": "array", "minItems": 1, "maxItems": 20,
                                                      "items": {"type": "string", "pattern": ROLE_PATTERN}}}}))
                .ok(201),
            post(create_user),
        )
        .route(
            Op::new("GET", "/api/v1/users/{id}", "Read a user")
                .tag("users")
                .permission(Permission::UsersRead, "user.read"),
            get(get_user),
        )
        .route(
            Op::new(
                "PATCH",
                "/api/v1/users/{id}",
                "Change a user's roles (role or roles) or status",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.update")
            .errors(&[409])
            .body(json!({"type": "object", "additionalProperties": false,
                             "properties": {"role": {"type": "string", "pattern": ROLE_PATTERN},
                                            "roles": {"type": "array", "minItems": 1, "maxItems": 20,
                                                      "items": {"type": "string", "pattern": ROLE_PATTERN}},
                                            "status": {"enum": ["active", "disabled"]}}})),
            axum::routing::patch(update_user),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/users/{id}",
                "Delete a user and their sessions",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.delete")
            .errors(&[409])
            .ok(204),
            axum::routing::delete(delete_user),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/users/{id}/sessions",
                "A user's live sessions (an admin's view of IAM-5)",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.sessions.read"),
            get(user_sessions),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/users/{id}/sessions",
                "End every live session of a user",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.sessions.revoke"),
            axum::routing::delete(end_user_sessions),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/users/{id}/reset-password",
                "Reset a user's password: a random temporary one is mailed to the user alone \
                 (never shown here), their sessions end, and they must change it first",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.password.reset")
            .errors(&[409, 410, 423])
            .ok(202),
            post(admin_reset_password),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/users/{id}/unlock",
                "Lift a user's login lock after failed attempts (IAM-6)",
            )
            .tag("users")
            .permission(Permission::UsersManage, "user.unlock"),
            post(unlock_user),
        )
}

/// What the password routes add to the session routes (IAM-2).
fn password_routes(api: Api) -> Api {
    api.route(
        Op::new(
            "POST",
            "/api/v1/auth/password/reset-request",
            "Ask for a password reset link by mail. Always 202, at once, whether or not the \
             account exists",
        )
        .tag("auth")
        .errors(&[409, 429])
        .body(json!({
            "type": "object", "required": ["tenant", "email"], "additionalProperties": false,
            "properties": {"tenant": {"type": "string"}, "email": {"type": "string"}}
        }))
        .ok(202),
        post(request_password_reset),
    )
    .route(
        Op::new(
            "POST",
            "/api/v1/auth/password/reset",
            "Set a new password with the token of a reset link; every session of the user ends",
        )
        .tag("auth")
        .errors(&[401, 410, 423])
        .body(json!({
            "type": "object", "required": ["token", "password"], "additionalProperties": false,
            "properties": {"token": {"type": "string"},
                           "password": {"type": "string", "writeOnly": true}}
        }))
        .ok(204),
        post(reset_password),
    )
    .route(
        Op::new(
            "POST",
            "/api/v1/auth/not-me",
            "\"This wasn't me\": with the token of a new-device mail, end every session, forget \
             every device, remove the password and mail a reset link",
        )
        .tag("auth")
        .errors(&[401, 410, 423])
        .body(json!({
            "type": "object", "required": ["token"], "additionalProperties": false,
            "properties": {"token": {"type": "string"}}
        }))
        .ok(204),
        post(not_me),
    )
    .route(
        Op::new(
            "POST",
            "/api/v1/auth/password/change",
            "Change the caller's password, proving the current one; every other session ends",
        )
        .tag("auth")
        .bearer()
        .errors(&[410, 423, 429])
        .body(json!({
            "type": "object", "required": ["current_password", "new_password"],
            "additionalProperties": false,
            "properties": {"current_password": {"type": "string", "writeOnly": true},
                           "new_password": {"type": "string", "writeOnly": true}}
        }))
        .ok(204),
        post(change_password),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequestBody {
    tenant: String,
    email: String,
}

async fn request_password_reset(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<ResetRequestBody>,
) -> Result<impl IntoResponse, ApiError> {
    // Counted like a login, known account or not: mail floods are as slow
    // as guessing (NET-3).
    let account = format!("reset/{}/{}", body.tenant, body.email.trim().to_lowercase());
    state.limits.attempt(meta.ip.as_deref(), &account).await?;
    super::request_reset(
        &state.store,
        &state.post(),
        &body.tenant,
        &body.email,
        &meta,
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "detail":
            "if the account exists and is active, a reset link is on its way"})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    token: SecretString,
    password: SecretString,
}

async fn reset_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<ResetBody>,
) -> Result<StatusCode, ApiError> {
    use secrecy::ExposeSecret;
    super::reset(
        &state.store,
        &state.post(),
        body.token.expose_secret(),
        body.password,
        &meta,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    current_password: SecretString,
    new_password: SecretString,
}

async fn change_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<ChangeBody>,
) -> Result<StatusCode, ApiError> {
    // The current password is guessed no faster than at login (NET-3).
    let account = format!(
        "change/{}/{}",
        principal.scope().id_str(),
        principal.user_id
    );
    state.limits.attempt(meta.ip.as_deref(), &account).await?;
    let changed = super::change_password(
        &state.store,
        &state.post(),
        &principal,
        body.current_password,
        body.new_password,
        &meta,
    )
    .await;
    if !matches!(changed, Err(IdentityError::InvalidCredentials)) {
        state.limits.give_back(meta.ip.as_deref(), &account).await;
    }
    changed?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotMeBody {
    token: SecretString,
}

async fn not_me(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<NotMeBody>,
) -> Result<StatusCode, ApiError> {
    use secrecy::ExposeSecret;
    super::not_me(
        &state.store,
        &state.post(),
        body.token.expose_secret(),
        &meta,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unlock_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let was = super::unlock(&state.store, &permit, &meta, &id).await?;
    Ok(Json(json!({"unlocked": true, "was_locked_until": was})))
}

async fn admin_reset_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    super::admin_reset(&state.store, &state.post(), &permit, &meta, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"mailed": true}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    tenant: String,
    email: String,
    password: SecretString,
    /// `cookie`: a browser session cookie and a CSRF token, no tokens.
    #[serde(default)]
    mode: LoginMode,
    /// The device token an earlier login returned (IAM-7); a browser sends
    /// the `__Host-sr_device` cookie instead.
    #[serde(default)]
    device_token: Option<SecretString>,
}

#[derive(Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum LoginMode {
    #[default]
    Token,
    Cookie,
}

async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    who: Who,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<impl IntoResponse, ApiError> {
    // Before any password is hashed (NET-3).
    let account = format!("login/{}/{}", body.tenant, body.email);
    state.limits.attempt(meta.ip.as_deref(), &account).await?;
    // A tenant that admits only its own addresses refuses the rest here,
    // before the password is looked at (NET-2).
    if let Some(scope) = crate::tenancy::find_active_by_slug(&state.store, &body.tenant)
        .await
        .map_err(|e| ApiError::from(IdentityError::from(e)))?
    {
        if let Err(held) = state.admit_unheld(scope.id_str()) {
            state.limits.give_back(meta.ip.as_deref(), &account).await;
            return Err(held);
        }
        let actor = crate::context::Actor::anonymous(Some(body.email.clone()));
        let admitted = state
            .allowlists
            .admit(&state.store, &scope, actor, &meta, "auth.login")
            .await;
        if admitted.is_err() {
            state.limits.give_back(meta.ip.as_deref(), &account).await;
        }
        admitted?;
    }
    let device_token = body.device_token.or_else(|| device_cookie(&headers));
    let tokens = super::login(
        &state.store,
        &state.post(),
        state.keyring.token_signing_key(),
        state.config.session_ttl_hours,
        super::Credentials {
            tenant: &body.tenant,
            email: &body.email,
            password: body.password,
            device_token,
            lockout: state.config.login_lockout,
        },
        &meta,
    )
    .await;
    if !matches!(tokens, Err(IdentityError::InvalidCredentials)) {
        state.limits.give_back(meta.ip.as_deref(), &account).await;
    }
    match tokens? {
        super::LoginOutcome::Tokens(tokens) => {
            Ok(session_response(&state, &who, tokens, body.mode))
        }
        // IAM-3: the second step; `POST /auth/mfa/verify` completes it.
        super::LoginOutcome::SecondFactor(challenge) => Ok(Json(challenge).into_response()),
    }
}

/// The device token a browser keeps in its `__Host-sr_device` cookie.
pub(super) fn device_cookie(headers: &axum::http::HeaderMap) -> Option<SecretString> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| super::cookies::cookie_value(h, super::DEVICE_COOKIE))
        .map(|v| SecretString::from(v.to_owned()))
}

/// The answer of a login that opened a session: the tokens, or for a
/// browser the session cookie and its CSRF token (IAM-5, NET-4).
pub(super) fn session_response(
    state: &AppState,
    who: &Who,
    tokens: super::TokenPair,
    mode: LoginMode,
) -> axum::response::Response {
    who.set(&tokens.tenant_id, &tokens.user_id, None);
    if mode == LoginMode::Token {
        return Json(tokens).into_response();
    }
    // The credential stays in an HttpOnly cookie; the page gets only the
    // CSRF token it must echo.
    use super::cookies;
    let key = state.keyring.cookie_signing_key();
    let session = cookies::CookieSession {
        tenant: tokens.tenant_id,
        session: tokens.session_id,
        user: tokens.user_id,
    };
    let max_age = i64::from(state.config.session_ttl_hours) * 3600;
    let mut response = Json(json!({
        "mode": "cookie",
        "csrf_token": cookies::csrf_token(key, &session.session),
        "csrf_header": "X-CSRF-Token",
    }))
    .into_response();
    set_cookies(&mut response, cookies::set_cookies(key, &session, max_age));
    // A new device keeps its token in a cookie of its own, for next time.
    if let Some(device) = &tokens.device_token
        && let Ok(value) = axum::http::HeaderValue::from_str(&format!(
            "{}={device}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
            super::DEVICE_COOKIE,
            super::DEVICE_COOKIE_DAYS * 86_400
        ))
    {
        response
            .headers_mut()
            .append(axum::http::header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: SecretString,
}

async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    who: Who,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<impl IntoResponse, ApiError> {
    use secrecy::ExposeSecret;
    let tokens = super::refresh(
        &state.store,
        state.keyring.token_signing_key(),
        body.refresh_token.expose_secret(),
        &meta,
    )
    .await?;
    who.set(&tokens.tenant_id, &tokens.user_id, None);
    Ok(Json(tokens))
}

async fn my_sessions(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let sessions = super::list_sessions(
        &state.store,
        principal.scope(),
        &principal.user_id,
        Some(&principal.session_id),
    )
    .await?;
    Ok(Json(json!({"items": sessions})))
}

async fn end_other_sessions(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let ended = super::revoke_other_sessions(&state.store, &principal, &meta).await?;
    Ok(Json(json!({"revoked": ended})))
}

async fn end_session(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    super::revoke_own_session(&state.store, &principal, &meta, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_sessions(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    // 404 for a user of another tenant, as everywhere.
    super::get_user(&state.store, &permit, &id).await?;
    let sessions = super::list_sessions(&state.store, permit.scope(), &id, None).await?;
    Ok(Json(json!({"items": sessions})))
}

async fn end_user_sessions(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ended = super::revoke_user_sessions(&state.store, &permit, &meta, &id).await?;
    Ok(Json(json!({"revoked": ended})))
}

/// Adds each cookie as a `Set-Cookie` header (their values are ours, ASCII).
fn set_cookies(response: &mut axum::response::Response, cookies: [String; 2]) {
    for cookie in cookies {
        if let Ok(value) = axum::http::HeaderValue::from_str(&cookie) {
            response
                .headers_mut()
                .append(axum::http::header::SET_COOKIE, value);
        }
    }
}

async fn logout(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
) -> Result<axum::response::Response, ApiError> {
    super::logout(&state.store, &principal, &meta).await?;
    // A browser session's cookies go with it.
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookies(&mut response, super::cookies::clear_cookies());
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    token: SecretString,
    password: SecretString,
}

async fn accept_invitation(
    State(state): State<AppState>,
    meta: RequestMeta,
    who: Who,
    ApiJson(body): ApiJson<AcceptBody>,
) -> Result<impl IntoResponse, ApiError> {
    use secrecy::ExposeSecret;
    use sha2::Digest;
    // Per invitation, by a digest: the token itself is a secret.
    let digest = sha2::Sha256::digest(body.token.expose_secret().as_bytes());
    let account: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let account = format!("invitation/{account}");
    state.limits.attempt(meta.ip.as_deref(), &account).await?;
    if let Some(token) = super::tokens::OpaqueToken::parse(
        super::tokens::TokenKind::Invitation,
        body.token.expose_secret(),
    ) {
        let scope = crate::context::TenantScope::trusted(token.tenant());
        let actor = crate::context::Actor::anonymous(None);
        state
            .allowlists
            .admit(&state.store, &scope, actor, &meta, "auth.invitation.accept")
            .await?;
    }
    let tokens = super::accept_invitation(
        &state.store,
        state.keyring.token_signing_key(),
        state.config.session_ttl_hours,
        body.token.expose_secret(),
        body.password,
        &meta,
    )
    .await;
    // Only a token that did not open an invitation was a guess.
    if !matches!(
        tokens,
        Err(IdentityError::InvalidToken | IdentityError::InvalidCredentials)
    ) {
        state.limits.give_back(meta.ip.as_deref(), &account).await;
    }
    let tokens = tokens?;
    who.set(&tokens.tenant_id, &tokens.user_id, None);
    Ok(Json(tokens))
}

async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let mut tx = state.store.read(principal.scope()).await?;
    let user = super::users::find_user(&mut tx, principal.scope().id_str(), &principal.user_id)
        .await
        .map_err(|e| ApiError::from(IdentityError::from(e)))?
        .ok_or(IdentityError::Unauthenticated)?;
    Ok(Json(json!({
        "user": user,
        "tenant_id": principal.scope().id_str(),
        "session_id": principal.session_id,
        "roles": principal.roles,
        "permissions": principal.abilities.names(),
    })))
}

async fn list_users(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    let users = super::list_users(&state.store, &permit).await?;
    Ok(Json(json!({ "items": users })))
}

/// A role's name: built-in or one of the tenant's own.
const ROLE_PATTERN: &str = "^[a-z][a-z0-9_]{0,62}$";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserBody {
    email: String,
    #[serde(default, deserialize_with = "crate::json::present")]
    role: Option<String>,
    #[serde(default, deserialize_with = "crate::json::present")]
    roles: Option<Vec<String>>,
}

async fn create_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> Result<impl IntoResponse, ApiError> {
    let roles = super::users::named_roles(body.role, body.roles)?.ok_or_else(|| {
        ApiError::validation("name the user's role (role or roles)").with_field("role")
    })?;
    let created = super::create_user(
        &state.store,
        &state.post(),
        (&permit, &principal.abilities),
        &meta,
        &body.email,
        &roles,
        state.config.invitation_ttl_hours,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn get_user(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(super::get_user(&state.store, &permit, &id).await?))
}

async fn update_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        super::update_user(
            &state.store,
            (&permit, &principal.abilities),
            &meta,
            &id,
            patch,
        )
        .await?,
    ))
}

async fn delete_user(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    super::delete_user(&state.store, &permit, &meta, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
