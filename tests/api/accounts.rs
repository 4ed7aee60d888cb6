//! signup, login, me, changePassword, logoutEverywhere, deleteAccount, and
//! the tokens they hand out.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{JWT_SECRET, TestApp};

const SIGNUP: &str = "mutation($input: SignupInput!) { signup(input: $input) { token expiresAt user { id email createdAt } } }";
const LOGIN: &str =
    "mutation($input: LoginInput!) { login(input: $input) { token expiresAt user { id email } } }";
const ME: &str = "{ me { id email createdAt } }";

backend_tests!(
    signup_signs_in_with_a_normalised_email,
    signup_refuses_bad_input,
    signup_conflicts_on_a_taken_email_in_any_case,
    login_answers_unknown_email_and_wrong_password_alike,
    login_refuses_passwords_past_72_bytes,
    me_needs_a_valid_token,
    a_bad_token_fails_even_public_operations,
    forged_and_expired_tokens_are_refused,
    change_password_revokes_older_tokens,
    change_password_refuses_bad_input,
    logout_everywhere_revokes_every_token,
    delete_account_needs_the_password_and_removes_everything,
);

async fn signup_signs_in_with_a_normalised_email(app: TestApp) {
    let data = app
        .gql(None, SIGNUP, json!({"input": {"email": "  Alice@Example.COM ", "password": "password1"}}))
        .await
        .ok();
    let payload = &data["signup"];
    assert_eq!(payload["user"]["email"], "alice@example.com");
    let token = payload["token"].as_str().expect("token");
    // Expires in 7 days (give or take the test's own run time).
    let expires = chrono::DateTime::parse_from_rfc3339(payload["expiresAt"].as_str().expect("expiresAt"))
        .expect("RFC 3339");
    let in_days = (expires.timestamp() - chrono::Utc::now().timestamp()) as f64 / 86_400.0;
    assert!((6.99..=7.01).contains(&in_days), "expires in {in_days} days");
    assert!(payload["user"]["createdAt"].as_str().expect("createdAt").ends_with('Z'));

    let me = app.gql(Some(token), ME, json!({})).await.ok();
    assert_eq!(me["me"]["id"], payload["user"]["id"]);
    assert_eq!(me["me"]["email"], "alice@example.com");

    // The token carries the contract's claims and is HS256.
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    assert_eq!(header.alg, Algorithm::HS256);
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).expect("payload"),
        )
        .expect("base64"),
    )
    .expect("claims JSON");
    assert_eq!(claims["sub"], payload["user"]["id"]);
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims["iat"].is_i64() && claims["exp"].is_i64());

    // The same credentials log in, whatever the case of the email.
    let login = app
        .gql(None, LOGIN, json!({"input": {"email": "ALICE@example.com", "password": "password1"}}))
        .await
        .ok();
    assert_eq!(login["login"]["user"]["id"], payload["user"]["id"]);
}

async fn signup_refuses_bad_input(app: TestApp) {
    let cases = [
        ("not-an-email", "password1", "email"),
        ("a@b", "password1", "email"),
        ("", "password1", "email"),
        (&format!("{}@example.com", "a".repeat(250)), "password1", "email"),
        ("short@example.com", "1234567", "password"),
        ("long@example.com", &"x".repeat(73), "password"),
        ("long2@example.com", &"é".repeat(37), "password"),
    ];
    for (email, password, field) in cases {
        let response = app.gql(None, SIGNUP, json!({"input": {"email": email, "password": password}})).await;
        response.expect_code("BAD_USER_INPUT");
        assert_eq!(response.field(), Some(field), "{email:?} / {password:?}: {}", response.0);
    }
    // Nothing was half-created: the emails whose password was refused are free.
    for email in ["short@example.com", "long@example.com"] {
        app.gql(None, SIGNUP, json!({"input": {"email": email, "password": "x".repeat(72)}})).await.ok();
    }
}

async fn signup_conflicts_on_a_taken_email_in_any_case(app: TestApp) {
    app.signup("bob@example.com").await;
    let response = app
        .gql(None, SIGNUP, json!({"input": {"email": "BOB@Example.com", "password": "another password"}}))
        .await;
    response.expect_code("CONFLICT");
    // The original password still works; the loser changed nothing.
    app.gql(None, LOGIN, json!({"input": {"email": "bob@example.com", "password": "correct horse battery"}}))
        .await
        .ok();
}

