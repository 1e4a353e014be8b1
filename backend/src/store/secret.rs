//! Bearer secrets (job and API tokens): generated at random, shown once, stored as SHA-256.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh random secret: `prefix` then 32 random bytes in hex. The prefix says what kind
/// of token a leaked string is.
pub(crate) fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a secret.
pub(crate) fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in time that depends only on their length, not on where they differ.
pub(crate) fn hashes_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_differ_and_hash_to_hex() {
        let (a, b) = (generate("t_"), generate("t_"));
        assert_ne!(a, b);
        assert!(a.starts_with("t_") && a.len() == 2 + 64);
        assert_eq!(hash(&a).len(), 64);
        assert!(hashes_match(&hash(&a), &hash(&a)));
        assert!(!hashes_match(&hash(&a), &hash(&b)));
        assert!(!hashes_match("ab", "abc"));
    }
}
