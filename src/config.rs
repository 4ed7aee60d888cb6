//! Typed configuration: flags > environment > `.env` > defaults.
//!
//! clap reads flags and environment variables (the caller loads `.env` into
//! the environment first, without overriding what is already set), then
//! [`Config::from_args`] turns the raw strings into checked values so a bad
//! value stops the process with one clear line instead of failing later.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "todoql",
    version,
    about = "GraphQL accounts and private todo lists on SQLite or PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub args: ConfigArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) and exit.
    PrintSchema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The raw flags/environment, before validation. Every flag is global so it
/// can be written before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// `sqlite://PATH` (embedded) or `postgres://…` (production).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://todoql.db",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Address to bind; port 0 picks a free port.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8000", global = true)]
    pub listen_addr: String,
    /// HS256 signing key, at least 32 bytes.
    #[arg(long, env = "JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token lifetime (humantime: 15m, 12h, 7d).
    #[arg(long, env = "JWT_TTL", default_value = "7d", global = true)]
    pub jwt_ttl: String,
    /// bcrypt cost, 4..=31.
    #[arg(long, env = "BCRYPT_COST", default_value = "10", global = true)]
    pub bcrypt_cost: String,
    /// Comma-separated exact origins allowed by CORS.
    #[arg(long, env = "CORS_ORIGINS", default_value = "http://localhost:3000", global = true)]
    pub cors_origins: String,
    /// Database pool size.
    #[arg(long, env = "DATABASE_POOL_SIZE", global = true)]
    pub database_pool_size: Option<String>,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: String,
    /// Development mode: allows `CORS_ORIGINS=*`.
    #[arg(long, env = "TODOQL_DEV", global = true)]
    pub dev: bool,
    /// Concurrent bcrypt computations (default: half the cores, at least 1).
    #[arg(long, env = "BCRYPT_CONCURRENCY", global = true)]
    pub bcrypt_concurrency: Option<String>,
    /// Maximum query depth.
    #[arg(long, env = "MAX_QUERY_DEPTH", default_value = "12", global = true)]
    pub max_query_depth: String,
    /// Maximum query complexity (fields selected, lists weighted by `first`).
    #[arg(long, env = "MAX_QUERY_COMPLEXITY", default_value = "5000", global = true)]
    pub max_query_complexity: String,
    /// Maximum operations in one batched request.
    #[arg(long, env = "MAX_BATCH_SIZE", default_value = "10", global = true)]
    pub max_batch_size: String,
    /// Maximum request body size in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1048576", global = true)]
    pub max_body_bytes: String,
    /// Per-request timeout (humantime).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", global = true)]
    pub request_timeout: String,
    /// Open subscriptions allowed per user.
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_USER", default_value = "25", global = true)]
    pub max_subscriptions_per_user: String,
    /// Open subscriptions allowed per instance.
    #[arg(long, env = "MAX_SUBSCRIPTIONS", default_value = "10000", global = true)]
    pub max_subscriptions: String,
    /// Open subscriptions allowed on one WebSocket connection.
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_CONNECTION", default_value = "10", global = true)]
    pub max_subscriptions_per_connection: String,
    /// Open subscriptions allowed per client address (0: no limit).
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_ADDRESS", default_value = "100", global = true)]
    pub max_subscriptions_per_address: String,
    /// Operations in flight (queries, mutations and subscriptions) on one
    /// WebSocket connection.
    #[arg(long, env = "MAX_OPERATIONS_PER_CONNECTION", default_value = "32", global = true)]
    pub max_operations_per_connection: String,
    /// Open WebSocket connections allowed per client address (0: no limit).
    #[arg(long, env = "MAX_WEBSOCKETS_PER_ADDRESS", default_value = "100", global = true)]
    pub max_websockets_per_address: String,
    /// A WebSocket send blocked this long (the peer stopped reading) drops
    /// the connection.
    #[arg(long, env = "WS_WRITE_TIMEOUT", default_value = "10s", global = true)]
    pub ws_write_timeout: String,
    /// How often the server pings each WebSocket (a WebSocket Ping frame,
    /// plus the protocol's own keep-alive message).
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "15s", global = true)]
    pub ws_ping_interval: String,
    /// A WebSocket peer silent this long (no frame at all, pongs included)
    /// is dropped.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "45s", global = true)]
    pub ws_idle_timeout: String,
    /// How often a live subscription re-checks that its token is still valid
    /// (revocations also arrive as events; this is the backstop).
    #[arg(long, env = "SUBSCRIPTION_RECHECK", default_value = "30s", global = true)]
    pub subscription_recheck: String,
    /// Failed login attempts allowed per email in the window.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_EMAIL", default_value = "10", global = true)]
    pub login_max_failures_per_email: String,
    /// Failed login attempts allowed per client address in the window.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ADDRESS", default_value = "100", global = true)]
    pub login_max_failures_per_address: String,
    /// The login rate-limit window (humantime).
    #[arg(long, env = "LOGIN_WINDOW", default_value = "15m", global = true)]
    pub login_window: String,
    /// Trusted proxies in front of the server: the client address is the
    /// X-Forwarded-For entry that many hops from the right (0: the TCP peer).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "0", global = true)]
    pub trust_forwarded_for: String,
    /// Open TCP connections allowed for the whole server.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "10000", global = true)]
    pub max_connections: String,
    /// Open TCP connections allowed from one peer address (0: no limit;
    /// not applied behind trusted proxies, where every peer is a proxy).
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value = "1000", global = true)]
    pub max_connections_per_address: String,
    /// A connection with no byte in either direction for this long is closed.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT", default_value = "60s", global = true)]
    pub connection_idle_timeout: String,
    /// Signups allowed per client address per hour (0: no limit).
    #[arg(long, env = "SIGNUP_MAX_PER_ADDRESS", default_value = "100", global = true)]
    pub signup_max_per_address: String,
    /// Maximum lexical tokens in a document.
    #[arg(long, env = "MAX_QUERY_TOKENS", default_value = "10000", global = true)]
    pub max_query_tokens: String,
    /// Maximum aliases in a document.
    #[arg(long, env = "MAX_QUERY_ALIASES", default_value = "30", global = true)]
    pub max_query_aliases: String,
    /// Maximum directives in a document.
    #[arg(long, env = "MAX_QUERY_DIRECTIVES", default_value = "50", global = true)]
    pub max_query_directives: String,
    /// Whether validation errors suggest field names ("did you mean").
    #[arg(long, env = "SUGGESTIONS", default_value = "true", global = true)]
    pub suggestions: String,
    /// Operations slower than this are logged at warn.
    #[arg(long, env = "SLOW_REQUEST_THRESHOLD", default_value = "1s", global = true)]
    pub slow_request_threshold: String,
    /// Whether schema introspection is allowed.
    #[arg(long, env = "INTROSPECTION", default_value = "true", global = true)]
    pub introspection: String,
    /// Todos one account may have; a create beyond it is QUOTA_EXCEEDED (0: no limit).
    #[arg(long, env = "MAX_TODOS_PER_USER", default_value = "10000", global = true)]
    pub max_todos_per_user: String,
}

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
            // Each pooled connection to `:memory:` would see its own empty
            // database, so refuse it rather than lose data silently.
            if path.is_empty() || path.contains(":memory:") || path.starts_with("file:") {
                return Err("DATABASE_URL: sqlite:// needs a file path, e.g. sqlite://todoql.db (in-memory databases are not supported)".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            if raw.len() <= "postgres://".len() + 1 {
                return Err("DATABASE_URL: postgres:// URL has no host".into());
            }
            return Ok(Self::Postgres(raw.to_owned()));
        }
        Err("DATABASE_URL must start with sqlite:// or postgres://".into())
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

// Postgres URLs carry passwords: never print them.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(_) => f.write_str("postgres://[redacted]"),
        }
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

