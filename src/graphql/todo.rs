//! Todos in the schema: queries, mutations and the Relay connection.

use async_graphql::{Context, Enum, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};

use super::ContextExt as _;
use super::scalars::DateTime;
use crate::db;
use crate::db::types::DbId;
use crate::error::AppError;
use crate::todos::{self, Cursor, Direction, NewTodo, OrderField, PageRequest, TodoPatch};

pub struct Todo(pub todos::Todo);

#[Object(name = "Todo")]
impl Todo {
    async fn id(&self) -> ID {
        id_of(self.0.id)
    }
    async fn title(&self) -> &str {
        &self.0.title
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn completed(&self) -> bool {
        self.0.completed
    }
    async fn created_at(&self) -> DateTime {
        self.0.created_at.into()
    }
    async fn updated_at(&self) -> DateTime {
        self.0.updated_at.into()
    }
}

pub fn id_of(id: DbId) -> ID {
    ID(id.0.hyphenated().to_string())
}

/// An id that is not a UUID names no todo: it behaves like a missing one.
fn parse_id(id: &ID) -> Option<DbId> {
    uuid::Uuid::parse_str(id.as_str()).ok().map(DbId)
}

const TODO_NOT_FOUND: &str = "Todo not found";

#[derive(SimpleObject)]
#[graphql(name = "TodoEdge")]
pub struct TodoEdge {
    cursor: String,
    node: Todo,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    has_previous_page: bool,
    start_cursor: Option<String>,
    end_cursor: Option<String>,
}

pub struct TodoConnection {
    owner: DbId,
    page: PageRequest,
    todos: Vec<todos::Todo>,
    has_next_page: bool,
}

#[Object(name = "TodoConnection")]
impl TodoConnection {
    async fn edges(&self) -> Vec<TodoEdge> {
        self.todos
            .iter()
            .map(|todo| TodoEdge {
                cursor: Cursor::for_todo(self.page.order, todo).encode(),
                node: Todo(todo.clone()),
            })
            .collect()
    }

    async fn nodes(&self) -> Vec<Todo> {
        self.todos.iter().cloned().map(Todo).collect()
    }

    async fn page_info(&self) -> PageInfo {
        let cursor = |todo: &todos::Todo| Cursor::for_todo(self.page.order, todo).encode();
        PageInfo {
            has_next_page: self.has_next_page,
            // Forward pagination: rows precede the page exactly when it
            // starts after a cursor (Relay allows this cheap answer).
            has_previous_page: self.page.after.is_some(),
            start_cursor: self.todos.first().map(cursor),
            end_cursor: self.todos.last().map(cursor),
        }
    }

