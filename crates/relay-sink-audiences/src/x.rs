//! X Ads custom audiences (docs/vendors/x.md §5): a JSON array of `Update` / `Delete` operations on
//! `/{version}/accounts/{account_id}/custom_audiences/{id}/users`, all-or-nothing per request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_delivery::{classify_status, Outcome, Reply};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use relay_delivery::{ConfigProblems, DestinationConfig, Secret};
use relay_events::normalize;

use crate::config::{path_segment, XAudience, X_MAX_USERS};
use crate::meta::Session;
use crate::oauth1::{self, Credentials};
use crate::platform::{AudiencePlatform, HASHED_EMAIL};
use crate::reconcile::LedgerHash;
use crate::request::{excerpt, Answer, Body, HttpCall, Member, Op};

/// The request for one batch: one operation per user. X's `success_count` and `total_count` count
/// "records"; with one user per operation, records, users and operations are the same number, so
/// the all-or-nothing check cannot be misread, and an `operation_errors` index names one user.
pub fn call(a: &XAudience, op: Op, batch: &[Member]) -> HttpCall {
    let operation_type = match op {
        Op::Add => "Update",
        Op::Remove => "Delete",
    };
    let operations: Vec<Value> = batch
        .iter()
        .map(|m| {
            json!({
                "operation_type": operation_type,
                "params": { "users": [{ "email": [m.email] }] },
            })
        })
        .collect();
    HttpCall {
        method: Method::POST,
        url: format!(
            "{}/{}/accounts/{}/custom_audiences/{}/users",
            a.base_url.trim_end_matches('/'),
            a.api_version,
            a.account_id,
            a.custom_audience_id
        ),
        headers: Vec::new(),
        body: Body::Json(Value::Array(operations)),
    }
}

/// The `Authorization` header of one request: OAuth 1.0a, HMAC-SHA1, signed now with a fresh
/// nonce. The JSON body is not part of the signature; the query string, if any, is. `None` when a
/// credential is missing (`validate` rules that out) or the URL does not parse (then the request
/// fails on it anyway).
pub fn authorization(a: &XAudience, method: &Method, url: &str) -> Option<String> {
    let credentials = Credentials {
        consumer_key: a.consumer_key.as_ref()?.expose(),
        consumer_secret: a.consumer_secret.as_ref()?.expose(),
        token: a.access_token.as_ref()?.expose(),
        token_secret: a.access_token_secret.as_ref()?.expose(),
    };
    let url = Url::parse(url).ok()?;
    Some(oauth1::authorization(
        &credentials,
        method.as_str(),
        &url,
        &[],
        &oauth1::nonce(),
        oauth1::now(),
    ))
}

/// Maps X's answer to a request of `sent` operations.
pub fn answer(reply: &Reply, sent: usize) -> Answer {
    if reply.is_success() {
        let counts = serde_json::from_slice::<Success>(&reply.body).map(|s| s.data);
        return match counts {
            Ok(c) if c.success_count == c.total_count && c.total_count == sent as u64 => {
                Answer::applied(sent)
            }
            // "Should be treated as an error condition, requiring a retry" (docs/vendors/x.md §5).
            Ok(c) => Answer::whole(
                Outcome::retryable(format!(
                    "X processed {} of {} records; {sent} were sent",
                    c.success_count, c.total_count
                )),
                sent,
            ),
            Err(_) => Answer::whole(Outcome::retryable("unreadable X answer"), sent),
        };
    }

    let error = serde_json::from_slice::<ErrorBody>(&reply.body).unwrap_or_default();
    let detail = error
        .detail()
        .unwrap_or_else(|| excerpt(&String::from_utf8_lossy(&reply.body)));
    // X announces the end of its window in `x-rate-limit-reset` (epoch seconds), not Retry-After.
    let reset = (reply.status == 429)
        .then(|| reply.header("x-rate-limit-reset"))
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|at| seconds_until(at).to_string());
    let retry_after = reply.header("retry-after").or(reset.as_deref());
    let outcome = classify_status(reply.status, retry_after, detail);

    // The batch fails as a whole, but `operation_errors` names the operations at fault: only those
    // are dead-lettered, the others are retried without them.
    let rejected = error.rejected_operations(sent);
    if matches!(outcome, Outcome::Permanent { .. }) && !rejected.is_empty() {
        let outcomes = (0..sent)
            .map(|i| match rejected.iter().find(|(at, _)| *at == i) {
                Some((_, reason)) => Outcome::permanent(format!("X rejected this user: {reason}")),
                None => Outcome::retryable(
                    "not applied: X rejected another operation of the same request",
                ),
            })
            .collect();
        return Answer::per_part(outcomes);
    }
    Answer::whole(outcome, sent)
}

