//! Password rules and bcrypt, off the async runtime.
//!
//! bcrypt is deliberately slow (~65 ms at cost 10 on one core). Each hash runs
//! on a blocking thread, and a semaphore caps how many run at once, so a storm
//! of logins queues here instead of occupying every core and stalling the
//! requests that do not hash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};

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
    /// Verified against when the email is unknown, so that an unknown email
    /// takes as long as a wrong password.
    dummy_hash: OnceCell<String>,
    /// Total time callers spent waiting for a permit (for metrics).
    queue_wait: std::sync::atomic::AtomicU64,
}

impl PasswordHasher {
    pub fn new(cost: u32, concurrency: usize) -> Self {
        Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: OnceCell::new(),
            queue_wait: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub async fn hash(&self, password: &str) -> AppResult<String> {
        let password = password.to_owned();
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost)).await
    }

    pub async fn verify(&self, password: &str, hash: &str) -> AppResult<bool> {
        let password = password.to_owned();
        let hash = hash.to_owned();
        // A malformed stored hash is a server-side fault, not a wrong password.
        self.run(move || bcrypt::verify(password, &hash)).await
    }

    /// Burns the time of one verification and returns false.
    pub async fn verify_dummy(&self, password: &str) -> AppResult<bool> {
        let dummy = self
            .dummy_hash
            .get_or_try_init(|| async { self.hash(&uuid::Uuid::new_v4().to_string()).await })
            .await?;
        self.verify(password, dummy).await.map(|_| false)
    }

    /// Microseconds spent waiting for a bcrypt slot since start.
    pub fn queue_wait_micros(&self) -> u64 {
        self.queue_wait.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run<T, F>(&self, work: F) -> AppResult<T>
    where
        F: FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
        T: Send + 'static,
    {
        let started = Instant::now();
        let permit = self.permits.clone().acquire_owned().await.map_err(AppError::internal)?;
        let waited = started.elapsed().min(Duration::from_secs(3600));
        self.queue_wait.fetch_add(waited.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)
    }
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
        let hash = hasher.hash("correct horse").await.expect("hash");
        assert!(hasher.verify("correct horse", &hash).await.expect("verify"));
        assert!(!hasher.verify("wrong horse!", &hash).await.expect("verify"));
        assert!(!hasher.verify_dummy("correct horse").await.expect("dummy"));
    }
}
