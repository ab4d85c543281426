//! BAK-4 for a running server: `POST /api/v1/ops/tenants/{slug}/restore`
//! (an operator session (ACC-3)) restores one tenant from the backup target
//! while the server keeps serving every other tenant; the tenant itself
//! answers `503` with `Retry-After` until it is done. `strongroom backup
//! restore` sends it here when a server runs on the data dir.
//!
//! The integrity checks ([`super::integrity`]): `POST /api/v1/ops/integrity`
//! runs them now (`{"drill": true}`: the drills' row comparison too),
//! `GET` lists the refused tenants, and `DELETE
//! /api/v1/ops/tenants/{slug}/refusal` lifts a refusal. A restore lifts it
//! too.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::integrity::{self, Integrity};
use super::{BackupTarget, restore, snapshot};
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, Operator};
use crate::http::state::AppState;
use crate::operators::OperatorRole;

pub fn router() -> Api {
    Api::new().route(
        Op::new(
            "POST",
            "/api/v1/ops/tenants/{slug}/restore",
            "Restore one tenant from the backup target to a point in time (`latest`, `seq:N` or \
             an RFC 3339 time), replacing its state; the tenant answers 503 meanwhile, every \
             other tenant keeps working. An operator session (role operator)",
        )
        .tag("backups")
        .operator(&[OperatorRole::Operator])
        .errors(&[400, 404, 409, 422])
        .body(json!({
            "type": "object", "required": ["to"], "additionalProperties": false,
            "properties": {"to": {"type": "string", "description": "latest, seq:N or an RFC 3339 time"}}
        })),
        post(restore_tenant),
    )
    .route(
        Op::new(
            "POST",
            "/api/v1/ops/integrity",
            "Run the integrity checks now (the database file, each tenant's journal, the backup \
             target against the database; with `drill: true` each tenant's rows against its \
             backup): a tenant that fails is refused with 503 and, with `backup_auto_restore`, \
             restored. An operator session (role operator)",
        )
        .tag("backups")
        .operator(&[OperatorRole::Operator])
        .errors(&[400, 422])
        .body(json!({
            "type": "object", "additionalProperties": false,
            "properties": {"drill": {"type": "boolean", "description": "compare every tenant's rows with its backup too (a restore drill each)"}}
        })),
        post(run_checks),
    )
    .route(
        Op::new(
            "GET",
            "/api/v1/ops/integrity",
            "The tenants refused after a failed integrity check, and why. An operator session (role operator)",
        )
        .tag("backups")
        .operator(&[OperatorRole::Operator]),
        get(refusals),
    )
    .route(
        Op::new(
            "DELETE",
            "/api/v1/ops/tenants/{slug}/refusal",
            "Serve a refused tenant again without restoring it (the operator judged the finding). \
             An operator session (role operator)",
        )
        .tag("backups")
        .operator(&[OperatorRole::Operator])
        .errors(&[404]),
        delete(lift_refusal),
    )
}

/// The integrity checks over this server's state.
pub fn integrity_of(state: &AppState, target: Option<std::sync::Arc<BackupTarget>>) -> Integrity {
    Integrity {
        store: state.store.clone(),
        vault: state.vault.clone(),
        objects: state.objects.clone(),
        target,
        holds: state.holds.clone(),
        mailer: state.mailer.clone(),
        operators: state.config.operator_email.clone(),
        auto_restore: state.config.backup_auto_restore,
        acting: true,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksBody {
    #[serde(default)]
    drill: bool,
}

async fn run_checks(
    State(state): State<AppState>,
    _: Operator,
    ApiJson(body): ApiJson<ChecksBody>,
) -> Result<Json<Value>, ApiError> {
    let target = if state.config.backup {
        Some(std::sync::Arc::new(
            BackupTarget::open(&state.config).map_err(|e| ApiError::internal(&e))?,
        ))
    } else {
        None
    };
    let checks = integrity_of(&state, target);
    let report = checks
        .run(body.drill)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let json = serde_json::to_value(&report).unwrap_or_default();
    let outcome = integrity::outcome(Ok(report));
    crate::ops::heartbeat(
        &state.store,
        integrity::JOB,
        outcome.is_ok(),
        outcome.unwrap_or_else(|e| e),
    )
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json))
}

async fn refusals(State(state): State<AppState>, _: Operator) -> Json<Value> {
    Json(json!({"refused": state.holds.refusals()}))
}

async fn lift_refusal(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(slug): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let scope = crate::tenancy::find_active_by_slug(&state.store, &slug)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("no active tenant with this slug"))?;
    if !state.holds.lift(scope.id_str()) {
        return Err(ApiError::not_found("this tenant is not refused"));
    }
    tracing::warn!(
        target: "security",
        event = "backup.refusal_lifted",
        tenant = %slug,
        "an operator lifted an integrity refusal: the tenant is served unrestored"
    );
    Ok(StatusCode::NO_CONTENT)
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
    // A restored tenant is whole again: a refusal after a failed integrity
    // check ends.
    state.holds.lift(scope.id_str());
    // The next restore of this tenant starts from here.
    let snapshot = snapshot::take(&state.store, &state.vault, &target, &scope).await;
    let mut out = serde_json::to_value(&restored).unwrap_or_default();
    out["snapshot_after"] = match snapshot {
        Ok(taken) => json!(taken.key),
        Err(why) => json!({"error": why}),
    };
    Ok(Json(out))
}
