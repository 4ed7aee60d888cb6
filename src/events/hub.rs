//! The in-process fan-out: one bounded broadcast channel per user with
//! subscribers, so an event wakes only its owner's subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::{Notice, TodoChange};
use crate::db::types::DbId;
use crate::error::{AppError, AppResult};

/// How many messages a subscriber may fall behind before it is dropped with
/// an error: memory stays bounded whatever a slow client does.
pub const SUBSCRIBER_BUFFER: usize = 256;

#[derive(Debug, Clone)]
pub enum HubMessage {
    Change(Arc<TodoChange>),
    /// Tokens below this version were revoked.
    Revoked(i32),
    /// Events may have been missed (the PostgreSQL listener lost its
    /// connection): the subscriber must re-fetch and subscribe again.
    Lost,
    /// The server is shutting down.
    Shutdown,
}

struct Channel {
    sender: broadcast::Sender<HubMessage>,
    subscribers: usize,
}

#[derive(Default)]
struct Channels {
    by_user: HashMap<DbId, Channel>,
    total: usize,
}

pub struct Hub {
    channels: Mutex<Channels>,
    max_per_user: usize,
    max_total: usize,
    /// False while the PostgreSQL listener is reconnecting: a subscription
    /// started then could silently miss events, so none is started.
    live: AtomicBool,
    /// Accounts behind recently seen tokens; evicted here on revocation.
    pub users: crate::auth::user_cache::UserCache,
}

impl Hub {
    pub fn new(max_per_user: usize, max_total: usize, live: bool) -> Self {
        Self {
            channels: Mutex::default(),
            max_per_user,
            max_total,
            live: AtomicBool::new(live),
            users: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // A panic while holding this lock leaves the map consistent (every
        // update is a single insert/remove), so poisoning can be ignored.
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>, owner: DbId) -> AppResult<HubSubscription> {
        if !self.live.load(Ordering::Acquire) {
            return Err(AppError::Unavailable("the event listener is reconnecting".into()));
        }
        let mut channels = self.lock();
        if channels.total >= self.max_total {
            return Err(AppError::TooManySubscriptions(
                "This server has too many open subscriptions; try again later",
            ));
        }
        let channel = channels
            .by_user
            .entry(owner)
            .or_insert_with(|| Channel { sender: broadcast::channel(SUBSCRIBER_BUFFER).0, subscribers: 0 });
        if channel.subscribers >= self.max_per_user {
            return Err(AppError::TooManySubscriptions("Too many open subscriptions for this account"));
        }
        channel.subscribers += 1;
        let receiver = channel.sender.subscribe();
        channels.total += 1;
        Ok(HubSubscription { hub: Arc::clone(self), owner, receiver })
    }

    /// Delivers a committed write's notice to its owner's subscribers.
    pub fn publish(&self, notice: &Notice) {
        if notice.revoked_below.is_some() {
            self.users.evict(notice.owner);
        }
        let channels = self.lock();
        let Some(channel) = channels.by_user.get(&notice.owner) else { return };
        for change in &notice.changes {
            // An error only means nobody is listening right now.
            let _ = channel.sender.send(HubMessage::Change(Arc::new(change.clone())));
        }
        if let Some(version) = notice.revoked_below {
            let _ = channel.sender.send(HubMessage::Revoked(version));
        }
    }

    /// Tells every subscriber something (events lost, shutdown).
    pub fn broadcast(&self, message: HubMessage) {
        for channel in self.lock().by_user.values() {
            let _ = channel.sender.send(message.clone());
        }
    }

    pub fn set_live(&self, live: bool) {
        if !live {
            // Revocations may be missed while the bus is down.
            self.users.clear();
        }
        self.live.store(live, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub fn open_subscriptions(&self) -> usize {
        self.lock().total
    }

    fn release(&self, owner: DbId) {
        let mut channels = self.lock();
        channels.total = channels.total.saturating_sub(1);
        if let Some(channel) = channels.by_user.get_mut(&owner) {
            channel.subscribers = channel.subscribers.saturating_sub(1);
            if channel.subscribers == 0 {
                channels.by_user.remove(&owner);
            }
        }
    }
}

/// One open subscription; releases its slot when dropped.
pub struct HubSubscription {
    hub: Arc<Hub>,
    owner: DbId,
    receiver: broadcast::Receiver<HubMessage>,
}

impl HubSubscription {
    /// The next message; `Lost` when this subscriber fell behind.
    pub async fn recv(&mut self) -> HubMessage {
        match self.receiver.recv().await {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(_)) => HubMessage::Lost,
            Err(broadcast::error::RecvError::Closed) => HubMessage::Shutdown,
        }
    }
}

impl Drop for HubSubscription {
    fn drop(&mut self) {
        self.hub.release(self.owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::types::DbTime;
    use crate::todos::Todo;

    fn todo() -> Todo {
        Todo {
            id: DbId::new(),
            title: "t".into(),
            description: None,
            completed: false,
            created_at: DbTime::now(),
            updated_at: DbTime::now(),
        }
    }

    #[tokio::test]
    async fn delivers_only_to_the_owner_in_order() {
        let hub = Arc::new(Hub::new(10, 100, true));
        let (alice, bob) = (DbId::new(), DbId::new());
        let mut alice_sub = hub.subscribe(alice).expect("subscribes");
        let mut bob_sub = hub.subscribe(bob).expect("subscribes");
        let (first, second) = (todo(), todo());
        hub.publish(&Notice::changes(
            alice,
            vec![TodoChange::Created(first.clone()), TodoChange::Deleted(second.id)],
        ));
        hub.publish(&Notice::revoked(bob, 3));
        assert!(matches!(alice_sub.recv().await, HubMessage::Change(c) if *c == TodoChange::Created(first)));
        assert!(
            matches!(alice_sub.recv().await, HubMessage::Change(c) if *c == TodoChange::Deleted(second.id))
        );
        assert!(matches!(bob_sub.recv().await, HubMessage::Revoked(3)));
    }

    #[tokio::test]
    async fn caps_and_releases_slots() {
        let hub = Arc::new(Hub::new(2, 3, true));
        let (alice, bob) = (DbId::new(), DbId::new());
        let a1 = hub.subscribe(alice).expect("1st");
        let _a2 = hub.subscribe(alice).expect("2nd");
        assert!(matches!(hub.subscribe(alice), Err(AppError::TooManySubscriptions(_))));
        let _b1 = hub.subscribe(bob).expect("bob");
        assert!(matches!(hub.subscribe(bob), Err(AppError::TooManySubscriptions(_))), "instance cap");
        drop(a1);
        assert_eq!(hub.open_subscriptions(), 2);
        let _b2 = hub.subscribe(bob).expect("a slot was released");
        hub.set_live(false);
        assert!(matches!(hub.subscribe(DbId::new()), Err(AppError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told() {
        let hub = Arc::new(Hub::new(10, 100, true));
        let owner = DbId::new();
        let mut slow = hub.subscribe(owner).expect("subscribes");
        for _ in 0..=SUBSCRIBER_BUFFER {
            hub.publish(&Notice::changes(owner, vec![TodoChange::Deleted(DbId::new())]));
        }
        assert!(matches!(slow.recv().await, HubMessage::Lost));
    }
}