pub const MIN_SECRET_BYTES: usize = 32;

/// Allowed CORS origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_depth: usize,
    pub max_tokens: usize,
    pub max_aliases: usize,
    pub max_directives: usize,
    pub suggestions: bool,
    pub max_complexity: usize,
    pub max_batch_size: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub introspection: bool,
}

/// What one WebSocket connection, and one client address's connections, may hold.
#[derive(Debug, Clone)]
pub struct WebSocketLimits {
    /// Operations in flight on one connection; more are refused one by one.
    pub operations_per_connection: usize,
    /// Open WebSocket connections per client address (`usize::MAX`: no
    /// limit). Unlike `MAX_CONNECTIONS_PER_ADDRESS` (TCP connections per
    /// peer), it counts the client address behind trusted proxies too.
    pub websockets_per_address: usize,
    /// Longest a send may block before the peer is taken for gone.
    pub write_timeout: Duration,
    pub ping_interval: Duration,
    /// Longest a peer may stay silent; longer than `ping_interval`.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub listen_addr: SocketAddr,
    /// `None`: generate (SQLite) or refuse to start (PostgreSQL); see `auth::token`.
    pub jwt_secret: Option<Secret>,
    pub jwt_ttl: Duration,
    pub bcrypt_cost: u32,
    pub bcrypt_concurrency: usize,
    pub cors_origins: CorsOrigins,
    pub database_pool_size: Option<u32>,
    pub subscriptions_per_user: usize,
    pub subscriptions_per_instance: usize,
    pub subscription_recheck: Duration,
    /// Todos one account may have (`None`: no limit). It also bounds what a
    /// `search` or `totalCount` of one user can scan.
    pub max_todos_per_user: Option<u32>,
    pub subscriptions_per_connection: usize,
    /// `usize::MAX`: no limit.
    pub subscriptions_per_address: usize,
    pub websocket: WebSocketLimits,
    pub log_format: LogFormat,
    pub login_limits: crate::auth::rate_limit::LoginLimits,
    /// Trusted proxies in front of the server (see `http::graphql::client_addr`).
    pub trusted_proxies: usize,
    pub connections: crate::http::listener::ConnectionLimits,
    pub slow_request_threshold: Duration,
    pub dev: bool,
    pub limits: Limits,
}

