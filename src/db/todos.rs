//! Todo queries. Every statement has `owner_id = <caller>` in its WHERE
//! clause: a todo of another user is never read, changed or even counted.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::types::{DbId, DbTime};
use super::{Db, Pools, read, write_announced};
use crate::error::{AppError, AppResult};
use crate::events::{Notice, TodoChange};
use crate::todos::{
    CursorKey, Direction, NewTodo, OrderField, PageRequest, Todo, TodoFilter, TodoPatch, fold,
};

/// The columns of [`Todo`], for whichever backend's `todos` is in scope.
macro_rules! todo_columns {
    () => {
        (todos::id, todos::title, todos::description, todos::completed, todos::created_at, todos::updated_at)
    };
}

/// Narrows a boxed query on `todos` to the rows matching `$filter`.
///
/// The search is a plain substring test (`instr` on SQLite, `strpos` on
/// PostgreSQL), not `LIKE '%term%'`: both engines' LIKE backtrack at every
/// `%`, so a term like `aaa…ab` against a description of `aaa…a` costs
/// description × term steps per row (1–2 ms a row at 1,000 characters, tens
/// of seconds for one user's todos, many times over in one aliased request,
/// while the connection it holds is denied to everyone else). The substring
/// functions are about fifty times faster on that input on SQLite, four on
/// PostgreSQL; [`crate::todos::SEARCH_MAX_CHARS`] bounds the rest.
macro_rules! apply_filter {
    ($query:ident, $filter:expr) => {{
        let filter: &TodoFilter = $filter;
        if let Some(completed) = filter.completed {
            $query = $query.filter(todos::completed.eq(completed));
        }
        if let Some(term) = &filter.search {
            $query = $query.filter(
                substring_position(todos::title_search, term.clone()).gt(0).or(substring_position(
                    todos::description_search,
                    term.clone(),
                )
                .gt(0)),
            );
        }
    }};
}

/// Orders by `$column` then id, and seeks past the cursor. The seek is written
/// `key >= k AND (key > k OR id > i)` rather than as an OR alone so that the
/// first conjunct bounds the index range scan on (owner_id, key, id).
macro_rules! order_and_seek {
    ($query:ident, $column:expr, $direction:expr, $after:expr) => {{
        match $direction {
            Direction::Asc => {
                if let Some((key, id)) = $after {
                    $query = $query.filter($column.ge(key.clone()).and($column.gt(key).or(todos::id.gt(id))));
                }
                $query.order_by(($column.asc(), todos::id.asc()))
            }
            Direction::Desc => {
                if let Some((key, id)) = $after {
                    $query = $query.filter($column.le(key.clone()).and($column.lt(key).or(todos::id.lt(id))));
                }
                $query.order_by(($column.desc(), todos::id.desc()))
            }
        }
    }};
}

pub async fn find(db: &Db, owner: DbId, id: DbId) -> AppResult<Option<Todo>> {
    read!(db, |conn| {
        Ok(todos::table
            .filter(todos::owner_id.eq(owner).and(todos::id.eq(id)))
            .select(todo_columns!())
            .first::<Todo>(conn)
            .await
            .optional()?)
    })
}

/// Up to `page.first + 1` todos after the cursor: the extra row only tells
/// whether there is a next page.
pub async fn list(db: &Db, owner: DbId, page: &PageRequest) -> AppResult<Vec<Todo>> {
    let limit = i64::try_from(page.first + 1).unwrap_or(i64::MAX);
    let after = page.after.as_ref().map(|c| (c.key.clone(), c.id));
    read!(db, |conn| {
        let mut query = todos::table.filter(todos::owner_id.eq(owner)).select(todo_columns!()).into_boxed();
        apply_filter!(query, &page.filter);
        let time_after = |after: Option<(CursorKey, DbId)>| match after {
            Some((CursorKey::Time(t), id)) => Some((t, id)),
            _ => None,
        };
        let query = match page.order.field {
            OrderField::CreatedAt => {
                order_and_seek!(query, todos::created_at, page.order.direction, time_after(after))
            }
            OrderField::UpdatedAt => {
                order_and_seek!(query, todos::updated_at, page.order.direction, time_after(after))
            }
            OrderField::Title => {
                let after = match after {
                    Some((CursorKey::Title(t), id)) => Some((t, id)),
                    _ => None,
                };
                order_and_seek!(query, todos::title, page.order.direction, after)
            }
        };
        Ok(query.limit(limit).load::<Todo>(conn).await?)
    })
}

pub async fn count(db: &Db, owner: DbId, filter: &TodoFilter) -> AppResult<i64> {
    read!(db, |conn| {
        let mut query = todos::table.filter(todos::owner_id.eq(owner)).into_boxed();
        apply_filter!(query, filter);
        Ok(query.count().get_result::<i64>(conn).await?)
    })
}

