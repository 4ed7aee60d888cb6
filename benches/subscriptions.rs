//! Subscription benchmark: memory of idle subscriptions and events/s delivered.
//!
//! `cargo bench --bench subscriptions` starts the release todoql binary on a
//! temporary SQLite file (or on `BENCH_DATABASE_URL` for PostgreSQL, with
//! `JWT_SECRET` set), then
//! 1. opens `IDLE` WebSocket connections with one `todoEvents` subscription
//!    each and reports the server's resident memory per subscription;
//! 2. keeps `FANOUT` subscribers on one user and measures how many events
//!    per second reach them while a writer toggles `setAllTodosCompleted` over
//!    `TODOS` todos (each mutation announces `TODOS` events).
//!
//! Sizes: `BENCH_IDLE` (10000), `BENCH_FANOUT` (100), `BENCH_SECONDS` (5).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TODOS: usize = 50;
const SUBSCRIPTION: &str = r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { todoEvents { kind todoId todo { id completed } } }"}}"#;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(idle: usize) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_todoql"));
    command
        .env("DATABASE_URL", &database_url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("BCRYPT_COST", "4")
        // Seeding signs up more accounts from one address than a real client would.
        .env("SIGNUP_MAX_PER_ADDRESS", "0")
        .env("MAX_SUBSCRIPTIONS", (idle + 1000).to_string())
        .env("MAX_SUBSCRIPTIONS_PER_USER", "100000")
        // Every benchmark socket comes from 127.0.0.1.
        .env("MAX_SUBSCRIPTIONS_PER_ADDRESS", "0")
        .env("MAX_WEBSOCKETS_PER_ADDRESS", "0")
        .env("MAX_CONNECTIONS_PER_ADDRESS", "0")
        .env("MAX_CONNECTIONS", (idle + 1000).to_string())
        .env("RUST_LOG", "warn,todoql::app=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("todoql starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/graphql").to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("server address").parse().expect("address");
    Server { child, addr, _dir: dir }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn gql(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request =
        client.post(format!("http://{addr}/graphql")).json(&json!({"query": query, "variables": variables}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("sent").json().await.expect("json")
}

async fn signup(client: &reqwest::Client, addr: SocketAddr, email: &str) -> String {
    let response = gql(
        client,
        addr,
        None,
        "mutation($e: String!) { signup(input: {email: $e, password: \"benchmark1\"}) { token } }",
        json!({"e": email}),
    )
    .await;
    response["data"]["signup"]["token"].as_str().expect("token").to_owned()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected, acknowledged socket with one live subscription.
async fn subscriber(addr: SocketAddr, token: &str) -> Socket {
    let mut request = format!("ws://{addr}/graphql").into_client_request().expect("request");
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    socket.send(Message::Text(init.to_string().into())).await.expect("init");
    let ack = socket.next().await.expect("ack").expect("ack");
    assert!(ack.to_text().unwrap_or("").contains("connection_ack"), "{ack:?}");
    socket.send(Message::Text(SUBSCRIPTION.into())).await.expect("subscribe");
    socket
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let idle = env_number("BENCH_IDLE", 10_000);
    let fanout = env_number("BENCH_FANOUT", 100);
    let seconds = env_number("BENCH_SECONDS", 5) as u64;
    let server = start_server(idle);
    let addr = server.addr;
    let pid = server.child.id();
    let client = reqwest::Client::new();
    println!(
        "todoql subscription benchmark ({} )",
        std::env::var("BENCH_DATABASE_URL").map_or("SQLite", |_| "PostgreSQL")
    );

    // 1. Idle subscriptions: 100 users, `idle` connections.
    let users: Vec<String> = {
        let mut tokens = Vec::new();
        for i in 0..100 {
            tokens.push(signup(&client, addr, &format!("idle{i}@bench.test")).await);
        }
        tokens
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(idle);
    for chunk in (0..idle).collect::<Vec<_>>().chunks(250) {
        let opened =
            futures_util::future::join_all(chunk.iter().map(|i| subscriber(addr, &users[i % users.len()])))
                .await;
        sockets.extend(opened);
    }
    // Let every subscription register.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / idle.max(1) as f64;
    println!(
        "idle: {idle} subscriptions opened in {:.1?}; server RSS {:.1} MiB -> {:.1} MiB: {per:.1} KiB per subscription (connection included)",
        started.elapsed(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    drop(sockets);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Fan-out throughput: `fanout` subscribers of one user.
    let token = signup(&client, addr, "fanout@bench.test").await;
    for i in 0..TODOS {
        gql(
            &client,
            addr,
            Some(&token),
            "mutation($t: String!) { createTodo(input: {title: $t}) { id } }",
            json!({"t": format!("todo {i}")}),
        )
        .await;
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..fanout {
        let mut socket = subscriber(addr, &token).await;
        let delivered = Arc::clone(&delivered);
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    if text.contains("\"next\"") {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    } else if text.contains("\"ping\"") {
                        let _ = socket.send(Message::Text(r#"{"type":"pong"}"#.into())).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut mutations = 0u64;
    let mut completed = true;
    while started.elapsed() < Duration::from_secs(seconds) {
        let response = gql(
            &client,
            addr,
            Some(&token),
            "mutation($c: Boolean!) { setAllTodosCompleted(completed: $c) }",
            json!({"c": completed}),
        )
        .await;
        assert_eq!(response["data"]["setAllTodosCompleted"], TODOS, "{response}");
        completed = !completed;
        mutations += 1;
    }
    let produced = mutations * TODOS as u64;
    // Wait for the tail to drain.
    let expected = produced * fanout as u64;
    let drain = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let got = delivered.load(Ordering::Relaxed);
    println!(
        "fan-out: {mutations} mutations x {TODOS} todos = {produced} events to {fanout} subscribers; \
         {got}/{expected} delivered in {elapsed:.1} s: {:.0} events/s delivered ({:.0} events/s produced)",
        got as f64 / elapsed,
        produced as f64 / elapsed
    );
    for reader in readers {
        reader.abort();
    }
}
