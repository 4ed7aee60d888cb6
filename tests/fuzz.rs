//! A bounded GraphQL fuzz test against the real server, on each backend.
//!
//! Requests are generated from a seeded RNG (`FUZZ_SEED`, printed on every
//! run, reproduces one): documents built from the real schema
//! (`schema.graphql`) with random arguments, inline or as variables (odd
//! strings, huge and negative ints, random and other users' ids, real, foreign
//! and forged cursors, wrong enum values, nulls where not allowed, unknown
//! fields and arguments, aliases, fragments, directives, deep nesting);
//! mangled documents; random JSON and raw bodies; batches; with valid, forged,
//! revoked, expired and malformed tokens; over POST and GET.
//!
//! Every response must be: not 5xx, JSON, every error carrying a string
//! `extensions.code` (and none `INTERNAL_SERVER_ERROR`: user input must never
//! reach an unexpected path), free of password hashes, SQL, driver names and
//! panic messages. The server must still answer `{ __typename }` afterwards.
//! Failures are collected (deduplicated) and reported together with the
//! request that caused them.
//!
//! `FUZZ_CASES` sets the number of HTTP requests per backend (default 3000),
//! `FUZZ_SEED` the seed, `FUZZ_VERBOSE=1` prints failing requests in full.
//!
//! Besides the random run, fixed minimal cases of what the fuzzer found are
//! kept as regression checks (`edge_cases_*`, `token_limit_…`,
//! `deep_values_…`; the last runs its own server process, since the bug it
//! checks for aborts the process).

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "api/ws.rs"]
#[allow(dead_code)]
mod ws;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use async_graphql::parser::types::{BaseType, Type, TypeKind, TypeSystemDefinition};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use helpers::{Account, Backend, JWT_SECRET, TestApp};

const DEFAULT_CASES: usize = 3000;
/// Requests in flight at once.
const CONCURRENCY: usize = 6;
/// The password `TestApp::signup` gives every account.
const PASSWORD: &str = "correct horse battery";

/// What no response may contain unless the request itself carried it.
const NEEDLES: &[&str] = &[
    "$2b$",
    "$2a$",
    "$2y$",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE FROM",
    "syntax error",
    "violates",
    "constraint",
    "diesel",
    "sqlite",
    "SQLite",
    "postgres",
    "Postgres",
    "tokio_postgres",
    "bb8",
    "timed out waiting for connection",
    "password_hash",
    "panicked",
    "RUST_BACKTRACE",
];

/// The deepest nested value sent to the in-process server. Deeper ones
/// overflow the parser's stack and abort the whole test process (a server
/// bug, asserted against a separate server process in
/// `deep_values_do_not_crash_the_server`).
const INPROCESS_VALUE_DEPTH: usize = 150;