/// A configuration value that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

fn parse_number<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, ConfigError> {
    raw.trim().parse().map_err(|_| bad(format!("{name}: expected a whole number, got {raw:?}")))
}

fn parse_at_least_one(name: &str, raw: &str) -> Result<usize, ConfigError> {
    match parse_number(name, raw)? {
        0 => Err(bad(format!("{name} must be at least 1"))),
        value => Ok(value),
    }
}

/// A per-address cap, where 0 means none: behind a proxy that hides client
/// addresses every client shares one.
fn parse_cap(name: &str, raw: &str) -> Result<usize, ConfigError> {
    match parse_number(name, raw)? {
        0 => Ok(usize::MAX),
        value => Ok(value),
    }
}

fn parse_duration(name: &str, raw: &str) -> Result<Duration, ConfigError> {
    let value = humantime::parse_duration(raw.trim())
        .map_err(|e| bad(format!("{name}: {e} (examples: 15m, 12h, 7d)")))?;
    if value.is_zero() {
        return Err(bad(format!("{name} must be longer than zero")));
    }
    Ok(value)
}

fn parse_bool(name: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(format!("{name}: expected true or false, got {raw:?}"))),
    }
}

/// A number of proxies. `true`/`false` were this setting's values before it
/// counted proxies; they mean what they meant with one proxy in front.
fn parse_trusted_proxies(raw: &str) -> Result<usize, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "false" | "no" | "off" => Ok(0),
        "true" | "yes" | "on" => Ok(1),
        _ => parse_number("TRUST_FORWARDED_FOR", raw).map_err(|_| {
            bad(format!("TRUST_FORWARDED_FOR: expected the number of trusted proxies, got {raw:?}"))
        }),
    }
}

