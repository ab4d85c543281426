//! `/api/v1/api-keys`: create (the secret shown once), list, read, revoke
//! (ACC-1).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde_json::json;

use super::{KeyError, NewKey};
use crate::access::Permission;
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::guard::Granted;
use crate::http::state::AppState;

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "POST",
                "/api/v1/api-keys",
                "Create an API key acting with the named roles (never beyond your own); its secret is returned once",
            )
            .tag("api-keys")
            .permission(Permission::ApiKeysManage, "api_key.create")
            .body(json!({"type": "object", "required": ["name", "roles"], "additionalProperties": false,
                         "properties": {
                             "name": {"type": "string", "minLength": 1, "maxLength": 100},
                             "roles": {"type": "array", "minItems": 1, "maxItems": 20,
                                       "items": {"type": "string"}},
                             "expires_at": {"type": ["string", "null"], "format": "date-time"},
                         }}))
            .ok(201),
            post(create),
        )
        .route(
            Op::new("GET", "/api/v1/api-keys", "List the tenant's API keys (never their secrets)")
                .tag("api-keys")
                .permission(Permission::ApiKeysManage, "api_key.list"),
            get(list),
        )
        .route(
            Op::new("GET", "/api/v1/api-keys/{id}", "Read an API key: roles, expiry, last use")
                .tag("api-keys")
                .permission(Permission::ApiKeysManage, "api_key.read"),
            get(read),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/api-keys/{id}",
                "Revoke an API key: its next request is refused",
            )
            .tag("api-keys")
            .permission(Permission::ApiKeysManage, "api_key.revoke")
            .errors(&[409]),
            delete(revoke),
        )
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::InvalidName => ApiError::validation(e.to_string()).with_field("name"),
            KeyError::InvalidExpiry => ApiError::validation(e.to_string()).with_field("expires_at"),
            KeyError::NotFound => ApiError::not_found(e.to_string()),
            KeyError::Revoked => ApiError::new(StatusCode::CONFLICT, "revoked", e.to_string()),
            KeyError::Role(e) => e.into(),
            KeyError::Store(e) => e.into(),
        }
    }
}

async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<impl IntoResponse, ApiError> {
    let created = super::create(&state.store, &permit, &meta, &principal.abilities, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        json!({"items": super::list(&state.store, &permit).await?}),
    ))
}

async fn read(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(super::get(&state.store, &permit, &id).await?))
}

async fn revoke(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        super::revoke(&state.store, &permit, &meta, &id).await?,
    ))
}
