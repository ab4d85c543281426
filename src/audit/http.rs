//! Audit endpoints under `/api/v1/audit`: the trail with filters and cursor
//! pagination, streaming exports (JSON Lines and CSV), chain verification
//! and the checkpoint key. Reading needs `audit.read` (admins, auditors).

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::RequestMeta;
use super::access_log::{self, AccessFilter};
use super::export::{self, Format};
use super::query::{AuditError, AuditFilter, Page};
use crate::access::Permission;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::guard::Granted;
use crate::http::state::AppState;
use crate::store::sql::{decode_cursor, encode_cursor, one_page};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// The time window both logs filter by.
fn time_window(op: Op) -> Op {
    let time = json!({"type": "string", "format": "date-time"});
    op.param("from", time.clone(), false)
        .param("to", time, false)
}

/// The trail's filters, as query parameters.
fn audit_filters(op: Op) -> Op {
    let text = json!({"type": "string"});
    time_window(op)
        .param(
            "actor",
            json!({"type": "string", "description": "a user id or e-mail"}),
            false,
        )
        .param("action", text.clone(), false)
        .param("target_type", text.clone(), false)
        .param("target_id", text, false)
        .param(
            "outcome",
            json!({"enum": ["success", "failure", "denied"]}),
            false,
        )
}

/// The access log's filters, as query parameters.
fn access_filters(op: Op) -> Op {
    time_window(op)
        .param(
            "user",
            json!({"type": "string", "description": "a user id"}),
            false,
        )
        .param("path_prefix", json!({"type": "string"}), false)
        .param(
            "status",
            json!({"type": "integer", "minimum": 100, "maximum": 599}),
            false,
        )
}

fn limit(op: Op) -> Op {
    op.param(
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        false,
    )
}

fn format(op: Op) -> Op {
    op.param("format", json!({"enum": ["jsonl", "csv"]}), false)
        .produces(&["application/jsonl", "text/csv"])
}

pub fn router() -> Api {
    Api::new()
        .route(
            limit(audit_filters(
                Op::new(
                    "GET",
                    "/api/v1/audit",
                    "The tenant's audit events, newest first: from, to, actor, action, target_type, \
                     target_id, outcome, limit, cursor (the next_cursor of the previous page)",
                )
                .tag("audit")
                .permission(Permission::AuditRead, "audit.read"),
            ))
            .param("cursor", json!({"type": "string", "pattern": "^[0-9]{1,18}$"}), false),
            get(list),
        )
        .route(
            format(audit_filters(
                Op::new(
                    "GET",
                    "/api/v1/audit/export",
                    "Stream the audit events (oldest first) as format=jsonl or csv, with the list filters",
                )
                .tag("audit")
                .permission(Permission::AuditRead, "audit.export"),
            )),
            get(export_events),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/audit/verify",
                "Walk the tenant's hash chain and signed checkpoints; name the first bad seq",
            )
            .tag("audit")
            .permission(Permission::AuditRead, "audit.verify"),
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

/// Splits a raw query string into pairs; malformed ones are a 422.
pub(crate) fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, AuditError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| AuditError::InvalidQuery("malformed query string".into()))
}

pub(crate) fn take_param(pairs: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let index = pairs.iter().position(|(k, _)| k == name)?;
    Some(pairs.remove(index).1)
}

pub(crate) fn refuse_unknown(pairs: &[(String, String)]) -> Result<(), AuditError> {
    match pairs.first() {
        None => Ok(()),
        Some((key, _)) => Err(AuditError::InvalidQuery(format!(
            "unknown parameter {key:?}"
        ))),
    }
}

pub(crate) fn parse_limit(value: Option<String>) -> Result<i64, AuditError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| AuditError::InvalidQuery(format!("limit must be 1-{MAX_LIMIT}"))),
    }
}

