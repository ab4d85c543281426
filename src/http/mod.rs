//! HTTP wiring only: state, middleware, the merged routers of the domains,
//! and the server loop with graceful shutdown. Handlers live with their
//! domains.

pub mod api;
pub mod bans;
mod client_ip;
pub mod error;
pub mod extract;
pub mod guard;
pub mod limits;
pub mod listen;
pub mod probe;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

pub use api::{Api, Op};
pub use client_ip::TrustedProxies;
pub use error::ApiError;
pub use extract::{ApiJson, ApiPath, Who};
pub use state::AppState;
pub(crate) use state::REQUEST_ID;

use crate::audit::access_log::{AccessEntry, activity};
use crate::context::RequestMeta;

/// Largest JSON body accepted (NET-5 first cut).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest path kept in the access log.
const MAX_LOGGED_PATH: usize = 2048;
/// Longest user agent kept; longer ones are cut (they are free text).
const MAX_USER_AGENT: usize = 512;

/// The whole application router.
pub fn app(state: AppState) -> Router {
    let api = Api::new()
        .merge(system_routes())
        .merge(crate::identity::router())
        .merge(crate::identity::sessions_router())
        .merge(crate::identity::mfa::http::router())
        .merge(crate::access::http::router())
        .merge(crate::operators::http::router())
        .merge(bans::router())
        .merge(crate::identity::api_keys::http::router())
        .merge(crate::records::router())
        .merge(crate::files::http::router())
        .merge(crate::keys::http::router())
        .merge(crate::audit::router())
        .merge(crate::audit::access_log_router())
        .merge(crate::tenancy::router())
        .merge(crate::posture::http::router())
        .merge(crate::backup::http::router())
        .merge(crate::mail::http::router());
    let (router, doc) = api.into_parts(&state);
    let doc = Arc::new(doc.to_string());
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not support that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

fn system_routes() -> Api {
    Api::new()
        .route(
            Op::new("GET", "/healthz", "Liveness and the running version"),
            get(healthz),
        )
        .route(
            Op::new(
                "GET",
                "/readyz",
                "Readiness: the database answers and no job is overdue; with backups on, how far shipping is behind (`backup_lag_seconds`)",
            )
            .errors(&[503]),
            get(readyz),
        )
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": crate::VERSION,
        "environment": state.config.environment.as_str(),
    }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => match state.schedule.overdue(&state.store).await {
            Ok(overdue) if overdue.is_empty() => {
                let mut body = json!({"status": "ready", "database": state.store.backend().name()});
                match &state.standby {
                    // BAK-5: how far this standby is behind the target.
                    Some(standby) if standby.following() => {
                        body["standby_of"] = json!(standby.target);
                        body["follow_lag_seconds"] =
                            json!(crate::metrics::get().backup_follow_lag_seconds.get());
                    }
                    // BAK-1: how far shipping is behind the journal.
                    _ if state.config.backup => {
                        body["backup_lag_seconds"] =
                            json!(crate::metrics::get().backup_lag_seconds.get());
                    }
                    _ => {}
                }
                Json(body).into_response()
            }
            Ok(overdue) => {
                tracing::warn!(jobs = ?overdue, "scheduled jobs overdue");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jobs-overdue",
                    format!(
                        "scheduled jobs have not run for twice their interval: {}",
                        overdue.join(", ")
                    ),
                )
                .into_response()
            }
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "the database does not answer",
            )
            .into_response()
        }
    }
}

