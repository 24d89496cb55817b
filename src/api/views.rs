//! Wire types of the REST API (kept apart from the internal model).

use serde::Serialize;

use crate::model::User;

/// A user as the API shows it: never the hash or the token version.
#[derive(Serialize)]
pub struct UserView {
    pub uuid: String,
    pub username: String,
    pub account_type: &'static str,
    pub permissions: Vec<&'static str>,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            uuid: u.uuid.to_string(),
            username: u.username.clone(),
            account_type: u.account_type.as_str(),
            permissions: u.permissions.names(),
            disabled: u.disabled,
            created_at: u.created_at.clone(),
            updated_at: u.updated_at.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct TokenView {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}
