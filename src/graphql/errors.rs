//! Every error leaves with an `extensions.code`.
//!
//! Domain errors get theirs from `AppError`. This extension gives the rest
//! theirs: parse and validation failures (the codes Apollo Server uses), input
//! coercion failures (BAD_USER_INPUT), and anything else a resolver produced
//! without going through `AppError`, which is treated as internal: logged, and
//! replaced by a generic message so no SQL or driver text can leak.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;

use crate::error::{ErrorCode, INTERNAL_MESSAGE};

pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";

pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodesExtension)
    }
}

struct ErrorCodesExtension;

#[async_trait::async_trait]
impl Extension for ErrorCodesExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        finalize(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(finalize).boxed()
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables).await.map_err(|error| with_code(error, GRAPHQL_PARSE_FAILED))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors.into_iter().map(|error| with_code(error, GRAPHQL_VALIDATION_FAILED)).collect()
        })
    }
}

fn with_code(mut error: ServerError, code: &str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    error
}

/// Gives every error of `response` a code.
pub fn finalize(mut response: Response) -> Response {
    for error in &mut response.errors {
        let has_code = error.extensions.as_ref().is_some_and(|e| e.get("code").is_some());
        if has_code {
            continue;
        }
        if is_operation_selection_error(&error.message) {
            *error = with_code(std::mem::replace(error, ServerError::new("", None)), "BAD_REQUEST");
        } else if is_input_coercion_error(&error.message) {
            *error = with_code(
                std::mem::replace(error, ServerError::new("", None)),
                ErrorCode::BadUserInput.as_str(),
            );
        } else {
            tracing::error!(message = %error.message, path = ?error.path, "uncoded resolver error");
            error.message = INTERNAL_MESSAGE.to_owned();
            *error = with_code(
                std::mem::replace(error, ServerError::new("", None)),
                ErrorCode::InternalServerError.as_str(),
            );
        }
    }
    response
}

/// async-graphql's own messages for values that do not fit their input type
/// (e.g. an argument given through a variable). They name only the type.
fn is_input_coercion_error(message: &str) -> bool {
    message.starts_with("Failed to parse")
        || message.starts_with("Invalid value for argument")
        || message.starts_with("Expected input type")
        || (message.starts_with("Variable ") && message.ends_with("is not defined."))
}

/// async-graphql's messages for a request that names no runnable operation.
fn is_operation_selection_error(message: &str) -> bool {
    message.starts_with("Operation name required")
        || message.starts_with("Unknown operation named")
        || message.starts_with("Subscriptions are not supported on this transport")
}
