//! PostgreSQL: the instance's LISTEN connection is lost (killed here, as a
//! failover or an idle-connection reaper would) — every open subscription
//! is told EVENTS_LOST, and the instance recovers by itself.

use serde_json::json;

use crate::helpers::{Backend, TestApp};
use crate::ws::{TODO_EVENTS, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_listener_connection_tells_every_subscriber() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else { return };
    let alice = app.signup("listener-a@example.com").await;
    let bob = app.signup("listener-b@example.com").await;
    let mut alice_ws = WsClient::with_token(app.addr, &alice.token).await;
    let mut bob_ws = WsClient::with_token(app.addr, &bob.token).await;
    alice_ws.subscribe("1", TODO_EVENTS).await;
    bob_ws.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(2).await;

    let (admin, connection) =
        tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    // Only this test's database: other tests share the cluster.
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1, "one listener per instance");

    for ws in [&mut alice_ws, &mut bob_ws] {
        let payload = ws.next_payload("1").await;
        assert_eq!(payload["errors"][0]["extensions"]["code"], "EVENTS_LOST", "{payload}");
        ws.expect_complete("1").await;
    }
    app.wait_for_open_subscriptions(0).await;

    // The listener reconnects by itself; then subscriptions hear changes again.
    app.wait_for_gauge("todoql_event_bus_live", 1).await;
    alice_ws.subscribe("2", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    let todo = app.create_todo(&alice.token, json!({"title": "after the reconnect"})).await;
    let payload = alice_ws.next_payload("2").await;
    assert_eq!(payload["data"]["todoEvents"]["todoId"], todo["id"], "{payload}");
}