/// Codes that mean the server failed, not the client.
const SERVER_FAULT_CODES: &[&str] = &["INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"];

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Straight to stderr: libtest would hold back `eprintln!` of a passing test.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_sqlite() {
    fuzz(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_postgres() {
    fuzz(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------
// The schema, as a generator sees it
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct ArgDef {
    name: String,
    ty: Type,
}

#[derive(Clone)]
struct FieldDef {
    name: String,
    args: Vec<ArgDef>,
    ty: Type,
}

enum Kind {
    Scalar,
    Object(Vec<FieldDef>),
    Enum(Vec<String>),
    Input(Vec<ArgDef>),
}

struct Model {
    types: HashMap<String, Kind>,
    query: String,
    mutation: String,
    subscription: String,
    type_names: Vec<String>,
}

impl Model {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
        let sdl = std::fs::read_to_string(path).expect("schema.graphql is readable");
        let document = async_graphql::parser::parse_schema(&sdl).expect("schema.graphql parses");
        let arg = |a: async_graphql::Positioned<async_graphql::parser::types::InputValueDefinition>| ArgDef {
            name: a.node.name.node.to_string(),
            ty: a.node.ty.node,
        };
        let fields =
            |fields: Vec<async_graphql::Positioned<async_graphql::parser::types::FieldDefinition>>| {
                fields
                    .into_iter()
                    .map(|f| FieldDef {
                        name: f.node.name.node.to_string(),
                        args: f.node.arguments.into_iter().map(arg).collect(),
                        ty: f.node.ty.node,
                    })
                    .collect()
            };
        let mut model = Model {
            types: HashMap::new(),
            query: "Query".into(),
            mutation: "Mutation".into(),
            subscription: "Subscription".into(),
            type_names: Vec::new(),
        };
        for definition in document.definitions {
            match definition {
                TypeSystemDefinition::Schema(schema) => {
                    if let Some(name) = &schema.node.query {
                        model.query = name.node.to_string();
                    }
                    if let Some(name) = &schema.node.mutation {
                        model.mutation = name.node.to_string();
                    }
                    if let Some(name) = &schema.node.subscription {
                        model.subscription = name.node.to_string();
                    }
                }
                TypeSystemDefinition::Type(definition) => {
                    let definition = definition.node;
                    let kind = match definition.kind {
                        TypeKind::Scalar => Kind::Scalar,
                        TypeKind::Object(object) => Kind::Object(fields(object.fields)),
                        TypeKind::Interface(interface) => Kind::Object(fields(interface.fields)),
                        TypeKind::Union(_) => Kind::Object(Vec::new()),
                        TypeKind::Enum(e) => {
                            Kind::Enum(e.values.into_iter().map(|v| v.node.value.node.to_string()).collect())
                        }
                        TypeKind::InputObject(input) => {
                            Kind::Input(input.fields.into_iter().map(arg).collect())
                        }
                    };
                    model.type_names.push(definition.name.node.to_string());
                    model.types.insert(definition.name.node.to_string(), kind);
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        assert!(
            matches!(model.types.get(&model.query), Some(Kind::Object(f)) if !f.is_empty()),
            "schema.graphql has no query fields"
        );
        model.type_names.extend(["String", "Int", "ID", "Boolean", "Float", "Nope"].map(String::from));
        model
    }

    fn named(ty: &Type) -> &str {
        match &ty.base {
            BaseType::Named(name) => name.as_str(),
            BaseType::List(inner) => Self::named(inner),
        }
    }

    fn fields(&self, type_name: &str) -> Vec<FieldDef> {
        match self.types.get(type_name) {
            Some(Kind::Object(fields)) => fields.clone(),
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// A GraphQL input value, rendered either as a literal or as variable JSON.
#[derive(Clone, Debug)]
enum V {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// `"""…"""` when rendered as a literal.
    Block(String),
    Enum(String),
    List(Vec<V>),
    Obj(Vec<(String, V)>),
    Var(String),
    /// `depth` nested lists (or objects `{a: …}`) around 1, built without
    /// recursion. As variable JSON it is cut to 150 levels (past
    /// serde_json's limit of 128), which keeps the test's own stack safe.
    Deep {
        list: bool,
        depth: usize,
    },
}

fn gql_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl V {
    fn gql(&self) -> String {
        match self {
            V::Null => "null".into(),
            V::Bool(b) => b.to_string(),
            V::Int(i) => i.to_string(),
            V::Float(f) if f.is_finite() => format!("{f:?}"),
            V::Float(_) => "1.5".into(),
            V::Str(s) => gql_string(s),
            V::Block(s) => format!("\"\"\"{}\"\"\"", s.replace("\"\"\"", "\\\"\"\"")),
            V::Enum(e) => e.clone(),
            V::List(items) => format!("[{}]", items.iter().map(V::gql).collect::<Vec<_>>().join(", ")),
            V::Obj(fields) => format!(
                "{{{}}}",
                fields.iter().map(|(k, v)| format!("{k}: {}", v.gql())).collect::<Vec<_>>().join(", ")
            ),
            V::Var(name) => format!("${name}"),
            V::Deep { list: true, depth } => format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth)),
            V::Deep { list: false, depth } => format!("{}1{}", "{a: ".repeat(*depth), "}".repeat(*depth)),
        }
    }

    fn json(&self) -> Value {
        match self {
            V::Null | V::Var(_) => Value::Null,
            V::Bool(b) => json!(b),
            V::Int(i) => {
                if let Ok(i) = i64::try_from(*i) {
                    json!(i)
                } else if let Ok(u) = u64::try_from(*i) {
                    json!(u)
                } else {
                    json!(*i as f64)
                }
            }
            V::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            V::Str(s) | V::Block(s) | V::Enum(s) => json!(s),
            V::List(items) => Value::Array(items.iter().map(V::json).collect()),
            V::Obj(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.json())).collect()),
            V::Deep { list, depth } => {
                let mut value = json!(1);
                for _ in 0..(*depth).min(150) {
                    value = if *list { json!([value]) } else { json!({ "a": value }) };
                }
                value
            }
        }
    }
}

/// Characters that give parsers, escapers and databases trouble.
const INTERESTING: &[char] = &[
    '|',
    '%',
    '_',
    '\\',
    '"',
    '\'',
    '`',
    '$',
    '{',
    '}',
    '#',
    '@',
    '.',
    '=',
    ';',
    '\0',
    '\u{1}',
    '\u{1f}',
    '\n',
    '\r',
    '\t',
    '\u{7f}',
    '\u{a0}',
    '\u{3000}',
    '\u{2028}',
    '\u{202e}',
    '\u{feff}',
    '\u{200b}',
    '\u{fffd}',
    'İ',
    'ß',
    'Σ',
    'é',
    '\u{301}',
    '😀',
    '\u{10ffff}',
];

const INJECTIONS: &[&str] = &[
    "'; DROP TABLE todos; --",
    "\" OR \"1\"=\"1",
    "1' OR '1'='1' --",
    "%' --",
    "') OR 1=1 --",
    "\\",
    "%",
    "_",
    "%%__\\\\",
    "$1",
    "?",
    "NULL",
    "null",
    "undefined",
    "${jndi:ldap://example.invalid/a}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "%00",
    "\\u0000",
    "%s%s%s%n",
    "{0}{1}",
    "\u{0}\u{0}",
    "' || pg_sleep(10) || '",
    "\u{202e}gnp.exe",
];

const WORDS: &[&str] = &["", "a", "x", "buy milk", "Write the README", "  padded  ", "ÉCOLE", "todo", "123"];

// ---------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------

/// What the generator knows about the server's state.
#[derive(Default)]
struct Pools {
    own_ids: Vec<String>,
    other_ids: Vec<String>,
    cursors: Vec<String>,
    emails: Vec<String>,
    tokens: Vec<String>,
}

struct Gen<'m> {
    rng: StdRng,
    model: &'m Model,
    pools: Pools,
    /// Per document: (name, declared type, value or absent, default literal).
    vars: Vec<(String, String, Option<Value>, Option<String>)>,
    fragments: Vec<String>,
    max_depth: usize,
}

struct Document {
    query: String,
    variables: Value,
    operation_name: Option<Value>,
}

impl<'m> Gen<'m> {
    fn new(seed: u64, model: &'m Model) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            model,
            pools: Pools::default(),
            vars: Vec::new(),
            fragments: Vec::new(),
            max_depth: 6,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn nasty(&mut self, max_chars: usize) -> String {
        let n = self.below(max_chars + 1);
        (0..n)
            .map(|_| match self.below(10) {
                0..=2 => char::from_u32(self.rng.random_range(0..0x1_0000)).unwrap_or('\u{fffd}'),
                3 => char::from_u32(self.rng.random_range(0..0x11_0000)).unwrap_or('\u{d7ff}'),
                4..=6 => self.pick(INTERESTING),
                _ => char::from(self.rng.random_range(b' '..=b'~')),
            })
            .collect()
    }

    fn long(&mut self) -> String {
        let len = self.pick(&[199, 200, 201, 254, 255, 1000, 2000, 2001, 3000, 4096]);
        let unit = self.pick(&["a", "é", "😀", "%", " ", "\u{0}", "ab|", "\\"]);
        unit.repeat(len)
    }

    fn string(&mut self, hint: &str) -> String {
        let roll = self.below(100);
        if roll < 40 {
            match hint {
                "after" => return self.cursor(),
                "email" => return self.email(),
                "password" | "currentPassword" | "newPassword" => return self.password(),
                "title" | "description" | "search" => return self.text(),
                _ => {}
            }
        }
        match roll {
            0..=54 => self.pick(WORDS).to_owned(),
            55..=64 => self.pick(INJECTIONS).to_owned(),
            65..=79 => self.nasty(64),
            80..=89 => self.long(),
            _ => match self.below(4) {
                0 => self.cursor(),
                1 => self.email(),
                2 if !self.pools.tokens.is_empty() => self.pick(&self.pools.tokens.clone()),
                _ => match self.id() {
                    V::Str(s) => s,
                    other => other.gql(),
                },
            },
        }
    }

    fn text(&mut self) -> String {
        match self.below(8) {
            0 => "   ".into(),
            1 => format!(" {} ", self.pick(WORDS)),
            2 | 3 => self.long(),
            4 => self.pick(INJECTIONS).to_owned(),
            _ => self.nasty(80),
        }
    }

    fn email(&mut self) -> String {
        match self.below(12) {
            0..=2 if !self.pools.emails.is_empty() => self.pick(&self.pools.emails.clone()),
            3 if !self.pools.emails.is_empty() => {
                format!("  {}  ", self.pick(&self.pools.emails.clone()).to_uppercase())
            }
            4..=6 => format!("fuzz{}@example.com", self.below(40)),
            7 => format!("{}@example.com", "a".repeat(self.pick(&[64, 65, 250]))),
            8 => "josé@exämple.de".into(),
            9 => self
                .pick(&[
                    "",
                    "plain",
                    "a@b",
                    "@example.com",
                    "a@@b.com",
                    "a b@c.com",
                    "a@1.2.3.4",
                    "\u{0}@x.io",
                ])
                .into(),
            _ => format!("{}@{}.com", self.nasty(10), self.nasty(6)),
        }
    }

    fn password(&mut self) -> String {
        match self.below(10) {
            0..=2 => PASSWORD.into(),
            3 => "1234567".into(),
            4 => "12345678".into(),
            5 => "a".repeat(self.pick(&[72, 73, 200])),
            6 => "é".repeat(self.pick(&[36, 37])),
            7 => format!("{PASSWORD}\u{0}x"),
            _ => self.nasty(30),
        }
    }

    fn cursor(&mut self) -> String {
        let real =
            if self.pools.cursors.is_empty() { None } else { Some(self.pick(&self.pools.cursors.clone())) };
        match (self.below(10), real) {
            (0..=3, Some(cursor)) => cursor,
            (4 | 5, Some(cursor)) => {
                // One character changed, or cut short.
                let mut chars: Vec<char> = cursor.chars().collect();
                if chars.is_empty() {
                    return cursor;
                }
                let i = self.below(chars.len());
                if self.chance(0.5) {
                    chars[i] = self.pick(&['A', 'z', '0', '-', '_', '=', '/', '+', ' ', 'é']);
                } else {
                    chars.truncate(i);
                }
                chars.into_iter().collect()
            }
            (6 | 7, _) => {
                let kind = self.pick(&["ca", "cd", "ua", "ud", "ta", "td", "xx", ""]);
                let id = match self.chance(0.7) {
                    true => uuid::Uuid::new_v4().to_string(),
                    false => self.nasty(12),
                };
                let key = match self.below(4) {
                    0 => "2026-01-01T00:00:00.000000Z".to_owned(),
                    1 => self
                        .pick(&[
                            "0000-01-01T00:00:00Z",
                            "9999-12-31T23:59:59.999999+23:59",
                            "2026-02-30T00:00:00Z",
                        ])
                        .into(),
                    _ => self.text(),
                };
                URL_SAFE_NO_PAD.encode(format!("{}|{kind}|{id}|{key}", self.pick(&["v1", "v1", "v2", ""])))
            }
            (8, _) => self.pick(&["", "=", "====", "!!!", "djE", "dj", "v1|cd|x|y"]).into(),
            _ => self.nasty(40),
        }
    }

    fn int(&mut self, hint: &str) -> i128 {
        if hint == "first" && self.chance(0.6) {
            return self.rng.random_range(-2..=102);
        }
        match self.below(6) {
            0 => self.pick(&[0, 1, -1, 20, 100, 101, -100]),
            1 => self.pick(&[
                i128::from(i32::MIN),
                i128::from(i32::MAX),
                i128::from(i32::MAX) + 1,
                i128::from(i32::MIN) - 1,
                i128::from(i64::MAX),
                i128::from(u64::MAX) + 1,
                -99_999_999_999_999_999_999_999,
            ]),
            2 => i128::from(self.rng.random::<i32>()),
            _ => self.rng.random_range(-5..200),
        }
    }

    fn id(&mut self) -> V {
        let own = self.pools.own_ids.clone();
        let other = self.pools.other_ids.clone();
        match self.below(12) {
            0..=3 if !own.is_empty() => V::Str(self.pick(&own)),
            4 | 5 if !other.is_empty() => V::Str(self.pick(&other)),
            6 => V::Str(uuid::Uuid::new_v4().to_string()),
            7 => {
                let id = if own.is_empty() { uuid::Uuid::new_v4().to_string() } else { self.pick(&own) };
                V::Str(match self.below(4) {
                    0 => id.to_uppercase(),
                    1 => format!("{{{id}}}"),
                    2 => format!("urn:uuid:{id}"),
                    _ => id.replace('-', ""),
                })
            }
            8 => V::Int(self.int("")),
            9 => V::Str(self.pick(&["", "0", "-1", "00000000-0000-0000-0000-000000000000", "null"]).into()),
            _ => V::Str(self.string("")),
        }
    }

    fn wrong_value(&mut self) -> V {
        match self.below(10) {
            0 => V::Int(7),
            1 => V::Str("x".into()),
            2 => V::Bool(true),
            3 => V::Float(self.pick(&[1.5, -0.0, 1e300, -1e-300])),
            4 => V::Enum(self.pick(&["NOPE", "ASC", "true", "null_"]).into()),
            5 => V::List(vec![V::Int(1), V::Str("a".into())]),
            6 => V::Obj(vec![("a".into(), V::Int(1))]),
            // Deep nesting: values are not bound by the selection depth limit.
            // Capped: deeper values crash the server (see `deep_values_…`).
            7 => V::Deep { list: true, depth: self.pick(&[20, 64, 100, INPROCESS_VALUE_DEPTH]) },
            8 => V::Deep { list: false, depth: self.pick(&[20, 64, 100, INPROCESS_VALUE_DEPTH]) },
            _ => V::Block(self.text()),
        }
    }

    /// A value for `ty`, sometimes wrong on purpose.
    fn value(&mut self, ty: &Type, hint: &str, allow_vars: bool) -> V {
        if self.chance(0.04) {
            return V::Null;
        }
        if self.chance(0.04) {
            return self.wrong_value();
        }
        match &ty.base {
            BaseType::List(inner) => {
                if self.chance(0.2) {
                    return self.value(inner, hint, allow_vars);
                }
                let n = self.below(4);
                V::List((0..n).map(|_| self.value(inner, hint, allow_vars)).collect())
            }
            BaseType::Named(name) => match name.as_str() {
                "String" | "DateTime" => {
                    let s = self.string(hint);
                    if self.chance(0.03) { V::Block(s) } else { V::Str(s) }
                }
                "ID" => self.id(),
                "Int" => V::Int(self.int(hint)),
                "Float" => V::Float(self.rng.random_range(-1e6..1e6)),
                "Boolean" => V::Bool(self.chance(0.5)),
                other => match self.model.types.get(other) {
                    Some(Kind::Enum(values)) => {
                        let values = values.clone();
                        match self.below(12) {
                            0 => V::Enum(self.pick(&values).to_lowercase()),
                            1 => V::Str(self.pick(&values)),
                            2 => V::Enum("NOPE".into()),
                            _ => V::Enum(self.pick(&values)),
                        }
                    }
                    Some(Kind::Input(fields)) => {
                        let fields = fields.clone();
                        let mut obj = Vec::new();
                        for field in &fields {
                            let include =
                                if field.ty.nullable { self.chance(0.6) } else { self.chance(0.93) };
                            if include {
                                let v = if allow_vars && self.chance(0.06) {
                                    V::Var(self.declare(&field.ty, &field.name))
                                } else {
                                    self.value(&field.ty, &field.name, allow_vars)
                                };
                                obj.push((field.name.clone(), v));
                            }
                        }
                        if self.chance(0.04) {
                            obj.push(("bogus".into(), V::Int(1)));
                        }
                        if self.chance(0.02) && !obj.is_empty() {
                            obj.push(obj[0].clone());
                        }
                        V::Obj(obj)
                    }
                    _ => V::Str(self.string(hint)),
                },
            },
        }
    }

    /// Declares a variable for a value of `ty` and returns its name.
    fn declare(&mut self, ty: &Type, hint: &str) -> String {
        let name = format!("v{}", self.vars.len());
        let declared = if self.chance(0.88) {
            ty.to_string()
        } else {
            self.pick(&[
                "String",
                "String!",
                "Int",
                "ID!",
                "[ID!]",
                "Boolean!",
                "TodoFilter",
                "Bogus",
                "CreateTodoInput!",
                "TodoOrderField",
                "[[Int]]",
            ])
            .to_owned()
        };
        let value = if self.chance(0.92) { Some(self.value(ty, hint, false).json()) } else { None };
        let default = if self.chance(0.03) { Some(self.value(ty, hint, false).gql()) } else { None };
        self.vars.push((name.clone(), declared, value, default));
        name
    }

    fn argument(&mut self, arg: &ArgDef) -> String {
        let value = if self.chance(0.3) {
            format!("${}", self.declare(&arg.ty, &arg.name))
        } else {
            self.value(&arg.ty, &arg.name, true).gql()
        };
        format!("{}: {value}", arg.name)
    }

    fn field(&mut self, fields: &[FieldDef], depth: usize) -> String {
        let field = self.pick(fields);
        let alias = if self.chance(0.1) { format!("a{}: ", self.below(40)) } else { String::new() };
        let mut args = Vec::new();
        for arg in &field.args {
            let include = if arg.ty.nullable { self.chance(0.5) } else { self.chance(0.95) };
            if include {
                args.push(self.argument(arg));
            }
        }
        if self.chance(0.02) {
            args.push("bogus: 1".into());
        }
        if self.chance(0.01) && !args.is_empty() {
            args.push(args[0].clone());
        }
        let args = if args.is_empty() { String::new() } else { format!("({})", args.join(", ")) };
        let directive = if self.chance(0.05) { self.directive() } else { String::new() };
        let named = Model::named(&field.ty).to_owned();
        let sub = match self.model.types.get(&named) {
            Some(Kind::Object(_)) if self.chance(0.03) => String::new(),
            Some(Kind::Object(_)) if depth >= self.max_depth => "{ __typename }".into(),
            Some(Kind::Object(_)) => self.selection(&named, depth + 1),
            _ if self.chance(0.02) => "{ id }".into(),
            _ => String::new(),
        };
        format!("{alias}{}{args}{directive} {sub}", field.name)
    }

    fn directive(&mut self) -> String {
        match self.below(7) {
            0 => " @include(if: true)".into(),
            1 => " @skip(if: false)".into(),
            2 => {
                let var = self.declare(&Type::new("Boolean!").expect("type"), "");
                format!(" @include(if: ${var})")
            }
            3 => " @skip(if: null)".into(),
            4 => " @deprecated".into(),
            5 => " @unknown(x: 1)".into(),
            _ => " @include".into(),
        }
    }

    fn selection(&mut self, type_name: &str, depth: usize) -> String {
        let fields = self.model.fields(type_name);
        if fields.is_empty() || depth > self.max_depth + 2 {
            return "{ __typename }".into();
        }
        let n = if self.chance(0.1) { self.rng.random_range(4..10) } else { self.rng.random_range(1..4) };
        let mut parts: Vec<String> = (0..n).map(|_| self.field(&fields, depth)).collect();
        if self.chance(0.1) {
            parts.push("__typename".into());
        }
        if self.chance(0.03) {
            parts.push("bogusField".into());
        }
        if self.chance(0.05) {
            let on = if self.chance(0.8) {
                type_name.to_owned()
            } else {
                self.pick(&self.model.type_names.clone())
            };
            let inner = self.selection(type_name, depth + 1);
            parts.push(format!("... on {on} {inner}"));
        }
        if self.chance(0.03) {
            let name = format!("F{}", self.fragments.len());
            let inner = self.selection(type_name, depth + 1);
            let on = if self.chance(0.9) {
                type_name.to_owned()
            } else {
                self.pick(&self.model.type_names.clone())
            };
            self.fragments.push(format!("fragment {name} on {on} {inner}"));
            parts.push(format!("...{name}"));
        }
        if self.chance(0.005) {
            parts.push("...Missing".into());
        }
        if depth == 1 && type_name == self.model.query && self.chance(0.02) {
            parts.push(match self.below(3) {
                0 => "__schema { queryType { name } types { name kind } }".into(),
                1 => format!("__type(name: {}) {{ name fields {{ name }} }}", gql_string(&self.string(""))),
                _ => "__type(name: \"Todo\") { name fields { name args { name } type { name ofType { name } } } }".into(),
            });
        }
        let separator = self.pick(&[" ", ", ", "\n  ", ",\t", " , "]);
        format!("{{ {} }}", parts.join(separator))
    }

    fn document(&mut self) -> Document {
        self.vars.clear();
        self.fragments.clear();
        let roll = self.below(100);
        let (keyword, root) = match roll {
            0..=52 => ("query", self.model.query.clone()),
            53..=94 => ("mutation", self.model.mutation.clone()),
            95..=96 => ("subscription", self.model.subscription.clone()),
            _ => ("", self.model.query.clone()),
        };
        let body = match self.below(100) {
            // Many aliases of one field.
            0..=3 => {
                let fields = self.model.fields(&root);
                let field = self.field(&fields, 1);
                let n = self.pick(&[10, 31, 60, 200]);
                format!("{{ {} }}", (0..n).map(|i| format!("x{i}: {field}")).collect::<Vec<_>>().join(" "))
            }
            // Deeply nested inline fragments (parser recursion).
            4..=5 => {
                let n = self.pick(&[10, 63, 64, 65, 200, 2000]);
                let inner = self.selection(&root, 1);
                format!("{}{inner}{}", format!("{{ ... on {root} ").repeat(n), " }".repeat(n))
            }
            // Deeply nested fields (depth limit).
            6..=7 => {
                let n = self.pick(&[11, 12, 13, 40, 100]);
                format!("{{ {}id{} }}", "todos { nodes { ".repeat(n / 2), " } }".repeat(n / 2))
            }
            _ => self.selection(&root, 1),
        };
        let name = if self.chance(0.3) { Some(format!("Op{}", self.below(3))) } else { None };
        let definitions: Vec<String> = self
            .vars
            .clone()
            .into_iter()
            .map(|(name, ty, _, default)| match default {
                Some(default) => format!("${name}: {ty} = {default}"),
                None => format!("${name}: {ty}"),
            })
            .collect();
        let definitions =
            if definitions.is_empty() { String::new() } else { format!("({})", definitions.join(", ")) };
        let keyword =
            if keyword.is_empty() && (name.is_some() || !definitions.is_empty()) { "query" } else { keyword };
        let op_directive = if self.chance(0.02) { " @skip(if: true)" } else { "" };
        let mut query = if keyword.is_empty() {
            body
        } else {
            format!("{keyword} {}{definitions}{op_directive} {body}", name.as_deref().unwrap_or(""))
        };
        for fragment in &self.fragments {
            query.push('\n');
            query.push_str(fragment);
        }
        let mut other_operation = None;
        if self.chance(0.05) {
            let other = self.pick(&["Other", "Op0", "Op1"]);
            query.push_str(&format!("\nquery {other} {{ __typename }}"));
            other_operation = Some(other);
        }
        let operation_name = match (self.below(20), &name, other_operation) {
            (0, _, _) => Some(json!(5)),
            (1, _, _) => Some(json!("Nope")),
            (2..=3, _, Some(other)) => Some(json!(other)),
            (_, Some(name), _) if self.chance(0.8) => Some(json!(name)),
            _ => None,
        };
        let mut variables = serde_json::Map::new();
        for (name, _, value, _) in &self.vars {
            if let Some(value) = value {
                variables.insert(name.clone(), value.clone());
            }
        }
        if self.chance(0.04) {
            variables.insert("extra".into(), json!({"a": [1, "b", null]}));
        }
        let variables = match self.below(40) {
            0 => json!("not an object"),
            1 => json!([1, 2]),
            2 => json!(3),
            3 => Value::Null,
            _ => Value::Object(variables),
        };
        Document { query, variables, operation_name }
    }

    /// A document with a few random edits: truncation, deletion, insertion of
    /// syntax characters, duplication, reversal.
    fn mangle(&mut self, text: &str) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..=self.below(3) {
            let len = chars.len();
            if len == 0 {
                break;
            }
            let i = self.below(len);
            let j = (i + self.below(20)).min(len);
            match self.below(7) {
                0 => chars.truncate(i),
                1 => {
                    chars.drain(i..j);
                }
                2 => {
                    let c = self.pick(&[
                        '{', '}', '(', ')', '[', ']', ':', '$', '@', '!', '.', '=', '"', '\\', '#', ',', '|',
                        '&',
                    ]);
                    chars.insert(i, c);
                }
                3 => chars[i] = self.pick(INTERESTING),
                4 => {
                    let slice: Vec<char> = chars[i..j].to_vec();
                    chars.splice(i..i, slice);
                }
                5 => {
                    let s = self.pick(&[
                        "\r", "#", "\"", "\u{0}", "\"\"\"", "...", "\u{feff}", "\\u", "\\u{", "-", "1e99999",
                        "$",
                    ]);
                    chars.splice(i..i, s.chars());
                }
                _ => chars[i..j].reverse(),
            }
        }
        chars.into_iter().collect()
    }

    fn random_json(&mut self, depth: usize) -> Value {
        let top = if depth == 0 { 9 } else { 7 };
        match self.below(top) {
            0 => Value::Null,
            1 => json!(self.chance(0.5)),
            2 => json!(self.int("") as f64),
            3 => json!(self.string("")),
            4 => json!(self.rng.random::<i64>()),
            5 | 6 if depth < 4 => {
                let n = self.below(5);
                Value::Array((0..n).map(|_| self.random_json(depth + 1)).collect())
            }
            _ if depth < 4 => {
                let n = self.below(5);
                let mut map = serde_json::Map::new();
                for _ in 0..n {
                    let key =
                        self.pick(&["query", "variables", "operationName", "extensions", "id", "", "a"]);
                    let value = self.random_json(depth + 1);
                    map.insert(key.to_owned(), value);
                }
                Value::Object(map)
            }
            _ => Value::Null,
        }
    }

    /// One request object of a batch (or of a single request).
    fn request_object(&mut self) -> Value {
        match self.below(10) {
            0 => self.random_json(0),
            1 => {
                let document = self.document();
                json!({"query": self.mangle(&document.query)})
            }
            _ => {
                let document = self.document();
                let mut object = serde_json::Map::new();
                object.insert("query".into(), json!(document.query));
                if self.chance(0.9) {
                    object.insert("variables".into(), document.variables);
                }
                if let Some(name) = document.operation_name {
                    object.insert("operationName".into(), name);
                }
                if self.chance(0.03) {
                    object.insert("extensions".into(), self.random_json(1));
                }
                if self.chance(0.02) {
                    object.insert("query".into(), self.random_json(1));
                }
                Value::Object(object)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

struct Req {
    get: bool,
    body: Vec<u8>,
    params: Vec<(String, String)>,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    auth: Option<Vec<u8>>,
    ops: usize,
    kind: &'static str,
}

impl Req {
    /// Everything the request carried, for telling echoes from leaks.
    fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.body).into_owned();
        if let Ok(value) = serde_json::from_slice::<Value>(&self.body) {
            collect_strings(&value, &mut text);
        }
        for (k, v) in &self.params {
            text.push_str(k);
            text.push('\n');
            text.push_str(v);
        }
        if let Some(auth) = &self.auth {
            text.push_str(&String::from_utf8_lossy(auth));
        }
        text
    }

    fn describe(&self) -> String {
        let body = if self.get {
            format!("GET /graphql?{}", serde_json::to_string(&self.params).unwrap_or_default())
        } else {
            format!("POST /graphql body={}", truncate(&String::from_utf8_lossy(&self.body), 1500))
        };
        let auth = self.auth.as_ref().map(|a| truncate(&String::from_utf8_lossy(a), 120));
        format!(
            "[{}] content-type={:?} accept={:?} authorization={:?}\n  {}",
            self.kind, self.content_type, self.accept, auth, body
        )
    }
}

fn collect_strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push('\n');
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push('\n');
                out.push_str(k);
                collect_strings(v, out);
            }
        }
        _ => {}
    }
}

/// Quotes `text`, cut to `max` characters unless `FUZZ_VERBOSE` is set.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max || std::env::var_os("FUZZ_VERBOSE").is_some() {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(max).collect();
        format!("{head:?}… ({} chars)", text.chars().count())
    }
}

