//! Every password check is a login attempt, signups are limited per client,
//! the client is who the trusted proxies say, and bcrypt's cost can change
//! under a live database without telling anyone which emails exist.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, Gql, TestApp};

backend_tests!(
    wrong_current_passwords_are_limited_like_logins,
    a_stolen_token_cannot_guess_through_delete_account,
    a_changed_cost_rehashes_on_login_and_keeps_tokens,
    unknown_emails_cost_what_stored_hashes_cost,
);

/// The codes of every error in a response, in order.
fn codes(response: &Gql) -> Vec<String> {
    response.0["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["extensions"]["code"].as_str().expect("code").to_owned())
        .collect()
}

fn count(codes: &[String], code: &str) -> usize {
    codes.iter().filter(|c| *c == code).count()
}

async fn wrong_current_passwords_are_limited_like_logins(app: TestApp) {
    let user = app.signup("changer@example.com").await;
    // Three requests of ten aliases: thirty guesses, as the attacker.
    let mut all = Vec::new();
    for request in 0..3 {
        let fields: String = (0..10)
            .map(|i| {
                format!(
                    "c{i}: changePassword(input: {{currentPassword: \"guess {request}-{i}\", newPassword: \"new password!\"}}) {{ token }} "
                )
            })
            .collect();
        all.extend(codes(&app.gql(Some(&user.token), &format!("mutation {{ {fields} }}"), json!({})).await));
    }
    assert_eq!(count(&all, "UNAUTHENTICATED"), 10, "{all:?}");
    assert_eq!(count(&all, "RATE_LIMITED"), 20, "{all:?}");
    // The right password now waits too, and logins for the account as well.
    let change = "mutation($c: String!) { changePassword(input: {currentPassword: $c, newPassword: \"new password!\"}) { token } }";
    app.gql(Some(&user.token), change, json!({"c": user.password})).await.expect_code("RATE_LIMITED");
    let login = "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }";
    app.gql(None, login, json!({"e": user.email, "p": user.password})).await.expect_code("RATE_LIMITED");
    // The password did not change, and the token still works.
    app.gql(Some(&user.token), "{ me { email } }", json!({})).await.ok();
}

async fn a_stolen_token_cannot_guess_through_delete_account(app: TestApp) {
    let user = app.signup("deleter@example.com").await;
    let batch: Vec<Value> = (0..6)
        .map(|i| {
            json!({"query": format!(
                "mutation {{ a: deleteAccount(password: \"guess a{i}\") b: deleteAccount(password: \"guess b{i}\") }}"
            )})
        })
        .collect();
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&user.token)
        .json(&batch)
        .send()
        .await
        .expect("sent");
    let body: Value = response.json().await.expect("JSON");
    let all: Vec<String> =
        body.as_array().expect("batch").iter().flat_map(|result| codes(&Gql(result.clone()))).collect();
    assert_eq!(count(&all, "UNAUTHENTICATED"), 10, "{all:?}");
    assert_eq!(count(&all, "RATE_LIMITED"), 2, "{all:?}");
    let delete = "mutation($p: String!) { deleteAccount(password: $p) }";
    app.gql(Some(&user.token), delete, json!({"p": user.password})).await.expect_code("RATE_LIMITED");
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 1, "the account is still there");
}

/// The hash of `email` as stored.
async fn stored_cost(app: &TestApp, cost: u32) -> i64 {
    app.count_rows(&format!("SELECT count(*) FROM users WHERE password_hash LIKE '$2b$0{cost}$%'")).await
}

