//! `todoEvents` over a real WebSocket, on both backends.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, JWT_SECRET, TestApp};
use crate::ws::{Incoming, TODO_EVENTS, WsClient};

backend_tests!(
    connections_without_a_valid_token_are_refused,
    own_events_arrive_in_commit_order_with_their_payload,
    other_users_events_never_arrive,
    a_revoked_token_ends_the_subscription,
    deleting_the_account_ends_the_subscription,
    an_expiring_token_ends_the_subscription,
    shutdown_closes_sockets_with_going_away,
);

async fn connections_without_a_valid_token_are_refused(app: TestApp) {
    let account = app.signup("ws@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, ver: i32| json!({"sub": account.id, "email": account.email, "iat": now - 10, "exp": exp, "ver": ver});
    let sign = |alg: Algorithm, claims: &Value, key: &[u8]| {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).expect("token")
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = [
        sign(Algorithm::HS256, &claims(now - 1, 0), JWT_SECRET.as_bytes()),
        sign(Algorithm::HS512, &claims(now + 600, 0), JWT_SECRET.as_bytes()),
        sign(Algorithm::HS256, &claims(now + 600, 0), b"some other key that is long enough"),
        sign(Algorithm::HS256, &claims(now + 600, -1), JWT_SECRET.as_bytes()),
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims(now + 600, 0).to_string())
        ),
    ];
    for token in &forged {
        match WsClient::connect(app.addr, json!({"Authorization": format!("Bearer {token}")})).await {
            Err(code) => assert_eq!(code, 4403),
            Ok(_) => panic!("forged token {token} was accepted"),
        }
    }
    for payload in [
        json!({}),
        json!({"Authorization": "Bearer "}),
        json!({"Authorization": "Bearer garbage"}),
        json!({"authToken": "a.b.c"}),
        json!({"Authorization": format!("Basic {}", account.token)}),
    ] {
        match WsClient::connect(app.addr, payload.clone()).await {
            Err(code) => assert_eq!(code, 4403, "{payload}"),
            Ok(_) => panic!("{payload} was accepted"),
        }
    }
    // Each accepted spelling of the token works.
    for payload in [
        json!({"Authorization": format!("Bearer {}", account.token)}),
        json!({"authorization": format!("Bearer {}", account.token)}),
        json!({"authToken": account.token}),
    ] {
        WsClient::connect(app.addr, payload).await.expect("accepted").close().await;
    }
    // A subscription over plain HTTP gets a GraphQL error, not a hang.
    let response = app.gql(Some(&account.token), TODO_EVENTS, json!({})).await;
    assert!(response.0["errors"].is_array(), "{}", response.0);
}

fn event(payload: &Value) -> (String, String, Value) {
    let event = &payload["data"]["todoEvents"];
    assert!(payload.get("errors").is_none(), "{payload}");
    (
        event["kind"].as_str().expect("kind").to_owned(),
        event["todoId"].as_str().expect("id").to_owned(),
        event["todo"].clone(),
    )
}

