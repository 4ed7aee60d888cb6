//! `/metrics`: Prometheus text, hand-rolled on atomics (no registry to lock
//! on the hot path).
//!
//! Cardinality is bounded: operation names are kept only when they look like
//! names and only the first `MAX_OPERATIONS` distinct ones; the rest are
//! folded into `other`. Outcomes are `ok` or an error code (a fixed set).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;

use super::HttpState;
use crate::db::Pools;

const MAX_OPERATIONS: usize = 100;
/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// (operation, outcome) → count.
    requests: Mutex<HashMap<(String, String), u64>>,
    /// operation → latency.
    latency: Mutex<HashMap<String, std::sync::Arc<Histogram>>>,
    pub logins_refused: AtomicU64,
}

impl Metrics {
    /// Records one GraphQL operation.
    pub fn record(&self, operation: Option<&str>, outcome: &str, elapsed: Duration) {
        let histogram = {
            let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
            let name = fold(operation, &latency);
            std::sync::Arc::clone(latency.entry(name.clone()).or_default())
        };
        histogram.observe(elapsed);
        let operation = {
            let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
            fold(operation, &latency)
        };
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((operation, outcome.to_owned())).or_default() += 1;
    }
}

/// The label for `operation`: its name if it is a plain name and either
/// already known or there is room; `anonymous`; or `other`.
fn fold<V>(operation: Option<&str>, known: &HashMap<String, V>) -> String {
    match operation {
        None => "anonymous".to_owned(),
        Some(name) if known.contains_key(name) => name.to_owned(),
        Some(name)
            if known.len() < MAX_OPERATIONS
                && !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            name.to_owned()
        }
        Some(_) => "other".to_owned(),
    }
}

