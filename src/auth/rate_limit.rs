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

use std::net::{IpAddr, Ipv6Addr};
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

/// One admitted attempt; tell it how the login went.
pub struct Attempt {
    email_key: String,
    address_row: Option<DbId>,
}

impl LoginLimits {
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
        let mut keys = vec![(email_key.clone(), i64::from(self.per_email))];
        if let Some(client) = client {
            keys.push((format!("addr:{client}"), i64::from(self.per_address)));
        }
        let ids = admit(db, &keys, self.window).await?;
        Ok(Attempt { email_key, address_row: ids.get(1).copied() })
    }

    /// Admits one signup from `client`. Without an address (an embedder
    /// calling in-process) there is nothing to key on.
    pub async fn admit_signup(&self, db: &Db, client: Option<ClientAddr>) -> AppResult<()> {
        match client {
            Some(client) if self.signups_per_address > 0 => {
                let keys = [(format!("signup:{client}"), i64::from(self.signups_per_address))];
                admit(db, &keys, SIGNUP_WINDOW).await.map(|_| ())
            }
            _ => Ok(()),
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
