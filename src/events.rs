//! Todo change events, published after the write commits.
//!
//! Within one process a broadcast channel fans events out to subscriptions;
//! each subscription keeps only its own user's events.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::db::types::DbId;
use crate::todos::Todo;

/// How many events a subscriber may fall behind before it is dropped: memory
/// stays bounded whatever a slow client does.
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub enum TodoChange {
    Created(Todo),
    Updated(Todo),
    Deleted(DbId),
}

#[derive(Debug, Clone)]
pub struct TodoEvent {
    pub owner: DbId,
    pub change: TodoChange,
}

#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<TodoEvent>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self { sender }
    }

    /// Publishes the changes of one committed write, in order.
    pub fn publish(&self, owner: DbId, changes: impl IntoIterator<Item = TodoChange>) {
        for change in changes {
            // No receivers is not an error: nobody is listening.
            let _ = self.sender.send(Arc::new(TodoEvent { owner, change }));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TodoEvent>> {
        self.sender.subscribe()
    }
}
