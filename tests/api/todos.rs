//! Todo queries and mutations, their validation and their error codes.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::{TODO_FIELDS, TestApp};

backend_tests!(
    create_then_read_back,
    create_refuses_bad_input,
    update_is_partial_and_bumps_updated_at,
    update_refuses_bad_input_and_changes_nothing,
    update_and_delete_of_missing_todos_are_not_found,
    delete_returns_the_id,
    clear_completed_and_set_all_completed,
    filter_by_completed_and_search,
);

fn get_query() -> String {
    format!("query($id: ID!) {{ todo(id: $id) {{ {TODO_FIELDS} }} }}")
}

fn update_query() -> String {
    format!(
        "mutation($id: ID!, $input: UpdateTodoInput!) {{ updateTodo(id: $id, input: $input) {{ {TODO_FIELDS} }} }}"
    )
}

async fn create_then_read_back(app: TestApp) {
    let user = app.signup("a@example.com").await;
    let created = app.create_todo(&user.token, json!({"title": "  Buy milk  "})).await;
    assert_eq!(created["title"], "Buy milk", "titles are trimmed");
    assert_eq!(created["completed"], false);
    assert!(created["description"].is_null());
    assert_eq!(created["createdAt"], created["updatedAt"]);
    let full = app
        .create_todo(
            &user.token,
            json!({"title": "Write report", "description": "  keep spaces ", "completed": true}),
        )
        .await;
    assert_eq!(full["description"], "  keep spaces ");
    assert_eq!(full["completed"], true);

    let read = app.gql(Some(&user.token), &get_query(), json!({"id": created["id"]})).await.ok();
    assert_eq!(read["todo"], created);
    // An id that names nothing, or is not even a UUID, is simply null.
    for id in ["00000000-0000-0000-0000-000000000000", "not-an-id", "42"] {
        let read = app.gql(Some(&user.token), &get_query(), json!({"id": id})).await.ok();
        assert!(read["todo"].is_null());
    }
}

async fn create_refuses_bad_input(app: TestApp) {
    let user = app.signup("b@example.com").await;
    let create = "mutation($input: CreateTodoInput!) { createTodo(input: $input) { id } }";
    let cases = [
        (json!({"title": ""}), "title"),
        (json!({"title": "   "}), "title"),
        (json!({"title": "x".repeat(201)}), "title"),
        (json!({"title": "é".repeat(201)}), "title"),
        (json!({"title": "ok", "description": "d".repeat(2001)}), "description"),
    ];
    for (input, field) in cases {
        let response = app.gql(Some(&user.token), create, json!({"input": input})).await;
        response.expect_code("BAD_USER_INPUT");
        assert_eq!(response.field(), Some(field), "{}", response.0);
    }
    // The limits themselves are accepted (characters, not bytes).
    app.create_todo(
        &user.token,
        json!({"title": format!("  {}  ", "é".repeat(200)), "description": "d".repeat(2000)}),
    )
    .await;
    // Only the accepted todo was stored.
    let count = app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(count["todos"]["totalCount"], 1);
}

async fn update_is_partial_and_bumps_updated_at(app: TestApp) {
    let user = app.signup("c@example.com").await;
    let todo = app.create_todo(&user.token, json!({"title": "original", "description": "details"})).await;
    let id = todo["id"].clone();

    let updated = app
        .gql(Some(&user.token), &update_query(), json!({"id": id, "input": {"completed": true}}))
        .await
        .ok();
    let updated = &updated["updateTodo"];
    assert_eq!(updated["title"], "original");
    assert_eq!(updated["description"], "details");
    assert_eq!(updated["completed"], true);
    assert_eq!(updated["createdAt"], todo["createdAt"]);
    assert!(updated["updatedAt"].as_str() > todo["updatedAt"].as_str(), "updatedAt must move forward");

    let renamed = app
        .gql(Some(&user.token), &update_query(), json!({"id": id, "input": {"title": "  renamed "}}))
        .await
        .ok();
    assert_eq!(renamed["updateTodo"]["title"], "renamed");
    assert_eq!(renamed["updateTodo"]["description"], "details");
    assert_eq!(renamed["updateTodo"]["completed"], true);

    let cleared = app
        .gql(Some(&user.token), &update_query(), json!({"id": id, "input": {"description": null}}))
        .await
        .ok();
    assert!(cleared["updateTodo"]["description"].is_null());
    assert_eq!(cleared["updateTodo"]["title"], "renamed");

    let read = app.gql(Some(&user.token), &get_query(), json!({"id": id})).await.ok();
    assert_eq!(read["todo"], cleared["updateTodo"]);
}

async fn update_refuses_bad_input_and_changes_nothing(app: TestApp) {
    let user = app.signup("d@example.com").await;
    let todo = app.create_todo(&user.token, json!({"title": "keep me", "description": "as is"})).await;
    let cases = [
        (json!({"title": null}), "title"),
        (json!({"title": "  "}), "title"),
        (json!({"title": "x".repeat(201)}), "title"),
        (json!({"description": "d".repeat(2001)}), "description"),
        (json!({"completed": null}), "completed"),
        (json!({"title": "fine", "description": "d".repeat(2001)}), "description"),
    ];
    for (input, field) in cases {
        let response =
            app.gql(Some(&user.token), &update_query(), json!({"id": todo["id"], "input": input})).await;
        response.expect_code("BAD_USER_INPUT");
        assert_eq!(response.field(), Some(field), "{}", response.0);
    }
    let read = app.gql(Some(&user.token), &get_query(), json!({"id": todo["id"]})).await.ok();
    assert_eq!(read["todo"], todo);
}

