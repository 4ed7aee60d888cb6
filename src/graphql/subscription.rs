//! `todoEvents`: live changes to the caller's todos.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Enum, ID, Object, Result, Subscription};
use futures_util::Stream;

use super::ContextExt as _;
use super::todo::{Todo, id_of};
use crate::app::App;
use crate::auth::guard::TokenSession;
use crate::db::types::DbId;
use crate::db::users;
use crate::error::AppError;
use crate::events::{HubMessage, TodoChange};

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

const TOKEN_EXPIRED: &str = "The token expired; reconnect with a fresh one";
const TOKEN_REVOKED: &str = "The token was revoked; sign in again";

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
        // The connection was authenticated when it opened; a revocation since
        // then must also stop new subscriptions on it.
        if let Some(session) = session {
            check_session(&app, owner, session).await?;
        }
        let mut subscription = app.db.hub.subscribe(owner)?;
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
                            if let Err(error) = check_session(&app, owner, session).await {
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

/// The token is unexpired and its account exists with the same version.
async fn check_session(app: &App, owner: DbId, session: TokenSession) -> Result<(), AppError> {
    if seconds_until(session.expires_at).is_zero() {
        return Err(AppError::Unauthenticated(TOKEN_EXPIRED));
    }
    match users::find(&app.db, owner).await? {
        Some(user) if user.token_version == session.version => Ok(()),
        _ => Err(AppError::Unauthenticated(TOKEN_REVOKED)),
    }
}
