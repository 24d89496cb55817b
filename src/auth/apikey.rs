//! Agent API keys: 256 random bits, shown once; only their SHA-256 is stored. A fast keyed
//! hash is enough here (unlike passwords, the key has full entropy, so it cannot be guessed
//! from its hash), and it keeps agent authentication off the argon2 pool.

use sha2::{Digest, Sha256};

/// Prefix of every key, so that a leaked one is recognisable.
const PREFIX: &str = "orch_";

/// A new key and the hash to store.
pub fn generate() -> Result<(String, String), crate::secrets::SecretError> {
    let bytes = crate::secrets::random_bytes(32)?;
    let key = format!("{PREFIX}{}", hex(&bytes));
    let hash = hash(&key);
    Ok((key, hash))
}

/// The stored form of a key.
pub fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.trim().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Compares two hashes without an early exit.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_stably_and_differ() {
        let (k1, h1) = generate().unwrap();
        let (k2, h2) = generate().unwrap();
        assert_ne!(k1, k2);
        assert!(k1.starts_with(PREFIX) && k1.len() == PREFIX.len() + 64);
        assert_eq!(hash(&k1), h1);
        assert!(same(&h1, &hash(&format!(" {k1}\n"))));
        assert!(!same(&h1, &h2));
    }
}
