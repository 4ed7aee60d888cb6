//! Rate limiting of password checks and signups: attempts per key (email,
//! client address) over a sliding window, stored in the database so every
//! instance shares them.
//!
//! Every password check counts — `login`, and the current password given to
//! `changePassword` or `deleteAccount` — one per field, so aliasing 100 of
//! them into one document or batching them buys an attacker nothing. A
//! successful check clears its email's count (the owner got in) but never
//! the address's other failures. Signups count per address whatever their
//! outcome: each costs a bcrypt hash and may cost an account row.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use crate::db::Db;
use crate::db::login_attempts::{self, Admission};
use crate::db::types::{DbId, DbTime};
use crate::db::users::User;
use crate::error::{AppError, AppResult};

/// The client a request came from, as limits key it: an IPv4 address, or an
/// IPv6 /64 (one subscriber's usual allocation: keying single IPv6
/// addresses would give every client 2^64 fresh identities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1_u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }

    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoginLimits {
    pub per_email: u32,
    pub per_address: u32,
    pub window: Duration,
    /// Signups per client address per [`SIGNUP_WINDOW`]; 0: unlimited.
    pub signups_per_address: u32,
}

pub const SIGNUP_WINDOW: Duration = Duration::from_secs(3600);

/// The limits, and the in-process side of admitting attempts atomically.
pub struct Limiter {
    limits: LoginLimits,
    /// Keys with an admission in flight in this process. Attempts on one key
    /// take their turn here, before they take a database connection: on
    /// PostgreSQL the cross-instance turn is an advisory lock held inside a
    /// transaction, and a storm of attempts from one client queueing on it
    /// would otherwise hold every pooled connection while it waits.
    busy_keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// One admitted attempt; tell it how the login went.
pub struct Attempt {
    email_key: String,
    address_row: Option<DbId>,
}

impl Limiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self { limits, busy_keys: Mutex::default() }
    }

    /// Admits one login attempt for `email` from `client`, or refuses it with
    /// RATE_LIMITED and the seconds until the next attempt may succeed.
    pub async fn admit(&self, db: &Db, email: &str, client: Option<ClientAddr>) -> AppResult<Attempt> {
        // Malformed addresses (which never sign in) share one key, so the key
        // is always storable text whatever a client sends.
        let email_key = match crate::auth::email::normalize(email) {
            Ok(email) => format!("email:{email}"),
            Err(_) => "email:(malformed)".to_owned(),
        };
        self.admit_check(db, email_key, client).await
    }

    /// Admits one check of `user`'s current password (`changePassword`,
    /// `deleteAccount`): it counts like a login for that account's email, so
    /// a stolen token is not a way to guess the password.
    pub async fn admit_password_check(
        &self,
        db: &Db,
        user: &User,
        client: Option<ClientAddr>,
    ) -> AppResult<Attempt> {
        self.admit_check(db, format!("email:{}", user.email), client).await
    }

    async fn admit_check(
        &self,
        db: &Db,
        email_key: String,
        client: Option<ClientAddr>,
    ) -> AppResult<Attempt> {
        let mut keys = vec![(email_key.clone(), i64::from(self.limits.per_email))];
        if let Some(client) = client {
            keys.push((format!("addr:{client}"), i64::from(self.limits.per_address)));
        }
        let ids = self.record(db, &keys, self.limits.window).await?;
        Ok(Attempt { email_key, address_row: ids.get(1).copied() })
    }

    /// Admits one signup from `client`. Without an address (an embedder
    /// calling in-process) there is nothing to key on.
    pub async fn admit_signup(&self, db: &Db, client: Option<ClientAddr>) -> AppResult<()> {
        match client {
            Some(client) if self.limits.signups_per_address > 0 => {
                let keys = [(format!("signup:{client}"), i64::from(self.limits.signups_per_address))];
                self.record(db, &keys, SIGNUP_WINDOW).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

impl Limiter {
    /// Records one attempt under every key, or refuses with RATE_LIMITED.
    async fn record(&self, db: &Db, keys: &[(String, i64)], window: Duration) -> AppResult<Vec<DbId>> {
        let _turns = self.take_turns(keys).await;
        admit(db, keys, window).await
    }

    /// Waits for this process's turn on every key, in sorted order (two
    /// attempts sharing keys cannot deadlock).
    async fn take_turns(&self, keys: &[(String, i64)]) -> Turns<'_> {
        let mut names: Vec<String> = keys.iter().map(|(key, _)| key.clone()).collect();
        names.sort_unstable();
        names.dedup();
        let locks: Vec<_> = {
            let mut busy = self.busy_keys.lock().unwrap_or_else(|p| p.into_inner());
            names.iter().map(|name| Arc::clone(busy.entry(name.clone()).or_default())).collect()
        };
        let mut turns = Turns { limiter: self, keys: names, guards: Vec::with_capacity(locks.len()) };
        for lock in locks {
            turns.guards.push(lock.lock_owned().await);
        }
        turns
    }
}

/// Turns held on some keys. Dropped (also when the request is cancelled),
/// it lets the next attempt go and removes the keys nobody else wants, so
/// the table holds only keys with attempts in flight.
struct Turns<'a> {
    limiter: &'a Limiter,
    keys: Vec<String>,
    guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turns<'_> {
    fn drop(&mut self) {
        self.guards.clear();
        let mut busy = self.limiter.busy_keys.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            // Only the table's own reference left: nobody holds or awaits it.
            if busy.get(key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
                busy.remove(key);
            }
        }
    }
}

