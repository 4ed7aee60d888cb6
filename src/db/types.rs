//! Column types that read and write the same Rust value on both backends.
//!
//! PostgreSQL stores ids as native `uuid` and instants as `timestamptz`.
//! SQLite has neither, so there ids are lower-case hyphenated TEXT and instants
//! are fixed-width RFC 3339 TEXT with microseconds. Both encodings sort exactly
//! like the native types, which keyset pagination relies on: the same rows come
//! back in the same order on both backends.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Text, Timestamptz, Uuid as UuidSql};
use diesel::sqlite::{Sqlite, SqliteValue};
use uuid::Uuid;

/// A primary or foreign key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = UuidSql)]
#[diesel(sql_type = Text)]
pub struct DbId(pub Uuid);

impl DbId {
    /// Time-ordered (v7) ids keep B-tree inserts at the right edge.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for DbId {
    fn default() -> Self {
        Self::new()
    }
}

impl ToSql<UuidSql, Pg> for DbId {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <Uuid as ToSql<UuidSql, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<UuidSql, Pg> for DbId {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <Uuid as FromSql<UuidSql, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Text, Sqlite> for DbId {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.hyphenated().to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Sqlite> for DbId {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(value)?;
        Ok(Self(Uuid::parse_str(&text)?))
    }
}

/// An instant, truncated to the microsecond (PostgreSQL's precision) so that a
/// value written and read back compares equal on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = Timestamptz)]
#[diesel(sql_type = Text)]
pub struct DbTime(DateTime<Utc>);

impl DbTime {
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    pub fn get(self) -> DateTime<Utc> {
        self.0
    }

    /// The SQLite encoding; also the cursor encoding, because it is exact.
    pub fn to_rfc3339(self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text).ok().map(|t| Self::from(t.with_timezone(&Utc)))
    }
}

impl From<DateTime<Utc>> for DbTime {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(6))
    }
}

impl ToSql<Timestamptz, Pg> for DbTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <DateTime<Utc> as ToSql<Timestamptz, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Timestamptz, Pg> for DbTime {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<Timestamptz, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Text, Sqlite> for DbTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.to_rfc3339());
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Sqlite> for DbTime {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(value)?;
        Self::parse_rfc3339(&text).ok_or_else(|| format!("invalid timestamp {text:?}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encoding_sorts_like_the_instant() {
        let a = DbTime::from(
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("valid").with_timezone(&Utc),
        );
        let b = DbTime::from(
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000001Z").expect("valid").with_timezone(&Utc),
        );
        let c = DbTime::from(
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00.5Z").expect("valid").with_timezone(&Utc),
        );
        assert!(a.to_rfc3339() < b.to_rfc3339() && b.to_rfc3339() < c.to_rfc3339());
        assert_eq!(a.to_rfc3339(), "2026-01-01T00:00:00.000000Z");
        assert_eq!(DbTime::parse_rfc3339(&c.to_rfc3339()), Some(c));
    }

    #[test]
    fn now_is_truncated_to_microseconds() {
        let now = DbTime::now();
        assert_eq!(now.get().timestamp_subsec_nanos() % 1000, 0);
    }

    #[test]
    fn uuid_text_sorts_like_uuid_bytes() {
        let mut ids: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
        let mut texts: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
        ids.sort();
        texts.sort();
        let ids_as_text: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
        assert_eq!(ids_as_text, texts);
    }
}
