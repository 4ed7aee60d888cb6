//! Load benchmark: todoql under closed-loop HTTP load on PostgreSQL and on
//! SQLite, next to a minimal baseline server doing the same database work.
//!
//! `cargo bench --bench load` does, for each backend in turn:
//! 1. starts the release `todoql` binary with production settings (bcrypt
//!    cost 10, default pools, `RUST_LOG=warn`) on a throwaway PostgreSQL
//!    cluster on loopback (`tests/api/postgres.rs`) or on a temporary SQLite
//!    file;
//! 2. seeds 50 users × 200 todos through the API, one "deep" user with
//!    100,000 todos (inserted straight into the database with
//!    `todoql::db::todos::insert`, the function the server itself calls, so the
//!    rows are exactly the server's) and one "small" user with 100 todos;
//! 3. starts the *baseline*: a bare axum server inside this process, on its own
//!    port and its own 2-thread runtime, that checks the same JWT and calls the
//!    same `todoql::db::todos` functions on the same kind of pool
//!    (`todoql::db::Db::connect`), answering the same JSON shape without any
//!    GraphQL in between. It is what todoql's figures are divided by;
//! 4. runs the scenarios: N tasks, each with its own keep-alive connection,
//!    sending requests back to back (closed loop), a warm-up first, then a
//!    measured window. A response counts as an error unless it is HTTP 200,
//!    has no `errors` member and holds the expected data;
//! 5. prints one table per backend and the targets, met or missed.
//!
//! Scenarios: `list`, `get`, `create`, `update` (64 connections; the first
//! three also against the baseline), `login` (8 connections, correct
//! passwords, so the limiter on failures never triggers), `mixed` (`list` at
//! 64 while `login` runs at 8), `deep` (first page of the 100,000-todo user vs
//! the 100-todo user, 64 connections each), `rss` (`list` at 256 connections,
//! then the server's VmRSS).
//!
//! Options, as flags (`cargo bench --bench load -- --duration 5s`) or
//! environment variables; flags win:
//!
//! | flag | variable | default | |
//! |---|---|---|---|
//! | `--duration D` | `BENCH_DURATION` | `10s` | measured time per scenario (`500ms`, `2.5` = seconds) |
//! | `--warmup D` | `BENCH_WARMUP` | `2s` | unmeasured load before each scenario |
//! | `--scenarios a,b` | `BENCH_SCENARIOS` | all | subset of `list,get,create,update,login,mixed,deep,rss` |
//! | `--backends a,b` | `BENCH_BACKENDS` | `postgres,sqlite` | |
//! | `--quick` | `BENCH_QUICK=1` | off | smoke run: small data set, 0.2 s per scenario, bcrypt cost 4, targets not judged |
//! | `--baseline-user-lookup` | `BENCH_BASELINE_USER_LOOKUP=1` | off | the baseline also loads the user per request, as todoql's revocation check does |
//!
//! `TODOQL_BIN=path` runs that todoql binary instead of the one cargo built
//! alongside (e.g. a copy, while others rebuild on the same machine).
//! `TEST_DATABASE_URL=postgres://…` uses that server instead of a throwaway
//! cluster (a fresh database is created on it). Settings such as
//! `DATABASE_POOL_SIZE` in the environment reach both todoql and the baseline.
//!
//! The process exits 1 when some scenario got no successful response at all
//! (that is a broken server, not a slow one), else 0: missed targets are
//! reported, not fatal.

// The throwaway PostgreSQL cluster of the integration tests (initdb + pg_ctl,
// run as `postgres` when we are root, removed at exit).
#[path = "../tests/api/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser as _;
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// Both servers sign and check tokens with this key (set for SQLite too, so
/// the baseline need not read the generated `<db>.jwt-secret`).
const JWT_SECRET: &str = "load-benchmark-secret-0123456789abcdef";
const PASSWORD: &str = "benchmark password";

/// Every connection count named by the issue.
const CONNECTIONS: usize = 64;
const LOGIN_CONNECTIONS: usize = 8;
const RSS_CONNECTIONS: usize = 256;

/// Operations per batched request while seeding (todoql's `MAX_BATCH_SIZE`).
const SEED_BATCH: usize = 10;

// The documents of the scenarios. Named operations, so the server's metrics
// and logs can tell them apart.
const LIST_BODY: &str = r#"{"query":"query List { todos(first: 20) { edges { node { id title completed createdAt } } pageInfo { hasNextPage endCursor } } }"}"#;
const GET_QUERY: &str = "query Get($id: ID!) { todo(id: $id) { id title completed createdAt } }";
const CREATE_QUERY: &str = "mutation Create($title: String!) { createTodo(input: {title: $title}) { id title completed createdAt } }";
const UPDATE_QUERY: &str = "mutation Update($id: ID!, $completed: Boolean!) { updateTodo(id: $id, input: {completed: $completed}) { id completed updatedAt } }";
const LOGIN_QUERY: &str = "mutation Login($email: String!, $password: String!) { login(input: {email: $email, password: $password}) { token } }";
const SIGNUP_QUERY: &str =
    "mutation Signup($input: SignupInput!) { signup(input: $input) { token user { id } } }";

// ---------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    List,
    Get,
    Create,
    Update,
    Login,
    Mixed,
    Deep,
    Rss,
}

impl Scenario {
    const ALL: [Self; 8] =
        [Self::List, Self::Get, Self::Create, Self::Update, Self::Login, Self::Mixed, Self::Deep, Self::Rss];

    fn name(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Get => "get",
            Self::Create => "create",
            Self::Update => "update",
            Self::Login => "login",
            Self::Mixed => "mixed",
            Self::Deep => "deep",
            Self::Rss => "rss",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Sqlite => "SQLite",
        }
    }
}

