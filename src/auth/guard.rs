//! From an `Authorization` value to the signed-in user.

use crate::db::types::DbId;
use crate::db::users::User;
use crate::db::{self, Db};
use crate::error::{AppError, AppResult};

use super::token::{Claims, INVALID_TOKEN, TokenKeys};

/// What a WebSocket connection remembers of the token it was opened with, so
/// that each of its operations, and its subscriptions while they run, can be
/// refused once the token expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSession {
    pub user_id: DbId,
    /// Unix seconds.
    pub expires_at: i64,
    pub version: i32,
}

pub const TOKEN_EXPIRED: &str = "The token expired; reconnect with a fresh one";
pub const TOKEN_REVOKED: &str = "The token was revoked; sign in again";

/// The token in an `Authorization: Bearer <token>` value. A missing header or
/// an empty token (GraphiQL's prefilled `Bearer `) means anonymous; any other
/// scheme is refused rather than ignored.
pub fn bearer_token(value: Option<&str>) -> AppResult<Option<&str>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::Unauthenticated("Authorization must use the Bearer scheme"));
    }
    let token = token.trim();
    Ok(if token.is_empty() { None } else { Some(token) })
}

/// Verifies the token and loads its user, refusing tokens whose user was
/// deleted or whose version predates a password change or logoutEverywhere.
#[tracing::instrument(skip_all)]
pub async fn authenticate(db: &Db, keys: &TokenKeys, token: &str) -> AppResult<User> {
    authenticate_session(db, keys, token).await.map(|(user, _)| user)
}

/// [`authenticate`], also returning the token's expiry and version.
pub async fn authenticate_session(db: &Db, keys: &TokenKeys, token: &str) -> AppResult<(User, TokenSession)> {
    let claims: Claims = keys.verify(token)?;
    let user_id = claims.user_id().ok_or(AppError::Unauthenticated(INVALID_TOKEN))?;
    let user = current_account(db, user_id).await?.ok_or(AppError::Unauthenticated(INVALID_TOKEN))?;
    if user.token_version != claims.ver {
        return Err(AppError::Unauthenticated(INVALID_TOKEN));
    }
    Ok((user, TokenSession { user_id, expires_at: claims.exp, version: claims.ver }))
}

/// The account as it is now. While the event bus is live the account cache
/// answers (every revocation and deletion evicts its entry on every
/// instance), so checking a token costs no database round trip.
pub async fn current_account(db: &Db, user_id: DbId) -> AppResult<Option<User>> {
    if let Some(user) = db.hub.is_live().then(|| db.hub.users.get(user_id)).flatten() {
        return Ok(Some(user));
    }
    // Read before the lookup: an eviction (or the bus going down or coming
    // back) during it means what was read may be stale, and is not stored.
    let epoch = db.hub.users.epoch();
    let user = db::users::find(db, user_id).await?;
    if let Some(user) = &user
        && db.hub.is_live()
    {
        db.hub.users.insert(user.clone(), epoch);
    }
    Ok(user)
}

/// A token accepted earlier (when a WebSocket opened) is still good now:
/// unexpired, its account still there and not revoked since. The same rules
/// as [`authenticate_session`] applies to a fresh token, so an operation on
/// an old socket is refused exactly when it would be over HTTP.
pub async fn check_session(db: &Db, session: TokenSession) -> AppResult<()> {
    // jsonwebtoken (leeway 0) accepts a token until `now > exp`: the same here.
    if session.expires_at < chrono::Utc::now().timestamp() {
        return Err(AppError::Unauthenticated(TOKEN_EXPIRED));
    }
    match current_account(db, session.user_id).await? {
        Some(user) if user.token_version == session.version => Ok(()),
        _ => Err(AppError::Unauthenticated(TOKEN_REVOKED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer_token(None).ok(), Some(None));
        assert_eq!(bearer_token(Some("")).ok(), Some(None));
        assert_eq!(bearer_token(Some("Bearer ")).ok(), Some(None));
        assert_eq!(bearer_token(Some("Bearer")).ok(), Some(None));
        assert_eq!(bearer_token(Some("Bearer abc")).ok(), Some(Some("abc")));
        assert_eq!(bearer_token(Some("bearer  abc ")).ok(), Some(Some("abc")));
        assert!(bearer_token(Some("Basic dXNlcjpwdw==")).is_err());
        assert!(bearer_token(Some("abc.def.ghi")).is_err());
    }
}
