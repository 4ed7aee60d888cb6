//! A cache of the accounts behind recently seen tokens.
//!
//! Checking revocation needs the account's current token version: a database
//! round trip on every authenticated request, as costly as the request's own
//! query. Revocations already travel on the event bus (every instance hears
//! every `changePassword`, `logoutEverywhere` and `deleteAccount`), so the
//! hub evicts an account the moment its tokens are revoked, and the cache is
//! used only while the bus is live. An entry also expires after `TTL`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::db::types::DbId;
use crate::db::users::User;

const TTL: Duration = Duration::from_secs(30);
/// Past this many accounts the cache starts over: memory stays bounded.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct UserCache {
    entries: Mutex<HashMap<DbId, (User, Instant)>>,
    /// Bumped by every eviction: a lookup that started before one must not
    /// store what it read (it may be the revoked version).
    epoch: AtomicU64,
}

impl UserCache {
    pub fn get(&self, id: DbId) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&id).filter(|(_, at)| at.elapsed() < TTL).map(|(user, _)| user.clone())
    }

    /// The epoch to pass to [`UserCache::insert`] after reading the database.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn insert(&self, user: User, epoch_before_read: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that evictions also take.
        if self.epoch.load(Ordering::Acquire) != epoch_before_read {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(user.id, (user, Instant::now()));
    }

    pub fn evict(&self, id: DbId) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(&id);
    }

    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::types::DbTime;

    fn user() -> User {
        User { id: DbId::new(), email: "a@b.test".into(), token_version: 1, created_at: DbTime::now() }
    }

    #[test]
    fn an_eviction_during_a_read_wins() {
        let cache = UserCache::default();
        let user = user();
        let epoch = cache.epoch();
        cache.evict(user.id); // a revocation lands while the read is in flight
        cache.insert(user.clone(), epoch);
        assert_eq!(cache.get(user.id), None);
        let epoch = cache.epoch();
        cache.insert(user.clone(), epoch);
        assert_eq!(cache.get(user.id), Some(user.clone()));
        cache.evict(user.id);
        assert_eq!(cache.get(user.id), None);
    }
}