/// How much data to seed.
#[derive(Debug, Clone, Copy)]
struct SeedSize {
    users: usize,
    todos_per_user: usize,
    deep_todos: usize,
    small_todos: usize,
}

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    warmup: Duration,
    scenarios: Vec<Scenario>,
    backends: Vec<Backend>,
    quick: bool,
    seed: SeedSize,
    baseline_user_lookup: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        // `--name value` or `--name=value`.
        let flag = |name: &str| -> Option<String> {
            let long = format!("--{name}");
            let with_value = format!("{long}=");
            args.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix(&with_value) {
                Some(value) => Some(value.to_owned()),
                None if *arg == long => args.get(i + 1).cloned(),
                None => None,
            })
        };
        let setting = |name: &str, var: &str| {
            flag(name).or_else(|| std::env::var(var).ok()).filter(|v| !v.trim().is_empty())
        };
        let switch = |name: &str, var: &str| {
            args.iter().any(|a| *a == format!("--{name}"))
                || std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        };
        const KNOWN: [&str; 7] = [
            "--duration",
            "--warmup",
            "--scenarios",
            "--backends",
            "--quick",
            "--baseline-user-lookup",
            "--bench",
        ];
        for arg in args.iter().filter(|a| a.starts_with("--")) {
            if !KNOWN.contains(&arg.split('=').next().unwrap_or(arg)) {
                return Err(format!("unknown option {arg} (see the top of benches/load.rs)"));
            }
        }

        let quick = switch("quick", "BENCH_QUICK");
        // Quick mode is a smoke test for CI: every code path once, in seconds.
        let (default_duration, default_warmup) = if quick {
            (Duration::from_millis(200), Duration::from_millis(100))
        } else {
            (Duration::from_secs(10), Duration::from_secs(2))
        };
        let duration =
            setting("duration", "BENCH_DURATION").map_or(Ok(default_duration), |v| parse_duration(&v))?;
        let warmup = setting("warmup", "BENCH_WARMUP").map_or(Ok(default_warmup), |v| parse_duration(&v))?;
        let scenarios = match setting("scenarios", "BENCH_SCENARIOS") {
            None => Scenario::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|name| {
                    Scenario::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                        format!(
                            "unknown scenario {name:?}: expected list,get,create,update,login,mixed,deep,rss"
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let backends = match setting("backends", "BENCH_BACKENDS") {
            None => vec![Backend::Postgres, Backend::Sqlite],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|name| match name.to_ascii_lowercase().as_str() {
                    "postgres" | "postgresql" | "pg" => Ok(Backend::Postgres),
                    "sqlite" => Ok(Backend::Sqlite),
                    _ => Err(format!("unknown backend {name:?}: expected postgres,sqlite")),
                })
                .collect::<Result<_, _>>()?,
        };
        let seed = if quick {
            SeedSize { users: 4, todos_per_user: 20, deep_todos: 1_000, small_todos: 100 }
        } else {
            SeedSize { users: 50, todos_per_user: 200, deep_todos: 100_000, small_todos: 100 }
        };
        Ok(Self {
            duration,
            warmup,
            scenarios,
            backends,
            quick,
            seed,
            baseline_user_lookup: switch("baseline-user-lookup", "BENCH_BASELINE_USER_LOOKUP"),
        })
    }

    fn runs(&self, scenario: Scenario) -> bool {
        self.scenarios.contains(&scenario)
    }
}

/// `2.5` (seconds) or a humantime duration (`500ms`, `10s`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(seconds) if seconds >= 0.0 && seconds.is_finite() => Ok(Duration::from_secs_f64(seconds)),
        Ok(_) => Err(format!("invalid duration {text:?}")),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}")),
    }
}

// ---------------------------------------------------------------------------
// The todoql process

/// What the server wrote to stderr, counted while it runs, so that errors the
/// client only sees as a generic INTERNAL_SERVER_ERROR (the cause is logged,
/// never sent) are still accounted for, "database is locked" above all.
#[derive(Default)]
struct ServerLog {
    locked: AtomicU64,
    errors: AtomicU64,
    warnings: AtomicU64,
    samples: Mutex<Vec<String>>,
}

struct TodoqlProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<ServerLog>,
}

