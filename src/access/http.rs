//! `/api/v1/roles`: a tenant's roles, built-in and its own (ACC-1).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch, post};
use serde_json::{Value, json};

use super::Permission;
use super::roles::{self, NewRole, RoleError, RolePatch};
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::guard::Granted;
use crate::http::state::AppState;

/// A permission name as a role lists it (the general ones, or reading or
/// writing one collection's records).
pub fn permission_schema() -> Value {
    let general: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
    json!({"anyOf": [
        {"enum": general},
        {"type": "string", "pattern": "^records\\.(read|write):[a-z][a-z0-9_]{0,62}$"}
    ]})
}

pub fn router() -> Api {
    let permissions = json!({"type": "array", "maxItems": 500, "items": permission_schema()});
    let description = json!({"type": "string", "maxLength": 500});
    Api::new()
        .route(
            Op::new("GET", "/api/v1/roles", "List the tenant's roles, built-in ones first")
                .tag("roles")
                .permission(Permission::UsersRead, "role.list"),
            get(list),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/roles",
                "Create a role from named permissions (records.read:<collection> for one collection's records)",
            )
            .tag("roles")
            .permission(Permission::RolesManage, "role.create")
            .errors(&[409])
            .body(json!({"type": "object", "required": ["name", "permissions"],
                         "additionalProperties": false,
                         "properties": {
                             "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"},
                             "description": description,
                             "permissions": permissions,
                         }}))
            .ok(201),
            post(create),
        )
        .route(
            Op::new("GET", "/api/v1/roles/{id}", "Read a role (a built-in one by name)")
                .tag("roles")
                .permission(Permission::UsersRead, "role.read"),
            get(read),
        )
        .route(
            Op::new(
                "PATCH",
                "/api/v1/roles/{id}",
                "Change a role's description or permissions; its holders have them from their next request",
            )
            .tag("roles")
            .permission(Permission::RolesManage, "role.update")
            .errors(&[409])
            .body(json!({"type": "object", "additionalProperties": false,
                         "properties": {"description": description, "permissions": permissions}})),
            patch(update),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/roles/{id}",
                "Delete a role; one in use needs ?reassign_to=<role>, which its holders then hold instead",
            )
            .tag("roles")
            .permission(Permission::RolesManage, "role.delete")
            .errors(&[409])
            .param("reassign_to", json!({"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}), false)
            .ok(204),
            delete(remove),
        )
}

impl From<RoleError> for ApiError {
    fn from(e: RoleError) -> Self {
        use RoleError::*;
        match e {
            InvalidPermission(_) => ApiError::validation(e.to_string()).with_field("permissions"),
            InvalidName(_) | BuiltInName(_) => {
                ApiError::validation(e.to_string()).with_field("name")
            }
            LongDescription => ApiError::validation(e.to_string()).with_field("description"),
            UnknownRole(_) | TooManyHeld => ApiError::validation(e.to_string()).with_field("role"),
            ReassignToSelf | InvalidReassign(_) => {
                ApiError::validation(e.to_string()).with_field("reassign_to")
            }
            NameTaken(_) => ApiError::new(StatusCode::CONFLICT, "name-taken", e.to_string()),
            BuiltIn => ApiError::new(StatusCode::CONFLICT, "built-in-role", e.to_string()),
            InUse { .. } => ApiError::new(StatusCode::CONFLICT, "role-in-use", e.to_string()),
            TooMany => ApiError::new(StatusCode::CONFLICT, "too-many-roles", e.to_string()),
            NotFound => ApiError::not_found(e.to_string()),
            Escalation(_) => ApiError::new(StatusCode::FORBIDDEN, "escalation", e.to_string()),
            Store(e) => e.into(),
        }
    }
}

async fn list(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    let items = roles::list(&state.store, &permit).await?;
    Ok(Json(json!({"items": items})))
}

async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiJson(body): ApiJson<NewRole>,
) -> Result<impl IntoResponse, ApiError> {
    let role = roles::create(&state.store, &permit, &meta, &principal.abilities, body).await?;
    Ok((StatusCode::CREATED, Json(role)))
}

async fn read(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(roles::get(&state.store, &permit, &id).await?))
}

async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RolePatch>,
) -> Result<impl IntoResponse, ApiError> {
    let role = roles::update(
        &state.store,
        &permit,
        &meta,
        &principal.abilities,
        &id,
        body,
    )
    .await?;
    Ok(Json(role))
}

async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(principal, permit): Granted,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let mut reassign_to = None;
    for (key, value) in pairs {
        match key.as_str() {
            "reassign_to" => reassign_to = Some(value),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; use reassign_to"
                )));
            }
        }
    }
    roles::delete(
        &state.store,
        &permit,
        &meta,
        &principal.abilities,
        &id,
        reassign_to,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
