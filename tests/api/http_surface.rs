//! The HTTP surface: GET and POST, media types, batches, GraphiQL, probes, CORS.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(
    get_runs_queries_and_refuses_mutations,
    post_needs_a_json_body,
    status_codes_follow_the_accepted_media_type,
    batches_run_and_are_bounded,
    graphiql_and_probes_are_served,
    cors_allows_only_configured_origins,
    oversized_bodies_are_refused,
    limits_admit_real_queries_and_refuse_abusive_ones,
    repeated_documents_behave_like_new_ones,
    malformed_requests_are_request_errors,
);

async fn get_runs_queries_and_refuses_mutations(app: TestApp) {
    let user = app.signup("get@example.com").await;
    let response = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "query Me { me { email } }"), ("operationName", "Me")])
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["me"]["email"], "get@example.com");

    let response = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "mutation { createTodo(input: {title: \"via GET\"}) { id } }")])
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    let body: Value = response.json().await.expect("json");
    assert!(body["errors"][0]["extensions"]["code"].is_string());
    let count = app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(count["todos"]["totalCount"], 0, "the mutation must not have run");
}

async fn post_needs_a_json_body(app: TestApp) {
    let user = app.signup("csrf@example.com").await;
    let body = r#"{"query":"mutation { createTodo(input: {title: \"forged\"}) { id } }"}"#;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
    {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header("content-type", content_type)
            .bearer_auth(&user.token)
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 415, "{content_type}");
    }
    let count = app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(count["todos"]["totalCount"], 0);
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST");
}

async fn post(app: &TestApp, accept: &str, body: Value) -> (u16, String, Value) {
    let response =
        app.client.post(app.url("/graphql")).header("accept", accept).json(&body).send().await.expect("sent");
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, content_type, response.json().await.expect("json"))
}

async fn status_codes_follow_the_accepted_media_type(app: TestApp) {
    let modern = "application/graphql-response+json";
    let (status, content_type, body) = post(&app, modern, json!({"query": "{ nope }"})).await;
    assert_eq!(status, 400);
    assert!(content_type.starts_with(modern));
    assert!(body.get("data").is_none(), "no data for a request error: {body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
    let (status, _, body) = post(&app, modern, json!({"query": "{ me { "})).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["extensions"]["code"], "GRAPHQL_PARSE_FAILED");
    // A field error is not a request error: 200, with data.
    let (status, _, body) = post(&app, modern, json!({"query": "{ me { id } }"})).await;
    assert_eq!(status, 200);
    assert!(body.get("data").is_some());
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    let (status, content_type, body) = post(&app, "application/json", json!({"query": "{ nope }"})).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/json"));
    assert_eq!(body["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
}

async fn batches_run_and_are_bounded(app: TestApp) {
    let user = app.signup("batch@example.com").await;
    let batch: Vec<Value> = (0..3)
        .map(|i| json!({"query": "mutation($t: String!) { createTodo(input: {title: $t}) { title } }", "variables": {"t": format!("b{i}")}}))
        .collect();
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&user.token)
        .json(&batch)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let results = body.as_array().expect("an array for a batch");
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["data"]["createTodo"]["title"].is_string()));

    let too_many: Vec<Value> = (0..11).map(|_| json!({"query": "{ me { id } }"})).collect();
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&user.token)
        .json(&too_many)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST");
}

async fn graphiql_and_probes_are_served(app: TestApp) {
    let page = app.client.get(app.url("/graphql")).header("accept", "text/html").send().await.expect("sent");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().expect("text").starts_with("text/html"));
    let html = page.text().await.expect("html");
    assert!(html.contains("graphiql.min.js"));
    assert!(!html.contains("https://"), "no asset may come from a CDN");
    let script = app.client.get(app.url("/graphiql/graphiql.min.js")).send().await.expect("sent");
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.expect("bytes").len() > 100_000);

    let health = app.client.get(app.url("/healthz")).send().await.expect("sent");
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.expect("sent");
    assert_eq!(ready.status(), 200);
}

async fn cors_allows_only_configured_origins(app: TestApp) {
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let allowed = preflight("http://localhost:3000").await.expect("sent");
    assert_eq!(
        allowed.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("http://localhost:3000")
    );
    let refused = preflight("https://evil.example").await.expect("sent");
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

async fn oversized_bodies_are_refused(app: TestApp) {
    let padding = "x".repeat(1024 * 1024 + 1);
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": "{ __typename }", "variables": {"padding": padding}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE");
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200, "the server keeps serving");
}

