//! Crafted `after` cursors: a timestamp outside what both backends can
//! represent and sort alike is BAD_USER_INPUT on both, and the extremes of
//! the range give both backends the same page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(out_of_range_cursor_times_are_bad_user_input, cursor_times_at_the_ends_of_the_range_agree);

const PAGE: &str = "query($after: String, $order: TodoOrder) {
  todos(first: 100, after: $after, orderBy: $order) { nodes { title } pageInfo { hasNextPage } }
}";

/// A cursor as the server encodes them (see `todos::Cursor`), with any key.
fn craft(order: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{order}|0190b4a8-2b1c-7000-8000-000000000000|{key}"))
}

fn orders() -> [(&'static str, Value); 4] {
    [
        ("ca", json!({"field": "CREATED_AT", "direction": "ASC"})),
        ("cd", json!({"field": "CREATED_AT", "direction": "DESC"})),
        ("ua", json!({"field": "UPDATED_AT", "direction": "ASC"})),
        ("ud", json!({"field": "UPDATED_AT", "direction": "DESC"})),
    ]
}

async fn out_of_range_cursor_times_are_bad_user_input(app: TestApp) {
    let user = app.signup("cursor@example.com").await;
    for title in ["a", "b", "c"] {
        app.create_todo(&user.token, json!({"title": title})).await;
    }
    let out_of_range = [
        // Year 10000 in UTC, spelled with a four-digit year and an offset.
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:59.999999-00:01",
        "+10000-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        // Before year 0000: negative years, spelled both ways.
        "0000-01-01T00:00:00+00:01",
        "0000-01-01T00:00:00+23:59",
        "-0001-01-01T00:00:00Z",
        "-262143-01-01T00:00:00Z",
        // i64::MAX seconds and nanoseconds since the epoch, as dates.
        "292277026596-12-04T15:30:07Z",
        "2262-04-11T23:47:16.854775807Z",
        "9223372036854775807-01-01T00:00:00Z",
        // A leap second: never issued, and the backends disagree on it.
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5Z",
    ];
    for (order_code, order) in orders() {
        for key in out_of_range {
            // i64::MAX nanoseconds is year 2262: in range, and answered.
            let response = app
                .gql(Some(&user.token), PAGE, json!({"after": craft(order_code, key), "order": order}))
                .await;
            if key.starts_with("2262") {
                response.ok();
                continue;
            }
            response.expect_code("BAD_USER_INPUT");
            assert_eq!(response.field(), Some("after"), "{key}: {}", response.0);
            assert!(response.0["data"].is_null(), "{key}: {}", response.0);
        }
    }
}

async fn cursor_times_at_the_ends_of_the_range_agree(app: TestApp) {
    let user = app.signup("ends@example.com").await;
    for title in ["a", "b", "c"] {
        app.create_todo(&user.token, json!({"title": title})).await;
    }
    let first = "0000-01-01T00:00:00Z";
    let last = "9999-12-31T23:59:59.999999Z";
    for (order_code, order) in orders() {
        let ascending = order_code.ends_with('a');
        for (key, everything) in
            [(first, ascending), (last, !ascending), ("9999-12-31T23:59:59Z", !ascending)]
        {
            let data = app
                .gql(Some(&user.token), PAGE, json!({"after": craft(order_code, key), "order": order}))
                .await
                .ok();
            let titles: Vec<&str> = data["todos"]["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .map(|n| n["title"].as_str().expect("title"))
                .collect();
            let expected: Vec<&str> = match (everything, ascending) {
                (false, _) => vec![],
                (true, true) => vec!["a", "b", "c"],
                (true, false) => vec!["c", "b", "a"],
            };
            assert_eq!(titles, expected, "{order_code} after {key}");
        }
    }
}