fn parse_origins(raw: &str, dev: bool) -> Result<CorsOrigins, ConfigError> {
    let origins: Vec<String> =
        raw.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
    if origins.iter().any(|o| o == "*") {
        if !dev {
            return Err(bad("CORS_ORIGINS: '*' is only allowed with --dev; list exact origins instead"));
        }
        return Ok(CorsOrigins::Any);
    }
    for origin in &origins {
        let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        let valid = rest.is_some_and(|host| !host.is_empty() && !host.contains('/'))
            && http::HeaderValue::from_str(origin).is_ok();
        if !valid {
            return Err(bad(format!(
                "CORS_ORIGINS: {origin:?} is not an origin (scheme://host[:port], no path)"
            )));
        }
    }
    Ok(CorsOrigins::List(origins))
}

impl Config {
    pub fn from_args(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let database_url = DatabaseUrl::parse(&args.database_url).map_err(bad)?;
        let listen_addr = args.listen_addr.trim().parse().map_err(|_| {
            bad(format!("LISTEN_ADDR: expected HOST:PORT such as 127.0.0.1:8000, got {:?}", args.listen_addr))
        })?;

        let jwt_secret = match args.jwt_secret.as_deref() {
            None | Some("") => None,
            Some(s) if s.len() < MIN_SECRET_BYTES => {
                return Err(bad(format!(
                    "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (got {})",
                    s.len()
                )));
            }
            Some(s) => Some(Secret::new(s.as_bytes())),
        };
        if jwt_secret.is_none() && matches!(database_url, DatabaseUrl::Postgres(_)) {
            return Err(bad(
                "JWT_SECRET is required with PostgreSQL (every instance must share it); generate one with: openssl rand -hex 32",
            ));
        }

        let bcrypt_cost: u32 = parse_number("BCRYPT_COST", &args.bcrypt_cost)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(bad(format!("BCRYPT_COST must be between 4 and 31 (got {bcrypt_cost})")));
        }
        let bcrypt_concurrency = match &args.bcrypt_concurrency {
            Some(raw) => parse_number("BCRYPT_CONCURRENCY", raw)?,
            None => default_bcrypt_concurrency(),
        };
        if bcrypt_concurrency == 0 {
            return Err(bad("BCRYPT_CONCURRENCY must be at least 1"));
        }

        let database_pool_size = match &args.database_pool_size {
            Some(raw) => {
                let size: u32 = parse_number("DATABASE_POOL_SIZE", raw)?;
                if size == 0 {
                    return Err(bad("DATABASE_POOL_SIZE must be at least 1"));
                }
                Some(size)
            }
            None => None,
        };

        let log_format = LogFormat::from_str(args.log_format.trim(), true)
            .map_err(|_| bad(format!("LOG_FORMAT must be pretty or json (got {:?})", args.log_format)))?;

        let limits = Limits {
            max_depth: parse_number("MAX_QUERY_DEPTH", &args.max_query_depth)?,
            max_tokens: parse_number("MAX_QUERY_TOKENS", &args.max_query_tokens)?,
            max_aliases: parse_number("MAX_QUERY_ALIASES", &args.max_query_aliases)?,
            max_directives: parse_number("MAX_QUERY_DIRECTIVES", &args.max_query_directives)?,
            suggestions: parse_bool("SUGGESTIONS", &args.suggestions)?,
            max_complexity: parse_number("MAX_QUERY_COMPLEXITY", &args.max_query_complexity)?,
            max_batch_size: parse_number("MAX_BATCH_SIZE", &args.max_batch_size)?,
            max_body_bytes: parse_number("MAX_BODY_BYTES", &args.max_body_bytes)?,
            request_timeout: parse_duration("REQUEST_TIMEOUT", &args.request_timeout)?,
            introspection: parse_bool("INTROSPECTION", &args.introspection)?,
        };
        if limits.max_depth == 0
            || limits.max_complexity == 0
            || limits.max_batch_size == 0
            || limits.max_body_bytes == 0
        {
            return Err(bad(
                "MAX_QUERY_DEPTH, MAX_QUERY_COMPLEXITY, MAX_BATCH_SIZE and MAX_BODY_BYTES must be at least 1",
            ));
        }

