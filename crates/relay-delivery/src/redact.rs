//! Downstream error texts go into outcome reasons, and reasons go into the ledger and the DLQ,
//! which must never hold a raw email address. Vendors like to echo the address they rejected.

/// Replaces every whitespace-separated word that contains an `@` with `<email>`.
pub fn redact_emails(text: &str) -> String {
    text.split_whitespace()
        .map(|word| if word.contains('@') { "<email>" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first 200 characters of an error body that is not the vendor's documented shape, redacted;
/// `"no error body"` for an empty one.
pub fn body_excerpt(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    if text.trim().is_empty() {
        "no error body".to_owned()
    } else {
        redact_emails(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_replaced_and_excerpts_are_short() {
        assert_eq!(body_excerpt(b""), "no error body");
        assert_eq!(
            body_excerpt(b"lead max@example.de\nrejected"),
            "lead <email> rejected"
        );
        assert_eq!(body_excerpt(&[b'x'; 500]).len(), 200);
        assert_eq!(redact_emails("\"a@b.de\" is invalid"), "<email> is invalid");
    }
}
