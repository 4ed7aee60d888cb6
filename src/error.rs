//! The one error type of the domain, and its mapping to GraphQL errors.
//!
//! Resolvers and the database layer return [`AppError`]; it becomes an
//! `async_graphql::Error` with `extensions.code` in exactly one place
//! ([`From<AppError> for async_graphql::Error`]). `AppError` deliberately does
//! not implement `Display`: async-graphql converts any `Display` type with `?`,
//! which is how SQL text leaks to clients. Without it, the only way out is the
//! mapping below, where internal causes go to the log and the client gets a
//! generic message.

use std::fmt;

/// The stable error codes of the API (`extensions.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    BadUserInput,
    Conflict,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    TooManySubscriptions,
    QuotaExceeded,
    EventsLost,
    InternalServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::Conflict => "CONFLICT",
            Self::NotFound => "NOT_FOUND",
            Self::RateLimited => "RATE_LIMITED",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::EventsLost => "EVENTS_LOST",
            Self::InternalServerError => "INTERNAL_SERVER_ERROR",
        }
    }
}

pub const INTERNAL_MESSAGE: &str = "Internal server error";

pub enum AppError {
    /// No, bad, expired or revoked token; wrong credentials.
    Unauthenticated(&'static str),
    /// `field` names the input field that failed validation.
    BadUserInput {
        field: &'static str,
        message: String,
    },
    Conflict(&'static str),
    NotFound(&'static str),
    RateLimited {
        retry_after_secs: u64,
    },
    /// The database is unreachable or the pool is exhausted; worth retrying.
    Unavailable(String),
    /// Events may have been missed (a slow subscriber, or the PostgreSQL
    /// listener reconnecting): the client must re-fetch and subscribe again.
    EventsLost,
    /// A cap on open subscriptions was reached.
    TooManySubscriptions(&'static str),
    /// The caller already has `limit` todos (`MAX_TODOS_PER_USER`).
    QuotaExceeded {
        limit: u32,
    },
    /// Anything unexpected. The detail is logged, never sent.
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_input(field: &'static str, message: impl Into<String>) -> Self {
        Self::BadUserInput { field, message: message.into() }
    }

    pub fn internal(cause: impl fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::BadUserInput { .. } => ErrorCode::BadUserInput,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::ServiceUnavailable,
            Self::EventsLost => ErrorCode::EventsLost,
            Self::TooManySubscriptions(_) => ErrorCode::TooManySubscriptions,
            Self::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Self::Internal(_) => ErrorCode::InternalServerError,
        }
    }

    /// The message a client may see.
    pub fn public_message(&self) -> String {
        match self {
            Self::Unauthenticated(m)
            | Self::Conflict(m)
            | Self::NotFound(m)
            | Self::TooManySubscriptions(m) => (*m).to_owned(),
            Self::BadUserInput { message, .. } => message.clone(),
            Self::RateLimited { retry_after_secs } => {
                format!("Too many attempts; try again in {retry_after_secs} s")
            }
            Self::Unavailable(_) => "The service is temporarily unavailable; try again".to_owned(),
            Self::EventsLost => "Events may have been missed; re-fetch and subscribe again".to_owned(),
            Self::QuotaExceeded { limit } => {
                format!("You have reached the limit of {limit} todos; delete some to create more")
            }
            Self::Internal(_) => INTERNAL_MESSAGE.to_owned(),
        }
    }
}

// Debug is for logs: it may carry the internal cause, which is why this type
// has no Display for async-graphql to pick up.
impl fmt::Debug for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Internal(cause) | Self::Unavailable(cause) => {
                write!(f, "{}: {cause}", self.code().as_str())
            }
            other => write!(f, "{}: {}", other.code().as_str(), other.public_message()),
        }
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(error: AppError) -> Self {
        match &error {
            AppError::Internal(cause) => tracing::error!(cause = %cause, "internal error"),
            AppError::Unavailable(cause) => tracing::warn!(cause = %cause, "database unavailable"),
            _ => {}
        }
        let mut gql = async_graphql::Error::new(error.public_message());
        let mut extensions = async_graphql::ErrorExtensionValues::default();
        extensions.set("code", error.code().as_str());
        match &error {
            AppError::BadUserInput { field, .. } => extensions.set("field", *field),
            AppError::RateLimited { retry_after_secs } => extensions.set("retryAfter", *retry_after_secs),
            _ => {}
        }
        gql.extensions = Some(extensions);
        gql
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &error {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                Self::Unavailable(error.to_string())
            }
            // PostgreSQL: the connection to the server was lost (diesel-async
            // reports it as a command it could not send, with the driver's
            // message).
            Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, info)
                if info.message().starts_with("connection closed")
                    || info.message().starts_with("error communicating with the server") =>
            {
                Self::Unavailable(error.to_string())
            }
            // SQLite: another process held the file's lock past busy_timeout.
            // PostgreSQL: the server is shutting down or restarting.
            Error::DatabaseError(_, info)
                if info.message().contains("database is locked")
                    || info.message().contains("terminating connection")
                    || info.message().contains("the database system is") =>
            {
                Self::Unavailable(error.to_string())
            }
            _ => Self::Internal(error.to_string()),
        }
    }
}

