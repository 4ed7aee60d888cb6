//! `/metrics` and request ids.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::TestApp;
use crate::ws::{TODO_EVENTS, WsClient};

backend_tests!(request_ids_are_echoed_or_made, metrics_move_after_known_requests);

async fn request_ids_are_echoed_or_made(app: TestApp) {
    let echoed = app
        .client
        .post(app.url("/graphql"))
        .header("x-request-id", "trace-me-42")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(echoed.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-42"));
    let made = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .expect("sent");
    let id = made.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("an id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("text").starts_with("text/plain"));
    response.text().await.expect("text")
}

/// The value of the sample `name{labels}` (exact text), or 0.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_move_after_known_requests(app: TestApp) {
    let user = app.signup("metrics@example.com").await;
    let before = scrape(&app).await;
    for _ in 0..3 {
        app.gql(Some(&user.token), "query Me { me { email } }", json!({})).await.ok();
    }
    app.gql(None, "query Me { me { email } }", json!({})).await.expect_code("UNAUTHENTICATED");
    for _ in 0..11 {
        app.gql(None, "mutation Guess { login(input: {email: \"metrics@example.com\", password: \"nope nope\"}) { token } }", json!({}))
            .await;
    }
    let mut ws = WsClient::with_token(app.addr, &user.token).await;
    ws.subscribe("1", TODO_EVENTS).await;
    // Polls /metrics until the gauge reads 1; panics if it never does.
    app.wait_for_open_subscriptions(1).await;
    let after = scrape(&app).await;

    let ok = r#"todoql_graphql_requests_total{operation="Me",outcome="ok"}"#;
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{after}");
    let denied = r#"todoql_graphql_requests_total{operation="Me",outcome="UNAUTHENTICATED"}"#;
    assert_eq!(sample(&after, denied) - sample(&before, denied), 1.0);
    let count = r#"todoql_graphql_request_duration_seconds_count{operation="Me"}"#;
    assert_eq!(sample(&after, count) - sample(&before, count), 4.0);
    assert_eq!(
        sample(&after, "todoql_logins_refused_total") - sample(&before, "todoql_logins_refused_total"),
        1.0
    );
    assert_eq!(sample(&after, "todoql_subscriptions_open"), 1.0);
    assert!(sample(&after, "todoql_bcrypt_queue_wait_seconds_total") >= 0.0);
    assert!(after.contains("todoql_db_pool_connections{pool="), "{after}");
    assert!(after.contains("todoql_db_pool_size{pool="));
    assert!(after.contains("todoql_db_pool_waits_total{pool="));

    // Operation names cannot blow up the number of series.
    for i in 0..120 {
        app.gql(None, &format!("query Op{i} {{ __typename }}"), json!({})).await.ok();
    }
    let flooded = scrape(&app).await;
    let series = flooded.lines().filter(|l| l.starts_with("todoql_graphql_requests_total{")).count();
    assert!(series <= 100 + 10, "{series} series");
    assert!(flooded.contains(r#"operation="other""#));
    ws.close().await;
}
