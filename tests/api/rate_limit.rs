//! Login rate limiting: per email, per client address, aliases and batches.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, Gql, TestApp};

backend_tests!(
    ten_failures_lock_an_email,
    aliased_logins_count_one_by_one,
    batched_logins_count_one_by_one,
    a_success_clears_the_email_count,
);

const LOGIN: &str =
    "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { token } }";

async fn login(app: &TestApp, email: &str, password: &str) -> Gql {
    app.gql(None, LOGIN, json!({"e": email, "p": password})).await
}

async fn ten_failures_lock_an_email(app: TestApp) {
    let user = app.signup("target@example.com").await;
    for _ in 0..10 {
        login(&app, &user.email, "wrong password").await.expect_code("UNAUTHENTICATED");
    }
    let refused = login(&app, &user.email, "wrong password").await;
    refused.expect_code("RATE_LIMITED");
    let retry = refused.0["errors"][0]["extensions"]["retryAfter"].as_u64().expect("retryAfter");
    assert!((1..=900).contains(&retry), "retryAfter {retry}");
    // Even the right password waits: guessing must not be able to tell.
    login(&app, &user.email, &user.password).await.expect_code("RATE_LIMITED");
    // The case of the email does not matter.
    login(&app, "TARGET@example.com", &user.password).await.expect_code("RATE_LIMITED");
    // Other accounts are unaffected.
    let other = app.signup("bystander@example.com").await;
    login(&app, &other.email, &other.password).await.ok();
}

async fn aliased_logins_count_one_by_one(app: TestApp) {
    let user = app.signup("aliased@example.com").await;
    let fields: String = (0..12)
        .map(|i| {
            format!("a{i}: login(input: {{email: \"{}\", password: \"guess {i}\"}}) {{ token }} ", user.email)
        })
        .collect();
    let response = app.gql(None, &format!("mutation {{ {fields} }}"), json!({})).await;
    let codes: Vec<&str> = response.0["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["extensions"]["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == "UNAUTHENTICATED").count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == "RATE_LIMITED").count(), 2, "{codes:?}");
}

async fn batched_logins_count_one_by_one(app: TestApp) {
    let user = app.signup("batched@example.com").await;
    let batch: Vec<Value> = (0..6)
        .map(|i| {
            json!({"query": format!(
                "mutation {{ a: login(input: {{email: \"{0}\", password: \"guess a{i}\"}}) {{ token }} b: login(input: {{email: \"{0}\", password: \"guess b{i}\"}}) {{ token }} }}",
                user.email
            )})
        })
        .collect();
    let response = app.client.post(app.url("/graphql")).json(&batch).send().await.expect("sent");
    let body: Value = response.json().await.expect("json");
    let mut codes = Vec::new();
    for result in body.as_array().expect("batch") {
        for error in result["errors"].as_array().expect("errors") {
            codes.push(error["extensions"]["code"].as_str().expect("code").to_owned());
        }
    }
    assert_eq!(codes.len(), 12);
    assert_eq!(codes.iter().filter(|c| *c == "UNAUTHENTICATED").count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "RATE_LIMITED").count(), 2, "{codes:?}");
}

async fn a_success_clears_the_email_count(app: TestApp) {
    let user = app.signup("forgetful@example.com").await;
    for _ in 0..9 {
        login(&app, &user.email, "wrong password").await.expect_code("UNAUTHENTICATED");
    }
    login(&app, &user.email, &user.password).await.ok();
    for _ in 0..10 {
        login(&app, &user.email, "wrong again").await.expect_code("UNAUTHENTICATED");
    }
    login(&app, &user.email, "wrong again").await.expect_code("RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_limited_per_client_address_and_a_success_does_not_reset_them() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| config.login_limits.per_address = 5).await
        else {
            continue;
        };
        let own = app.signup("mine@example.com").await;
        for i in 0..4 {
            login(&app, &format!("victim{i}@example.com"), "guess").await.expect_code("UNAUTHENTICATED");
        }
        // The attacker's own successful login does not wipe the slate.
        login(&app, &own.email, &own.password).await.ok();
        login(&app, "victim4@example.com", "guess").await.expect_code("UNAUTHENTICATED");
        login(&app, "victim5@example.com", "guess").await.expect_code("RATE_LIMITED");
        login(&app, &own.email, &own.password).await.expect_code("RATE_LIMITED");
    }
}
