//! Storage: connection pools for both backends, one query code path.
//!
//! diesel's `MultiConnection` does not work with diesel-async, so [`Db`] is an
//! enum of pools and the [`read!`]/[`write!`] macros expand one query body per
//! backend, each with that backend's schema module in scope. Queries are
//! written once (in `users.rs`, `todos.rs`); the compiler checks each copy.

pub mod fair;
pub mod login_attempts;
pub mod migrations;
pub mod pg_pool;
pub mod schema;
pub mod todos;
pub mod types;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::config::{Config, DatabaseUrl};
use crate::error::{AppError, AppResult};
use crate::events::Hub;

pub use pg_pool::PgPool;

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;
pub type SqlitePool = bb8::Pool<AsyncDieselConnectionManager<SqliteConn>>;

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
    /// Each client's place in the queues for connections (see `fair`).
    pub turns: Arc<fair::FairTurns>,
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
                let _turn = $db.turns.take($crate::db::fair::Lane::Shared).await;
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
            $crate::db::Pools::Sqlite { readers, .. } => {
                #[allow(unused_imports)]
                use $crate::db::schema::sqlite::*;
                let _turn = $db.turns.take($crate::db::fair::Lane::Shared).await;
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
                let _turn = $db.turns.take($crate::db::fair::Lane::Shared).await;
                let mut pooled = pool.get().await?;
                pooled.transaction(async |$conn| $body).await
            }
            $crate::db::Pools::Sqlite { writer, .. } => {
                #[allow(unused_imports)]
                use $crate::db::schema::sqlite::*;
                let _turn = $db.turns.take($crate::db::fair::Lane::SqliteWriter).await;
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
                let _turn = db.turns.take($crate::db::fair::Lane::Shared).await;
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
                let _turn = db.turns.take($crate::db::fair::Lane::SqliteWriter).await;
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
        let limits = crate::events::HubLimits {
            subscriptions_per_user: config.subscriptions_per_user,
            subscriptions_per_instance: config.subscriptions_per_instance,
            subscriptions_per_connection: config.subscriptions_per_connection,
            subscriptions_per_address: config.subscriptions_per_address,
            sockets_per_address: config.websocket.websockets_per_address,
        };
        let hub = Arc::new(Hub::new(limits, live));
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
        // A client alone may use the largest pool whole; with others, it
        // queues behind its own queries beyond that.
        let largest_pool = pool_sizes.iter().map(|(_, size)| *size as usize).max().unwrap_or(1);
        let size_of =
            |name: &str| pool_sizes.iter().find(|(n, _)| *n == name).map_or(1, |(_, size)| *size as usize);
        let shared =
            if matches!(pools, Pools::Postgres(_)) { size_of("postgres") } else { size_of("sqlite_readers") };
        let turns = fair::FairTurns::new(largest_pool, shared, 1);
        Ok(Self { pools, hub, pool_sizes, turns })
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
                // Waiting for a connection only means queueing behind this
                // process's own requests while the server can be reached, so
                // it is bounded by the request's deadline (as on SQLite); a
                // server that cannot be reached ends the wait at once (see
                // `pg_pool`).
                let pool = PgPool::new(url, size, config.limits.request_timeout);
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
                // A SQLite pool has no server that can be down: waiting for
                // one of its connections only ever means queueing behind this
                // process's own work, above all behind the single writer. A
                // burst of writers (256 at once on a busy debug build took
                // more than 5 s) must queue and succeed, so the wait is bounded
                // by the request's own deadline (which answers TIMEOUT), not by
                // a shorter arbitrary one; it still bounds callers outside a
                // request (CLI, background pruning).
                let wait = config.limits.request_timeout;
                let writer = sqlite_pool(&url, 1, wait);
                let readers = sqlite_pool(&url, readers, wait);
                Ok(Self::Sqlite { writer, readers })
            }
        }
    }
}

fn sqlite_pool(url: &str, size: u32, wait: Duration) -> SqlitePool {
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
    bb8::Pool::builder().max_size(size).connection_timeout(wait).build_unchecked(manager)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use diesel::{Connection as _, SqliteConnection};

    use super::{Db, Pools};
    use crate::config::Config;
    use crate::error::AppError;

    async fn sqlite_db(dir: &tempfile::TempDir, request_timeout: Duration) -> Db {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut config = Config::for_database(&url).expect("config");
        config.limits.request_timeout = request_timeout;
        Db::connect(&config).await.expect("pools")
    }

    /// Holds SQLite's one writer connection for `hold`, then releases it.
    fn hold_writer(db: &Db, hold: Duration) -> tokio::task::JoinHandle<()> {
        let Pools::Sqlite { writer, .. } = db.pools.clone() else { unreachable!("a SQLite database") };
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = tokio::spawn(async move {
            let connection = writer.get_owned().await.expect("writer");
            held_tx.send(()).expect("signal");
            tokio::time::sleep(hold).await;
            drop(connection);
        });
        held_rx.recv().expect("writer held");
        holder
    }

    async fn one_write(db: &Db) -> Result<(), AppError> {
        use diesel_async::RunQueryDsl as _;
        // The macro defined above (textual scope), not std's `write!`.
        write!(db, |conn| {
            diesel::sql_query("SELECT 1").execute(conn).await?;
            Ok(())
        })
    }

    /// A writer queued behind a busy writer waits as long as a request may
    /// (not an arbitrary 5 s pool wait: that failed bursts of writers on a
    /// busy machine), and no longer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writers_queue_for_the_request_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sqlite_db(&dir, Duration::from_secs(30)).await;
        let holder = hold_writer(&db, Duration::from_secs(6));
        let started = Instant::now();
        one_write(&db).await.expect("the queued write succeeds once the writer is free");
        assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());
        holder.await.expect("holder");

        let db = sqlite_db(&dir, Duration::from_secs(1)).await;
        let holder = hold_writer(&db, Duration::from_secs(4));
        let started = Instant::now();
        let refused = one_write(&db).await;
        assert!(matches!(refused, Err(AppError::Unavailable(_))), "{refused:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
        holder.await.expect("holder");
    }

    #[derive(diesel::QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    /// See `.cargo/config.toml`: without QPSG every statement with a bound
    /// LIMIT is re-prepared on each execution.
    #[test]
    fn bundled_sqlite_keeps_plans_stable() {
        use diesel::RunQueryDsl as _;
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        let options: Vec<CompileOption> =
            diesel::sql_query("PRAGMA compile_options").load(&mut conn).expect("compile options");
        assert!(
            options.iter().any(|o| o.compile_options == "ENABLE_QPSG"),
            "SQLite was built without SQLITE_ENABLE_QPSG"
        );
    }
}
