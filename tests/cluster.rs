//! Scale-out on PostgreSQL: two todoql processes on one database, subscribers
//! of one hearing the writes made through the other, and recovery after the
//! database restarts. A test binary of its own because it stops and starts
//! its PostgreSQL cluster, which no other test may share.

#[path = "api/postgres.rs"]
mod postgres;
#[path = "api/ws.rs"]
#[allow(dead_code)] // shared with the api suite, which uses all of it
mod ws;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ws::{Incoming, TODO_EVENTS, WsClient};

const SECRET: &str = "cluster-test-secret-cluster-test-secret!";

/// A todoql process; killed when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_instance(database_url: &str) -> Instance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_todoql"))
        .env_clear()
        .envs([
            ("DATABASE_URL", database_url),
            ("JWT_SECRET", SECRET),
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("BCRYPT_COST", "4"),
            ("NO_COLOR", "1"),
            ("RUST_LOG", "info"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("todoql starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/graphql").to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the instance logs its address");
    Instance { child, addr: addr.parse().expect("address") }
}

async fn post(addr: SocketAddr, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) => {
            let body = response.text().await.unwrap_or_default();
            ws::assert_no_leak(&body);
            serde_json::from_str(&body).unwrap_or(Value::Null)
        }
        Err(_) => Value::Null,
    }
}

async fn create_todo(addr: SocketAddr, token: &str, title: &str) -> Value {
    post(
        addr,
        Some(token),
        "mutation($t: String!) { createTodo(input: {title: $t}) { id title } }",
        json!({"t": title}),
    )
    .await
}

async fn ready_status(addr: SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz")).await.map_or(0, |r| r.status().as_u16())
}

/// Retries `attempt` until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(started.elapsed() < limit, "gave up after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes on `addr`, retrying while the instance refuses (its listener
/// reconnecting), as a graphql-ws client would.
async fn subscribe(addr: SocketAddr, token: &str) -> WsClient {
    eventually(Duration::from_secs(20), || async {
        let mut ws =
            WsClient::connect(addr, json!({"Authorization": format!("Bearer {token}")})).await.ok()?;
        ws.subscribe("1", TODO_EVENTS).await;
        // A refusal arrives at once; after a silence, the instance's gauge
        // says when the subscription has reached its event hub.
        match ws.next_within(Duration::from_millis(300)).await {
            None => {}
            Some(_) => return None,
        }
        eventually(Duration::from_secs(10), || async {
            (ws::open_subscriptions(addr).await.unwrap_or(0) >= 1).then_some(())
        })
        .await;
        Some(ws)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_instance_reach_subscribers_of_another_and_survive_a_database_restart() {
    let Some(database) = postgres::test_database().await else { return };
    // Both start at once: migrations take turns (advisory lock).
    let (one, two) = std::thread::scope(|scope| {
        let one = scope.spawn(|| start_instance(&database.url));
        let two = scope.spawn(|| start_instance(&database.url));
        (one.join().expect("one"), two.join().expect("two"))
    });

    let signup = post(
        one.addr,
        None,
        "mutation { signup(input: {email: \"scale@example.com\", password: \"password1\"}) { token } }",
        json!({}),
    )
    .await;
    let token = signup["data"]["signup"]["token"].as_str().expect("token").to_owned();
    let mut subscriber = subscribe(two.addr, &token).await;

    let sent = Instant::now();
    let created = create_todo(one.addr, &token, "across instances").await;
    let payload = subscriber.next_payload("1").await;
    let latency = sent.elapsed();
    assert_eq!(payload["data"]["todoEvents"]["kind"], "CREATED", "{payload}");
    assert_eq!(payload["data"]["todoEvents"]["todoId"], created["data"]["createTodo"]["id"]);
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    eprintln!("cluster test: instance 1 → instance 2 in {latency:?}");

    if !postgres::set_cluster_running(false).await {
        eprintln!("cluster test: TEST_DATABASE_URL is set; the restart half is skipped");
        return;
    }
    // The subscriber is told events may have been lost, and the instances
    // stay up but not ready.
    match subscriber.next().await {
        Incoming::Message(message) => {
            assert_eq!(message["payload"]["errors"][0]["extensions"]["code"], "EVENTS_LOST", "{message}");
        }
        Incoming::Closed(code) => panic!("closed with {code} instead of EVENTS_LOST"),
    }
    subscriber.expect_complete("1").await;
    assert_eq!(ready_status(one.addr).await, 503);
    assert_eq!(ready_status(two.addr).await, 503);
    // Requests fail at once with SERVICE_UNAVAILABLE, not after the pool's
    // wait (the 30 s request timeout): a pooled connection is found dead, or
    // an attempt to open one is refused and ends every wait. More requests
    // at once than the pool holds, three times, so most of them wait for a
    // connection. The process stays up.
    for round in 0..3 {
        let asked = Instant::now();
        let down =
            futures_util::future::join_all((0..12).map(|_| create_todo(one.addr, &token, "while down")))
                .await;
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(3), "round {round} took {took:?}");
        for response in &down {
            assert_eq!(response["errors"][0]["extensions"]["code"], "SERVICE_UNAVAILABLE", "{response}");
        }
        eprintln!("cluster test: 12 requests refused in {took:?} while the database is down");
    }

    assert!(postgres::set_cluster_running(true).await);
    let restarted = Instant::now();
    eventually(Duration::from_secs(20), || async { (ready_status(two.addr).await == 200).then_some(()) })
        .await;
    let mut subscriber = subscribe(two.addr, &token).await;
    let created = eventually(Duration::from_secs(20), || async {
        let response = create_todo(one.addr, &token, "after the restart").await;
        response["data"]["createTodo"]["id"].as_str().map(str::to_owned)
    })
    .await;
    eprintln!("cluster test: writes succeed again {:?} after the restart", restarted.elapsed());
    let payload = subscriber.next_payload("1").await;
    assert_eq!(payload["data"]["todoEvents"]["todoId"], created.as_str(), "{payload}");

    // A revocation on one instance reaches the other's cache of accounts.
    let me = post(two.addr, Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "scale@example.com", "{me}");
    post(one.addr, Some(&token), "mutation { logoutEverywhere }", json!({})).await;
    let revoked_at = Instant::now();
    eventually(Duration::from_secs(1), || async {
        let me = post(two.addr, Some(&token), "{ me { email } }", json!({})).await;
        (me["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED").then_some(())
    })
    .await;
    eprintln!("cluster test: revocation seen by instance 2 after {:?}", revoked_at.elapsed());
}
