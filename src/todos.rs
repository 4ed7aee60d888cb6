//! The todo domain: validated inputs, ordering and opaque cursors.
//!
//! Everything here is checked before it reaches the database, so both backends
//! receive, and therefore accept and refuse, exactly the same values.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::db::types::{DbId, DbTime};
use crate::error::{AppError, AppResult};

pub const TITLE_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 2_000;
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

/// A todo as stored.
#[derive(Debug, Clone, PartialEq, Eq, diesel::Queryable)]
pub struct Todo {
    pub id: DbId,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub created_at: DbTime,
    pub updated_at: DbTime,
}

/// PostgreSQL text cannot hold U+0000 and SQLite's can: refusing it here
/// keeps both backends answering alike.
fn refuse_nul(field: &'static str, text: &str) -> AppResult<()> {
    if text.contains('\0') {
        return Err(AppError::bad_input(field, format!("{field} must not contain the NUL character")));
    }
    Ok(())
}

/// Trims and checks a title: 1 to 200 characters (Unicode scalar values).
pub fn parse_title(raw: &str) -> AppResult<String> {
    refuse_nul("title", raw)?;
    let title = raw.trim();
    if title.is_empty() {
        return Err(AppError::bad_input("title", "Title must not be empty"));
    }
    if title.chars().count() > TITLE_MAX_CHARS {
        return Err(AppError::bad_input(
            "title",
            format!("Title must be at most {TITLE_MAX_CHARS} characters"),
        ));
    }
    Ok(title.to_owned())
}

pub fn parse_description(raw: Option<String>) -> AppResult<Option<String>> {
    if let Some(text) = &raw {
        refuse_nul("description", text)?;
        if text.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(AppError::bad_input(
                "description",
                format!("Description must be at most {DESCRIPTION_MAX_CHARS} characters"),
            ));
        }
    }
    Ok(raw)
}

/// Case folding for search, done here rather than in SQL so that SQLite
/// (ASCII-only `lower`) and PostgreSQL (locale-dependent `lower`) agree.
pub fn fold(text: &str) -> String {
    text.to_lowercase()
}

#[derive(Debug, Clone)]
pub struct NewTodo {
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
}

/// A partial update: `None` leaves a field as it is; `description:
/// Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TodoPatch {
    pub title: Option<String>,
    pub description: Option<Option<String>>,
    pub completed: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TodoFilter {
    pub completed: Option<bool>,
    /// The case-folded term, matched as a substring of the folded title and
    /// description (no wildcards: `%` and `_` are literal).
    pub search: Option<String>,
}

/// The longest search term. Finding a term in a text costs up to text ×
/// term steps in both engines (a term of `aaa…ab` against `aaa…a`), for
/// every todo of the user: a term longer than any phrase one types into a
/// search box is only good for that. 100 characters cost a scan of 10,000
/// todos of 2,000 characters at most about half a second on PostgreSQL;
/// the 2,000 allowed before cost twenty times more.
pub const SEARCH_MAX_CHARS: usize = 100;