impl Drop for TodoqlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TodoqlProcess {
    /// `bcrypt_cost`: 10 (production's default) for measurements; the smoke
    /// run uses 4, since an unoptimised build needs over a second per hash
    /// at 10 and would complete no login in its fraction of a second.
    fn start(database_url: &str, work_dir: &Path, bcrypt_cost: u32) -> Self {
        // TODOQL_BIN (as in scripts/test) runs a copy of the binary: on a
        // shared machine a concurrent `cargo build` may relink
        // target/release/todoql between the two backends.
        let binary = std::env::var_os("TODOQL_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_todoql").into());
        let mut command = Command::new(binary);
        command
            // A `.env` in the caller's directory would configure the server
            // but not the baseline: run where there is none.
            .current_dir(work_dir)
            .env("DATABASE_URL", database_url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", JWT_SECRET)
            // Production cost: logins are meant to be bcrypt-bound.
            .env("BCRYPT_COST", bcrypt_cost.to_string())
            // Seeding signs up more accounts from one address than a real client would.
            .env("SIGNUP_MAX_PER_ADDRESS", "0")
            // The load generator's connections are users behind one proxy.
            .env("TRUST_FORWARDED_FOR", "1")
            // Per-request log lines would be a benchmark of the logger; the
            // address comes from todoql::app at info. JSON: one event a line.
            .env("RUST_LOG", "warn,todoql::app=info")
            .env("LOG_FORMAT", "json")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the todoql binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(ServerLog::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let counters = Arc::clone(&log);
        std::thread::spawn(move || {
            // Keeps reading until the process exits, or it would block on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split("/graphql").next().unwrap_or_default().to_owned();
                    let _ = tx.send(addr);
                    continue;
                }
                if line.contains("database is locked") {
                    counters.locked.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("\"level\":\"ERROR\"") {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                } else if line.contains("\"level\":\"WARN\"") {
                    counters.warnings.fetch_add(1, Ordering::Relaxed);
                }
                // Info lines (migrations) are expected; anything else, a
                // panic message included (not JSON), is worth showing.
                let routine =
                    ["INFO", "DEBUG", "TRACE"].iter().any(|l| line.contains(&format!("\"level\":\"{l}\"")));
                let mut samples = counters.samples.lock().expect("log samples");
                if !routine && samples.len() < 10 {
                    samples.push(line);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("todoql did not say where it listens; log: {:?}", log.samples.lock()))
            .parse()
            .expect("a socket address");
        Self { child, addr, log }
    }

    fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }
}

/// VmRSS of a process, from /proc (0 when unreadable).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib * 1024
}

// ---------------------------------------------------------------------------
// Seeding

struct Account {
    email: String,
    token: String,
}

/// Who and what the scenarios pick from.
struct Dataset {
    users: Vec<Account>,
    /// The ids of each user's todos, by user index.
    todos: Vec<Vec<String>>,
    deep: Account,
    small: Account,
}

impl Dataset {
    /// A random seeded user and one of that user's todos.
    fn random_todo(&self, rng: &mut StdRng) -> (&Account, &str) {
        let user = rng.random_range(0..self.users.len());
        let ids = &self.todos[user];
        (&self.users[user], &ids[rng.random_range(0..ids.len())])
    }
}

/// A plain client for seeding, one JSON request at a time.
struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    async fn post(&self, token: Option<&str>, body: &Value) -> Value {
        let mut request = self.client.post(&self.url).header("accept", "application/json").json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("seeding request sent");
        let status = response.status();
        let text = response.text().await.expect("seeding response");
        assert!(status.is_success(), "seeding failed with HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("seeding answer is not JSON: {text}"))
    }

    async fn signup(&self, email: String) -> (Account, String) {
        let variables = json!({"input": {"email": email, "password": PASSWORD}});
        let answer = self.post(None, &json!({"query": SIGNUP_QUERY, "variables": variables})).await;
        let signup = &answer["data"]["signup"];
        let (Some(token), Some(id)) = (signup["token"].as_str(), signup["user"]["id"].as_str()) else {
            panic!("signup of {email} failed: {answer}");
        };
        (Account { token: token.to_owned(), email }, id.to_owned())
    }

    /// Creates `titles` for the holder of `token` in one batched request;
    /// returns their ids.
    async fn create_batch(&self, token: &str, titles: Vec<String>) -> Vec<String> {
        let batch: Vec<Value> = titles
            .into_iter()
            .map(|title| json!({"query": CREATE_QUERY, "variables": {"title": title}}))
            .collect();
        let answer = self.post(Some(token), &Value::Array(batch)).await;
        let answers = answer.as_array().unwrap_or_else(|| panic!("a batch answers an array: {answer}"));
        answers
            .iter()
            .map(|one| {
                one["data"]["createTodo"]["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("createTodo failed while seeding: {one}"))
                    .to_owned()
            })
            .collect()
    }

    /// `count` todos for one user, `SEED_BATCH` per request, 8 requests in flight.
    async fn create_many(&self, token: &str, prefix: &str, count: usize) -> Vec<String> {
        let batches: Vec<Vec<String>> = (0..count)
            .collect::<Vec<_>>()
            .chunks(SEED_BATCH)
            .map(|chunk| chunk.iter().map(|i| format!("{prefix} todo {i}")).collect())
            .collect();
        let created: Vec<Vec<String>> = futures_util::stream::iter(batches)
            .map(|titles| self.create_batch(token, titles))
            .buffered(8)
            .collect()
            .await;
        created.into_iter().flatten().collect()
    }
}

async fn seed(api: &Api, database_url: &str, size: SeedSize) -> Dataset {
    let started = Instant::now();
    // Sign-ups hash with bcrypt cost 10 (~65 ms a core); the server runs as
    // many at once as it has cores, so a few in flight keep it busy.
    let emails: Vec<String> = (0..size.users)
        .map(|i| format!("user{i}@bench.test"))
        .chain(["deep@bench.test".to_owned(), "small@bench.test".to_owned()])
        .collect();
    let mut accounts: Vec<(Account, String)> =
        futures_util::stream::iter(emails).map(|email| api.signup(email)).buffered(4).collect().await;
    let (small, _) = accounts.pop().expect("small user");
    let (deep, deep_id) = accounts.pop().expect("deep user");
    let mut todos = Vec::with_capacity(size.users);
    for (i, (account, _)) in accounts.iter().enumerate() {
        todos.push(api.create_many(&account.token, &format!("user {i}"), size.todos_per_user).await);
    }
    api.create_many(&small.token, "small", size.small_todos).await;
    let through_api = started.elapsed();

    // 100,000 todos through HTTP would take minutes; the server's own insert
    // function writes the very same rows (v7 ids, folded search columns,
    // microsecond timestamps) straight into the database.
    let started = Instant::now();
    insert_directly(database_url, &deep_id, size.deep_todos).await;
    eprintln!(
        "  seeded {} users × {} todos + {} for the small user through the API in {:.1?}; \
         {} todos for the deep user directly in {:.1?}",
        size.users,
        size.todos_per_user,
        size.small_todos,
        through_api,
        size.deep_todos,
        started.elapsed()
    );
    Dataset { users: accounts.into_iter().map(|(account, _)| account).collect(), todos, deep, small }
}

/// A `todoql::Config` as `tests/api/helpers.rs` builds one.
fn library_config(database_url: &str, pool_size: Option<u32>) -> todoql::Config {
    let pool = pool_size.map(|n| n.to_string());
    let mut args = vec!["todoql", "--database-url", database_url, "--jwt-secret", JWT_SECRET];
    if let Some(pool) = &pool {
        args.extend(["--database-pool-size", pool.as_str()]);
    }
    let cli = todoql::Cli::try_parse_from(args).expect("benchmark arguments parse");
    todoql::Config::from_args(&cli.args).expect("benchmark configuration is valid")
}

async fn insert_directly(database_url: &str, owner: &str, count: usize) {
    use todoql::db::types::DbId;
    use todoql::todos::NewTodo;
    let db = todoql::db::Db::connect(&library_config(database_url, Some(8))).await.expect("database pools");
    let owner = DbId(uuid::Uuid::parse_str(owner).expect("a user id is a UUID"));
    let failures = futures_util::stream::iter(0..count)
        .map(|i| {
            let db = db.clone();
            async move {
                let new =
                    NewTodo { title: format!("deep todo {i}"), description: None, completed: i % 4 == 0 };
                // No quota: the deep user is meant to be far above it.
                todoql::db::todos::insert(&db, owner, new, None).await
            }
        })
        .buffer_unordered(16)
        .filter(|inserted| std::future::ready(inserted.is_err()))
        .count()
        .await;
    assert_eq!(failures, 0, "direct inserts for the deep user failed");
}

// ---------------------------------------------------------------------------
// The baseline: the same JWT check and the same queries, no GraphQL

mod baseline {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde::Deserialize;
    use serde_json::{Value, json};
    use todoql::auth::token::TokenKeys;
    use todoql::config::Secret;
    use todoql::db::Db;
    use todoql::db::types::DbId;
    use todoql::error::AppError;
    use todoql::todos::{self, Cursor, NewTodo, PageRequest, Todo, TodoFilter, TodoOrder};

    struct Shared {
        db: Db,
        keys: TokenKeys,
        /// `MAX_TODOS_PER_USER`, checked like the server does.
        max_todos_per_user: Option<u32>,
        /// Also load the user, like todoql's revocation check does.
        user_lookup: bool,
    }

    /// A running baseline. Its runtime lives on a thread of its own (2
    /// workers, like the todoql process), so the load generator's runtime
    /// does not also have to run the server.
    pub struct Baseline {
        pub addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Baseline {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    pub fn start(database_url: &str, user_lookup: bool) -> Baseline {
        let config = super::library_config(database_url, None);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("baseline".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("baseline-worker")
                    .enable_all()
                    .build()
                    .expect("baseline runtime");
                runtime.block_on(async move {
                    // The same pools, sized by the same defaults as the server's.
                    let db = Db::connect(&config).await.expect("baseline pools");
                    let keys = TokenKeys::new(&Secret::new(super::JWT_SECRET), config.jwt_ttl);
                    let max_todos_per_user = config.max_todos_per_user;
                    let shared = Arc::new(Shared { db, keys, max_todos_per_user, user_lookup });
                    let router = Router::new()
                        .route("/list", post(list))
                        .route("/get", post(get))
                        .route("/create", post(create))
                        .with_state(shared);
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("baseline port");
                    let _ = ready_tx.send(listener.local_addr().expect("baseline address"));
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                        .expect("baseline serves");
                });
            })
            .expect("baseline thread");
        let addr = ready_rx.recv().expect("the baseline starts");
        Baseline { addr, stop: Some(stop), thread: Some(thread) }
    }

    /// The client sends todoql's request bodies unchanged; only the
    /// variables matter here.
    #[derive(Deserialize, Default)]
    struct Body {
        #[serde(default)]
        variables: Variables,
    }

    #[derive(Deserialize, Default)]
    struct Variables {
        id: Option<String>,
        title: Option<String>,
    }

    /// Why a request was refused; answered like a GraphQL error (HTTP 200,
    /// as todoql does with `accept: application/json`).
    enum Refused {
        Unauthenticated,
        BadRequest(String),
        App(AppError),
    }

    impl From<AppError> for Refused {
        fn from(error: AppError) -> Self {
            Self::App(error)
        }
    }

    impl IntoResponse for Refused {
        fn into_response(self) -> Response {
            let (code, message) = match self {
                Self::Unauthenticated => ("UNAUTHENTICATED", "Invalid or expired token".to_owned()),
                Self::BadRequest(message) => ("BAD_REQUEST", message),
                // The message carries the internal cause: this is a
                // benchmark, and "database is locked" must be countable.
                Self::App(error) => (error.code().as_str(), format!("{error:?}")),
            };
            json_response(json!({"errors": [{"message": message, "extensions": {"code": code}}]}))
        }
    }

    fn json_response(value: Value) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
    }

    fn node(todo: &Todo) -> Value {
        json!({
            "id": todo.id.0.hyphenated().to_string(),
            "title": todo.title,
            "completed": todo.completed,
            "createdAt": todo.created_at.to_rfc3339(),
        })
    }

    /// The same checks as todoql's guard: signature, algorithm, times, and,
    /// when asked, the user row and its token version.
    async fn caller(shared: &Shared, headers: &HeaderMap) -> Result<DbId, Refused> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Refused::Unauthenticated)?;
        let claims = shared.keys.verify(token).map_err(|_| Refused::Unauthenticated)?;
        let id = claims.user_id().ok_or(Refused::Unauthenticated)?;
        if shared.user_lookup {
            let user = todoql::db::users::find(&shared.db, id).await?;
            if user.is_none_or(|u| u.token_version != claims.ver) {
                return Err(Refused::Unauthenticated);
            }
        }
        Ok(id)
    }

