//! The cross-tenant matrix: user B tries every operation on user A's todos.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::{TODO_FIELDS, TestApp};

backend_tests!(another_users_todos_are_invisible_and_untouchable);

async fn another_users_todos_are_invisible_and_untouchable(app: TestApp) {
    let alice = app.signup("alice@example.com").await;
    let bob = app.signup("bob@example.com").await;
    let open = app.create_todo(&alice.token, json!({"title": "alice open", "description": "secret"})).await;
    let done = app.create_todo(&alice.token, json!({"title": "alice done", "completed": true})).await;
    let bobs = app.create_todo(&bob.token, json!({"title": "bob's own"})).await;
    let alice_todos = format!(
        "{{ todos(orderBy: {{field: TITLE, direction: ASC}}) {{ nodes {{ {TODO_FIELDS} }} totalCount }} }}"
    );
    let before = app.gql(Some(&alice.token), &alice_todos, json!({})).await.ok();

    for todo in [&open, &done] {
        let id = &todo["id"];
        let read = app
            .gql(Some(&bob.token), "query($id: ID!) { todo(id: $id) { id title } }", json!({"id": id}))
            .await
            .ok();
        assert!(read["todo"].is_null(), "B can read A's todo");
        let update = app
            .gql(
                Some(&bob.token),
                "mutation($id: ID!) { updateTodo(id: $id, input: {title: \"pwned\", completed: false, description: null}) { id } }",
                json!({"id": id}),
            )
            .await;
        update.expect_code("NOT_FOUND");
        let delete =
            app.gql(Some(&bob.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": id})).await;
        delete.expect_code("NOT_FOUND");
    }
    // Indistinguishable from a todo that does not exist.
    let missing = app
        .gql(
            Some(&bob.token),
            "mutation { deleteTodo(id: \"00000000-0000-0000-0000-000000000000\") }",
            json!({}),
        )
        .await;
    let foreign = app
        .gql(Some(&bob.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": open["id"]}))
        .await;
    assert_eq!(missing.message(), foreign.message());

    // Bulk operations and lists only ever see B's own todos.
    let bob_list = app
        .gql(
            Some(&bob.token),
            "{ todos { nodes { id } totalCount } search: todos(filter: {search: \"alice\"}) { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(bob_list["todos"]["nodes"], json!([{"id": bobs["id"]}]));
    assert_eq!(bob_list["todos"]["totalCount"], 1);
    assert_eq!(bob_list["search"]["totalCount"], 0);
    let cleared = app.gql(Some(&bob.token), "mutation { clearCompletedTodos }", json!({})).await.ok();
    assert_eq!(cleared["clearCompletedTodos"], 0);
    let set =
        app.gql(Some(&bob.token), "mutation { setAllTodosCompleted(completed: true) }", json!({})).await.ok();
    assert_eq!(set["setAllTodosCompleted"], 1, "only B's own todo changes");
    let cleared = app.gql(Some(&bob.token), "mutation { clearCompletedTodos }", json!({})).await.ok();
    assert_eq!(cleared["clearCompletedTodos"], 1);

    // A's data is exactly as it was.
    let after = app.gql(Some(&alice.token), &alice_todos, json!({})).await.ok();
    assert_eq!(before, after);
    assert_eq!(after["todos"]["totalCount"], 2);
}