/// Authorization header values: mostly valid tokens, then every kind of bad one.
struct Credentials {
    a: Account,
    b: Account,
    forged: Vec<String>,
}

fn sign(claims: &Value, key: &[u8], alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .expect("sign")
}

impl Credentials {
    fn new(a: Account, b: Account) -> Self {
        let now = chrono::Utc::now().timestamp();
        let key = JWT_SECRET.as_bytes();
        let hs256 = jsonwebtoken::Algorithm::HS256;
        let claims = |sub: &str, ver: i64, iat: i64, exp: i64| json!({"sub": sub, "email": "x@example.com", "iat": iat, "exp": exp, "ver": ver});
        let mut tampered = a.token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims(&a.id, 0, now, now + 600).to_string())
        );
        let forged = vec![
            String::from_utf8(tampered).expect("ASCII"),
            none,
            // Right key, unknown user / revoked version / expired / not yet valid.
            sign(&claims(&uuid::Uuid::new_v4().to_string(), 0, now, now + 600), key, hs256),
            sign(&claims(&a.id, 999, now, now + 600), key, hs256),
            sign(&claims(&a.id, -1, now, now + 600), key, hs256),
            sign(&claims(&a.id, 0, now - 7200, now - 3600), key, hs256),
            sign(
                &json!({"sub": a.id, "email": "x", "iat": now, "exp": now + 600, "nbf": now + 300, "ver": 0}),
                key,
                hs256,
            ),
            sign(&claims("' OR 1=1 --", 0, now, now + 600), key, hs256),
            sign(&claims("", 0, now, now + 600), key, hs256),
            sign(&json!({"sub": a.id, "iat": now, "exp": i64::MAX, "ver": 0, "email": "x"}), key, hs256),
            sign(
                &json!({"sub": a.id, "iat": "now", "exp": 1e300, "ver": 2147483648i64, "email": null}),
                key,
                hs256,
            ),
            sign(&json!({"sub": 12, "iat": now, "exp": now + 600, "ver": 0, "email": "x"}), key, hs256),
            // Wrong key, other algorithm.
            sign(&claims(&a.id, 0, now, now + 600), b"another-secret-another-secret-!!!", hs256),
            sign(&claims(&a.id, 0, now, now + 600), key, jsonwebtoken::Algorithm::HS512),
            "abc.def.ghi".into(),
            "..".into(),
            "a".repeat(8000),
        ];
        Self { a, b, forged }
    }

    fn header(&self, g: &mut Gen<'_>) -> Option<Vec<u8>> {
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        match g.below(100) {
            0..=44 => Some(bearer(&self.a.token)),
            45..=54 => Some(bearer(&self.b.token)),
            55..=69 => None,
            70..=84 => Some(bearer(&g.pick(&self.forged))),
            85 => Some(b"Bearer ".to_vec()),
            86 => Some(b"Bearer".to_vec()),
            87 => Some(format!("bearer   {} ", self.a.token).into_bytes()),
            88 => Some(format!("Basic {}", self.a.token).into_bytes()),
            89 => Some(self.a.token.clone().into_bytes()),
            90 => Some(b"Bearer \xff\xfe\x80".to_vec()),
            91 => Some(format!("Bearer {} {}", self.a.token, self.b.token).into_bytes()),
            92 => Some(b"".to_vec()),
            _ => Some(bearer(&g.nasty(30).replace(|c: char| c.is_control(), ""))),
        }
    }
}

