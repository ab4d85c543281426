//! The posture report's public key (POS-1), for checking saved reports.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::http::api::{Api, Op};
use crate::http::state::AppState;

pub fn router() -> Api {
    Api::new().route(
        Op::new(
            "GET",
            "/api/v1/posture/key",
            "The Ed25519 public key that signs posture reports (`strongroom verify --signed`)",
        )
        .tag("posture"),
        get(key),
    )
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
