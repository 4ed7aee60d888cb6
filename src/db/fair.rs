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
}

/// A client's place among the pool's users; held with the connection.
pub struct Turn {
    turns: Arc<FairTurns>,
    client: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl FairTurns {
    pub fn new(per_client: usize) -> Arc<Self> {
        Arc::new(Self { per_client: per_client.max(1), clients: Mutex::default() })
    }

    /// Waits for the current client's turn (at once when it has fewer than
    /// `per_client` queries at the pool). `None`: no client, no gate.
    pub async fn take(self: &Arc<Self>) -> Option<Turn> {
        let client = current_client()?;
        let gate = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(clients.entry(client).or_insert_with(|| Arc::new(Semaphore::new(self.per_client))))
        };
        // The semaphore is never closed.
        let permit = gate.acquire_owned().await.ok()?;
        Some(Turn { turns: Arc::clone(self), client, permit: Some(permit) })
    }

    #[cfg(test)]
    fn tracked_clients(&self) -> usize {
        self.clients.lock().map(|clients| clients.len()).unwrap_or(0)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut clients = self.turns.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Forget a client once nobody holds or waits for its gate.
        if clients.get(&self.client).is_some_and(|gate| Arc::strong_count(gate) == 1) {
            clients.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_waits_behind_itself_only() {
        let turns = FairTurns::new(2);
        let (flood, victim): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        assert!(turns.take().await.is_none(), "no client: not gated");
        let first = on_behalf_of(Some(flood), turns.take()).await;
        let second = on_behalf_of(Some(flood), turns.take()).await;
        assert!(first.is_some() && second.is_some());
        let third = on_behalf_of(Some(flood), turns.take());
        tokio::pin!(third);
        assert!(futures_util::poll!(&mut third).is_pending(), "the flood waits for its own turns");
        assert!(on_behalf_of(Some(victim), turns.take()).await.is_some(), "another client does not");
        drop(first);
        assert!(third.await.is_some());
        drop(second);
        assert_eq!(turns.tracked_clients(), 0, "idle clients are forgotten");
    }
}
