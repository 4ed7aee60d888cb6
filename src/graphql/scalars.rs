//! The `DateTime` scalar of the contract.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::Utc;

use crate::db::types::DbTime;

/// An instant in UTC, RFC 3339 with microseconds and a `Z` (e.g.
/// `2026-11-25T17:23:58.123456Z`): fixed width, so it also sorts as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime(pub DbTime);

/// An instant in UTC, RFC 3339 (e.g. 2026-11-25T17:23:58Z).
#[Scalar(name = "DateTime")]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => DbTime::parse_rfc3339(text)
                .map(DateTime)
                .ok_or_else(|| InputValueError::custom("expected an RFC 3339 date-time")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339())
    }
}

impl From<DbTime> for DateTime {
    fn from(value: DbTime) -> Self {
        Self(value)
    }
}

impl From<chrono::DateTime<Utc>> for DateTime {
    fn from(value: chrono::DateTime<Utc>) -> Self {
        Self(DbTime::from(value))
    }
}
