//! `todoEvents`: live changes to the caller's todos.

use async_graphql::{Context, Enum, ID, Object, Result, Subscription};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::ContextExt as _;
use super::todo::{Todo, id_of};
use crate::error::AppError;
use crate::events::{self, TodoChange};

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum TodoEventKind {
    Created,
    Updated,
    Deleted,
}

pub struct TodoEvent(std::sync::Arc<events::TodoEvent>);

#[Object(name = "TodoEvent")]
impl TodoEvent {
    async fn kind(&self) -> TodoEventKind {
        match self.0.change {
            TodoChange::Created(_) => TodoEventKind::Created,
            TodoChange::Updated(_) => TodoEventKind::Updated,
            TodoChange::Deleted(_) => TodoEventKind::Deleted,
        }
    }

    async fn todo_id(&self) -> ID {
        match &self.0.change {
            TodoChange::Created(todo) | TodoChange::Updated(todo) => id_of(todo.id),
            TodoChange::Deleted(id) => id_of(*id),
        }
    }

    /// The todo after the change; null for DELETED.
    async fn todo(&self) -> Option<Todo> {
        match &self.0.change {
            TodoChange::Created(todo) | TodoChange::Updated(todo) => Some(Todo(todo.clone())),
            TodoChange::Deleted(_) => None,
        }
    }
}

#[derive(Default)]
pub struct Subscription;

#[Subscription]
impl Subscription {
    /// Changes to the caller's own todos, from any server instance. Auth via connection_init payload.
    async fn todo_events(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<TodoEvent>> + use<>> {
        let owner = ctx.current_user()?.id;
        let receiver = ctx.app().events.subscribe();
        Ok(futures_util::stream::unfold(
            Some(receiver),
            move |state| async move {
                let mut receiver = state?;
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.owner == owner => {
                            return Some((Ok(TodoEvent(event)), Some(receiver)));
                        }
                        Ok(_) => continue,
                        // Dropped events cannot be replayed: end the stream with an
                        // error so the client re-fetches instead of drifting.
                        Err(RecvError::Lagged(_)) => {
                            return Some((Err(AppError::SubscriberLagged.into()), None));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}