/// Gives every request an id (echoed as `X-Request-Id`, carried into audit
/// events and problem bodies), establishes the client address, sets strict
/// security headers — an API response is never cached, sniffed, framed or
/// allowed to run scripts — and records the request in the access log.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let occurred_at = crate::clock::now();
    let id = uuid::Uuid::now_v7().to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let tls = req
        .extensions()
        .get::<listen::Transport>()
        .is_some_and(|t| t.tls);
    let https = state.proxies.is_https(tls, peer, req.headers());
    let meta = RequestMeta {
        request_id: id.clone(),
        ip: state
            .proxies
            .client_ip(peer, req.headers())
            .map(|ip| ip.to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect()),
    };
    let who = Who::default();
    // Handlers take it with the RequestMeta extractor; the access log below.
    req.extensions_mut().insert(meta.clone());
    req.extensions_mut().insert(who.clone());
    let method = req.method().as_str().to_owned();
    let path: String = req.uri().path().chars().take(MAX_LOGGED_PATH).collect();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    // A banned address is refused before anything else (NET-3).
    let client: Option<std::net::IpAddr> = meta.ip.as_deref().and_then(|ip| ip.parse().ok());
    let banned = client.and_then(|ip| state.bans.refused(ip));
    // No text the API takes holds NUL; one in the path or query is refused
    // here, before any handler binds it to a query.
    let nul = req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().contains("%00"));
    // A standby takes no write (BAK-5); it names the primary.
    let standby = state
        .standby
        .as_ref()
        .filter(|s| s.following() && !req.method().is_safe())
        .map(|s| s.refusal());
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(
                async move {
                    match banned {
                        Some(left) => ApiError::new(
                            StatusCode::FORBIDDEN,
                            "banned",
                            format!(
                                "this address sent too many failed or unknown requests and is \
                                 refused for {left} s more"
                            ),
                        )
                        .with_retry_after(left)
                        .into_response(),
                        None if nul => {
                            ApiError::bad_request("the path and query may not contain NUL (%00)")
                                .into_response()
                        }
                        None if standby.is_some() => ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "standby",
                            standby.unwrap_or_default(),
                        )
                        .with_retry_after(5)
                        .into_response(),
                        None => next.run(req).await,
                    }
                },
                span,
            ),
        )
        .await;
    let status = response.status().as_u16();
    crate::metrics::get().request(&method, route.as_deref(), status, started.elapsed());
    if let Some(ip) = client
        && bans::is_strike(status)
    {
        let (bans, store) = (state.bans.clone(), state.store.clone());
        let tenant = who.get().map(|w| w.tenant_id);
        tokio::spawn(async move {
            if let Err(e) = bans.strike(&store, ip, status, tenant).await {
                tracing::warn!(error = %e, "could not count a strike");
            }
        });
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static("x-request-id"), value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Which instance answered (TEN-3): a test system never passes for
    // production.
    headers.insert(
        HeaderName::from_static("strongroom-environment"),
        HeaderValue::from_static(state.config.environment.as_str()),
    );
    if https {
        // Two years, subdomains too (NET-1): browsers never try plain HTTP.
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A handler may set a stricter policy (file downloads add `sandbox`).
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    if state.config.access_log {
        let known = who.get();
        state.access_log.record(AccessEntry {
            id: uuid::Uuid::now_v7().to_string(),
            occurred_at,
            tenant_id: known.as_ref().map(|w| w.tenant_id.clone()),
            actor_type: known.as_ref().map_or("anonymous", |w| w.kind).to_owned(),
            actor_id: known.as_ref().map(|w| w.user_id.clone()),
            actor_email: known.as_ref().and_then(|w| w.email.clone()),
            activity: activity(&method, route.as_deref()).to_owned(),
            method,
            route,
            path,
            status: i64::from(status),
            latency_us: started.elapsed().as_micros().min(i64::MAX as u128) as i64,
            ip: meta.ip,
            user_agent: meta.user_agent,
            request_id: id,
            app_version: crate::VERSION.to_owned(),
        });
    }
    response
}

/// Serves until `shutdown` resolves, then drains in-flight requests
/// (TLS, timeouts and connection limits: [`listen`]).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = state.store.clone();
    let access_log = state.access_log.clone();
    let config = state.config.clone();
    if let Some(address) = config.metrics_listen {
        let metrics = TcpListener::bind(address).await?;
        tracing::info!(address = %metrics.local_addr()?, "serving metrics");
        tokio::spawn(serve_metrics(metrics, state.clone()));
    }
    listen::serve(listener, app(state), &config, shutdown).await?;
    access_log.flush().await;
    store.close().await;
    Ok(())
}

/// `GET /metrics` and nothing else, on its own listener (OPS-1): what
/// only the scrape can know is read now, then everything is encoded.
async fn serve_metrics(listener: TcpListener, state: AppState) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("only /metrics is served here") })
        .with_state(state);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = crate::metrics::get();
    metrics.set_queue_depth("writer", state.store.writer_queued());
    metrics.set_queue_depth("access_log", state.access_log.queued());
    if let Some((in_use, idle, max)) = state.store.pool_use() {
        metrics.set_db_connections("in_use", in_use);
        metrics.set_db_connections("idle", idle);
        metrics.set_db_connections("max", max);
    }
    match crate::ops::last_runs(&state.store).await {
        Ok(runs) => {
            for run in runs.iter().filter(|run| run.ok) {
                if let Some(at) = crate::clock::parse_rfc3339(&run.last_run_at) {
                    metrics.set_job_last_success(&run.job, at.unix_timestamp());
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not read the job heartbeats"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}
