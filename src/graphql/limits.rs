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
use async_graphql::{Name, Positioned, ServerError, ServerResult, Variables};

use super::errors::GRAPHQL_VALIDATION_FAILED;

#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    pub max_depth: usize,
    pub max_tokens: usize,
    pub max_aliases: usize,
    pub max_directives: usize,
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
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // The limits depend on the text alone: a cached document passed them.
        if let Some(document) = self.cache.get(query) {
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
        let document = next.run(ctx, query, variables).await?;
        self.remember_operation_name(&document);
        let depth = document_depth(&document);
        if depth > limits.max_depth {
            return Err(refuse(format!(
                "The query is nested {depth} levels deep; the limit is {}",
                limits.max_depth
            )));
        }
        let (aliases, directives, introspects) = count_aliases_and_directives(&document);
        if introspects && !limits.introspection {
            return Err(refuse("Introspection is disabled on this server".to_owned()));
        }
        if aliases > limits.max_aliases {
            return Err(refuse(format!(
                "The document has {aliases} aliases; the limit is {}",
                limits.max_aliases
            )));
        }
        if directives > limits.max_directives {
            return Err(refuse(format!(
                "The document has {directives} directives; the limit is {}",
                limits.max_directives
            )));
        }
        self.cache.insert(query, &document);
        Ok(document)
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

/// Aliases and directives written anywhere in the document, and whether it
/// asks for `__schema` or `__type`.
fn count_aliases_and_directives(document: &ExecutableDocument) -> (usize, usize, bool) {
    fn walk(set: &SelectionSet, counts: &mut (usize, usize, bool)) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    counts.2 |= name == "__schema" || name == "__type";
                    counts.0 += usize::from(field.node.alias.is_some());
                    counts.1 += field.node.directives.len();
                    walk(&field.node.selection_set.node, counts);
                }
                Selection::InlineFragment(fragment) => {
                    counts.1 += fragment.node.directives.len();
                    walk(&fragment.node.selection_set.node, counts);
                }
                Selection::FragmentSpread(spread) => counts.1 += spread.node.directives.len(),
            }
        }
    }
    let mut counts = (0, 0, false);
    for (_, operation) in document.operations.iter() {
        counts.1 += operation.node.directives.len();
        walk(&operation.node.selection_set.node, &mut counts);
    }
    for fragment in document.fragments.values() {
        let fragment: &Positioned<_> = fragment;
        counts.1 += fragment.node.directives.len();
        walk(&fragment.node.selection_set.node, &mut counts);
    }
    counts
}

/// The deepest chain of non-introspection fields in any operation.
pub fn document_depth(document: &ExecutableDocument) -> usize {
    let mut walker = Walker { document, memo: HashMap::new(), visiting: Vec::new() };
    document.operations.iter().map(|(_, op)| walker.depth(&op.node.selection_set.node)).max().unwrap_or(0)
}

struct Walker<'a> {
    document: &'a ExecutableDocument,
    /// Fragment depths already computed: a fragment spread many times is
    /// walked once, so nested reuse cannot blow up exponentially.
    memo: HashMap<Name, usize>,
    /// Fragments on the current path; a cycle (invalid, reported by
    /// validation) counts as nothing here.
    visiting: Vec<Name>,
}

impl Walker<'_> {
    fn depth(&mut self, set: &SelectionSet) -> usize {
        let mut deepest = 0;
        for selection in &set.items {
            let depth = match &selection.node {
                Selection::Field(field) if field.node.name.node.starts_with("__") => 0,
                Selection::Field(field) => 1 + self.depth(&field.node.selection_set.node),
                Selection::InlineFragment(fragment) => self.depth(&fragment.node.selection_set.node),
                Selection::FragmentSpread(spread) => self.fragment_depth(&spread.node.fragment_name.node),
            };
            deepest = deepest.max(depth);
        }
        deepest
    }

    fn fragment_depth(&mut self, name: &Name) -> usize {
        if let Some(depth) = self.memo.get(name) {
            return *depth;
        }
        if self.visiting.contains(name) {
            return 0;
        }
        let Some(fragment) = self.document.fragments.get(name) else {
            return 0;
        };
        self.visiting.push(name.clone());
        let depth = self.depth(&fragment.node.selection_set.node);
        self.visiting.pop();
        self.memo.insert(name.clone(), depth);
        depth
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
        assert_eq!(document_depth(&hit), 2);
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

    fn depth(query: &str) -> usize {
        document_depth(&async_graphql::parser::parse_query(query).expect("parses"))
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
        assert_eq!(count_aliases_and_directives(&document), (3, 5, false));
        let document = async_graphql::parser::parse_query(
            "{ ...F } fragment F on Query { __type(name: \"Todo\") { name } }",
        )
        .expect("parses");
        assert!(count_aliases_and_directives(&document).2);
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
        // A cycle does not hang the walk (validation reports it).
        assert_eq!(depth("query { ...A } fragment A on Query { me { id } ...A }"), 2);
    }
}