const ACCEPTS: &[Option<&str>] = &[
    None,
    None,
    Some("application/json"),
    Some("application/graphql-response+json"),
    Some("application/graphql-response+json, application/json;q=0.9"),
    Some("application/graphql-response+json;q=0, application/json"),
    Some("*/*"),
    Some("text/html"),
    Some("image/png"),
    Some(";;;,,q=x"),
];

fn next_request(g: &mut Gen<'_>, credentials: &Credentials) -> Req {
    let auth = credentials.header(g);
    let accept = g.pick(ACCEPTS);
    let mut content_type = Some("application/json");
    if g.chance(0.04) {
        content_type = g.pick(&[
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/json; charset=utf-8"),
            Some("APPLICATION/JSON"),
            Some("application/graphql-response+json"),
            Some("application/graphql"),
            Some("application/json; charset=latin1"),
        ]);
    }
    let mut req = Req {
        get: false,
        body: Vec::new(),
        params: Vec::new(),
        content_type,
        accept,
        auth,
        ops: 1,
        kind: "",
    };
    match g.below(100) {
        0..=54 => {
            req.kind = "document";
            req.body = serde_json::to_vec(&g.request_object()).expect("json");
        }
        55..=61 => {
            req.kind = "get";
            req.get = true;
            let mut document = g.document();
            // Keep URLs to a size clients can send (a few KB).
            while document.query.len() > 3000 {
                document = g.document();
            }
            req.params.push(("query".into(), document.query));
            if g.chance(0.7) {
                req.params.push(("variables".into(), document.variables.to_string()));
            }
            if let Some(Value::String(name)) = document.operation_name {
                req.params.push(("operationName".into(), name));
            }
            if g.chance(0.05) {
                req.params.push(("variables".into(), "{not json".into()));
            }
        }
        62..=71 => {
            req.kind = "mangled";
            let query = match g.below(6) {
                0 => g.nasty(200),
                1 => {
                    let words = [
                        "query", "mutation", "fragment", "on", "{", "}", "(", ")", "$", ":", "...", "@",
                        "me", "todos", "!", "[", "]",
                    ];
                    (0..g.below(40)).map(|_| g.pick(&words)).collect::<Vec<_>>().join(" ")
                }
                _ => {
                    let document = g.document();
                    g.mangle(&document.query)
                }
            };
            req.body = serde_json::to_vec(&json!({"query": query})).expect("json");
        }
        72..=79 => {
            req.kind = "random-json";
            req.body = serde_json::to_vec(&g.random_json(0)).expect("json");
        }
        80..=85 => {
            req.kind = "raw";
            req.body = raw_body(g);
        }
        _ => {
            req.kind = "batch";
            let n = g.pick(&[0, 1, 2, 3, 5, 10, 11, 12]);
            let items: Vec<Value> = (0..n).map(|_| g.request_object()).collect();
            req.ops = n;
            req.body = serde_json::to_vec(&items).expect("json");
        }
    }
    req
}