pub async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let metrics = &state.app.metrics;
    let mut out = String::with_capacity(4096);
    out.push_str(
        "# HELP todoql_graphql_requests_total GraphQL operations by name and outcome (ok or error code).\n",
    );
    out.push_str("# TYPE todoql_graphql_requests_total counter\n");
    {
        let requests = metrics.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = requests.iter().collect();
        rows.sort();
        for ((operation, outcome), count) in rows {
            let _ = writeln!(
                out,
                "todoql_graphql_requests_total{{operation=\"{operation}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }
    out.push_str("# HELP todoql_graphql_request_duration_seconds GraphQL operation latency.\n");
    out.push_str("# TYPE todoql_graphql_request_duration_seconds histogram\n");
    {
        let latency = metrics.latency.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = latency.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for (operation, histogram) in rows {
            for (bucket, bound) in histogram.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "todoql_graphql_request_duration_seconds_bucket{{operation=\"{operation}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = histogram.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "todoql_graphql_request_duration_seconds_bucket{{operation=\"{operation}\",le=\"+Inf\"}} {count}"
            );
            let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "todoql_graphql_request_duration_seconds_sum{{operation=\"{operation}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "todoql_graphql_request_duration_seconds_count{{operation=\"{operation}\"}} {count}"
            );
        }
    }
    let hasher = &state.app.auth.hasher;
    out.push_str("# HELP todoql_bcrypt_queue_wait_seconds_total Time spent waiting for a bcrypt slot.\n");
    out.push_str("# TYPE todoql_bcrypt_queue_wait_seconds_total counter\n");
    let _ =
        writeln!(out, "todoql_bcrypt_queue_wait_seconds_total {}", hasher.queue_wait_micros() as f64 / 1e6);
    out.push_str("# HELP todoql_logins_refused_total Logins refused by the rate limiter.\n");
    out.push_str("# TYPE todoql_logins_refused_total counter\n");
    let _ = writeln!(out, "todoql_logins_refused_total {}", metrics.logins_refused.load(Ordering::Relaxed));
    out.push_str("# HELP todoql_subscriptions_open Open todoEvents subscriptions on this instance.\n");
    out.push_str("# TYPE todoql_subscriptions_open gauge\n");
    let _ = writeln!(out, "todoql_subscriptions_open {}", state.app.db.hub.open_subscriptions());
    out.push_str("# HELP todoql_event_bus_live 1 while this instance hears every change (PostgreSQL: its listener is connected).\n");
    out.push_str("# TYPE todoql_event_bus_live gauge\n");
    let _ = writeln!(out, "todoql_event_bus_live {}", u8::from(state.app.db.hub.is_live()));
    out.push_str("# HELP todoql_websockets_open Open WebSocket connections on this instance.\n");
    out.push_str("# TYPE todoql_websockets_open gauge\n");
    let _ = writeln!(out, "todoql_websockets_open {}", state.app.db.hub.open_sockets());

    let size = |name: &str| state.app.db.pool_sizes.iter().find(|(n, _)| *n == name).map_or(0, |(_, s)| *s);
    let pools: Vec<(&str, bb8::State, u32)> = match &state.app.db.pools {
        Pools::Postgres(pool) => vec![("postgres", pool.state(), size("postgres"))],
        Pools::Sqlite { writer, readers } => vec![
            ("sqlite_writer", writer.state(), size("sqlite_writer")),
            ("sqlite_readers", readers.state(), size("sqlite_readers")),
        ],
    };
    out.push_str("# HELP todoql_db_pool_connections Pool connections by state.\n");
    out.push_str("# TYPE todoql_db_pool_connections gauge\n");
    for (pool, pool_state, _) in &pools {
        let in_use = pool_state.connections.saturating_sub(pool_state.idle_connections);
        let _ = writeln!(
            out,
            "todoql_db_pool_connections{{pool=\"{pool}\",state=\"idle\"}} {}",
            pool_state.idle_connections
        );
        let _ = writeln!(out, "todoql_db_pool_connections{{pool=\"{pool}\",state=\"in_use\"}} {in_use}");
    }
    out.push_str("# HELP todoql_db_pool_size Configured pool size.\n# TYPE todoql_db_pool_size gauge\n");
    for (pool, _, max) in &pools {
        let _ = writeln!(out, "todoql_db_pool_size{{pool=\"{pool}\"}} {max}");
    }
    out.push_str("# HELP todoql_db_pool_waits_total Checkouts that had to wait for a connection.\n");
    out.push_str("# TYPE todoql_db_pool_waits_total counter\n");
    for (pool, pool_state, _) in &pools {
        let _ = writeln!(
            out,
            "todoql_db_pool_waits_total{{pool=\"{pool}\"}} {}",
            pool_state.statistics.get_waited
        );
    }
    out.push_str("# HELP todoql_db_pool_timeouts_total Checkouts that gave up waiting.\n");
    out.push_str("# TYPE todoql_db_pool_timeouts_total counter\n");
    for (pool, pool_state, _) in &pools {
        let _ = writeln!(
            out,
            "todoql_db_pool_timeouts_total{{pool=\"{pool}\"}} {}",
            pool_state.statistics.get_timed_out
        );
    }
    out.push_str("# HELP todoql_db_pool_wait_seconds_total Time spent waiting for connections.\n");
    out.push_str("# TYPE todoql_db_pool_wait_seconds_total counter\n");
    for (pool, pool_state, _) in &pools {
        let _ = writeln!(
            out,
            "todoql_db_pool_wait_seconds_total{{pool=\"{pool}\"}} {}",
            pool_state.statistics.get_wait_time.as_secs_f64()
        );
    }
    ([(::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_folded() {
        let mut known: HashMap<String, ()> = HashMap::new();
        assert_eq!(fold(None, &known), "anonymous");
        assert_eq!(fold(Some("Me"), &known), "Me");
        assert_eq!(fold(Some("bad name\\n"), &known), "other");
        assert_eq!(fold(Some(&"x".repeat(65)), &known), "other");
        for i in 0..MAX_OPERATIONS {
            known.insert(format!("Op{i}"), ());
        }
        assert_eq!(fold(Some("Op7"), &known), "Op7");
        assert_eq!(fold(Some("Fresh"), &known), "other", "no room left");
    }

    #[test]
    fn histograms_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_millis(300));
        let counts: Vec<u64> = histogram.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        assert_eq!(counts[0], 0);
        assert_eq!(counts[2], 1, "le=0.005");
        assert_eq!(counts[8], 2, "le=0.5");
        assert_eq!(histogram.count.load(Ordering::Relaxed), 2);
    }
}