        let ping_interval = parse_duration("WS_PING_INTERVAL", &args.ws_ping_interval)?;
        let idle_timeout = parse_duration("WS_IDLE_TIMEOUT", &args.ws_idle_timeout)?;
        // A peer answers a ping only after it was sent: a timeout no longer
        // than the interval would drop healthy idle connections.
        if idle_timeout <= ping_interval {
            return Err(bad("WS_IDLE_TIMEOUT must be longer than WS_PING_INTERVAL"));
        }

        let config = Self {
            database_url,
            listen_addr,
            jwt_secret,
            jwt_ttl: parse_duration("JWT_TTL", &args.jwt_ttl)?,
            bcrypt_cost,
            bcrypt_concurrency,
            cors_origins: parse_origins(&args.cors_origins, args.dev)?,
            database_pool_size,
            subscriptions_per_user: parse_number(
                "MAX_SUBSCRIPTIONS_PER_USER",
                &args.max_subscriptions_per_user,
            )?,
            subscriptions_per_instance: parse_number("MAX_SUBSCRIPTIONS", &args.max_subscriptions)?,
            subscription_recheck: parse_duration("SUBSCRIPTION_RECHECK", &args.subscription_recheck)?,
            max_todos_per_user: match parse_number::<u32>("MAX_TODOS_PER_USER", &args.max_todos_per_user)? {
                0 => None,
                limit => Some(limit),
            },
            subscriptions_per_connection: parse_at_least_one(
                "MAX_SUBSCRIPTIONS_PER_CONNECTION",
                &args.max_subscriptions_per_connection,
            )?,
            subscriptions_per_address: parse_cap(
                "MAX_SUBSCRIPTIONS_PER_ADDRESS",
                &args.max_subscriptions_per_address,
            )?,
            websocket: WebSocketLimits {
                operations_per_connection: parse_at_least_one(
                    "MAX_OPERATIONS_PER_CONNECTION",
                    &args.max_operations_per_connection,
                )?,
                websockets_per_address: parse_cap(
                    "MAX_WEBSOCKETS_PER_ADDRESS",
                    &args.max_websockets_per_address,
                )?,
                write_timeout: parse_duration("WS_WRITE_TIMEOUT", &args.ws_write_timeout)?,
                ping_interval,
                idle_timeout,
            },
            log_format,
            login_limits: crate::auth::rate_limit::LoginLimits {
                per_email: parse_number("LOGIN_MAX_FAILURES_PER_EMAIL", &args.login_max_failures_per_email)?,
                per_address: parse_number(
                    "LOGIN_MAX_FAILURES_PER_ADDRESS",
                    &args.login_max_failures_per_address,
                )?,
                window: parse_duration("LOGIN_WINDOW", &args.login_window)?,
                signups_per_address: parse_number("SIGNUP_MAX_PER_ADDRESS", &args.signup_max_per_address)?,
            },
            trusted_proxies: parse_trusted_proxies(&args.trust_forwarded_for)?,
            connections: crate::http::listener::ConnectionLimits {
                max_total: parse_number("MAX_CONNECTIONS", &args.max_connections)?,
                max_per_address: parse_number(
                    "MAX_CONNECTIONS_PER_ADDRESS",
                    &args.max_connections_per_address,
                )?,
                idle_timeout: parse_duration("CONNECTION_IDLE_TIMEOUT", &args.connection_idle_timeout)?,
            },
            slow_request_threshold: parse_duration("SLOW_REQUEST_THRESHOLD", &args.slow_request_threshold)?,
            dev: args.dev,
            limits,
        };
        // The pings are what keeps an idle WebSocket's TCP connection from
        // looking idle to the listener.
        if config.websocket.ping_interval >= config.connections.idle_timeout {
            return Err(bad("WS_PING_INTERVAL must be shorter than CONNECTION_IDLE_TIMEOUT"));
        }
        Ok(config)
    }

    /// The configuration used by tests and embedders: defaults for everything
    /// but the database.
    pub fn for_database(url: &str) -> Result<Self, ConfigError> {
        let cli = Cli::try_parse_from(["todoql", "--database-url", url]).map_err(|e| bad(e.to_string()))?;
        Self::from_args(&cli.args)
    }
}

