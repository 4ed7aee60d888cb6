//! Login rate limiting: attempts per email and per client address over a
//! sliding window, stored in the database so every instance shares them.
//!
//! Each login field counts, so aliasing 100 `login`s into one document or
//! batching them buys an attacker nothing. A successful login clears its
//! email's count (the owner got in) but never the address's other failures.

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;

use crate::db::Db;
use crate::db::login_attempts::{self, Admission};
use crate::db::types::{DbId, DbTime};
use crate::error::{AppError, AppResult};

/// The address a request came from (the TCP peer, or the first
/// `X-Forwarded-For` hop when configured to trust it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

#[derive(Debug, Clone)]
pub struct LoginLimits {
    pub per_email: u32,
    pub per_address: u32,
    pub window: Duration,
}

/// One admitted attempt; tell it how the login went.
pub struct Attempt {
    email_key: String,
    address_row: Option<DbId>,
}

impl LoginLimits {
    /// Admits one attempt for `email` from `client`, or refuses it with
    /// RATE_LIMITED and the seconds until the next attempt may succeed.
    pub async fn admit(&self, db: &Db, email: &str, client: Option<ClientAddr>) -> AppResult<Attempt> {
        // Malformed addresses (which never sign in) share one key, so the key
        // is always storable text whatever a client sends.
        let email_key = match crate::auth::email::normalize(email) {
            Ok(email) => format!("email:{email}"),
            Err(_) => "email:(malformed)".to_owned(),
        };
        let mut keys = vec![(email_key.clone(), i64::from(self.per_email))];
        if let Some(ClientAddr(ip)) = client {
            keys.push((format!("addr:{ip}"), i64::from(self.per_address)));
        }
        let window = chrono::Duration::from_std(self.window).map_err(AppError::internal)?;
        let since = DbTime::from(Utc::now() - window);
        match login_attempts::admit(db, &keys, since).await? {
            Admission::Admitted(ids) => Ok(Attempt { email_key, address_row: ids.get(1).copied() }),
            Admission::Refused { oldest } => {
                let frees_at = oldest.get() + window;
                let wait = (frees_at - Utc::now()).num_milliseconds().max(0) as u64;
                tracing::warn!("login refused by the rate limiter");
                Err(AppError::RateLimited { retry_after_secs: wait.div_ceil(1000).max(1) })
            }
        }
    }
}

impl Attempt {
    /// The login succeeded: the email starts afresh, and this attempt does
    /// not count against the address.
    pub async fn succeeded(self, db: &Db) -> AppResult<()> {
        let ids: Vec<DbId> = self.address_row.into_iter().collect();
        login_attempts::forget(db, &self.email_key, &ids).await
    }
}

/// Deletes attempts that left the window, every few minutes, so keys that
/// are never tried again do not linger.
pub async fn prune_forever(db: Db, window: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = every.tick() => {
                let cutoff = chrono::Duration::from_std(window).map(|w| DbTime::from(Utc::now() - w));
                if let Ok(cutoff) = cutoff {
                    if let Err(error) = login_attempts::prune(&db, cutoff).await {
                        tracing::warn!(?error, "pruning login attempts failed");
                    }
                }
            }
            () = crate::events::stopping(&mut shutdown) => return,
        }
    }
}
