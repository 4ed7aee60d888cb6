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
            diesel::connection::SimpleConnection::batch_execute(
                &mut conn,
                "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| AppError::Internal(format!("cannot configure SQLite: {e}")))?;
            apply(&mut conn, SQLITE)
        }
    })
    .await
    .map_err(|e| AppError::Internal(format!("migration task failed: {e}")))?
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
