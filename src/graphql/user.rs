//! Accounts in the schema: `me` and the account mutations.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};

use super::ContextExt as _;
use super::scalars::DateTime;
use crate::auth::SignedIn;
use crate::auth::rate_limit::ClientAddr;
use crate::db::users;

/// An account. The password hash never leaves the database layer.
pub struct User(pub users::User);

#[Object(name = "User")]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.0.hyphenated().to_string())
    }

    async fn email(&self) -> &str {
        &self.0.email
    }

    async fn created_at(&self) -> DateTime {
        self.0.created_at.into()
    }
}

#[derive(SimpleObject)]
pub struct AuthPayload {
    /// A JWT (HS256) to send as 'Authorization: Bearer <token>'.
    token: String,
    expires_at: DateTime,
    user: User,
}

impl From<SignedIn> for AuthPayload {
    fn from(signed_in: SignedIn) -> Self {
        Self {
            token: signed_in.token.token,
            expires_at: signed_in.token.expires_at.into(),
            user: User(signed_in.user),
        }
    }
}

#[derive(InputObject)]
pub struct SignupInput {
    email: String,
    password: String,
}

#[derive(InputObject)]
pub struct LoginInput {
    email: String,
    password: String,
}

#[derive(InputObject)]
pub struct ChangePasswordInput {
    current_password: String,
    new_password: String,
}

#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The signed-in user. UNAUTHENTICATED without a valid token.
    async fn me(&self, ctx: &Context<'_>) -> Result<User> {
        Ok(User(ctx.current_user()?.clone()))
    }
}

#[derive(Default)]
pub struct UserMutation;

#[Object]
impl UserMutation {
    /// Create an account and sign in. CONFLICT if the email is taken.
    async fn signup(&self, ctx: &Context<'_>, input: SignupInput) -> Result<AuthPayload> {
        let app = ctx.app();
        let client = ctx.data_opt::<ClientAddr>().copied();
        Ok(app.auth.signup(&app.db, &input.email, &input.password, client).await?.into())
    }

    /// Sign in. UNAUTHENTICATED for an unknown email or a wrong password (same message for both).
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        let app = ctx.app();
        let client = ctx.data_opt::<ClientAddr>().copied();
        Ok(app.auth.login(&app.db, &input.email, &input.password, client).await?.into())
    }

    /// Changes the password; every token issued before stops working. Returns a fresh token.
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> Result<AuthPayload> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let client = ctx.data_opt::<ClientAddr>().copied();
        let signed_in = app
            .auth
            .change_password(&app.db, user, &input.current_password, &input.new_password, client)
            .await?;
        Ok(signed_in.into())
    }

    /// Every token issued so far stops working.
    async fn logout_everywhere(&self, ctx: &Context<'_>) -> Result<bool> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        Ok(users::bump_token_version(&app.db, user.id).await?.is_some())
    }

    /// Deletes the caller's account and all its todos. Needs the current password.
    async fn delete_account(&self, ctx: &Context<'_>, password: String) -> Result<bool> {
        let app = ctx.app();
        let user = ctx.current_user()?;
        let client = ctx.data_opt::<ClientAddr>().copied();
        app.auth.delete_account(&app.db, user, &password, client).await?;
        Ok(true)
    }
}