impl TodoFilter {
    pub fn new(completed: Option<bool>, search: Option<&str>) -> AppResult<Self> {
        let search = match search {
            None => None,
            Some(term) if term.chars().count() > SEARCH_MAX_CHARS => {
                return Err(AppError::bad_input(
                    "search",
                    format!("Search must be at most {SEARCH_MAX_CHARS} characters"),
                ));
            }
            Some(term) => {
                refuse_nul("search", term)?;
                Some(fold(term))
            }
        };
        Ok(Self { completed, search })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderField {
    CreatedAt,
    UpdatedAt,
    Title,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TodoOrder {
    pub field: OrderField,
    pub direction: Direction,
}

impl Default for TodoOrder {
    /// Newest first.
    fn default() -> Self {
        Self { field: OrderField::CreatedAt, direction: Direction::Desc }
    }
}

/// The sort key of the row a cursor points after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorKey {
    Time(DbTime),
    Title(String),
}

/// A position in one ordering: the sort key and id of the last row seen.
/// Keyset cursors stay correct when rows are inserted between pages, unlike
/// offsets. Encoded as opaque base64url; the ordering is part of the cursor so
/// that a cursor from another ordering is refused instead of misread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub order: TodoOrder,
    pub key: CursorKey,
    pub id: DbId,
}

const CURSOR_VERSION: &str = "v1";

/// The instant in a time cursor, if both backends can take it and order it
/// alike. SQLite keeps instants as fixed-width RFC 3339 text, which sorts like
/// the instant only for RFC 3339's years 0000 to 9999 (year 10000 is written
/// `+10000-…` and sorts before year 0000), while PostgreSQL compares real
/// timestamps: the same crafted cursor used to give the two backends
/// different pages. A leap second (`23:59:60`, which chrono accepts) is kept
/// as second 60 in SQLite's text but lands in the next minute on PostgreSQL.
/// No cursor the server issues is outside the range or on a leap second, so
/// such a cursor was crafted and is refused like any other invalid one.
fn cursor_time(text: &str) -> Option<DbTime> {
    use chrono::{Datelike as _, Timelike as _};
    let time = DbTime::parse_rfc3339(text)?;
    let utc = time.get();
    let representable = (0..=9999).contains(&utc.year()) && utc.nanosecond() < 1_000_000_000;
    representable.then_some(time)
}

impl Cursor {
    pub fn for_todo(order: TodoOrder, todo: &Todo) -> Self {
        let key = match order.field {
            OrderField::CreatedAt => CursorKey::Time(todo.created_at),
            OrderField::UpdatedAt => CursorKey::Time(todo.updated_at),
            OrderField::Title => CursorKey::Title(todo.title.clone()),
        };
        Self { order, key, id: todo.id }
    }

    pub fn encode(&self) -> String {
        let field = match self.order.field {
            OrderField::CreatedAt => "c",
            OrderField::UpdatedAt => "u",
            OrderField::Title => "t",
        };
        let direction = match self.order.direction {
            Direction::Asc => "a",
            Direction::Desc => "d",
        };
        let key = match &self.key {
            CursorKey::Time(t) => t.to_rfc3339(),
            CursorKey::Title(title) => title.clone(),
        };
        // The key goes last: a title may contain the separator.
        let plain = format!("{CURSOR_VERSION}|{field}{direction}|{}|{key}", self.id.0.hyphenated());
        URL_SAFE_NO_PAD.encode(plain)
    }

