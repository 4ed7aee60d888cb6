//! `/graphql`: GraphQL over HTTP (POST and GET), GraphiQL for browsers, and
//! the WebSocket upgrade for subscriptions.
//!
//! async-graphql-axum's stock handler answers 200 with `application/json`
//! whatever the client accepts, runs mutations over GET and executes any
//! content type; this handler follows the GraphQL-over-HTTP spec instead.

use std::collections::BTreeMap;

use ::http::{HeaderMap, HeaderValue, StatusCode, header};
use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{BatchRequest, Request, Response, ServerError, Value};
use axum::body::{Body, Bytes};
use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Serialize;

use super::HttpState;
use super::graphiql;
use crate::auth::guard;
use crate::auth::rate_limit::ClientAddr;
use crate::db::users::User;
use crate::error::AppError;

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
const APPLICATION_JSON: &str = "application/json";

/// The media type of the answer, from the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// `application/graphql-response+json`: status codes carry meaning.
    GraphqlResponse,
    /// `application/json`: 200 for every well-formed request (legacy clients).
    Json,
}

impl Media {
    /// The supported type the client ranks highest (`q`), the modern one on
    /// a tie; `application/json` when `Accept` is absent or names neither.
    fn negotiate(headers: &HeaderMap) -> Self {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let (mut modern, mut legacy) = (0.0_f32, 0.0_f32);
        for entry in accept.split(',') {
            let mut params = entry.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let quality = params
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
            match media.as_str() {
                GRAPHQL_RESPONSE_JSON => modern = modern.max(quality),
                APPLICATION_JSON | "application/*" | "*/*" => legacy = legacy.max(quality),
                _ => {}
            }
        }
        if modern > 0.0 && modern >= legacy { Self::GraphqlResponse } else { Self::Json }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Self::GraphqlResponse => {
                HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
            }
            Self::Json => HeaderValue::from_static("application/json; charset=utf-8"),
        }
    }
}

/// One GraphQL response as it goes on the wire: `data` is left out for
/// request errors (nothing was executed), as the spec requires.
#[derive(Serialize)]
struct WireResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "<[ServerError]>::is_empty")]
    errors: &'a [ServerError],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extensions: &'a BTreeMap<String, Value>,
}

/// Parse and validation failures (and errors raised before execution) have
/// no data and no path.
fn is_request_error(response: &Response) -> bool {
    !response.errors.is_empty()
        && matches!(response.data, Value::Null)
        && response.errors.iter().all(|e| e.path.is_empty())
}

fn wire(response: &Response) -> WireResponse<'_> {
    WireResponse {
        data: if is_request_error(response) { None } else { Some(&response.data) },
        errors: &response.errors,
        extensions: &response.extensions,
    }
}

fn json_response(status: StatusCode, media: Media, body: &impl Serialize) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = HttpResponse::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(header::CONTENT_TYPE, media.content_type());
            response
        }
        Err(error) => {
            tracing::error!(%error, "cannot serialise a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// An error raised before anything ran, with its code.
fn request_error(code: &str, message: impl Into<String>) -> Response {
    let mut error = ServerError::new(message, None);
    error.extensions.get_or_insert_with(Default::default).set("code", code);
    Response::from_errors(vec![error])
}

fn app_error_response(error: AppError) -> Response {
    let error: async_graphql::Error = error.into();
    let mut server_error = ServerError::new(error.message, None);
    server_error.extensions = error.extensions;
    Response::from_errors(vec![server_error])
}

/// Sends a transport-level failure: `status` under both media types (the
/// request was not a well-formed GraphQL request).
fn reject(status: StatusCode, media: Media, code: &str, message: impl Into<String>) -> HttpResponse {
    json_response(status, media, &wire(&request_error(code, message)))
}

fn single_response(media: Media, response: &Response) -> HttpResponse {
    let status = match media {
        Media::GraphqlResponse if is_request_error(response) => request_error_status(response),
        _ => StatusCode::OK,
    };
    let mut http = json_response(status, media, &wire(response));
    if status == StatusCode::UNAUTHORIZED {
        http.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
    }
    http
}

fn request_error_status(response: &Response) -> StatusCode {
    let code =
        response.errors.first().and_then(|e| e.extensions.as_ref()).and_then(|e| e.get("code").cloned());
    match code {
        Some(Value::String(code)) if code == "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        Some(Value::String(code)) if code == "SERVICE_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        Some(Value::String(code)) if code == "TIMEOUT" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The user behind the `Authorization` header. A header that is present but
/// invalid fails the whole request, even for `signup`/`login`: a client with
/// a stale token learns it at once.
async fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<Option<User>, AppError> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| AppError::Unauthenticated("Authorization header is not valid text"))?,
        ),
    };
    match guard::bearer_token(value)? {
        None => Ok(None),
        Some(token) => guard::authenticate(&state.app.db, &state.app.auth.tokens, token).await.map(Some),
    }
}

