//! Normalization and hashing of identifiers. Pure functions; per-platform rules live here too so
//! that they can be table-tested against the vendors' published examples.

use sha2::{Digest, Sha256};

/// Trim and lowercase: the normalization every platform agrees on for email addresses.
pub fn email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Lowercase hex SHA-256 of `input`.
pub fn sha256_hex(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The key under which the ledger may refer to an email: SHA-256 of the normalized address.
pub fn email_sha256(raw: &str) -> String {
    sha256_hex(&email(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(
            email("  Max.Mustermann@Example.DE \n"),
            "max.mustermann@example.de"
        );
    }

    #[test]
    fn sha256_matches_known_digest() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn email_hash_ignores_case_and_whitespace() {
        assert_eq!(email_sha256(" A@B.de"), email_sha256("a@b.de"));
    }
}
