//! A credential from the configuration or the environment. Its `Debug` and `Display` never show
//! the value, so a config printed in a log line or an error cannot leak it; the one way to the
//! value is [`Secret::expose`], at the place that puts it on the wire. Surrounding whitespace is
//! dropped when it is read: a secret from a file or a copy ends in a line break, which no
//! credential means.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        Secret(value.trim().to_owned())
    }

    /// A secret kept exactly as given, surrounding spaces included: a password, which may
    /// legitimately begin or end with one (RFC 7617), unlike a token or a key.
    pub fn verbatim(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// Deserializes a [`Secret::verbatim`] (`#[serde(deserialize_with = ...)]`).
    pub fn deserialize_verbatim<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret::verbatim)
    }

    /// The value, for the request that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty or blank: compose's `${VAR:-}` sets a variable to nothing, which
    /// counts as unset.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Why the value cannot travel as a credential (in a header, a form field or a signing key),
    /// `None` when it can: a space, line break or control character inside it would make every
    /// request fail, or every signature mismatch.
    pub fn malformed(&self) -> Option<&'static str> {
        (!self.0.chars().all(|c| c.is_ascii_graphic()))
            .then_some("must be printable ASCII without spaces or line breaks")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_blank() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_shows_only_through_expose() {
        let secret = Secret::from("pat-na1-0123");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(<redacted>)");
        assert_eq!(format!("{:?}", Secret::from(" ")), "<unset>");
        assert_eq!(secret.expose(), "pat-na1-0123");
        assert_eq!(secret.malformed(), None);
        assert_eq!(Secret::verbatim(" pw ").expose(), " pw ");
        assert_eq!(
            Secret::from("pat-na1-0123\n").expose(),
            "pat-na1-0123",
            "trimmed"
        );
        assert!(Secret::from("pat-na1\n0123").malformed().is_some());
        assert!(Secret::from("two words").malformed().is_some());
        let parsed: Secret = serde_json::from_str("\" k\\n\"").unwrap();
        assert_eq!(parsed.expose(), "k");
    }
}
