//! Property tests of the pure parts of the library: token verification, email
//! and password rules, todo validation, opaque cursors and search patterns.
//! Each property runs a bounded number of generated cases (proptest shrinks a
//! failure to a minimal input and records it under `proptest-regressions/`).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use todoql::auth::token::TokenKeys;
use todoql::auth::{email, guard, password};
use todoql::config::Secret;
use todoql::db::types::{DbId, DbTime};
use todoql::db::users::User;
use todoql::error::AppError;
use todoql::todos::{
    self, Cursor, CursorKey, DESCRIPTION_MAX_CHARS, Direction, OrderField, PageRequest, TITLE_MAX_CHARS,
    TodoFilter, TodoOrder,
};

const PURE_CASES: u32 = 2000;
/// Properties that sign or verify an HMAC per case are a little slower.
const TOKEN_CASES: u32 = 1000;

const SECRET: &str = "property-test-secret-property-test-secret";

fn keys() -> TokenKeys {
    TokenKeys::new(&Secret::new(SECRET), Duration::from_secs(3600))
}

fn field_of(error: &AppError) -> Option<&'static str> {
    match error {
        AppError::BadUserInput { field, .. } => Some(field),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// The characters our formats give meaning to, whitespace of every kind,
/// control characters and Unicode case-mapping oddities.
const INTERESTING: &[char] = &[
    '|',
    '%',
    '_',
    '\\',
    '@',
    '.',
    '=',
    '\0',
    '\n',
    '\t',
    ' ',
    '\r',
    '\u{7f}',
    '\u{a0}',   // no-break space (Unicode whitespace)
    '\u{3000}', // ideographic space
    '\u{2028}', // line separator
    '\u{feff}', // BOM (not whitespace)
    '\u{200b}', // zero-width space (not whitespace)
    'İ',        // lower-cases to two chars
    'ß',
    'Σ',
    'É',
    '\u{10ffff}',
    '😀',
    '\u{301}', // combining accent
];

/// Strings that stress text handling: any Unicode (BMP-heavy), the
/// characters above, and printable ASCII. One `u32` per character keeps
/// generation cheap, so properties can afford thousands of cases.
fn nasty_string(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u32>(), 0..=max_chars).prop_map(|codes| {
        codes
            .into_iter()
            .map(|n| {
                let rest = n / 10;
                match n % 10 {
                    0 | 1 => char::from_u32(rest % 0x1_0000).unwrap_or('\u{fffd}'),
                    2 | 3 => char::from_u32(rest % 0x11_0000).unwrap_or('\u{d7ff}'),
                    4..=6 => INTERESTING[rest as usize % INTERESTING.len()],
                    _ => char::from(b'!' + (rest % 94) as u8),
                }
            })
            .collect()
    })
}

fn order_strategy() -> impl Strategy<Value = TodoOrder> {
    let field =
        prop_oneof![Just(OrderField::CreatedAt), Just(OrderField::UpdatedAt), Just(OrderField::Title)];
    let direction = prop_oneof![Just(Direction::Asc), Just(Direction::Desc)];
    (field, direction).prop_map(|(field, direction)| TodoOrder { field, direction })
}

fn all_orders() -> Vec<TodoOrder> {
    let mut orders = Vec::new();
    for field in [OrderField::CreatedAt, OrderField::UpdatedAt, OrderField::Title] {
        for direction in [Direction::Asc, Direction::Desc] {
            orders.push(TodoOrder { field, direction });
        }
    }
    orders
}

/// Any instant from year 0000 to 9999 (RFC 3339's range), to the nanosecond.
fn instant() -> impl Strategy<Value = DbTime> {
    (-62_167_219_200i64..=253_402_300_799i64, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        DbTime::from(DateTime::<Utc>::from_timestamp(secs, nanos).expect("in chrono's range"))
    })
}

fn uuid_strategy() -> impl Strategy<Value = uuid::Uuid> {
    any::<u128>().prop_map(uuid::Uuid::from_u128)
}

fn todo_strategy() -> impl Strategy<Value = todos::Todo> {
    (
        uuid_strategy(),
        nasty_string(300),
        proptest::option::of(nasty_string(50)),
        any::<bool>(),
        instant(),
        instant(),
    )
        .prop_map(|(id, title, description, completed, created_at, updated_at)| todos::Todo {
            id: DbId(id),
            title,
            description,
            completed,
            created_at,
            updated_at,
        })
}

