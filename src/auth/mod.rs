//! Accounts: sign-up, log-in, password changes and revocation.

pub mod email;
pub mod guard;
pub mod password;
pub mod rate_limit;
pub mod token;
pub mod user_cache;

use crate::db::users::User;
use crate::db::{self, Db};
use crate::error::{AppError, AppResult};
use password::PasswordHasher;
use rate_limit::ClientAddr;
use token::{IssuedToken, TokenKeys};

/// The same answer for an unknown email and a wrong password.
pub const INVALID_CREDENTIALS: &str = "Invalid email or password";
pub const WRONG_PASSWORD: &str = "The password is not correct";

/// What the account flows need besides the database.
pub struct Auth {
    pub hasher: PasswordHasher,
    pub tokens: TokenKeys,
    pub limiter: rate_limit::Limiter,
}

pub struct SignedIn {
    pub token: IssuedToken,
    pub user: User,
}

impl Auth {
    #[tracing::instrument(skip_all)]
    pub async fn signup(
        &self,
        db: &Db,
        email: &str,
        password: &str,
        client: Option<ClientAddr>,
    ) -> AppResult<SignedIn> {
        let email = email::normalize(email)?;
        password::validate("password", password)?;
        // Counted once the input is valid, before the hash: the hash is
        // what an attacker would be spending.
        self.limiter.admit_signup(db, client).await?;
        let hash = self.hasher.hash(password, client).await?;
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
        client: Option<ClientAddr>,
    ) -> AppResult<SignedIn> {
        let attempt = self.limiter.admit(db, email, client).await?;
        // Malformed input answers like a wrong password, after the same work,
        // so nothing about the account can be told from the reply or its time.
        let account = match email::normalize(email) {
            Ok(email) => db::users::find_by_email(db, &email).await?,
            Err(_) => None,
        };
        let acceptable = password::validate("password", password).is_ok();
        let verified = match &account {
            Some((_, hash)) if acceptable => self.hasher.verify(password, hash, client).await?,
            _ => self.hasher.verify_dummy(password, client).await?,
        };
        match account {
            Some((user, hash)) if verified => {
                attempt.succeeded(db).await?;
                self.rehash_if_cost_changed(db, &user, password, &hash, client).await;
                self.sign_in(user)
            }
            _ => Err(AppError::Unauthenticated(INVALID_CREDENTIALS)),
        }
    }

    /// After `BCRYPT_COST` changed, each account moves to the new cost the
    /// next time its owner signs in: the only moment the password is known.
    /// A failure here is logged, never fatal: the login itself succeeded.
    async fn rehash_if_cost_changed(
        &self,
        db: &Db,
        user: &User,
        password: &str,
        hash: &str,
        client: Option<ClientAddr>,
    ) {
        if password::hash_cost(hash) == Some(self.hasher.cost()) {
            return;
        }
        let result = async {
            let new_hash = self.hasher.hash(password, client).await?;
            db::users::replace_hash(db, user.id, hash, &new_hash).await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(user_id = %user.id.0, cost = self.hasher.cost(), "password rehashed"),
            Err(error) => tracing::warn!(user_id = %user.id.0, ?error, "rehashing the password failed"),
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
        client: Option<ClientAddr>,
    ) -> AppResult<SignedIn> {
        password::validate("newPassword", new)?;
        let old_hash = self.verified_hash(db, user, current, client).await?;
        let new_hash = self.hasher.hash(new, client).await?;
        let user = db::users::change_password(db, user.id, &old_hash, &new_hash)
            .await?
            .ok_or(AppError::Unauthenticated(WRONG_PASSWORD))?;
        self.sign_in(user)
    }

    /// Deletes the account and its todos.
    #[tracing::instrument(skip_all, fields(user_id = %user.id.0))]
    pub async fn delete_account(
        &self,
        db: &Db,
        user: &User,
        password: &str,
        client: Option<ClientAddr>,
    ) -> AppResult<()> {
        let hash = self.verified_hash(db, user, password, client).await?;
        db::users::delete(db, user.id, &hash).await?.ok_or(AppError::Unauthenticated(WRONG_PASSWORD))?;
        tracing::info!("account deleted");
        Ok(())
    }

    /// The stored hash, once `password` is shown to match it. Each call is
    /// an attempt on the account's email and the client's address, like a
    /// login: a stolen token must not become a password-guessing oracle.
    async fn verified_hash(
        &self,
        db: &Db,
        user: &User,
        password: &str,
        client: Option<ClientAddr>,
    ) -> AppResult<String> {
        let attempt = self.limiter.admit_password_check(db, user, client).await?;
        let hash =
            db::users::password_hash(db, user.id).await?.ok_or(AppError::Unauthenticated(WRONG_PASSWORD))?;
        let matches = password.len() <= password::MAX_PASSWORD_BYTES
            && self.hasher.verify(password, &hash, client).await?;
        if !matches {
            return Err(AppError::Unauthenticated(WRONG_PASSWORD));
        }
        attempt.succeeded(db).await?;
        Ok(hash)
    }

    fn sign_in(&self, user: User) -> AppResult<SignedIn> {
        let token = self.tokens.issue(&user)?;
        Ok(SignedIn { token, user })
    }
}

/// Points the dummy hash of unknown-email logins at the cost most stored
/// hashes have. Run at start and every few minutes (hashes move to a new
/// `BCRYPT_COST` as their owners sign in).
pub async fn follow_stored_hash_cost(auth: &Auth, db: &Db) {
    match db::users::most_common_hash_cost(db).await {
        Ok(Some(cost)) => auth.hasher.set_dummy_cost(cost),
        Ok(None) => auth.hasher.set_dummy_cost(auth.hasher.cost()),
        Err(error) => tracing::warn!(?error, "reading the stored hashes' cost failed"),
    }
}
