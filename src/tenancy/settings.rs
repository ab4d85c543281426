//! Per-tenant settings a tenant admin controls: today the audit retention
//! (AUD-3: at least 90 days, 365 by default). Changes go through the write
//! path, so each one is journaled and audited with its before/after.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::TenancyError;
use crate::access::{Permission, Principal, authorize};
use crate::context::Permit;
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::store::db;
use crate::store::{Change, JournalOp, Store};

pub const MIN_AUDIT_RETENTION_DAYS: i64 = 90;
pub const MAX_AUDIT_RETENTION_DAYS: i64 = 36_500;

#[derive(Debug, Clone, Serialize)]
pub struct TenantSettings {
    pub audit_retention_days: i64,
    pub updated_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub audit_retention_days: Option<i64>,
}

pub async fn get_settings(store: &Store, permit: &Permit) -> Result<TenantSettings, TenancyError> {
    let mut tx = store.read(permit.scope()).await?;
    let row = db::query(
        "SELECT audit_retention_days, updated_at FROM tenant_settings WHERE tenant_id = $1",
    )
    .bind(permit.scope().id_str())
    .fetch_one(tx.conn())
    .await?;
    Ok(TenantSettings {
        audit_retention_days: row.try_get(0)?,
        updated_at: row.try_get(1)?,
    })
}

pub async fn update_settings(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    patch: SettingsPatch,
) -> Result<TenantSettings, TenancyError> {
    if let Some(days) = patch.audit_retention_days
        && !(MIN_AUDIT_RETENTION_DAYS..=MAX_AUDIT_RETENTION_DAYS).contains(&days)
    {
        return Err(TenancyError::InvalidSetting(format!(
            "audit_retention_days must be between {MIN_AUDIT_RETENTION_DAYS} and {MAX_AUDIT_RETENTION_DAYS}"
        )));
    }
    let before = get_settings(store, permit).await?;
    store
        .write(permit, meta, "tenant.settings.update", move |tx| {
            Box::pin(async move {
                let after = TenantSettings {
                    audit_retention_days: patch
                        .audit_retention_days
                        .unwrap_or(before.audit_retention_days),
                    updated_at: crate::clock::now(),
                };
                let tenant = tx.scope().id_str().to_owned();
                db::query(
                    "UPDATE tenant_settings SET audit_retention_days = $1, updated_at = $2 WHERE tenant_id = $3",
                )
                .bind(after.audit_retention_days)
                .bind(&after.updated_at)
                .bind(&tenant)
                .execute(tx.conn())
                .await?;
                tx.record(Change {
                    entity: "tenant_settings",
                    entity_id: tenant,
                    op: JournalOp::Update,
                    before: Some(json!(before)),
                    after: Some(json!(after)),
                    sensitive: vec![],
                    diff_of: None,
                });
                Ok(after)
            })
        })
        .await
}

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new("GET", "/api/v1/tenant/settings", "The tenant's settings")
                .tag("tenant")
                .permission(Permission::SettingsManage),
            get(read),
        )
        .route(
            Op::new(
                "PATCH",
                "/api/v1/tenant/settings",
                "Change the tenant's settings",
            )
            .tag("tenant")
            .permission(Permission::SettingsManage)
            .body(json!({"type": "object", "properties": {
                "audit_retention_days": {"type": "integer", "minimum": MIN_AUDIT_RETENTION_DAYS,
                                         "maximum": MAX_AUDIT_RETENTION_DAYS}
            }})),
            axum::routing::patch(update),
        )
}

async fn read(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let permit = authorize(
        &state.store,
        &principal,
        Permission::SettingsManage,
        "tenant.settings.read",
        &meta,
    )
    .await?;
    Ok(Json(get_settings(&state.store, &permit).await?))
}

async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let permit = authorize(
        &state.store,
        &principal,
        Permission::SettingsManage,
        "tenant.settings.update",
        &meta,
    )
    .await?;
    Ok(Json(
        update_settings(&state.store, &permit, &meta, patch).await?,
    ))
}