fn raw_body(g: &mut Gen<'_>) -> Vec<u8> {
    let valid = br#"{"query":"{ me { id email } todos(first: 5) { totalCount } }"}"#.to_vec();
    match g.below(16) {
        0 => (0..g.below(300)).map(|_| g.rng.random::<u8>()).collect(),
        1 => {
            let cut = g.below(valid.len());
            valid[..cut].to_vec()
        }
        2 => b"{\"query\":\"{ me { id } }\xff\xfe\"}".to_vec(),
        3 => br#"{"query":"{ todos(after: \"\ud800\") { totalCount } }"}"#.to_vec(),
        4 => {
            let n = g.pick(&[127, 128, 129, 10_000]);
            format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
        }
        5 => {
            let n = g.pick(&[100, 127, 129, 5000]);
            format!(r#"{{"query":"query($v: TodoFilter) {{ __typename }}","variables":{{"v":{}1{}}}}}"#, r#"{"a":"#.repeat(n), "}".repeat(n))
                .into_bytes()
        }
        6 => [b"\xef\xbb\xbf".as_slice(), &valid].concat(),
        7 => Vec::new(),
        8 => g.pick(&["null", "[]", "{}", "[{}]", "1", "\"s\"", "true", "[null]", "[[]]", "{\"query\":null}"]).as_bytes().to_vec(),
        9 => br#"{"query":"query($n: Int) { todos(first: $n) { totalCount } }","variables":{"n":1e400}}"#.to_vec(),
        10 => br#"{"query":"{ __typename }","query":"{ me { id } }"}"#.to_vec(),
        11 => br#"{"query":"{ __typename }","variables":{"a":-0,"b":1.0e-400,"c":18446744073709551616}}"#.to_vec(),
        12 => br#"{"query": "{ __typename }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc"}}}"#.to_vec(),
        13 => br#"{"query":"{ __typename }"} trailing"#.to_vec(),
        14 => format!(r#"{{"query":"{{ __typename }}","operationName":{}}}"#, gql_string(&g.nasty(20))).into_bytes(),
        _ => br#"{"query":"\u0000{ __typename }"}"#.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// Checking responses
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    requests: usize,
    operations: usize,
    statuses: BTreeMap<u16, usize>,
    codes: BTreeMap<String, usize>,
    /// Needles some earlier request carried: data may echo them back.
    sent_needles: BTreeSet<&'static str>,
    failures: BTreeMap<String, (usize, String)>,
}

impl Stats {
    /// Remembers the needles a request carried: stored data may echo them.
    fn taint(&mut self, req_text: &str) {
        for needle in NEEDLES {
            if req_text.contains(needle) {
                self.sent_needles.insert(needle);
            }
        }
    }

    fn fail(&mut self, what: String, req: &Req, status: u16, body: &str) {
        let key = format!("{what} [{}]", req.kind);
        let entry = self.failures.entry(key).or_insert_with(|| {
            (
                0,
                format!(
                    "{what}\n  request: {}\n  response: HTTP {status} {}",
                    req.describe(),
                    truncate(body, 1500)
                ),
            )
        });
        entry.0 += 1;
    }
}

/// An error's path with the fuzzer's aliases (`a12`, `x3`) and list indexes
/// blanked, so that one cause is reported once.
fn path_shape(path: &Value) -> String {
    let Some(segments) = path.as_array() else { return "the request".into() };
    let shape: Vec<String> = segments
        .iter()
        .map(|segment| match segment.as_str() {
            Some(name)
                if name.len() > 1
                    && name.starts_with(['a', 'x'])
                    && name[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                "<alias>".to_owned()
            }
            Some(name) => name.to_owned(),
            None => "<index>".to_owned(),
        })
        .collect();
    shape.join(".")
}

/// An id, token or cursor: opaque text that may contain anything by chance.
fn opaque(text: &str) -> bool {
    text.len() >= 16 && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn data_strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| data_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| data_strings(v, out)),
        _ => {}
    }
}

fn check_graphql_response(
    stats: &mut Stats,
    req: &Req,
    req_text: &str,
    status: u16,
    body: &str,
    response: &Value,
) {
    let Some(object) = response.as_object() else {
        stats.fail("a response that is not a JSON object".into(), req, status, body);
        return;
    };
    if !object.contains_key("data") && !object.contains_key("errors") {
        stats.fail("a response with neither data nor errors".into(), req, status, body);
    }
    if let Some(errors) = object.get("errors") {
        match errors.as_array() {
            None => stats.fail("errors is not a list".into(), req, status, body),
            Some(errors) if errors.is_empty() => stats.fail("an empty errors list".into(), req, status, body),
            Some(errors) => {
                for error in errors {
                    if !error["message"].is_string() {
                        stats.fail("an error without a message".into(), req, status, body);
                    }
                    match error["extensions"]["code"].as_str() {
                        None => stats.fail(
                            format!(
                                "an error without extensions.code: {}",
                                truncate(&error.to_string(), 200)
                            ),
                            req,
                            status,
                            body,
                        ),
                        Some(code) => {
                            *stats.codes.entry(code.to_owned()).or_default() += 1;
                            if SERVER_FAULT_CODES.contains(&code) {
                                let message = error["message"].as_str().unwrap_or("");
                                stats.fail(
                                    format!(
                                        "{code} ({message}) from a client's input, at {}",
                                        path_shape(&error["path"])
                                    ),
                                    req,
                                    status,
                                    body,
                                );
                            }
                        }
                    }
                }
            }
        }
        // Error messages may quote the request, nothing else.
        let text = errors.to_string();
        for needle in NEEDLES {
            if text.contains(needle) && !req_text.contains(needle) {
                stats.fail(format!("an error message leaks {needle:?}"), req, status, body);
            }
        }
    }
    if let Some(extensions) = object.get("extensions") {
        let text = extensions.to_string();
        for needle in NEEDLES {
            if text.contains(needle) && !req_text.contains(needle) {
                stats.fail(format!("response extensions leak {needle:?}"), req, status, body);
            }
        }
    }
    if let Some(data) = object.get("data") {
        let mut strings = Vec::new();
        data_strings(data, &mut strings);
        for s in strings.into_iter().filter(|s| !opaque(s)) {
            for needle in NEEDLES {
                if s.contains(needle) && !req_text.contains(needle) && !stats.sent_needles.contains(needle) {
                    stats.fail(format!("data leaks {needle:?}"), req, status, body);
                }
            }
        }
    }
}

fn check(stats: &mut Stats, req: &Req, outcome: Result<(u16, String), String>) {
    stats.requests += 1;
    stats.operations += req.ops;
    let req_text = req.text();
    let (status, body) = match outcome {
        Ok(answer) => answer,
        Err(error) => {
            stats.fail(format!("no HTTP response ({error})"), req, 0, "");
            return;
        }
    };
    *stats.statuses.entry(status).or_default() += 1;
    if status >= 500 {
        stats.fail(format!("HTTP {status}"), req, status, &body);
    }
    let response: Value = match serde_json::from_str(&body) {
        Ok(value) => value,
        Err(_) => {
            stats.fail(format!("a body that is not JSON (HTTP {status})"), req, status, &body);
            return;
        }
    };
    match &response {
        Value::Array(items) => {
            for item in items {
                check_graphql_response(stats, req, &req_text, status, &body, item);
            }
        }
        single => check_graphql_response(stats, req, &req_text, status, &body, single),
    }
    stats.taint(&req_text);
}

async fn send(client: &reqwest::Client, url: &str, req: &Req) -> Result<(u16, String), String> {
    let mut builder =
        if req.get { client.get(url).query(&req.params) } else { client.post(url).body(req.body.clone()) };
    if let Some(content_type) = req.content_type {
        if !req.get {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
    }
    if let Some(accept) = req.accept {
        builder = builder.header(ACCEPT, accept);
    }
    if let Some(auth) = &req.auth {
        if let Ok(value) = HeaderValue::from_bytes(auth) {
            builder = builder.header(AUTHORIZATION, value);
        }
    }
    let response = builder.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| format!("reading the body: {e:?}"))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Re-reads the accounts' todos (ids, and cursors under every order) and
/// makes sure each account has a few.
async fn refresh_pools(app: &TestApp, g: &mut Gen<'_>, credentials: &Credentials) {
    let orders = [
        "",
        ", orderBy: {field: TITLE, direction: ASC}",
        ", orderBy: {field: TITLE, direction: DESC}",
        ", orderBy: {field: UPDATED_AT, direction: ASC}",
        ", orderBy: {field: CREATED_AT, direction: ASC}",
    ];
    let mut own = Vec::new();
    let mut cursors = Vec::new();
    for account in [&credentials.a, &credentials.b] {
        let count = app.gql(Some(&account.token), "{ todos(first: 0) { totalCount } }", json!({})).await.ok()
            ["todos"]["totalCount"]
            .as_i64()
            .unwrap_or(0);
        for i in count..3 {
            app.create_todo(
                &account.token,
                json!({"title": format!("seed {i} | ü %_"), "completed": i == 0}),
            )
            .await;
        }
    }
    for order in orders {
        let query = format!("{{ todos(first: 10{order}) {{ edges {{ cursor node {{ id }} }} }} }}");
        let data = app.gql(Some(&credentials.a.token), &query, json!({})).await.ok();
        for edge in data["todos"]["edges"].as_array().into_iter().flatten() {
            cursors.extend(edge["cursor"].as_str().map(String::from));
            own.extend(edge["node"]["id"].as_str().map(String::from));
        }
    }
    let data =
        app.gql(Some(&credentials.b.token), "{ todos(first: 10) { nodes { id } } }", json!({})).await.ok();
    let other = data["todos"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str().map(String::from));
    own.sort();
    own.dedup();
    g.pools.own_ids = own;
    g.pools.other_ids = other.collect();
    g.pools.cursors = cursors;
    g.pools.emails = vec![credentials.a.email.clone(), credentials.b.email.clone()];
    g.pools.tokens = vec![credentials.a.token.clone(), credentials.b.token.clone()];
}

/// Replaces an account whose token a fuzzed request revoked (password
/// changed, logged out everywhere, account deleted).
async fn renew_if_revoked(app: &TestApp, account: &mut Account, serial: &mut usize) -> bool {
    let answer = app.gql(Some(&account.token), "{ me { id } }", json!({})).await;
    if answer.code() != Some("UNAUTHENTICATED") {
        return false;
    }
    *serial += 1;
    *account = app.signup(&format!("fuzz-account-{serial}@example.com")).await;
    true
}

async fn fuzz(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let cases = env_number("FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    let seed = env_number("FUZZ_SEED").unwrap_or_else(rand::random);
    let tag = format!("{backend:?}").to_lowercase();
    let model = Model::load();
    let mut g = Gen::new(seed ^ (backend as u64), &model);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let url = app.url("/graphql");
    let a = app.signup("fuzz-a@example.com").await;
    let b = app.signup("fuzz-b@example.com").await;
    let mut credentials = Credentials::new(a, b);
    refresh_pools(&app, &mut g, &credentials).await;

    let started = Instant::now();
    let mut stats = Stats::default();
    let mut serial = 0;
    let mut chunk_index = 0;
    while stats.requests < cases {
        let n = CONCURRENCY.min(cases - stats.requests);
        let requests: Vec<Req> = (0..n).map(|_| next_request(&mut g, &credentials)).collect();
        let outcomes =
            futures_util::future::join_all(requests.iter().map(|req| send(&client, &url, req))).await;
        // Requests in flight together may see each other's writes: data
        // may echo what any of them carried.
        for req in &requests {
            stats.taint(&req.text());
        }
        let mut revoking = false;
        for (req, outcome) in requests.iter().zip(outcomes) {
            let text = req.text();
            revoking |=
                ["changePassword", "logoutEverywhere", "deleteAccount"].iter().any(|m| text.contains(m));
            check(&mut stats, req, outcome);
        }
        chunk_index += 1;
        let mut renewed = false;
        if revoking {
            renewed |= renew_if_revoked(&app, &mut credentials.a, &mut serial).await;
            renewed |= renew_if_revoked(&app, &mut credentials.b, &mut serial).await;
            if renewed {
                credentials = Credentials::new(credentials.a, credentials.b);
            }
        }
        if renewed || chunk_index % 25 == 0 {
            refresh_pools(&app, &mut g, &credentials).await;
        }
    }
    let elapsed = started.elapsed();

    // Still standing, and still answering.
    let still = send(
        &client,
        &url,
        &Req {
            get: false,
            body: br#"{"query":"{ __typename }"}"#.to_vec(),
            params: Vec::new(),
            content_type: Some("application/json"),
            accept: None,
            auth: None,
            ops: 1,
            kind: "final",
        },
    )
    .await;
    let alive = matches!(&still, Ok((200, body))
        if serde_json::from_str::<Value>(body).is_ok_and(|v| v["data"]["__typename"] == "Query"));

    say(&format!(
        "fuzz[{tag}]: {} requests, {} operations in {:.1?} (seed {seed}, FUZZ_SEED={seed} to replay); \
         statuses {:?}; {} distinct error codes {:?}; {} distinct failures",
        stats.requests,
        stats.operations,
        elapsed,
        stats.statuses,
        stats.codes.len(),
        stats.codes,
        stats.failures.len(),
    ));
    let mut report = String::new();
    for (count, detail) in stats.failures.values().take(20) {
        report.push_str(&format!("\n--- {count}× {detail}\n"));
    }
    assert!(alive, "fuzz[{tag}]: the server no longer answers {{ __typename }}: {still:?}{report}");
    assert!(
        stats.failures.is_empty(),
        "fuzz[{tag}] (seed {seed}): {} kinds of bad responses:{report}",
        stats.failures.len()
    );
}

// ---------------------------------------------------------------------------
// Fixed cases: minimal reproductions of what the fuzzer found, kept as
// regression checks on both backends. Each must get a client error code.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_sqlite() {
    edge_cases(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_postgres() {
    edge_cases(Backend::Postgres).await;
}

fn json_req(body: Value, auth: Option<&str>, kind: &'static str) -> Req {
    Req {
        get: false,
        body: serde_json::to_vec(&body).expect("json"),
        params: Vec::new(),
        content_type: Some("application/json"),
        accept: None,
        auth: auth.map(|token| format!("Bearer {token}").into_bytes()),
        ops: 1,
        kind,
    }
}

async fn edge_cases(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let tag = format!("{backend:?}").to_lowercase();
    let account = app.signup("edge@example.com").await;
    let todo = app.create_todo(&account.token, json!({"title": "edge"})).await;
    let id = todo["id"].as_str().expect("id").to_owned();
    let nul_cursor = URL_SAFE_NO_PAD.encode(format!("v1|ta|{id}|a\u{0}b"));
    let token = Some(account.token.as_str());
    let cases: Vec<Req> = vec![
        // A list where an input object is expected: async-graphql's
        // validation lets it through, coercion then fails with a message
        // the error mapping does not recognise.
        json_req(json!({"query": "{ todos(filter: []) { totalCount } }"}), None, "list for an input object"),
        json_req(
            json!({"query": "{ todos(orderBy: [{field: TITLE, direction: ASC}]) { totalCount } }"}),
            token,
            "list for an input object",
        ),
        // A required variable that is declared but not sent.
        json_req(
            json!({"query": "query($id: ID!) { todo(id: $id) { id } }"}),
            None,
            "missing required variable",
        ),
        json_req(
            json!({"query": "mutation($id: ID!) { deleteTodo(id: $id) }", "variables": {}}),
            token,
            "missing required variable",
        ),
        // A nullable variable, not sent, where a non-null value is needed.
        json_req(
            json!({"query": "query($id: ID) { todo(id: $id) { id } }"}),
            token,
            "nullable variable in a non-null position",
        ),
        // Subscriptions are served over WebSocket only; over HTTP they are
        // the client's mistake.
        json_req(json!({"query": "subscription { todoEvents { kind } }"}), token, "subscription over HTTP"),
        // U+0000 in text: valid Unicode, accepted by validation; PostgreSQL
        // text cannot hold it.
        json_req(
            json!({"query": "mutation($t: String!) { createTodo(input: {title: $t}) { id } }", "variables": {"t": "a\u{0}b"}}),
            token,
            "NUL in a title",
        ),
        json_req(
            json!({"query": "mutation($d: String) { createTodo(input: {title: \"t\", description: $d}) { id } }", "variables": {"d": "\u{0}"}}),
            token,
            "NUL in a description",
        ),
        json_req(
            json!({"query": "mutation($id: ID!, $t: String!) { updateTodo(id: $id, input: {title: $t}) { id } }", "variables": {"id": id, "t": "\u{0}"}}),
            token,
            "NUL in an updated title",
        ),
        json_req(
            json!({"query": "query($s: String) { todos(filter: {search: $s}) { totalCount } }", "variables": {"s": "\u{0}"}}),
            token,
            "NUL in a search",
        ),
        json_req(
            json!({"query": "query($c: String) { todos(after: $c, orderBy: {field: TITLE, direction: ASC}) { totalCount } }", "variables": {"c": nul_cursor}}),
            token,
            "NUL in a cursor's title",
        ),
        json_req(
            json!({"query": "mutation { login(input: {email: \"a\\u0000@example.com\", password: \"whatever!\"}) { token } }"}),
            None,
            "NUL in a login email",
        ),
        json_req(
            json!({"query": "mutation($p: String!) { signup(input: {email: \"nul@example.com\", password: $p}) { token } }", "variables": {"p": "password\u{0}"}}),
            None,
            "NUL in a password",
        ),
    ];
    let mut stats = Stats::default();
    for req in &cases {
        let outcome = send(&reqwest::Client::new(), &app.url("/graphql"), req).await;
        check(&mut stats, req, outcome);
    }
    let mut report = String::new();
    for (count, detail) in stats.failures.values() {
        report.push_str(&format!("\n--- {count}× {detail}\n"));
    }
    assert!(
        stats.failures.is_empty(),
        "edge cases [{tag}]: {} kinds of bad responses:{report}",
        stats.failures.len()
    );
}

/// `MAX_QUERY_TOKENS` is enforced by a scan before parsing. GraphQL ends a
/// comment at any line terminator (`\n`, `\r\n` or a lone `\r`); a scan that
/// only knows `\n` reads everything after `#…\r` as comment, and the limit
/// is bypassed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limit_holds_whatever_the_line_terminators() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let fields = "__typename ".repeat(10_001);
    let mut failures = Vec::new();
    for (terminator, name) in [("\n", "LF"), ("\r\n", "CRLF"), ("\r", "CR")] {
        let query = format!("# a comment{terminator}{{ {fields}}}");
        let response = app.gql(None, &query, json!({})).await;
        if response.code() != Some("GRAPHQL_VALIDATION_FAILED") {
            failures.push(format!(
                "a document of 10,003 tokens whose comment ends with {name} was not refused: {}",
                truncate(&response.0.to_string(), 200)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A todoql process of its own, so that a crash shows as a failed test
/// instead of taking the test process down.
struct Child {
    child: std::process::Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_child() -> Child {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("todoql.db").display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_todoql"))
        .env_clear()
        .envs([
            ("DATABASE_URL", url.as_str()),
            ("JWT_SECRET", JWT_SECRET),
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("BCRYPT_COST", "4"),
            ("NO_COLOR", "1"),
            ("RUST_LOG", "warn,todoql=info"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("todoql starts");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/graphql").to_owned());
            }
            let mut lines = lines.lock().expect("log");
            lines.push(line);
            let excess = lines.len().saturating_sub(20);
            lines.drain(..excess);
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the server logs its address");
    Child { child, addr, log, _dir: dir }
}

/// Nested list and object values have no depth limit in async-graphql's
/// parser, and a few thousand levels fit under the token limit (4 KB of
/// `[`…`]`): parsing them recursively must not overflow a worker's stack
/// and abort the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_values_do_not_crash_the_server() {
    let mut server = start_child();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = format!("http://{}/graphql", server.addr);
    let mut stats = Stats::default();
    for depth in [100, 200, 400, 1000, 2000, 4000] {
        for list in [true, false] {
            let value = V::Deep { list, depth }.gql();
            let req = json_req(json!({"query": format!("{{ __typename(x: {value}) }}")}), None, "deep value");
            let outcome = send(&client, &url, &req).await;
            check(&mut stats, &req, outcome);
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = server.log.lock().expect("log").join("\n");
                panic!(
                    "the server process died ({status}) on an anonymous POST of {} bytes: \
                     {{\"query\": \"{{ __typename(x: <{depth} nested {}>) }}\"}}\nlast log lines:\n{log}",
                    req.body.len(),
                    if list { "lists [[…1…]]" } else { "objects {a: {a: …1…}}" },
                );
            }
        }
    }
    let alive = send(&client, &url, &json_req(json!({"query": "{ __typename }"}), None, "final")).await;
    assert!(matches!(&alive, Ok((200, _))), "the server no longer answers: {alive:?}");
    let mut report = String::new();
    for (count, detail) in stats.failures.values() {
        report.push_str(&format!("\n--- {count}× {detail}\n"));
    }
    assert!(
        stats.failures.is_empty(),
        "deep values: {} kinds of bad responses:{report}",
        stats.failures.len()
    );
}

/// The oracle itself: leaks, missing codes and server faults are caught, and
/// echoes of the request are not mistaken for leaks.
#[test]
fn the_checker_flags_what_it_should() {
    let req =
        json_req(json!({"query": "{ todos(filter: {search: \"sqlite\"}) { totalCount } }"}), None, "unit");
    let cases = [
        (200, r#"{"data":{"me":{"email":"$2b$10$abcdefghijklmnopqrstuv"}}}"#, true),
        (
            200,
            r#"{"errors":[{"message":"no such table: users (SQLite)","extensions":{"code":"BAD_REQUEST"}}]}"#,
            true,
        ),
        (200, r#"{"errors":[{"message":"x"}]}"#, true),
        (200, r#"{"errors":[{"message":"x","extensions":{"code":7}}]}"#, true),
        (
            200,
            r#"{"errors":[{"message":"Internal server error","extensions":{"code":"INTERNAL_SERVER_ERROR"}}]}"#,
            true,
        ),
        (502, r#"{"data":null}"#, true),
        (400, "Bad Request", true),
        (200, r#"[{"data":{}},{"errors":[]}]"#, true),
        (200, r#"{"data":{"t":"thread 'main' panicked at src/x.rs"}}"#, true),
        // Echoes of the request are not leaks.
        (
            200,
            r#"{"errors":[{"message":"Unknown value \"sqlite\"","extensions":{"code":"BAD_USER_INPUT"}}]}"#,
            false,
        ),
        (200, r#"{"data":{"todos":{"totalCount":0}}}"#, false),
        // Ids, tokens and cursors may contain anything.
        (200, r#"{"data":{"todo":{"id":"0a9c1bb8-8d3e-4c2b-9a1f-2b3c4d5e6f70"}}}"#, false),
    ];
    for (status, body, bad) in cases {
        let mut stats = Stats::default();
        check(&mut stats, &req, Ok((status, body.to_owned())));
        assert_eq!(!stats.failures.is_empty(), bad, "{status} {body}: {:?}", stats.failures.keys());
    }
    let mut stats = Stats::default();
    check(&mut stats, &req, Err("connection closed".into()));
    assert_eq!(stats.failures.len(), 1);
}
