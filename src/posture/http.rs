//! The posture report over HTTP (POS-1): the instance view for the
//! operator (`GET /api/v1/ops/posture`, an operator session (ACC-3)), a
//! tenant's own view for its admins and auditors (`GET
//! /api/v1/tenant/posture`, JSON or `?format=html`, the printable trust
//! page), and the public key that signs them.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Probe, Reach, Reported, Verdict};
use crate::access::Permission;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::Operator;
use crate::http::guard::Granted;
use crate::http::state::AppState;
use crate::operators::OperatorRole;
use crate::store::db;

/// The controls whose live check is made by the HTTP layer's probe of the
/// front door (the posture job's): a tenant's view shows them from the
/// last kept report. Their evidence names no tenant.
const FROM_THE_JOB: &[&str] = &["NET-4", "NET-5"];

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "GET",
                "/api/v1/posture/key",
                "The Ed25519 public key that signs posture reports (`strongroom verify --signed`)",
            )
            .tag("posture"),
            get(key),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/ops/posture",
                "The instance's signed posture report as the posture job last took it (with its \
                 age); `fresh=true` takes one now. An operator session (role operator or security_officer)",
            )
            .tag("posture")
            .operator(&[OperatorRole::Operator, OperatorRole::SecurityOfficer])
            .param("fresh", json!({"enum": ["true", "false"]}), false),
            get(instance),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/tenant/posture",
                "The caller's tenant's signed posture report, taken now: `format=json` (default) \
                 or `format=html`, the printable trust page",
            )
            .tag("posture")
            .permission(Permission::AuditRead, "posture.read")
            .param("format", json!({"enum": ["json", "html"]}), false)
            .produces(&["application/json", "text/html"]),
            get(tenant),
        )
}

/// What the checks look at, from the application's state.
pub fn probe(state: &AppState) -> Probe<'_> {
    Probe {
        store: &state.store,
        vault: &state.vault,
        keyring: &state.keyring,
        files: state.files(),
        config: &state.config,
        by_job: false,
    }
}

async fn key(State(state): State<AppState>) -> impl IntoResponse {
    use base64::Engine;
    let key = state.keyring.posture_signing_key().verifying_key();
    Json(json!({
        "algorithm": "Ed25519",
        "public_key": base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
        "signed_message": "strongroom-posture-report/v1\n<the report object as compact JSON, keys sorted>",
    }))
}

fn query(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {name:?}"
        )));
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn instance(
    State(state): State<AppState>,
    _: Operator,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query(raw.as_deref(), &["fresh"])?;
    let fresh = match param(&pairs, "fresh") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::validation("fresh is true or false")),
    };
    let kept = match super::last(&state.store).await? {
        Some(kept) if !fresh => kept,
        _ => {
            // Taken here without the front door's probe (the job makes it):
            // those two controls are carried over from the last kept report.
            let scopes = crate::tenancy::all_scopes(&state.store).await?;
            let mut report =
                super::take(&probe(&state), &scopes, Reach::Instance, Vec::new()).await?;
            if let Some(last) = super::last(&state.store).await? {
                carry_over(&mut report, &last.document, &last.taken_at);
            }
            let document = super::signed::sign(
                state.keyring.posture_signing_key(),
                state.store.node(),
                json!("instance"),
                &report,
            );
            super::keep(&state.store, &document, super::failing(&report)).await?;
            super::last(&state.store)
                .await?
                .ok_or_else(|| ApiError::internal(&"the report just kept is not there"))?
        }
    };
    let age = crate::clock::parse_rfc3339(&kept.taken_at).map(|at| {
        (time::OffsetDateTime::now_utc() - at)
            .whole_seconds()
            .max(0)
    });
    Ok(Json(json!({
        "taken_at": kept.taken_at,
        "age_seconds": age,
        "node": kept.node,
        "failing": kept.failing,
        "every_seconds": state.config.posture_interval_seconds,
        "signed": kept.document,
    }))
    .into_response())
}

/// Puts the verdicts of `FROM_THE_JOB` controls from a kept report into
/// `report`, saying when they were made.
fn carry_over(report: &mut [Reported], kept: &Value, taken_at: &str) {
    let Some(controls) = kept["report"]["controls"].as_array() else {
        return;
    };
    for entry in report
        .iter_mut()
        .filter(|r| FROM_THE_JOB.contains(&r.id.as_str()) && r.verdict.is_none())
    {
        let Some(found) = controls.iter().find(|c| c["id"] == entry.id.as_str()) else {
            continue;
        };
        let verdict: Option<Verdict> = serde_json::from_value(found["verdict"].clone()).ok();
        if let (Some(verdict), Some(evidence)) = (verdict, found["evidence"].as_str()) {
            entry.verdict = Some(verdict);
            entry.evidence = Some(format!("{evidence} (posture job, {taken_at})"));
        }
    }
}

async fn tenant(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query(raw.as_deref(), &["format"])?;
    let html = match param(&pairs, "format") {
        None | Some("json") => false,
        Some("html") => true,
        Some(_) => return Err(ApiError::validation("format is json or html")),
    };
    let scope = permit.scope().clone();
    let (slug, name): (String, String) = {
        let mut tx = state.store.read(&scope).await?;
        let row = db::query("SELECT slug, name FROM tenants WHERE id = $1")
            .bind(scope.id_str())
            .fetch_one(tx.conn())
            .await
            .map_err(crate::store::StoreError::from)?;
        (
            row.try_get(0).map_err(crate::store::StoreError::from)?,
            row.try_get(1).map_err(crate::store::StoreError::from)?,
        )
    };
    let mut report = super::take(
        &probe(&state),
        std::slice::from_ref(&scope),
        Reach::Tenant,
        Vec::new(),
    )
    .await?;
    if let Some(last) = super::last(&state.store).await? {
        carry_over(&mut report, &last.document, &last.taken_at);
    }
    let document = super::signed::sign(
        state.keyring.posture_signing_key(),
        state.store.node(),
        json!({"tenant": {"id": scope.id_str(), "slug": slug, "name": name}}),
        &report,
    );
    if !html {
        return Ok(Json(document).into_response());
    }
    let page = super::page::render(&document);
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.html,
    )
        .into_response();
    if let Ok(csp) = HeaderValue::from_str(&page.csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    Ok(response)
}
