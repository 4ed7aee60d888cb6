//! Storage: connection pools for both backends, one query code path.
//!
//! diesel's `MultiConnection` does not work with diesel-async, so [`Db`] is an
//! enum of pools and the [`read!`]/[`write!`] macros expand one query body per
//! backend, each with that backend's schema module in scope. Queries are
//! written once (in `users.rs`, `todos.rs`); the compiler checks each copy.

pub mod login_attempts;
pub mod migrations;
pub mod schema;
pub mod todos;
pub mod types;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::config::{Config, DatabaseUrl};
use crate::error::{AppError, AppResult};
use crate::events::Hub;

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;
pub type PgPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
pub type SqlitePool = bb8::Pool<AsyncDieselConnectionManager<SqliteConn>>;

/// How long a request waits for a pooled connection before it gives up with
/// SERVICE_UNAVAILABLE: long enough to ride out a burst, short enough that an
/// exhausted pool or a dead database never hangs a client.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// SQLite waits this long for a lock before failing with "database is locked".
/// Writes are serialised through one connection, so this only covers
/// checkpoints and other processes sharing the file.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// The database, as seen by the rest of the server. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub pools: Pools,
    /// Where committed writes announce their changes (see `events`).
    pub hub: Arc<Hub>,
    /// Each pool's name and configured size, for metrics.
    pub pool_sizes: Vec<(&'static str, u32)>,
}

#[derive(Clone)]
pub enum Pools {
    Postgres(PgPool),
    /// SQLite allows one writer at a time. Routing every write through a pool
    /// of one connection queues writers in the application instead of letting
    /// them collide on the file lock; readers run concurrently under WAL.
    Sqlite {
        writer: SqlitePool,
        readers: SqlitePool,
    },
}

/// Runs `$body` with `$conn: &mut <backend connection>` for a read. The body
/// is expanded once per backend with that backend's tables in scope; it must
/// evaluate to an `AppResult`.
macro_rules! read {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &$db.pools {
            $crate::db::Pools::Postgres(pool) => {
                #[allow(unused_imports)]
                use $crate::db::schema::postgres::*;
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
            $crate::db::Pools::Sqlite { readers, .. } => {
                #[allow(unused_imports)]
                use $crate::db::schema::sqlite::*;
                let mut pooled = readers.get().await?;
                let $conn = &mut *pooled;
                $body
            }
        }
    };
}

/// Runs `$body` inside a write transaction: committed when it returns `Ok`,
/// rolled back on `Err`. On SQLite the transaction is `BEGIN IMMEDIATE`, so a
/// read-then-write body never fails to upgrade its lock.
macro_rules! write {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &$db.pools {
            $crate::db::Pools::Postgres(pool) => {
                use diesel_async::AsyncConnection as _;
                #[allow(unused_imports)]
                use $crate::db::schema::postgres::*;
                let mut pooled = pool.get().await?;
                pooled.transaction(async |$conn| $body).await
            }
            $crate::db::Pools::Sqlite { writer, .. } => {
                #[allow(unused_imports)]
                use $crate::db::schema::sqlite::*;
                let mut pooled = writer.get().await?;
                pooled.immediate_transaction(async |$conn| $body).await
            }
        }
    };
}

/// Like [`write!`], for writes that subscribers hear about: `$body` returns
/// `(value, Notice)`. On PostgreSQL the notice is a NOTIFY inside the
/// transaction (delivered on commit, in commit order, to every instance). On
/// SQLite it is published after the commit while the single writer
/// connection is still held, which keeps notices in commit order too.
macro_rules! write_announced {
    ($db:expr, |$conn:ident| $body:expr) => {{
        let db: &$crate::db::Db = $db;
        match &db.pools {
            $crate::db::Pools::Postgres(pool) => {
                use diesel_async::AsyncConnection as _;
                #[allow(unused_imports)]
                use $crate::db::schema::postgres::*;
                let mut pooled = pool.get().await?;
                let committed = pooled
                    .transaction(async |$conn| {
                        let announced: Result<(_, $crate::events::Notice), $crate::error::AppError> = $body;
                        let (value, notice) = announced?;
                        if !notice.is_empty() {
                            $crate::events::postgres::notify($conn, &notice).await?;
                        }
                        Ok((value, notice.revoked_below.map(|_| notice.owner)))
                    })
                    .await;
                // This instance forgets a revoked account at once; the others
                // when the notification reaches them.
                committed.map(|(value, revoked)| {
                    if let Some(owner) = revoked {
                        db.hub.users.evict(owner);
                    }
                    value
                })
            }
            $crate::db::Pools::Sqlite { writer, .. } => {
                #[allow(unused_imports)]
                use $crate::db::schema::sqlite::*;
                let mut pooled = writer.get().await?;
                let committed: Result<(_, $crate::events::Notice), $crate::error::AppError> =
                    pooled.immediate_transaction(async |$conn| $body).await;
                committed.map(|(value, notice)| {
                    if !notice.is_empty() {
                        db.hub.publish(&notice);
                    }
                    drop(pooled);
                    value
                })
            }
        }
    }};
}