async fn list(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut pairs = query_pairs(raw.as_deref())?;
    let mut filter = AuditFilter::take(&mut pairs)?;
    filter.sealed_grants =
        crate::operators::support::hidden_ids(&state.store, permit.scope()).await?;
    let limit = parse_limit(take_param(&mut pairs, "limit"))?;
    let before = take_param(&mut pairs, "cursor")
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| AuditError::InvalidQuery("malformed cursor".into()))
        })
        .transpose()?;
    refuse_unknown(&pairs)?;
    let mut tx = state.store.read(permit.scope()).await?;
    let (mut items, cut) = super::list(
        &mut tx,
        permit.scope().id_str(),
        &filter,
        Page::NewestFirst { before },
        limit + 1,
    )
    .await?;
    let next_cursor = match one_page(&mut items, limit, |e| e.seq.to_string()) {
        // Cut short by bytes: the page ends where the budget did.
        None if cut => items.last().map(|e| e.seq.to_string()),
        next => next,
    };
    for event in &mut items {
        event.limit_to(permit.reach());
    }
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

async fn export_events(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut pairs = query_pairs(raw.as_deref())?;
    let mut filter = AuditFilter::take(&mut pairs)?;
    filter.sealed_grants =
        crate::operators::support::hidden_ids(&state.store, permit.scope()).await?;
    let format = Format::parse(take_param(&mut pairs, "format").as_deref())?;
    refuse_unknown(&pairs)?;
    export::record_export(&state.store, &permit, &meta, "audit.export", format).await?;
    let stream = export::audit_stream(state.store.clone(), permit, filter, format);
    Ok(export_response(format, "audit", Body::from_stream(stream)))
}

pub(crate) fn export_response(format: Format, name: &str, body: Body) -> Response {
    let disposition = format!("attachment; filename=\"{name}.{}\"", format.extension());
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

async fn verify(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    let key = state.keyring.checkpoint_signing_key().verifying_key();
    // With backups on, held against the newest checkpoint kept there too.
    let target = match state.config.backup {
        true => Some(
            crate::backup::BackupTarget::open(&state.config)
                .map_err(|e| ApiError::from(crate::store::StoreError::Native(e)))?,
        ),
        false => None,
    };
    Ok(Json(
        super::verify_with_target(&state.store, permit.scope(), &key, target.as_ref()).await?,
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

pub fn access_log_router() -> Api {
    Api::new()
        .route(
            limit(access_filters(
                Op::new(
                    "GET",
                    "/api/v1/access-log",
                    "Every request to the tenant, newest first: from, to, user, path_prefix, status, \
                     limit, cursor (opaque: the next_cursor of the previous page)",
                )
                .tag("audit")
                .permission(Permission::AuditRead, "access_log.read"),
            )),
            get(list_access),
        )
        .route(
            format(access_filters(
                Op::new(
                    "GET",
                    "/api/v1/access-log/export",
                    "Stream the access log (oldest first) as format=jsonl or csv, with the list filters",
                )
                .tag("audit")
                .permission(Permission::AuditRead, "access_log.export"),
            )),
            get(export_access),
        )
}

async fn list_access(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut pairs = query_pairs(raw.as_deref())?;
    let mut filter = AccessFilter::take(&mut pairs)?;
    filter.sealed_grants =
        crate::operators::support::hidden_ids(&state.store, permit.scope()).await?;
    let limit = parse_limit(take_param(&mut pairs, "limit"))?;
    let after = take_param(&mut pairs, "cursor")
        .map(|c| {
            decode_cursor(&c).ok_or_else(|| AuditError::InvalidQuery("malformed cursor".into()))
        })
        .transpose()?;
    refuse_unknown(&pairs)?;
    let mut tx = state.store.read(permit.scope()).await?;
    let mut items = access_log::list(
        &mut tx,
        permit.scope().id_str(),
        &filter,
        after.as_ref(),
        true,
        limit + 1,
    )
    .await?;
    let next_cursor = one_page(&mut items, limit, |e| encode_cursor(&e.occurred_at, &e.id));
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

async fn export_access(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut pairs = query_pairs(raw.as_deref())?;
    let mut filter = AccessFilter::take(&mut pairs)?;
    filter.sealed_grants =
        crate::operators::support::hidden_ids(&state.store, permit.scope()).await?;
    let format = Format::parse(take_param(&mut pairs, "format").as_deref())?;
    refuse_unknown(&pairs)?;
    export::record_export(&state.store, &permit, &meta, "access_log.export", format).await?;
    let stream = access_log::stream(state.store.clone(), permit.scope().clone(), filter, format);
    Ok(export_response(
        format,
        "access-log",
        Body::from_stream(stream),
    ))
}
