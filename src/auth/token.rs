//! Access tokens: JWT, HS256 pinned, no leeway (one clock issues and verifies them).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{User, now_unix};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user's uuid.
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    /// The user's `token_version` when issued; a bump revokes the token.
    pub token_version: u64,
    /// When the session began (the login); refresh never goes past `auth_time + session_max`.
    pub auth_time: u64,
}

/// An issued token.
pub struct Issued {
    pub token: String,
    pub claims: Claims,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("session too old to refresh")]
    SessionOver,
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: u64,
    session_max: u64,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: u64, session_max: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            session_max,
        }
    }

    /// A token for a fresh login.
    pub fn issue(&self, user: &User) -> Result<Issued, TokenError> {
        let now = now_unix();
        self.issue_at(user, now, now)
    }

    /// A token continuing the session that began at `auth_time`.
    pub fn refresh(&self, user: &User, auth_time: u64) -> Result<Issued, TokenError> {
        self.issue_at(user, now_unix(), auth_time)
    }

    fn issue_at(&self, user: &User, now: u64, auth_time: u64) -> Result<Issued, TokenError> {
        let session_end = auth_time.saturating_add(self.session_max);
        if now >= session_end {
            return Err(TokenError::SessionOver);
        }
        let claims = Claims {
            sub: user.uuid.to_string(),
            exp: now.saturating_add(self.ttl).min(session_end),
            iat: now,
            jti: Uuid::new_v4().to_string(),
            token_version: user.token_version,
            auth_time,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok(Issued { token, claims })
    }

    /// Checks signature, algorithm and expiry (expired at `exp` exactly).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if data.claims.exp <= now_unix() {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountType, PermissionSet};

    fn user() -> User {
        User {
            uuid: Uuid::new_v4(),
            username: "u".into(),
            account_type: AccountType::Client,
            permissions: PermissionSet::EMPTY,
            disabled: false,
            password_hash: String::new(),
            token_version: 7,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60, 600);
        let u = user();
        let issued = t.issue(&u).unwrap();
        let claims = t.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, u.uuid.to_string());
        assert_eq!(claims.token_version, 7);
        assert_eq!(claims.exp, claims.iat + 60);
        let other = Tokens::new(b"another secret, another secret!!", 60, 600);
        assert_eq!(other.verify(&issued.token), Err(TokenError::Invalid));
        assert_eq!(t.verify("a.b.c"), Err(TokenError::Invalid));
    }

    #[test]
    fn algorithm_none_and_other_algorithms_are_refused() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60, 600);
        let issued = t.issue(&user()).unwrap();
        let payload = issued.token.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(t.verify(&none), Err(TokenError::Invalid));
    }

    #[test]
    fn refresh_is_capped_by_session_max() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60, 100);
        let u = user();
        let now = now_unix();
        let capped = t.issue_at(&u, now, now - 80).unwrap();
        assert_eq!(capped.claims.exp, now - 80 + 100);
        assert!(matches!(
            t.refresh(&u, now - 100),
            Err(TokenError::SessionOver)
        ));
        let old = t.issue_at(&u, now - 61, now - 61).unwrap();
        assert_eq!(t.verify(&old.token), Err(TokenError::Expired));
    }
}
