//! What one socket, one connection's operations and one client address may
//! hold open, and that every slot is given back when its subscription or
//! socket ends. Client addresses other than 127.0.0.1 are other loopback
//! addresses (Linux routes all of 127.0.0.0/8 to lo).

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::ws::{self, Incoming, Protocol, TODO_EVENTS, WsClient};

mod per_connection {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.subscriptions_per_connection = 2;
    }
    crate::backend_tests_with!(adjust; subscriptions_are_capped_per_connection);
}

mod per_address {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.subscriptions_per_address = 3;
    }
    crate::backend_tests_with!(adjust; subscriptions_are_capped_per_address);
}

mod sockets_per_address {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.websocket.websockets_per_address = 3;
    }
    crate::backend_tests_with!(adjust; connections_are_capped_per_address);
}

mod in_flight {
    use super::*;
    fn adjust(config: &mut todoql::Config) {
        config.websocket.operations_per_connection = 3;
    }
    crate::backend_tests_with!(adjust; operations_in_flight_are_capped_per_connection);
}

fn other_address() -> Option<IpAddr> {
    Some("127.0.0.2".parse().expect("ip"))
}

async fn socket_from(app: &TestApp, source: Option<IpAddr>, token: &str) -> WsClient {
    let payload = json!({"Authorization": format!("Bearer {token}")});
    WsClient::connect_from(app.addr, source, Protocol::Modern, payload).await.expect("accepted")
}