fn user_strategy() -> impl Strategy<Value = User> {
    (uuid_strategy(), nasty_string(80), any::<i32>(), instant()).prop_map(
        |(id, email, token_version, created_at)| User { id: DbId(id), email, token_version, created_at },
    )
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        nasty_string(20).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(nasty_string(8), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Claims shaped like ours: usually well-typed, sometimes with the wrong
/// types, odd values or missing parts.
fn claims_like() -> impl Strategy<Value = Value> {
    let now = Utc::now().timestamp();
    (
        prop_oneof![
            6 => uuid_strategy().prop_map(|u| json!(u.to_string())),
            1 => nasty_string(40).prop_map(Value::from),
            1 => json_value(),
        ],
        prop_oneof![6 => nasty_string(30).prop_map(Value::from), 1 => json_value()],
        prop_oneof![6 => (-100_000i64..100).prop_map(move |d| json!(now + d)), 1 => any::<i64>().prop_map(Value::from), 1 => json_value()],
        prop_oneof![
            6 => (-100i64..100_000).prop_map(move |d| json!(now + d)),
            1 => any::<i64>().prop_map(Value::from),
            1 => Just(json!(f64::MAX)),
            1 => Just(json!(i64::MAX)),
            1 => Just(json!(u64::MAX)),
            1 => json_value(),
        ],
        prop_oneof![6 => any::<i32>().prop_map(Value::from), 1 => any::<i64>().prop_map(Value::from), 1 => json_value()],
        prop_oneof![6 => Just(None), 1 => any::<i64>().prop_map(Some)],
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
    )
        .prop_map(|(sub, email, iat, exp, ver, nbf, drop_mask)| {
            let mut claims = serde_json::Map::new();
            for (bit, (name, value)) in
                [("sub", sub), ("email", email), ("iat", iat), ("exp", exp), ("ver", ver)].into_iter().enumerate()
            {
                if drop_mask & (1 << bit) == 0 {
                    claims.insert(name.to_owned(), value);
                }
            }
            if let Some(nbf) = nbf {
                claims.insert("nbf".to_owned(), json!(nbf));
            }
            Value::Object(claims)
        })
}

fn header_like() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"HS256"}"#.to_owned()),
        Just(r#"{"alg":"none","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"HS512","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"RS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"HS256","typ":"JWT","kid":"../../etc/passwd"}"#.to_owned()),
        Just(r#"{"alg":"HS256","crit":["exp"]}"#.to_owned()),
        json_value().prop_map(|v| v.to_string()),
        nasty_string(40),
    ]
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(TOKEN_CASES))]

    #[test]
    fn verify_never_panics_on_arbitrary_strings(token in prop_oneof![any::<String>(), nasty_string(400)]) {
        prop_assert!(keys().verify(&token).is_err());
    }

    #[test]
    fn verify_refuses_arbitrary_three_part_base64url(
        header in "[A-Za-z0-9_-]{0,80}",
        payload in "[A-Za-z0-9_-]{0,200}",
        signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let token = format!("{header}.{payload}.{signature}");
        prop_assert!(keys().verify(&token).is_err());
    }

    /// Well-formed JSON header and claims, base64url-encoded, with a
    /// signature not made with the key: always refused, never a panic.
    #[test]
    fn verify_refuses_unsigned_structured_tokens(
        header in header_like(),
        claims in claims_like(),
        signature in prop_oneof![
            Just(String::new()),
            "[A-Za-z0-9_-]{43}",
            proptest::collection::vec(any::<u8>(), 0..80).prop_map(b64),
            // Signed, but with another key.
            Just("other".to_owned()),
        ],
    ) {
        let signing_input = format!("{}.{}", b64(&header), b64(claims.to_string()));
        let signature = if signature == "other" {
            let key = jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another");
            let claims: Value = claims.clone();
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
                .ok()
                .and_then(|t| t.rsplit('.').next().map(str::to_owned))
                .unwrap_or_default()
        } else {
            signature
        };
        let token = format!("{signing_input}.{signature}");
        prop_assert!(keys().verify(&token).is_err());
    }

    /// Arbitrary claims signed with the right key: verify never panics, and
    /// accepts only claims that carry sub, iat and a future exp.
    #[test]
    fn verify_checks_claims_of_correctly_signed_tokens(claims in claims_like()) {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("encode");
        if let Ok(verified) = keys().verify(&token) {
            prop_assert_eq!(json!(verified.sub), claims["sub"].clone());
            prop_assert!(verified.exp >= Utc::now().timestamp() - 2, "expired token accepted: {}", claims);
        }
    }

    #[test]
    fn issued_tokens_verify_and_any_flipped_byte_is_refused(
        user in user_strategy(),
        ttl in 60u64..(400 * 24 * 3600),
        index in any::<prop::sample::Index>(),
        mask in 1u8..0x80,
    ) {
        let keys = TokenKeys::new(&Secret::new(SECRET), Duration::from_secs(ttl));
        let issued = keys.issue(&user).expect("issue");
        let claims = keys.verify(&issued.token).expect("an issued token verifies");
        prop_assert_eq!(claims.user_id(), Some(user.id));
        prop_assert_eq!(&claims.email, &user.email);
        prop_assert_eq!(claims.ver, user.token_version);
        prop_assert_eq!(claims.exp, issued.expires_at.timestamp());

        // Flip bits of one byte (staying ASCII, so it is still a &str).
        let mut bytes = issued.token.clone().into_bytes();
        let i = index.index(bytes.len());
        bytes[i] ^= mask;
        let tampered = String::from_utf8(bytes).expect("ASCII");
        prop_assert!(
            keys.verify(&tampered).is_err(),
            "token with byte {} changed from {:?} to {:?} still verifies",
            i, issued.token.as_bytes()[i] as char, tampered.as_bytes()[i] as char
        );
        // Truncated or extended: refused too.
        prop_assert!(keys.verify(&issued.token[..i]).is_err());
        let extended = format!("{}{}", issued.token, tampered.as_bytes()[i] as char);
        prop_assert!(keys.verify(&extended).is_err());
        // And a token from a server with another key is refused.
        let other = TokenKeys::new(&Secret::new(format!("{SECRET}!")), Duration::from_secs(ttl));
        prop_assert!(other.verify(&issued.token).is_err());
    }

    #[test]
    fn bearer_token_never_panics(value in proptest::option::of(prop_oneof![
        nasty_string(60),
        nasty_string(40).prop_map(|t| format!("Bearer {t}")),
        nasty_string(40).prop_map(|t| format!("bEaReR\t {t} ")),
    ])) {
        if let Ok(Some(token)) = guard::bearer_token(value.as_deref()) {
            prop_assert!(!token.is_empty());
            prop_assert_eq!(token, token.trim());
        }
    }
}

