//! Keyset pagination through 55 todos under every ordering, with inserts
//! between pages.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(pages_through_every_ordering_with_inserts_between_pages, page_arguments_are_checked);

const PAGE: &str = "query($first: Int, $after: String, $order: TodoOrder) {
  todos(first: $first, after: $after, orderBy: $order) {
    edges { cursor node { id title createdAt updatedAt } }
    nodes { id }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    totalCount
  }
}";

fn sort_key(node: &Value, field: &str) -> (String, String) {
    let key = match field {
        "CREATED_AT" => node["createdAt"].as_str(),
        "UPDATED_AT" => node["updatedAt"].as_str(),
        _ => node["title"].as_str(),
    };
    (key.expect("key").to_owned(), node["id"].as_str().expect("id").to_owned())
}

async fn pages_through_every_ordering_with_inserts_between_pages(app: TestApp) {
    let user = app.signup("pager@example.com").await;
    let mut originals = Vec::new();
    for i in 0..55 {
        // Titles repeat (ties broken by id) and are not in creation order.
        let title = format!("todo {:02}", (i * 7) % 20);
        originals.push(
            app.create_todo(&user.token, json!({"title": title})).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    // Touch some so that updatedAt order differs from createdAt order.
    for id in originals.iter().step_by(3) {
        app.gql(
            Some(&user.token),
            "mutation($id: ID!) { updateTodo(id: $id, input: {completed: true}) { id } }",
            json!({"id": id}),
        )
        .await
        .ok();
    }
    let mut inserted = 0;
    for field in ["CREATED_AT", "UPDATED_AT", "TITLE"] {
        for direction in ["ASC", "DESC"] {
            let order = json!({"field": field, "direction": direction});
            let mut seen: Vec<Value> = Vec::new();
            let mut after: Option<String> = None;
            let mut pages = 0;
            loop {
                let data = app
                    .gql(Some(&user.token), PAGE, json!({"first": 10, "after": after, "order": order}))
                    .await
                    .ok();
                let connection = &data["todos"];
                let edges = connection["edges"].as_array().expect("edges");
                let nodes = connection["nodes"].as_array().expect("nodes");
                assert_eq!(edges.len(), nodes.len());
                assert_eq!(connection["pageInfo"]["hasPreviousPage"], after.is_some());
                if let (Some(first), Some(last)) = (edges.first(), edges.last()) {
                    assert_eq!(connection["pageInfo"]["startCursor"], first["cursor"]);
                    assert_eq!(connection["pageInfo"]["endCursor"], last["cursor"]);
                }
                seen.extend(edges.iter().map(|e| e["node"].clone()));
                pages += 1;
                // A new todo between pages must neither repeat nor hide rows.
                app.create_todo(&user.token, json!({"title": format!("inserted {inserted:02}")})).await;
                inserted += 1;
                if connection["pageInfo"]["hasNextPage"] == false {
                    break;
                }
                after = connection["pageInfo"]["endCursor"].as_str().map(str::to_owned);
                assert!(pages < 20, "pagination does not end");
            }
            let keys: Vec<(String, String)> = seen.iter().map(|n| sort_key(n, field)).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            if direction == "DESC" {
                sorted.reverse();
            }
            assert_eq!(keys, sorted, "{field} {direction}: rows out of order");
            let mut ids: Vec<&str> = seen.iter().map(|n| n["id"].as_str().expect("id")).collect();
            ids.sort_unstable();
            let before = ids.len();
            ids.dedup();
            assert_eq!(before, ids.len(), "{field} {direction}: a row was returned twice");
            for id in &originals {
                assert!(
                    ids.binary_search(&id.as_str()).is_ok(),
                    "{field} {direction}: todo {id} was skipped"
                );
            }
        }
    }
    let total = app.gql(Some(&user.token), "{ todos { totalCount } }", json!({})).await.ok();
    assert_eq!(total["todos"]["totalCount"], 55 + inserted);
}

async fn page_arguments_are_checked(app: TestApp) {
    let user = app.signup("args@example.com").await;
    for _ in 0..3 {
        app.create_todo(&user.token, json!({"title": "t"})).await;
    }
    for first in [101, -1] {
        let response = app.gql(Some(&user.token), PAGE, json!({"first": first})).await;
        response.expect_code("BAD_USER_INPUT");
        assert_eq!(response.field(), Some("first"));
    }
    let full = app.gql(Some(&user.token), PAGE, json!({"first": 100})).await.ok();
    assert_eq!(full["todos"]["edges"].as_array().map(Vec::len), Some(3));
    let default = app
        .gql(Some(&user.token), "{ todos { nodes { id } pageInfo { hasNextPage } } }", json!({}))
        .await
        .ok();
    assert_eq!(default["todos"]["pageInfo"]["hasNextPage"], false);
    let empty = app.gql(Some(&user.token), PAGE, json!({"first": 0})).await.ok();
    assert_eq!(empty["todos"]["edges"], json!([]));
    assert_eq!(empty["todos"]["pageInfo"]["hasNextPage"], true);

    let page = app.gql(Some(&user.token), PAGE, json!({"first": 1})).await.ok();
    let cursor = page["todos"]["pageInfo"]["endCursor"].clone();
    for bad in [json!("garbage"), json!(""), json!("djF8eHh8eHh8eHg")] {
        let response = app.gql(Some(&user.token), PAGE, json!({"first": 1, "after": bad})).await;
        response.expect_code("BAD_USER_INPUT");
        assert_eq!(response.field(), Some("after"));
    }
    // A cursor only makes sense in the ordering it came from.
    let response = app
        .gql(
            Some(&user.token),
            PAGE,
            json!({"first": 1, "after": cursor, "order": {"field": "TITLE", "direction": "ASC"}}),
        )
        .await;
    response.expect_code("BAD_USER_INPUT");
}