/// The refusal of operation `id`: its error's code and message, then its `complete`.
async fn expect_refused(ws: &mut WsClient, id: &str, reason: &str) {
    let payload = ws.next_payload(id).await;
    assert_eq!(payload["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS", "{payload}");
    let message = payload["errors"][0]["message"].as_str().expect("message");
    assert!(message.contains(reason), "{message}");
    ws.expect_complete(id).await;
}

/// Starts subscriptions `ids` on `ws` and waits for the one that is refused
/// (they start concurrently, so which one is not known).
async fn subscribe_expecting_one_refusal(ws: &mut WsClient, ids: &[&str], reason: &str) -> String {
    for id in ids {
        ws.subscribe(id, TODO_EVENTS).await;
    }
    let Incoming::Message(refused) = ws.next().await else { panic!("socket closed") };
    let id = refused["id"].as_str().expect("id").to_owned();
    let payload = &refused["payload"];
    assert_eq!(payload["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS", "{refused}");
    let message = payload["errors"][0]["message"].as_str().expect("message");
    assert!(message.contains(reason), "{message}");
    ws.expect_complete(&id).await;
    id
}

async fn subscriptions_are_capped_per_connection(app: TestApp) {
    let user = app.signup("per-connection@example.com").await;
    let mut first = socket_from(&app, None, &user.token).await;
    subscribe_expecting_one_refusal(&mut first, &["1", "2", "3"], "on this connection").await;
    app.wait_for_open_subscriptions(2).await;
    // The same account, on another connection, has its own two.
    let mut second = socket_from(&app, None, &user.token).await;
    subscribe_expecting_one_refusal(&mut second, &["1", "2", "3"], "on this connection").await;
    app.wait_for_open_subscriptions(4).await;
    // Closing a socket frees its slots; the other keeps its subscriptions.
    first.close().await;
    app.wait_for_open_subscriptions(2).await;
    let own = app.create_todo(&user.token, json!({"title": "still heard"})).await;
    for _ in 0..2 {
        let Incoming::Message(message) = second.next().await else { panic!("closed") };
        assert_eq!(message["payload"]["data"]["todoEvents"]["todoId"], own["id"], "{message}");
    }
    let mut third = socket_from(&app, None, &user.token).await;
    third.subscribe("1", TODO_EVENTS).await;
    third.subscribe("2", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(4).await;
}

async fn subscriptions_are_capped_per_address(app: TestApp) {
    let (alice, bob, carol) = (
        app.signup("addr-a@example.com").await,
        app.signup("addr-b@example.com").await,
        app.signup("addr-c@example.com").await,
    );
    let mut alice_ws = socket_from(&app, None, &alice.token).await;
    alice_ws.subscribe("1", TODO_EVENTS).await;
    alice_ws.subscribe("2", TODO_EVENTS).await;
    let mut bob_ws = socket_from(&app, None, &bob.token).await;
    bob_ws.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(3).await;
    // A fourth from 127.0.0.1, whoever asks, is refused…
    bob_ws.subscribe("2", TODO_EVENTS).await;
    expect_refused(&mut bob_ws, "2", "from this address").await;
    let mut carol_here = socket_from(&app, None, &carol.token).await;
    carol_here.subscribe("1", TODO_EVENTS).await;
    expect_refused(&mut carol_here, "1", "from this address").await;
    // …while another address has its own allowance.
    let mut carol_there = socket_from(&app, other_address(), &carol.token).await;
    carol_there.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(4).await;
    // Alice's socket closing gives 127.0.0.1 two slots back.
    alice_ws.close().await;
    app.wait_for_open_subscriptions(2).await;
    bob_ws.subscribe("3", TODO_EVENTS).await;
    carol_here.subscribe("2", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(4).await;
    carol_here.subscribe("3", TODO_EVENTS).await;
    expect_refused(&mut carol_here, "3", "from this address").await;
}

async fn connections_are_capped_per_address(app: TestApp) {
    let user = app.signup("sockets@example.com").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(socket_from(&app, None, &user.token).await);
    }
    app.wait_for_open_websockets(3).await;
    // The fourth from the same address is refused before the upgrade,
    // whether or not it would ever authenticate.
    for protocol in [Protocol::Modern, Protocol::Legacy] {
        match ws::handshake(app.addr, None, protocol).await {
            Err(status) => assert_eq!(status, 429),
            Ok(_) => panic!("a fourth connection was accepted"),
        }
    }
    let mut elsewhere = socket_from(&app, other_address(), &user.token).await;
    app.wait_for_open_websockets(4).await;
    // A closed socket gives its place back.
    open.pop().expect("one").close().await;
    app.wait_for_open_websockets(3).await;
    let mut again = socket_from(&app, None, &user.token).await;
    for ws in [&mut again, &mut elsewhere] {
        ws.subscribe("me", "{ me { email } }").await;
        assert_eq!(ws.next_payload("me").await["data"]["me"]["email"], user.email.as_str());
    }
}

async fn operations_in_flight_are_capped_per_connection(app: TestApp) {
    let user = app.signup("in-flight@example.com").await;
    let mut ws = socket_from(&app, None, &user.token).await;
    for id in ["s1", "s2", "s3"] {
        ws.subscribe(id, TODO_EVENTS).await;
    }
    app.wait_for_open_subscriptions(3).await;
    // Three operations are running: a burst of 200 more is refused one by
    // one, and every one of them is answered.
    for i in 0..200 {
        ws.subscribe(&format!("q{i}"), "{ me { id } }").await;
    }
    let mut answered = std::collections::HashSet::new();
    let mut completed = 0;
    while completed < 200 {
        let Incoming::Message(message) = ws.next().await else { panic!("socket closed") };
        let id = message["id"].as_str().expect("id").to_owned();
        assert!(id.starts_with('q'), "{message}");
        match message["type"].as_str() {
            Some("next") => {
                let error = &message["payload"]["errors"][0];
                assert_eq!(error["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS", "{message}");
                assert!(error["message"].as_str().is_some_and(|m| m.contains("in flight")), "{message}");
                assert!(answered.insert(id), "answered twice: {message}");
            }
            Some("complete") => completed += 1,
            _ => panic!("{message}"),
        }
    }
    assert_eq!(answered.len(), 200);
    // Stopping one subscription makes room for a query.
    ws.send(json!({"id": "s1", "type": "complete"})).await;
    app.wait_for_open_subscriptions(2).await;
    ws.subscribe("me", "{ me { id } }").await;
    let me: Value = loop {
        match ws.next().await {
            Incoming::Message(m) if m["id"] == "s1" && m["type"] == "complete" => continue,
            Incoming::Message(m) => break m,
            Incoming::Closed(code) => panic!("closed with {code}"),
        }
    };
    assert_eq!(me["payload"]["data"]["me"]["id"], user.id.as_str(), "{me}");
}