// ---------------------------------------------------------------------------
// Email and password
// ---------------------------------------------------------------------------

fn email_like() -> impl Strategy<Value = String> {
    let pad = prop::sample::select(vec!["", "", " ", "\t", "\n ", "\u{a0}", "\u{3000}", "\u{200b}"]);
    // Mostly plausible addresses, in any case, with the odd special character.
    let local = proptest::collection::vec(
        prop_oneof![
            12 => proptest::char::range('a', 'z'),
            4 => proptest::char::range('A', 'Z'),
            2 => proptest::char::range('0', '9'),
            2 => prop::sample::select(vec!['.', '-', '+', '_', '\'', '!', '~', '|', '/', '=']),
            1 => prop::sample::select(vec!['É', 'ß', 'İ', 'Σ', 'K', '\u{301}', '@', ' ', '\0', '"']),
        ],
        1..70,
    );
    let label = prop_oneof![
        8 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?",
        1 => "[A-Za-z0-9-]{0,70}",
        1 => "[a-zé]{1,5}",
    ];
    let domain = proptest::collection::vec(label, 1..4);
    let tld = prop_oneof![6 => "[a-zA-Z]{2,6}", 1 => "[A-Za-z0-9]{0,4}"];
    let plausible = (pad.clone(), local, domain, tld, pad).prop_map(|(pre, local, labels, tld, post)| {
        let local: String = local.into_iter().collect();
        format!("{pre}{local}@{}.{tld}{post}", labels.join("."))
    });
    // Near the length limits: 254 characters in all, 64 in the local part.
    let long =
        (60usize..68, 170usize..200).prop_map(|(l, d)| format!("{}@{}.com", "a".repeat(l), "b".repeat(d)));
    prop_oneof![6 => plausible, 1 => long]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(PURE_CASES))]

    #[test]
    fn normalize_never_panics_and_its_output_is_canonical(
        raw in prop_oneof![1 => any::<String>(), 1 => nasty_string(300), 3 => email_like()],
    ) {
        match email::normalize(&raw) {
            Ok(normal) => {
                prop_assert_eq!(normal.trim(), normal.as_str(), "not trimmed");
                prop_assert_eq!(normal.to_lowercase(), normal.clone(), "not lower-case");
                prop_assert!(normal.chars().count() <= email::MAX_EMAIL_CHARS);
                prop_assert!(normal.contains('@'));
                prop_assert_eq!(email::normalize(&normal).ok(), Some(normal.clone()), "not idempotent");
                // The stored form is what the user typed, modulo case and
                // surrounding whitespace.
                prop_assert_eq!(raw.trim().to_lowercase(), normal);
            }
            Err(error) => prop_assert_eq!(field_of(&error), Some("email")),
        }
    }

    #[test]
    fn password_is_valid_iff_8_to_72_bytes(
        raw in prop_oneof![nasty_string(80), "[a-z]{0,80}", proptest::collection::vec(Just('é'), 0..45)
            .prop_map(|v| v.into_iter().collect::<String>())],
    ) {
        let expected = (password::MIN_PASSWORD_BYTES..=password::MAX_PASSWORD_BYTES).contains(&raw.len());
        let result = password::validate("password", &raw);
        prop_assert_eq!(result.is_ok(), expected, "{} bytes", raw.len());
        if let Err(error) = result {
            prop_assert_eq!(field_of(&error), Some("password"));
        }
    }
}

