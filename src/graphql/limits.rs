//! Document limits checked before any resolver runs.
//!
//! async-graphql limits depth and complexity but not the number of tokens,
//! aliases or directives in a document. Tokens are counted before parsing,
//! so a huge document costs a scan, not a parse; the rest right after.
//!
//! Documents that pass are kept in a small cache keyed by their text, so the
//! handful of operations an application sends over and over are parsed and
//! checked once (Apollo Server keeps such a cache too): parsing was the
//! largest single cost of a small query.
//!
//! Depth here ignores `__` fields (as graphql-depth-limit is usually set
//! up): the standard introspection query that GraphiQL and code generators
//! send is deeper (its `ofType` chain) than any real todoql query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, ServerError, ServerResult, Value, Variables};

use super::errors::GRAPHQL_VALIDATION_FAILED;

#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    pub max_depth: usize,
    pub max_tokens: usize,
    pub max_aliases: usize,
    pub max_directives: usize,
    /// The complexity budget, which also bounds the document's size once its
    /// fragments are expanded (every selection costs at least one).
    pub max_expanded: usize,
    /// Values (scalars, lists and objects, nested ones included) in a
    /// request's variables.
    pub max_variable_values: usize,
    /// When false, documents asking for `__schema` or `__type` are refused
    /// (async-graphql alone would answer them with null).
    pub introspection: bool,
}

/// The extension that enforces [`DocumentLimits`], with its document cache.
pub struct DocumentLimitsFactory {
    limits: DocumentLimits,
    cache: Arc<DocumentCache>,
}

impl DocumentLimits {
    pub fn extension(self) -> DocumentLimitsFactory {
        DocumentLimitsFactory { limits: self, cache: Arc::default() }
    }
}

impl ExtensionFactory for DocumentLimitsFactory {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimitsExtension {
            limits: self.limits,
            cache: Arc::clone(&self.cache),
            operation: Mutex::new(None),
        })
    }
}

/// Parsed documents that passed every limit, by their exact text.
#[derive(Default)]
struct DocumentCache {
    documents: Mutex<HashMap<Box<str>, Arc<ExecutableDocument>>>,
}

/// Enough for every operation of an application and then some; past it the
/// cache starts over, so a client sending endless distinct documents costs
/// re-parsing, never memory.
const CACHED_DOCUMENTS: usize = 256;
/// Longer documents are not cached (they are rare, and would each hold tens
/// of kilobytes of syntax tree).
const CACHED_DOCUMENT_BYTES: usize = 4 * 1024;

impl DocumentCache {
    fn get(&self, query: &str) -> Option<ExecutableDocument> {
        let cached = self.documents.lock().ok()?.get(query).cloned()?;
        // The deep copy happens outside the lock.
        Some(ExecutableDocument::clone(&cached))
    }

    fn insert(&self, query: &str, document: &ExecutableDocument) {
        if query.len() > CACHED_DOCUMENT_BYTES {
            return;
        }
        let document = Arc::new(document.clone());
        if let Ok(mut documents) = self.documents.lock() {
            if documents.len() >= CACHED_DOCUMENTS {
                documents.clear();
            }
            documents.insert(query.into(), document);
        }
    }
}

/// The response header (never sent: async-graphql's `http_headers` are for
/// the transport to use) that carries the executed operation's name to the
/// HTTP layer's logs and metrics, even when the client sent no
/// `operationName`.
pub const OPERATION_NAME_HEADER: &str = "x-todoql-operation";

struct DocumentLimitsExtension {
    limits: DocumentLimits,
    cache: Arc<DocumentCache>,
    /// The name of the document's single named operation, if any.
    operation: Mutex<Option<String>>,
}

impl DocumentLimitsExtension {
    fn remember_operation_name(&self, document: &ExecutableDocument) {
        if let (Ok(mut slot), async_graphql::parser::types::DocumentOperations::Multiple(named)) =
            (self.operation.lock(), &document.operations)
        {
            // Named operations: with just one, its name is the operation's.
            if named.len() == 1 {
                *slot = named.keys().next().map(|name| name.to_string());
            }
        }
    }
}

fn refuse(message: String) -> ServerError {
    let mut error = ServerError::new(message, None);
    error.extensions.get_or_insert_with(Default::default).set("code", GRAPHQL_VALIDATION_FAILED);
    error
}

