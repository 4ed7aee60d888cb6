//! The in-process fan-out: one bounded broadcast channel per user with
//! subscribers, so an event wakes only its owner's subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::{Notice, TodoChange};
use crate::auth::rate_limit::ClientAddr;
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

/// Caps on what is open at once; `usize::MAX` means no cap.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub subscriptions_per_user: usize,
    pub subscriptions_per_instance: usize,
    pub subscriptions_per_connection: usize,
    pub subscriptions_per_address: usize,
    pub sockets_per_address: usize,
}

/// One WebSocket connection, as the hub counts its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

/// Where a subscription comes from, for the caps that are not per user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    pub connection: Option<ConnectionId>,
    pub address: Option<ClientAddr>,
}

#[derive(Default)]
struct Channels {
    by_user: HashMap<DbId, Channel>,
    total: usize,
    by_connection: HashMap<ConnectionId, usize>,
    by_address: HashMap<ClientAddr, usize>,
    sockets_by_address: HashMap<ClientAddr, usize>,
    sockets: usize,
}

/// Adds one to `key`'s count.
fn count_in<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    *counts.entry(key).or_default() += 1;
}

/// Takes one from `key`'s count, forgetting keys that reach zero so the maps
/// hold only what is open.
fn count_out<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut entry) = counts.entry(key) {
        *entry.get_mut() = entry.get().saturating_sub(1);
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

fn count_of<K: std::hash::Hash + Eq>(counts: &HashMap<K, usize>, key: &K) -> usize {
    counts.get(key).copied().unwrap_or(0)
}

pub struct Hub {
    /// Every count the caps look at, under one lock: a subscription is
    /// checked against all its caps and counted in all of them at once.
    channels: Mutex<Channels>,
    limits: HubLimits,
    next_connection: AtomicU64,
    /// False while the PostgreSQL listener is reconnecting: a subscription
    /// started then could silently miss events, so none is started.
    live: AtomicBool,
    /// Accounts behind recently seen tokens; evicted here on revocation.
    pub users: crate::auth::user_cache::UserCache,
}

impl Hub {
    pub fn new(limits: HubLimits, live: bool) -> Self {
        Self {
            channels: Mutex::default(),
            limits,
            next_connection: AtomicU64::new(0),
            live: AtomicBool::new(live),
            users: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // A panic while holding this lock leaves the maps consistent (every
        // update is a single insert/remove), so poisoning can be ignored.
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>, owner: DbId, origin: Origin) -> AppResult<HubSubscription> {
        let limits = &self.limits;
        let mut channels = self.lock();
        // Checked under the lock that `listener_lost` broadcasts under: a
        // subscription either registers before that broadcast (and hears
        // `Lost`) or sees the bus down and is refused, never neither.
        if !self.live.load(Ordering::Acquire) {
            return Err(AppError::Unavailable("the event listener is reconnecting".into()));
        }
        if channels.total >= limits.subscriptions_per_instance {
            return Err(AppError::TooManySubscriptions(
                "This server has too many open subscriptions; try again later",
            ));
        }
        if let Some(address) = origin.address
            && count_of(&channels.by_address, &address) >= limits.subscriptions_per_address
        {
            return Err(AppError::TooManySubscriptions("Too many open subscriptions from this address"));
        }
        if let Some(connection) = origin.connection
            && count_of(&channels.by_connection, &connection) >= limits.subscriptions_per_connection
        {
            return Err(AppError::TooManySubscriptions("Too many open subscriptions on this connection"));
        }
        if channels.by_user.get(&owner).map_or(0, |c| c.subscribers) >= limits.subscriptions_per_user {
            return Err(AppError::TooManySubscriptions("Too many open subscriptions for this account"));
        }
        let channel = channels
            .by_user
            .entry(owner)
            .or_insert_with(|| Channel { sender: broadcast::channel(SUBSCRIBER_BUFFER).0, subscribers: 0 });
        channel.subscribers += 1;
        let receiver = channel.sender.subscribe();
        channels.total += 1;
        if let Some(connection) = origin.connection {
            count_in(&mut channels.by_connection, connection);
        }
        if let Some(address) = origin.address {
            count_in(&mut channels.by_address, address);
        }
        Ok(HubSubscription { hub: Arc::clone(self), owner, origin, receiver })
    }

    /// Registers a WebSocket connection from `address`; `None` when that
    /// address already has as many as it may.
    pub fn open_socket(self: &Arc<Self>, address: Option<ClientAddr>) -> Option<SocketSlot> {
        let mut channels = self.lock();
        if let Some(address) = address {
            if count_of(&channels.sockets_by_address, &address) >= self.limits.sockets_per_address {
                return None;
            }
            count_in(&mut channels.sockets_by_address, address);
        }
        channels.sockets += 1;
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        Some(SocketSlot { hub: Arc::clone(self), id, address })
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
        // Down: revocations may be missed from now on, so nothing cached
        // may be trusted. Back: a new epoch, so that an account read while
        // the bus was down (when a revocation could have gone unheard) is
        // not stored once it is live again.
        self.users.clear();
        self.live.store(live, Ordering::Release);
    }

    /// The listener lost its connection: notifications sent until it is
    /// back are gone. Every subscriber is told, new ones wait for it.
    pub fn listener_lost(&self) {
        self.set_live(false);
        self.broadcast(HubMessage::Lost);
    }

    /// A notification could not be delivered (unreadable, or a todo it
    /// named could not be read, or the listener's queue was full): whoever
    /// it was for may have missed events, and a revocation it carried may
    /// be unheard. `None`: it is not known whom it was for.
    pub fn undeliverable(&self, owner: Option<DbId>) {
        match owner {
            Some(owner) => {
                self.users.evict(owner);
                if let Some(channel) = self.lock().by_user.get(&owner) {
                    let _ = channel.sender.send(HubMessage::Lost);
                }
            }
            None => {
                self.users.clear();
                self.broadcast(HubMessage::Lost);
            }
        }
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub fn open_subscriptions(&self) -> usize {
        self.lock().total
    }

    pub fn open_sockets(&self) -> usize {
        self.lock().sockets
    }

    fn release(&self, owner: DbId, origin: Origin) {
        let mut channels = self.lock();
        channels.total = channels.total.saturating_sub(1);
        if let Some(channel) = channels.by_user.get_mut(&owner) {
            channel.subscribers = channel.subscribers.saturating_sub(1);
            if channel.subscribers == 0 {
                channels.by_user.remove(&owner);
            }
        }
        if let Some(connection) = origin.connection {
            count_out(&mut channels.by_connection, connection);
        }
        if let Some(address) = origin.address {
            count_out(&mut channels.by_address, address);
        }
    }
}

/// One open WebSocket connection; releases its place when dropped.
pub struct SocketSlot {
    hub: Arc<Hub>,
    id: ConnectionId,
    address: Option<ClientAddr>,
}

impl SocketSlot {
    pub fn id(&self) -> ConnectionId {
        self.id
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut channels = self.hub.lock();
        channels.sockets = channels.sockets.saturating_sub(1);
        if let Some(address) = self.address {
            count_out(&mut channels.sockets_by_address, address);
        }
    }
}

/// One open subscription; releases its slot when dropped.
pub struct HubSubscription {
    hub: Arc<Hub>,
    owner: DbId,
    origin: Origin,
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
        self.hub.release(self.owner, self.origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::types::DbTime;
    use crate::todos::Todo;

    fn limits(per_user: usize, per_instance: usize) -> HubLimits {
        HubLimits {
            subscriptions_per_user: per_user,
            subscriptions_per_instance: per_instance,
            subscriptions_per_connection: usize::MAX,
            subscriptions_per_address: usize::MAX,
            sockets_per_address: usize::MAX,
        }
    }

    fn hub(per_user: usize, per_instance: usize) -> Arc<Hub> {
        Arc::new(Hub::new(limits(per_user, per_instance), true))
    }

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
        let hub = hub(10, 100);
        let (alice, bob) = (DbId::new(), DbId::new());
        let mut alice_sub = hub.subscribe(alice, Origin::default()).expect("subscribes");
        let mut bob_sub = hub.subscribe(bob, Origin::default()).expect("subscribes");
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
        let hub = hub(2, 3);
        let (alice, bob) = (DbId::new(), DbId::new());
        let a1 = hub.subscribe(alice, Origin::default()).expect("1st");
        let _a2 = hub.subscribe(alice, Origin::default()).expect("2nd");
        assert!(matches!(hub.subscribe(alice, Origin::default()), Err(AppError::TooManySubscriptions(_))));
        let _b1 = hub.subscribe(bob, Origin::default()).expect("bob");
        assert!(
            matches!(hub.subscribe(bob, Origin::default()), Err(AppError::TooManySubscriptions(_))),
            "instance cap"
        );
        drop(a1);
        assert_eq!(hub.open_subscriptions(), 2);
        let _b2 = hub.subscribe(bob, Origin::default()).expect("a slot was released");
        hub.set_live(false);
        assert!(matches!(hub.subscribe(DbId::new(), Origin::default()), Err(AppError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told() {
        let hub = hub(10, 100);
        let owner = DbId::new();
        let mut slow = hub.subscribe(owner, Origin::default()).expect("subscribes");
        for _ in 0..=SUBSCRIBER_BUFFER {
            hub.publish(&Notice::changes(owner, vec![TodoChange::Deleted(DbId::new())]));
        }
        assert!(matches!(slow.recv().await, HubMessage::Lost));
    }

    #[tokio::test]
    async fn caps_per_connection_and_address_and_releases_them() {
        let hub = Arc::new(Hub::new(
            HubLimits {
                subscriptions_per_connection: 2,
                subscriptions_per_address: 3,
                sockets_per_address: 2,
                ..limits(100, 100)
            },
            true,
        ));
        let here = ClientAddr::new("192.0.2.1".parse().expect("ip"));
        let there = ClientAddr::new("192.0.2.2".parse().expect("ip"));
        let one = hub.open_socket(Some(here)).expect("1st socket");
        let two = hub.open_socket(Some(here)).expect("2nd socket");
        assert!(hub.open_socket(Some(here)).is_none(), "sockets per address");
        let elsewhere = hub.open_socket(Some(there)).expect("another address");
        assert_eq!(hub.open_sockets(), 3);
        let from =
            |slot: &SocketSlot, address| Origin { connection: Some(slot.id()), address: Some(address) };
        let refused = |result: AppResult<HubSubscription>| match result {
            Err(AppError::TooManySubscriptions(message)) => message,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        };
        let (alice, bob) = (DbId::new(), DbId::new());
        let a1 = hub.subscribe(alice, from(&one, here)).expect("1st");
        let a2 = hub.subscribe(bob, from(&one, here)).expect("2nd");
        assert!(refused(hub.subscribe(alice, from(&one, here))).contains("connection"));
        let b1 = hub.subscribe(bob, from(&two, here)).expect("3rd from the address");
        assert!(refused(hub.subscribe(alice, from(&two, here))).contains("address"));
        // Other addresses and connections are not affected.
        let c1 = hub.subscribe(alice, from(&elsewhere, there)).expect("elsewhere");
        drop(a1);
        let a3 = hub.subscribe(alice, from(&one, here)).expect("a slot was released");
        drop(two);
        assert_eq!(hub.open_sockets(), 2);
        let three = hub.open_socket(Some(here)).expect("a socket slot was released");
        // Nothing lingers once everything is closed.
        drop((a2, b1, c1, a3, one, three, elsewhere));
        let channels = hub.lock();
        assert_eq!((channels.total, channels.sockets), (0, 0));
        assert!(channels.by_connection.is_empty() && channels.by_address.is_empty());
        assert!(channels.sockets_by_address.is_empty() && channels.by_user.is_empty());
    }

    fn user() -> crate::db::users::User {
        crate::db::users::User {
            id: DbId::new(),
            email: "a@b.test".into(),
            token_version: 1,
            created_at: DbTime::now(),
        }
    }

    #[test]
    fn an_account_read_while_the_bus_was_down_is_not_cached() {
        let hub = hub(10, 100);
        let user = user();
        hub.set_live(false);
        let epoch = hub.users.epoch(); // a read begins while down…
        hub.set_live(true);
        hub.users.insert(user.clone(), epoch); // …and ends once live again
        assert_eq!(hub.users.get(user.id), None);
        let epoch = hub.users.epoch();
        hub.users.insert(user.clone(), epoch);
        assert_eq!(hub.users.get(user.id), Some(user));
    }

    #[tokio::test]
    async fn undeliverable_notifications_tell_whom_they_may_concern() {
        let hub = hub(10, 100);
        let (alice, bob) = (user(), user());
        let mut alice_sub = hub.subscribe(alice.id, Origin::default()).expect("subscribes");
        let mut bob_sub = hub.subscribe(bob.id, Origin::default()).expect("subscribes");
        for account in [&alice, &bob] {
            let epoch = hub.users.epoch();
            hub.users.insert(account.clone(), epoch);
        }
        // Alice's notification was lost: only she is told, only her cache entry goes.
        hub.undeliverable(Some(alice.id));
        assert!(matches!(alice_sub.recv().await, HubMessage::Lost));
        assert!(bob_sub.receiver.try_recv().is_err());
        assert_eq!(hub.users.get(alice.id), None);
        assert_eq!(hub.users.get(bob.id), Some(bob.clone()));
        // Nobody knows whose it was: everyone is told, the cache starts over.
        hub.undeliverable(None);
        assert!(matches!(bob_sub.recv().await, HubMessage::Lost));
        assert_eq!(hub.users.get(bob.id), None);
    }

    #[tokio::test]
    async fn losing_the_listener_ends_subscriptions_and_refuses_new_ones() {
        let hub = hub(10, 100);
        let owner = DbId::new();
        let mut open = hub.subscribe(owner, Origin::default()).expect("subscribes");
        hub.listener_lost();
        assert!(matches!(open.recv().await, HubMessage::Lost));
        assert!(matches!(hub.subscribe(owner, Origin::default()), Err(AppError::Unavailable(_))));
        hub.set_live(true);
        hub.subscribe(owner, Origin::default()).expect("live again");
    }
}
