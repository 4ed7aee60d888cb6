//! PostgreSQL as the message bus between instances: `NOTIFY` inside the
//! writing transaction, one `LISTEN` connection per instance.
//!
//! A notification payload must stay under 8000 bytes, so a notice is split
//! into several payloads when needed; a todo too large to travel (a long
//! description) travels as its id and is re-read by the listening instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Hub, Notice, TodoChange};
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

/// Delivers one notification to the hub, re-reading the todos that
/// travelled by id with `reread`. Nothing is dropped silently: when a
/// notification cannot be delivered whole (unreadable, a todo that cannot be
/// read back), the subscribers it was for, or all of them when that is not
/// known, get EVENTS_LOST and the account cache forgets them.
async fn deliver<F: Future<Output = AppResult<Option<Todo>>>>(
    hub: &Hub,
    payload: &str,
    reread: impl Fn(DbId, DbId) -> F,
) {
    let wire: WireNotice = match serde_json::from_str(payload) {
        Ok(wire) => wire,
        Err(error) => {
            tracing::error!(%error, "unreadable notification: every subscriber is told events may be lost");
            hub.undeliverable(None);
            return;
        }
    };
    let owner = DbId(wire.o);
    match changes(owner, wire.c, reread).await {
        Ok(changes) => hub.publish(&Notice { owner, changes, revoked_below: wire.r }),
        Err(error) => {
            tracing::error!(
                ?error,
                "undeliverable notification: its owner's subscribers are told events may be lost"
            );
            // What did arrive is still acted on: a revocation evicts the
            // account and ends its subscriptions.
            if let Some(version) = wire.r {
                hub.publish(&Notice::revoked(owner, version));
            }
            hub.undeliverable(Some(owner));
        }
    }
}

/// A notification's changes, todos that travelled by id read back.
async fn changes<F: Future<Output = AppResult<Option<Todo>>>>(
    owner: DbId,
    wire: Vec<WireChange>,
    reread: impl Fn(DbId, DbId) -> F,
) -> AppResult<Vec<TodoChange>> {
    let unreadable = || AppError::Internal("a notification carries a todo with unreadable timestamps".into());
    let mut changes = Vec::with_capacity(wire.len());
    for change in wire {
        let change = match change {
            WireChange::Created { t } => Some(TodoChange::Created(from_wire(t).ok_or_else(unreadable)?)),
            WireChange::Updated { t } => Some(TodoChange::Updated(from_wire(t).ok_or_else(unreadable)?)),
            WireChange::Deleted { i } => Some(TodoChange::Deleted(DbId(i))),
            // Gone again by now: its DELETED event follows.
            WireChange::CreatedRef { i } => reread(owner, DbId(i)).await?.map(TodoChange::Created),
            WireChange::UpdatedRef { i } => reread(owner, DbId(i)).await?.map(TodoChange::Updated),
        };
        changes.extend(change);
    }
    Ok(changes)
}

/// Notifications read off the LISTEN connection, waiting for delivery.
/// Bounded: if delivery (re-reading todos) falls this far behind, later
/// notifications are dropped, and that is reported rather than silent.
const INBOX_CAPACITY: usize = 4096;

struct Inbox {
    sender: mpsc::Sender<String>,
    /// Set when a notification was dropped because the inbox was full.
    overflowed: Arc<AtomicBool>,
}