async fn a_changed_cost_rehashes_on_login_and_keeps_tokens(app: TestApp) {
    let user = app.signup("rehash@example.com").await;
    assert_eq!(stored_cost(&app, 4).await, 1);
    // The operator raises BCRYPT_COST and restarts.
    let raised = app.spawn_sharing(|config| config.bcrypt_cost = 5).await;
    let login = "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }";
    raised
        .gql(None, login, json!({"e": user.email, "p": "wrong password"}))
        .await
        .expect_code("UNAUTHENTICATED");
    assert_eq!(stored_cost(&app, 4).await, 1, "a failed login changes nothing");
    let data = raised.gql(None, login, json!({"e": user.email, "p": user.password})).await.ok();
    assert!(data["login"]["token"].is_string());
    assert_eq!(stored_cost(&app, 5).await, 1, "moved to the new cost");
    // Same password, so tokens issued before still work, and it still signs in.
    raised.gql(Some(&user.token), "{ me { email } }", json!({})).await.ok();
    raised.gql(None, login, json!({"e": user.email, "p": user.password})).await.ok();
    drop(raised);
}

/// The median of `samples` runs of `run`.
async fn median_time<F, Fut>(samples: usize, mut run: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        run().await;
        times.push(started.elapsed());
    }
    times.sort();
    times[samples / 2]
}

async fn unknown_emails_cost_what_stored_hashes_cost(app: TestApp) {
    // Every stored hash has cost 4; the operator then sets BCRYPT_COST=10
    // (64 times the work). A wrong password for a known email costs one cost-4
    // check; an unknown email must cost the same, not a cost-10 one.
    for i in 0..3 {
        app.signup(&format!("known{i}@example.com")).await;
    }
    let raised = app.spawn_sharing(|config| config.bcrypt_cost = 10).await;
    let login = "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }";
    let mut n = 0;
    let mut attempt = |email: String| {
        n += 1;
        let password = format!("wrong password {n}");
        let raised = &raised;
        async move {
            raised.gql(None, login, json!({"e": email, "p": password})).await.expect_code("UNAUTHENTICATED");
        }
    };
    // Warm up (the dummy hash is made on first use).
    attempt("nobody@example.com".into()).await;
    let known = median_time(5, || attempt("known0@example.com".into())).await;
    let unknown = median_time(5, || attempt(format!("nobody{}@example.com", rand::random::<u32>()))).await;
    // Equal work; a cost-10 dummy would be ~64 times slower. The factor 8
    // leaves room for a busy machine.
    assert!(unknown < known * 8 + Duration::from_millis(50), "unknown {unknown:?}, known {known:?}");
    drop(raised);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_are_limited_per_client_address() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) =
            TestApp::spawn_with(backend, |config| config.login_limits.signups_per_address = 3).await
        else {
            continue;
        };
        let signup =
            "mutation($e: String!) { signup(input: {email: $e, password: \"long enough\"}) { token } }";
        // Invalid input costs nothing and does not count.
        app.gql(None, signup, json!({"e": "not an email"})).await.expect_code("BAD_USER_INPUT");
        for i in 0..3 {
            app.gql(None, signup, json!({"e": format!("s{i}@example.com")})).await.ok();
        }
        let refused = app.gql(None, signup, json!({"e": "s3@example.com"})).await;
        refused.expect_code("RATE_LIMITED");
        let retry = refused.0["errors"][0]["extensions"]["retryAfter"].as_u64().expect("retryAfter");
        assert!((3000..=3600).contains(&retry), "retryAfter {retry}");
        // A taken email counts too (it cost a hash): still refused.
        app.gql(None, signup, json!({"e": "s0@example.com"})).await.expect_code("RATE_LIMITED");
        assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 3, "nothing written when refused");
        // Logging in is a different limit.
        let login =
            "mutation { login(input: {email: \"s0@example.com\", password: \"long enough\"}) { token } }";
        app.gql(None, login, json!({})).await.ok();
    }
    // 0 turns the limit off.
    let Some(app) =
        TestApp::spawn_with(Backend::Sqlite, |config| config.login_limits.signups_per_address = 0).await
    else {
        return;
    };
    for i in 0..5 {
        app.signup(&format!("free{i}@example.com")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_the_address_the_trusted_proxy_saw() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| {
            config.trusted_proxies = 1;
            config.login_limits.per_address = 3;
        })
        .await
        else {
            continue;
        };
        let login = |forwarded: String, email: String| {
            let app = &app;
            async move {
                let response = app
                    .client
                    .post(app.url("/graphql"))
                    .header("x-forwarded-for", forwarded)
                    .json(&json!({"query": format!(
                        "mutation {{ login(input: {{email: \"{email}\", password: \"some guess\"}}) {{ token }} }}"
                    )}))
                    .send()
                    .await
                    .expect("sent");
                Gql(response.json().await.expect("JSON"))
            }
        };
        // The attacker rotates the entry it controls (the left-most); the
        // proxy's own entry (right-most) stays the same: one client.
        for i in 0..3 {
            login(format!("10.9.9.{i}, 203.0.113.5"), format!("v{i}@example.com"))
                .await
                .expect_code("UNAUTHENTICATED");
        }
        login("10.9.9.77, 203.0.113.5".into(), "v9@example.com".into()).await.expect_code("RATE_LIMITED");
        // Another client behind the same proxy is unaffected.
        login("203.0.113.6".into(), "v9@example.com".into()).await.expect_code("UNAUTHENTICATED");
        // Rotating addresses within one IPv6 /64 is still one client.
        for i in 1..=3 {
            login(format!("2001:db8:7:7::{i:x}"), format!("w{i}@example.com"))
                .await
                .expect_code("UNAUTHENTICATED");
        }
        login("2001:db8:7:7:ffff::1".into(), "w9@example.com".into()).await.expect_code("RATE_LIMITED");
        login("2001:db8:7:8::1".into(), "w9@example.com".into()).await.expect_code("UNAUTHENTICATED");
    }
}

