//! Extractors that parse at the edge and fail with problem+json.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;
use crate::access::{Principal, PrincipalKind};
use crate::context::RequestMeta;
use crate::operators::OperatorPrincipal;

/// Who a request turned out to be, filled in by authentication and read by
/// the access log after the response.
#[derive(Clone, Default)]
pub struct Who(std::sync::Arc<std::sync::Mutex<Option<Identified>>>);

#[derive(Clone, Debug)]
pub struct Identified {
    pub tenant_id: String,
    pub user_id: String,
    pub email: Option<String>,
    /// The access log's actor type: `user`, `api_key`, or `support` (then
    /// `user_id` is the support grant's id and `email` the operator's).
    pub kind: &'static str,
}

impl Who {
    pub fn set(&self, tenant_id: &str, user_id: &str, email: Option<&str>) {
        self.set_as("user", tenant_id, user_id, email);
    }

    pub fn set_as(&self, kind: &'static str, tenant_id: &str, user_id: &str, email: Option<&str>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Identified {
                tenant_id: tenant_id.to_owned(),
                user_id: user_id.to_owned(),
                email: email.map(str::to_owned),
                kind,
            });
        }
    }

    pub fn get(&self) -> Option<Identified> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Who>().cloned().unwrap_or_default())
    }
}

/// A JSON body; syntax errors are `400`, shape errors `422`, a wrong
/// content type `415`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            // Every body the API takes is an object (serde would read a
            // struct from an array too).
            Ok(axum::Json(value)) if !value.is_object() => {
                Err(ApiError::validation("the body must be a JSON object"))
            }
            Ok(axum::Json(value)) if holds_nul(&value) => {
                Err(ApiError::validation("text may not contain NUL (U+0000)"))
            }
            Ok(axum::Json(mut value)) => {
                integral_numbers(&mut value);
                serde_json::from_value(value)
                    .map(ApiJson)
                    .map_err(|e| ApiError::validation(format!("invalid body: {e}")))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::bad_request(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::validation(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send the body as application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => {
                Err(ApiError::new(e.status(), "bad-body", e.body_text()))
            }
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

/// Whether any string of `value`, or any key, holds NUL.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Writes numbers with no fraction as integers (`30.0` as `30`): JSON
/// Schema, and so the API's documented schemas, count them as integers.
fn integral_numbers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// Path parameters; a malformed one is `400` (or `404` for ids, by the
/// handler's own lookups).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

/// What a session whose password must change may still do.
fn allowed_before_password_change(parts: &Parts) -> bool {
    matches!(
        (parts.method.as_str(), parts.uri.path()),
        ("POST", "/api/v1/auth/password/change")
            | ("POST", "/api/v1/auth/logout")
            | ("GET", "/api/v1/me")
    )
}

/// What a session whose user must first enrol a second factor may do.
fn allowed_before_enrolment(parts: &Parts) -> bool {
    let path = parts.uri.path();
    match parts.method.as_str() {
        "GET" => matches!(path, "/api/v1/me" | "/api/v1/auth/mfa"),
        "POST" => {
            matches!(path, "/api/v1/auth/logout" | "/api/v1/auth/mfa/factors")
                || (path.starts_with("/api/v1/auth/mfa/factors/") && path.ends_with("/confirm"))
        }
        _ => false,
    }
}

/// The operator of a route that declares operator roles (ACC-3): the
/// router's [`super::guard::operator_guard`] authenticated them, saw their
/// second factor passed and their role allowed, and left them here.
#[derive(Clone)]
pub struct Operator(pub OperatorPrincipal);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .remove::<Operator>()
            .ok_or_else(|| ApiError::internal(&"this route declares no operator roles"))
    }
}

/// Any live operator session, also one whose second factor is still to be
/// confirmed: for confirming it, `me` and logout only.
pub struct OperatorSession(pub OperatorPrincipal);

impl FromRequestParts<AppState> for OperatorSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(OperatorSession(operator_of(parts, state).await?))
    }
}

/// The operator an `sr_ops_…` bearer token belongs to.
pub(super) async fn operator_of(
    parts: &Parts,
    state: &AppState,
) -> Result<OperatorPrincipal, ApiError> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| SecretString::from(t.trim().to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "{} needs an operator's token: Authorization: Bearer sr_ops_…",
                    parts.uri.path()
                ),
            )
        })?;
    let operator = crate::operators::authenticate(&state.store, &bearer).await?;
    // Limited per operator and address as users are (NET-3).
    let meta = parts
        .extensions
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    state
        .limits
        .request(meta.ip.as_deref(), "operators", &operator.id)?;
    Ok(operator)
}

/// The request's id, client address and user agent, as `request_context`
/// established them (trusted proxies honoured).
impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_default())
    }
}

