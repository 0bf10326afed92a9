//! Meta Custom Audiences (docs/vendors/meta.md §2): `POST` adds and `DELETE` removes on
//! `/{api_version}/{audience_id}/users`, hashed rows in the `payload` form parameter.

use std::time::Duration;

use relay_delivery::{classify_status, Outcome, Reply};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use relay_delivery::{ConfigProblems, DestinationConfig, Secret};
use relay_events::normalize;

use crate::config::{digits, is_meta_version, MetaAudience, MetaSchema, META_MAX_ROWS};
use crate::platform::{AudiencePlatform, HASHED_EMAIL};
use crate::reconcile::LedgerHash;
use crate::request::{excerpt, Answer, Body, HttpCall, Member, Op};

/// How long to hold the account back after a rate-limit error that does not say how long. Meta's
/// limits are rolling (hourly for the custom-audience business use case); the runtime's backoff
/// grows from this floor if one minute is not enough.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(60);

/// Meta's subcode for an audience whose uploads are blocked until its restrictions are resolved
/// (docs/vendors/meta.md §2, "Flagged audience").
const AUDIENCE_UPLOAD_BLOCKED: i64 = 1_713_230;

/// Where one request stands in a multi-request upload, so that Meta can tie the batches together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    /// 1-based.
    pub seq: usize,
    pub last: bool,
    /// Rows in the whole upload.
    pub total: usize,
}

/// The `/users` request for one batch.
///
/// Every parameter, the token included, goes in a form-encoded body, also for `DELETE`: a
/// 10 000-row payload is about 700 kB, far beyond what a URL can carry (Meta's SDKs put `DELETE`
/// parameters in the query string and fail on large removals: facebook-java-business-sdk#179),
/// and a token in a URL ends up in access logs.
pub fn call(a: &MetaAudience, op: Op, batch: &[Member], session: Option<Session>) -> HttpCall {
    let payload = match a.schema {
        MetaSchema::Email => json!({
            "schema": "EMAIL_SHA256",
            "data": batch.iter().map(|m| [m.email.as_str()]).collect::<Vec<_>>(),
        }),
        // Multi-key rows align with the schema; Meta takes an empty cell for a missing key.
        MetaSchema::EmailPhone => json!({
            "schema": ["EMAIL", "PHONE"],
            "data": batch
                .iter()
                .map(|m| [m.email.as_str(), m.phone.as_deref().unwrap_or_default()])
                .collect::<Vec<_>>(),
        }),
    };
    let mut form = vec![("payload", payload.to_string())];
    if let Some(s) = session {
        form.push((
            "session",
            json!({
                "session_id": s.id,
                "batch_seq": s.seq,
                "last_batch_flag": s.last,
                "estimated_num_total": s.total,
            })
            .to_string(),
        ));
    }
    HttpCall {
        method: match op {
            Op::Add => Method::POST,
            Op::Remove => Method::DELETE,
        },
        url: format!(
            "{}/{}/{}/users",
            a.base_url.trim_end_matches('/'),
            a.api_version,
            a.audience_id
        ),
        headers: Vec::new(),
        body: Body::Form {
            pairs: form,
            token_field: "access_token",
        },
    }
}

/// Maps Meta's answer to a request of `sent` rows. Meta reports rate limits in the JSON error body
/// whatever the HTTP status, so the body decides before the status does.
pub fn answer(reply: &Reply, sent: usize) -> Answer {
    if let Ok(Envelope { error: Some(error) }) = serde_json::from_slice::<Envelope>(&reply.body) {
        return error_answer(reply, &error, sent);
    }
    if !reply.is_success() {
        let body = String::from_utf8_lossy(&reply.body);
        return Answer::whole(
            classify_status(reply.status, reply.header("retry-after"), excerpt(&body)),
            sent,
        );
    }
    let Ok(result) = serde_json::from_slice::<UsersResult>(&reply.body) else {
        // The rows may have landed; sending them again is harmless.
        return Answer::whole(Outcome::retryable("unreadable Meta answer"), sent);
    };
    if result.num_received < sent as u64 {
        return Answer::whole(
            Outcome::retryable(format!(
                "Meta received {} of {sent} rows",
                result.num_received
            )),
            sent,
        );
    }
    if result.num_invalid_entries > 0 && result.num_invalid_entries >= result.num_received {
        return Answer::whole(
            Outcome::permanent(format!(
                "Meta found all {} rows invalid",
                result.num_invalid_entries
            )),
            sent,
        );
    }
    if result.num_invalid_entries > 0 {
        // Meta names no rows, only samples: the rest did land. WARN because an operator should
        // look, though no single consent change can be dead-lettered for it.
        tracing::warn!(
            sink = "audiences",
            platform = "meta",
            rows = sent,
            invalid = result.num_invalid_entries,
            "Meta accepted a batch but found some rows invalid"
        );
    }
    Answer::applied(sent)
}

