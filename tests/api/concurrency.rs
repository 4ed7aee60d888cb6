//! Races: parallel signups with one email, parallel writes.

use futures_util::future::join_all;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(parallel_signups_with_one_email_have_one_winner, parallel_creates_all_succeed);

async fn parallel_signups_with_one_email_have_one_winner(app: TestApp) {
    let attempts = (0..20).map(|i| {
        let app = &app;
        async move {
            app.gql(
                None,
                "mutation($input: SignupInput!) { signup(input: $input) { user { id } } }",
                json!({"input": {"email": if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" }, "password": format!("password {i}")}}),
            )
            .await
        }
    });
    let responses = join_all(attempts).await;
    let winners = responses.iter().filter(|r| r.0.get("errors").is_none()).count();
    assert_eq!(winners, 1, "{responses:?}");
    for response in responses.iter().filter(|r| r.0.get("errors").is_some()) {
        response.expect_code("CONFLICT");
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 1);
}

async fn parallel_creates_all_succeed(app: TestApp) {
    let user = app.signup("writer@example.com").await;
    let creates = (0..50).map(|i| {
        let app = &app;
        let token = user.token.clone();
        async move {
            app.gql(
                Some(&token),
                "mutation($input: CreateTodoInput!) { createTodo(input: $input) { id } }",
                json!({"input": {"title": format!("todo {i}")}}),
            )
            .await
        }
    });
    let responses = join_all(creates).await;
    for response in &responses {
        assert!(response.0.get("errors").is_none(), "{}", response.0);
    }
    let count = app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(count["todos"]["totalCount"], 50);
}
