//! `todoEvents`: live changes to the caller's todos.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Enum, ID, Object, Result, Subscription};
use futures_util::Stream;

use super::ContextExt as _;
use super::todo::{Todo, id_of};
use crate::app::App;
use crate::auth::guard::{self, TOKEN_EXPIRED, TOKEN_REVOKED, TokenSession};
use crate::auth::rate_limit::ClientAddr;
use crate::error::AppError;
use crate::events::{ConnectionId, HubMessage, Origin, TodoChange};

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum TodoEventKind {
    Created,
    Updated,
    Deleted,
}

pub struct TodoEvent(Arc<TodoChange>);

#[Object(name = "TodoEvent")]
impl TodoEvent {
    async fn kind(&self) -> TodoEventKind {
        match *self.0 {
            TodoChange::Created(_) => TodoEventKind::Created,
            TodoChange::Updated(_) => TodoEventKind::Updated,
            TodoChange::Deleted(_) => TodoEventKind::Deleted,
        }
    }

    async fn todo_id(&self) -> ID {
        id_of(self.0.todo_id())
    }

    /// The todo after the change; null for DELETED.
    async fn todo(&self) -> Option<Todo> {
        match &*self.0 {
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
    async fn todo_events(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = Result<TodoEvent>> + use<>> {
        let user = ctx.current_user()?;
        let owner = user.id;
        let app: Arc<App> = Arc::clone(ctx.data_unchecked::<Arc<App>>());
        let session = ctx.data_opt::<TokenSession>().copied();
        // Subscribe first, then check the token: a revocation published after
        // the subscription registered arrives on it as `Revoked`, and one
        // published before it has already evicted the account cache, so the
        // check sees it. Checking first would leave a gap in which a
        // revocation is missed until the next recheck.
        // Over a WebSocket the connection and client address are in its data.
        let origin = Origin {
            connection: ctx.data_opt::<ConnectionId>().copied(),
            address: ctx.data_opt::<ClientAddr>().copied(),
        };
        let mut subscription = app.db.hub.subscribe(owner, origin)?;
        if let Some(session) = session {
            guard::check_session(&app.db, session).await?;
        }
        let recheck = app.config.subscription_recheck;
        Ok(async_stream::stream! {
            let expiry = session.map_or(Duration::MAX, |s| seconds_until(s.expires_at));
            let expired = tokio::time::sleep(expiry.min(Duration::from_secs(365 * 86_400)));
            tokio::pin!(expired);
            let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + recheck, recheck);
            loop {
                tokio::select! {
                    message = subscription.recv() => match message {
                        HubMessage::Change(change) => yield Ok(TodoEvent(change)),
                        HubMessage::Revoked(below) => {
                            if session.is_some_and(|s| s.version < below) {
                                yield Err(AppError::Unauthenticated(TOKEN_REVOKED).into());
                                break;
                            }
                        }
                        HubMessage::Lost => {
                            yield Err(AppError::EventsLost.into());
                            break;
                        }
                        HubMessage::Shutdown => break,
                    },
                    () = &mut expired => {
                        yield Err(AppError::Unauthenticated(TOKEN_EXPIRED).into());
                        break;
                    }
                    _ = recheck.tick(), if session.is_some() => {
                        if let Some(session) = session {
                            if let Err(error) = guard::check_session(&app.db, session).await {
                                yield Err(error.into());
                                break;
                            }
                        }
                    }
                }
            }
        })
    }
}

fn seconds_until(unix_seconds: i64) -> Duration {
    let now = chrono::Utc::now().timestamp();
    Duration::from_secs(u64::try_from(unix_seconds.saturating_sub(now)).unwrap_or(0))
}
