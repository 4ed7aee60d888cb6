//! Small inputs that ask for big work, sent as an attacker would: each must
//! be refused in about the time it takes to read it, with the server's
//! memory flat and `/healthz` answering within a second throughout.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::TestApp;
use crate::ws::{Incoming, WsClient};

backend_tests!(
    a_fragment_bomb_is_refused_on_every_transport,
    a_fragment_bomb_in_a_mutation_writes_nothing,
    fragment_cycles_and_chains_are_refused_before_validation,
    huge_variables_are_refused,
    backtracking_search_terms_cost_a_scan,
);

/// `fragment F{n} on {on} { ...F{n-1} ×10 }`: about 100 bytes per level,
/// 10^levels selections once expanded.
fn fragment_bomb(operation: &str, on: &str, leaf: &str, levels: usize) -> String {
    let mut document = format!("{operation} ...F{levels} }} fragment F0 on {on} {{ {leaf} }}");
    for level in 1..=levels {
        let spreads = format!("...F{} ", level - 1).repeat(10);
        document.push_str(&format!(" fragment F{level} on {on} {{ {spreads}}}"));
    }
    document
}

/// The resident memory of this process (the server under test runs in it).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Probes `/healthz` every 50 ms until `stop`; returns the slowest answer.
async fn probe_health(app: &TestApp, stop: tokio::sync::watch::Receiver<bool>) -> Duration {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let mut slowest = Duration::ZERO;
    while !*stop.borrow() {
        let started = Instant::now();
        let status = client.get(app.url("/healthz")).send().await.map(|r| r.status().as_u16());
        assert_eq!(status.ok(), Some(200), "/healthz did not answer");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    slowest
}

/// Runs `attack` while probing `/healthz`; asserts the probe never waited a
/// second and the process grew by less than 64 MiB.
async fn under_attack<F: std::future::Future<Output = ()>>(app: &TestApp, attack: F) {
    let before = rss_bytes();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let probe = probe_health(app, stopped);
    let attack = async {
        tokio::time::timeout(Duration::from_secs(60), attack).await.expect("the attack was answered in time");
        let _ = stop.send(true);
    };
    let (slowest, ()) = tokio::join!(probe, attack);
    assert!(slowest < Duration::from_secs(1), "/healthz took {slowest:?} during the attack");
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "the process grew by {} MiB", grown >> 20);
}

fn assert_refused(body: &Value) {
    let code = body["errors"][0]["extensions"]["code"].as_str();
    assert_eq!(code, Some("GRAPHQL_VALIDATION_FAILED"), "{body}");
    assert!(body.get("data").is_none_or(Value::is_null), "{body}");
}