pub(crate) use {read, write, write_announced};

impl Db {
    pub async fn connect(config: &Config) -> AppResult<Self> {
        let pools = Pools::connect(config)?;
        // SQLite's hub is live from the start; PostgreSQL's once its listener is.
        let live = matches!(pools, Pools::Sqlite { .. });
        let hub = Arc::new(Hub::new(config.subscriptions_per_user, config.subscriptions_per_instance, live));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        let pool_sizes = match &pools {
            Pools::Postgres(_) => vec![("postgres", config.database_pool_size.unwrap_or(2 * cores))],
            Pools::Sqlite { .. } => vec![
                ("sqlite_writer", 1),
                (
                    "sqlite_readers",
                    config.database_pool_size.map_or(2 * cores, |n| n.saturating_sub(1).max(1)),
                ),
            ],
        };
        Ok(Self { pools, hub, pool_sizes })
    }

    pub fn backend_name(&self) -> &'static str {
        match self.pools {
            Pools::Postgres(_) => "postgres",
            Pools::Sqlite { .. } => "sqlite",
        }
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> AppResult<()> {
        read!(self, |conn| {
            diesel::sql_query("SELECT 1").execute(conn).await?;
            Ok(())
        })
    }
}

impl Pools {
    /// Opens the pools lazily: a database that is down at start-up is
    /// reported by the migrations, and the pools recover when it is back.
    fn connect(config: &Config) -> AppResult<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        match &config.database_url {
            DatabaseUrl::Postgres(url) => {
                let size = config.database_pool_size.unwrap_or(2 * cores);
                let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
                // A dead connection shows up as an error on first use and is
                // then discarded; a test query on every checkout would double
                // the round trips of every request.
                manager_config.recycling_method = RecyclingMethod::Fast;
                let manager = AsyncDieselConnectionManager::new_with_config(url, manager_config);
                let pool = bb8::Pool::builder()
                    .max_size(size)
                    .connection_timeout(POOL_WAIT)
                    .build_unchecked(manager);
                Ok(Self::Postgres(pool))
            }
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if !dir.is_dir() {
                        return Err(AppError::Internal(format!(
                            "the directory of the SQLite database does not exist: {}",
                            dir.display()
                        )));
                    }
                }
                let url = path.to_string_lossy().into_owned();
                let readers = config.database_pool_size.map_or(2 * cores, |n| n.saturating_sub(1).max(1));
                let writer = sqlite_pool(&url, 1);
                let readers = sqlite_pool(&url, readers);
                Ok(Self::Sqlite { writer, readers })
            }
        }
    }
}

fn sqlite_pool(url: &str, size: u32) -> SqlitePool {
    let mut manager_config = ManagerConfig::<SqliteConn>::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        async move {
            use diesel_async::AsyncConnection as _;
            let mut conn = SqliteConn::establish(&url).await?;
            conn.batch_execute(&format!(
                "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;"
            ))
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url, manager_config);
    bb8::Pool::builder().max_size(size).connection_timeout(POOL_WAIT).build_unchecked(manager)
}

#[cfg(test)]
mod tests {
    use diesel::{Connection as _, RunQueryDsl as _, SqliteConnection};

    #[derive(diesel::QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    /// See `.cargo/config.toml`: without QPSG every statement with a bound
    /// LIMIT is re-prepared on each execution.
    #[test]
    fn bundled_sqlite_keeps_plans_stable() {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        let options: Vec<CompileOption> =
            diesel::sql_query("PRAGMA compile_options").load(&mut conn).expect("compile options");
        assert!(
            options.iter().any(|o| o.compile_options == "ENABLE_QPSG"),
            "SQLite was built without SQLITE_ENABLE_QPSG"
        );
    }
}