/// Who is asking: the signed-in user, if any, the client address, and the
/// request id (for logs and internal errors).
struct Caller {
    user: Option<User>,
    address: Option<ClientAddr>,
    request_id: Option<String>,
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The client address. With no trusted proxy, the TCP peer. Behind
/// `trusted_proxies` proxies, each appending the address it saw to
/// `X-Forwarded-For`, the entry that many hops from the right: entries
/// further left were written by the client and prove nothing. A shorter
/// chain than configured gives its left-most entry (every entry came from a
/// trusted hop); an unreadable entry falls back to the peer.
pub(super) fn client_addr(
    state: &HttpState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<ClientAddr> {
    forwarded_client(state.app.config.trusted_proxies, headers, peer.map(|peer| peer.ip()))
        .map(ClientAddr::new)
}

fn forwarded_client(trusted_proxies: usize, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer;
    }
    // Several X-Forwarded-For headers are one list, in order.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let Some(entry) = entries.len().checked_sub(trusted_proxies).map_or(entries.first(), |i| entries.get(i))
    else {
        return peer;
    };
    parse_forwarded_ip(entry).or(peer)
}

/// `192.0.2.1`, `2001:db8::1`, and the forms with a port some proxies write
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

async fn execute(state: &HttpState, request: Request, caller: &Caller) -> Response {
    let mut request = request;
    if let Some(user) = &caller.user {
        request = request.data(user.clone());
    }
    if let Some(address) = caller.address {
        request = request.data(address);
    }
    let mut operation = request.operation_name.clone();
    let started = std::time::Instant::now();
    let timeout = state.app.config.limits.request_timeout;
    let client = caller.address.map(ClientAddr::ip);
    let executed = crate::db::fair::on_behalf_of(client, state.schema.execute(request));
    let mut response = match tokio::time::timeout(timeout, executed).await {
        Ok(response) => response,
        Err(_) => request_error("TIMEOUT", format!("The request took longer than {} s", timeout.as_secs())),
    };
    let elapsed = started.elapsed();
    if let Some(name) = response.http_headers.remove(crate::graphql::limits::OPERATION_NAME_HEADER) {
        operation = operation.or_else(|| name.to_str().ok().map(str::to_owned));
    }
    let code_of = |error: &ServerError| match error.extensions.as_ref().and_then(|e| e.get("code")) {
        Some(Value::String(code)) => code.clone(),
        _ => "INTERNAL_SERVER_ERROR".to_owned(),
    };
    let outcome = response.errors.first().map_or_else(|| "ok".to_owned(), code_of);
    let refused = response.errors.iter().filter(|e| code_of(e) == "RATE_LIMITED").count();
    let metrics = &state.app.metrics;
    metrics.logins_refused.fetch_add(refused as u64, std::sync::atomic::Ordering::Relaxed);
    metrics.record(operation.as_deref(), &outcome, elapsed);
    // An internal error's detail is only in the log: the request id lets a
    // user's report be matched with it.
    if let Some(id) = &caller.request_id {
        for error in &mut response.errors {
            if code_of(error) == "INTERNAL_SERVER_ERROR" {
                error.extensions.get_or_insert_with(Default::default).set("requestId", id.as_str());
            }
        }
    }
    let user_id = caller.user.as_ref().map(|u| u.id.0.to_string());
    let slow = elapsed >= state.app.config.slow_request_threshold;
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                request_id = caller.request_id.as_deref().unwrap_or("-"),
                operation = operation.as_deref().unwrap_or("-"),
                user_id = user_id.as_deref().unwrap_or("-"),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                outcome = outcome.as_str(),
                "graphql operation{}",
                if slow { " (slow)" } else { "" }
            )
        };
    }
    if slow || outcome == "INTERNAL_SERVER_ERROR" {
        log!(warn)
    } else {
        log!(info)
    }
    response
}

/// `application/json` (or the GraphQL response type), in UTF-8: the only
/// charset JSON may use.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mut parts = value.split(';').map(str::trim);
    let media = parts.next().unwrap_or("");
    let json =
        media.eq_ignore_ascii_case(APPLICATION_JSON) || media.eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON);
    let utf8 = parts.all(|param| match param.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
            charset.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    json && utf8
}

/// JSON values a body may hold: a full batch whose every request is at the
/// variables limit fits. Counted before parsing, because parsing 1 MiB of
/// `[0,0,0,…]` builds half a million values, tens of megabytes in memory.
const MAX_BODY_JSON_VALUES: usize = 10 * (crate::graphql::limits::MAX_VARIABLE_VALUES + 16);