    /// The request body is parsed, as todoql has to, though `list` needs
    /// nothing from it.
    fn parse(bytes: &[u8]) -> Result<Body, Refused> {
        serde_json::from_slice(bytes).map_err(|e| Refused::BadRequest(e.to_string()))
    }

    async fn list(
        State(shared): State<Arc<Shared>>,
        headers: HeaderMap,
        bytes: axum::body::Bytes,
    ) -> Result<Response, Refused> {
        parse(&bytes)?;
        let owner = caller(&shared, &headers).await?;
        let order = TodoOrder::default();
        let page = PageRequest::new(Some(20), None, order, TodoFilter::default())?;
        let mut rows = todoql::db::todos::list(&shared.db, owner, &page).await?;
        let has_next_page = rows.len() > page.first;
        rows.truncate(page.first);
        let end_cursor = rows.last().map(|t| Cursor::for_todo(order, t).encode());
        let edges: Vec<Value> = rows.iter().map(|t| json!({"node": node(t)})).collect();
        Ok(json_response(json!({"data": {"todos": {
            "edges": edges,
            "pageInfo": {"hasNextPage": has_next_page, "endCursor": end_cursor},
        }}})))
    }

    async fn get(
        State(shared): State<Arc<Shared>>,
        headers: HeaderMap,
        bytes: axum::body::Bytes,
    ) -> Result<Response, Refused> {
        let body = parse(&bytes)?;
        let owner = caller(&shared, &headers).await?;
        let id = body.variables.id.as_deref().and_then(|id| uuid::Uuid::parse_str(id).ok()).map(DbId);
        let todo = match id {
            Some(id) => todoql::db::todos::find(&shared.db, owner, id).await?,
            None => None,
        };
        Ok(json_response(json!({"data": {"todo": todo.as_ref().map(node)}})))
    }

    async fn create(
        State(shared): State<Arc<Shared>>,
        headers: HeaderMap,
        bytes: axum::body::Bytes,
    ) -> Result<Response, Refused> {
        let body = parse(&bytes)?;
        let owner = caller(&shared, &headers).await?;
        let title = todos::parse_title(body.variables.title.as_deref().unwrap_or_default())?;
        let new = NewTodo { title, description: None, completed: false };
        let todo = todoql::db::todos::insert(&shared.db, owner, new, shared.max_todos_per_user).await?;
        Ok(json_response(json!({"data": {"createTodo": node(&todo)}})))
    }
}

// ---------------------------------------------------------------------------
// The load generator

/// One request: an optional bearer token and a JSON body.
struct Request {
    token: Option<String>,
    body: String,
}

/// Makes a connection's next request from (rng, connection index, how many
/// requests that connection has sent).
type NextRequest = Arc<dyn Fn(&mut StdRng, usize, u64) -> Request + Send + Sync>;

#[derive(Clone)]
struct Workload {
    url: String,
    connections: usize,
    /// Must appear in a successful response (e.g. `"edges":[`): a 200 with
    /// `data: null` or a missing todo is not a success.
    marker: &'static str,
    next: NextRequest,
}

