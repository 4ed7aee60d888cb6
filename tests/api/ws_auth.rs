//! Every operation on a WebSocket is authenticated when it starts: a socket
//! opened with a token that was revoked, whose account was deleted, or that
//! expired since, runs nothing more (the socket is closed with 4403).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Account, TestApp};
use crate::ws::{Incoming, Protocol, WsClient};

const ME: &str = "{ me { id email } }";
const CREATE: &str = "mutation { createTodo(input: {title: \"written by a stale socket\"}) { id } }";

mod revoked {
    use super::*;
    crate::backend_tests!(
        logout_everywhere_closes_earlier_sockets,
        change_password_closes_earlier_sockets,
        delete_account_closes_earlier_sockets,
    );
}

mod addressed {
    use super::*;
    fn few_logins_per_address(config: &mut todoql::Config) {
        config.login_limits.per_address = 5;
    }
    crate::backend_tests_with!(few_logins_per_address; logins_over_a_socket_count_per_client_address);
}

mod expiring {
    use super::*;
    fn short_tokens(config: &mut todoql::Config) {
        config.jwt_ttl = Duration::from_secs(4);
    }
    crate::backend_tests_with!(short_tokens; an_expired_token_closes_its_socket);
}

/// Sockets opened with `user`'s token, on both protocols, that answer `{ me }`.
async fn open_sockets(app: &TestApp, user: &Account) -> Vec<WsClient> {
    let mut sockets = Vec::new();
    for protocol in [Protocol::Modern, Protocol::Modern, Protocol::Legacy, Protocol::Legacy] {
        let payload = json!({"Authorization": format!("Bearer {}", user.token)});
        let mut ws = WsClient::connect_with(app.addr, protocol, payload).await.expect("accepted");
        // The socket works while the token is good.
        ws.subscribe("before", ME).await;
        assert_eq!(ws.next_payload("before").await["data"]["me"]["id"], user.id.as_str());
        ws.expect_complete("before").await;
        sockets.push(ws);
    }
    sockets
}

/// Each socket gets a `{ me }` or a `createTodo`: every one is closed with
/// 4403 without an answer, and nothing was written.
async fn expect_refused(app: &TestApp, sockets: Vec<WsClient>) {
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let query = if i % 2 == 0 { ME } else { CREATE };
        match ws.run_once("after", query).await {
            Incoming::Closed(code) => assert_eq!(code, 4403, "{query}"),
            Incoming::Message(message) => panic!("{query} on a stale socket answered {message}"),
        }
    }
    let written =
        app.count_rows("SELECT count(*) FROM todos WHERE title = 'written by a stale socket'").await;
    assert_eq!(written, 0, "a refused createTodo wrote");
}

async fn logout_everywhere_closes_earlier_sockets(app: TestApp) {
    let user = app.signup("ws-logout@example.com").await;
    let sockets = open_sockets(&app, &user).await;
    app.gql(Some(&user.token), "mutation { logoutEverywhere }", json!({})).await.ok();
    expect_refused(&app, sockets).await;
    // A socket opened with a token issued since works.
    let fresh = login(&app, &user, &user.password).await;
    let mut ws = WsClient::with_token(app.addr, &fresh).await;
    ws.subscribe("1", ME).await;
    assert_eq!(ws.next_payload("1").await["data"]["me"]["id"], user.id.as_str());
}

async fn change_password_closes_earlier_sockets(app: TestApp) {
    let user = app.signup("ws-password@example.com").await;
    let sockets = open_sockets(&app, &user).await;
    app.gql(
        Some(&user.token),
        "mutation($input: ChangePasswordInput!) { changePassword(input: $input) { token } }",
        json!({"input": {"currentPassword": user.password, "newPassword": "a brand new password"}}),
    )
    .await
    .ok();
    expect_refused(&app, sockets).await;
}

async fn delete_account_closes_earlier_sockets(app: TestApp) {
    let user = app.signup("ws-delete@example.com").await;
    let sockets = open_sockets(&app, &user).await;
    app.gql(
        Some(&user.token),
        "mutation($p: String!) { deleteAccount(password: $p) }",
        json!({"p": user.password}),
    )
    .await
    .ok();
    expect_refused(&app, sockets).await;
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
}

async fn an_expired_token_closes_its_socket(app: TestApp) {
    let user = app.signup("ws-expiry@example.com").await;
    let sockets = open_sockets(&app, &user).await;
    // Wait until the token is past its `exp` (a wall-clock condition: there
    // is nothing else to observe).
    let exp = token_exp(&user.token);
    while chrono::Utc::now().timestamp() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Over HTTP the token is refused now…
    app.gql(Some(&user.token), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    // …and so is every operation on the sockets it opened.
    expect_refused(&app, sockets).await;
}

/// The `exp` claim of a token the server issued.
fn token_exp(token: &str) -> i64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["exp"].as_i64().expect("exp")
}

async fn login(app: &TestApp, user: &Account, password: &str) -> String {
    app.gql(
        None,
        "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }",
        json!({"e": user.email, "p": password}),
    )
    .await
    .ok()["login"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// Failed logins for ever new emails over one socket: past the per-address
/// limit they are RATE_LIMITED, as over HTTP, and HTTP from the same
/// address shares the count.
async fn logins_over_a_socket_count_per_client_address(app: TestApp) {
    let user = app.signup("ws-logins@example.com").await;
    let mut ws = WsClient::with_token(app.addr, &user.token).await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let id = format!("login{i}");
        let query = format!(
            "mutation {{ login(input: {{email: \"nobody{i}@example.com\", password: \"wrong password\"}}) {{ token }} }}"
        );
        ws.subscribe(&id, &query).await;
        let payload = ws.next_payload(&id).await;
        ws.expect_complete(&id).await;
        codes.push(payload["errors"][0]["extensions"]["code"].as_str().expect("code").to_owned());
    }
    let expected: Vec<&str> = [["UNAUTHENTICATED"; 5].as_slice(), ["RATE_LIMITED"; 3].as_slice()].concat();
    assert_eq!(codes, expected);
    // The address is the same one HTTP sees.
    app.gql(
        None,
        "mutation { login(input: {email: \"over-http@example.com\", password: \"wrong password\"}) { token } }",
        json!({}),
    )
    .await
    .expect_code("RATE_LIMITED");
}