fn error_answer(reply: &Reply, error: &GraphError, sent: usize) -> Answer {
    let detail = format!(
        "Meta error {}{}: {}",
        error.code,
        error
            .error_subcode
            .map(|s| format!("/{s}"))
            .unwrap_or_default(),
        excerpt(&error.message)
    );
    if is_rate_limit(error.code) {
        let after = regain_access(reply).unwrap_or(DEFAULT_THROTTLE_PAUSE);
        return Answer::whole(
            Outcome::Unavailable {
                after: Some(after),
                reason: detail,
            },
            sent,
        );
    }
    let outcome = match error.code {
        // Invalid or expired token (190), session problems (102), missing permissions (10,
        // 200–299), or an audience blocked until its restrictions are resolved: nothing is wrong
        // with the rows, an operator must act.
        190 | 102 | 10 | 200..=299 => Outcome::Refused { reason: detail },
        100 if error.error_subcode == Some(AUDIENCE_UPLOAD_BLOCKED) => {
            Outcome::Refused { reason: detail }
        }
        // Meta's "unknown" and "service" errors, and anything it marks transient.
        1 | 2 => Outcome::retryable(detail),
        _ if error.is_transient => Outcome::retryable(detail),
        // An error object under a 2xx status is not a success.
        _ if reply.is_success() => Outcome::retryable(detail),
        _ => classify_status(reply.status, reply.header("retry-after"), detail),
    };
    Answer::whole(outcome, sent)
}

/// Application (4), user (17) and ad-account (613) request limits, and the business-use-case
/// throttles 80000–80014 (docs/vendors/meta.md §2).
fn is_rate_limit(code: i64) -> bool {
    matches!(code, 4 | 17 | 613 | 80_000..=80_014)
}

/// The longest `estimated_time_to_regain_access` (minutes) in `X-Business-Use-Case-Usage`, which
/// maps business ids to lists of usage entries.
fn regain_access(reply: &Reply) -> Option<Duration> {
    let usage: serde_json::Value =
        serde_json::from_str(reply.header("x-business-use-case-usage")?).ok()?;
    let minutes = usage
        .as_object()?
        .values()
        .filter_map(|entries| entries.as_array())
        .flatten()
        .filter_map(|entry| entry.get("estimated_time_to_regain_access")?.as_u64())
        .max()?;
    (minutes > 0).then(|| Duration::from_secs(minutes * 60))
}

#[derive(Deserialize)]
struct Envelope {
    error: Option<GraphError>,
}

/// Graph API's error object; `code` is what decides.
#[derive(Debug, Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    is_transient: bool,
}

#[derive(Deserialize)]
struct UsersResult {
    #[serde(default)]
    num_received: u64,
    #[serde(default)]
    num_invalid_entries: u64,
}