/// What one connection saw in the measured window.
#[derive(Default)]
struct ConnectionTally {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: u64,
    locked: u64,
    kinds: BTreeMap<String, u64>,
    samples: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Stats {
    connections: usize,
    requests: u64,
    ok: u64,
    errors: u64,
    /// "database is locked", in responses or in the server's log.
    locked: u64,
    /// ERROR / WARN lines the todoql server logged meanwhile.
    server_errors: u64,
    server_warnings: u64,
    kinds: BTreeMap<String, u64>,
    samples: Vec<String>,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// The error code of a GraphQL error answer, or a short description.
fn error_kind(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let first = if value.is_array() { &value[0]["errors"][0] } else { &value["errors"][0] };
    match first["extensions"]["code"].as_str() {
        Some(code) => code.to_owned(),
        None => "error without code".to_owned(),
    }
}

/// Sends one request; `Ok(())` or the kind of error (and maybe a sample).
async fn send(
    client: &reqwest::Client,
    url: &str,
    request: Request,
    marker: &str,
    tally: &mut ConnectionTally,
    forwarded_for: &str,
) -> Result<(), String> {
    let mut builder = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-forwarded-for", forwarded_for)
        // Plain JSON, so a GraphQL error is a 200 with `errors` on both servers.
        .header("accept", "application/json")
        .body(request.body);
    if let Some(token) = request.token {
        builder = builder.bearer_auth(token);
    }
    let response = builder.send().await.map_err(|e| format!("transport: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("transport (body): {}", error_chain(&e)))?;
    if contains(&body, "database is locked") {
        tally.locked += 1;
    }
    let sample = || String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
    if status != reqwest::StatusCode::OK {
        if tally.samples.len() < 3 {
            tally.samples.push(format!("HTTP {status}: {}", sample()));
        }
        return Err(format!("HTTP {}", status.as_u16()));
    }
    if contains(&body, "\"errors\"") {
        if tally.samples.len() < 3 {
            tally.samples.push(sample());
        }
        return Err(error_kind(&body));
    }
    if !contains(&body, marker) {
        if tally.samples.len() < 3 {
            tally.samples.push(sample());
        }
        return Err("unexpected answer".into());
    }
    Ok(())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let _ = write!(text, ": {e}");
        cause = e.source();
    }
    text
}

/// Closed loop: each connection sends its next request as soon as the last
/// one is answered. Requests started during the warm-up are not counted;
/// those started in the measured window are, even if they finish after it
/// (the window's length grows by at most one request).
async fn run_load(
    workload: &Workload,
    warmup: Duration,
    duration: Duration,
    log: Option<&ServerLog>,
) -> Stats {
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let log_before = log.map(|l| {
        (
            l.locked.load(Ordering::Relaxed),
            l.errors.load(Ordering::Relaxed),
            l.warnings.load(Ordering::Relaxed),
        )
    });
    // A window too short for even one request to finish (a 0.2 s smoke run
    // on a busy machine, a login queued behind 64 lists) would measure
    // nothing: it stays open until one measured request has come back,
    // for at most `MAX_OVERRUN`.
    const MAX_OVERRUN: Duration = Duration::from_secs(30);
    let measured = Arc::new(AtomicU64::new(0));
    let connections: Vec<_> = (0..workload.connections)
        .map(|connection| {
            let workload = workload.clone();
            let measured = Arc::clone(&measured);
            tokio::spawn(async move {
                // A client per task: one keep-alive connection each, not a
                // shared pool that would open as many as it likes.
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("HTTP client");
                let mut rng = StdRng::from_rng(&mut rand::rng());
                // Each connection is one simulated user with an address of
                // its own (the server trusts one proxy hop): otherwise every
                // request is one client, whose logins queue behind its own
                // lists at the database (fair turns per client) and whose
                // attempts on one address key take turns.
                let forwarded_for =
                    format!("10.{}.{}.{}", rng.random::<u8>(), rng.random::<u8>(), rng.random::<u8>());
                let mut tally = ConnectionTally::default();
                let mut sequence = 0u64;
                loop {
                    let sent = Instant::now();
                    let nothing_measured = measured.load(Ordering::Relaxed) == 0;
                    if sent >= stop_at && !(nothing_measured && sent < stop_at + MAX_OVERRUN) {
                        break;
                    }
                    let request = (workload.next)(&mut rng, connection, sequence);
                    sequence += 1;
                    let outcome =
                        send(&client, &workload.url, request, workload.marker, &mut tally, &forwarded_for)
                            .await;
                    if sent < measure_from {
                        continue;
                    }
                    measured.fetch_add(1, Ordering::Relaxed);
                    let latency = sent.elapsed();
                    tally.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                    match outcome {
                        Ok(()) => tally.ok += 1,
                        Err(kind) => {
                            tally.errors += 1;
                            *tally.kinds.entry(kind).or_default() += 1;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let tallies = futures_util::future::join_all(connections).await;
    let elapsed = measure_from.elapsed().max(Duration::from_millis(1));

    let mut stats = Stats { connections: workload.connections, ..Stats::default() };
    let mut latencies = Vec::new();
    for tally in tallies {
        let tally = tally.expect("a load task panicked");
        latencies.extend(tally.latencies_us);
        stats.ok += tally.ok;
        stats.errors += tally.errors;
        stats.locked += tally.locked;
        for (kind, n) in tally.kinds {
            *stats.kinds.entry(kind).or_default() += n;
        }
        for sample in tally.samples {
            if stats.samples.len() < 3 {
                stats.samples.push(sample);
            }
        }
    }
    if let (Some(log), Some((locked, errors, warnings))) = (log, log_before) {
        stats.locked += log.locked.load(Ordering::Relaxed) - locked;
        stats.server_errors = log.errors.load(Ordering::Relaxed) - errors;
        stats.server_warnings = log.warnings.load(Ordering::Relaxed) - warnings;
    }
    latencies.sort_unstable();
    stats.requests = latencies.len() as u64;
    stats.rps = stats.requests as f64 / elapsed.as_secs_f64();
    stats.p50 = percentile(&latencies, 0.50);
    stats.p99 = percentile(&latencies, 0.99);
    stats
}

/// Nearest-rank percentile of sorted microseconds.
fn percentile(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted_us.len() as f64).ceil() as usize;
    Duration::from_micros(u64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]))
}

/// The workloads of the scenarios, over one seeded data set.
struct Workloads {
    data: Arc<Dataset>,
}

impl Workloads {
    fn list(&self, url: &str, connections: usize) -> Workload {
        let data = Arc::clone(&self.data);
        Workload {
            url: url.to_owned(),
            connections,
            marker: "\"edges\":[",
            next: Arc::new(move |rng, _, _| {
                let user = &data.users[rng.random_range(0..data.users.len())];
                Request { token: Some(user.token.clone()), body: LIST_BODY.to_owned() }
            }),
        }
    }

    /// The first page of one account, always the same.
    fn list_of(&self, url: &str, account: &Account) -> Workload {
        let token = account.token.clone();
        Workload {
            url: url.to_owned(),
            connections: CONNECTIONS,
            marker: "\"edges\":[",
            next: Arc::new(move |_, _, _| Request { token: Some(token.clone()), body: LIST_BODY.to_owned() }),
        }
    }

    fn get(&self, url: &str) -> Workload {
        let data = Arc::clone(&self.data);
        Workload {
            url: url.to_owned(),
            connections: CONNECTIONS,
            // `"todo":null` would mean the pair is wrong: not a success.
            marker: "\"todo\":{",
            next: Arc::new(move |rng, _, _| {
                let (user, id) = data.random_todo(rng);
                let body = json!({"query": GET_QUERY, "variables": {"id": id}}).to_string();
                Request { token: Some(user.token.clone()), body }
            }),
        }
    }

    fn create(&self, url: &str) -> Workload {
        let data = Arc::clone(&self.data);
        Workload {
            url: url.to_owned(),
            connections: CONNECTIONS,
            marker: "\"createTodo\":{",
            next: Arc::new(move |rng, connection, sequence| {
                let user = &data.users[rng.random_range(0..data.users.len())];
                let title = format!("load {connection}-{sequence}");
                let body = json!({"query": CREATE_QUERY, "variables": {"title": title}}).to_string();
                Request { token: Some(user.token.clone()), body }
            }),
        }
    }

    fn update(&self, url: &str) -> Workload {
        let data = Arc::clone(&self.data);
        Workload {
            url: url.to_owned(),
            connections: CONNECTIONS,
            marker: "\"updateTodo\":{",
            next: Arc::new(move |rng, _, _| {
                let (user, id) = data.random_todo(rng);
                let completed: bool = rng.random();
                let body = json!({"query": UPDATE_QUERY, "variables": {"id": id, "completed": completed}})
                    .to_string();
                Request { token: Some(user.token.clone()), body }
            }),
        }
    }

    /// Correct passwords, users taken in turn across the connections: a
    /// successful login clears its email's failure count and never counts
    /// against the address, so the rate limiter stays out of the way.
    fn login(&self, url: &str) -> Workload {
        let data = Arc::clone(&self.data);
        Workload {
            url: url.to_owned(),
            connections: LOGIN_CONNECTIONS,
            marker: "\"token\":\"",
            next: Arc::new(move |_, connection, sequence| {
                let turn = connection + sequence as usize * LOGIN_CONNECTIONS;
                let user = &data.users[turn % data.users.len()];
                let variables = json!({"email": user.email, "password": PASSWORD});
                Request {
                    token: None,
                    body: json!({"query": LOGIN_QUERY, "variables": variables}).to_string(),
                }
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// One backend

/// Everything measured on one backend; `None` when not run.
#[derive(Default)]
struct Results {
    list_base: Option<Stats>,
    list: Option<Stats>,
    get_base: Option<Stats>,
    get: Option<Stats>,
    create_base: Option<Stats>,
    create: Option<Stats>,
    update: Option<Stats>,
    login: Option<Stats>,
    mixed_list: Option<Stats>,
    mixed_login: Option<Stats>,
    deep_big: Option<Stats>,
    deep_small: Option<Stats>,
    list_256: Option<Stats>,
    rss_idle: u64,
    rss_peak: u64,
    rss_after: u64,
}

struct Report {
    backend: Backend,
    version: String,
    seed: SeedSize,
    results: Results,
    log_samples: Vec<String>,
}

async fn bench_backend(backend: Backend, options: &Options) -> Option<Report> {
    let dir = tempfile::tempdir().expect("temp dir");
    // Declared before the server so it is dropped after it: the database
    // outlives the processes using it.
    let pg_database;
    let (database_url, version) = match backend {
        Backend::Postgres => {
            pg_database = postgres::test_database().await?;
            let url = pg_database.url.clone();
            let version = postgres_version(&url).await;
            (url, version)
        }
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.path().join("todoql.db").display());
            (url, sqlite_version())
        }
    };
    eprintln!("\n== {} ({version})", backend.name());
    let bcrypt_cost = if options.quick { 4 } else { 10 };
    let server = TodoqlProcess::start(&database_url, dir.path(), bcrypt_cost);
    let api = Api {
        client: reqwest::Client::builder().no_proxy().build().expect("client"),
        url: format!("http://{}/graphql", server.addr),
    };
    let mut seed_size = options.seed;
    if !options.scenarios.contains(&Scenario::Deep) {
        // Only the deep scenario reads the big user; skip its 20-odd seconds.
        seed_size.deep_todos = 0;
    }
    let data = Arc::new(seed(&api, &database_url, seed_size).await);
    let baseline = baseline::start(&database_url, options.baseline_user_lookup);
    let todoql_url = api.url.clone();
    let base_url = |path: &str| format!("http://{}/{path}", baseline.addr);
    let workloads = Workloads { data: Arc::clone(&data) };
    let window = (options.warmup, options.duration);
    let (warmup, duration) = window;
    let log = Some(&*server.log);

    let mut r = Results { rss_idle: server.rss_bytes(), ..Results::default() };
    // Let the server settle after seeding (PostgreSQL's autovacuum, SQLite's
    // checkpoint) before measuring.
    tokio::time::sleep(Duration::from_millis(if options.quick { 100 } else { 2_000 })).await;

    // Reads first, while the data set is as seeded; each against the
    // baseline right before todoql, so both see the same database state.
    if options.runs(Scenario::List) {
        r.list_base = Some(
            measure(window, "baseline list", workloads.list(&base_url("list"), CONNECTIONS), None).await,
        );
        r.list = Some(measure(window, "list", workloads.list(&todoql_url, CONNECTIONS), log).await);
    }
    if options.runs(Scenario::Get) {
        r.get_base = Some(measure(window, "baseline get", workloads.get(&base_url("get")), None).await);
        r.get = Some(measure(window, "get", workloads.get(&todoql_url), log).await);
    }
    if options.runs(Scenario::Deep) {
        r.deep_big =
            Some(measure(window, "deep: big", workloads.list_of(&todoql_url, &data.deep), log).await);
        r.deep_small =
            Some(measure(window, "deep: small", workloads.list_of(&todoql_url, &data.small), log).await);
    }
    if options.runs(Scenario::Create) {
        r.create_base =
            Some(measure(window, "baseline create", workloads.create(&base_url("create")), None).await);
        r.create = Some(measure(window, "create", workloads.create(&todoql_url), log).await);
    }
    if options.runs(Scenario::Update) {
        r.update = Some(measure(window, "update", workloads.update(&todoql_url), log).await);
    }
    if options.runs(Scenario::Login) {
        r.login = Some(measure(window, "login", workloads.login(&todoql_url), log).await);
    }
    if options.runs(Scenario::Mixed) {
        let (list, login) = (workloads.list(&todoql_url, CONNECTIONS), workloads.login(&todoql_url));
        // Both share one window: the server's log lines go to the list row
        // only, so they are not counted twice.
        let (list, login) =
            tokio::join!(run_load(&list, warmup, duration, log), run_load(&login, warmup, duration, None));
        progress("mixed: list", &list);
        progress("mixed: login", &login);
        r.mixed_list = Some(list);
        r.mixed_login = Some(login);
    }
    if options.runs(Scenario::Rss) {
        let pid = server.child.id();
        let sampling = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = tokio::spawn({
            let (sampling, peak) = (Arc::clone(&sampling), Arc::clone(&peak));
            async move {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        r.list_256 =
            Some(measure(window, "list @256", workloads.list(&todoql_url, RSS_CONNECTIONS), log).await);
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.await;
        // Every client connection is closed by now: what the server keeps.
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.rss_after = server.rss_bytes();
        r.rss_peak = peak.load(Ordering::Relaxed).max(r.rss_after);
    }

    let log_samples = server.log.samples.lock().expect("log samples").clone();
    drop(baseline);
    drop(server);
    Some(Report { backend, version, seed: options.seed, results: r, log_samples })
}

/// One measured run, reported as it ends.
async fn measure(
    (warmup, duration): (Duration, Duration),
    name: &str,
    workload: Workload,
    log: Option<&ServerLog>,
) -> Stats {
    let stats = run_load(&workload, warmup, duration, log).await;
    progress(name, &stats);
    stats
}

fn progress(name: &str, stats: &Stats) {
    eprintln!(
        "  {name:<16} {:>9} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
        group(stats.rps.round() as u64),
        ms(stats.p50),
        ms(stats.p99),
        stats.errors
    );
}

async fn postgres_version(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL");
    let connection = tokio::spawn(connection);
    let version: String = client.query_one("SHOW server_version", &[]).await.expect("version").get(0);
    drop(client);
    let _ = connection.await;
    format!("PostgreSQL {version}, loopback TCP, throwaway cluster with fsync=off")
}

fn sqlite_version() -> String {
    // SAFETY: sqlite3_libversion returns a pointer to a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libsqlite3_sys::sqlite3_libversion()) };
    format!(
        "SQLite {} (bundled), WAL, synchronous=NORMAL, file in {}",
        version.to_string_lossy(),
        std::env::temp_dir().display()
    )
}

// ---------------------------------------------------------------------------
// Reporting

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// 12345 -> "12,345".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table row: its name, its figures and, for todoql, the baseline's.
type Row<'a> = (String, &'a Stats, Option<&'a Stats>);

impl Report {
    fn rows<'a>(&'a self) -> Vec<Row<'a>> {
        let r = &self.results;
        let deep = format!("deep: {} todos", group(self.seed.deep_todos as u64));
        let small = format!("deep: {} todos", group(self.seed.small_todos as u64));
        let mut rows = Vec::new();
        let mut row = |name: &str, stats: &'a Option<Stats>, base: &'a Option<Stats>| {
            if let Some(stats) = stats {
                rows.push((name.to_owned(), stats, base.as_ref()));
            }
        };
        row("baseline list", &r.list_base, &None);
        row("list", &r.list, &r.list_base);
        row("baseline get", &r.get_base, &None);
        row("get", &r.get, &r.get_base);
        row("baseline create", &r.create_base, &None);
        row("create", &r.create, &r.create_base);
        row("update", &r.update, &None);
        row("login", &r.login, &None);
        row("mixed: list", &r.mixed_list, &None);
        row("mixed: login", &r.mixed_login, &None);
        row(&deep, &r.deep_big, &None);
        row(&small, &r.deep_small, &None);
        row("list @256 conns", &r.list_256, &None);
        rows
    }

    /// The table, as Markdown (readable in a terminal, pasteable as is).
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}: {}", self.backend.name(), self.version);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| scenario | conns | req/s | p50 ms | p99 ms | errors | req/s ÷ baseline | p50 ÷ baseline | p99 ÷ baseline |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (name, stats, base) in self.rows() {
            let ratios = match base {
                Some(b) => format!(
                    "{:.2} | {:.2} | {:.2}",
                    stats.rps / b.rps,
                    stats.p50.as_secs_f64() / b.p50.as_secs_f64(),
                    stats.p99.as_secs_f64() / b.p99.as_secs_f64()
                ),
                None => "| |".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {:.2} | {:.2} | {} | {ratios} |",
                stats.connections,
                group(stats.rps.round() as u64),
                ms(stats.p50),
                ms(stats.p99),
                stats.errors,
            );
        }
        let r = &self.results;
        if r.list_256.is_some() {
            let _ = writeln!(
                out,
                "\nServer RSS: {:.1} MB idle after seeding, {:.1} MB peak during the 256-connection list, \
                 {:.1} MB after it.",
                mb(r.rss_idle),
                mb(r.rss_peak),
                mb(r.rss_after)
            );
        }
        // Every error, explained or not, with a sample.
        let mut problems = String::new();
        for (name, stats, _) in self.rows() {
            if stats.errors > 0 || stats.locked > 0 || stats.server_errors > 0 || stats.server_warnings > 0 {
                let kinds: Vec<String> = stats.kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
                let _ = writeln!(
                    problems,
                    "- {name}: {} errors [{}]; \"database is locked\" {}; server log: {} ERROR, {} WARN lines",
                    stats.errors,
                    kinds.join(", "),
                    stats.locked,
                    stats.server_errors,
                    stats.server_warnings
                );
                for sample in &stats.samples {
                    let _ = writeln!(problems, "  - e.g. `{sample}`");
                }
            }
        }
        if !problems.is_empty() {
            let _ = writeln!(out, "\nErrors, and server log lines at warn or above:\n{problems}");
            if !self.log_samples.is_empty() {
                let _ = writeln!(out, "First server log lines at warn or above:");
                for line in &self.log_samples {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        out
    }

    fn targets(&self) -> Vec<Target> {
        let r = &self.results;
        let mut targets = Vec::new();
        let mut ratio = |name: &str, value: Option<f64>, limit: f64, rule: Rule| {
            if let Some(value) = value {
                targets.push(Target { name: name.to_owned(), value, limit, rule });
            }
        };
        let rps = |a: &Option<Stats>, b: &Option<Stats>| Some(a.as_ref()?.rps / b.as_ref()?.rps);
        ratio("list req/s ÷ baseline", rps(&r.list, &r.list_base), 0.60, Rule::AtLeast);
        ratio("get req/s ÷ baseline", rps(&r.get, &r.get_base), 0.60, Rule::AtLeast);
        ratio("create req/s ÷ baseline", rps(&r.create, &r.create_base), 0.50, Rule::AtLeast);
        let p99 = |a: &Option<Stats>, b: &Option<Stats>| {
            Some(a.as_ref()?.p99.as_secs_f64() / b.as_ref()?.p99.as_secs_f64())
        };
        ratio("mixed: list p99 ÷ idle list p99", p99(&r.mixed_list, &r.list), 3.0, Rule::AtMost);
        ratio("mixed: list req/s ÷ idle list req/s", rps(&r.mixed_list, &r.list), 0.40, Rule::AtLeast);
        let p50 = |a: &Option<Stats>, b: &Option<Stats>| {
            Some(a.as_ref()?.p50.as_secs_f64() / b.as_ref()?.p50.as_secs_f64())
        };
        ratio("deep p50 ÷ small p50", p50(&r.deep_big, &r.deep_small), 1.5, Rule::AtMost);
        ratio(
            "RSS MB after 256-connection list",
            r.list_256.as_ref().map(|_| mb(r.rss_after)),
            50.0,
            Rule::AtMost,
        );
        ratio(
            "create: \"database is locked\"",
            r.create.as_ref().map(|s| s.locked as f64),
            0.0,
            Rule::AtMost,
        );
        targets
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    AtLeast,
    AtMost,
}

struct Target {
    name: String,
    value: f64,
    limit: f64,
    rule: Rule,
}

impl Target {
    fn met(&self) -> bool {
        match self.rule {
            Rule::AtLeast => self.value >= self.limit,
            Rule::AtMost => self.value <= self.limit,
        }
    }

    /// "met, 23 % margin" / "missed by 40 %".
    fn verdict(&self) -> String {
        if self.limit == 0.0 {
            return if self.met() { "met".into() } else { format!("missed ({} occurrences)", self.value) };
        }
        let off = ((self.value / self.limit) - 1.0).abs() * 100.0;
        match (self.rule, self.met()) {
            (Rule::AtLeast, true) => format!("met, {off:.0} % above the target"),
            (Rule::AtLeast, false) => format!("MISSED, {off:.0} % short"),
            (Rule::AtMost, true) => format!("met, {off:.0} % under the limit"),
            (Rule::AtMost, false) => format!("MISSED, {off:.0} % over the limit"),
        }
    }

    fn line(&self) -> String {
        let op = if self.rule == Rule::AtLeast { "≥" } else { "≤" };
        format!("| {} | {:.2} | {op} {} | {} |", self.name, self.value, self.limit, self.verdict())
    }
}

fn print_targets(title: &str, targets: &[Target]) {
    if targets.is_empty() {
        return;
    }
    println!("\nTargets, {title}:\n");
    println!("| target | value | limit | verdict |");
    println!("|---|--:|--:|---|");
    for target in targets {
        println!("{}", target.line());
    }
}

// ---------------------------------------------------------------------------

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split(':').nth(1)))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({model}); server, PostgreSQL, baseline and load generator share them")
}

async fn run(options: Options) -> bool {
    println!("todoql load benchmark: {}", machine());
    println!(
        "{} per scenario after {} warm-up; scenarios {}; {}{}",
        humantime::format_duration(options.duration),
        humantime::format_duration(options.warmup),
        options.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        if options.quick { "QUICK smoke run (small data set, targets not judged)" } else { "full run" },
        if options.baseline_user_lookup { "; baseline loads the user per request" } else { "" },
    );
    let mut reports = Vec::new();
    for &backend in &options.backends {
        match bench_backend(backend, &options).await {
            Some(report) => {
                println!("\n{}", report.table());
                if !options.quick {
                    print_targets(backend.name(), &report.targets());
                }
                reports.push(report);
            }
            None => println!("\n{}: SKIPPED (no PostgreSQL found; see the warning above)", backend.name()),
        }
    }

    let list_rps = |backend: Backend| {
        reports.iter().find(|r| r.backend == backend).and_then(|r| r.results.list.as_ref()).map(|s| s.rps)
    };
    if let (false, Some(pg), Some(sqlite)) =
        (options.quick, list_rps(Backend::Postgres), list_rps(Backend::Sqlite))
    {
        // "Within 2×" either way: the larger req/s over the smaller.
        let target = Target {
            name: "list req/s, SQLite vs PostgreSQL (larger ÷ smaller)".into(),
            value: pg.max(sqlite) / pg.min(sqlite),
            limit: 2.0,
            rule: Rule::AtMost,
        };
        print_targets(&format!("across backends (SQLite ÷ PostgreSQL = {:.2})", sqlite / pg), &[target]);
    }

    // A scenario with no successful response at all means something is
    // broken; missing a target does not.
    let mut broken = false;
    for report in &reports {
        for (name, stats, _) in report.rows() {
            if stats.ok == 0 {
                eprintln!(
                    "FAILED: {} {name}: no request succeeded ({} errors)",
                    report.backend.name(),
                    stats.errors
                );
                broken = true;
            }
        }
    }
    broken
}

const USAGE: &str = "\
cargo bench --bench load [-- OPTIONS]   (details at the top of benches/load.rs)

  --duration D      BENCH_DURATION      measured time per scenario (default 10s)
  --warmup D        BENCH_WARMUP        unmeasured load before each scenario (default 2s)
  --scenarios a,b   BENCH_SCENARIOS     list,get,create,update,login,mixed,deep,rss (default all)
  --backends a,b    BENCH_BACKENDS      postgres,sqlite (default both)
  --quick           BENCH_QUICK=1       smoke run: small data set, 0.2 s per scenario, no targets
  --baseline-user-lookup  BENCH_BASELINE_USER_LOOKUP=1
                                        the baseline also loads the user, as todoql's guard does";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` style probes list the "tests": there are none.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let options = Options::parse(&args).unwrap_or_else(|e| {
        eprintln!("load benchmark: {e}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let broken = runtime.block_on(run(options));
    drop(runtime);
    if broken {
        std::process::exit(1);
    }
}
