//! Login attempts, counted per key over a sliding window.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::types::{DbId, DbTime};
use super::{Db, Pools, write};
use crate::error::AppResult;

/// The outcome of asking to make one more attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Recorded: the ids of the rows written, in `keys` order.
    Admitted(Vec<DbId>),
    /// A key is at its limit; its oldest attempt in the window was made then.
    /// Nothing was recorded, so hammering a locked key does not extend it.
    Refused { oldest: DbTime },
}

/// Admits one more attempt under every `(key, limit)` if each key has fewer
/// than `limit` attempts since `since`, and records it, atomically: concurrent
/// attempts (aliased fields, a batch, other instances) cannot all slip in.
pub async fn admit(db: &Db, keys: &[(String, i64)], since: DbTime) -> AppResult<Admission> {
    let now = DbTime::now();
    let is_postgres = matches!(db.pools, Pools::Postgres(_));
    write!(db, |conn| {
        if is_postgres {
            // Serialises attempts on every key across instances (SQLite's
            // single writer does that already): without the address's lock,
            // concurrent attempts on different emails from one address could
            // all read the same count. Sorted, so two attempts sharing keys
            // take their locks in the same order and cannot deadlock.
            let mut sorted: Vec<&str> = keys.iter().map(|(key, _)| key.as_str()).collect();
            sorted.sort_unstable();
            sorted.dedup();
            for key in sorted {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind::<diesel::sql_types::Text, _>(key)
                    .execute(conn)
                    .await?;
            }
        }
        let mut refused = None;
        for (key, limit) in keys {
            diesel::delete(
                login_attempts::table.filter(login_attempts::key.eq(key).and(login_attempts::at.lt(since))),
            )
            .execute(conn)
            .await?;
            let (attempts, oldest) = login_attempts::table
                .filter(login_attempts::key.eq(key))
                .select((diesel::dsl::count_star(), diesel::dsl::min(login_attempts::at)))
                .first::<(i64, Option<DbTime>)>(conn)
                .await?;
            if attempts >= *limit {
                refused = Some(oldest.unwrap_or(now));
                break;
            }
        }
        if let Some(oldest) = refused {
            return Ok(Admission::Refused { oldest });
        }
        let mut ids = Vec::with_capacity(keys.len());
        for (key, _) in keys {
            let id = DbId::new();
            diesel::insert_into(login_attempts::table)
                .values((login_attempts::id.eq(id), login_attempts::key.eq(key), login_attempts::at.eq(now)))
                .execute(conn)
                .await?;
            ids.push(id);
        }
        Ok(Admission::Admitted(ids))
    })
}

/// Forgets attempts: every attempt under `key`, and the rows in `ids`.
pub async fn forget(db: &Db, key: &str, ids: &[DbId]) -> AppResult<()> {
    write!(db, |conn| {
        diesel::delete(
            login_attempts::table.filter(login_attempts::key.eq(key).or(login_attempts::id.eq_any(ids))),
        )
        .execute(conn)
        .await?;
        Ok(())
    })
}

/// Deletes attempts older than `before` (all keys); returns how many.
pub async fn prune(db: &Db, before: DbTime) -> AppResult<usize> {
    write!(db, |conn| Ok(diesel::delete(login_attempts::table.filter(login_attempts::at.lt(before)))
        .execute(conn)
        .await?))
}
