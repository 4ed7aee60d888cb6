//! A bounded load test: a few thousand mixed requests over 256 connections
//! (lists, creates, failing logins) against the real server on each backend.
//! No unexpected error is allowed, and every todo written is readable after.
//! `LOAD_REQUESTS` (default 3000) sets the size.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/postgres.rs"]
mod postgres;
#[path = "api/ws.rs"]
#[allow(dead_code)]
mod ws;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use helpers::{Backend, TestApp};
use serde_json::{Value, json};

const CONNECTIONS: usize = 256;
const USERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_over_256_connections() {
    let total: usize = std::env::var("LOAD_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::spawn(backend).await else { continue };
        let app = Arc::new(app);
        let mut accounts = Vec::new();
        for i in 0..USERS {
            accounts.push(app.signup(&format!("load{i}@example.com")).await);
        }
        let accounts = Arc::new(accounts);
        let next = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
        let unexpected = Arc::new(Mutex::new(Vec::<String>::new()));
        let started = Instant::now();
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (app, accounts, next) = (Arc::clone(&app), Arc::clone(&accounts), Arc::clone(&next));
                let (created, unexpected) = (Arc::clone(&created), Arc::clone(&unexpected));
                // One client per worker: 256 connections, not a shared pool.
                let client = reqwest::Client::new();
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            break;
                        }
                        let user = n % USERS;
                        let account = &accounts[user];
                        let (token, query, variables, allowed): (Option<&str>, &str, Value, &[&str]) = match n % 20 {
                            0..=11 => (
                                Some(&account.token),
                                "{ todos(first: 20) { edges { node { id title completed createdAt } } pageInfo { hasNextPage endCursor } } }",
                                json!({}),
                                &[],
                            ),
                            12..=16 => (
                                Some(&account.token),
                                "mutation($t: String!) { createTodo(input: {title: $t}) { id } }",
                                json!({"t": format!("load {n}")}),
                                &[],
                            ),
                            _ => (
                                None,
                                "mutation($e: String!) { login(input: {email: $e, password: \"not the password\"}) { token } }",
                                json!({"e": account.email}),
                                &["UNAUTHENTICATED", "RATE_LIMITED"],
                            ),
                        };
                        let mut request =
                            client.post(app.url("/graphql")).json(&json!({"query": query, "variables": variables}));
                        if let Some(token) = token {
                            request = request.bearer_auth(token);
                        }
                        let outcome = match request.send().await {
                            Err(error) => Err(format!("request {n}: {error}")),
                            Ok(response) if response.status() != 200 => Err(format!("request {n}: HTTP {}", response.status())),
                            Ok(response) => {
                                let body = response.text().await.unwrap_or_default();
                                ws::assert_no_leak(&body);
                                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                                match body["errors"][0]["extensions"]["code"].as_str() {
                                    Some(code) if allowed.contains(&code) => Ok(body),
                                    Some(code) => Err(format!("request {n}: unexpected {code}: {body}")),
                                    None if body["data"].is_object() => Ok(body),
                                    None => Err(format!("request {n}: no data: {body}")),
                                }
                            }
                        };
                        match outcome {
                            Ok(body) => {
                                if let Some(id) = body["data"]["createTodo"]["id"].as_str() {
                                    created.lock().expect("lock").push((user, id.to_owned()));
                                }
                            }
                            Err(message) => unexpected.lock().expect("lock").push(message),
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let elapsed = started.elapsed();
        let unexpected = unexpected.lock().expect("lock").clone();
        assert!(
            unexpected.is_empty(),
            "{backend:?}: {} unexpected errors, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(5)]
        );

        // Every todo written is there, for its owner.
        let created = created.lock().expect("lock").clone();
        for (user, account) in accounts.iter().enumerate() {
            let mut seen = HashSet::new();
            let mut after: Option<String> = None;
            loop {
                let page = app
                    .gql(
                        Some(&account.token),
                        "query($after: String) { todos(first: 100, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } }",
                        json!({"after": after}),
                    )
                    .await
                    .ok();
                for node in page["todos"]["nodes"].as_array().expect("nodes") {
                    seen.insert(node["id"].as_str().expect("id").to_owned());
                }
                if page["todos"]["pageInfo"]["hasNextPage"] != true {
                    break;
                }
                after = page["todos"]["pageInfo"]["endCursor"].as_str().map(str::to_owned);
            }
            let mine: HashSet<String> =
                created.iter().filter(|(u, _)| *u == user).map(|(_, id)| id.clone()).collect();
            assert_eq!(seen, mine, "{backend:?}: user {user}'s todos differ from what was written");
        }
        eprintln!(
            "load test ({backend:?}): {total} requests over {CONNECTIONS} connections in {elapsed:.2?} ({:.0} req/s, debug build), {} todos written and read back",
            total as f64 / elapsed.as_secs_f64(),
            created.len()
        );
    }
}