#[async_trait::async_trait]
impl Extension for DocumentLimitsExtension {
    async fn request(
        &self,
        ctx: &ExtensionContext<'_>,
        next: async_graphql::extensions::NextRequest<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx).await;
        let name = self.operation.lock().ok().and_then(|mut name| name.take());
        if let Some(value) = name.and_then(|n| ::http::HeaderValue::from_str(&n).ok()) {
            response.http_headers.insert(OPERATION_NAME_HEADER, value);
        }
        response
    }

    async fn parse_query(
        &self,
        _ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        _next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // The limits depend on the text alone: a cached document passed them.
        if let Some(document) = self.cache.get(query) {
            check_variables(variables, self.limits.max_variable_values)?;
            self.remember_operation_name(&document);
            return Ok(document);
        }
        let limits = &self.limits;
        let (tokens, nesting) = scan(query, limits.max_tokens + 1);
        if tokens > limits.max_tokens {
            return Err(refuse(format!("The document has more than {} tokens", limits.max_tokens)));
        }
        if nesting > MAX_NESTING {
            return Err(refuse(format!("The document nests brackets more than {MAX_NESTING} deep")));
        }
        // Parsed here rather than by `_next` (async-graphql's own parse step):
        // that step's recursion check walks every fragment spread again,
        // unmemoized, before any limit of ours could refuse the document.
        // Everything it guards is checked below, in linear time.
        let document = async_graphql::parser::parse_query(query).map_err(ServerError::from)?;
        self.remember_operation_name(&document);
        check_variables(variables, limits.max_variable_values)?;
        let shape = shape(&document);
        if let Some(name) = &shape.cycle {
            return Err(refuse(format!("Cannot spread fragment \"{name}\" within itself")));
        }
        if shape.expanded > limits.max_expanded {
            return Err(refuse(format!(
                "The document expands to more than {} selections once its fragments are spread",
                limits.max_expanded
            )));
        }
        if shape.nesting > MAX_NESTING_WITH_FRAGMENTS {
            return Err(refuse(format!(
                "The document nests selections and fragments more than {MAX_NESTING_WITH_FRAGMENTS} deep"
            )));
        }
        if shape.depth > limits.max_depth {
            return Err(refuse(format!(
                "The query is nested {} levels deep; the limit is {}",
                shape.depth, limits.max_depth
            )));
        }
        if shape.introspects && !limits.introspection {
            return Err(refuse("Introspection is disabled on this server".to_owned()));
        }
        if shape.aliases > limits.max_aliases {
            return Err(refuse(format!(
                "The document has {} aliases; the limit is {}",
                shape.aliases, limits.max_aliases
            )));
        }
        if shape.directives > limits.max_directives {
            return Err(refuse(format!(
                "The document has {} directives; the limit is {}",
                shape.directives, limits.max_directives
            )));
        }
        self.cache.insert(query, &document);
        Ok(document)
    }
}

/// Values a request's variables may hold: todoql's inputs are a handful of
/// strings, and `nodes(ids:)` lists of a page or two.
pub const MAX_VARIABLE_VALUES: usize = 10_000;

/// Refuses variables holding more than `limit` values. The body limit bounds
/// their bytes, but one byte of JSON (`0,`) can become a value of tens of
/// bytes in memory, and every resolver that reads them walks them.
fn check_variables(variables: &Variables, limit: usize) -> ServerResult<()> {
    fn count(value: &Value, budget: &mut usize) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match value {
            Value::List(items) => items.iter().all(|item| count(item, budget)),
            Value::Object(fields) => fields.values().all(|field| count(field, budget)),
            _ => true,
        }
    }
    let mut budget = limit;
    if variables.values().all(|value| count(value, &mut budget)) {
        Ok(())
    } else {
        Err(refuse(format!("The variables hold more than {limit} values")))
    }
}

/// The deepest nesting of `{`, `[` and `(` a document may have. The parser
/// recurses once per level of a value (`[[[…]]]`, `{a: {a: …}}`), and only
/// selection sets are bounded by the depth limit: without this, a 4 KB
/// document could overflow a worker thread's stack.
pub const MAX_NESTING: usize = 64;

/// Counts GraphQL lexical tokens, stopping at `stop`. Commas, white space and
/// comments are not tokens; a string (block strings included) is one.
pub fn count_tokens(source: &str, stop: usize) -> usize {
    scan(source, stop).0
}

