//! Identity: password hashing, tokens, login throttling, and the request guard that turns
//! a bearer token into an [`Actor`] and checks a route's [`Access`].

pub mod apikey;
pub mod password;
pub mod policy;
pub mod ratelimit;
pub mod token;

use uuid::Uuid;
use warp::http::HeaderMap;

use crate::error::{Error, Result};
use crate::model::{Permission, User};
use crate::state::AppState;
use token::Claims;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user: User,
    pub claims: Claims,
}

impl Actor {
    pub fn has(&self, p: Permission) -> bool {
        self.user.has(p)
    }
}

/// What a route requires. Declared once per route in the route table.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Anyone, no token read.
    Public,
    /// A valid token of an enabled user.
    Token,
    /// A valid token and at least one of these permissions.
    AnyOf(&'static [Permission]),
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(warp::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Resolves a token to its user: signature, expiry, the user still existing and enabled, and
/// the token's `token_version` matching the user's (a bump revokes every older token).
pub async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Actor> {
    let token = token.ok_or(Error::Unauthorized)?;
    let claims = state
        .tokens
        .verify(token)
        .map_err(|_| Error::Unauthorized)?;
    let uuid = Uuid::parse_str(&claims.sub).map_err(|_| Error::Unauthorized)?;
    let user = state
        .db
        .run(move |db| db.user_by_uuid(uuid))
        .await?
        .ok_or(Error::Unauthorized)?;
    if user.disabled || user.token_version != claims.token_version {
        return Err(Error::Unauthorized);
    }
    // The hash is never needed past this point; do not carry it for a request's or a
    // socket's lifetime.
    let user = User {
        password_hash: String::new(),
        ..user
    };
    Ok(Actor { user, claims })
}

/// Checks a route's requirement; `Ok(None)` for public routes.
pub async fn guard(state: &AppState, headers: &HeaderMap, access: Access) -> Result<Option<Actor>> {
    match access {
        Access::Public => Ok(None),
        Access::Token => authenticate(state, bearer(headers)).await.map(Some),
        Access::AnyOf(perms) => {
            let actor = authenticate(state, bearer(headers)).await?;
            if perms.iter().any(|p| actor.has(*p)) {
                Ok(Some(actor))
            } else {
                let names: Vec<&str> = perms.iter().map(|p| p.name()).collect();
                Err(Error::forbidden(format!(
                    "this needs the permission {}",
                    names.join(" or ")
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert("authorization", HeaderValue::from_static("bearer  xyz "));
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