/// An upper bound on the values in a JSON text: every value but the first
/// follows a `[`, `{`, `,` or `:` outside a string.
fn json_values(body: &[u8]) -> usize {
    let (mut values, mut in_string, mut escaped) = (1, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' | b',' | b':' => values += 1,
                _ => {}
            }
        }
    }
    values
}

/// A body is a request (or a batch of them) only if each one has a `query`:
/// async-graphql would take a missing one for an empty document.
fn parse_body(body: &[u8]) -> Result<BatchRequest, String> {
    if json_values(body) > MAX_BODY_JSON_VALUES {
        return Err(format!("The body holds more than {MAX_BODY_JSON_VALUES} JSON values"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("The body is not JSON: {e}"))?;
    let has_query = |v: &serde_json::Value| v.get("query").is_some_and(serde_json::Value::is_string);
    let well_formed = match &value {
        serde_json::Value::Array(items) => items.iter().all(has_query),
        single => has_query(single),
    };
    if !well_formed {
        return Err("Every request needs a \"query\" string".into());
    }
    serde_json::from_value(value).map_err(|e| format!("The body is not a GraphQL request: {e}"))
}

/// `POST /graphql` with a JSON body: one request or a batch (an array).
pub async fn post(
    State(state): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let media = Media::negotiate(&headers);
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = state.app.config.limits.max_body_bytes;
            let message = format!("The request body is larger than {limit} bytes");
            return reject(StatusCode::PAYLOAD_TOO_LARGE, media, "PAYLOAD_TOO_LARGE", message);
        }
        Err(rejection) => return reject(rejection.status(), media, "BAD_REQUEST", rejection.body_text()),
    };
    // Only JSON is executed: a form or text/plain POST is what a cross-site
    // page can send without a CORS preflight.
    if !is_json_content_type(&headers) {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            media,
            "BAD_REQUEST",
            "Send the request as application/json",
        );
    }
    let batch = match parse_body(&body) {
        Ok(batch) => batch,
        Err(message) => return reject(StatusCode::BAD_REQUEST, media, "BAD_REQUEST", message),
    };
    let user = match authenticate(&state, &headers).await {
        Ok(user) => user,
        Err(error) => {
            let response = app_error_response(error);
            return match batch {
                BatchRequest::Single(_) => single_response(media, &response),
                BatchRequest::Batch(requests) => {
                    let responses: Vec<WireResponse<'_>> = requests.iter().map(|_| wire(&response)).collect();
                    json_response(StatusCode::OK, media, &responses)
                }
            };
        }
    };
    let caller = Caller {
        user,
        address: client_addr(&state, &headers, peer.map(|Extension(ConnectInfo(a))| a)),
        request_id: request_id(&headers),
    };
    match batch {
        BatchRequest::Single(request) => single_response(media, &execute(&state, request, &caller).await),
        BatchRequest::Batch(requests) => {
            let limit = state.app.config.limits.max_batch_size;
            if requests.is_empty() || requests.len() > limit {
                return reject(
                    StatusCode::BAD_REQUEST,
                    media,
                    "BAD_REQUEST",
                    format!("A batch must hold 1 to {limit} operations (got {})", requests.len()),
                );
            }
            let responses = futures_util::future::join_all(
                requests.into_iter().map(|request| execute(&state, request, &caller)),
            )
            .await;
            let wire: Vec<WireResponse<'_>> = responses.iter().map(wire).collect();
            json_response(StatusCode::OK, media, &wire)
        }
    }
}