/// Concurrent attempts on different emails from one address: the address's
/// count must be read and written atomically, on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_slip_past_the_address_limit() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| config.login_limits.per_address = 5).await
        else {
            continue;
        };
        let guesses = (0..40).map(|i| {
            let app = &app;
            async move {
                let query = format!(
                    "mutation {{ login(input: {{email: \"race{i}@example.com\", password: \"some guess\"}}) {{ token }} }}"
                );
                app.gql(None, &query, json!({})).await.code().map(str::to_owned)
            }
        });
        let codes: Vec<String> =
            futures_util::future::join_all(guesses).await.into_iter().flatten().collect();
        assert_eq!(count(&codes, "UNAUTHENTICATED"), 5, "{backend:?}: {codes:?}");
        assert_eq!(count(&codes, "RATE_LIMITED"), 35, "{backend:?}: {codes:?}");
    }
}

/// One client firing logins cannot make another client's login wait for
/// all of them: each client queues behind itself for the bcrypt workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_from_one_client_does_not_stall_another() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| {
            config.trusted_proxies = 1;
            config.bcrypt_concurrency = 1;
            // Each hash clearly costlier than the database work around it.
            config.bcrypt_cost = 8;
            config.login_limits.per_address = 1000;
        })
        .await
        else {
            continue;
        };
        let victim = app.signup("victim@example.com").await;
        let login = |forwarded: &'static str, email: String, password: String| {
            let app = &app;
            async move {
                let response = app
                    .client
                    .post(app.url("/graphql"))
                    .header("x-forwarded-for", forwarded)
                    .json(&json!({
                        "query": "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }",
                        "variables": {"e": email, "p": password},
                    }))
                    .send()
                    .await
                    .expect("sent");
                Gql(response.json().await.expect("JSON"))
            }
        };
        let started = Instant::now();
        let storm = futures_util::future::join_all(
            (0..30).map(|i| login("198.51.100.1", format!("storm{i}@example.com"), "some guess".into())),
        );
        let victim_login = async {
            // Arrive once the storm is queued.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let started = Instant::now();
            login("198.51.100.2", victim.email.clone(), victim.password.clone()).await.ok();
            started.elapsed()
        };
        let (storm, waited) = tokio::join!(storm, victim_login);
        let storm_took = started.elapsed();
        assert!(storm.iter().all(|r| r.code() == Some("UNAUTHENTICATED")));
        // First come, first served, the victim would wait for most of the
        // storm's 30 hashes; sharing fairly, for about one of them.
        assert!(
            waited * 4 < storm_took,
            "{backend:?}: the victim waited {waited:?} of the storm's {storm_took:?}"
        );
    }
}
