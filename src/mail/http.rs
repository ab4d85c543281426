//! The outbox for the operator: `GET /api/v1/ops/mail` (bearer
//! `operator_token`) shows what waits, what was sent and what failed,
//! with reasons and never an addressee.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::Operator;
use crate::http::state::AppState;
use crate::operators::OperatorRole;

pub fn router() -> Api {
    Api::new().route(
        Op::new(
            "GET",
            "/api/v1/ops/mail",
            "The mail outbox of every tenant: counts by state, the oldest waiting mail's age, \
             and the latest problems (no addressees). An operator session (role operator)",
        )
        .tag("ops")
        .operator(&[OperatorRole::Operator]),
        get(outbox),
    )
}

async fn outbox(State(state): State<AppState>, _: Operator) -> Result<impl IntoResponse, ApiError> {
    let scopes = state.store.tenant_scopes().await?;
    Ok(Json(
        super::status(state.mailer.is_configured(), &state.store, &scopes).await?,
    ))
}
