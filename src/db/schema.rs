//! The tables, declared once and instantiated per backend.
//!
//! Column SQL types differ (native `uuid`/`timestamptz` on PostgreSQL, TEXT on
//! SQLite) while the Rust types do not (see `db::types`), so one macro stamps
//! out a `postgres` and a `sqlite` module with the same names. The dispatch
//! macros in `db` bring the right module into scope for each expansion.

macro_rules! define_tables {
    ($id:ident, $time:ident) => {
        diesel::table! {
            use diesel::sql_types::*;

            users (id) {
                id -> $id,
                /// Trimmed and lower-cased by the application; unique.
                email -> Text,
                password_hash -> Text,
                /// Bumped by changePassword and logoutEverywhere; tokens carry
                /// the version they were issued under.
                token_version -> Integer,
                created_at -> $time,
                updated_at -> $time,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;

            todos (id) {
                id -> $id,
                owner_id -> $id,
                title -> Text,
                description -> Nullable<Text>,
                completed -> Bool,
                /// Case-folded copies for `filter.search`, folded in Rust so
                /// that both backends fold exactly alike (SQLite's lower() and
                /// LIKE only know ASCII).
                title_search -> Text,
                description_search -> Text,
                created_at -> $time,
                updated_at -> $time,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;

            /// One row per login attempt under a rate-limit key (an email or
            /// a client address), kept for the length of the window.
            login_attempts (id) {
                id -> $id,
                key -> Text,
                at -> $time,
            }
        }

        diesel::joinable!(todos -> users (owner_id));
        diesel::allow_tables_to_appear_in_same_query!(users, todos, login_attempts);
    };
}

pub mod postgres {
    define_tables!(Uuid, Timestamptz);

    diesel::define_sql_function! {
        /// Where `needle` first occurs in `haystack` (1-based; 0: nowhere).
        #[sql_name = "strpos"]
        fn substring_position(haystack: diesel::sql_types::Text, needle: diesel::sql_types::Text) -> diesel::sql_types::Integer;
    }
}

pub mod sqlite {
    define_tables!(Text, Text);

    diesel::define_sql_function! {
        /// Where `needle` first occurs in `haystack` (1-based; 0: nowhere).
        #[sql_name = "instr"]
        fn substring_position(haystack: diesel::sql_types::Text, needle: diesel::sql_types::Text) -> diesel::sql_types::Integer;
    }
}