impl Inbox {
    fn new() -> (Self, mpsc::Receiver<String>, Arc<AtomicBool>) {
        let (sender, receiver) = mpsc::channel(INBOX_CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        (Self { sender, overflowed: Arc::clone(&overflowed) }, receiver, overflowed)
    }

    /// False once nobody is delivering any more.
    fn offer(&self, payload: String) -> bool {
        match self.sender.try_send(payload) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Delivers what `inbox` receives until it closes; a dropped notification
/// (the inbox was full) could have been anyone's: everyone is told.
async fn deliver_all<F: Future<Output = AppResult<Option<Todo>>>>(
    hub: &Hub,
    inbox: &mut mpsc::Receiver<String>,
    overflowed: &AtomicBool,
    reread: impl Fn(DbId, DbId) -> F,
) {
    while let Some(payload) = inbox.recv().await {
        deliver(hub, &payload, &reread).await;
        // Checked after each delivery: the inbox was full when a
        // notification was dropped, so one is always delivered after it.
        if overflowed.swap(false, Ordering::AcqRel) {
            tracing::error!("the notification inbox overflowed: every subscriber is told events may be lost");
            hub.undeliverable(None);
        }
    }
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
            hub.listener_lost();
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
    // notifications arrive through it: forward them to the inbox. It is
    // polled whatever delivery does, so PostgreSQL's queue never backs up.
    let (inbox, mut notifications, overflowed) = Inbox::new();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                    if !inbox.offer(notification.payload().to_owned()) {
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
        let reread = |owner: DbId, id: DbId| db::todos::find(db, owner, id);
        deliver_all(hub, &mut notifications, &overflowed, reread).await;
        Err(AppError::Unavailable("connection closed".into()))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::HubMessage;

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

    fn hub() -> Arc<Hub> {
        let limits = super::super::HubLimits {
            subscriptions_per_user: 10,
            subscriptions_per_instance: 100,
            subscriptions_per_connection: 10,
            subscriptions_per_address: 100,
            sockets_per_address: 100,
        };
        Arc::new(Hub::new(limits, true))
    }

    fn account(id: DbId) -> crate::db::users::User {
        crate::db::users::User { id, email: "a@b.test".into(), token_version: 1, created_at: DbTime::now() }
    }

    async fn next(subscription: &mut super::super::HubSubscription) -> Option<HubMessage> {
        tokio::time::timeout(Duration::from_secs(1), subscription.recv()).await.ok()
    }

    async fn no_reread(_: DbId, _: DbId) -> AppResult<Option<Todo>> {
        Err(AppError::Internal("not expected".into()))
    }

    #[tokio::test]
    async fn an_unreadable_notification_is_lost_for_everyone() {
        let hub = hub();
        let (alice, bob) = (DbId::new(), DbId::new());
        let mut alice_sub = hub.subscribe(alice, Default::default()).expect("subscribes");
        let mut bob_sub = hub.subscribe(bob, Default::default()).expect("subscribes");
        hub.users.insert(account(bob), hub.users.epoch());
        deliver(&hub, "{\"o\": not JSON", no_reread).await;
        assert!(matches!(next(&mut alice_sub).await, Some(HubMessage::Lost)));
        assert!(matches!(next(&mut bob_sub).await, Some(HubMessage::Lost)));
        assert_eq!(hub.users.get(bob), None, "a lost revocation must not leave the account cached");
    }

    #[tokio::test]
    async fn a_todo_that_cannot_be_read_back_is_lost_for_its_owner() {
        let hub = hub();
        let (alice, bob) = (DbId::new(), DbId::new());
        let mut alice_sub = hub.subscribe(alice, Default::default()).expect("subscribes");
        let mut bob_sub = hub.subscribe(bob, Default::default()).expect("subscribes");
        hub.users.insert(account(alice), hub.users.epoch());
        hub.users.insert(account(bob), hub.users.epoch());
        let mut huge = todo(0);
        huge.description = Some("😀".repeat(2000));
        let notice =
            Notice { owner: alice, changes: vec![TodoChange::Created(huge)], revoked_below: Some(3) };
        let payloads = encode(&notice);
        assert_eq!(payloads.len(), 1);
        assert!(payloads[0].contains("\"k\":\"C\""), "travels by id");
        let database_down = |_: DbId, _: DbId| async { Err(AppError::Unavailable("down".into())) };
        deliver(&hub, &payloads[0], database_down).await;
        // The revocation it carried still counts; then the events are lost.
        assert!(matches!(next(&mut alice_sub).await, Some(HubMessage::Revoked(3))));
        assert!(matches!(next(&mut alice_sub).await, Some(HubMessage::Lost)));
        assert_eq!(hub.users.get(alice), None);
        // Nobody else is disturbed.
        assert!(next(&mut bob_sub).await.is_none());
        assert!(hub.users.get(bob).is_some());
    }

    #[tokio::test]
    async fn a_todo_with_unreadable_timestamps_is_not_dropped_silently() {
        let hub = hub();
        let alice = DbId::new();
        let mut alice_sub = hub.subscribe(alice, Default::default()).expect("subscribes");
        let payload = encode(&Notice::changes(alice, vec![TodoChange::Created(todo(1))])).remove(0);
        let broken = payload.replace("\"ca\":\"", "\"ca\":\"not a time ");
        deliver(&hub, &broken, no_reread).await;
        assert!(matches!(next(&mut alice_sub).await, Some(HubMessage::Lost)));
    }

    #[tokio::test]
    async fn a_full_inbox_is_reported_to_everyone() {
        let hub = hub();
        let (alice, bob) = (DbId::new(), DbId::new());
        let mut bob_sub = hub.subscribe(bob, Default::default()).expect("subscribes");
        let (inbox, mut receiver, overflowed) = Inbox::new();
        let payload = encode(&Notice::changes(alice, vec![TodoChange::Deleted(DbId::new())])).remove(0);
        // One more than fits: the last is dropped.
        for _ in 0..=INBOX_CAPACITY {
            assert!(inbox.offer(payload.clone()));
        }
        drop(inbox);
        deliver_all(&hub, &mut receiver, &overflowed, no_reread).await;
        // Bob's notifications were not among them, but nobody can tell whose
        // the dropped one was.
        assert!(matches!(next(&mut bob_sub).await, Some(HubMessage::Lost)));
    }
}
