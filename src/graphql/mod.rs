//! The GraphQL schema: each domain owns its part, merged at the root.

pub mod errors;
pub mod limits;
pub mod scalars;
pub mod subscription;
pub mod todo;
pub mod user;

use std::sync::Arc;

use async_graphql::{Context, MergedObject, Schema, SchemaBuilder};

use crate::app::App;
use crate::config::Limits;
use crate::db::users::User;
use crate::error::{AppError, AppResult};

#[derive(MergedObject, Default)]
pub struct Query(user::UserQuery, todo::TodoQuery);

#[derive(MergedObject, Default)]
pub struct Mutation(user::UserMutation, todo::TodoMutation);

pub type TodoqlSchema = Schema<Query, Mutation, subscription::Subscription>;

fn builder() -> SchemaBuilder<Query, Mutation, subscription::Subscription> {
    Schema::build(Query::default(), Mutation::default(), subscription::Subscription)
}

/// The schema served by `app`, with the configured limits.
pub fn schema(app: Arc<App>, limits: &Limits) -> TodoqlSchema {
    let mut builder = builder()
        .data(app)
        .extension(errors::ErrorCodes)
        .extension(
            limits::DocumentLimits {
                max_depth: limits.max_depth,
                max_tokens: limits.max_tokens,
                max_aliases: limits.max_aliases,
                max_directives: limits.max_directives,
                max_expanded: limits.max_complexity,
                max_variable_values: limits::MAX_VARIABLE_VALUES,
                introspection: limits.introspection,
            }
            .extension(),
        )
        .limit_complexity(limits.max_complexity);
    if !limits.introspection {
        builder = builder.disable_introspection();
    }
    if !limits.suggestions {
        builder = builder.disable_suggestions();
    }
    builder.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    builder().finish().sdl()
}

pub(crate) trait ContextExt {
    fn app(&self) -> &App;
    /// The signed-in user, or UNAUTHENTICATED.
    fn current_user(&self) -> AppResult<&User>;
}

impl ContextExt for Context<'_> {
    fn app(&self) -> &App {
        // Inserted by `schema()`: absent only if the schema was built wrongly.
        self.data_unchecked::<Arc<App>>()
    }

    fn current_user(&self) -> AppResult<&User> {
        self.data_opt::<User>()
            .ok_or(AppError::Unauthenticated("Sign in to do this: send Authorization: Bearer <token>"))
    }
}