async fn limits_admit_real_queries_and_refuse_abusive_ones(app: TestApp) {
    let user = app.signup("limits@example.com").await;
    // What GraphiQL and code generators send.
    let introspection = include_str!("fixtures/introspection.graphql");
    let data = app.gql(None, introspection, json!({})).await.ok();
    assert_eq!(data["__schema"]["queryType"]["name"], "Query");
    // The biggest honest page: 100 todos with every field, twice over.
    let full_page = "{ todos(first: 100) {
        edges { cursor node { id title description completed createdAt updatedAt } }
        nodes { id title description completed createdAt updatedAt }
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        totalCount } }";
    app.gql(Some(&user.token), full_page, json!({})).await.ok();
    // Too deep: rejected before any resolver runs.
    // Too deep (13 levels through fragments): refused before anything runs.
    let deep = "{ todos { edges { node { ...N } } } } fragment N on Todo { ...N2 }
        fragment N2 on Todo { id }";
    app.gql(Some(&user.token), deep, json!({})).await.ok();
    // No real query is that deep, so the document is also invalid; the depth
    // check runs first, before validation and long before any resolver.
    let too_deep = format!("{{ {}id{} }}", "me { ".repeat(12), " }".repeat(12));
    let response = app.gql(Some(&user.token), &too_deep, json!({})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
    assert!(response.message().is_some_and(|m| m.contains("13 levels deep")), "{}", response.0);
    // 100 aliased logins: refused whole, before any password is tried.
    let fields: String = (0..100)
        .map(|i| {
            format!("a{i}: login(input: {{email: \"{}\", password: \"guess {i}\"}}) {{ token }} ", user.email)
        })
        .collect();
    let response = app.gql(None, &format!("mutation {{ {fields} }}"), json!({})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
    assert!(response.message().is_some_and(|m| m.contains("aliases")), "{}", response.0);
    assert!(response.0.get("data").is_none());
    app.gql(
        None,
        "mutation($e: String!) { login(input: {email: $e, password: \"correct horse battery\"}) { token } }",
        json!({"e": user.email}),
    )
    .await
    .ok();
    // Too many tokens, too many directives.
    let huge = format!("{{ {} }}", "__typename ".repeat(10_001));
    let response = app.gql(None, &huge, json!({})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
    assert!(response.message().is_some_and(|m| m.contains("tokens")));
    let directives = format!("{{ __typename {} }}", "@include(if: true) ".repeat(51));
    let response = app.gql(None, &directives, json!({})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
    // Too complex: many aliased full pages.
    let aliases: String = (0..8).map(|i| format!("p{i}: todos(first: 100) {{ nodes {{ id title description completed createdAt updatedAt }} }} ")).collect();
    let response = app.gql(Some(&user.token), &format!("{{ {aliases} }}"), json!({})).await;
    response.expect_code("GRAPHQL_VALIDATION_FAILED");
}

/// The server caches parsed documents by their text; a repeat must be
/// indistinguishable from a first sending: variables, `@skip`, the chosen
/// operation and every refusal apply afresh.
async fn repeated_documents_behave_like_new_ones(app: TestApp) {
    let user = app.signup("repeat@example.com").await;
    let first = app.create_todo(&user.token, json!({"title": "first"})).await;
    let second = app.create_todo(&user.token, json!({"title": "second"})).await;
    let by_id = "query($id: ID!, $skip: Boolean!) { todo(id: $id) { title completed @skip(if: $skip) } }";
    for _ in 0..2 {
        let data = app.gql(Some(&user.token), by_id, json!({"id": first["id"], "skip": true})).await.ok();
        assert_eq!(data["todo"], json!({"title": "first"}));
        let data = app.gql(Some(&user.token), by_id, json!({"id": second["id"], "skip": false})).await.ok();
        assert_eq!(data["todo"], json!({"title": "second", "completed": false}));
    }
    let two = "query Mine { me { email } } query Count { todos { totalCount } }";
    for _ in 0..2 {
        for (name, expected) in
            [("Mine", json!({"me": {"email": user.email}})), ("Count", json!({"todos": {"totalCount": 2}}))]
        {
            let response = app
                .client
                .post(app.url("/graphql"))
                .bearer_auth(&user.token)
                .json(&json!({"query": two, "operationName": name}))
                .send()
                .await
                .expect("sent");
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["data"], expected, "{body}");
        }
    }
    let too_deep = format!("{{ {}id{} }}", "me { ".repeat(12), " }".repeat(12));
    let invalid = "{ todos { totalCount nope } }";
    for _ in 0..3 {
        app.gql(Some(&user.token), &too_deep, json!({})).await.expect_code("GRAPHQL_VALIDATION_FAILED");
        let response = app.gql(Some(&user.token), invalid, json!({})).await;
        response.expect_code("GRAPHQL_VALIDATION_FAILED");
        assert!(response.message().is_some_and(|m| m.contains("nope")), "{}", response.0);
        // Cached or not, a document still needs a signed-in user.
        app.gql(None, by_id, json!({"id": first["id"], "skip": false})).await.expect_code("UNAUTHENTICATED");
    }
}

async fn malformed_requests_are_request_errors(app: TestApp) {
    for accept in ["application/json", "application/graphql-response+json"] {
        for body in [json!({"qeury": "{ __typename }"}), json!({}), json!([{"query": "{ __typename }"}, {}])]
        {
            let (status, _, response) = post(&app, accept, body.clone()).await;
            assert_eq!(status, 400, "{accept} {body}");
            assert_eq!(response["errors"][0]["extensions"]["code"], "BAD_REQUEST");
        }
    }
    // Two operations and no operationName: the client's mistake, said plainly.
    let (status, _, response) = post(
        &app,
        "application/graphql-response+json",
        json!({"query": "query A { __typename } query B { __typename }"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(response["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{response}");
    assert!(response["errors"][0]["message"].as_str().is_some_and(|m| m.contains("Operation name")));
    // JSON is UTF-8: another charset is not executed.
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json; charset=iso-8859-1")
        .body(r#"{"query":"{ __typename }"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);
    // A 401 says how to authenticate.
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .bearer_auth("not-a-token")
        .json(&json!({"query": "{ me { id } }"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    assert!(
        response
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_and_suggestions_can_be_turned_off() {
    let Some(app) = TestApp::spawn_with(crate::helpers::Backend::Sqlite, |config| {
        config.limits.introspection = false;
        config.limits.suggestions = false;
    })
    .await
    else {
        return;
    };
    app.gql(None, "{ __schema { queryType { name } } }", json!({}))
        .await
        .expect_code("GRAPHQL_VALIDATION_FAILED");
    let typo = app.gql(None, "{ todoss { totalCount } }", json!({})).await;
    typo.expect_code("GRAPHQL_VALIDATION_FAILED");
    assert!(!typo.0.to_string().contains("Did you mean"), "{}", typo.0);
    // On by default.
    let Some(default) = TestApp::spawn(crate::helpers::Backend::Sqlite).await else { return };
    let typo = default.gql(None, "{ todoss { totalCount } }", json!({})).await;
    assert!(typo.0.to_string().contains("Did you mean"), "{}", typo.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_timeout_are_cut_off() {
    for backend in [crate::helpers::Backend::Sqlite, crate::helpers::Backend::Postgres] {
        let Some(app) = TestApp::spawn_with(backend, |config| {
            config.limits.request_timeout = std::time::Duration::from_millis(100);
            config.bcrypt_cost = 14;
        })
        .await
        else {
            continue;
        };
        let started = std::time::Instant::now();
        let response = app
            .gql(None, "mutation { signup(input: {email: \"slow@example.com\", password: \"password1\"}) { token } }", json!({}))
            .await;
        response.expect_code("TIMEOUT");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        // Nothing was half-created: the account does not exist.
        assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
    }
}

/// SQLite's fault: another process holds the file's write lock. Writes wait
/// for the busy timeout, then fail with a retryable code; reads go on (WAL);
/// when the lock is released, writes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_fails_writes_briefly_and_recovers() {
    let Some(app) = TestApp::spawn(crate::helpers::Backend::Sqlite).await else { return };
    let user = app.signup("locked@example.com").await;
    let path = app.database_url.trim_start_matches("sqlite://").to_owned();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        use diesel::Connection as _;
        use diesel::connection::SimpleConnection as _;
        let mut conn = diesel::SqliteConnection::establish(&path).expect("open");
        conn.batch_execute("BEGIN IMMEDIATE").expect("lock");
        locked_tx.send(()).expect("signal");
        let _ = release_rx.recv();
        conn.batch_execute("ROLLBACK").expect("unlock");
    });
    locked_rx.recv().expect("locked");
    let started = std::time::Instant::now();
    let refused = app
        .gql(Some(&user.token), "mutation { createTodo(input: {title: \"blocked\"}) { id } }", json!({}))
        .await;
    refused.expect_code("SERVICE_UNAVAILABLE");
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
    // Reads are not blocked by a writer.
    app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    release_tx.send(()).expect("release");
    holder.join().expect("holder");
    app.gql(Some(&user.token), "mutation { createTodo(input: {title: \"after\"}) { id } }", json!({}))
        .await
        .ok();
}
