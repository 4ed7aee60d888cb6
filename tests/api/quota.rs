//! `MAX_TODOS_PER_USER`: a create beyond it is QUOTA_EXCEEDED and writes
//! nothing, concurrent creates cannot overshoot it, and deleting frees a slot.

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{Backend, Gql, TestApp};

/// Each case on both backends, with the quota set to `$limit`.
macro_rules! quota_tests {
    ($($case:ident: $limit:expr),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::helpers::Backend::Sqlite, $limit).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::helpers::Backend::Postgres, $limit).await;
                }
            )*
        }
    };
}

quota_tests!(
    a_create_beyond_the_quota_is_refused_and_writes_nothing: 3,
    concurrent_creates_cannot_overshoot_the_quota: 5,
);

const CREATE: &str = "mutation($input: CreateTodoInput!) { createTodo(input: $input) { id } }";

async fn create(app: &TestApp, token: &str, title: &str) -> Gql {
    app.gql(Some(token), CREATE, json!({"input": {"title": title}})).await
}

async fn stored(app: &TestApp, owner: &str) -> i64 {
    // The id is a UUID the server issued: safe to inline.
    let owner = match app.backend {
        Backend::Sqlite => format!("'{owner}'"),
        Backend::Postgres => format!("'{owner}'::uuid"),
    };
    app.count_rows(&format!("SELECT count(*) FROM todos WHERE owner_id = {owner}")).await
}

async fn a_create_beyond_the_quota_is_refused_and_writes_nothing(backend: Backend, limit: u32) {
    let Some(app) = TestApp::spawn_with(backend, |config| config.max_todos_per_user = Some(limit)).await
    else {
        return;
    };
    let user = app.signup("quota@example.com").await;
    let mut ids = Vec::new();
    for i in 0..limit {
        let data = create(&app, &user.token, &format!("todo {i}")).await.ok();
        ids.push(data["createTodo"]["id"].as_str().expect("id").to_owned());
    }
    let refused = create(&app, &user.token, "one too many").await;
    refused.expect_code("QUOTA_EXCEEDED");
    assert!(refused.message().is_some_and(|m| m.contains(&limit.to_string())), "{}", refused.0);
    assert!(refused.0["data"].is_null(), "{}", refused.0);
    assert_eq!(stored(&app, &user.id).await, i64::from(limit));
    let titles = app.count_rows("SELECT count(*) FROM todos WHERE title = 'one too many'").await;
    assert_eq!(titles, 0);

    // The quota is per account: another user is not affected.
    let other = app.signup("other@example.com").await;
    create(&app, &other.token, "mine").await.ok();

    // Deleting one frees a slot, for exactly one more.
    app.gql(Some(&user.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": ids[0]}))
        .await
        .ok();
    create(&app, &user.token, "in the freed slot").await.ok();
    create(&app, &user.token, "and no more").await.expect_code("QUOTA_EXCEEDED");
    assert_eq!(stored(&app, &user.id).await, i64::from(limit));
}

async fn concurrent_creates_cannot_overshoot_the_quota(backend: Backend, limit: u32) {
    let Some(app) = TestApp::spawn_with(backend, |config| config.max_todos_per_user = Some(limit)).await
    else {
        return;
    };
    let user = app.signup("racer@example.com").await;
    let titles: Vec<String> = (0..2 * limit).map(|i| format!("race {i}")).collect();
    let responses = join_all(titles.iter().map(|title| create(&app, &user.token, title))).await;
    let created = responses.iter().filter(|r| r.0.get("errors").is_none()).count();
    assert_eq!(created, limit as usize, "{responses:?}");
    for refused in responses.iter().filter(|r| r.0.get("errors").is_some()) {
        refused.expect_code("QUOTA_EXCEEDED");
    }
    assert_eq!(stored(&app, &user.id).await, i64::from(limit));
}