/// Records one attempt under every key, or refuses with RATE_LIMITED.
async fn admit(db: &Db, keys: &[(String, i64)], window: Duration) -> AppResult<Vec<DbId>> {
    let window = chrono::Duration::from_std(window).map_err(AppError::internal)?;
    let since = DbTime::from(Utc::now() - window);
    match login_attempts::admit(db, keys, since).await? {
        Admission::Admitted(ids) => Ok(ids),
        Admission::Refused { oldest } => {
            let frees_at = oldest.get() + window;
            let wait = (frees_at - Utc::now()).num_milliseconds().max(0) as u64;
            tracing::warn!("attempt refused by the rate limiter");
            Err(AppError::RateLimited { retry_after_secs: wait.div_ceil(1000).max(1) })
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

/// Every few minutes: deletes attempts that left their window, so keys that
/// are never tried again do not linger, and points the unknown-email dummy
/// hash at the stored hashes' cost again.
pub async fn prune_forever(
    app: std::sync::Arc<crate::app::App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let window = app.config.login_limits.window.max(SIGNUP_WINDOW);
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = every.tick() => {
                let cutoff = chrono::Duration::from_std(window).map(|w| DbTime::from(Utc::now() - w));
                if let Ok(cutoff) = cutoff {
                    if let Err(error) = login_attempts::prune(&app.db, cutoff).await {
                        tracing::warn!(?error, "pruning login attempts failed");
                    }
                }
                crate::auth::follow_stored_hash_cost(&app.auth, &app.db).await;
            }
            () = crate::events::stopping(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_on_a_key_are_taken_one_at_a_time_and_forgotten() {
        let limiter = Limiter::new(LoginLimits {
            per_email: 1,
            per_address: 1,
            window: Duration::from_secs(1),
            signups_per_address: 1,
        });
        let keys = [("addr:a".to_owned(), 1), ("email:x".to_owned(), 1)];
        let first = limiter.take_turns(&keys).await;
        // Another attempt sharing a key waits for the first.
        let shared = [("email:x".to_owned(), 1)];
        let second = limiter.take_turns(&shared);
        tokio::pin!(second);
        assert!(futures_util::poll!(&mut second).is_pending());
        // An attempt on other keys does not.
        drop(limiter.take_turns(&[("addr:b".to_owned(), 1)]).await);
        drop(first);
        drop(second.await);
        assert!(limiter.busy_keys.lock().expect("lock").is_empty(), "idle keys are forgotten");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |ip: &str| ClientAddr::new(ip.parse().expect("ip")).to_string();
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7", "IPv4-mapped is the IPv4 client");
    }
}
