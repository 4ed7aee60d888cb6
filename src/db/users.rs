//! Account queries.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;

use super::types::{DbId, DbTime};
use super::{Db, read, write, write_announced};
use crate::error::{AppError, AppResult};
use crate::events::{Notice, TodoChange};

/// An account as the rest of the server sees it: no password hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct User {
    pub id: DbId,
    pub email: String,
    pub token_version: i32,
    pub created_at: DbTime,
}

macro_rules! user_columns {
    () => {
        (users::id, users::email, users::token_version, users::created_at)
    };
}

pub const EMAIL_TAKEN: &str = "An account with this email already exists";

/// Creates an account. A taken email, including one taken by a concurrent
/// signup a moment earlier, is CONFLICT: the unique index decides.
pub async fn insert(db: &Db, email: &str, password_hash: &str) -> AppResult<User> {
    let now = DbTime::now();
    let id = DbId::new();
    let result: Result<User, DieselError> = write!(db, |conn| {
        diesel::insert_into(users::table)
            .values((
                users::id.eq(id),
                users::email.eq(email),
                users::password_hash.eq(password_hash),
                users::token_version.eq(0),
                users::created_at.eq(now),
                users::updated_at.eq(now),
            ))
            .returning(user_columns!())
            .get_result::<User>(conn)
            .await
    });
    result.map_err(|error| match error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => AppError::Conflict(EMAIL_TAKEN),
        other => other.into(),
    })
}

pub async fn find(db: &Db, id: DbId) -> AppResult<Option<User>> {
    read!(db, |conn| {
        Ok(users::table.find(id).select(user_columns!()).first::<User>(conn).await.optional()?)
    })
}

/// The account and its password hash, for login.
pub async fn find_by_email(db: &Db, email: &str) -> AppResult<Option<(User, String)>> {
    read!(db, |conn| {
        Ok(users::table
            .filter(users::email.eq(email))
            .select((user_columns!(), users::password_hash))
            .first::<(User, String)>(conn)
            .await
            .optional()?)
    })
}

pub async fn password_hash(db: &Db, id: DbId) -> AppResult<Option<String>> {
    read!(db, |conn| {
        Ok(users::table.find(id).select(users::password_hash).first::<String>(conn).await.optional()?)
    })
}

/// Replaces the hash and revokes every earlier token, provided the hash is
/// still `old_hash` (two concurrent changes cannot both win). `None` when the
/// account is gone or its password changed in between.
pub async fn change_password(db: &Db, id: DbId, old_hash: &str, new_hash: &str) -> AppResult<Option<User>> {
    let now = DbTime::now();
    write_announced!(db, |conn| {
        let user =
            diesel::update(users::table.filter(users::id.eq(id).and(users::password_hash.eq(old_hash))))
                .set((
                    users::password_hash.eq(new_hash),
                    users::token_version.eq(users::token_version + 1),
                    users::updated_at.eq(now),
                ))
                .returning(user_columns!())
                .get_result::<User>(conn)
                .await
                .optional()?;
        Ok((user.clone(), revocation(id, user.as_ref())))
    })
}

/// Replaces the hash with the same password hashed at another cost, provided
/// it is still `old_hash`. Tokens stay valid: the password did not change.
pub async fn replace_hash(db: &Db, id: DbId, old_hash: &str, new_hash: &str) -> AppResult<()> {
    write!(db, |conn| {
        diesel::update(users::table.filter(users::id.eq(id).and(users::password_hash.eq(old_hash))))
            .set(users::password_hash.eq(new_hash))
            .execute(conn)
            .await?;
        Ok(())
    })
}

/// The bcrypt cost most stored hashes have (`$2b$NN$…`), if any account exists.
pub async fn most_common_hash_cost(db: &Db) -> AppResult<Option<u32>> {
    #[derive(QueryableByName)]
    struct Cost {
        #[diesel(sql_type = diesel::sql_types::Text)]
        cost: String,
    }
    // Same text on both backends: substr and GROUP BY mean the same there.
    const SQL: &str = "SELECT substr(password_hash, 5, 2) AS cost FROM users \
                       GROUP BY substr(password_hash, 5, 2) ORDER BY count(*) DESC LIMIT 1";
    let row: AppResult<Option<Cost>> =
        read!(db, |conn| Ok(diesel::sql_query(SQL).get_result::<Cost>(conn).await.optional()?));
    let row = row?;
    Ok(row.and_then(|row| row.cost.parse().ok()))
}

/// Revokes every token issued so far. `None` when the account is gone.
pub async fn bump_token_version(db: &Db, id: DbId) -> AppResult<Option<User>> {
    let now = DbTime::now();
    write_announced!(db, |conn| {
        let user = diesel::update(users::table.find(id))
            .set((users::token_version.eq(users::token_version + 1), users::updated_at.eq(now)))
            .returning(user_columns!())
            .get_result::<User>(conn)
            .await
            .optional()?;
        Ok((user.clone(), revocation(id, user.as_ref())))
    })
}

/// Tells the user's live subscriptions that older tokens stopped working.
fn revocation(id: DbId, user: Option<&User>) -> Notice {
    match user {
        Some(user) => Notice::revoked(id, user.token_version),
        None => Notice::changes(id, Vec::new()),
    }
}

/// Deletes the account (its todos go with it, ON DELETE CASCADE) provided the
/// password hash is still the one that was verified. Returns the ids of the
/// todos that were deleted with it.
pub async fn delete(db: &Db, id: DbId, verified_hash: &str) -> AppResult<Option<Vec<DbId>>> {
    write_announced!(db, |conn| {
        let todo_ids =
            todos::table.filter(todos::owner_id.eq(id)).select(todos::id).load::<DbId>(conn).await?;
        let deleted =
            diesel::delete(users::table.filter(users::id.eq(id).and(users::password_hash.eq(verified_hash))))
                .execute(conn)
                .await?;
        if deleted == 1 {
            // Every todo went with the account, and so did every token.
            let changes = todo_ids.iter().copied().map(TodoChange::Deleted).collect();
            Ok((Some(todo_ids), Notice { owner: id, changes, revoked_below: Some(i32::MAX) }))
        } else {
            Ok((None, Notice::changes(id, Vec::new())))
        }
    })
}
