//! `/api/v1/tenant/keys`: status, rotation and BYOK for tenant admins.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::KeysError;
use crate::access::Permission;
use crate::context::RequestMeta;
use crate::crypto::vault::parse_tenant_key;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::guard::Granted;
use crate::http::state::AppState;

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "GET",
                "/api/v1/tenant/keys",
                "Data-key versions, BYOK fingerprint and rotation progress",
            )
            .tag("keys")
            .permission(Permission::KeysManage, "keys.read"),
            get(status),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/tenant/keys/rotate",
                "Rotate the data key: new writes use a new version at once; existing data is re-encrypted in the background",
            )
            .tag("keys")
            .permission(Permission::KeysManage, "keys.rotate")
            .errors(&[409, 410, 423])
            .ok(202),
            post(rotate),
        )
        .route(
            Op::new(
                "PUT",
                "/api/v1/tenant/keys/byok",
                "Supply the tenant's own 256-bit key (base64); it then wraps the tenant's data keys",
            )
            .tag("keys")
            .permission(Permission::KeysManage, "keys.byok_supply")
            .errors(&[409, 410])
            .body(json!({
                "type": "object", "required": ["key"], "additionalProperties": false,
                "properties": {"key": {"type": "string", "description": "base64 of 32 random bytes",
                                       "pattern": "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"}}
            })),
            put(supply_byok),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/tenant/keys/byok",
                "Revoke the tenant's own key: its data is unreadable until the key is supplied again",
            )
            .tag("keys")
            .permission(Permission::KeysManage, "keys.byok_revoke")
            .errors(&[404, 409, 410]),
            axum::routing::delete(revoke_byok),
        )
}

impl From<KeysError> for ApiError {
    fn from(e: KeysError) -> Self {
        match e {
            KeysError::NoByok => ApiError::not_found(e.to_string()),
            KeysError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            KeysError::Crypto(e) => e.into(),
            KeysError::Records(e) => e.into(),
            KeysError::Files(e) => e.into(),
            KeysError::Store(e) => e.into(),
        }
    }
}

async fn status(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<Response, ApiError> {
    let status = super::status(&state.store, &state.vault, permit.scope()).await?;
    Ok(Json(status).into_response())
}

async fn rotate(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
) -> Result<Response, ApiError> {
    let version = super::rotate(&state.store, &state.vault, &permit, &meta).await?;
    let files = state.files();
    super::spawn_reencrypt(files, permit.scope().clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "active_version": version,
            "status": "re-encrypting existing data in the background; follow it at GET /api/v1/tenant/keys",
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByokBody {
    key: SecretString,
}

async fn supply_byok(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiJson(body): ApiJson<ByokBody>,
) -> Result<Response, ApiError> {
    let key = parse_tenant_key(body.key.expose_secret()).map_err(KeysError::from)?;
    let (fingerprint, change) =
        super::supply_byok(&state.store, &state.vault, &permit, &meta, key).await?;
    Ok(Json(json!({"fingerprint": fingerprint, "change": change})).into_response())
}

async fn revoke_byok(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
) -> Result<Response, ApiError> {
    let fingerprint = super::revoke_byok(&state.store, &state.vault, &permit, &meta).await?;
    Ok(Json(json!({
        "revoked": fingerprint,
        "detail": "data wrapped by this key is unreadable until it is supplied again",
    }))
    .into_response())
}
