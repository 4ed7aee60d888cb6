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

/// PostgreSQL: a request queued behind a pool that stays busy for longer than
/// the old 5 s pool wait gets its connection in the end. With a pool of one,
/// a create holds the connection while it waits for its owner's row, which
/// this test has locked for 7 s; a read sent meanwhile queues for the pool
/// and succeeds once the create is done. (The wait is bounded by the request
/// timeout; the old 5 s wait answered SERVICE_UNAVAILABLE here, as it did to
/// bursts on a busy machine while the database was perfectly healthy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_request_queued_behind_a_busy_pool_waits_past_5_s_and_succeeds() {
    const HOLD: std::time::Duration = std::time::Duration::from_secs(7);
    let Some(app) =
        TestApp::spawn_with(crate::helpers::Backend::Postgres, |c| c.database_pool_size = Some(1)).await
    else {
        return;
    };
    let user = app.signup("queued@example.com").await;
    // Authenticated once, so the account is cached and the queued read below
    // needs the pool only for its own query.
    app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();

    let (locker, connection) =
        tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    locker.batch_execute("BEGIN; SELECT 1 FROM users FOR UPDATE").await.expect("lock the users");

    let create = app.gql(
        Some(&user.token),
        "mutation($input: CreateTodoInput!) { createTodo(input: $input) { id } }",
        json!({"input": {"title": "held"}}),
    );
    let queued = async {
        // The create holds the pool's one connection once its backend waits
        // for the row lock.
        let waiting = "SELECT count(*) FROM pg_stat_activity \
                       WHERE datname = current_database() AND wait_event_type = 'Lock'";
        let looked = std::time::Instant::now();
        while app.count_rows(waiting).await == 0 {
            assert!(
                looked.elapsed() < std::time::Duration::from_secs(30),
                "the create never waited for the lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let sent = std::time::Instant::now();
        let release = async {
            tokio::time::sleep(HOLD).await;
            locker.batch_execute("COMMIT").await.expect("release the users");
        };
        let (read, ()) =
            tokio::join!(app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})), release);
        (read, sent.elapsed())
    };
    let (created, (read, waited)) = tokio::join!(create, queued);
    assert!(created.0["data"]["createTodo"]["id"].is_string(), "{}", created.0);
    assert_eq!(read.ok()["todos"]["totalCount"], 1);
    assert!(waited >= HOLD, "answered after {waited:?}, before the pool's connection was free");
    eprintln!("a read queued for the PostgreSQL pool for {waited:.2?} and succeeded");
}