async fn login_answers_unknown_email_and_wrong_password_alike(app: TestApp) {
    app.signup("carol@example.com").await;
    let wrong = app
        .gql(None, LOGIN, json!({"input": {"email": "carol@example.com", "password": "wrong password"}}))
        .await;
    let unknown = app
        .gql(None, LOGIN, json!({"input": {"email": "nobody@example.com", "password": "wrong password"}}))
        .await;
    let malformed = app.gql(None, LOGIN, json!({"input": {"email": "nobody", "password": "x"}})).await;
    for response in [&wrong, &unknown, &malformed] {
        response.expect_code("UNAUTHENTICATED");
    }
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(wrong.message(), malformed.message());
}

async fn login_refuses_passwords_past_72_bytes(app: TestApp) {
    let password = "p".repeat(72);
    app.gql(None, SIGNUP, json!({"input": {"email": "dan@example.com", "password": password}})).await.ok();
    // bcrypt would ignore the 73rd byte and accept this; todoql must not.
    let longer = format!("{password}!");
    app.gql(None, LOGIN, json!({"input": {"email": "dan@example.com", "password": longer}}))
        .await
        .expect_code("UNAUTHENTICATED");
    app.gql(None, LOGIN, json!({"input": {"email": "dan@example.com", "password": password}})).await.ok();
}

async fn me_needs_a_valid_token(app: TestApp) {
    app.gql(None, ME, json!({})).await.expect_code("UNAUTHENTICATED");
    for operation in [
        "{ todos { totalCount } }",
        "{ todo(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
        "mutation { createTodo(input: {title: \"x\"}) { id } }",
        "mutation { clearCompletedTodos }",
        "mutation { setAllTodosCompleted(completed: true) }",
        "mutation { logoutEverywhere }",
        "mutation { deleteAccount(password: \"whatever1\") }",
        "mutation { changePassword(input: {currentPassword: \"a\", newPassword: \"b\"}) { token } }",
        "mutation { deleteTodo(id: \"00000000-0000-0000-0000-000000000000\") }",
        "mutation { updateTodo(id: \"00000000-0000-0000-0000-000000000000\", input: {}) { id } }",
    ] {
        app.gql(None, operation, json!({})).await.expect_code("UNAUTHENTICATED");
    }
}

async fn a_bad_token_fails_even_public_operations(app: TestApp) {
    for token in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.xxxx"] {
        app.gql(Some(token), SIGNUP, json!({"input": {"email": "eve@example.com", "password": "password1"}}))
            .await
            .expect_code("UNAUTHENTICATED");
        app.gql(Some(token), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    }
    // An empty bearer token (GraphiQL's prefilled header) is no token at all.
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("authorization", "Bearer ")
        .json(&json!({"query": SIGNUP, "variables": {"input": {"email": "eve@example.com", "password": "password1"}}}))
        .send()
        .await
        .expect("sent");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["data"]["signup"]["user"]["email"], "eve@example.com", "{body}");
}

fn forge(alg: Algorithm, claims: &serde_json::Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).expect("encode")
}

