//! The test harness: a real todoql server on port 0 per test, on a fresh
//! database of the chosen backend, and a small client for it.

use std::net::SocketAddr;

use clap::Parser as _;
use serde_json::{Value, json};
use todoql::{Config, Server};

use crate::postgres::{self, TestDatabase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The signing key of test servers, so tests can forge and tamper with tokens.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Where a test server keeps its data; removed when the test ends.
enum Storage {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] TestDatabase),
    /// Another instance's database, kept alive by that instance.
    Shared,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub backend: Backend,
    pub client: reqwest::Client,
    pub database_url: String,
    _storage: Storage,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A response, with helpers to read it.
#[derive(Debug, Clone)]
pub struct Gql(pub Value);

impl Gql {
    /// The first error's code, if any.
    pub fn code(&self) -> Option<&str> {
        self.0["errors"][0]["extensions"]["code"].as_str()
    }
    pub fn field(&self) -> Option<&str> {
        self.0["errors"][0]["extensions"]["field"].as_str()
    }
    pub fn message(&self) -> Option<&str> {
        self.0["errors"][0]["message"].as_str()
    }
    /// Panics with the whole response unless there were no errors.
    pub fn ok(self) -> Value {
        assert!(self.0.get("errors").is_none(), "unexpected errors: {}", self.0);
        self.0["data"].clone()
    }
    /// Asserts the first error's code (and that every error has one).
    pub fn expect_code(&self, code: &str) -> &Self {
        assert_eq!(self.code(), Some(code), "response: {}", self.0);
        for error in self.0["errors"].as_array().into_iter().flatten() {
            assert!(error["extensions"]["code"].is_string(), "error without code: {}", self.0);
        }
        self
    }
}

pub struct Account {
    pub token: String,
    pub id: String,
    pub email: String,
    pub password: String,
}

impl TestApp {
    /// A server on `backend`, or `None` (with a loud warning) when no
    /// PostgreSQL is available outside CI.
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Self> {
        let (url, storage) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("todoql.db").display());
                (url, Storage::Sqlite(dir))
            }
            Backend::Postgres => {
                let db = postgres::test_database().await?;
                (db.url.clone(), Storage::Postgres(db))
            }
        };
        Some(Self::start(backend, url, storage, adjust).await)
    }

    /// A second instance on this one's database (same signing key), with
    /// its own configuration: what a rolling restart with new settings does.
    /// Drop it before `self`.
    pub async fn spawn_sharing(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start(self.backend, self.database_url.clone(), Storage::Shared, adjust).await
    }

    async fn start(
        backend: Backend,
        url: String,
        storage: Storage,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let cli = todoql::Cli::try_parse_from(["todoql", "--database-url", &url, "--jwt-secret", JWT_SECRET])
            .expect("test arguments parse");
        let mut config = Config::from_args(&cli.args).expect("test configuration is valid");
        config.listen_addr = "127.0.0.1:0".parse().expect("addr");
        config.bcrypt_cost = 4;
        adjust(&mut config);
        let server = Server::build(config).await.expect("server starts");
        let addr = server.local_addr();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            backend,
            client: reqwest::Client::new(),
            database_url: url,
            _storage: storage,
            shutdown: Some(shutdown),
        }
    }

    /// Starts the server's graceful shutdown, as SIGTERM does.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs one GraphQL request.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Gql {
        let mut request =
            self.client.post(self.url("/graphql")).json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let body = response.text().await.expect("body");
        crate::ws::assert_no_leak(&body);
        Gql(serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")))
    }

    /// POSTs `body` as it is, labelled JSON (for bodies `json!` cannot make).
    pub async fn post_raw_json(&self, body: String) -> reqwest::Response {
        self.client
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("sent")
    }

    pub async fn signup(&self, email: &str) -> Account {
        let password = "correct horse battery".to_owned();
        let data = self
            .gql(
                None,
                "mutation($input: SignupInput!) { signup(input: $input) { token user { id email } } }",
                json!({"input": {"email": email, "password": password}}),
            )
            .await
            .ok();
        Account {
            token: data["signup"]["token"].as_str().expect("token").to_owned(),
            id: data["signup"]["user"]["id"].as_str().expect("id").to_owned(),
            email: data["signup"]["user"]["email"].as_str().expect("email").to_owned(),
            password,
        }
    }

    /// Creates a todo and returns it (id, title, description, completed, createdAt, updatedAt).
    pub async fn create_todo(&self, token: &str, input: Value) -> Value {
        let data = self
            .gql(
                Some(token),
                &format!(
                    "mutation($input: CreateTodoInput!) {{ createTodo(input: $input) {{ {TODO_FIELDS} }} }}"
                ),
                json!({"input": input}),
            )
            .await
            .ok();
        data["createTodo"].clone()
    }
}

impl TestApp {
    /// Waits until this instance has exactly `expected` subscriptions
    /// registered with its event hub (see [`crate::ws::open_subscriptions`]).
    pub async fn wait_for_open_subscriptions(&self, expected: usize) {
        let read = async || crate::ws::open_subscriptions(self.addr).await;
        self.wait_for("open subscriptions", expected, read).await;
    }

    /// Waits until this instance has exactly `expected` WebSocket connections open.
    pub async fn wait_for_open_websockets(&self, expected: usize) {
        self.wait_for_gauge("todoql_websockets_open", expected).await;
    }

    /// Waits until the `/metrics` gauge `name` says `expected`.
    pub async fn wait_for_gauge(&self, name: &str, expected: usize) {
        self.wait_for(name, expected, async || crate::ws::gauge(self.addr, name).await).await;
    }

    /// Waits until `read` (a `/metrics` gauge) says `expected`.
    async fn wait_for(&self, name: &str, expected: usize, read: impl AsyncFn() -> Option<usize>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            last = read().await;
            if last == Some(expected) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("expected {expected} {name}, /metrics says {last:?}");
    }
}

pub const TODO_FIELDS: &str = "id title description completed createdAt updatedAt";

/// Runs each named case against SQLite and PostgreSQL: `mod sqlite` and
/// `mod postgres`, one `#[tokio::test]` per case and backend.
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await {
                        super::$case(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await {
                        super::$case(app).await;
                    }
                }
            )*
        }
    };
}

/// Like [`backend_tests!`], on servers whose configuration `adjust` changes:
/// `backend_tests_with!(adjust; case, …)` with `fn adjust(&mut Config)`
/// beside the cases.
#[macro_export]
macro_rules! backend_tests_with {
    ($adjust:ident; $($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Sqlite, super::$adjust).await;
                    if let Some(app) = app {
                        super::$case(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Postgres, super::$adjust).await;
                    if let Some(app) = app {
                        super::$case(app).await;
                    }
                }
            )*
        }
    };
}

impl TestApp {
    /// Runs a `SELECT count(*) …` straight against the database, bypassing
    /// the server: for checking what is really stored.
    pub async fn count_rows(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                use diesel::{Connection as _, RunQueryDsl as _};
                #[derive(diesel::QueryableByName)]
                struct Count {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let path = self.database_url.trim_start_matches("sqlite://").to_owned();
                let sql = format!("SELECT ({sql}) AS n");
                tokio::task::spawn_blocking(move || {
                    let mut conn = diesel::SqliteConnection::establish(&path).expect("open SQLite");
                    diesel::sql_query(sql).get_result::<Count>(&mut conn).expect("count query").n
                })
                .await
                .expect("count task")
            }
            Backend::Postgres => {
                let (client, connection) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(connection);
                client.query_one(sql, &[]).await.expect("count query").get::<_, i64>(0)
            }
        }
    }
}