async fn own_events_arrive_in_commit_order_with_their_payload(app: TestApp) {
    let user = app.signup("live@example.com").await;
    let mut ws = WsClient::with_token(app.addr, &user.token).await;
    ws.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;

    let first = app.create_todo(&user.token, json!({"title": "first", "description": "d"})).await;
    let id = first["id"].as_str().expect("id").to_owned();
    app.gql(
        Some(&user.token),
        "mutation($id: ID!) { updateTodo(id: $id, input: {title: \"renamed\"}) { id } }",
        json!({"id": id}),
    )
    .await
    .ok();
    app.gql(Some(&user.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": id})).await.ok();
    let second = app.create_todo(&user.token, json!({"title": "second"})).await;
    let second_id = second["id"].as_str().expect("id").to_owned();
    app.gql(Some(&user.token), "mutation { setAllTodosCompleted(completed: true) }", json!({})).await.ok();
    app.gql(Some(&user.token), "mutation { clearCompletedTodos }", json!({})).await.ok();

    let (kind, todo_id, todo) = event(&ws.next_payload("1").await);
    assert_eq!((kind.as_str(), todo_id.as_str()), ("CREATED", id.as_str()));
    assert_eq!(todo, json!({"id": id, "title": "first", "description": "d", "completed": false}));
    let (kind, _, todo) = event(&ws.next_payload("1").await);
    assert_eq!(kind, "UPDATED");
    assert_eq!(todo["title"], "renamed");
    let (kind, todo_id, todo) = event(&ws.next_payload("1").await);
    assert_eq!((kind.as_str(), todo_id.as_str()), ("DELETED", id.as_str()));
    assert!(todo.is_null());
    let (kind, todo_id, _) = event(&ws.next_payload("1").await);
    assert_eq!((kind.as_str(), todo_id.as_str()), ("CREATED", second_id.as_str()));
    let (kind, todo_id, todo) = event(&ws.next_payload("1").await);
    assert_eq!(
        (kind.as_str(), todo_id.as_str(), &todo["completed"]),
        ("UPDATED", second_id.as_str(), &json!(true))
    );
    let (kind, todo_id, _) = event(&ws.next_payload("1").await);
    assert_eq!((kind.as_str(), todo_id.as_str()), ("DELETED", second_id.as_str()));
    // Nothing else: one event per affected todo.
    assert!(ws.next_within(Duration::from_millis(300)).await.is_none());

    // The client can stop the subscription.
    ws.send(json!({"id": "1", "type": "complete"})).await;
    app.create_todo(&user.token, json!({"title": "unheard"})).await;
    match ws.next_within(Duration::from_millis(300)).await {
        None => {}
        Some(Incoming::Message(message)) => assert_eq!(message["type"], "complete", "{message}"),
        Some(other) => panic!("{other:?}"),
    }
}

async fn other_users_events_never_arrive(app: TestApp) {
    let alice = app.signup("alice-live@example.com").await;
    let bob = app.signup("bob-live@example.com").await;
    let mut bob_ws = WsClient::with_token(app.addr, &bob.token).await;
    bob_ws.subscribe("b", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    for i in 0..5 {
        app.create_todo(&alice.token, json!({"title": format!("alice {i}")})).await;
    }
    app.gql(Some(&alice.token), "mutation { setAllTodosCompleted(completed: true) }", json!({})).await.ok();
    app.gql(Some(&alice.token), "mutation { clearCompletedTodos }", json!({})).await.ok();
    let own = app.create_todo(&bob.token, json!({"title": "bob's"})).await;
    // Bob's own event comes after all of Alice's writes committed; had any of
    // hers leaked, it would arrive first.
    let (kind, todo_id, _) = event(&bob_ws.next_payload("b").await);
    assert_eq!((kind.as_str(), todo_id.as_str()), ("CREATED", own["id"].as_str().expect("id")));
    assert!(bob_ws.next_within(Duration::from_millis(300)).await.is_none());
}

/// The subscription ends with UNAUTHENTICATED, then `complete`.
async fn expect_unauthenticated_end(ws: &mut WsClient, id: &str) {
    let payload = ws.next_payload(id).await;
    assert_eq!(payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{payload}");
    ws.expect_complete(id).await;
}

async fn a_revoked_token_ends_the_subscription(app: TestApp) {
    let user = app.signup("revoke@example.com").await;
    let mut ws = WsClient::with_token(app.addr, &user.token).await;
    ws.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    app.gql(Some(&user.token), "mutation { logoutEverywhere }", json!({})).await.ok();
    expect_unauthenticated_end(&mut ws, "1").await;
    // A new subscription on the same (revoked) connection is refused too:
    // the socket is closed with 4403 Forbidden.
    ws.subscribe("2", TODO_EVENTS).await;
    match ws.next().await {
        Incoming::Closed(code) => assert_eq!(code, 4403),
        other => panic!("{other:?}"),
    }

    // changePassword revokes as well.
    let fresh = app
        .gql(
            None,
            "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }",
            json!({"e": user.email, "p": user.password}),
        )
        .await
        .ok()["login"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    app.wait_for_open_subscriptions(0).await;
    let mut ws = WsClient::with_token(app.addr, &fresh).await;
    ws.subscribe("3", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    app.gql(
        Some(&fresh),
        "mutation($input: ChangePasswordInput!) { changePassword(input: $input) { token } }",
        json!({"input": {"currentPassword": user.password, "newPassword": "another password"}}),
    )
    .await
    .ok();
    expect_unauthenticated_end(&mut ws, "3").await;
}

async fn deleting_the_account_ends_the_subscription(app: TestApp) {
    let user = app.signup("leaving@example.com").await;
    let todo = app.create_todo(&user.token, json!({"title": "goes too"})).await;
    let mut ws = WsClient::with_token(app.addr, &user.token).await;
    ws.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    app.gql(
        Some(&user.token),
        "mutation($p: String!) { deleteAccount(password: $p) }",
        json!({"p": user.password}),
    )
    .await
    .ok();
    let (kind, todo_id, _) = event(&ws.next_payload("1").await);
    assert_eq!((kind.as_str(), todo_id.as_str()), ("DELETED", todo["id"].as_str().expect("id")));
    expect_unauthenticated_end(&mut ws, "1").await;
}

async fn an_expiring_token_ends_the_subscription(app: TestApp) {
    let user = app.signup("expiring@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": user.id, "email": user.email, "iat": now, "exp": now + 2, "ver": 0});
    let short = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token");
    let mut ws = WsClient::with_token(app.addr, &short).await;
    ws.subscribe("1", TODO_EVENTS).await;
    let started = std::time::Instant::now();
    expect_unauthenticated_end(&mut ws, "1").await;
    assert!(started.elapsed() < Duration::from_secs(4), "ended after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_subscriptions_are_capped_per_user_and_per_instance() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| {
            config.subscriptions_per_user = 2;
            config.subscriptions_per_instance = 3;
        })
        .await
        else {
            continue;
        };
        let alice = app.signup("cap-a@example.com").await;
        let bob = app.signup("cap-b@example.com").await;
        let mut ws = WsClient::with_token(app.addr, &alice.token).await;
        for id in ["1", "2", "3"] {
            ws.subscribe(id, TODO_EVENTS).await;
        }
        // The three start concurrently: whichever comes third is refused.
        let Incoming::Message(refused) = ws.next().await else { panic!("socket closed") };
        let refused_id = refused["id"].as_str().expect("id").to_owned();
        assert_eq!(
            refused["payload"]["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
            "{refused}"
        );
        ws.expect_complete(&refused_id).await;
        let live_id = if refused_id == "1" { "2" } else { "1" };
        let mut bob_ws = WsClient::with_token(app.addr, &bob.token).await;
        bob_ws.subscribe("1", TODO_EVENTS).await;
        bob_ws.subscribe("2", TODO_EVENTS).await;
        let refused = bob_ws.next_payload("2").await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
            "instance cap: {refused}"
        );
        bob_ws.expect_complete("2").await;
        // Closing a subscription frees its slot.
        ws.send(json!({"id": live_id, "type": "complete"})).await;
        app.wait_for_open_subscriptions(2).await;
        bob_ws.subscribe("3", TODO_EVENTS).await;
        app.wait_for_open_subscriptions(3).await;
        let own = app.create_todo(&bob.token, json!({"title": "heard twice"})).await;
        let mut heard_by = Vec::new();
        for _ in 0..2 {
            let Incoming::Message(message) = bob_ws.next().await else { panic!("socket closed") };
            let (kind, todo_id, _) = event(&message["payload"]);
            assert_eq!((kind.as_str(), todo_id.as_str()), ("CREATED", own["id"].as_str().expect("id")));
            heard_by.push(message["id"].as_str().expect("id").to_owned());
        }
        heard_by.sort();
        assert_eq!(heard_by, ["1", "3"]);
    }
}

async fn shutdown_closes_sockets_with_going_away(mut app: TestApp) {
    let user = app.signup("bye@example.com").await;
    let mut ws = WsClient::with_token(app.addr, &user.token).await;
    ws.subscribe("1", TODO_EVENTS).await;
    app.wait_for_open_subscriptions(1).await;
    app.begin_shutdown();
    // The subscription completes and the socket closes with 1001, promptly.
    let started = std::time::Instant::now();
    loop {
        match ws.next().await {
            Incoming::Message(message) => assert_eq!(message["type"], "complete", "{message}"),
            Incoming::Closed(code) => {
                assert_eq!(code, 1001);
                break;
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}
