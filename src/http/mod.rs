//! The HTTP surface: routes, CORS, tracing and body limits.

pub mod graphiql;
pub mod graphql;
pub mod health;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderName, HeaderValue, Method, header};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
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
        .merge(graphiql::assets())
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(cors)
        .layer(TraceLayer::new_for_http())
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
