//! Integration tests: the real server on port 0, over HTTP, on SQLite and on
//! a real PostgreSQL (a throwaway cluster, or `TEST_DATABASE_URL`).

mod helpers;
mod postgres;
mod ws;

mod accounts;
mod adversaries;
mod concurrency;
mod cursors;
mod http_surface;
mod isolation;
mod listener;
mod observability;
mod pagination;
mod password_checks;
mod quota;
mod rate_limit;
mod subscriptions;
mod todos;
mod ws_auth;
mod ws_limits;
mod ws_liveness;
