//! Races: parallel signups with one email, parallel writes.

use futures_util::future::join_all;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(parallel_signups_with_one_email_have_one_winner, parallel_creates_all_succeed);

async fn parallel_signups_with_one_email_have_one_winner(app: TestApp) {
    let attempts = (0..20).map(|i| {
        let app = &app;
        async move {
            app.gql(
                None,
                "mutation($input: SignupInput!) { signup(input: $input) { user { id } } }",
                json!({"input": {"email": if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" }, "password": format!("password {i}")}}),
            )
            .await
        }
    });
    let responses = join_all(attempts).await;
    let winners = responses.iter().filter(|r| r.0.get("errors").is_none()).count();
    assert_eq!(winners, 1, "{responses:?}");
    for response in responses.iter().filter(|r| r.0.get("errors").is_some()) {
        response.expect_code("CONFLICT");
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 1);
}

async fn parallel_creates_all_succeed(app: TestApp) {
    let user = app.signup("writer@example.com").await;
    let creates = (0..50).map(|i| {
        let app = &app;
        let token = user.token.clone();
        async move {
            app.gql(
                Some(&token),
                "mutation($input: CreateTodoInput!) { createTodo(input: $input) { id } }",
                json!({"input": {"title": format!("todo {i}")}}),
            )
            .await
        }
    });
    let responses = join_all(creates).await;
    for response in &responses {
        assert!(response.0.get("errors").is_none(), "{}", response.0);
    }
    let count = app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(count["todos"]["totalCount"], 50);
}

/// A burst of 256 concurrent creates on SQLite, where every write goes
/// through one writer connection: they queue and all succeed, however slow
/// the machine (a debug build on two busy cores once took more than the old
/// 5 s pool wait and answered SERVICE_UNAVAILABLE). Only the request timeout
/// (30 s) bounds the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_burst_of_256_writers_queues_and_succeeds() {
    const WRITERS: usize = 256;
    let Some(app) = TestApp::spawn(crate::helpers::Backend::Sqlite).await else { return };
    let app = std::sync::Arc::new(app);
    let user = app.signup("burst@example.com").await;
    let started = std::time::Instant::now();
    let creates: Vec<_> = (0..WRITERS)
        .map(|i| {
            let app = std::sync::Arc::clone(&app);
            let token = user.token.clone();
            // A client each: 256 connections to the server, not a shared pool.
            let client = reqwest::Client::new();
            tokio::spawn(async move {
                let body = client
                    .post(app.url("/graphql"))
                    .bearer_auth(token)
                    .json(&json!({
                        "query": "mutation($input: CreateTodoInput!) { createTodo(input: $input) { id } }",
                        "variables": {"input": {"title": format!("burst {i}")}},
                    }))
                    .send()
                    .await
                    .expect("request sent")
                    .text()
                    .await
                    .expect("body");
                serde_json::from_str::<serde_json::Value>(&body)
                    .unwrap_or_else(|_| panic!("not JSON: {body}"))
            })
        })
        .collect();
    let responses = join_all(creates).await;
    let elapsed = started.elapsed();
    let failed: Vec<_> = responses
        .into_iter()
        .map(|r| r.expect("task"))
        .filter(|r| r.get("errors").is_some() || !r["data"]["createTodo"]["id"].is_string())
        .collect();
    assert!(failed.is_empty(), "{} of {WRITERS} creates failed, e.g. {}", failed.len(), failed[0]);
    assert_eq!(app.count_rows("SELECT count(*) FROM todos").await, WRITERS as i64);
    eprintln!("{WRITERS} concurrent creates on SQLite in {elapsed:.2?}");
}