// ---------------------------------------------------------------------------
// Todos: titles, descriptions, cursors, filters, page sizes
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(PURE_CASES))]

    #[test]
    fn titles_are_trimmed_and_1_to_200_chars(
        raw in prop_oneof![nasty_string(260), any::<String>(),
            (0usize..4, 195usize..205, 0usize..4).prop_map(|(l, n, r)|
                format!("{}{}{}", " ".repeat(l), "é".repeat(n), "\t".repeat(r)))],
    ) {
        let trimmed = raw.trim();
        // NUL is refused on both backends (PostgreSQL text cannot hold it).
        let expected = (1..=TITLE_MAX_CHARS).contains(&trimmed.chars().count()) && !raw.contains('\0');
        match todos::parse_title(&raw) {
            Ok(title) => {
                prop_assert!(expected, "accepted {:?}", raw);
                prop_assert_eq!(title.as_str(), trimmed);
                prop_assert_eq!(title.trim(), title.as_str());
                prop_assert!((1..=TITLE_MAX_CHARS).contains(&title.chars().count()));
            }
            Err(error) => {
                prop_assert!(!expected, "refused {:?}", raw);
                prop_assert_eq!(field_of(&error), Some("title"));
            }
        }
    }

    #[test]
    fn descriptions_are_kept_as_given_up_to_2000_chars(
        raw in proptest::option::of(prop_oneof![
            nasty_string(100),
            (1995usize..2005).prop_map(|n| "ü".repeat(n)),
        ]),
    ) {
        let expected =
            raw.as_ref().is_none_or(|d| d.chars().count() <= DESCRIPTION_MAX_CHARS && !d.contains('\0'));
        match todos::parse_description(raw.clone()) {
            Ok(kept) => {
                prop_assert!(expected);
                prop_assert_eq!(kept, raw);
            }
            Err(error) => {
                prop_assert!(!expected);
                prop_assert_eq!(field_of(&error), Some("description"));
            }
        }
    }

    #[test]
    fn cursor_decode_never_panics(
        encoded in prop_oneof![
            any::<String>(),
            nasty_string(200),
            "[A-Za-z0-9_=-]{0,200}",
            // Decodes to text with the cursor's own shape around random parts.
            (prop::sample::select(vec!["v1", "v0", "v2", "", "V1"]),
             prop::sample::select(vec!["ca", "cd", "ua", "ud", "ta", "td", "tx", "", "c", "cdd"]),
             prop_oneof![uuid_strategy().prop_map(|u| u.to_string()), nasty_string(40)],
             prop_oneof![instant().prop_map(DbTime::to_rfc3339), nasty_string(60),
                         Just("2026-13-01T00:00:00Z".to_owned()), Just("+275760-09-13T00:00:00Z".to_owned())],
             0usize..5)
                .prop_map(|(v, kind, id, key, parts)| {
                    let all = [v, kind, id.as_str(), key.as_str()];
                    b64(all[..parts.min(4)].join("|"))
                }),
            proptest::collection::vec(any::<u8>(), 0..120).prop_map(b64),
        ],
        order in order_strategy(),
    ) {
        match Cursor::decode(&encoded, order) {
            Ok(cursor) => {
                prop_assert_eq!(cursor.order, order);
                // What decodes re-encodes to something that decodes the same.
                prop_assert_eq!(Cursor::decode(&cursor.encode(), order).ok(), Some(cursor));
            }
            Err(error) => prop_assert_eq!(field_of(&error), Some("after")),
        }
    }

    #[test]
    fn cursors_round_trip_for_every_order_and_are_refused_under_another(todo in todo_strategy()) {
        for order in all_orders() {
            let cursor = Cursor::for_todo(order, &todo);
            let encoded = cursor.encode();
            prop_assert!(
                encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "not URL-safe: {}", encoded
            );
            if matches!(&cursor.key, CursorKey::Title(title) if title.contains('\0')) {
                // Such a title can never be stored, so its cursor is refused.
                prop_assert!(Cursor::decode(&encoded, order).is_err());
                continue;
            }
            prop_assert_eq!(Cursor::decode(&encoded, order).ok(), Some(cursor.clone()), "title {:?}", todo.title);
            match &cursor.key {
                CursorKey::Title(title) => prop_assert_eq!(title, &todo.title),
                CursorKey::Time(time) => prop_assert!(
                    *time == todo.created_at || *time == todo.updated_at
                ),
            }
            for other in all_orders().into_iter().filter(|o| *o != order) {
                let refused = Cursor::decode(&encoded, other);
                prop_assert!(refused.is_err(), "{:?} cursor accepted for {:?}", order, other);
                prop_assert_eq!(field_of(&refused.expect_err("refused")), Some("after"));
            }
        }
    }

    #[test]
    fn filter_folds_the_search_term_and_bounds_it(
        completed in proptest::option::of(any::<bool>()),
        search in proptest::option::of(prop_oneof![
            nasty_string(120),
            "[%_\\\\a-zA-Z]{0,40}",
            (95usize..105).prop_map(|n| "%".repeat(n)),
        ]),
    ) {
        let result = TodoFilter::new(completed, search.as_deref());
        let too_long =
            search.as_ref().is_some_and(|s| s.chars().count() > todos::SEARCH_MAX_CHARS || s.contains('\0'));
        let filter = match result {
            Ok(filter) => filter,
            Err(error) => {
                prop_assert!(too_long);
                prop_assert_eq!(field_of(&error), Some("search"));
                return Ok(());
            }
        };
        prop_assert!(!too_long);
        prop_assert_eq!(filter.completed, completed);
        // The term is matched as a plain substring: `%` and `_` stay literal.
        prop_assert_eq!(filter.search, search.as_deref().map(todos::fold));
    }

    #[test]
    fn page_size_is_0_to_100(first in proptest::option::of(prop_oneof![any::<i32>(), -2i32..110])) {
        let page = PageRequest::new(first, None, TodoOrder::default(), TodoFilter::default());
        match first {
            None => prop_assert_eq!(page.ok().map(|p| p.first), Some(todos::DEFAULT_PAGE_SIZE)),
            Some(n) if (0..=100).contains(&n) => prop_assert_eq!(page.ok().map(|p| p.first), Some(n as usize)),
            Some(_) => prop_assert_eq!(page.err().as_ref().and_then(field_of), Some("first")),
        }
    }
}

// ---------------------------------------------------------------------------
// The token counter that guards the parser
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(PURE_CASES))]

    /// `count_tokens` scans untrusted text byte by byte before anything else
    /// looks at it: it must never panic (strings, escapes and comments cut
    /// short included), and its early stop must not change the answer.
    #[test]
    fn count_tokens_never_panics_and_stops_exactly(
        source in prop_oneof![
            nasty_string(200),
            proptest::collection::vec(
                prop::sample::select(vec![
                    "{", "}", "\"", "\"\"\"", "\\", "\\\"\"\"", "#", "\n", "\r", "...", "..", "me", "-12.5e3",
                    "$v", ",", " ", "é", "\u{0}", "@include", "todos(first: 1)",
                ]),
                0..60,
            )
            .prop_map(|parts| parts.concat()),
        ],
        stop in 0usize..50,
    ) {
        use todoql::graphql::limits::count_tokens;
        let all = count_tokens(&source, usize::MAX);
        prop_assert!(all <= source.len());
        prop_assert_eq!(count_tokens(&source, stop), all.min(stop));
    }
}
