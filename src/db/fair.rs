//! Fair turns at the connection pools, per client.
//!
//! bb8 hands connections out first come, first served. A client that keeps
//! many requests in flight (each aliasing thirty `totalCount`s) would queue
//! hundreds of queries ahead of everyone else, and another user's one query
//! would wait behind all of them. So each client may have at most a pool's
//! worth of queries waiting for or holding a connection; past that it waits
//! behind itself. One client alone still gets the whole pool; with others it
//! gets its turn among them, as with bcrypt (see `auth::password`).
//!
//! Within a pool, queries are served strictly in order of arrival (see
//! [`FairTurns::lanes`]).
//!
//! The client is whoever the HTTP or WebSocket layer says is being served,
//! carried in a task-local so the query code (many callers, one macro) does
//! not need it threaded through. Work with no client (background tasks,
//! embedders) is not gated.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

tokio::task_local! {
    static CLIENT: IpAddr;
}

/// Runs `work` on behalf of `client` (an address as the limits key it).
pub async fn on_behalf_of<F: Future>(client: Option<IpAddr>, work: F) -> F::Output {
    match client {
        Some(client) => CLIENT.scope(client, work).await,
        None => work.await,
    }
}

/// The client the current task serves, if any.
pub fn current_client() -> Option<IpAddr> {
    CLIENT.try_with(|client| *client).ok()
}

pub struct FairTurns {
    per_client: usize,
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    /// One permit per connection of each pool ([`Lane`]). bb8 wakes a waiter
    /// when a connection comes back, but a request arriving just then may
    /// take it first: under a steady stream of requests one waiter could
    /// lose that race for its whole timeout. A semaphore hands permits over
    /// in order, so whoever holds one finds a connection free.
    lanes: [Arc<Semaphore>; 2],
}

/// Which pool a query waits for.
#[derive(Debug, Clone, Copy)]
pub enum Lane {
    /// PostgreSQL's pool, or SQLite's readers.
    Shared = 0,
    /// SQLite's single writer.
    SqliteWriter = 1,
}

/// A query's place at a pool; held with the connection.
pub struct Turn {
    client: Option<(Arc<FairTurns>, IpAddr, OwnedSemaphorePermit)>,
    _lane: OwnedSemaphorePermit,
}

impl FairTurns {
    /// `per_client`: queries one client may have at the pools; `shared` and
    /// `writer`: connections in each lane's pool.
    pub fn new(per_client: usize, shared: usize, writer: usize) -> Arc<Self> {
        Arc::new(Self {
            per_client: per_client.max(1),
            clients: Mutex::default(),
            lanes: [Arc::new(Semaphore::new(shared.max(1))), Arc::new(Semaphore::new(writer.max(1)))],
        })
    }

    /// Waits for the current client's turn (at once when it has fewer than
    /// `per_client` queries at the pools; work with no client is not gated
    /// per client), then for a connection's turn in `lane`, in order.
    pub async fn take(self: &Arc<Self>, lane: Lane) -> Option<Turn> {
        let client = match current_client() {
            Some(client) => {
                let gate = {
                    let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
                    Arc::clone(
                        clients.entry(client).or_insert_with(|| Arc::new(Semaphore::new(self.per_client))),
                    )
                };
                // The semaphores are never closed.
                Some((Arc::clone(self), client, gate.acquire_owned().await.ok()?))
            }
            None => None,
        };
        let lane = Arc::clone(&self.lanes[lane as usize]).acquire_owned().await.ok()?;
        Some(Turn { client, _lane: lane })
    }

    #[cfg(test)]
    fn tracked_clients(&self) -> usize {
        self.clients.lock().map(|clients| clients.len()).unwrap_or(0)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((turns, client, permit)) = self.client.take() {
            drop(permit);
            let mut clients = turns.clients.lock().unwrap_or_else(|p| p.into_inner());
            // Forget a client once nobody holds or waits for its gate.
            if clients.get(&client).is_some_and(|gate| Arc::strong_count(gate) == 1) {
                clients.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_waits_behind_itself_only() {
        let turns = FairTurns::new(2, 10, 1);
        let (flood, victim): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        assert!(
            turns.take(Lane::Shared).await.is_some_and(|turn| turn.client.is_none()),
            "no client: not gated"
        );
        let first = on_behalf_of(Some(flood), turns.take(Lane::Shared)).await;
        let second = on_behalf_of(Some(flood), turns.take(Lane::Shared)).await;
        assert!(first.is_some() && second.is_some());
        let third = on_behalf_of(Some(flood), turns.take(Lane::Shared));
        tokio::pin!(third);
        assert!(futures_util::poll!(&mut third).is_pending(), "the flood waits for its own turns");
        assert!(
            on_behalf_of(Some(victim), turns.take(Lane::Shared)).await.is_some(),
            "another client does not"
        );
        drop(first);
        assert!(third.await.is_some());
        drop(second);
        assert_eq!(turns.tracked_clients(), 0, "idle clients are forgotten");
    }

    #[tokio::test]
    async fn a_lane_hands_connections_over_in_order() {
        let turns = FairTurns::new(5, 1, 1);
        let holder = turns.take(Lane::SqliteWriter).await;
        let waiter = turns.take(Lane::SqliteWriter);
        tokio::pin!(waiter);
        assert!(futures_util::poll!(&mut waiter).is_pending());
        drop(holder);
        // A newcomer cannot take the turn the waiter was handed.
        let newcomer = turns.take(Lane::SqliteWriter);
        tokio::pin!(newcomer);
        assert!(futures_util::poll!(&mut newcomer).is_pending());
        assert!(waiter.await.is_some());
        assert!(turns.take(Lane::Shared).await.is_some(), "lanes are separate");
    }
}
