//! A minimal `graphql-transport-ws` client for the tests.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct WsClient {
    socket: Socket,
    legacy: bool,
}

/// The two sub-protocols the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws` (the `graphql-ws` library).
    Modern,
    /// `graphql-ws` (Apollo's legacy `subscriptions-transport-ws`).
    Legacy,
}

impl Protocol {
    pub fn header(self) -> &'static str {
        match self {
            Self::Modern => "graphql-transport-ws",
            Self::Legacy => "graphql-ws",
        }
    }
}

/// What the server said next.
#[derive(Debug)]
pub enum Incoming {
    /// A `next`, `error` or `complete` message (JSON).
    Message(Value),
    /// The server closed the connection with this code.
    Closed(u16),
}

pub const WAIT: Duration = Duration::from_secs(5);

impl WsClient {
    /// Opens a socket to `addr` and sends `connection_init` with `payload`;
    /// returns the client once acknowledged, or the close code.
    pub async fn connect(addr: std::net::SocketAddr, payload: Value) -> Result<Self, u16> {
        Self::connect_with(addr, Protocol::Modern, payload).await
    }

    /// [`WsClient::connect`] with either sub-protocol.
    pub async fn connect_with(
        addr: std::net::SocketAddr,
        protocol: Protocol,
        payload: Value,
    ) -> Result<Self, u16> {
        Self::connect_from(addr, None, protocol, payload).await
    }

    /// [`WsClient::connect_with`] from a chosen local address (any of
    /// 127.0.0.0/8 on Linux): another client address, as the server sees it.
    pub async fn connect_from(
        addr: std::net::SocketAddr,
        source: Option<std::net::IpAddr>,
        protocol: Protocol,
        payload: Value,
    ) -> Result<Self, u16> {
        let socket = handshake(addr, source, protocol).await.unwrap_or_else(|status| {
            panic!("the WebSocket upgrade was refused with HTTP {status}");
        });
        let mut client = Self { socket, legacy: protocol == Protocol::Legacy };
        client.send(json!({"type": "connection_init", "payload": payload})).await;
        match client.next().await {
            Incoming::Message(message) if message["type"] == "connection_ack" => Ok(client),
            Incoming::Message(other) => panic!("expected connection_ack, got {other}"),
            Incoming::Closed(code) => Err(code),
        }
    }

    pub async fn with_token(addr: std::net::SocketAddr, token: &str) -> Self {
        Self::connect(addr, json!({"Authorization": format!("Bearer {token}")})).await.expect("accepted")
    }

    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::Text(message.to_string().into())).await.expect("sent");
    }

    /// Sends text as it is, JSON or not.
    pub async fn send_raw(&mut self, text: String) {
        self.socket.send(Message::Text(text.into())).await.expect("sent");
    }

    /// Starts an operation: `subscribe`, or `start` on the legacy protocol.
    pub async fn subscribe(&mut self, id: &str, query: &str) {
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(json!({"id": id, "type": kind, "payload": {"query": query}})).await;
    }

    /// Starts `query` as operation `id` and returns the first thing the
    /// server says after it (an answer, or the close).
    pub async fn run_once(&mut self, id: &str, query: &str) -> Incoming {
        self.subscribe(id, query).await;
        self.next().await
    }

    /// The next message or close, answering pings; panics after `WAIT`.
    pub async fn next(&mut self) -> Incoming {
        self.next_within(WAIT).await.unwrap_or_else(|| panic!("nothing from the server within {WAIT:?}"))
    }

    /// Like [`next`], but `None` when nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        loop {
            let frame = tokio::time::timeout(wait, self.socket.next()).await.ok()?;
            match frame {
                None | Some(Err(_)) => return Some(Incoming::Closed(1006)),
                Some(Ok(Message::Close(frame))) => {
                    return Some(Incoming::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(Message::Text(text))) => {
                    assert_no_leak(&text);
                    let message: Value = serde_json::from_str(&text).expect("JSON message");
                    if message["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    // The legacy protocol's keep-alive.
                    if message["type"] == "ka" {
                        continue;
                    }
                    return Some(Incoming::Message(message));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next `next` (legacy: `data`) message's payload for subscription `id`.
    pub async fn next_payload(&mut self, id: &str) -> Value {
        match self.next().await {
            Incoming::Message(message)
                if (message["type"] == "next" || message["type"] == "data") && message["id"] == id =>
            {
                message["payload"].clone()
            }
            other => panic!("expected a next message for {id}, got {other:?}"),
        }
    }

    pub async fn expect_complete(&mut self, id: &str) {
        match self.next().await {
            Incoming::Message(message) if message["type"] == "complete" && message["id"] == id => {}
            other => panic!("expected complete for {id}, got {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .socket
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// Opens a WebSocket to `addr` (from `source`, if given) offering
/// `protocol`: the socket, or the HTTP status the upgrade was refused with.
pub async fn handshake(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
    protocol: Protocol,
) -> Result<Socket, u16> {
    handshake_tuned(addr, source, protocol, None).await
}

/// [`handshake`], with the client's TCP receive buffer set to
/// `receive_buffer` bytes: a client that stops reading then stops the
/// server's sends after little data.
pub async fn handshake_tuned(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
    protocol: Protocol,
    receive_buffer: Option<u32>,
) -> Result<Socket, u16> {
    let mut request = format!("ws://{addr}/graphql").into_client_request().expect("request");
    request.headers_mut().insert("sec-websocket-protocol", protocol.header().parse().expect("header"));
    let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(source) = source {
        tcp.bind(std::net::SocketAddr::new(source, 0)).expect("bind the source address");
    }
    if let Some(size) = receive_buffer {
        tcp.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let stream = tcp.connect(addr).await.expect("TCP connect");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, response)) => {
            assert_eq!(
                response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
                Some(protocol.header())
            );
            Ok(socket)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("WebSocket upgrade failed: {error}"),
    }
}

pub const TODO_EVENTS: &str =
    "subscription { todoEvents { kind todoId todo { id title description completed } } }";

/// What no response may ever contain: password hashes, SQL, driver names,
/// panics. Every GraphQL response the suite reads goes through this.
/// `todoql_subscriptions_open` as the server at `addr` reports it on
/// `/metrics`: the subscriptions its event hub has registered. Events
/// published before a subscription registers are (rightly) not delivered to
/// it, so tests wait on this rather than on a guessed sleep.
pub async fn open_subscriptions(addr: std::net::SocketAddr) -> Option<usize> {
    gauge(addr, "todoql_subscriptions_open").await
}

/// A gauge of the server at `addr`, from `/metrics`.
pub async fn gauge(addr: std::net::SocketAddr, name: &str) -> Option<usize> {
    let body = reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

pub fn assert_no_leak(body: &str) {
    const FORBIDDEN: &[&str] = &[
        "$2b$",
        "$2a$",
        "$2y$",
        "SELECT ",
        "INSERT ",
        "UPDATE ",
        "DELETE FROM",
        "syntax error",
        "violates",
        "constraint",
        "diesel",
        "sqlite",
        "SQLite",
        "postgres",
        "Postgres",
        "tokio_postgres",
        "bb8::",
        "timed out waiting for connection",
        "panicked",
        "RUST_BACKTRACE",
        "password_hash",
    ];
    for needle in FORBIDDEN {
        assert!(!body.contains(needle), "a response leaks {needle:?}: {body}");
    }
}