    /// Decodes a cursor given as `after`, for the ordering of this request.
    pub fn decode(encoded: &str, order: TodoOrder) -> AppResult<Self> {
        let invalid = || AppError::bad_input("after", "Invalid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).map_err(|_| invalid())?;
        let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = plain.splitn(4, '|');
        let (Some(CURSOR_VERSION), Some(kind), Some(id), Some(key)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let (field, direction) = match kind {
            "ca" => (OrderField::CreatedAt, Direction::Asc),
            "cd" => (OrderField::CreatedAt, Direction::Desc),
            "ua" => (OrderField::UpdatedAt, Direction::Asc),
            "ud" => (OrderField::UpdatedAt, Direction::Desc),
            "ta" => (OrderField::Title, Direction::Asc),
            "td" => (OrderField::Title, Direction::Desc),
            _ => return Err(invalid()),
        };
        if (TodoOrder { field, direction }) != order {
            return Err(AppError::bad_input("after", "This cursor belongs to a different orderBy"));
        }
        let id = uuid::Uuid::parse_str(id).map(DbId).map_err(|_| invalid())?;
        let key = match field {
            OrderField::CreatedAt | OrderField::UpdatedAt => {
                CursorKey::Time(cursor_time(key).ok_or_else(invalid)?)
            }
            OrderField::Title if key.contains('\0') => return Err(invalid()),
            OrderField::Title => CursorKey::Title(key.to_owned()),
        };
        Ok(Self { order, key, id })
    }
}

/// One page request, validated.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub first: usize,
    pub after: Option<Cursor>,
    pub order: TodoOrder,
    pub filter: TodoFilter,
}

impl PageRequest {
    pub fn new(
        first: Option<i32>,
        after: Option<&str>,
        order: TodoOrder,
        filter: TodoFilter,
    ) -> AppResult<Self> {
        let first = match first {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if n < 0 => {
                return Err(AppError::bad_input("first", "first must not be negative"));
            }
            Some(n) if n as usize > MAX_PAGE_SIZE => {
                return Err(AppError::bad_input("first", format!("first must be at most {MAX_PAGE_SIZE}")));
            }
            Some(n) => n as usize,
        };
        let after = after.map(|c| Cursor::decode(c, order)).transpose()?;
        Ok(Self { first, after, order, filter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Todo {
        Todo {
            id: DbId::new(),
            title: "a|b|c".into(),
            description: None,
            completed: false,
            created_at: DbTime::now(),
            updated_at: DbTime::now(),
        }
    }

    #[test]
    fn cursors_round_trip_for_every_order() {
        let todo = sample();
        for field in [OrderField::CreatedAt, OrderField::UpdatedAt, OrderField::Title] {
            for direction in [Direction::Asc, Direction::Desc] {
                let order = TodoOrder { field, direction };
                let cursor = Cursor::for_todo(order, &todo);
                assert_eq!(Cursor::decode(&cursor.encode(), order).expect("decodes"), cursor);
            }
        }
    }

    #[test]
    fn cursors_from_another_order_or_garbage_are_refused() {
        let cursor = Cursor::for_todo(TodoOrder::default(), &sample()).encode();
        let other = TodoOrder { field: OrderField::Title, direction: Direction::Asc };
        assert!(Cursor::decode(&cursor, other).is_err());
        for garbage in ["", "xyz", "!!!", &URL_SAFE_NO_PAD.encode("v1|cd|not-a-uuid|x")] {
            assert!(Cursor::decode(garbage, TodoOrder::default()).is_err(), "{garbage}");
        }
    }

    #[test]
    fn cursor_times_outside_years_0000_to_9999_are_refused() {
        let cursor = |key: &str| URL_SAFE_NO_PAD.encode(format!("v1|cd|{}|{key}", DbId::new().0));
        for key in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-06-01T12:00:00+14:00"] {
            assert!(Cursor::decode(&cursor(key), TodoOrder::default()).is_ok(), "{key}");
        }
        for key in [
            "9999-12-31T23:59:59-00:01",
            "0000-01-01T00:00:00+00:01",
            "10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(Cursor::decode(&cursor(key), TodoOrder::default()).is_err(), "{key}");
        }
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(parse_title("  hi  ").ok(), Some("hi".to_owned()));
        assert!(parse_title("   ").is_err());
        assert!(parse_title(&"é".repeat(200)).is_ok());
        assert!(parse_title(&"é".repeat(201)).is_err());
        assert!(parse_description(Some("x".repeat(2000))).is_ok());
        assert!(parse_description(Some("x".repeat(2001))).is_err());
    }

    #[test]
    fn search_terms_are_folded_and_bounded() {
        let filter = TodoFilter::new(None, Some("50%_OFF\\")).expect("valid");
        assert_eq!(filter.search.as_deref(), Some("50%_off\\"), "no wildcards to escape");
        assert!(TodoFilter::new(None, Some(&"é".repeat(SEARCH_MAX_CHARS))).is_ok());
        assert!(TodoFilter::new(None, Some(&"é".repeat(SEARCH_MAX_CHARS + 1))).is_err());
    }

    #[test]
    fn page_size_is_bounded() {
        let page = |n| PageRequest::new(Some(n), None, TodoOrder::default(), TodoFilter::default());
        assert_eq!(page(100).map(|p| p.first).ok(), Some(100));
        assert!(page(101).is_err());
        assert!(page(-1).is_err());
        let default = PageRequest::new(None, None, TodoOrder::default(), TodoFilter::default());
        assert_eq!(default.map(|p| p.first).ok(), Some(DEFAULT_PAGE_SIZE));
    }
}
