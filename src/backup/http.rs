//! BAK-4 for a running server: `POST /api/v1/ops/tenants/{slug}/restore`
//! (bearer `operator_token`) restores one tenant from the backup target
//! while the server keeps serving every other tenant; the tenant itself
//! answers `503` with `Retry-After` until it is done. `strongroom backup
//! restore` sends it here when a server runs on the data dir.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BackupTarget, restore, snapshot};
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, Operator};
use crate::http::state::AppState;

pub fn router() -> Api {
    Api::new().route(
        Op::new(
            "POST",
            "/api/v1/ops/tenants/{slug}/restore",
            "Restore one tenant from the backup target to a point in time (`latest`, `seq:N` or \
             an RFC 3339 time), replacing its state; the tenant answers 503 meanwhile, every \
             other tenant keeps working. Bearer `operator_token`",
        )
        .tag("backups")
        .operator()
        .errors(&[400, 404, 409, 422])
        .body(json!({
            "type": "object", "required": ["to"], "additionalProperties": false,
            "properties": {"to": {"type": "string", "description": "latest, seq:N or an RFC 3339 time"}}
        })),
        post(restore_tenant),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    to: String,
}

async fn restore_tenant(
    State(state): State<AppState>,
    _: Operator,
    meta: RequestMeta,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<RestoreBody>,
) -> Result<Json<Value>, ApiError> {
    let point = restore::Point::parse(&body.to).map_err(ApiError::validation)?;
    if !state.config.backup {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backups-off",
            "backup is off on this instance: there is nothing to restore from",
        ));
    }
    let scope = crate::tenancy::find_active_by_slug(&state.store, &slug)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("no active tenant with this slug"))?;
    let Some(_hold) = state.holds.hold(scope.id_str()) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "restore-running",
            "a restore of this tenant runs already",
        ));
    };
    let target = BackupTarget::open(&state.config).map_err(|e| ApiError::internal(&e))?;
    let restored = restore::restore_tenant(
        &state.store,
        &state.vault,
        &state.objects,
        &target,
        scope.id_str(),
        &point,
        restore::Mode::Live,
        &meta,
        &|_, _| {},
    )
    .await
    .map_err(|why| ApiError::new(StatusCode::CONFLICT, "restore-refused", why))?;
    // The next restore of this tenant starts from here.
    let snapshot = snapshot::take(&state.store, &state.vault, &target, &scope).await;
    let mut out = serde_json::to_value(&restored).unwrap_or_default();
    out["snapshot_after"] = match snapshot {
        Ok(taken) => json!(taken.key),
        Err(why) => json!({"error": why}),
    };
    Ok(Json(out))
}
