//! Password rules and bcrypt, off the async runtime.
//!
//! bcrypt is deliberately slow (~65 ms at cost 10 on one core). Each hash runs
//! on a blocking thread, and a semaphore caps how many run at once, so a storm
//! of logins queues here instead of occupying every core and stalling the
//! requests that do not hash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};

use super::rate_limit::ClientAddr;
use crate::error::{AppError, AppResult};

pub const MIN_PASSWORD_BYTES: usize = 8;
/// bcrypt ignores everything past 72 bytes; longer passwords are refused
/// rather than silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

pub fn validate(field: &'static str, password: &str) -> AppResult<()> {
    let len = password.len();
    if len < MIN_PASSWORD_BYTES {
        return Err(AppError::bad_input(
            field,
            format!("Password must be at least {MIN_PASSWORD_BYTES} bytes"),
        ));
    }
    if len > MAX_PASSWORD_BYTES {
        return Err(AppError::bad_input(
            field,
            format!("Password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)"),
        ));
    }
    Ok(())
}

pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    concurrency: usize,
    /// Per client: at most `concurrency` of one client's computations wait
    /// for or hold a permit at once. The permit queue is first-come
    /// first-served, so without this one client firing a thousand logins
    /// would queue a thousand hashes ahead of everyone else; with it, another
    /// client waits behind at most `concurrency` of them.
    clients: Mutex<HashMap<ClientAddr, Arc<Semaphore>>>,
    /// The cost of the dummy hash checked when an email is unknown: the cost
    /// most stored hashes have (see [`PasswordHasher::set_dummy_cost`]), so
    /// an unknown email takes as long as a wrong password for a known one
    /// even after `BCRYPT_COST` changed.
    dummy_cost: AtomicU32,
    dummy_hashes: Mutex<HashMap<u32, Arc<OnceCell<String>>>>,
    /// Total time callers spent waiting for a permit (for metrics).
    queue_wait: AtomicU64,
}

impl PasswordHasher {
    pub fn new(cost: u32, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            clients: Mutex::default(),
            dummy_cost: AtomicU32::new(cost),
            dummy_hashes: Mutex::default(),
            queue_wait: AtomicU64::new(0),
        }
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub async fn hash(&self, password: &str, client: Option<ClientAddr>) -> AppResult<String> {
        let password = password.to_owned();
        let cost = self.cost;
        self.run(client, move || bcrypt::hash(password, cost)).await
    }

    pub async fn verify(&self, password: &str, hash: &str, client: Option<ClientAddr>) -> AppResult<bool> {
        let password = password.to_owned();
        let hash = hash.to_owned();
        // A malformed stored hash is a server-side fault, not a wrong password.
        self.run(client, move || bcrypt::verify(password, &hash)).await
    }

    /// Burns the time of one verification against a stored hash and returns
    /// false.
    pub async fn verify_dummy(&self, password: &str, client: Option<ClientAddr>) -> AppResult<bool> {
        let cost = self.dummy_cost.load(Ordering::Relaxed);
        let cell = {
            let mut hashes = self.dummy_hashes.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(hashes.entry(cost).or_default())
        };
        let dummy = cell
            .get_or_try_init(|| async {
                let secret = uuid::Uuid::new_v4().to_string();
                self.run(client, move || bcrypt::hash(secret, cost)).await
            })
            .await?;
        self.verify(password, dummy, client).await.map(|_| false)
    }

    /// Sets the dummy hash's cost (see the field); costs outside bcrypt's
    /// range are ignored.
    pub fn set_dummy_cost(&self, cost: u32) {
        if (4..=31).contains(&cost) {
            self.dummy_cost.store(cost, Ordering::Relaxed);
        }
    }

    /// Microseconds spent waiting for a bcrypt slot since start.
    pub fn queue_wait_micros(&self) -> u64 {
        self.queue_wait.load(Ordering::Relaxed)
    }