async fn update_and_delete_of_missing_todos_are_not_found(app: TestApp) {
    let user = app.signup("e@example.com").await;
    for id in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"] {
        app.gql(Some(&user.token), &update_query(), json!({"id": id, "input": {"completed": true}}))
            .await
            .expect_code("NOT_FOUND");
        app.gql(Some(&user.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": id}))
            .await
            .expect_code("NOT_FOUND");
    }
}

async fn delete_returns_the_id(app: TestApp) {
    let user = app.signup("f@example.com").await;
    let todo = app.create_todo(&user.token, json!({"title": "short-lived"})).await;
    let deleted = app
        .gql(Some(&user.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": todo["id"]}))
        .await
        .ok();
    assert_eq!(deleted["deleteTodo"], todo["id"]);
    let read = app.gql(Some(&user.token), &get_query(), json!({"id": todo["id"]})).await.ok();
    assert!(read["todo"].is_null());
    app.gql(Some(&user.token), "mutation($id: ID!) { deleteTodo(id: $id) }", json!({"id": todo["id"]}))
        .await
        .expect_code("NOT_FOUND");
}

async fn clear_completed_and_set_all_completed(app: TestApp) {
    let user = app.signup("g@example.com").await;
    for (title, completed) in [("a", true), ("b", false), ("c", true), ("d", false)] {
        app.create_todo(&user.token, json!({"title": title, "completed": completed})).await;
    }
    let set = app
        .gql(Some(&user.token), "mutation { setAllTodosCompleted(completed: true) }", json!({}))
        .await
        .ok();
    assert_eq!(set["setAllTodosCompleted"], 2, "only the two open todos changed");
    let again = app
        .gql(Some(&user.token), "mutation { setAllTodosCompleted(completed: true) }", json!({}))
        .await
        .ok();
    assert_eq!(again["setAllTodosCompleted"], 0);
    let reopened = app
        .gql(Some(&user.token), "mutation { setAllTodosCompleted(completed: false) }", json!({}))
        .await
        .ok();
    assert_eq!(reopened["setAllTodosCompleted"], 4);

    let todos = app
        .gql(
            Some(&user.token),
            "{ todos(orderBy: {field: TITLE, direction: ASC}) { nodes { id } } }",
            json!({}),
        )
        .await
        .ok();
    let ids: Vec<_> =
        todos["todos"]["nodes"].as_array().expect("nodes").iter().map(|n| n["id"].clone()).collect();
    for id in [&ids[0], &ids[2]] {
        app.gql(Some(&user.token), &update_query(), json!({"id": id, "input": {"completed": true}}))
            .await
            .ok();
    }
    let cleared = app.gql(Some(&user.token), "mutation { clearCompletedTodos }", json!({})).await.ok();
    assert_eq!(cleared["clearCompletedTodos"], 2);
    let left = app
        .gql(
            Some(&user.token),
            "{ todos(orderBy: {field: TITLE, direction: ASC}) { nodes { title completed } totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(left["todos"]["totalCount"], 2);
    assert_eq!(
        left["todos"]["nodes"],
        json!([{"title": "b", "completed": false}, {"title": "d", "completed": false}])
    );
    let none = app.gql(Some(&user.token), "mutation { clearCompletedTodos }", json!({})).await.ok();
    assert_eq!(none["clearCompletedTodos"], 0);
}

async fn filter_by_completed_and_search(app: TestApp) {
    let user = app.signup("h@example.com").await;
    for (title, description, completed) in [
        ("Buy MILK", None, false),
        ("Call mom", Some("about the milkman"), true),
        ("Ärger vermeiden", None, false),
        ("50% off sale", Some("use code_x"), false),
        ("unrelated", Some("nothing"), true),
        // Would match "50%" and "e_x" if the wildcards were not escaped.
        ("500 things", None, false),
        ("e-x ray", None, false),
    ] {
        app.create_todo(
            &user.token,
            json!({"title": title, "description": description, "completed": completed}),
        )
        .await;
    }
    let titles = |search: serde_json::Value, completed: serde_json::Value| {
        let token = user.token.clone();
        let app = &app;
        async move {
            let data = app
                .gql(
                    Some(&token),
                    "query($filter: TodoFilter) { todos(filter: $filter, orderBy: {field: TITLE, direction: ASC}) { nodes { title } totalCount } }",
                    json!({"filter": {"search": search, "completed": completed}}),
                )
                .await
                .ok();
            let titles: Vec<String> = data["todos"]["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .map(|n| n["title"].as_str().expect("title").to_owned())
                .collect();
            assert_eq!(data["todos"]["totalCount"], titles.len(), "totalCount counts the filtered todos");
            titles
        }
    };
    assert_eq!(titles(json!("milk"), json!(null)).await, ["Buy MILK", "Call mom"]);
    assert_eq!(titles(json!("MILK"), json!(false)).await, ["Buy MILK"]);
    assert_eq!(titles(json!(null), json!(true)).await, ["Call mom", "unrelated"]);
    assert_eq!(titles(json!("ärger"), json!(null)).await, ["Ärger vermeiden"], "case folding beyond ASCII");
    assert_eq!(titles(json!("ÄRGER"), json!(null)).await, ["Ärger vermeiden"]);
    assert_eq!(titles(json!("50%"), json!(null)).await, ["50% off sale"], "% is literal");
    assert_eq!(titles(json!("e_x"), json!(null)).await, ["50% off sale"], "_ is literal");
    assert!(titles(json!("%"), json!(null)).await.len() == 1);
    assert!(titles(json!("no such thing"), json!(null)).await.is_empty());
    let too_long = app
        .gql(
            Some(&user.token),
            "query($s: String) { todos(filter: {search: $s}) { totalCount } }",
            json!({"s": "x".repeat(2001)}),
        )
        .await;
    too_long.expect_code("BAD_USER_INPUT");
    assert_eq!(too_long.field(), Some("search"));
}
