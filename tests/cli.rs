//! The `todoql` binary as an operator runs it: configuration errors, `.env`,
//! the subcommands, port 0, SIGTERM, and a generated key that survives a restart.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_todoql");

/// The binary with an empty environment, in `dir`.
fn todoql(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.env_clear().current_dir(dir).env("NO_COLOR", "1");
    command
}

#[test]
fn bad_configuration_stops_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("BCRYPT_COST", "3")], "BCRYPT_COST"),
        (&[("BCRYPT_COST", "32")], "BCRYPT_COST"),
        (&[("JWT_SECRET", "too-short")], "JWT_SECRET"),
        (&[("DATABASE_URL", "mysql://localhost/db")], "DATABASE_URL"),
        (&[("DATABASE_URL", "postgres://localhost/db")], "JWT_SECRET"),
        (&[("CORS_ORIGINS", "*")], "--dev"),
        (&[("JWT_TTL", "a while")], "JWT_TTL"),
        (&[("LISTEN_ADDR", "everywhere")], "LISTEN_ADDR"),
        (&[("LOG_FORMAT", "yaml")], "LOG_FORMAT"),
    ];
    for (env, expected) in cases {
        let output = todoql(dir.path()).envs(env.iter().copied()).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: one line, got {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
    // No database file was created by a refused start.
    assert!(!dir.path().join("todoql.db").exists());
    // `*` is fine in development.
    let output =
        todoql(dir.path()).env("CORS_ORIGINS", "*").args(["--dev", "print-schema"]).output().expect("runs");
    assert!(output.status.success());
}

#[test]
fn print_schema_prints_the_committed_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = todoql(dir.path()).arg("print-schema").output().expect("runs");
    assert!(output.status.success());
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql"))
        .expect("schema");
    assert_eq!(String::from_utf8_lossy(&output.stdout), committed);
}

#[test]
fn migrate_creates_the_tables_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output =
        todoql(dir.path()).args(["migrate", "--database-url", "sqlite://data.db"]).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    use diesel::{Connection as _, RunQueryDsl as _};
    let mut conn =
        diesel::SqliteConnection::establish(&dir.path().join("data.db").to_string_lossy()).expect("open");
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let tables: Vec<String> =
        diesel::sql_query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .load::<Name>(&mut conn)
            .expect("tables")
            .into_iter()
            .map(|n| n.name)
            .collect();
    assert!(tables.contains(&"users".to_owned()) && tables.contains(&"todos".to_owned()), "{tables:?}");
    // Running it again is a no-op.
    let again =
        todoql(dir.path()).args(["migrate", "--database-url", "sqlite://data.db"]).output().expect("runs");
    assert!(again.status.success());
}

/// A running server process; killed if the test fails half-way.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `todoql` (serve) in `dir` and waits for the "listening on" line.
fn serve(dir: &Path, args: &[&str]) -> Running {
    let mut child =
        todoql(dir).args(args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/graphql").to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the server logs its address");
    Running { child, addr }
}

fn post(addr: &str, token: Option<&str>, query: &str, variables: Value) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("http://{addr}/graphql"))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("sent").json::<Value>().await.expect("json")
    })
}

fn terminate(running: &mut Running) -> std::process::ExitStatus {
    let pid = i32::try_from(running.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let started = Instant::now();
    loop {
        if let Some(status) = running.child.try_wait().expect("wait") {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_from_dot_env_on_port_0_and_keeps_its_generated_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".env"),
        "LISTEN_ADDR=127.0.0.1:0\nBCRYPT_COST=4\nDATABASE_URL=sqlite://app.db\n",
    )
    .expect(".env");
    let mut first = serve(dir.path(), &[]);
    assert!(!first.addr.ends_with(":0"), "the log names the real port: {}", first.addr);
    let signup = post(
        &first.addr,
        None,
        "mutation { signup(input: {email: \"op@example.com\", password: \"password1\"}) { token } }",
        json!({}),
    );
    let token = signup["data"]["signup"]["token"].as_str().expect("token").to_owned();
    assert_eq!(terminate(&mut first).code(), Some(0), "SIGTERM exits 0");

    let key = dir.path().join("app.db.jwt-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key).expect("key file").permissions().mode() & 0o777, 0o600);
    }
    // A restart on the same file reuses the key: old tokens stay valid.
    let mut second = serve(dir.path(), &[]);
    let me = post(&second.addr, Some(&token), "{ me { email } }", json!({}));
    assert_eq!(me["data"]["me"]["email"], "op@example.com", "the token survives a restart: {me}");
    assert_eq!(terminate(&mut second).code(), Some(0));

    // Flags win over .env: another database (with a key of its own) does not
    // know the account.
    let mut third = serve(dir.path(), &["--database-url", "sqlite://other.db"]);
    let me = post(&third.addr, Some(&token), "{ me { email } }", json!({}));
    assert_eq!(me["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{me}");
    assert!(dir.path().join("other.db").exists());
    assert_eq!(terminate(&mut third).code(), Some(0));
}

/// Two servers started at once on a new database file, with no JWT_SECRET:
/// both start, and they generate one key between them (a token issued by
/// either is good on the other), not two, and neither fails on the other's
/// half-written key file.
#[test]
fn two_servers_starting_together_on_a_new_file_share_one_generated_key() {
    let args = ["--database-url", "sqlite://shared.db", "--listen-addr", "127.0.0.1:0", "--bcrypt-cost", "4"];
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut one, mut two) = std::thread::scope(|scope| {
            let one = scope.spawn(|| serve(dir.path(), &args));
            let two = scope.spawn(|| serve(dir.path(), &args));
            (one.join().expect("first server starts"), two.join().expect("second server starts"))
        });
        for (issuer, checker, email) in
            [(&one, &two, format!("one{round}@example.com")), (&two, &one, format!("two{round}@example.com"))]
        {
            let signup = post(
                &issuer.addr,
                None,
                "mutation($email: String!) { signup(input: {email: $email, password: \"password1\"}) { token } }",
                json!({"email": email}),
            );
            let token = signup["data"]["signup"]["token"].as_str().expect("token").to_owned();
            let me = post(&checker.addr, Some(&token), "{ me { email } }", json!({}));
            assert_eq!(me["data"]["me"]["email"], email.as_str(), "round {round}: {me}");
        }
        assert_eq!(terminate(&mut one).code(), Some(0));
        assert_eq!(terminate(&mut two).code(), Some(0));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "temp files left behind: {names:?}");
    }
}

