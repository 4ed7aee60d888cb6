//! Subscriptions over WebSocket: `graphql-transport-ws` (the `graphql-ws`
//! library, GraphiQL) and the legacy `subscriptions-transport-ws`.
//!
//! async-graphql speaks the protocol; this loop around it adds what a
//! production server needs: the protocol's close codes (4403 for a refused
//! token, 4408 for a missing `connection_init`), a clean 1001 close on
//! shutdown, and the end of peers that are gone: WebSocket Ping frames on
//! both protocols with a silence timeout (3008), and a timeout on every send,
//! so a peer that stops reading cannot hold a task, its subscriptions and
//! their slots forever.
//!
//! Every operation on a socket is authenticated when it starts, not only the
//! socket at `connection_init`: [`SocketExecutor`] checks the connection's
//! token (through the account cache) before the operation is even parsed.
//! A token that expired or was revoked since the socket opened closes the
//! socket with 4403 and the operation never runs. Closing, rather than
//! answering that one operation with UNAUTHENTICATED, is what `graphql-ws`
//! clients handle best: they reconnect (calling `connectionParams` again,
//! where an app puts its fresh token) and re-send the operations that were
//! in flight, whereas an error would reach the app as a failed query.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, ClientMessage, WebSocketProtocols, WsMessage};
use async_graphql::{Data, Executor, Request, ServerError};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{BoxStream, SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _, future};
use std::str::FromStr as _;
use tokio::sync::Notify;

use super::HttpState;
use crate::app::App;
use crate::auth::guard::{self, TokenSession};
use crate::auth::rate_limit::ClientAddr;
use crate::error::AppError;
use crate::events::SocketSlot;
use crate::graphql::TodoqlSchema;

/// The protocol's deadline for `connection_init`.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

const CLOSE_FORBIDDEN: u16 = 4403;
const CLOSE_INIT_TIMEOUT: u16 = 4408;
const CLOSE_GOING_AWAY: u16 = 1001;
/// What async-graphql closed a silent `graphql-transport-ws` peer with
/// before this loop took that over: clients keep seeing the same code.
const CLOSE_IDLE: u16 = 3008;

