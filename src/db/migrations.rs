//! Embedded migrations, one folder per backend, applied at start-up.

use diesel::migration::MigrationSource;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::DatabaseUrl;
use crate::error::{AppError, AppResult};

const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Applies pending migrations and returns how many ran.
///
/// diesel's migration harness is synchronous, so it runs on a blocking thread
/// (through diesel-async's `AsyncConnectionWrapper` for PostgreSQL), which also
/// works on a current-thread runtime where diesel-async's own harness panics.
pub async fn run(url: &DatabaseUrl) -> AppResult<usize> {
    let url = url.clone();
    tokio::task::spawn_blocking(move || match url {
        DatabaseUrl::Postgres(url) => {
            use diesel::Connection as _;
            let mut conn = diesel_async::async_connection_wrapper::AsyncConnectionWrapper::<
                diesel_async::AsyncPgConnection,
            >::establish(&url)
            .map_err(|e| AppError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
            // Instances starting together take turns: the first applies the
            // migrations, the others then find nothing pending. The lock is
            // released when this connection closes.
            diesel::connection::SimpleConnection::batch_execute(
                &mut conn,
                "SELECT pg_advisory_lock(7420656001)",
            )
            .map_err(|e| AppError::Internal(format!("cannot take the migration lock: {e}")))?;
            apply(&mut conn, POSTGRES)
        }
        DatabaseUrl::Sqlite(path) => {
            use diesel::Connection as _;
            let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy()).map_err(|e| {
                AppError::Unavailable(format!("cannot open SQLite database {}: {e}", path.display()))
            })?;
            configure_sqlite(&mut conn)?;
            // Processes starting together on one new file take turns, as on
            // PostgreSQL: the write lock is taken before looking for pending
            // migrations, so the second finds none instead of failing on
            // "table already exists". Each migration's own transaction
            // becomes a savepoint inside this one.
            conn.immediate_transaction(|conn| apply(conn, SQLITE))
        }
    })
    .await
    .map_err(|e| AppError::Internal(format!("migration task failed: {e}")))?
}

/// Sets the pragmas of the migrating connection. Switching a new file to WAL
/// needs an exclusive lock, and SQLite answers "database is locked" at once,
/// without waiting out busy_timeout, when another process starting on the
/// same new file holds a lock: retry for as long as busy_timeout would wait.
fn configure_sqlite(conn: &mut diesel::SqliteConnection) -> AppResult<()> {
    const PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;";
    let started = std::time::Instant::now();
    loop {
        match diesel::connection::SimpleConnection::batch_execute(conn, PRAGMAS) {
            Ok(()) => return Ok(()),
            Err(e) if e.to_string().contains("database is locked") && started.elapsed().as_secs() < 5 => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(AppError::Internal(format!("cannot configure SQLite: {e}"))),
        }
    }
}

fn apply<DB, C>(conn: &mut C, source: impl MigrationSource<DB>) -> AppResult<usize>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
{
    conn.run_pending_migrations(source)
        .map(|applied| applied.len())
        .map_err(|e| AppError::Internal(format!("migration failed: {e}")))
}