impl<E: std::error::Error + 'static> From<bb8::RunError<E>> for AppError {
    fn from(error: bb8::RunError<E>) -> Self {
        // Both a timeout and a failed connect mean the database cannot be
        // reached right now: the client may retry.
        Self::Unavailable(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(error: &async_graphql::Error) -> Option<String> {
        let value = error.extensions.as_ref()?.get("code")?;
        match value {
            async_graphql::Value::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let gql: async_graphql::Error = AppError::internal("relation \"users\" does not exist").into();
        assert_eq!(gql.message, INTERNAL_MESSAGE);
        assert_eq!(code_of(&gql).as_deref(), Some("INTERNAL_SERVER_ERROR"));
        let gql: async_graphql::Error = diesel::result::Error::NotFound.into_app().into();
        assert_eq!(gql.message, INTERNAL_MESSAGE);
    }

    #[test]
    fn codes_and_extensions() {
        let gql: async_graphql::Error = AppError::bad_input("title", "too long").into();
        assert_eq!(code_of(&gql).as_deref(), Some("BAD_USER_INPUT"));
        let field = gql.extensions.as_ref().and_then(|e| e.get("field").cloned());
        assert_eq!(field, Some(async_graphql::Value::from("title")));
        let gql: async_graphql::Error = AppError::RateLimited { retry_after_secs: 42 }.into();
        assert_eq!(code_of(&gql).as_deref(), Some("RATE_LIMITED"));
        let retry = gql.extensions.as_ref().and_then(|e| e.get("retryAfter").cloned());
        assert_eq!(retry, Some(async_graphql::Value::from(42u64)));
        let gql: async_graphql::Error = AppError::QuotaExceeded { limit: 10_000 }.into();
        assert_eq!(code_of(&gql).as_deref(), Some("QUOTA_EXCEEDED"));
        assert!(gql.message.contains("10000"), "{}", gql.message);
    }

    #[test]
    fn a_lost_connection_is_unavailable_but_other_send_failures_are_internal() {
        use diesel::result::{DatabaseErrorKind, Error};
        let unsent = |message: &str| {
            Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, Box::new(message.to_owned()))
                .into_app()
        };
        assert!(matches!(unsent("connection closed"), AppError::Unavailable(_)));
        assert!(matches!(
            unsent("error communicating with the server: Connection reset by peer (os error 104)"),
            AppError::Unavailable(_)
        ));
        assert!(matches!(unsent("error encoding message to server: value too large"), AppError::Internal(_)));
    }

    trait IntoApp {
        fn into_app(self) -> AppError;
    }
    impl IntoApp for diesel::result::Error {
        fn into_app(self) -> AppError {
            self.into()
        }
    }
}