/// Whether `source` is within `max_tokens` tokens and [`MAX_NESTING`]: safe
/// to hand to the parser.
pub fn within_scan_limits(source: &str, max_tokens: usize) -> bool {
    let (tokens, nesting) = scan(source, max_tokens.saturating_add(1));
    tokens <= max_tokens && nesting <= MAX_NESTING
}

/// Tokens (up to `stop`) and the deepest bracket nesting seen by then.
fn scan(source: &str, stop: usize) -> (usize, usize) {
    let bytes = source.as_bytes();
    let (mut i, mut tokens) = (0, 0);
    let (mut depth, mut deepest) = (0_usize, 0_usize);
    while i < bytes.len() && tokens < stop {
        let byte = bytes[i];
        match byte {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
                i += 1;
                tokens += 1;
            }
            b'}' | b']' | b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
                tokens += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            // A comment ends at a line terminator: LF, CR or CRLF.
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") { 4 } else { 1 };
                }
                i += 3;
                tokens += 1;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                tokens += 1;
            }
            b'.' if bytes[i..].starts_with(b"...") => {
                i += 3;
                tokens += 1;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => {
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'+' | b'-')
                {
                    i += 1;
                }
                tokens += 1;
            }
            _ => {
                i += 1;
                tokens += 1;
            }
        }
    }
    (tokens, deepest)
}

/// What the limits need to know of a parsed document, computed in one walk
/// whose cost is linear in the document's text, however its fragments nest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    /// The deepest chain of non-introspection fields in any operation.
    pub depth: usize,
    /// The deepest nesting of selection sets, fragment spreads and inline
    /// fragments (introspection included), as async-graphql's own
    /// recursion check counts it; bounds the stack execution needs.
    pub nesting: usize,
    /// Selections (fields, spreads, inline fragments) that validation and
    /// execution would visit once every fragment spread is expanded, over all
    /// operations: the work a document asks for. Saturates at `usize::MAX`.
    pub expanded: usize,
    /// Aliases and directives as written (each written once counts once).
    pub aliases: usize,
    pub directives: usize,
    /// Whether it asks for `__schema` or `__type`.
    pub introspects: bool,
    /// A fragment spread inside itself, directly or not. Validation reports
    /// it too, but only after visitors that expand spreads would loop on it.
    pub cycle: Option<Name>,
}

/// async-graphql's default recursion limit, which our own walk now enforces
/// (its check expands every spread, unmemoized: see [`shape`]).
pub const MAX_NESTING_WITH_FRAGMENTS: usize = 32;

/// The [`Shape`] of `document`.
///
/// Each fragment is walked once and its numbers memoized, so a fragment
/// spread ten times by a fragment spread ten times (and so on) costs its
/// text, not 10^n: this is what makes a 1 KB document that expands to
/// billions of fields cheap to refuse.
pub fn shape(document: &ExecutableDocument) -> Shape {
    let mut walker = Walker { document, memo: HashMap::new(), visiting: Vec::new(), cycle: None };
    let mut shape = Shape::default();
    for (_, operation) in document.operations.iter() {
        let sizes = walker.selection_set(&operation.node.selection_set.node);
        shape.depth = shape.depth.max(sizes.depth);
        shape.nesting = shape.nesting.max(sizes.nesting);
        shape.expanded = shape.expanded.saturating_add(sizes.expanded);
        shape.directives += operation.node.directives.len();
        count_written(&operation.node.selection_set.node, &mut shape);
    }
    for fragment in document.fragments.values() {
        shape.directives += fragment.node.directives.len();
        count_written(&fragment.node.selection_set.node, &mut shape);
    }
    shape.cycle = walker.cycle;
    shape
}

/// Aliases, directives and introspection fields as written, not expanded.
fn count_written(set: &SelectionSet, shape: &mut Shape) {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                shape.introspects |= name == "__schema" || name == "__type";
                shape.aliases += usize::from(field.node.alias.is_some());
                shape.directives += field.node.directives.len();
                count_written(&field.node.selection_set.node, shape);
            }
            Selection::InlineFragment(fragment) => {
                shape.directives += fragment.node.directives.len();
                count_written(&fragment.node.selection_set.node, shape);
            }
            Selection::FragmentSpread(spread) => shape.directives += spread.node.directives.len(),
        }
    }
}