/// Half the cores: a burst of logins (each hash a core-bound ~65 ms at cost
/// 10) must not take every core from the requests already in flight. On 2
/// cores, letting bcrypt have both cut a concurrent todo list's throughput to
/// about a third; with one it keeps half, for half the login throughput (see
/// BENCHMARKS.md). `BCRYPT_CONCURRENCY` trades one for the other.
fn default_bcrypt_concurrency() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_leaves_half_the_cores_by_default() {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.bcrypt_concurrency, (cores / 2).max(1));
        assert!(config.bcrypt_concurrency < cores || cores == 1);
        assert_eq!(parse(&["--bcrypt-concurrency", "3"]).expect("valid").bcrypt_concurrency, 3);
        assert!(error(&["--bcrypt-concurrency", "0"]).contains("at least 1"));
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["todoql"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| bad(e.to_string()))?;
        Config::from_args(&cli.args)
    }

    fn error(args: &[&str]) -> String {
        match parse(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn database_urls() {
        assert_eq!(DatabaseUrl::parse("sqlite://todoql.db"), Ok(DatabaseUrl::Sqlite("todoql.db".into())));
        assert_eq!(DatabaseUrl::parse("sqlite:///tmp/x.db"), Ok(DatabaseUrl::Sqlite("/tmp/x.db".into())));
        assert!(matches!(DatabaseUrl::parse("postgresql://u@h/db"), Ok(DatabaseUrl::Postgres(_))));
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite://:memory:").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn postgres_url_is_not_printed() {
        let url = DatabaseUrl::parse("postgres://u:hunter2@h/db").expect("valid");
        assert!(!format!("{url:?}").contains("hunter2"));
        let secret = Secret::new("0123456789abcdef0123456789abcdef");
        assert!(!format!("{secret:?}").contains("0123"));
    }

    #[test]
    fn subscription_and_socket_caps() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.subscriptions_per_connection, 10);
        assert_eq!(config.subscriptions_per_address, 100);
        assert_eq!(config.websocket.operations_per_connection, 32);
        assert_eq!(config.websocket.websockets_per_address, 100);
        let unlimited = parse(&["--max-subscriptions-per-address", "0", "--max-websockets-per-address", "0"])
            .expect("valid");
        assert_eq!(unlimited.subscriptions_per_address, usize::MAX);
        assert_eq!(unlimited.websocket.websockets_per_address, usize::MAX);
        assert!(
            error(&["--max-subscriptions-per-connection", "0"]).contains("MAX_SUBSCRIPTIONS_PER_CONNECTION")
        );
        assert!(error(&["--max-operations-per-connection", "0"]).contains("MAX_OPERATIONS_PER_CONNECTION"));
        assert_eq!(config.websocket.write_timeout, Duration::from_secs(10));
        assert_eq!(config.websocket.ping_interval, Duration::from_secs(15));
        assert_eq!(config.websocket.idle_timeout, Duration::from_secs(45));
        assert!(error(&["--ws-idle-timeout", "15s"]).contains("WS_IDLE_TIMEOUT"));
        assert!(
            error(&["--ws-ping-interval", "60s", "--ws-idle-timeout", "180s"])
                .contains("CONNECTION_IDLE_TIMEOUT")
        );
        assert!(error(&["--ws-write-timeout", "0s"]).contains("WS_WRITE_TIMEOUT"));
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.database_url, DatabaseUrl::Sqlite("todoql.db".into()));
        assert_eq!(config.listen_addr.to_string(), "127.0.0.1:8000");
        assert_eq!(config.jwt_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.bcrypt_cost, 10);
        assert_eq!(config.cors_origins, CorsOrigins::List(vec!["http://localhost:3000".into()]));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.limits.max_depth, 12);
        assert_eq!(config.limits.max_batch_size, 10);
        assert_eq!(config.limits.max_body_bytes, 1 << 20);
        assert_eq!(config.limits.request_timeout, Duration::from_secs(30));
        assert_eq!(config.max_todos_per_user, Some(10_000));
        assert!(config.jwt_secret.is_none());
        assert_eq!(config.trusted_proxies, 0);
        assert_eq!(config.login_limits.signups_per_address, 100);
        assert_eq!(parse(&["--trust-forwarded-for", "2"]).expect("valid").trusted_proxies, 2);
        assert_eq!(parse(&["--trust-forwarded-for", "true"]).expect("valid").trusted_proxies, 1);
        assert_eq!(
            parse(&["--signup-max-per-address", "0"]).expect("valid").login_limits.signups_per_address,
            0
        );
    }

    #[test]
    fn todo_quota() {
        assert_eq!(parse(&["--max-todos-per-user", "3"]).expect("valid").max_todos_per_user, Some(3));
        assert_eq!(parse(&["--max-todos-per-user", "0"]).expect("valid").max_todos_per_user, None);
        assert!(error(&["--max-todos-per-user=-1"]).contains("MAX_TODOS_PER_USER"));
        assert!(error(&["--max-todos-per-user", "lots"]).contains("MAX_TODOS_PER_USER"));
        assert!(error(&["--max-todos-per-user", "4294967296"]).contains("MAX_TODOS_PER_USER"));
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        assert!(error(&["--bcrypt-cost", "3"]).contains("BCRYPT_COST"));
        assert!(error(&["--bcrypt-cost", "32"]).contains("BCRYPT_COST"));
        assert!(error(&["--bcrypt-cost", "ten"]).contains("BCRYPT_COST"));
        assert!(error(&["--jwt-secret", "short"]).contains("JWT_SECRET"));
        assert!(error(&["--database-url", "postgres://u@h/db"]).contains("JWT_SECRET is required"));
        assert!(error(&["--database-url", "mysql://h/db"]).contains("DATABASE_URL"));
        assert!(error(&["--cors-origins", "*"]).contains("--dev"));
        assert!(error(&["--cors-origins", "localhost:3000"]).contains("CORS_ORIGINS"));
        assert!(error(&["--jwt-ttl", "forever"]).contains("JWT_TTL"));
        assert!(error(&["--log-format", "xml"]).contains("LOG_FORMAT"));
        assert!(error(&["--listen-addr", "nowhere"]).contains("LISTEN_ADDR"));
        assert!(error(&["--database-pool-size", "0"]).contains("DATABASE_POOL_SIZE"));
        assert!(error(&["--trust-forwarded-for", "several"]).contains("TRUST_FORWARDED_FOR"));
        assert!(error(&["--signup-max-per-address", "many"]).contains("SIGNUP_MAX_PER_ADDRESS"));
    }

    #[test]
    fn good_values_are_taken() {
        let config = parse(&[
            "--cors-origins",
            "*",
            "--dev",
            "--jwt-ttl",
            "15m",
            "--bcrypt-cost",
            "4",
            "--database-url",
            "postgres://u@h/db",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--log-format",
            "json",
            "serve",
        ])
        .expect("valid");
        assert_eq!(config.cors_origins, CorsOrigins::Any);
        assert_eq!(config.jwt_ttl, Duration::from_secs(900));
        assert_eq!(config.bcrypt_cost, 4);
        assert_eq!(config.log_format, LogFormat::Json);
        let origins = parse(&["--cors-origins", "http://a.test, https://b.test:8443"]).expect("valid");
        assert_eq!(
            origins.cors_origins,
            CorsOrigins::List(vec!["http://a.test".into(), "https://b.test:8443".into()])
        );
    }
}
