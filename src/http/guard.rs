//! The check of each route's declared permission (ACC-1): the route
//! registry ([`super::api::Api::route`]) puts [`guard`] in front of every
//! route that declares one, and the handler receives the [`Granted`]
//! permit it leaves.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;

use super::error::ApiError;
use super::extract::{Operator, authenticate, operator_of};
use super::state::AppState;
use crate::access::{Permission, Principal};
use crate::context::{Permit, RequestMeta};
use crate::operators::{OperatorError, OperatorRole};

/// What a route declares it needs.
#[derive(Clone, Copy, Debug)]
pub struct Declared {
    pub permission: Permission,
    pub action: &'static str,
    /// The path names a collection whose records the permission is for.
    pub per_collection: bool,
    /// The operation reads or writes a record's files.
    pub files: bool,
}

/// The principal of a route that declares a permission, and the permit the
/// router's check of that permission gave it: the only way a handler gets
/// to act on tenant data. The check runs in [`guard`] before the handler;
/// a handler asking for this on a route that declares no permission finds
/// none and fails (every such route is exercised by the registry tests).
#[derive(Clone)]
pub struct Granted(pub Principal, pub Permit);

impl<S: Send + Sync> FromRequestParts<S> for Granted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Taken, not copied: a handler extracts its permit once.
        parts
            .extensions
            .remove::<Granted>()
            .ok_or_else(|| ApiError::internal(&"this route declares no permission"))
    }
}

/// The check of a route's declared permission (the route registry puts it
/// in front of every route that declares one, [`super::api::Api::route`]):
/// authenticates, checks the permission — for the collection the path
/// names, when it names one — records a denial, and leaves the
/// [`Granted`] permit for the handler.
pub async fn guard(
    axum::extract::State((state, declared)): axum::extract::State<(AppState, Declared)>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = request.into_parts();
    match admit(&mut parts, &state, declared).await {
        Ok(granted) => {
            parts.extensions.insert(granted);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    }
}

async fn admit(
    parts: &mut Parts,
    state: &AppState,
    declared: Declared,
) -> Result<Granted, ApiError> {
    let principal = authenticate(parts, state).await?;
    let collection = match declared.per_collection {
        true => axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(k, _)| *k == "name")
                    .map(|(_, v)| v.to_owned())
            }),
        false => None,
    };
    let meta = parts
        .extensions
        .get::<RequestMeta>()
        .cloned()
        .unwrap_or_default();
    let permit = crate::access::authorize(
        &state.store,
        &principal,
        declared.permission,
        collection.as_deref(),
        declared.action,
        &meta,
    )
    .await?;
    // Under a support grant (ACC-2): its scope decides files too, and every
    // request is an event in the tenant's trail naming the grant (AUD-5).
    if let Some(grant) = &principal.support {
        if declared.files && !grant.files {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this support grant does not reach the records' files",
            ));
        }
        crate::operators::support::record_access(
            &state.store,
            &permit,
            &meta,
            grant,
            declared.action,
            (parts.method.as_str(), parts.uri.path()),
        )
        .await?;
    }
    Ok(Granted(principal, permit))
}

/// The check of an operator route's declared roles (ACC-3): an operator
/// session whose second factor is confirmed, in one of `roles`.
pub async fn operator_guard(
    axum::extract::State((state, roles)): axum::extract::State<(AppState, &'static [OperatorRole])>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = request.into_parts();
    let admitted = match operator_of(&parts, &state).await {
        Ok(operator) if !operator.mfa_passed => {
            Err(ApiError::from(OperatorError::MfaEnrolmentRequired))
        }
        Ok(operator) => operator
            .require(roles)
            .map(|()| operator)
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match admitted {
        Ok(operator) => {
            parts.extensions.insert(Operator(operator));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    }
}
