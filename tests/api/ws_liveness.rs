//! Peers that are gone are dropped, and their subscription slots freed: one
//! that stops reading (its sends block past the write timeout), one that
//! falls silent (no frame at all, pongs included, past the idle timeout), on
//! both protocols. Peers that answer pings stay.

use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::TestApp;
use crate::ws::{self, Incoming, Protocol, Socket, TODO_EVENTS, WsClient};

mod stops_reading {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.websocket.write_timeout = Duration::from_secs(1);
        config.websocket.ping_interval = Duration::from_millis(200);
        config.websocket.idle_timeout = Duration::from_secs(1);
    }
    crate::backend_tests_with!(adjust; a_peer_that_stops_reading_is_dropped);
}

mod blocked_sends {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.websocket.write_timeout = Duration::from_secs(1);
        // Out of the way: only the write timeout can notice this peer.
        config.websocket.ping_interval = Duration::from_secs(60);
        config.websocket.idle_timeout = Duration::from_secs(180);
    }
    crate::backend_tests_with!(adjust; a_peer_whose_sends_block_is_dropped);
}

mod silent {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.websocket.ping_interval = Duration::from_millis(200);
        config.websocket.idle_timeout = Duration::from_secs(1);
    }
    crate::backend_tests_with!(adjust; silent_peers_are_dropped_on_both_protocols, peers_that_answer_pings_stay);
}

/// A client that sends `connection_init` and a `todoEvents` subscription,
/// and never reads anything.
async fn raw_subscriber(
    app: &TestApp,
    token: &str,
    protocol: Protocol,
    receive_buffer: Option<u32>,
) -> Socket {
    let mut socket = ws::handshake_tuned(app.addr, None, protocol, receive_buffer).await.expect("upgrade");
    let start = if protocol == Protocol::Legacy { "start" } else { "subscribe" };
    for message in [
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
        json!({"id": "1", "type": start, "payload": {"query": TODO_EVENTS}}),
    ] {
        socket.send(Message::Text(message.to_string().into())).await.expect("sent");
    }
    socket
}

/// This process's resident memory (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Creates 50 todos of about 2 KB each for `token`.
async fn big_todos(app: &TestApp, token: &str) {
    let description = "x".repeat(2000);
    for i in 0..50 {
        app.create_todo(token, json!({"title": format!("big {i}"), "description": description})).await;
    }
}

async fn a_peer_that_stops_reading_is_dropped(app: TestApp) {
    let user = app.signup("stops-reading@example.com").await;
    big_todos(&app, &user.token).await;
    // A small receive window: the server's sends block soon after the
    // client stops reading.
    let socket = raw_subscriber(&app, &user.token, Protocol::Modern, Some(4096)).await;
    app.wait_for_open_subscriptions(1).await;
    let rss_before = rss_kib();
    let started = Instant::now();
    // Each toggle announces 50 events of about 2 KB to the peer, which
    // reads none of them (nor the pings).
    let mut toggles = 0;
    while crate::ws::gauge(app.addr, "todoql_websockets_open").await != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the peer is still connected after {toggles} toggles ({:?})",
            started.elapsed()
        );
        app.gql(
            Some(&user.token),
            "mutation($c: Boolean!) { setAllTodosCompleted(completed: $c) }",
            json!({"c": toggles % 2 == 0}),
        )
        .await
        .ok();
        toggles += 1;
    }
    app.wait_for_open_subscriptions(0).await;
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!("dropped after {toggles} toggles, {:?}; RSS grew {grown} KiB", started.elapsed());
    assert!(grown < 128 * 1024, "RSS grew {grown} KiB");
    // The server is fine, and the account can subscribe again.
    assert!(app.client.get(app.url("/healthz")).send().await.expect("healthz").status().is_success());
    let mut fresh = WsClient::with_token(app.addr, &user.token).await;
    fresh.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    drop(socket);
}

async fn a_peer_whose_sends_block_is_dropped(app: TestApp) {
    let user = app.signup("blocked@example.com").await;
    big_todos(&app, &user.token).await;
    let mut socket = raw_subscriber(&app, &user.token, Protocol::Modern, Some(4096)).await;
    app.wait_for_open_subscriptions(1).await;
    // 100 queries answering about 100 KB each: far more than the TCP
    // buffers between the two hold, so the server's sends block for good.
    let started = Instant::now();
    for i in 0..100 {
        let query = json!({"id": format!("q{i}"), "type": "subscribe",
            "payload": {"query": "{ todos(first: 50) { edges { node { description } } } }"}});
        socket.send(Message::Text(query.to_string().into())).await.expect("sent");
    }
    app.wait_for_open_websockets(0).await;
    app.wait_for_open_subscriptions(0).await;
    eprintln!("dropped after {:?}", started.elapsed());
    drop(socket);
}

async fn silent_peers_are_dropped_on_both_protocols(app: TestApp) {
    let user = app.signup("silent@example.com").await;
    for protocol in [Protocol::Modern, Protocol::Legacy] {
        let socket = raw_subscriber(&app, &user.token, protocol, None).await;
        app.wait_for_open_subscriptions(1).await;
        let started = Instant::now();
        app.wait_for_open_subscriptions(0).await;
        app.wait_for_open_websockets(0).await;
        // 1 s of silence, noticed at the next 200 ms ping tick.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{protocol:?}: dropped after {:?}",
            started.elapsed()
        );
        drop(socket);
    }
}

/// Reads for `duration` (so answering pings, as every WebSocket library
/// does by itself), expecting nothing but keep-alives.
async fn keep_reading(ws: &mut WsClient, duration: Duration) {
    // next_within's wait starts again after each ping it answers: bound the
    // whole read instead.
    if let Ok(Some(other)) = tokio::time::timeout(duration, ws.next_within(duration)).await {
        panic!("expected nothing, got {other:?}");
    }
}

async fn peers_that_answer_pings_stay(app: TestApp) {
    let user = app.signup("attentive@example.com").await;
    let payload = json!({"Authorization": format!("Bearer {}", user.token)});
    let mut modern =
        WsClient::connect_with(app.addr, Protocol::Modern, payload.clone()).await.expect("accepted");
    let mut legacy = WsClient::connect_with(app.addr, Protocol::Legacy, payload).await.expect("accepted");
    modern.subscribe("1", TODO_EVENTS).await;
    legacy.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(2).await;
    // Three idle timeouts: the legacy client has only WebSocket Pongs to
    // show it is there.
    tokio::join!(
        keep_reading(&mut modern, Duration::from_secs(3)),
        keep_reading(&mut legacy, Duration::from_secs(3))
    );
    let todo = app.create_todo(&user.token, json!({"title": "still here"})).await;
    for ws in [&mut modern, &mut legacy] {
        let payload = ws.next_payload("1").await;
        assert_eq!(payload["data"]["todoEvents"]["todoId"], todo["id"], "{payload}");
    }
    match modern.next_within(Duration::from_millis(100)).await {
        None => {}
        Some(Incoming::Closed(code)) => panic!("closed with {code}"),
        Some(other) => panic!("{other:?}"),
    }
}
