//! The PostgreSQL pool: a request queues for a connection as long as the
//! request itself may take, yet learns at once that the database is down.
//!
//! Two different things used to share one 5 s pool wait: queueing behind this
//! process's own requests (a burst of 256 on a pool of 4, a debug build on a
//! busy machine, took longer than that while PostgreSQL was perfectly
//! healthy) and finding out that the server cannot be reached. They are
//! separate now:
//!
//! - waiting for a connection is bounded by the request timeout, like SQLite's
//!   (the pool's `connection_timeout`);
//! - every connection attempt is bounded by [`CONNECT_TIMEOUT`], and a failed
//!   one wakes every request waiting at that moment, which then fails with
//!   SERVICE_UNAVAILABLE. bb8 itself never hands a failed connect to its
//!   waiters, so without this they would sit out the whole wait.
//!
//! While the database is down each request is one connection attempt: refused
//! at once when the server is stopped, after at most [`CONNECT_TIMEOUT`] when
//! it does not answer. The first attempt that succeeds is also the recovery;
//! no background probe is needed, and `/readyz` probes the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, RecyclingMethod,
};
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::error::{AppError, AppResult};

pub type PgManager = AsyncDieselConnectionManager<AsyncPgConnection>;

/// How long one attempt to open a connection may take (TCP, TLS, start-up,
/// authentication) before it counts as failed. A healthy server answers in
/// milliseconds; this bounds how long requests wait on a server that does not
/// answer at all (a host that is gone, a dropped route).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL pool and what it knows about reaching the server. Cheap to
/// clone.
#[derive(Clone)]
pub struct PgPool {
    pool: bb8::Pool<PgManager>,
    reach: Arc<Reach>,
}

/// The outcome of the latest connection attempt.
struct Reach {
    /// Whether the latest attempt succeeded (only for logging transitions).
    reachable: AtomicBool,
    /// Counts failed attempts; waiters watch it to give up on the first.
    failures: watch::Sender<u64>,
}

impl Reach {
    fn connected(&self) {
        if !self.reachable.swap(true, Ordering::SeqCst) {
            tracing::info!("database reachable again");
        }
    }

    fn failed(&self, error: &PoolError) {
        if self.reachable.swap(false, Ordering::SeqCst) {
            tracing::warn!(%error, "cannot connect to the database; requests fail with SERVICE_UNAVAILABLE until it is back");
        } else {
            tracing::debug!(%error, "cannot connect to the database");
        }
        self.failures.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Where bb8 reports a failed connection attempt: after it has given the
/// attempt's slot back, so a request that starts waiting after the report
/// makes an attempt of its own, and one that was waiting before sees it.
#[derive(Clone)]
struct FailureSink(Arc<Reach>);

impl std::fmt::Debug for FailureSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureSink")
    }
}

impl bb8::ErrorSink<PoolError> for FailureSink {
    fn sink(&self, error: PoolError) {
        self.0.failed(&error);
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(self.clone())
    }
}

impl PgPool {
    /// A lazy pool of up to `size` connections to `url`; a request waits at
    /// most `wait` for one while the database can be reached.
    pub fn new(url: &str, size: u32, wait: Duration) -> Self {
        Self::build(url, size, wait, CONNECT_TIMEOUT)
    }

    fn build(url: &str, size: u32, wait: Duration, connect_timeout: Duration) -> Self {
        let reach = Arc::new(Reach { reachable: AtomicBool::new(true), failures: watch::Sender::new(0) });
        let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
        // A dead connection shows up as an error on first use and is then
        // discarded; a test query on every checkout would double the round
        // trips of every request.
        manager_config.recycling_method = RecyclingMethod::Fast;
        let observed = Arc::clone(&reach);
        manager_config.custom_setup = Box::new(move |url| {
            use diesel_async::AsyncConnection as _;
            let url = url.to_owned();
            let reach = Arc::clone(&observed);
            async move {
                let connected = tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(&url))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ConnectionError::BadConnection(format!("no answer within {connect_timeout:?}")))
                    });
                if connected.is_ok() {
                    reach.connected();
                }
                connected
            }
            .boxed()
        });
        let manager = AsyncDieselConnectionManager::new_with_config(url, manager_config);
        let pool = bb8::Pool::builder()
            .max_size(size)
            .connection_timeout(wait)
            // One attempt per waiting request: bb8's retries (with a backoff
            // that grows towards half the wait) would delay noticing that the
            // server is back, and the first failure ends the wait anyway.
            .retry_connection(false)
            .error_sink(Box::new(FailureSink(Arc::clone(&reach))))
            .build_unchecked(manager);
        Self { pool, reach }
    }

    /// A connection: one that is idle, or the next one released or opened
    /// within the pool's wait; SERVICE_UNAVAILABLE as soon as an attempt to
    /// open one fails while this waits.
    pub async fn get(&self) -> AppResult<bb8::PooledConnection<'_, PgManager>> {
        let failures = self.reach.failures.subscribe();
        Self::unless_unreachable(failures, self.pool.get()).await
    }

    /// Like [`get`](Self::get), for a connection that outlives the borrow.
    pub async fn get_owned(&self) -> AppResult<bb8::PooledConnection<'static, PgManager>> {
        let failures = self.reach.failures.subscribe();
        Self::unless_unreachable(failures, self.pool.get_owned()).await
    }

    async fn unless_unreachable<T>(
        mut failures: watch::Receiver<u64>,
        get: impl Future<Output = Result<T, bb8::RunError<PoolError>>>,
    ) -> AppResult<T> {
        // `failures` was subscribed before `get` started, so a failure of the
        // attempt `get` itself triggers is seen. bb8's `get` is cancel-safe.
        tokio::select! {
            biased;
            got = get => Ok(got?),
            _ = failures.changed() => {
                Err(AppError::Unavailable("cannot connect to the database".to_owned()))
            }
        }
    }

    pub fn state(&self) -> bb8::State {
        self.pool.state()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::PgPool;
    use crate::error::AppError;

    const WAIT: Duration = Duration::from_secs(30);

    /// A port on which nothing listens.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn url(port: u16) -> String {
        format!("postgres://todoql@127.0.0.1:{port}/todoql")
    }

    /// A stopped server refuses connections: every request, however many
    /// wait together, fails at once instead of sitting out the 30 s wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_fails_every_waiter_at_once() {
        let pool = PgPool::new(&url(closed_port()), 2, WAIT);
        for _ in 0..3 {
            let started = Instant::now();
            let refused = pool.get().await.map(|_| ());
            assert!(matches!(refused, Err(AppError::Unavailable(_))), "{refused:?}");
            assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        }
        let started = Instant::now();
        let burst = futures_util::future::join_all((0..10).map(|_| pool.get_owned())).await;
        assert!(burst.iter().all(|r| matches!(r, Err(AppError::Unavailable(_)))));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    /// A server that accepts but never answers (a host gone behind a proxy, a
    /// hung server) fails each attempt after the connect timeout, not after
    /// the pool's wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_never_answers_fails_after_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let pool = PgPool::build(&url(port), 2, WAIT, Duration::from_secs(1));
        let started = Instant::now();
        let burst = futures_util::future::join_all((0..6).map(|_| pool.get())).await;
        let waited = started.elapsed();
        assert!(burst.iter().all(|r| matches!(r, Err(AppError::Unavailable(_)))));
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(10), "{waited:?}");
        silent.abort();
    }
}
