//! Builds the application from a `Config` and runs it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::auth::password::PasswordHasher;
use crate::auth::token::{self, TokenKeys};
use crate::config::Config;
use crate::config::DatabaseUrl;
use crate::db::{self, Db};
use crate::error::{AppError, AppResult};
use crate::events::{self, HubMessage};
use crate::graphql;
use crate::http::{self, HttpState};

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything a request may need; shared by all of them.
pub struct App {
    pub config: Config,
    pub db: Db,
    pub auth: Auth,
    /// Set to true once on shutdown; WebSocket connections and the event
    /// listener watch it.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub metrics: crate::http::metrics::Metrics,
}

/// A bound, ready server. Binding happens in [`Server::build`], so the port
/// is known (and connectable) before [`Server::run_until`] is awaited.
pub struct Server {
    listener: crate::http::listener::GuardedListener,
    router: axum::Router,
    app: Arc<App>,
}

impl Server {
    pub async fn build(config: Config) -> AppResult<Self> {
        if config.bcrypt_cost < 10 {
            tracing::warn!(
                cost = config.bcrypt_cost,
                "BCRYPT_COST is below 10: fine for tests, too weak for production"
            );
        }
        let secret = token::load_or_create_secret(&config)?;
        let applied = db::migrations::run(&config.database_url).await?;
        tracing::info!(backend = config.database_url.backend_name(), applied, "database migrated");
        let db = Db::connect(&config).await?;
        let auth = Auth {
            hasher: PasswordHasher::new(config.bcrypt_cost, config.bcrypt_concurrency),
            tokens: TokenKeys::new(&secret, config.jwt_ttl),
            limiter: crate::auth::rate_limit::Limiter::new(config.login_limits.clone()),
        };
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| AppError::Internal(format!("cannot listen on {}: {e}", config.listen_addr)))?;
        let mut connection_limits = config.connections;
        if config.trusted_proxies > 0 {
            // Every peer is a proxy: a per-address cap would cap the proxy.
            connection_limits.max_per_address = 0;
        }
        let listener = crate::http::listener::GuardedListener::new(listener, connection_limits);
        let app = Arc::new(App {
            config,
            db,
            auth,
            shutdown: tokio::sync::watch::Sender::new(false),
            metrics: Default::default(),
        });
        if let DatabaseUrl::Postgres(url) = &app.config.database_url {
            // One LISTEN connection per instance fans every instance's
            // writes out to this instance's subscribers.
            tokio::spawn(events::postgres::listen(
                url.clone(),
                app.db.clone(),
                Arc::clone(&app.db.hub),
                app.shutdown.subscribe(),
            ));
            // Subscriptions are refused until the listener is connected: give
            // it a moment so a fresh instance is ready when it says so.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !app.db.hub.is_live() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !app.db.hub.is_live() {
                tracing::warn!("the event listener is not connected yet; subscriptions wait for it");
            }
        }
        crate::auth::follow_stored_hash_cost(&app.auth, &app.db).await;
        tokio::spawn(crate::auth::rate_limit::prune_forever(Arc::clone(&app), app.shutdown.subscribe()));
        let schema = graphql::schema(app.clone(), &app.config.limits);
        let router = http::router(HttpState { app: app.clone(), schema });
        Ok(Self { listener, router, app })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.app.config.listen_addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (for at most `SHUTDOWN_GRACE`) and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let addr = self.local_addr();
        tracing::info!("listening on http://{addr}/graphql");
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let app = Arc::clone(&self.app);
        let serve =
            // `tap_io` (which does nothing here) is what gives a custom
            // listener's connections their peer address as `ConnectInfo`.
            axum::serve(self.listener.tap_io(|_| {}), self.router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    tracing::info!("shutting down: finishing in-flight requests, closing subscriptions");
                    // WebSockets are not part of axum's graceful shutdown: tell them.
                    app.shutdown.send_replace(true);
                    app.db.hub.broadcast(HubMessage::Shutdown);
                    let _ = stopping_tx.send(());
                });
        let grace_expired = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = serve => result,
            () = grace_expired => {
                tracing::warn!("shutdown grace period expired; closing remaining connections");
                Ok(())
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
