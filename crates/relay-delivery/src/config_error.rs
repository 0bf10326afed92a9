//! The configuration error every sink reports.
//!
//! Every sink validates its `[sinks.NAME]` section the same way: it checks everything that can be
//! checked without calling the downstream and collects all problems, each named by its key within
//! the section, so that the binary can report every mistake of one start attempt at once, each
//! with its key. One shared type keeps that contract in one place instead of one copy per sink.

use std::fmt;

/// One thing wrong with a sink's configuration, named by its key within the sink's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key at fault, e.g. `lists.main.api_key` or `partners.in_gmbh.signing_secret`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
    /// A credential that comes from the environment is not set. Commands that never call the
    /// downstream (`lag`, `ledger`, `dlq list`, ...) run without it; `run` and `reconcile` do not.
    pub missing_secret: bool,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Every problem validation found, in the order it found them.
    #[error("invalid sink config: {}", join(.0))]
    Invalid(Vec<ConfigProblem>),
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ConfigProblem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects a sink's [`ConfigProblem`]s during validation; [`ConfigProblems::into_result`] turns
/// them into [`ConfigError::Invalid`] when there are any.
#[derive(Debug, Default)]
pub struct ConfigProblems(Vec<ConfigProblem>);

impl ConfigProblems {
    /// Notes that `key` is wrong because of `message`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
            missing_secret: false,
        });
    }

    /// Notes that the secret `key` is not set; `message` says which variable sets it.
    pub fn push_missing_secret(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
            missing_secret: true,
        });
    }

    /// `Ok` when nothing was noted, else every problem in the order noted.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// Checks that `endpoint` is an https URL, or http to a loopback address (tests, the demo): what
/// carries personal data or a credential to a third party. `Err` says what is wrong.
pub fn check_https_url(endpoint: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint).map_err(|_| "is not a URL".to_owned())?;
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https (plain http only for loopback addresses)".into()),
        _ => Err("must be an https URL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_passes() {
        assert!(check_https_url("https://api.example.net/x").is_ok());
        assert!(check_https_url("http://127.0.0.1:8080").is_ok());
        assert!(check_https_url("http://[::1]:1/").is_ok());
        assert!(check_https_url("http://localhost").is_ok());
        assert!(check_https_url("http://api.example.net").is_err());
        assert!(check_https_url("ftp://x").is_err());
        assert!(check_https_url("not a url").is_err());
    }

    #[test]
    fn problems_show_with_their_keys() {
        let mut problems = ConfigProblems::default();
        problems.push("token", "missing");
        problems.push("limits.window_ms".to_owned(), "must be at least 1");
        let err = problems.into_result().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid sink config: token: missing; limits.window_ms: must be at least 1"
        );
        assert!(ConfigProblems::default().into_result().is_ok());
    }
}