/// `GET /graphql`: WebSocket upgrade, GraphiQL for browsers, or a query in
/// the URL. Mutations are refused over GET (405): GET must be safe.
pub async fn get(
    State(state): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: axum::extract::Request,
) -> HttpResponse {
    let (mut parts, _body) = request.into_parts();
    if parts.headers.contains_key(header::UPGRADE) {
        let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
        return super::websocket::upgrade(state, &mut parts, peer).await;
    }
    let media = Media::negotiate(&parts.headers);
    let query_string = parts.uri.query().unwrap_or("");
    let wants_html = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html && !query_string.split('&').any(|pair| pair.starts_with("query=")) {
        return graphiql::page();
    }
    let request = match async_graphql::http::parse_query_string(query_string) {
        Ok(request) => request,
        Err(error) => {
            return reject(
                StatusCode::BAD_REQUEST,
                media,
                "BAD_REQUEST",
                format!("Invalid GraphQL request in the URL: {error}"),
            );
        }
    };
    if request.query.is_empty() {
        return reject(StatusCode::BAD_REQUEST, media, "BAD_REQUEST", "Missing query parameter");
    }
    if operation_type(&request, &state.app.config.limits) == Some(OperationType::Mutation) {
        let mut response =
            reject(StatusCode::METHOD_NOT_ALLOWED, media, "BAD_REQUEST", "Mutations must be sent with POST");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let user = match authenticate(&state, &parts.headers).await {
        Ok(user) => user,
        Err(error) => return single_response(media, &app_error_response(error)),
    };
    let caller = Caller {
        user,
        address: client_addr(&state, &parts.headers, peer.map(|Extension(ConnectInfo(a))| a)),
        request_id: request_id(&parts.headers),
    };
    single_response(media, &execute(&state, request, &caller).await)
}

/// The type of the operation a request would run; `None` when the document
/// does not parse, is over the token or nesting limits, or names no
/// operation (execution reports each of those).
fn operation_type(request: &Request, limits: &crate::config::Limits) -> Option<OperationType> {
    // The URL is not bounded by the body limit: scan before parsing, as
    // execution does, so a deep or long document costs a scan here too.
    if !crate::graphql::limits::within_scan_limits(&request.query, limits.max_tokens) {
        return None;
    }
    let document = async_graphql::parser::parse_query(&request.query).ok()?;
    match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(operation), _) => Some(operation.node.ty),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name).map(|op| op.node.ty),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|op| op.node.ty)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("valid"));
        headers
    }

    #[test]
    fn negotiates_the_response_media_type() {
        assert_eq!(Media::negotiate(&HeaderMap::new()), Media::Json);
        assert_eq!(Media::negotiate(&headers("application/json")), Media::Json);
        assert_eq!(Media::negotiate(&headers("application/graphql-response+json")), Media::GraphqlResponse);
        assert_eq!(
            Media::negotiate(&headers("application/graphql-response+json, application/json;q=0.9")),
            Media::GraphqlResponse
        );
        assert_eq!(
            Media::negotiate(&headers("application/graphql-response+json;q=0, application/json")),
            Media::Json
        );
    }

    #[test]
    fn the_client_is_as_many_hops_from_the_right_as_there_are_proxies() {
        let peer: Option<IpAddr> = Some("10.0.0.1".parse().expect("ip"));
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 198.51.100.7"));
        headers.append("x-forwarded-for", HeaderValue::from_static("[2001:db8::5]:4711"));
        let client = |proxies| forwarded_client(proxies, &headers, peer).map(|ip| ip.to_string());
        assert_eq!(client(0).as_deref(), Some("10.0.0.1"), "no proxy: the peer");
        assert_eq!(client(1).as_deref(), Some("2001:db8::5"), "the right-most entry");
        assert_eq!(client(2).as_deref(), Some("198.51.100.7"));
        assert_eq!(client(3).as_deref(), Some("6.6.6.6"));
        assert_eq!(client(9).as_deref(), Some("6.6.6.6"), "a shorter chain: its left-most entry");
        let mut garbage = HeaderMap::new();
        garbage.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, not-an-ip"));
        assert_eq!(forwarded_client(1, &garbage, peer).map(|ip| ip.to_string()).as_deref(), Some("10.0.0.1"));
        assert_eq!(forwarded_client(1, &HeaderMap::new(), peer), peer, "no header: the peer");
    }

    #[test]
    fn bounds_the_values_of_a_json_body() {
        assert_eq!(json_values(br#"{"query":"{ a }"}"#), 3);
        assert_eq!(json_values(br#"{"query":"[,{:","variables":{"a":[1,2,3]}}"#), 10);
        assert_eq!(json_values(br#"["a\"[,"]"#), 2, "escaped quotes stay in the string");
        let huge =
            format!(r#"{{"query":"{{ me {{ id }} }}","variables":{{"a":[{}0]}}}}"#, "0,".repeat(200_000));
        assert!(parse_body(huge.as_bytes()).is_err_and(|e| e.contains("JSON values")));
    }

    #[test]
    fn finds_the_operation_type() {
        let op = |query: &str, name: Option<&str>| {
            let mut request = Request::new(query);
            if let Some(name) = name {
                request = request.operation_name(name);
            }
            operation_type(
                &request,
                &crate::config::Config::for_database("sqlite://t.db").expect("config").limits,
            )
        };
        assert_eq!(op("{ me { id } }", None), Some(OperationType::Query));
        assert_eq!(op("mutation { logoutEverywhere }", None), Some(OperationType::Mutation));
        assert_eq!(
            op("query A { me { id } } mutation B { logoutEverywhere }", Some("B")),
            Some(OperationType::Mutation)
        );
        assert_eq!(op("query A { me { id } } mutation B { logoutEverywhere }", None), None);
        assert_eq!(op("not graphql", None), None);
    }
}