fn seconds_until(epoch_secs: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    epoch_secs.saturating_sub(now)
}

#[derive(Deserialize)]
struct Success {
    data: Counts,
}

#[derive(Deserialize)]
struct Counts {
    success_count: u64,
    total_count: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    errors: Vec<XError>,
    /// Aligned with the request's operations; `null` or empty for those without an error.
    operation_errors: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct XError {
    code: String,
    message: String,
}

impl ErrorBody {
    fn detail(&self) -> Option<String> {
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{} {}", e.code, excerpt(&e.message)))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    fn rejected_operations(&self, sent: usize) -> Vec<(usize, String)> {
        self.operation_errors
            .iter()
            .enumerate()
            .take(sent)
            .filter(|(_, e)| !(e.is_null() || e.as_array().is_some_and(Vec::is_empty)))
            .map(|(i, e)| (i, excerpt(&e.to_string())))
            .collect()
    }
}

/// The credentials of an X audience: OAuth 1.0a's four.
const X_CREDENTIALS: &[&str] = &[
    "consumer_key",
    "consumer_secret",
    "access_token",
    "access_token_secret",
];

impl AudiencePlatform for XAudience {
    fn name(&self) -> &'static str {
        "x"
    }
    fn base_url(&self) -> &str {
        &self.base_url
    }
    fn limits(&self) -> &DestinationConfig {
        &self.limits
    }
    fn batch_size(&self) -> usize {
        self.max_users_per_request
    }
    fn batch_limit(&self) -> (&'static str, usize) {
        ("max_users_per_request", X_MAX_USERS)
    }
    fn credential_fields(&self) -> &'static [&'static str] {
        X_CREDENTIALS
    }
    fn credential(&self, field: &str) -> Option<&Option<Secret>> {
        match field {
            "consumer_key" => Some(&self.consumer_key),
            "consumer_secret" => Some(&self.consumer_secret),
            "access_token" => Some(&self.access_token),
            "access_token_secret" => Some(&self.access_token_secret),
            _ => None,
        }
    }
    fn credential_mut(&mut self, field: &str) -> Option<&mut Option<Secret>> {
        match field {
            "consumer_key" => Some(&mut self.consumer_key),
            "consumer_secret" => Some(&mut self.consumer_secret),
            "access_token" => Some(&mut self.access_token),
            "access_token_secret" => Some(&mut self.access_token_secret),
            _ => None,
        }
    }
    /// X's access token, which also names the app it was issued to.
    fn account_credential(&self) -> Option<&str> {
        self.access_token.as_ref().map(Secret::expose)
    }
    fn identify(&self, email: &str, _: Option<&str>) -> Option<(String, Option<String>)> {
        Some((normalize::x_email(email)?, None))
    }
    fn call(&self, op: Op, batch: &[Member], _: Option<Session>) -> HttpCall {
        call(self, op, batch)
    }
    fn answer(&self, reply: &Reply, sent: usize) -> Answer {
        answer(reply, sent)
    }
    /// OAuth 1.0a, signed now; `None` (no header) when a credential is missing.
    fn authorization(&self, method: &Method, url: &str, _token: &str) -> Option<String> {
        authorization(self, method, url)
    }
    fn problems(&self, problems: &mut ConfigProblems, key: &dyn Fn(&str) -> String, _: &[&str]) {
        path_segment(problems, key("account_id"), &self.account_id);
        path_segment(
            problems,
            key("custom_audience_id"),
            &self.custom_audience_id,
        );
        if self.api_version.is_empty() || !self.api_version.chars().all(|c| c.is_ascii_digit()) {
            problems.push(key("api_version"), "must be a number, e.g. \"12\"");
        }
    }
    /// Trim and lowercase, as the ledger hashes.
    fn ledger_hash(&self) -> LedgerHash {
        LedgerHash::Email
    }
    fn recipient(&self) -> (String, String) {
        (
            format!("X (Custom Audience {})", self.custom_audience_id),
            HASHED_EMAIL.to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn audience() -> XAudience {
        toml::from_str(
            r#"base_url = "http://fake"
               consumer_key = "ck"
               consumer_secret = "consumer-secret-value"
               access_token = "at"
               access_token_secret = "token-secret-value"
               account_id = "18ce54d4x5t"
               custom_audience_id = "1nmth""#,
        )
        .unwrap()
    }

    #[test]
    fn requests_are_signed_with_oauth1_and_a_fresh_nonce() {
        let a = audience();
        let url = "http://fake/12/accounts/18ce54d4x5t/custom_audiences/1nmth/users";
        let header = authorization(&a, &Method::POST, url).unwrap();
        let fields: Vec<(&str, &str)> = header
            .strip_prefix("OAuth ")
            .unwrap()
            .split(", ")
            .map(|f| f.split_once('=').unwrap())
            .collect();
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "oauth_consumer_key",
                "oauth_nonce",
                "oauth_signature",
                "oauth_signature_method",
                "oauth_timestamp",
                "oauth_token",
                "oauth_version"
            ]
        );
        assert_eq!(fields[0].1, "\"ck\"");
        assert_eq!(fields[3].1, "\"HMAC-SHA1\"");
        assert_eq!(fields[5].1, "\"at\"");
        assert_eq!(fields[6].1, "\"1.0\"");
        let timestamp: u64 = fields[4].1.trim_matches('"').parse().unwrap();
        assert!(timestamp.abs_diff(oauth1::now()) <= 1);
        assert!(!header.contains("secret-value"), "{header}");
        assert_ne!(header, authorization(&a, &Method::POST, url).unwrap());

        let mut missing = a.clone();
        missing.access_token_secret = None;
        assert_eq!(authorization(&missing, &Method::POST, url), None);
    }

    #[test]
    fn one_operation_per_user() {
        let batch = [
            Member {
                items: vec![0],
                email: "h1".into(),
                phone: None,
            },
            Member {
                items: vec![1],
                email: "h2".into(),
                phone: None,
            },
        ];
        let add = call(&audience(), Op::Add, &batch);
        assert_eq!(
            add.url,
            "http://fake/12/accounts/18ce54d4x5t/custom_audiences/1nmth/users"
        );
        assert_eq!(
            add.body,
            Body::Json(json!([
                {"operation_type": "Update", "params": {"users": [{"email": ["h1"]}]}},
                {"operation_type": "Update", "params": {"users": [{"email": ["h2"]}]}},
            ]))
        );
        let remove = call(&audience(), Op::Remove, &batch[..1]);
        assert_eq!(
            remove.body,
            Body::Json(json!([
                {"operation_type": "Delete", "params": {"users": [{"email": ["h1"]}]}},
            ]))
        );
    }

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn counts_must_match_what_was_sent() {
        let ok = |s: u64, t: u64| {
            reply(
                200,
                json!({"request": {"params": {"account_id": "a", "custom_audience_id": "c"}},
                       "data": {"success_count": s, "total_count": t}}),
            )
        };
        assert_eq!(answer(&ok(2, 2), 2), Answer::applied(2));
        assert_eq!(answer(&ok(1, 2), 2).outcomes()[0].class(), "retryable");
        assert_eq!(answer(&ok(1, 1), 2).outcomes()[0].class(), "retryable");
    }

    #[test]
    fn rate_limit_reset_becomes_the_retry_delay() {
        let mut r = reply(
            429,
            json!({"errors": [{"code": "TOO_MANY_REQUESTS", "message": "Rate limit exceeded"}]}),
        );
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        r.headers.insert(
            "x-rate-limit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        let a = answer(&r, 1);
        assert!(a.stops_lane());
        match &a.outcomes()[0] {
            Outcome::Unavailable { after, reason } => {
                let after = after.unwrap();
                assert!(after <= Duration::from_secs(30) && after >= Duration::from_secs(28));
                assert!(reason.contains("TOO_MANY_REQUESTS"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operation_errors_dead_letter_only_their_user() {
        let a = answer(
            &reply(
                400,
                json!({"errors": [{"code": "INVALID_PARAMETER", "message": "bad user"}],
                       "operation_errors": [null, [{"code": "INVALID_USER", "message": "not a hash"}], []]}),
            ),
            3,
        );
        let classes: Vec<_> = a.outcomes().iter().map(Outcome::class).collect();
        assert_eq!(classes, ["retryable", "permanent", "retryable"]);
        assert_eq!(
            answer(&reply(401, json!({"errors": []})), 1).outcomes()[0].class(),
            "refused"
        );
    }
}
