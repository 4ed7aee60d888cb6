//! Accounts: sign-up, log-in, password changes and revocation.

pub mod email;
pub mod guard;
pub mod password;
pub mod rate_limit;
pub mod token;
pub mod user_cache;

use crate::db::types::DbId;
use crate::db::users::User;
use crate::db::{self, Db};
use crate::error::{AppError, AppResult};
use password::PasswordHasher;
use token::{IssuedToken, TokenKeys};

/// The same answer for an unknown email and a wrong password.
pub const INVALID_CREDENTIALS: &str = "Invalid email or password";
pub const WRONG_PASSWORD: &str = "The password is not correct";

/// What the account flows need besides the database.
pub struct Auth {
    pub hasher: PasswordHasher,
    pub tokens: TokenKeys,
    pub login_limits: rate_limit::LoginLimits,
}

pub struct SignedIn {
    pub token: IssuedToken,
    pub user: User,
}

impl Auth {
    #[tracing::instrument(skip_all)]
    pub async fn signup(&self, db: &Db, email: &str, password: &str) -> AppResult<SignedIn> {
        let email = email::normalize(email)?;
        password::validate("password", password)?;
        let hash = self.hasher.hash(password).await?;
        let user = db::users::insert(db, &email, &hash).await?;
        tracing::info!(user_id = %user.id.0, "account created");
        self.sign_in(user)
    }

    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        db: &Db,
        email: &str,
        password: &str,
        client: Option<rate_limit::ClientAddr>,
    ) -> AppResult<SignedIn> {
        let attempt = self.login_limits.admit(db, email, client).await?;
        // Malformed input answers like a wrong password, after the same work,
        // so nothing about the account can be told from the reply or its time.
        let account = match email::normalize(email) {
            Ok(email) => db::users::find_by_email(db, &email).await?,
            Err(_) => None,
        };
        let acceptable = password::validate("password", password).is_ok();
        let verified = match &account {
            Some((_, hash)) if acceptable => self.hasher.verify(password, hash).await?,
            _ => self.hasher.verify_dummy(password).await?,
        };
        match account {
            Some((user, _)) if verified => {
                attempt.succeeded(db).await?;
                self.sign_in(user)
            }
            _ => Err(AppError::Unauthenticated(INVALID_CREDENTIALS)),
        }
    }

    /// Checks the current password, stores the new one and revokes every
    /// token issued before; returns a fresh token.
    #[tracing::instrument(skip_all, fields(user_id = %user.id.0))]
    pub async fn change_password(
        &self,
        db: &Db,
        user: &User,
        current: &str,
        new: &str,
    ) -> AppResult<SignedIn> {
        password::validate("newPassword", new)?;
        let old_hash = self.verified_hash(db, user.id, current).await?;
        let new_hash = self.hasher.hash(new).await?;
        let user = db::users::change_password(db, user.id, &old_hash, &new_hash)
            .await?
            .ok_or(AppError::Unauthenticated(WRONG_PASSWORD))?;
        self.sign_in(user)
    }

    /// Deletes the account and its todos.
    #[tracing::instrument(skip_all, fields(user_id = %user.id.0))]
    pub async fn delete_account(&self, db: &Db, user: &User, password: &str) -> AppResult<()> {
        let hash = self.verified_hash(db, user.id, password).await?;
        db::users::delete(db, user.id, &hash).await?.ok_or(AppError::Unauthenticated(WRONG_PASSWORD))?;
        tracing::info!("account deleted");
        Ok(())
    }

    /// The stored hash, once `password` is shown to match it.
    async fn verified_hash(&self, db: &Db, user_id: DbId, password: &str) -> AppResult<String> {
        let hash =
            db::users::password_hash(db, user_id).await?.ok_or(AppError::Unauthenticated(WRONG_PASSWORD))?;
        let matches =
            password.len() <= password::MAX_PASSWORD_BYTES && self.hasher.verify(password, &hash).await?;
        if !matches {
            return Err(AppError::Unauthenticated(WRONG_PASSWORD));
        }
        Ok(hash)
    }

    fn sign_in(&self, user: User) -> AppResult<SignedIn> {
        let token = self.tokens.issue(&user)?;
        Ok(SignedIn { token, user })
    }
}
