//! Change events for `todoEvents`, announced by committed writes.
//!
//! A write that changes todos (or revokes tokens) produces a [`Notice`]. On
//! SQLite the notice goes straight to this process's [`Hub`] after the commit,
//! while the single writer connection is still held, so notices leave in
//! commit order. On PostgreSQL the notice is a `NOTIFY` inside the writing
//! transaction and every instance's listener feeds it to its own hub:
//! PostgreSQL delivers notifications in commit order, to every instance.

pub mod hub;
pub mod postgres;

pub use hub::{ConnectionId, Hub, HubLimits, HubMessage, HubSubscription, Origin, SocketSlot};

use crate::db::types::DbId;
use crate::todos::Todo;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TodoChange {
    Created(Todo),
    Updated(Todo),
    Deleted(DbId),
}

impl TodoChange {
    pub fn todo_id(&self) -> DbId {
        match self {
            Self::Created(todo) | Self::Updated(todo) => todo.id,
            Self::Deleted(id) => *id,
        }
    }
}

/// What one committed write announces to one user's subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub owner: DbId,
    pub changes: Vec<TodoChange>,
    /// Tokens with a lower version than this were just revoked.
    pub revoked_below: Option<i32>,
}

impl Notice {
    pub fn changes(owner: DbId, changes: Vec<TodoChange>) -> Self {
        Self { owner, changes, revoked_below: None }
    }

    pub fn revoked(owner: DbId, version: i32) -> Self {
        Self { owner, changes: Vec::new(), revoked_below: Some(version) }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.revoked_below.is_none()
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard returned by wait_for is not Send: drop it here.
    let _ = shutdown.wait_for(|stopping| *stopping).await.map(|_| ());
}