pub async fn upgrade(
    state: HttpState,
    parts: &mut ::http::request::Parts,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    let protocol = parts
        .headers
        .get(::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .and_then(|offered| offered.split(',').find_map(|p| WebSocketProtocols::from_str(p.trim()).ok()));
    let Some(protocol) = protocol else {
        return (
            ::http::StatusCode::BAD_REQUEST,
            "Unsupported WebSocket sub-protocol: use graphql-transport-ws",
        )
            .into_response();
    };
    // Who is at the other end, as HTTP would say it (the proxy-aware
    // address): logins over this socket count against it like over HTTP.
    let client = super::graphql::client_addr(&state, &parts.headers, peer);
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Each connection costs memory and a task: one address may hold only
    // so many. Refused before the upgrade, as HTTP: graphql-ws clients
    // retry a failed connection with back-off.
    let Some(slot) = state.app.db.hub.open_socket(client) else {
        return (
            ::http::StatusCode::TOO_MANY_REQUESTS,
            [(::http::header::RETRY_AFTER, "10")],
            "Too many WebSocket connections from this address",
        )
            .into_response();
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        // tungstenite's defaults (128 KiB read and write buffers) would cost
        // a quarter of a MiB per idle connection; protocol messages are small.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        // A subscribe message carries a document: the HTTP body limit applies.
        .max_message_size(state.app.config.limits.max_body_bytes)
        .max_frame_size(state.app.config.limits.max_body_bytes)
        .on_upgrade(move |socket| serve(socket, state, protocol, client, slot))
}

/// The token of a `connection_init` payload: `Authorization`,
/// `authorization` or `authToken`, with or without `Bearer `.
fn init_payload_token(payload: &serde_json::Value) -> Option<String> {
    let raw = ["Authorization", "authorization", "authToken"]
        .iter()
        .find_map(|key| payload.get(key).and_then(|v| v.as_str()))?;
    let raw = raw.trim();
    let has_scheme = raw.get(..7).is_some_and(|prefix| prefix.eq_ignore_ascii_case("bearer "));
    Some(if has_scheme || raw.eq_ignore_ascii_case("bearer") {
        raw.to_owned()
    } else {
        format!("Bearer {raw}")
    })
}

/// What the parts of one connection share.
struct SocketState {
    /// The token accepted at `connection_init`.
    session: OnceLock<TokenSession>,
    /// Set when something other than the protocol decides the socket must
    /// close (a token that stopped being good); the send loop does it.
    close: Mutex<Option<(u16, &'static str)>>,
    close_requested: Notify,
    /// Operations running now, and how many may.
    operations: AtomicUsize,
    max_operations: usize,
    /// Operations refused for the cap whose answer has not gone out yet.
    refused: AtomicUsize,
    refusal_sent: Notify,
    opened: Instant,
    /// When the peer last sent a frame of any kind, in milliseconds since
    /// `opened`.
    last_heard: AtomicU64,
}

/// How many refused operations may wait for their answer before the socket
/// stops reading: a flood of `subscribe` messages past the cap then waits
/// in the peer's TCP buffers, not in server memory.
const MAX_REFUSALS_PENDING: usize = 8;

impl SocketState {
    fn new(max_operations: usize) -> Self {
        Self {
            session: OnceLock::new(),
            close: Mutex::new(None),
            close_requested: Notify::new(),
            operations: AtomicUsize::new(0),
            max_operations,
            refused: AtomicUsize::new(0),
            refusal_sent: Notify::new(),
            opened: Instant::now(),
            last_heard: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard.store(now, Ordering::Release);
    }

    fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.last_heard.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(heard)
    }

    fn request_close(&self, code: u16, reason: &'static str) {
        let mut close = self.close.lock().unwrap_or_else(|p| p.into_inner());
        close.get_or_insert((code, reason));
        self.close_requested.notify_one();
    }

    fn close_reason(&self) -> Option<(u16, &'static str)> {
        *self.close.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more operation, if the connection has one.
    fn start_operation(self: &Arc<Self>) -> Option<Counted> {
        self.operations
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_operations).then_some(n + 1))
            .ok()
            .map(|_| Counted { socket: Arc::clone(self), refusal: false })
    }

    fn refuse_operation(self: &Arc<Self>) -> Counted {
        self.refused.fetch_add(1, Ordering::AcqRel);
        Counted { socket: Arc::clone(self), refusal: true }
    }

    /// Resolves once few enough refusals are waiting to be sent.
    async fn refusals_drained(&self) {
        loop {
            let sent = self.refusal_sent.notified();
            if self.refused.load(Ordering::Acquire) < MAX_REFUSALS_PENDING {
                return;
            }
            sent.await;
        }
    }
}

/// An operation (or a refusal) in flight; uncounted when async-graphql drops
/// its stream: finished, stopped by the client, or the socket gone.
struct Counted {
    socket: Arc<SocketState>,
    refusal: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.refusal {
            self.socket.refused.fetch_sub(1, Ordering::AcqRel);
            self.socket.refusal_sent.notify_waiters();
        } else {
            self.socket.operations.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The schema as one socket's operations see it: each operation (a
/// `subscribe`, or the legacy `start`) first checks that the socket's token
/// is still good.
#[derive(Clone)]
struct SocketExecutor {
    schema: TodoqlSchema,
    app: Arc<App>,
    socket: Arc<SocketState>,
    client: Option<ClientAddr>,
}

impl Executor for SocketExecutor {
    // Not called by the WebSocket protocol (it only streams); present
    // because the trait requires it.
    fn execute(&self, request: Request) -> impl Future<Output = async_graphql::Response> + Send {
        self.schema.execute(request)
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        // Every operation (a query or mutation as much as a subscription)
        // holds its stream in async-graphql until it ends; the cap bounds
        // the work and memory one socket can have pending. Past it the
        // operation is answered TOO_MANY_SUBSCRIPTIONS (every operation is
        // a "subscription" in graphql-transport-ws terms) and the socket
        // stays open: the client's other operations are not its fault.
        let Some(counted) = self.socket.start_operation() else {
            let refused = self.socket.refuse_operation();
            return async_stream::stream! {
                // Counted until async-graphql has sent the answer and the
                // `complete` and dropped the stream.
                let _refused = refused;
                yield refusal(AppError::TooManySubscriptions("Too many operations in flight on this connection"));
            }
            .boxed();
        };
        let this = self.clone();
        async_stream::stream! {
            let _counted = counted;
            // async-graphql runs no operation before connection_init
            // succeeded, so the session is set; without one, refuse anyway.
            let allowed = match this.socket.session.get() {
                Some(session) => guard::check_session(&this.app.db, *session).await,
                None => Err(AppError::Unauthenticated("Send connection_init first")),
            };
            match allowed {
                Ok(()) => {}
                Err(error @ AppError::Unauthenticated(_)) => {
                    tracing::info!(?error, "closing a WebSocket whose token is no longer good");
                    this.socket.request_close(CLOSE_FORBIDDEN, "Forbidden: the token expired or was revoked");
                    // The operation never runs and gets no answer: the socket
                    // closes (and a graphql-ws client re-sends it after
                    // reconnecting with a fresh token).
                    future::pending::<()>().await;
                }
                // The account could not be read (the database is down): this
                // operation fails as it would over HTTP; the socket stays.
                Err(error) => {
                    yield refusal(error);
                    return;
                }
            }
            let mut responses = match session_data {
                Some(data) => this.schema.execute_stream_with_session_data(request, data),
                None => this.schema.execute_stream(request),
            };
            // Its database work queues fairly with the client's other work.
            let client = this.client.map(ClientAddr::ip);
            while let Some(response) = crate::db::fair::on_behalf_of(client, responses.next()).await {
                yield response;
            }
        }
        .boxed()
    }
}

/// A response holding only `error`, for an operation refused before it ran.
fn refusal(error: AppError) -> async_graphql::Response {
    let error = async_graphql::Error::from(error);
    let mut server_error = ServerError::new(error.message, None);
    server_error.extensions = error.extensions;
    async_graphql::Response::from_errors(vec![server_error])
}

/// The client's messages, as async-graphql reads them.
fn client_messages(
    mut source: SplitStream<WebSocket>,
    socket: Arc<SocketState>,
) -> impl futures_util::Stream<Item = serde_json::Result<ClientMessage>> {
    async_stream::stream! {
        while let Some(Ok(frame)) = source.next().await {
            // Any frame shows the peer is there and reading: a pong, a
            // protocol message, a ping of its own.
            socket.heard();
            let bytes = match frame {
                Message::Text(text) => axum::body::Bytes::from(text),
                Message::Binary(bytes) => bytes,
                Message::Close(_) => break,
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            let message = ClientMessage::from_bytes(&bytes);
            let starts = matches!(message, Ok(ClientMessage::Start { .. }));
            if starts {
                socket.refusals_drained().await;
            }
            yield message;
            if starts {
                // async-graphql reads every message that is ready before
                // it runs any operation: hand control back after each one,
                // so a burst of them meets the caps one at a time.
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn serve(
    socket: WebSocket,
    state: HttpState,
    protocol: WebSocketProtocols,
    client: Option<ClientAddr>,
    slot: SocketSlot,
) {
    let (sink, source) = socket.split();
    let socket_state = Arc::new(SocketState::new(state.app.config.websocket.operations_per_connection));
    let input = client_messages(source, Arc::clone(&socket_state));
    let connection = slot.id();

    let refused = Arc::new(AtomicBool::new(false));
    let on_init = {
        let state = state.clone();
        let refused = Arc::clone(&refused);
        let socket_state = Arc::clone(&socket_state);
        move |payload: serde_json::Value| async move {
            let result = async {
                let value = init_payload_token(&payload);
                let token = guard::bearer_token(value.as_deref())?.ok_or(AppError::Unauthenticated(
                    "Send Authorization: Bearer <token> in connection_init",
                ))?;
                guard::authenticate_session(&state.app.db, &state.app.auth.tokens, token).await
            }
            .await;
            match result {
                Ok((user, session)) => {
                    let _ = socket_state.session.set(session);
                    let mut data = Data::default();
                    data.insert(user);
                    data.insert(session);
                    data.insert(connection);
                    if let Some(client) = client {
                        data.insert(client);
                    }
                    Ok(data)
                }
                Err(error) => {
                    refused.store(true, Ordering::Release);
                    Err(async_graphql::Error::from(error))
                }
            }
        }
    };
    let legacy = protocol == WebSocketProtocols::SubscriptionsTransportWS;
    let executor = SocketExecutor {
        schema: state.schema.clone(),
        app: Arc::clone(&state.app),
        socket: Arc::clone(&socket_state),
        client,
    };
    // No keepalive_timeout: async-graphql's counts only protocol messages and
    // only on graphql-transport-ws; the silence check below covers both.
    let protocol_stream = async_graphql::http::WebSocket::from_message_stream(executor, input, protocol)
        .on_connection_init(on_init);
    futures_util::pin_mut!(protocol_stream);

    let limits = &state.app.config.websocket;
    let mut shutdown = state.app.shutdown.subscribe();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    let mut acknowledged = false;

    // Every send is bounded by the write timeout: a peer that stops reading
    // fills its TCP window, a send then blocks, and without a bound this
    // task, its subscriptions and their slots would stay forever.
    let mut out = Outgoing { sink, timeout: limits.write_timeout };
    loop {
        tokio::select! {
            message = protocol_stream.next() => match message {
                Some(WsMessage::Text(text)) => {
                    acknowledged |= !acknowledged && text.contains("\"connection_ack\"");
                    if !out.send(Message::Text(text.into())).await {
                        break;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    // async-graphql closes a refused connection_init with 1002;
                    // the protocol says 4403 Forbidden.
                    let code = if code == 1002 && refused.load(Ordering::Acquire) { CLOSE_FORBIDDEN } else { code };
                    out.close(code, &reason).await;
                    break;
                }
                None => break,
            },
            _ = ping.tick() => {
                if socket_state.silent_for() >= limits.idle_timeout {
                    tracing::info!(silent_for = ?socket_state.silent_for(), "dropping a silent WebSocket peer");
                    out.close(CLOSE_IDLE, "Keep-alive timeout").await;
                    break;
                }
                // A WebSocket Ping frame on both protocols: every WebSocket
                // implementation answers it with a Pong by itself, including
                // the legacy protocol's clients, which have no pong message.
                if !out.send(Message::Ping(axum::body::Bytes::new())).await {
                    break;
                }
                // The protocols' own keep-alives, which their clients watch.
                if acknowledged {
                    let keepalive = if legacy { r#"{"type":"ka"}"# } else { r#"{"type":"ping"}"# };
                    if !out.send(Message::Text(keepalive.into())).await {
                        break;
                    }
                }
            }
            () = &mut init_deadline, if !acknowledged => {
                out.close(CLOSE_INIT_TIMEOUT, "Connection initialisation timeout").await;
                break;
            }
            () = socket_state.close_requested.notified() => {
                if let Some((code, reason)) = socket_state.close_reason() {
                    out.close(code, reason).await;
                    break;
                }
            }
            () = crate::events::stopping(&mut shutdown) => {
                out.close(CLOSE_GOING_AWAY, "Server is shutting down").await;
                break;
            }
        }
    }
    out.finish().await;
}

/// The sending half of a socket, every send bounded in time.
struct Outgoing {
    sink: SplitSink<WebSocket, Message>,
    timeout: Duration,
}

impl Outgoing {
    /// False when the message could not be sent in time (or at all): the
    /// peer is gone or not reading, and the connection is to be dropped.
    async fn send(&mut self, message: Message) -> bool {
        match tokio::time::timeout(self.timeout, self.sink.send(message)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::info!(timeout = ?self.timeout, "dropping a WebSocket peer that stopped reading");
                false
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let _ = self.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }

    async fn finish(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.sink.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_token_in_connection_init() {
        assert_eq!(
            init_payload_token(&json!({"Authorization": "Bearer abc"})).as_deref(),
            Some("Bearer abc")
        );
        assert_eq!(
            init_payload_token(&json!({"authorization": "bearer abc"})).as_deref(),
            Some("bearer abc")
        );
        assert_eq!(init_payload_token(&json!({"authToken": "abc"})).as_deref(), Some("Bearer abc"));
        assert_eq!(init_payload_token(&json!({"Authorization": "Bearer "})).as_deref(), Some("Bearer"));
        assert_eq!(init_payload_token(&json!({})), None);
        assert_eq!(init_payload_token(&json!({"Authorization": 42})), None);
    }
}