async fn a_fragment_bomb_is_refused_on_every_transport(app: TestApp) {
    let user = app.signup("bomber@example.com").await;
    // 1 KB of text; 10^9 selections expanded. Ten levels would be 10^10.
    let bomb = fragment_bomb("query {", "Query", "__typename", 9);
    assert!(bomb.len() < 1100, "{} bytes", bomb.len());
    under_attack(&app, async {
        let started = Instant::now();
        // POST, anonymous and signed in, several at once.
        let posts = (0..8).map(|i| {
            let token = (i % 2 == 0).then_some(user.token.as_str());
            app.gql(token, &bomb, json!({}))
        });
        for response in futures_util::future::join_all(posts).await {
            assert_refused(&response.0);
        }
        // GET, in the URL.
        let response = app
            .client
            .get(app.url("/graphql"))
            .query(&[("query", bomb.as_str())])
            .send()
            .await
            .expect("sent");
        assert_refused(&response.json::<Value>().await.expect("JSON"));
        // A batch of ten.
        let batch: Vec<Value> = (0..10).map(|_| json!({"query": bomb})).collect();
        let response = app.client.post(app.url("/graphql")).json(&batch).send().await.expect("sent");
        let responses: Vec<Value> = response.json().await.expect("JSON array");
        assert_eq!(responses.len(), 10);
        responses.iter().for_each(assert_refused);
        // A WebSocket `subscribe`, as a query and as a subscription.
        let mut socket = WsClient::with_token(app.addr, &user.token).await;
        socket.subscribe("q", &bomb).await;
        let subscription = fragment_bomb("subscription {", "Subscription", "todoEvents { kind }", 9);
        socket.subscribe("s", &subscription).await;
        // async-graphql answers a refused document with `next` (errors, no
        // data) and `complete`; `error` would do as well.
        let mut refused = std::collections::HashSet::new();
        let mut done = std::collections::HashSet::new();
        while done.len() < 2 {
            let Incoming::Message(message) = socket.next().await else { panic!("the socket closed") };
            let id = message["id"].as_str().expect("id").to_owned();
            match message["type"].as_str() {
                Some("next") => {
                    assert_refused(&message["payload"]);
                    refused.insert(id);
                }
                Some("error") => {
                    assert_eq!(message["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
                    refused.insert(id.clone());
                    done.insert(id);
                }
                Some("complete") => {
                    done.insert(id);
                }
                _ => panic!("unexpected {message}"),
            }
        }
        assert_eq!(refused.len(), 2, "both refused");
        socket.close().await;
        // Refusing costs a scan and a memoized walk: milliseconds, not the
        // minutes (and gigabytes) the expansion would take. Generous for a
        // debug build on a busy machine.
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(20), "refusing took {elapsed:?}");
    })
    .await;
    // The server still serves.
    app.gql(Some(&user.token), "{ me { email } }", json!({})).await.ok();
}

async fn a_fragment_bomb_in_a_mutation_writes_nothing(app: TestApp) {
    let user = app.signup("writer@example.com").await;
    let bomb = fragment_bomb("mutation { createTodo(input: {title: \"boom\"}) {", "Todo", "id", 9).replacen(
        "...F9 }",
        "...F9 } }",
        1,
    );
    under_attack(&app, async {
        assert_refused(&app.gql(Some(&user.token), &bomb, json!({})).await.0);
    })
    .await;
    assert_eq!(app.count_rows("SELECT count(*) FROM todos").await, 0, "nothing was written");
}

async fn fragment_cycles_and_chains_are_refused_before_validation(app: TestApp) {
    // A cycle: validation's expanding visitors would recurse forever.
    let cycle = "query { ...A } fragment A on Query { __typename ...B } fragment B on Query { ...A }";
    let response = app.gql(None, cycle, json!({})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
    assert!(response.message().is_some_and(|m| m.contains("within itself")), "{}", response.0);
    // A chain of 200 fragments, each spreading the next: shallow text, deep
    // execution.
    let mut chain = String::from("query { ...F0 }");
    for i in 0..200 {
        chain.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
    }
    chain.push_str(" fragment F200 on Query { __typename }");
    under_attack(&app, async {
        app.gql(None, &chain, json!({})).await.expect_code("GRAPHQL_VALIDATION_FAILED");
    })
    .await;
    // Many operations in one document all count toward the budget.
    let operations: String =
        (0..120).map(|i| format!("query Q{i} {{ {} }} ", "__typename ".repeat(45))).collect();
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": operations, "operationName": "Q0"}))
        .send()
        .await
        .expect("sent");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED", "{body}");
}

async fn huge_variables_are_refused(app: TestApp) {
    let user = app.signup("variables@example.com").await;
    let query = "{ me { id } }";
    // Within the body limit, over the variables limit: refused, whatever
    // the operation does with them.
    let ids: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let response = app.gql(Some(&user.token), query, json!({"ids": ids})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
    // Half a million values in 1 MiB: refused before parsing.
    let body = format!(r#"{{"query":"{{ __typename }}","variables":{{"x":[{}0]}}}}"#, "0,".repeat(500_000));
    under_attack(&app, async {
        let response = app.post_raw_json(body).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{body}");
    })
    .await;
    // Deeply nested JSON: refused by the JSON reader's depth limit, never a
    // stack overflow, on POST and over a WebSocket.
    let deep = format!(
        r#"{{"query":"{{ __typename }}","variables":{{"x":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let response = app.post_raw_json(deep).await;
    assert_eq!(response.status(), 400);
    let mut socket = WsClient::with_token(app.addr, &user.token).await;
    let deep_message = format!(
        r#"{{"id":"d","type":"subscribe","payload":{{"query":"{{ __typename }}","variables":{{"x":{}1{}}}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    socket.send_raw(deep_message).await;
    // Whatever the protocol makes of it (an error, or closing with 4400),
    // the server carries on.
    let _ = socket.next_within(Duration::from_secs(5)).await;
    app.gql(Some(&user.token), "{ me { id } }", json!({})).await.ok();
    // An honest request with variables still works.
    app.gql(Some(&user.token), query, json!({"ids": ["a", "b"]})).await.ok();
}

/// `LIKE '%aaa…ab%'` against descriptions of `aaa…a` backtracks at every
/// character: with 300 such todos, ten aliased `totalCount`s of a
/// 2,000-character term held the database for 22 s. Now the term is at
/// most 100 characters and matched as a plain substring.
async fn backtracking_search_terms_cost_a_scan(app: TestApp) {
    let user = app.signup("searcher@example.com").await;
    let creates: String = (0..30)
        .map(|i| format!("t{i}: createTodo(input: {{title: \"t\", description: $d}}) {{ id }} "))
        .collect();
    let create = format!("mutation($d: String) {{ {creates}}}");
    let batch: Vec<Value> =
        (0..10).map(|_| json!({"query": create, "variables": {"d": "a".repeat(2000)}})).collect();
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&user.token)
        .json(&batch)
        .send()
        .await
        .expect("sent");
    let responses: Vec<Value> = response.json().await.expect("JSON array");
    assert!(responses.iter().all(|r| r.get("errors").is_none()), "{responses:?}");
    let searches: String =
        (0..10).map(|i| format!("s{i}: todos(first: 1, filter: {{search: $s}}) {{ totalCount }} ")).collect();
    let search = format!("query($s: String) {{ {searches}}}");
    // The old limit's worst case is refused, and so is one character over.
    for term in [format!("{}b", "a".repeat(1999)), "a".repeat(101)] {
        let refused = app.gql(Some(&user.token), &search, json!({"s": term})).await;
        refused.expect_code("BAD_USER_INPUT");
        assert_eq!(refused.field(), Some("search"));
    }
    // The worst cases of the longest term allowed, for SQLite's `instr`
    // (`aaa…ab`) and PostgreSQL's Boyer-Moore-Horspool `strpos` (`baa…a`).
    under_attack(&app, async {
        for term in [format!("{}b", "a".repeat(99)), format!("b{}", "a".repeat(99))] {
            let started = Instant::now();
            let data = app.gql(Some(&user.token), &search, json!({"s": term})).await.ok();
            assert_eq!(data["s9"]["totalCount"], 0);
            // Milliseconds in fact; generous for a debug build on a busy machine.
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(5), "ten searches took {elapsed:?}");
        }
    })
    .await;
    let found = app.gql(Some(&user.token), &search, json!({"s": "A".repeat(100)})).await.ok();
    assert_eq!(found["s0"]["totalCount"], 300, "a term of the longest length still matches");
}

/// Opens a TCP connection to `app` from the loopback address `source`.
async fn connect_from(app: &TestApp, source: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("source address")).expect("bind");
    socket.connect(app.addr).await.expect("connect")
}

/// Whether the server closes `stream` (EOF or reset) within `wait`.
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0_u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An error response before closing is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_connections_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let Some(app) = TestApp::spawn_with(crate::helpers::Backend::Sqlite, |config| {
        config.connections.idle_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    under_attack(&app, async {
        // Says nothing at all.
        let mut silent = connect_from(&app, "127.0.0.1").await;
        // Starts a request and stops halfway through its headers.
        let mut slowloris = connect_from(&app, "127.0.0.1").await;
        slowloris.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("sent");
        // Far longer than the idle timeout; the point is that it ends.
        assert!(closed_within(&mut silent, Duration::from_secs(20)).await, "the silent connection is open");
        assert!(closed_within(&mut slowloris, Duration::from_secs(20)).await, "the slowloris is open");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let Some(app) = TestApp::spawn_with(crate::helpers::Backend::Sqlite, |config| {
        config.connections.max_per_address = 20;
    })
    .await
    else {
        return;
    };
    under_attack(&app, async {
        // The attacker holds its 20 from 127.0.0.2 (a loopback address of
        // its own); the 21st is closed at once.
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(connect_from(&app, "127.0.0.2").await);
        }
        let mut extra = connect_from(&app, "127.0.0.2").await;
        assert!(closed_within(&mut extra, Duration::from_secs(10)).await, "the 21st connection was kept");
        // Everyone else (the health probe runs from 127.0.0.1) is served.
        app.gql(None, "{ __typename }", json!({})).await.ok();
        // Closing frees the slots.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = connect_from(&app, "127.0.0.2").await;
            if !closed_within(&mut again, Duration::from_millis(300)).await {
                break;
            }
            assert!(Instant::now() < deadline, "slots were not freed");
        }
    })
    .await;
}

/// One client keeping many heavy requests in flight (each aliasing thirty
/// counts) must not make another client's query wait behind all of them:
/// clients queue for database connections behind their own queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_the_database_does_not_stall_another() {
    for backend in [crate::helpers::Backend::Sqlite, crate::helpers::Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| config.trusted_proxies = 1).await else {
            continue;
        };
        let attacker = app.signup("flooder@example.com").await;
        let victim = app.signup("bystander@example.com").await;
        for _ in 0..4 {
            let creates: String = (0..25)
                .map(|i| format!("t{i}: createTodo(input: {{title: \"todo {i}\"}}) {{ id }} "))
                .collect();
            app.gql(Some(&attacker.token), &format!("mutation {{ {creates} }}"), json!({})).await.ok();
        }
        let counts: String = (0..30).map(|i| format!("c{i}: todos(first: 1) {{ totalCount }} ")).collect();
        let heavy = format!("{{ {counts} }}");
        let send = |token: String, forwarded: &'static str, query: String| {
            let app = &app;
            async move {
                let started = Instant::now();
                let response = app
                    .client
                    .post(app.url("/graphql"))
                    .bearer_auth(token)
                    .header("x-forwarded-for", forwarded)
                    .json(&json!({"query": query}))
                    .send()
                    .await
                    .expect("sent");
                let body: Value = response.json().await.expect("JSON");
                assert!(body.get("errors").is_none(), "{body}");
                started.elapsed()
            }
        };
        let flood = futures_util::future::join_all((0..24).map(|_| {
            let batch = format!("[{}]", vec![json!({"query": heavy}).to_string(); 5].join(","));
            let app = &app;
            let token = attacker.token.clone();
            async move {
                let started = Instant::now();
                let response = app
                    .client
                    .post(app.url("/graphql"))
                    .bearer_auth(token)
                    .header("x-forwarded-for", "198.51.100.66")
                    .header("content-type", "application/json")
                    .body(batch)
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(response.status(), 200);
                started.elapsed()
            }
        }));
        let bystander = async {
            // Arrive once the flood is queued.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut slowest = Duration::ZERO;
            for _ in 0..3 {
                let took =
                    send(victim.token.clone(), "198.51.100.7", "{ todos(first: 1) { totalCount } }".into())
                        .await;
                slowest = slowest.max(took);
            }
            slowest
        };
        let (flood, slowest) = tokio::join!(flood, bystander);
        let mean = flood.iter().sum::<Duration>() / flood.len() as u32;
        // First come, first served, the bystander's query waited behind the
        // flood's thousands; with fair turns, behind a pool's worth.
        assert!(
            slowest * 4 < mean,
            "{backend:?}: the bystander took {slowest:?}; the flood's requests {mean:?}"
        );
    }
}
