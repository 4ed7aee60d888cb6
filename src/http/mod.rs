//! The HTTP surface: routes, CORS, tracing and body limits.

pub mod graphiql;
pub mod graphql;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderName, HeaderValue, Method, header};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::App;
use crate::config::CorsOrigins;
use crate::graphql::TodoqlSchema;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub app: Arc<App>,
    pub schema: TodoqlSchema,
}

pub fn router(state: HttpState) -> Router {
    let limits = &state.app.config.limits;
    let cors = cors_layer(&state.app.config.cors_origins);
    Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(graphiql::assets())
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(cors)
        .layer(TraceLayer::new_for_http().make_span_with(|request: &::http::Request<_>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        // Outermost: every request has an id (the client's, or a fresh UUID)
        // before anything logs, and the response echoes it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
        }
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("apollographql-client-name"),
            HeaderName::from_static("apollographql-client-version"),
        ])
        .max_age(Duration::from_secs(600))
}
