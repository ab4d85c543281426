//! The front door probed from inside (POS-1's checks of NET-4 and NET-5):
//! requests sent through the whole application router — the same
//! middleware every client meets — and their answers read back, so the
//! report says what the server does, not what it is configured to do.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use crate::config::Config;
use crate::posture::{Finding, Reach, Reported, Verdict};
use crate::store::StoreError;

use super::AppState;

/// The whole instance's report, now: every check, and the front door
/// probed through the application router.
pub async fn instance_report(state: &AppState) -> Result<Vec<Reported>, StoreError> {
    report_by(state, false).await
}

/// [`instance_report`], saying whether the posture job takes it.
async fn report_by(state: &AppState, by_job: bool) -> Result<Vec<Reported>, StoreError> {
    let app = super::app(state.clone());
    let extra = front_door(&app, &state.config).await;
    let scopes = crate::tenancy::all_scopes(&state.store).await?;
    let probe = crate::posture::Probe {
        by_job,
        ..crate::posture::http::probe(state)
    };
    crate::posture::take(&probe, &scopes, Reach::Instance, extra).await
}

/// One run of the posture job: the instance report taken, signed and kept
/// (`GET /api/v1/ops/posture` serves it); a failing control is a security
/// event.
pub async fn posture_job(state: &AppState) -> Result<String, String> {
    let report = report_by(state, true).await.map_err(|e| e.to_string())?;
    let document = crate::posture::signed::sign(
        state.keyring.posture_signing_key(),
        state.store.node(),
        serde_json::json!("instance"),
        &report,
    );
    let failing = crate::posture::failing(&report);
    crate::posture::keep(&state.store, &document, failing)
        .await
        .map_err(|e| e.to_string())?;
    let count = |v: Verdict| report.iter().filter(|r| r.verdict == Some(v)).count();
    for control in report.iter().filter(|r| r.verdict == Some(Verdict::Fail)) {
        tracing::warn!(target: "security", control = %control.id,
            evidence = control.evidence.as_deref().unwrap_or(""), "a control fails its live check");
    }
    Ok(format!(
        "{} pass, {} warn, {failing} fail, {} without a live check",
        count(Verdict::Pass),
        count(Verdict::Warn),
        report.iter().filter(|r| r.verdict.is_none()).count()
    ))
}

const PROBE_AGENT: &str = "strongroom-posture-probe";

/// What every response must carry (NET-4), by header and expected value.
const HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

async fn send(app: &Router, request: Request<Body>) -> Option<axum::response::Response> {
    let mut request = request;
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
    app.clone().oneshot(request).await.ok()
}

/// What is wrong with a response's security headers.
fn header_problems(what: &str, response: &axum::response::Response) -> Vec<String> {
    let headers = response.headers();
    let mut problems: Vec<String> = HEADERS
        .iter()
        .filter(|(name, value)| headers.get(*name).is_none_or(|v| v != *value))
        .map(|(name, value)| format!("{what}: {name} is not {value}"))
        .collect();
    let csp = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !csp.contains("default-src 'none'") || !csp.contains("frame-ancestors 'none'") {
        problems.push(format!("{what}: Content-Security-Policy is {csp:?}"));
    }
    problems
}

/// NET-4 and NET-5, probed now through `app`.
pub async fn front_door(app: &Router, config: &Config) -> Vec<Finding> {
    let healthz = Request::get("/healthz")
        .header(header::USER_AGENT, PROBE_AGENT)
        .body(Body::empty())
        .ok();
    let oversized = Request::post("/api/v1/auth/login")
        .header(header::USER_AGENT, PROBE_AGENT)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; super::MAX_BODY_BYTES + 1]))
        .ok();
    let (Some(healthz), Some(oversized)) = (healthz, oversized) else {
        return Vec::new();
    };
    let mut headers = Vec::new();
    let mut limits = Vec::new();
    match send(app, healthz).await {
        Some(r) => headers.extend(header_problems("GET /healthz", &r)),
        None => headers.push("GET /healthz got no answer".into()),
    }
    match send(app, oversized).await {
        Some(r) => {
            headers.extend(header_problems("an oversized body's 413", &r));
            if r.status() != StatusCode::PAYLOAD_TOO_LARGE {
                limits.push(format!(
                    "a JSON body over {} bytes got {}, not 413",
                    super::MAX_BODY_BYTES,
                    r.status()
                ));
            }
        }
        None => limits.push("an oversized body got no answer".into()),
    }
    let net4 = if headers.is_empty() {
        Finding {
            control: "NET-4",
            verdict: Verdict::Pass,
            evidence: "probed now: a success and an error both carry nosniff, no-store, \
                       X-Frame-Options DENY, no-referrer and Content-Security-Policy \
                       default-src 'none'; frame-ancestors 'none'; an unsafe request on a \
                       browser session cookie needs its X-CSRF-Token"
                .to_owned(),
        }
    } else {
        Finding {
            control: "NET-4",
            verdict: Verdict::Fail,
            evidence: headers.join("; "),
        }
    };
    let net5 = if limits.is_empty() {
        Finding {
            control: "NET-5",
            verdict: Verdict::Pass,
            evidence: format!(
                "probed now: a JSON body over {} KiB is 413 before it is read; headers within \
                 {} s, bodies idle ≤ {} s, requests ≤ {} s, keep-alive {} s; {} connections, \
                 {} per address",
                super::MAX_BODY_BYTES / 1024,
                config.header_read_timeout_seconds,
                config.body_idle_timeout_seconds,
                config.request_timeout_seconds,
                config.keep_alive_seconds,
                config.max_connections,
                config.max_connections_per_ip
            ),
        }
    } else {
        Finding {
            control: "NET-5",
            verdict: Verdict::Fail,
            evidence: limits.join("; "),
        }
    };
    vec![net4, net5]
}
