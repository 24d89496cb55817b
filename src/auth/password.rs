//! Password hashing with argon2id at the OWASP parameters (m = 19456 KiB, t = 2, p = 1),
//! always off the async worker threads and never more than `auth.hash_concurrency` at once.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the user does not exist so
    /// that unknown users and wrong passwords take the same time.
    dummy: Arc<str>,
}

impl Hasher {
    pub fn new(concurrency: usize) -> Result<Self> {
        let dummy = hash_blocking(&crate::secrets::random_password().map_err(Error::internal)?)?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: dummy.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(Error::internal)?
    }

    /// Verifies `password` against `hash`; with no hash (unknown user) it spends the same
    /// effort on a dummy and returns false.
    #[cfg(test)]
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        self.verify_guarded(password, hash, || Ok(())).await
    }

    /// Like [`Hasher::verify`], but runs `guard` once a hashing slot is free, right before
    /// the work: a login throttle checked there cannot be outrun by many concurrent guesses
    /// queued behind the slots.
    pub async fn verify_guarded(
        &self,
        password: String,
        hash: Option<String>,
        guard: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        guard()?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&password, &hash))
            .await
            .map_err(Error::internal)?;
        Ok(known && ok)
    }
}

/// Hashes synchronously (offline CLI and start-up).
pub fn hash_blocking(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("password hashing failed: {e}")))
}

/// Verifies synchronously; a malformed stored hash verifies nothing.
pub fn verify_blocking(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_owasp_and_verify() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong horse", &h));
        assert!(!verify_blocking("x", "not a hash"));
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = Hasher::new(1).unwrap();
        assert!(!hasher.verify("anything".into(), None).await.unwrap());
        let h = hasher.hash("pw-12345".into()).await.unwrap();
        assert!(hasher.verify("pw-12345".into(), Some(h)).await.unwrap());
    }
}