/// Inserts a todo unless the owner already has `limit` of them
/// (`QUOTA_EXCEEDED`, nothing written).
///
/// The quota is checked inside the insert's transaction, with the owner's
/// creates serialised, so concurrent creates cannot overshoot it: SQLite has
/// one writer and `BEGIN IMMEDIATE`; on PostgreSQL the owner's `users` row is
/// locked (`FOR NO KEY UPDATE`: it queues the owner's other creates, on any
/// instance, but not the foreign-key checks of their inserts). Holding every
/// user to `MAX_TODOS_PER_USER` also bounds what one user's `search` and
/// `totalCount` can ever scan.
pub async fn insert(db: &Db, owner: DbId, new: NewTodo, limit: Option<u32>) -> AppResult<Todo> {
    let now = DbTime::now();
    let id = DbId::new();
    let title_search = fold(&new.title);
    let description_search = new.description.as_deref().map(fold).unwrap_or_default();
    let is_postgres = matches!(db.pools, Pools::Postgres(_));
    let owner_text = owner.0.hyphenated().to_string();
    write_announced!(db, |conn| {
        if let Some(limit) = limit {
            if is_postgres {
                // Bound as text so that this one body compiles for both
                // backends (it only runs on PostgreSQL).
                diesel::sql_query("SELECT 1 FROM users WHERE id = $1::uuid FOR NO KEY UPDATE")
                    .bind::<diesel::sql_types::Text, _>(&owner_text)
                    .execute(conn)
                    .await?;
            }
            // Is there a `limit`-th todo? Like a count scoped to the owner,
            // but it reads at most `limit` index entries even for an owner
            // who is above a limit that was lowered.
            let at_limit = todos::table
                .filter(todos::owner_id.eq(owner))
                .select(todos::id)
                .offset(i64::from(limit) - 1)
                .limit(1)
                .first::<DbId>(conn)
                .await
                .optional()?
                .is_some();
            if at_limit {
                return Err(AppError::QuotaExceeded { limit });
            }
        }
        let todo = diesel::insert_into(todos::table)
            .values((
                todos::id.eq(id),
                todos::owner_id.eq(owner),
                todos::title.eq(&new.title),
                todos::description.eq(&new.description),
                todos::completed.eq(new.completed),
                todos::title_search.eq(&title_search),
                todos::description_search.eq(&description_search),
                todos::created_at.eq(now),
                todos::updated_at.eq(now),
            ))
            .returning(todo_columns!())
            .get_result::<Todo>(conn)
            .await?;
        Ok((todo.clone(), Notice::changes(owner, vec![TodoChange::Created(todo)])))
    })
}

/// Applies the patch and bumps `updated_at`; `None` when the caller owns no
/// todo with that id.
pub async fn update(db: &Db, owner: DbId, id: DbId, patch: TodoPatch) -> AppResult<Option<Todo>> {
    let now = DbTime::now();
    let title_search = patch.title.as_deref().map(fold);
    let description_search = patch.description.as_ref().map(|d| d.as_deref().map(fold).unwrap_or_default());
    write_announced!(db, |conn| {
        let todo = diesel::update(todos::table.filter(todos::owner_id.eq(owner).and(todos::id.eq(id))))
            .set((
                patch.title.as_ref().map(|t| todos::title.eq(t)),
                title_search.as_ref().map(|t| todos::title_search.eq(t)),
                patch.description.as_ref().map(|d| todos::description.eq(d)),
                description_search.as_ref().map(|d| todos::description_search.eq(d)),
                patch.completed.map(|c| todos::completed.eq(c)),
                todos::updated_at.eq(now),
            ))
            .returning(todo_columns!())
            .get_result::<Todo>(conn)
            .await
            .optional()?;
        let changes = todo.iter().cloned().map(TodoChange::Updated).collect();
        Ok((todo, Notice::changes(owner, changes)))
    })
}

/// `true` when the caller's todo existed and is now gone.
pub async fn delete(db: &Db, owner: DbId, id: DbId) -> AppResult<bool> {
    write_announced!(db, |conn| {
        let deleted = diesel::delete(todos::table.filter(todos::owner_id.eq(owner).and(todos::id.eq(id))))
            .execute(conn)
            .await?
            > 0;
        let changes = if deleted { vec![TodoChange::Deleted(id)] } else { Vec::new() };
        Ok((deleted, Notice::changes(owner, changes)))
    })
}

/// Deletes the caller's completed todos; returns their ids.
pub async fn delete_completed(db: &Db, owner: DbId) -> AppResult<Vec<DbId>> {
    write_announced!(db, |conn| {
        let ids =
            diesel::delete(todos::table.filter(todos::owner_id.eq(owner).and(todos::completed.eq(true))))
                .returning(todos::id)
                .get_results::<DbId>(conn)
                .await?;
        let changes = ids.iter().copied().map(TodoChange::Deleted).collect();
        Ok((ids, Notice::changes(owner, changes)))
    })
}

/// Sets `completed` on every todo of the caller that differs; returns the
/// todos that changed.
pub async fn set_all_completed(db: &Db, owner: DbId, completed: bool) -> AppResult<Vec<Todo>> {
    let now = DbTime::now();
    write_announced!(db, |conn| {
        let changed = diesel::update(
            todos::table.filter(todos::owner_id.eq(owner).and(todos::completed.ne(completed))),
        )
        .set((todos::completed.eq(completed), todos::updated_at.eq(now)))
        .returning(todo_columns!())
        .get_results::<Todo>(conn)
        .await?;
        let changes = changed.iter().cloned().map(TodoChange::Updated).collect();
        Ok((changed, Notice::changes(owner, changes)))
    })
}