impl AudiencePlatform for MetaAudience {
    fn name(&self) -> &'static str {
        "meta"
    }
    fn base_url(&self) -> &str {
        &self.base_url
    }
    fn limits(&self) -> &DestinationConfig {
        &self.limits
    }
    fn batch_size(&self) -> usize {
        self.max_rows_per_request
    }
    fn batch_limit(&self) -> (&'static str, usize) {
        ("max_rows_per_request", META_MAX_ROWS)
    }
    fn credential(&self, field: &str) -> Option<&Option<Secret>> {
        (field == "token").then_some(&self.token)
    }
    fn credential_mut(&mut self, field: &str) -> Option<&mut Option<Secret>> {
        (field == "token").then_some(&mut self.token)
    }
    fn identify(&self, email: &str, phone: Option<&str>) -> Option<(String, Option<String>)> {
        let phone = match self.schema {
            MetaSchema::Email => None,
            MetaSchema::EmailPhone => phone.and_then(normalize::meta_phone),
        };
        Some((normalize::meta_email(email)?, phone))
    }
    fn call(&self, op: Op, batch: &[Member], session: Option<Session>) -> HttpCall {
        call(self, op, batch, session)
    }
    fn answer(&self, reply: &Reply, sent: usize) -> Answer {
        answer(reply, sent)
    }
    fn problems(&self, problems: &mut ConfigProblems, key: &dyn Fn(&str) -> String, _: &[&str]) {
        digits(problems, key("audience_id"), &self.audience_id);
        if !is_meta_version(&self.api_version) {
            problems.push(key("api_version"), "must look like \"v25.0\"");
        }
    }
    /// Trim and lowercase, as the ledger hashes.
    fn ledger_hash(&self) -> LedgerHash {
        LedgerHash::Email
    }
    fn recipient(&self) -> (String, String) {
        (
            format!("Meta (Custom Audience {})", self.audience_id),
            match self.schema {
                MetaSchema::Email => HASHED_EMAIL.to_owned(),
                MetaSchema::EmailPhone => {
                    format!("{HASHED_EMAIL}, SHA-256 of the phone number where given")
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn audience(schema: MetaSchema) -> MetaAudience {
        let mut a: MetaAudience = toml::from_str(
            r#"base_url = "http://fake/"
               audience_id = "2385""#,
        )
        .unwrap();
        a.schema = schema;
        a
    }

    fn member(email: &str, phone: Option<&str>) -> Member {
        Member {
            items: vec![0],
            email: email.into(),
            phone: phone.map(str::to_owned),
        }
    }

    fn form(call: &HttpCall) -> &[(&'static str, String)] {
        match &call.body {
            Body::Form { pairs, .. } => pairs,
            other => panic!("expected a form, got {other:?}"),
        }
    }

    fn param<'a>(call: &'a HttpCall, name: &str) -> Option<&'a str> {
        form(call)
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn single_key_add_and_multi_key_remove() {
        let add = call(
            &audience(MetaSchema::Email),
            Op::Add,
            &[member("h1", Some("p1")), member("h2", None)],
            None,
        );
        assert_eq!(add.method, Method::POST);
        assert_eq!(add.url, "http://fake/v25.0/2385/users");
        let payload: serde_json::Value =
            serde_json::from_str(param(&add, "payload").unwrap()).unwrap();
        assert_eq!(
            payload,
            json!({"schema": "EMAIL_SHA256", "data": [["h1"], ["h2"]]})
        );
        assert!(matches!(
            add.body,
            Body::Form {
                token_field: "access_token",
                ..
            }
        ));
        assert_eq!(param(&add, "session"), None);

        let remove = call(
            &audience(MetaSchema::EmailPhone),
            Op::Remove,
            &[member("h1", Some("p1")), member("h2", None)],
            Some(Session {
                id: 7,
                seq: 2,
                last: true,
                total: 12_000,
            }),
        );
        assert_eq!(remove.method, Method::DELETE);
        let payload: serde_json::Value =
            serde_json::from_str(param(&remove, "payload").unwrap()).unwrap();
        assert_eq!(
            payload,
            json!({"schema": ["EMAIL", "PHONE"], "data": [["h1", "p1"], ["h2", ""]]})
        );
        let session: serde_json::Value =
            serde_json::from_str(param(&remove, "session").unwrap()).unwrap();
        assert_eq!(
            session,
            json!({"session_id": 7, "batch_seq": 2, "last_batch_flag": true,
                   "estimated_num_total": 12_000})
        );
    }

    fn reply(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: body.to_string().into_bytes(),
        }
    }

    fn error(status: u16, code: i64, subcode: Option<i64>) -> Reply {
        reply(
            status,
            json!({"error": {"message": "msg", "type": "OAuthException", "code": code,
                             "error_subcode": subcode, "fbtrace_id": "A1"}}),
        )
    }

    #[test]
    fn rate_limit_codes_make_the_destination_unavailable_whatever_the_status() {
        for (status, code) in [
            (400, 17),
            (403, 4),
            (200, 613),
            (500, 80_003),
            (400, 80_014),
        ] {
            let a = answer(&error(status, code, None), 2);
            assert!(a.stops_lane(), "{code}");
            assert_eq!(a.outcomes().len(), 2);
            match &a.outcomes()[0] {
                Outcome::Unavailable { after, reason } => {
                    assert_eq!(*after, Some(DEFAULT_THROTTLE_PAUSE));
                    assert!(reason.contains(&format!("Meta error {code}")), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_business_use_case_header_says_how_long() {
        let mut r = error(400, 80_003, Some(2_446_079));
        r.headers.insert(
            "x-business-use-case-usage",
            HeaderValue::from_static(concat!(
                r#"{"123":[{"type":"custom_audience","call_count":100,"#,
                r#""estimated_time_to_regain_access":3},{"type":"ads_management","#,
                r#""estimated_time_to_regain_access":0}]}"#
            )),
        );
        match &answer(&r, 1).outcomes()[0] {
            Outcome::Unavailable { after, .. } => {
                assert_eq!(*after, Some(Duration::from_secs(180)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_errors_by_code() {
        let class = |r: Reply| answer(&r, 1).outcomes()[0].class();
        assert_eq!(class(error(400, 190, Some(463))), "refused");
        assert_eq!(class(error(403, 200, None)), "refused");
        assert_eq!(
            class(error(400, 100, Some(AUDIENCE_UPLOAD_BLOCKED))),
            "refused"
        );
        assert_eq!(class(error(400, 100, None)), "permanent");
        assert_eq!(class(error(500, 2, None)), "retryable");
        assert_eq!(class(error(200, 100, None)), "retryable");
        let transient = reply(
            400,
            json!({"error": {"message": "m", "code": 100, "is_transient": true}}),
        );
        assert_eq!(class(transient), "retryable");
        assert_eq!(class(reply(502, json!("bad gateway"))), "retryable");
    }

    #[test]
    fn counts_in_a_success_are_checked() {
        let ok = |received: u64, invalid: u64| {
            reply(
                200,
                json!({"audience_id": "2385", "session_id": "9", "num_received": received,
                       "num_invalid_entries": invalid, "invalid_entry_samples": {}}),
            )
        };
        assert_eq!(answer(&ok(3, 0), 3), Answer::applied(3));
        assert_eq!(answer(&ok(3, 1), 3), Answer::applied(3));
        assert_eq!(answer(&ok(2, 0), 3).outcomes()[0].class(), "retryable");
        assert_eq!(answer(&ok(3, 3), 3).outcomes()[0].class(), "permanent");
        assert_eq!(
            answer(&reply(200, json!("<html>")), 3).outcomes()[0].class(),
            "retryable"
        );
    }
}