async fn forged_and_expired_tokens_are_refused(app: TestApp) {
    let account = app.signup("frank@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |iat: i64, exp: i64| json!({"sub": account.id, "email": account.email, "iat": iat, "exp": exp, "ver": 0});
    let secret = JWT_SECRET.as_bytes();
    // A token we sign ourselves with the right key and claims works: the
    // refusals below are about what differs.
    app.gql(Some(&forge(Algorithm::HS256, &claims(now, now + 600), secret)), ME, json!({})).await.ok();

    let refused = [
        forge(Algorithm::HS256, &claims(now - 7200, now - 5), secret),
        forge(Algorithm::HS384, &claims(now, now + 600), secret),
        forge(Algorithm::HS512, &claims(now, now + 600), secret),
        forge(Algorithm::HS256, &claims(now, now + 600), b"the wrong key, also 32 bytes long!"),
        forge(
            Algorithm::HS256,
            &json!({"sub": account.id, "email": account.email, "iat": now, "ver": 0}),
            secret,
        ),
        forge(
            Algorithm::HS256,
            &json!({"sub": "not-a-uuid", "email": "x", "iat": now, "exp": now + 600, "ver": 0}),
            secret,
        ),
        forge(
            Algorithm::HS256,
            &json!({"sub": account.id, "iat": now, "exp": now + 600, "nbf": now + 300, "email": "x", "ver": 0}),
            secret,
        ),
        // An older token version: revoked.
        forge(
            Algorithm::HS256,
            &json!({"sub": account.id, "email": account.email, "iat": now, "exp": now + 600, "ver": -1}),
            secret,
        ),
    ];
    for token in &refused {
        app.gql(Some(token), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    }
    // alg: none, and a tampered payload under the original signature.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims(now, now + 600).to_string())
    );
    app.gql(Some(&none), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    let parts: Vec<&str> = account.token.split('.').collect();
    let tampered_claims =
        json!({"sub": account.id, "email": account.email, "iat": now, "exp": now + 999_999, "ver": 0});
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(tampered_claims.to_string()), parts[2]);
    app.gql(Some(&tampered), ME, json!({})).await.expect_code("UNAUTHENTICATED");
}

async fn change_password_revokes_older_tokens(app: TestApp) {
    let account = app.signup("grace@example.com").await;
    let second_session = app
        .gql(None, LOGIN, json!({"input": {"email": account.email, "password": account.password}}))
        .await
        .ok()["login"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let data = app
        .gql(
            Some(&account.token),
            "mutation($input: ChangePasswordInput!) { changePassword(input: $input) { token user { email } } }",
            json!({"input": {"currentPassword": account.password, "newPassword": "a brand new password"}}),
        )
        .await
        .ok();
    let fresh = data["changePassword"]["token"].as_str().expect("fresh token");
    app.gql(Some(fresh), ME, json!({})).await.ok();
    for old in [&account.token, &second_session] {
        app.gql(Some(old), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    }
    app.gql(None, LOGIN, json!({"input": {"email": account.email, "password": account.password}}))
        .await
        .expect_code("UNAUTHENTICATED");
    app.gql(None, LOGIN, json!({"input": {"email": account.email, "password": "a brand new password"}}))
        .await
        .ok();
}

async fn change_password_refuses_bad_input(app: TestApp) {
    let account = app.signup("heidi@example.com").await;
    let change = "mutation($input: ChangePasswordInput!) { changePassword(input: $input) { token } }";
    app.gql(
        Some(&account.token),
        change,
        json!({"input": {"currentPassword": "wrong password", "newPassword": "new password"}}),
    )
    .await
    .expect_code("UNAUTHENTICATED");
    let short = app
        .gql(
            Some(&account.token),
            change,
            json!({"input": {"currentPassword": account.password, "newPassword": "short"}}),
        )
        .await;
    short.expect_code("BAD_USER_INPUT");
    assert_eq!(short.field(), Some("newPassword"));
    // Neither attempt changed anything: the token and the password still work.
    app.gql(Some(&account.token), ME, json!({})).await.ok();
    app.gql(None, LOGIN, json!({"input": {"email": account.email, "password": account.password}})).await.ok();
}

async fn logout_everywhere_revokes_every_token(app: TestApp) {
    let account = app.signup("ivan@example.com").await;
    let data = app.gql(Some(&account.token), "mutation { logoutEverywhere }", json!({})).await.ok();
    assert_eq!(data["logoutEverywhere"], true);
    app.gql(Some(&account.token), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    let fresh = app
        .gql(None, LOGIN, json!({"input": {"email": account.email, "password": account.password}}))
        .await
        .ok()["login"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    app.gql(Some(&fresh), ME, json!({})).await.ok();
}

async fn delete_account_needs_the_password_and_removes_everything(app: TestApp) {
    let account = app.signup("judy@example.com").await;
    let other = app.signup("ken@example.com").await;
    let todo = app.create_todo(&account.token, json!({"title": "mine"})).await;
    let kept = app.create_todo(&other.token, json!({"title": "not mine"})).await;
    let delete = "mutation($password: String!) { deleteAccount(password: $password) }";
    app.gql(Some(&account.token), delete, json!({"password": "wrong password"}))
        .await
        .expect_code("UNAUTHENTICATED");
    let still_there = app
        .gql(Some(&account.token), "query($id: ID!) { todo(id: $id) { title } }", json!({"id": todo["id"]}))
        .await
        .ok();
    assert_eq!(still_there["todo"]["title"], "mine");

    let data = app.gql(Some(&account.token), delete, json!({"password": account.password})).await.ok();
    assert_eq!(data["deleteAccount"], true);
    // The token of a deleted user is refused; the credentials are gone.
    app.gql(Some(&account.token), ME, json!({})).await.expect_code("UNAUTHENTICATED");
    app.gql(None, LOGIN, json!({"input": {"email": account.email, "password": account.password}}))
        .await
        .expect_code("UNAUTHENTICATED");
    // The email is free again, and the new account does not inherit the todos.
    let again = app.signup("judy@example.com").await;
    let todos = app.gql(Some(&again.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(todos["todos"]["totalCount"], 0);
    // The rows are really gone (ON DELETE CASCADE), not just unreachable.
    let orphans = format!("SELECT count(*) FROM todos WHERE owner_id = '{}'", account.id);
    assert_eq!(app.count_rows(&orphans).await, 0);
    // Other users are untouched.
    let theirs = app
        .gql(Some(&other.token), "query($id: ID!) { todo(id: $id) { title } }", json!({"id": kept["id"]}))
        .await
        .ok();
    assert_eq!(theirs["todo"]["title"], "not mine");
}
