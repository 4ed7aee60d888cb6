//! From an `Authorization` value to the signed-in user.

use crate::db::users::User;
use crate::db::{self, Db};
use crate::error::{AppError, AppResult};

use super::token::{INVALID_TOKEN, TokenKeys};

/// The token in an `Authorization: Bearer <token>` value. A missing header or
/// an empty token (GraphiQL's prefilled `Bearer `) means anonymous; any other
/// scheme is refused rather than ignored.
pub fn bearer_token(value: Option<&str>) -> AppResult<Option<&str>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::Unauthenticated(
            "Authorization must use the Bearer scheme",
        ));
    }
    let token = token.trim();
    Ok(if token.is_empty() { None } else { Some(token) })
}

/// Verifies the token and loads its user, refusing tokens whose user was
/// deleted or whose version predates a password change or logoutEverywhere.
#[tracing::instrument(skip_all)]
pub async fn authenticate(db: &Db, keys: &TokenKeys, token: &str) -> AppResult<User> {
    let claims = keys.verify(token)?;
    let user_id = claims
        .user_id()
        .ok_or(AppError::Unauthenticated(INVALID_TOKEN))?;
    let user = db::users::find(db, user_id)
        .await?
        .ok_or(AppError::Unauthenticated(INVALID_TOKEN))?;
    if user.token_version != claims.ver {
        return Err(AppError::Unauthenticated(INVALID_TOKEN));
    }
    Ok(user)
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
