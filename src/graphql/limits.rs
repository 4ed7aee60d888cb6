//! Document limits checked right after parsing, before any resolver runs.
//!
//! async-graphql's own depth limit counts introspection fields, and the
//! standard introspection query that GraphiQL and code generators send is
//! deeper than any real todoql query (its `ofType` chain). Like
//! graphql-depth-limit's usual configuration, depth here ignores `__` fields.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, ServerError, ServerResult, Variables};

use super::errors::GRAPHQL_VALIDATION_FAILED;

pub struct DepthLimit {
    pub max_depth: usize,
}

impl ExtensionFactory for DepthLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DepthLimitExtension { max_depth: self.max_depth })
    }
}

struct DepthLimitExtension {
    max_depth: usize,
}

#[async_trait::async_trait]
impl Extension for DepthLimitExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let depth = document_depth(&document);
        if depth > self.max_depth {
            let mut error = ServerError::new(
                format!("The query is nested {depth} levels deep; the limit is {}", self.max_depth),
                None,
            );
            error.extensions.get_or_insert_with(Default::default).set("code", GRAPHQL_VALIDATION_FAILED);
            return Err(error);
        }
        Ok(document)
    }
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

    fn depth(query: &str) -> usize {
        document_depth(&async_graphql::parser::parse_query(query).expect("parses"))
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