/// A request without a bearer token, authenticated by the browser session
/// cookie (IAM-5): an unsafe method must also carry the session's CSRF
/// token in `X-CSRF-Token` (NET-4), or it is `403 csrf`.
async fn browser_session(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    use crate::identity::cookies;
    let cookie = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookies::cookie_value(v, cookies::SESSION_COOKIE))
        .ok_or(crate::identity::IdentityError::Unauthenticated)?;
    let key = state.keyring.cookie_signing_key();
    let principal =
        crate::identity::authenticate_cookie(&state.sessions, &state.store, key, cookie).await?;
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let presented = parts
        .headers
        .get(cookies::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    if !safe && !presented.is_some_and(|p| cookies::csrf_matches(key, &principal.session_id, p)) {
        tracing::warn!(target: "security", tenant = principal.scope().id_str(),
            user = %principal.user_id, method = %parts.method,
            "a cookie-authenticated request without its CSRF token was refused");
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "csrf",
            "a request authenticated by the session cookie must carry its X-CSRF-Token",
        ));
    }
    Ok(principal)
}

/// Authenticates a request: a bearer token (an access token or an API
/// key) or the browser session cookie; then the password-change and
/// enrolment gates, the restore hold, the tenant's IP allow-list (NET-2)
/// and the rate limits (NET-3), for users and keys alike.
pub(super) async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let meta = parts
        .extensions
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| SecretString::from(t.trim().to_owned()));
    let principal = match bearer {
        Some(bearer) if crate::operators::is_operator_token(bearer.expose_secret()) => {
            support_principal(parts, state, &bearer).await?
        }
        Some(bearer) if crate::identity::api_keys::is_api_key(bearer.expose_secret()) => {
            crate::identity::api_keys::authenticate(
                &state.api_keys,
                &state.store,
                &bearer,
                meta.ip.as_deref(),
            )
            .await?
        }
        Some(bearer) => {
            crate::identity::authenticate_cached(
                &state.sessions,
                &state.store,
                state.keyring.token_verifying_key(),
                &bearer,
            )
            .await?
        }
        None => browser_session(parts, state).await?,
    };
    // A temporary password from an admin's reset allows only its change.
    if principal.must_change_password && !allowed_before_password_change(parts) {
        return Err(crate::identity::IdentityError::PasswordChangeRequired.into());
    }
    // A tenant that requires a second factor lets a user without one
    // only enrol (IAM-3).
    if principal.must_enrol_mfa && !allowed_before_enrolment(parts) {
        return Err(crate::identity::IdentityError::MfaEnrolmentRequired.into());
    }
    if let Some(who) = parts.extensions.get::<Who>() {
        match (&principal.kind, &principal.support) {
            (PrincipalKind::Support, Some(grant)) => who.set_as(
                "support",
                principal.scope().id_str(),
                &grant.id,
                Some(&principal.email),
            ),
            (kind, _) => who.set_as(
                if *kind == PrincipalKind::ApiKey {
                    "api_key"
                } else {
                    "user"
                },
                principal.scope().id_str(),
                &principal.user_id,
                Some(&principal.email),
            ),
        }
    }
    state.admit_unheld(principal.scope().id_str())?;
    // Before any data is read (NET-2).
    state
        .allowlists
        .admit(
            &state.store,
            principal.scope(),
            principal.actor(),
            &meta,
            "tenant.ip_denied",
        )
        .await?;
    // Per user (or key), address and tenant (NET-3), in memory.
    state.limits.request(
        meta.ip.as_deref(),
        principal.scope().id_str(),
        &principal.user_id,
    )?;
    Ok(principal)
}

/// An operator's token on a tenant route: only under an active support
/// grant for them (`X-Support-Grant: <handle>`), with exactly its scope
/// (ACC-2). Without one it is `403`: no operator reads tenant data else.
async fn support_principal(
    parts: &Parts,
    state: &AppState,
    bearer: &SecretString,
) -> Result<Principal, ApiError> {
    // A live operator session is who it is: without a grant for them it is
    // refused (403), as a user without the permission would be.
    let operator = crate::operators::authenticate(&state.store, bearer).await?;
    let refused = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "no-active-grant",
            "an operator reaches a tenant's data only under an active support grant for them \
             (X-Support-Grant: <handle>)",
        )
    };
    let handle = parts
        .headers
        .get("x-support-grant")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    if !operator.mfa_passed || operator.role != crate::operators::OperatorRole::Support {
        return Err(refused());
    }
    let (scope, grant, abilities) =
        crate::operators::support::active_for(&state.store, &operator, handle)
            .await
            .map_err(|_| refused())?;
    Ok(Principal {
        scope,
        kind: PrincipalKind::Support,
        user_id: operator.id,
        email: operator.email,
        roles: std::sync::Arc::from(Vec::new()),
        abilities: std::sync::Arc::new(abilities),
        session_id: String::new(),
        support: Some(grant),
        must_change_password: false,
        mfa_enrolled: true,
        mfa_at: None,
        must_enrol_mfa: false,
    })
}

/// A signed-in user acting on their own account (routes that declare no
/// permission). An API key has no account, so it is refused here.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        match principal.kind {
            PrincipalKind::User => Ok(principal),
            PrincipalKind::ApiKey => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "api-key-not-allowed",
                "an API key has no account of its own: this operation is for a signed-in user",
            )),
            PrincipalKind::Support => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "support-grant-scope",
                "a support grant reaches the tenant's data in its scope, no user's account",
            )),
        }
    }
}
