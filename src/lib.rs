//! todoql: sign-up, log-in and a private todo list per user, over GraphQL,
//! on SQLite (embedded) or PostgreSQL (production, scale-out).
//!
//! Requests flow one way: `http` → `graphql` → `auth` / `todos` → `db`.

/// The application: state, start-up, shutdown.
pub mod app;
/// Configuration from flags, environment and `.env`.
pub mod config;
/// The one error type and its codes.
pub mod error;
/// Logging.
pub mod telemetry;

/// The GraphQL schema and resolvers.
pub mod graphql;
/// The HTTP surface: `/graphql`, GraphiQL, health.
pub mod http;

/// Accounts: passwords, tokens, the request guard.
pub mod auth;
/// Change events for subscriptions.
pub mod events;
/// The todo domain: validation, ordering, cursors.
pub mod todos;

/// Storage: pools, migrations, queries for both backends.
pub mod db;

pub use app::{App, Server};
pub use config::{Cli, Command, Config};