fn wait_exit(running: &mut Running) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = running.child.try_wait().expect("wait") {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A slow request: bcrypt at a high cost (with a warning-free cost, too).
    let mut running = serve(dir.path(), &["--listen-addr", "127.0.0.1:0", "--bcrypt-cost", "13"]);
    let addr = running.addr.clone();
    let in_flight = std::thread::spawn(move || {
        let started = Instant::now();
        let response = post(
            &addr,
            None,
            "mutation { signup(input: {email: \"slow@example.com\", password: \"password1\"}) { user { email } } }",
            json!({}),
        );
        (response, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(150));
    let pid = i32::try_from(running.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(100));
    // New connections are refused while the old request is still running.
    let refused =
        std::net::TcpStream::connect_timeout(&running.addr.parse().expect("addr"), Duration::from_secs(1));
    let (response, took) = in_flight.join().expect("request thread");
    assert!(refused.is_err(), "a new connection was accepted during shutdown");
    assert_eq!(response["data"]["signup"]["user"]["email"], "slow@example.com", "{response}");
    assert!(
        took > Duration::from_millis(250),
        "the request was not in flight long enough to prove anything: {took:?}"
    );
    assert_eq!(wait_exit(&mut running).code(), Some(0));
}

#[test]
fn a_crash_mid_mutation_leaves_no_half_written_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--listen-addr", "127.0.0.1:0", "--bcrypt-cost", "4", "--database-url", "sqlite://crash.db"];
    let mut running = serve(dir.path(), &args);
    let signup = post(
        &running.addr,
        None,
        "mutation { signup(input: {email: \"crash@example.com\", password: \"password1\"}) { token } }",
        json!({}),
    );
    let token = signup["data"]["signup"]["token"].as_str().expect("token").to_owned();
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"query": format!("mutation {{ createTodo(input: {{title: \"t{i}\"}}) {{ id }} }}")}))
        .collect();
    for _ in 0..30 {
        // 300 todos, ten per request.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            reqwest::Client::new()
                .post(format!("http://{}/graphql", running.addr))
                .bearer_auth(&token)
                .json(&batch)
                .send()
                .await
                .expect("sent");
        });
    }
    // Flip every todo back and forth, and kill the server in the middle.
    let addr = running.addr.clone();
    let flip_token = token.clone();
    let flipper = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let client = reqwest::Client::new();
            for i in 0..1000 {
                let body = json!({
                    "query": "mutation($c: Boolean!) { setAllTodosCompleted(completed: $c) }",
                    "variables": {"c": i % 2 == 0},
                });
                let sent = client
                    .post(format!("http://{addr}/graphql"))
                    .bearer_auth(&flip_token)
                    .json(&body)
                    .send()
                    .await;
                if sent.is_err() {
                    break; // the server is gone
                }
            }
        });
    });
    std::thread::sleep(Duration::from_millis(700));
    running.child.kill().expect("SIGKILL");
    let _ = running.child.wait();
    let _ = flipper.join();

    let restarted = serve(dir.path(), &args);
    let counts = post(
        &restarted.addr,
        Some(&token),
        "{ done: todos(filter: {completed: true}) { totalCount } open: todos(filter: {completed: false}) { totalCount } }",
        json!({}),
    );
    let (done, open) =
        (counts["data"]["done"]["totalCount"].as_i64(), counts["data"]["open"]["totalCount"].as_i64());
    assert_eq!(done.unwrap_or(0) + open.unwrap_or(0), 300, "{counts}");
    assert!(done == Some(0) || open == Some(0), "a setAllTodosCompleted was half applied: {counts}");
}

#[test]
fn json_logs_are_one_object_per_line_and_never_carry_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = todoql(dir.path())
        .args(["--listen-addr", "127.0.0.1:0", "--bcrypt-cost", "4", "--log-format", "json"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("a log line");
        let found = line
            .split("listening on http://")
            .nth(1)
            .map(|rest| rest.split('/').next().unwrap_or("").to_owned());
        lines.push(line);
        if let Some(addr) = found {
            break addr;
        }
    };
    let signup = post(
        &addr,
        None,
        "mutation Join { signup(input: {email: \"logs@example.com\", password: \"secret password\"}) { token } }",
        json!({}),
    );
    let token = signup["data"]["signup"]["token"].as_str().expect("token").to_owned();
    post(&addr, Some(&token), "query Me { me { email } }", json!({}));
    let mut running = Running { child, addr: addr.clone() };
    assert_eq!(terminate(&mut running).code(), Some(0));
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    let mut saw_operation = false;
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        saw_operation |=
            entry["operation"] == "Me" && entry["user_id"].is_string() && entry["request_id"].is_string();
        for secret in ["logs@example.com", "secret password", token.as_str(), "$2b$"] {
            assert!(!line.contains(secret), "a log line carries {secret:?}: {line}");
        }
    }
    assert!(saw_operation, "no operation log line with a user id and request id: {lines:#?}");
}