/// The numbers of one selection set, relative to where it sits.
#[derive(Debug, Clone, Copy, Default)]
struct Sizes {
    depth: usize,
    nesting: usize,
    expanded: usize,
}

struct Walker<'a> {
    document: &'a ExecutableDocument,
    /// Fragments already measured: each is walked once.
    memo: HashMap<Name, Sizes>,
    /// Fragments on the current path, to find cycles. Never longer than
    /// [`MAX_NESTING_WITH_FRAGMENTS`] + 1: past that the document is refused
    /// anyway, so the walk (and its stack) stops descending.
    visiting: Vec<Name>,
    cycle: Option<Name>,
}

impl Walker<'_> {
    fn selection_set(&mut self, set: &SelectionSet) -> Sizes {
        let mut total = Sizes::default();
        for selection in &set.items {
            let (depth, nesting, expanded) = match &selection.node {
                Selection::Field(field) => {
                    let inner = self.selection_set(&field.node.selection_set.node);
                    let has_selections = !field.node.selection_set.node.items.is_empty();
                    let introspection = field.node.name.node.starts_with("__");
                    (
                        if introspection { 0 } else { 1 + inner.depth },
                        inner.nesting + usize::from(has_selections),
                        inner.expanded.saturating_add(1),
                    )
                }
                Selection::InlineFragment(fragment) => {
                    let inner = self.selection_set(&fragment.node.selection_set.node);
                    (inner.depth, inner.nesting + 1, inner.expanded.saturating_add(1))
                }
                Selection::FragmentSpread(spread) => {
                    let inner = self.fragment(&spread.node.fragment_name.node);
                    (inner.depth, inner.nesting + 1, inner.expanded.saturating_add(1))
                }
            };
            total.depth = total.depth.max(depth);
            total.nesting = total.nesting.max(nesting);
            total.expanded = total.expanded.saturating_add(expanded);
        }
        total
    }

    fn fragment(&mut self, name: &Name) -> Sizes {
        if let Some(sizes) = self.memo.get(name) {
            return *sizes;
        }
        if self.visiting.contains(name) {
            self.cycle.get_or_insert_with(|| name.clone());
            return Sizes::default();
        }
        if self.visiting.len() > MAX_NESTING_WITH_FRAGMENTS {
            // Every spread on the path is a level: this is too deep already.
            return Sizes { nesting: MAX_NESTING_WITH_FRAGMENTS + 1, ..Sizes::default() };
        }
        // An unknown fragment is reported by validation.
        let Some(fragment) = self.document.fragments.get(name) else {
            return Sizes::default();
        };
        self.visiting.push(name.clone());
        let sizes = self.selection_set(&fragment.node.selection_set.node);
        self.visiting.pop();
        self.memo.insert(name.clone(), sizes);
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_cache_is_bounded() {
        let cache = DocumentCache::default();
        let parse = |q: &str| async_graphql::parser::parse_query(q).expect("parses");
        cache.insert("{ me { id } }", &parse("{ me { id } }"));
        let hit = cache.get("{ me { id } }").expect("cached");
        assert_eq!(shape(&hit).depth, 2);
        assert!(cache.get("{ me { email } }").is_none(), "keyed by the exact text");
        let long = format!("{{ me {{ id }} }}{}", " ".repeat(CACHED_DOCUMENT_BYTES));
        cache.insert(&long, &parse(&long));
        assert!(cache.get(&long).is_none(), "long documents are not kept");
        for i in 0..CACHED_DOCUMENTS {
            let query = format!("query Q{i} {{ me {{ id }} }}");
            cache.insert(&query, &parse(&query));
        }
        let size = cache.documents.lock().expect("lock").len();
        assert!(size <= CACHED_DOCUMENTS, "{size} documents");
        assert!(cache.get("{ me { id } }").is_none(), "a full cache starts over");
    }

    fn shape_of(query: &str) -> Shape {
        shape(&async_graphql::parser::parse_query(query).expect("parses"))
    }

    fn depth(query: &str) -> usize {
        shape_of(query).depth
    }

    #[test]
    fn counts_tokens_aliases_and_directives() {
        assert_eq!(count_tokens("{ me { id } }", 100), 6);
        assert_eq!(count_tokens("query($a: Int = -12.5e3) { x(s: \"a b, c\") # comment\n }", 100), 17);
        assert_eq!(count_tokens("{ ...F } \"\"\"block \\\"\"\" string\"\"\"", 100), 5);
        assert_eq!(count_tokens(&"{ a ".repeat(1000), 50), 50, "stops counting");
        count_tokens("\"unterminated", 10);
        assert_eq!(count_tokens("# comment\r{ a }", 100), 3, "CR ends a comment");
        assert_eq!(scan(&format!("{{ a(x: {}1{}) }}", "[".repeat(70), "]".repeat(70)), 1000).1, 72);
        count_tokens("\"\"\"", 10);
        let document = async_graphql::parser::parse_query(
            "query Q @a { x: me @b { id } ...F ... on Query @c { y: me { id } } } fragment F on Query @d { z: me { id @e } }",
        )
        .expect("parses");
        let counted = shape(&document);
        assert_eq!((counted.aliases, counted.directives, counted.introspects), (3, 5, false));
        let document = async_graphql::parser::parse_query(
            "{ ...F } fragment F on Query { __type(name: \"Todo\") { name } }",
        )
        .expect("parses");
        assert!(shape(&document).introspects);
    }

    #[test]
    fn counts_fields_through_fragments_but_not_introspection() {
        assert_eq!(depth("{ me { id } }"), 2);
        assert_eq!(depth("{ todos { edges { node { id } } } }"), 4);
        assert_eq!(
            depth(
                "query { ...A } fragment A on Query { todos { nodes { ...B } } } fragment B on Todo { id }"
            ),
            3
        );
        assert_eq!(depth("{ ... on Query { me { id } } }"), 2);
        assert_eq!(depth("{ __schema { types { fields { type { ofType { ofType { name } } } } } } }"), 0);
        assert_eq!(depth("{ me { __typename } }"), 1);
    }

    /// `fragment F{n} on Query { ...F{n-1} ×10 }`: a few hundred bytes that
    /// expand to 10^levels selections.
    pub fn fragment_bomb(levels: usize) -> String {
        let mut query = format!("query {{ ...F{levels} }} fragment F0 on Query {{ __typename }}");
        for level in 1..=levels {
            let spreads = format!("...F{} ", level - 1).repeat(10);
            query.push_str(&format!(" fragment F{level} on Query {{ {spreads}}}"));
        }
        query
    }

    #[test]
    fn measures_the_expansion_without_doing_it() {
        assert_eq!(shape_of("{ me { id email } }").expanded, 3);
        assert_eq!(shape_of("{ ...A ...A } fragment A on Query { me { id } }").expanded, 6);
        assert_eq!(shape_of("{ ... on Query { me { id } } }").expanded, 3);
        assert_eq!(shape_of("query A { me { id } } query B { me { id } }").expanded, 4, "all operations");
        let started = std::time::Instant::now();
        let bomb = shape_of(&fragment_bomb(8));
        assert!(bomb.expanded > 100_000_000, "{}", bomb.expanded);
        let bigger = shape_of(&fragment_bomb(40));
        assert_eq!(bigger.expanded, usize::MAX, "saturates");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn finds_cycles_and_nesting_through_fragments() {
        let cyclic =
            shape_of("query { ...A } fragment A on Query { me { id } ...B } fragment B on Query { ...A }");
        assert!(cyclic.cycle.is_some());
        assert_eq!(shape_of("{ ...A } fragment A on Query { me { id } }").cycle, None);
        // `{ me { id } }` nests 1 (one selection set below the root); each
        // spread and inline fragment adds one, as async-graphql counts.
        assert_eq!(shape_of("{ me { id } }").nesting, 1);
        assert_eq!(shape_of("{ ...A } fragment A on Query { ... on Query { me { id } } }").nesting, 3);
        let mut chain = String::from("query { ...F0 }");
        for i in 0..100 {
            chain.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
        }
        chain.push_str(" fragment F100 on Query { __typename }");
        assert!(shape_of(&chain).nesting > MAX_NESTING_WITH_FRAGMENTS);
    }

    #[test]
    fn counts_variable_values() {
        let variables = |json: serde_json::Value| Variables::from_json(json);
        assert!(check_variables(&variables(serde_json::json!({"a": [1, 2, 3]})), 4).is_ok());
        assert!(check_variables(&variables(serde_json::json!({"a": [1, 2, 3], "b": 1})), 4).is_err());
        assert!(check_variables(&variables(serde_json::json!({"a": {"b": {"c": 1}}})), 2).is_err());
    }
}
