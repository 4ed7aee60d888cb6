//! Liveness and readiness probes.

use std::time::Duration;

use ::http::StatusCode;
use axum::extract::State;
use axum::response::IntoResponse;

use super::HttpState;

/// 200 while the process runs.
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// 200 when the database answers within a second, 503 otherwise, so a load
/// balancer stops routing to an instance that cannot serve.
pub async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(1), state.app.db.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        Ok(Err(error)) => {
            tracing::warn!(?error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
        Err(_) => {
            tracing::warn!("readiness check timed out");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}