    async fn run<T, F>(&self, client: Option<ClientAddr>, work: F) -> AppResult<T>
    where
        F: FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
        T: Send + 'static,
    {
        let started = Instant::now();
        let gate = client.map(|client| {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(clients.entry(client).or_insert_with(|| Arc::new(Semaphore::new(self.concurrency))))
        });
        let client_permit = match &gate {
            Some(gate) => Some(Arc::clone(gate).acquire_owned().await.map_err(AppError::internal)?),
            None => None,
        };
        let permit = self.permits.clone().acquire_owned().await.map_err(AppError::internal)?;
        let waited = started.elapsed().min(Duration::from_secs(3600));
        self.queue_wait.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || {
            let _permits = (permit, client_permit);
            work()
        })
        .await;
        if let (Some(client), Some(gate)) = (client, gate) {
            self.forget_idle(client, gate);
        }
        result.map_err(AppError::internal)?.map_err(AppError::internal)
    }

    /// Drops a client's gate once nobody holds or waits for it, so the map
    /// holds only clients with work in flight.
    fn forget_idle(&self, client: ClientAddr, gate: Arc<Semaphore>) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        drop(gate);
        if clients.get(&client).is_some_and(|gate| Arc::strong_count(gate) == 1) {
            clients.remove(&client);
        }
    }
}

/// The cost a bcrypt hash was made with (`$2b$10$…` → 10).
pub fn hash_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_rules_are_in_bytes() {
        assert!(validate("password", "1234567").is_err());
        assert!(validate("password", "12345678").is_ok());
        assert!(validate("password", &"a".repeat(72)).is_ok());
        assert!(validate("password", &"a".repeat(73)).is_err());
        // 36 two-byte characters are 72 bytes; 37 are too many.
        assert!(validate("password", &"é".repeat(36)).is_ok());
        assert!(validate("password", &"é".repeat(37)).is_err());
    }

    #[tokio::test]
    async fn hashes_and_verifies() {
        let hasher = PasswordHasher::new(4, 1);
        let hash = hasher.hash("correct horse", None).await.expect("hash");
        assert_eq!(hash_cost(&hash), Some(4));
        assert!(hasher.verify("correct horse", &hash, None).await.expect("verify"));
        assert!(!hasher.verify("wrong horse!", &hash, None).await.expect("verify"));
        assert!(!hasher.verify_dummy("correct horse", None).await.expect("dummy"));
    }

    #[tokio::test]
    async fn the_dummy_hash_follows_the_stored_cost() {
        let hasher = PasswordHasher::new(4, 1);
        hasher.set_dummy_cost(5);
        assert!(!hasher.verify_dummy("whatever!", None).await.expect("dummy"));
        let cell = hasher.dummy_hashes.lock().expect("lock").get(&5).cloned().expect("made at cost 5");
        assert_eq!(cell.get().and_then(|hash| hash_cost(hash)), Some(5));
        hasher.set_dummy_cost(99);
        assert_eq!(hasher.dummy_cost.load(Ordering::Relaxed), 5, "out of range is ignored");
    }

    /// One client with many hashes queued cannot keep another client's one
    /// hash waiting behind all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_share_the_workers_fairly() {
        // Hashes long enough (cost 7) that task wake-ups on a busy machine
        // do not blur their order.
        let hasher = Arc::new(PasswordHasher::new(7, 1));
        let (flood, victim) = (
            ClientAddr::new("192.0.2.1".parse().expect("ip")),
            ClientAddr::new("192.0.2.2".parse().expect("ip")),
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (hasher, order) = (Arc::clone(&hasher), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                hasher.hash("flooding", Some(flood)).await.expect("hash");
                order.lock().expect("lock").push(i);
            }));
        }
        // Let the flood queue up before the victim arrives.
        while hasher.clients.lock().expect("lock").get(&flood).is_none() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done_on_arrival = order.lock().expect("lock").len();
        hasher.hash("victim's", Some(victim)).await.expect("hash");
        let waited_for = order.lock().expect("lock").len() - done_on_arrival;
        for task in tasks {
            task.await.expect("task");
        }
        // The one running when the victim arrived, and a wake-up's worth of
        // slack; first come, first served it would be all the rest.
        assert!(waited_for <= 3, "the victim waited for {waited_for} of the flood's hashes");
        assert!(hasher.clients.lock().expect("lock").is_empty(), "idle clients are forgotten");
    }
}
