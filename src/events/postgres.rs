//! PostgreSQL as the message bus between instances: `NOTIFY` inside the
//! writing transaction, one `LISTEN` connection per instance.
//!
//! A notification payload must stay under 8000 bytes, so a notice is split
//! into several payloads when needed; a todo too large to travel (a long
//! description) travels as its id and is re-read by the listening instance.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Hub, HubMessage, Notice, TodoChange};
use crate::db::types::{DbId, DbTime};
use crate::db::{self, Db};
use crate::error::{AppError, AppResult};
use crate::todos::Todo;

pub const CHANNEL: &str = "todoql_events";
/// PostgreSQL refuses payloads of 8000 bytes or more; keep a margin.
const MAX_PAYLOAD: usize = 7_800;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct WireTodo {
    i: Uuid,
    t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    c: bool,
    ca: String,
    ua: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k")]
enum WireChange {
    #[serde(rename = "c")]
    Created { t: WireTodo },
    #[serde(rename = "u")]
    Updated { t: WireTodo },
    /// Created or updated, too large to carry: re-read on arrival.
    #[serde(rename = "C")]
    CreatedRef { i: Uuid },
    #[serde(rename = "U")]
    UpdatedRef { i: Uuid },
    #[serde(rename = "d")]
    Deleted { i: Uuid },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct WireNotice {
    o: Uuid,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    c: Vec<WireChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<i32>,
}

fn wire_todo(todo: &Todo) -> WireTodo {
    WireTodo {
        i: todo.id.0,
        t: todo.title.clone(),
        d: todo.description.clone(),
        c: todo.completed,
        ca: todo.created_at.to_rfc3339(),
        ua: todo.updated_at.to_rfc3339(),
    }
}

fn from_wire(todo: WireTodo) -> Option<Todo> {
    Some(Todo {
        id: DbId(todo.i),
        title: todo.t,
        description: todo.d,
        completed: todo.c,
        created_at: DbTime::parse_rfc3339(&todo.ca)?,
        updated_at: DbTime::parse_rfc3339(&todo.ua)?,
    })
}

fn wire_change(change: &TodoChange) -> WireChange {
    match change {
        TodoChange::Created(todo) => WireChange::Created { t: wire_todo(todo) },
        TodoChange::Updated(todo) => WireChange::Updated { t: wire_todo(todo) },
        TodoChange::Deleted(id) => WireChange::Deleted { i: id.0 },
    }
}

fn json(value: &impl Serialize) -> String {
    // Serialising these plain structs cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// The payloads announcing `notice`, each under the NOTIFY size limit, in order.
pub fn encode(notice: &Notice) -> Vec<String> {
    let owner = notice.owner.0;
    let empty_len = json(&WireNotice { o: owner, c: Vec::new(), r: None }).len();
    let mut payloads = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut batch_len = empty_len + 8;
    for change in &notice.changes {
        let mut item = json(&wire_change(change));
        if empty_len + item.len() + 8 > MAX_PAYLOAD {
            item = json(&match change {
                TodoChange::Created(todo) => WireChange::CreatedRef { i: todo.id.0 },
                TodoChange::Updated(todo) => WireChange::UpdatedRef { i: todo.id.0 },
                TodoChange::Deleted(id) => WireChange::Deleted { i: id.0 },
            });
        }
        if batch_len + item.len() + 1 > MAX_PAYLOAD && !batch.is_empty() {
            payloads.push(assemble(owner, &batch, None));
            batch.clear();
            batch_len = empty_len + 8;
        }
        batch_len += item.len() + 1;
        batch.push(item);
    }
    if !batch.is_empty() || notice.revoked_below.is_some() {
        payloads.push(assemble(owner, &batch, notice.revoked_below));
    }
    payloads
}

fn assemble(owner: Uuid, items: &[String], revoked_below: Option<i32>) -> String {
    let mut payload = format!("{{\"o\":\"{owner}\",\"c\":[{}]", items.join(","));
    if let Some(version) = revoked_below {
        payload.push_str(&format!(",\"r\":{version}"));
    }
    payload.push('}');
    payload
}

/// Sends `notice` from inside the current transaction: delivered to every
/// listening instance if and when the transaction commits.
pub async fn notify(conn: &mut AsyncPgConnection, notice: &Notice) -> Result<(), diesel::result::Error> {
    for payload in encode(notice) {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(CHANNEL)
            .bind::<diesel::sql_types::Text, _>(payload)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Turns a payload back into a notice, re-reading todos that travelled by id.
async fn decode(db: &Db, payload: &str) -> AppResult<Notice> {
    let wire: WireNotice = serde_json::from_str(payload)
        .map_err(|e| AppError::Internal(format!("bad notification payload: {e}")))?;
    let owner = DbId(wire.o);
    let mut changes = Vec::with_capacity(wire.c.len());
    for change in wire.c {
        let change = match change {
            WireChange::Created { t } => from_wire(t).map(TodoChange::Created),
            WireChange::Updated { t } => from_wire(t).map(TodoChange::Updated),
            WireChange::Deleted { i } => Some(TodoChange::Deleted(DbId(i))),
            // Gone again by now: its DELETED event follows.
            WireChange::CreatedRef { i } => {
                db::todos::find(db, owner, DbId(i)).await?.map(TodoChange::Created)
            }
            WireChange::UpdatedRef { i } => {
                db::todos::find(db, owner, DbId(i)).await?.map(TodoChange::Updated)
            }
        };
        changes.extend(change);
    }
    Ok(Notice { owner, changes, revoked_below: wire.r })
}

/// Keeps one `LISTEN` connection open for this instance and feeds the hub,
/// reconnecting by itself. While it is down the hub is not live: open
/// subscriptions are ended with EVENTS_LOST (they may have missed events) and
/// new ones are refused until it is back.
pub async fn listen(url: String, db: Db, hub: Arc<Hub>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = listen_once(&url, &db, &hub);
        tokio::select! {
            result = session => {
                if let Err(error) = result {
                    tracing::warn!(?error, "event listener disconnected; reconnecting");
                }
            }
            () = crate::events::stopping(&mut shutdown) => return,
        }
        if hub.is_live() {
            hub.set_live(false);
            hub.broadcast(HubMessage::Lost);
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = crate::events::stopping(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn listen_once(url: &str, db: &Db, hub: &Hub) -> AppResult<()> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| AppError::Unavailable(format!("cannot connect: {e}")))?;
    // The connection must be polled for the LISTEN below to complete, and
    // notifications arrive through it: forward them to a channel.
    let (sender, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                    if sender.send(notification.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "event listener connection failed");
                    break;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| AppError::Unavailable(format!("LISTEN failed: {e}")))?;
        hub.set_live(true);
        tracing::info!("event listener connected");
        while let Some(payload) = notifications.recv().await {
            match decode(db, &payload).await {
                Ok(notice) => hub.publish(&notice),
                Err(error) => tracing::error!(?error, "dropping an undecodable notification"),
            }
        }
        Err(AppError::Unavailable("connection closed".into()))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo(description_len: usize) -> Todo {
        Todo {
            id: DbId::new(),
            title: "é".repeat(200),
            description: Some("ü".repeat(description_len)),
            completed: true,
            created_at: DbTime::now(),
            updated_at: DbTime::now(),
        }
    }

    fn decode_offline(payload: &str) -> WireNotice {
        serde_json::from_str(payload).expect("valid JSON")
    }

    #[test]
    fn payloads_stay_under_the_limit_and_keep_order() {
        let owner = DbId::new();
        let todos: Vec<Todo> = (0..300).map(|_| todo(50)).collect();
        let mut changes: Vec<TodoChange> = todos.iter().cloned().map(TodoChange::Updated).collect();
        // 2,000 four-byte characters: 8,000 bytes, too large to carry.
        let mut huge = todo(0);
        huge.description = Some("😀".repeat(2000));
        changes.push(TodoChange::Created(huge));
        changes.push(TodoChange::Deleted(DbId::new()));
        let notice = Notice { owner, changes, revoked_below: Some(4) };
        let payloads = encode(&notice);
        assert!(payloads.len() > 1);
        let mut ids = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8000, "{} bytes", payload.len());
            let wire = decode_offline(payload);
            assert_eq!(wire.o, owner.0);
            for change in wire.c {
                ids.push(match change {
                    WireChange::Created { t } | WireChange::Updated { t } => t.i,
                    WireChange::CreatedRef { i }
                    | WireChange::UpdatedRef { i }
                    | WireChange::Deleted { i } => i,
                });
            }
        }
        let expected: Vec<Uuid> = notice.changes.iter().map(|c| c.todo_id().0).collect();
        assert_eq!(ids, expected);
        // The revocation travels once, with the last payload.
        assert_eq!(decode_offline(payloads.last().expect("one")).r, Some(4));
        // The 2000-character description did not fit: it travels by id.
        assert!(payloads.iter().any(|p| p.contains("\"k\":\"C\"")));
    }

    #[test]
    fn a_todo_survives_the_trip() {
        let original = todo(10);
        let wire = serde_json::from_str::<WireTodo>(&json(&wire_todo(&original))).expect("JSON");
        assert_eq!(from_wire(wire), Some(original));
    }
}