    /// How many of the caller's todos match the filter (all pages).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<i32> {
        // A resolver of its own, so the COUNT runs only when selected.
        let count = db::todos::count(&ctx.app().db, self.owner, &self.page.filter).await?;
        Ok(i32::try_from(count).unwrap_or(i32::MAX))
    }
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "TodoOrderField")]
pub enum TodoOrderField {
    CreatedAt,
    UpdatedAt,
    Title,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum OrderDirection {
    Asc,
    Desc,
}

#[derive(InputObject)]
#[graphql(name = "TodoOrder")]
pub struct TodoOrderInput {
    field: TodoOrderField,
    direction: OrderDirection,
}

#[derive(InputObject, Default)]
#[graphql(name = "TodoFilter")]
pub struct TodoFilterInput {
    completed: Option<bool>,
    /// Case-insensitive substring match on title and description.
    search: Option<String>,
}

#[derive(InputObject)]
pub struct CreateTodoInput {
    title: String,
    description: Option<String>,
    completed: Option<bool>,
}

#[derive(InputObject)]
pub struct UpdateTodoInput {
    title: MaybeUndefined<String>,
    description: MaybeUndefined<String>,
    completed: MaybeUndefined<bool>,
}

impl From<TodoOrderInput> for todos::TodoOrder {
    fn from(input: TodoOrderInput) -> Self {
        let field = match input.field {
            TodoOrderField::CreatedAt => OrderField::CreatedAt,
            TodoOrderField::UpdatedAt => OrderField::UpdatedAt,
            TodoOrderField::Title => OrderField::Title,
        };
        let direction = match input.direction {
            OrderDirection::Asc => Direction::Asc,
            OrderDirection::Desc => Direction::Desc,
        };
        Self { field, direction }
    }
}

impl UpdateTodoInput {
    fn into_patch(self) -> Result<TodoPatch, AppError> {
        let title = match self.title {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => {
                return Err(AppError::bad_input("title", "Title cannot be null"));
            }
            MaybeUndefined::Value(title) => Some(todos::parse_title(&title)?),
        };
        let description = match self.description {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(text) => Some(todos::parse_description(Some(text))?),
        };
        let completed = match self.completed {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => {
                return Err(AppError::bad_input("completed", "completed cannot be null"));
            }
            MaybeUndefined::Value(completed) => Some(completed),
        };
        Ok(TodoPatch { title, description, completed })
    }
}

#[derive(Default)]
pub struct TodoQuery;

#[Object]
impl TodoQuery {
    /// One of the caller's todos; null when no todo with that id belongs to the caller.
    async fn todo(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Todo>> {
        let user = ctx.current_user()?;
        let Some(id) = parse_id(&id) else {
            return Ok(None);
        };
        Ok(db::todos::find(&ctx.app().db, user.id, id).await?.map(Todo))
    }

    /// The caller's todos as a Relay connection. first: default 20, at most 100.
    #[graphql(complexity = "first.unwrap_or(20).clamp(1, 100) as usize * child_complexity")]
    async fn todos(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<TodoFilterInput>,
        order_by: Option<TodoOrderInput>,
    ) -> Result<TodoConnection> {
        let user = ctx.current_user()?;
        let filter = filter.unwrap_or_default();
        let filter = todos::TodoFilter::new(filter.completed, filter.search.as_deref())?;
        let order = order_by.map(Into::into).unwrap_or_default();
        let page = PageRequest::new(first, after.as_deref(), order, filter)?;
        let mut rows = db::todos::list(&ctx.app().db, user.id, &page).await?;
        let has_next_page = rows.len() > page.first;
        rows.truncate(page.first);
        Ok(TodoConnection { owner: user.id, page, todos: rows, has_next_page })
    }
}

#[derive(Default)]
pub struct TodoMutation;

#[Object]
impl TodoMutation {
    /// Creates a todo for the caller. QUOTA_EXCEEDED beyond MAX_TODOS_PER_USER.
    async fn create_todo(&self, ctx: &Context<'_>, input: CreateTodoInput) -> Result<Todo> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let new = NewTodo {
            title: todos::parse_title(&input.title)?,
            description: todos::parse_description(input.description)?,
            completed: input.completed.unwrap_or(false),
        };
        let todo = db::todos::insert(&app.db, user.id, new, app.config.max_todos_per_user).await?;
        Ok(Todo(todo))
    }

    /// Partial update: an absent field is left as it is; description: null clears it. NOT_FOUND unless the todo is the caller's.
    async fn update_todo(&self, ctx: &Context<'_>, id: ID, input: UpdateTodoInput) -> Result<Todo> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let patch = input.into_patch()?;
        let id = parse_id(&id).ok_or(AppError::NotFound(TODO_NOT_FOUND))?;
        let todo = db::todos::update(&app.db, user.id, id, patch)
            .await?
            .ok_or(AppError::NotFound(TODO_NOT_FOUND))?;
        Ok(Todo(todo))
    }

    /// Returns the id of the deleted todo. NOT_FOUND unless the todo is the caller's.
    async fn delete_todo(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let todo_id = parse_id(&id).ok_or(AppError::NotFound(TODO_NOT_FOUND))?;
        if !db::todos::delete(&app.db, user.id, todo_id).await? {
            return Err(AppError::NotFound(TODO_NOT_FOUND).into());
        }
        Ok(id_of(todo_id))
    }

    /// Deletes the caller's completed todos; returns how many.
    async fn clear_completed_todos(&self, ctx: &Context<'_>) -> Result<i32> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let ids = db::todos::delete_completed(&app.db, user.id).await?;
        let count = ids.len();
        Ok(i32::try_from(count).unwrap_or(i32::MAX))
    }

    /// Marks all the caller's todos completed (or not); returns how many changed.
    async fn set_all_todos_completed(&self, ctx: &Context<'_>, completed: bool) -> Result<i32> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let changed = db::todos::set_all_completed(&app.db, user.id, completed).await?;
        let count = changed.len();
        Ok(i32::try_from(count).unwrap_or(i32::MAX))
    }
}
