//! `GET /api/v1/audit`: the tenant's audit trail, newest first, with cursor
//! pagination. Needs `audit.read` (tenant admins).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::RequestMeta;
use crate::access::{Permission, Principal, authorize};
use crate::http::{Api, ApiError, AppState, Op};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "GET",
                "/api/v1/audit",
                "The tenant's audit events, newest first",
            )
            .tag("audit")
            .permission(Permission::AuditRead),
            get(list),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/audit/verify",
                "Walk the tenant's hash chain and signed checkpoints; name the first bad seq",
            )
            .tag("audit")
            .permission(Permission::AuditRead),
            get(verify),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/audit/checkpoint-key",
                "The Ed25519 public key that signs audit checkpoints",
            )
            .tag("audit"),
            get(checkpoint_key),
        )
}

async fn verify(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let permit = authorize(
        &state.store,
        &principal,
        Permission::AuditRead,
        "audit.verify",
        &meta,
    )
    .await?;
    let key = state.keyring.checkpoint_signing_key().verifying_key();
    Ok(Json(
        super::verify(&state.store, permit.scope(), &key).await?,
    ))
}

async fn checkpoint_key(State(state): State<AppState>) -> impl IntoResponse {
    use base64::Engine;
    let key = state.keyring.checkpoint_signing_key().verifying_key();
    Json(json!({
        "algorithm": "Ed25519",
        "public_key": base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
        "signed_message": "strongroom-audit-checkpoint/v1\n<tenant_id>\n<seq>\n<hash hex>\n<signed_at>",
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::validation(format!("limit must be 1-{MAX_LIMIT}")).with_field("limit")
            })?,
    };
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::validation("malformed cursor").with_field("cursor"))
        })
        .transpose()?;
    let permit = authorize(
        &state.store,
        &principal,
        Permission::AuditRead,
        "audit.read",
        &meta,
    )
    .await?;
    let mut tx = state.store.read(permit.scope()).await?;
    let items = super::list(&mut tx, permit.scope().id_str(), before, limit + 1).await?;
    let (items, next_cursor) = if items.len() as i64 > limit {
        let page: Vec<_> = items.into_iter().take(limit as usize).collect();
        let cursor = page.last().map(|e| e.seq.to_string());
        (page, cursor)
    } else {
        (items, None)
    };
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}
