use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_delivery::driver::{self, Answer, Transport};
use relay_delivery::{
    classify_status, BoxFuture, ConfigError, Destination, Outcome, Reply, Secret, Sink, SinkItem,
};
use relay_events::normalize;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::config::HubSpotConfig;
use crate::request::{self, Call, ContactInput};

/// HubSpot's `setStatusSuccessReason` for a write that changed nothing.
const NO_STATUS_CHANGE: &str = "NO_STATUS_CHANGE";
/// `policyName` of a 429 from the burst limit, and of one from the daily limit
/// (docs/vendors/hubspot.md §1f).
const TEN_SECONDLY_ROLLING: &str = "TEN_SECONDLY_ROLLING";
const DAILY: &str = "DAILY";
/// HubSpot's burst window, waited out when a reply does not name its own.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The id HubSpot gives every answer; 207 error entries carry none of their own.
const CORRELATION_ID_HEADER: &str = "x-hubspot-correlation-id";

/// The HubSpot sink: contact upserts, subscription statuses, global unsubscribe and GDPR delete.
pub struct HubSpotSink {
    /// The account's rate limits, `Retry-After` gate and HTTP client.
    pub(crate) destination: Destination,
    pub(crate) base_url: String,
    pub(crate) token: Secret,
    pub(crate) config: HubSpotConfig,
}

impl HubSpotSink {
    /// Validates `config` and builds the destination (HTTP client and limits).
    pub fn new(config: HubSpotConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let destination = Destination::new(config.limits.clone()).map_err(ConfigError::Client)?;
        Ok(HubSpotSink {
            destination,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            // validate() has checked that the token is there.
            token: config.token.clone().unwrap_or_default(),
            config,
        })
    }

    /// Sends one call through the destination and maps the answer to one outcome per input.
    async fn send(&self, call: &Call) -> Answer {
        let inputs = call.inputs();
        let emails: Vec<&str> = inputs.iter().map(|(_, email)| *email).collect();
        let request = self
            .destination
            .http()
            .post(format!("{}{}", self.base_url, call.path()))
            .bearer_auth(self.token.expose())
            .json(&call.body());
        let reply = match self.destination.send(request).await {
            Ok(reply) => reply,
            // No answer, or not sent because the destination's own daily budget is spent: the
            // driver asks HubSpot nothing more in this delivery (a request that could not even be
            // built is permanent, and this request's alone).
            Err(outcome) => return Answer::whole(outcome, inputs.len()),
        };
        tracing::debug!(
            sink = "hubspot",
            path = call.path(),
            inputs = inputs.len(),
            status = reply.status,
            "HubSpot answered"
        );

        let limits = RateLimitHeaders::read(&reply);
        if limits.remaining == Some(0) {
            // The account's window is full: a request now would only earn a 429, and HubSpot
            // counts those too.
            self.destination.pause_for(limits.interval());
        }
        let error: ErrorBody = if reply.is_success() {
            ErrorBody::default()
        } else {
            serde_json::from_slice(&reply.body).unwrap_or_default()
        };
        let mut answer = if reply.is_success() {
            Answer::per_part(map_success(call, &reply))
        } else if matches!(call, Call::GdprDelete(_)) && reply.status == 404 && error.is_hubspot() {
            // HubSpot answers a GDPR delete of an unknown contact by blocklisting the address: the
            // erasure holds either way. An empty or foreign 404 body means a wrong URL, not that.
            Answer::applied(inputs.len())
        } else {
            let outcome = self.failure(&reply, &error, &limits, &emails);
            let refused = matches!(outcome, Outcome::Refused { .. });
            let answer = Answer::whole(outcome, inputs.len());
            if refused {
                // The account, not the item, is the problem: every other request would be refused
                // too, and the runtime opens the circuit on this outcome.
                answer
            } else {
                // A burst-limit 429 has paused the destination for its window (and a Retry-After
                // for as long as it says): the next call waits there instead of going back to the
                // runtime, since the window is seconds.
                answer.lane_goes_on()
            }
        };
        if limits.daily_remaining == Some(0) || error.policy_name.as_deref() == Some(DAILY) {
            // Waiting inside the destination until then would hold the delivery for hours: the
            // rest goes back to the runtime, which retries after the pause.
            let until = until_utc_midnight(SystemTime::now());
            self.destination.pause_for(until);
            answer = answer.stop_lane(Outcome::Unavailable {
                after: Some(until),
                reason: "not sent: HubSpot's daily request limit is spent".to_owned(),
            });
        }
        answer
    }

    /// The outcome every input of a failed call shares. A 429 without `Retry-After` is retried
    /// after what its policy implies, and a burst-limit one pauses every request meanwhile.
    fn failure(
        &self,
        reply: &Reply,
        error: &ErrorBody,
        limits: &RateLimitHeaders,
        emails: &[&str],
    ) -> Outcome {
        let mut retry_after = reply.header("retry-after").map(str::to_owned);
        if reply.status == 429 && retry_after.is_none() {
            // HubSpot does not document Retry-After on 429s (docs/vendors/hubspot.md §1f); its SDK
            // waits out the window the policy names.
            let wait = match error.policy_name.as_deref() {
                Some(TEN_SECONDLY_ROLLING) => {
                    self.destination.pause_for(limits.interval());
                    Some(limits.interval())
                }
                Some(DAILY) => Some(until_utc_midnight(SystemTime::now())),
                _ => None,
            };
            retry_after = wait.map(|w| w.as_millis().div_ceil(1000).to_string());
        }
        let correlation_id = reply.header(CORRELATION_ID_HEADER);
        classify_status(
            reply.status,
            retry_after.as_deref(),
            error.detail(&reply.body, correlation_id, emails),
        )
    }
}

impl Transport for HubSpotSink {
    type Request = Call;

    fn who(&self, _lane: usize) -> &str {
        "HubSpot"
    }

    fn send<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Answer> {
        Box::pin(HubSpotSink::send(self, call))
    }
}

impl Sink for HubSpotSink {
    fn name(&self) -> &str {
        "hubspot"
    }

    fn requires_email(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        // One chain: requests in plan order, so that two changes of a contact keep their order.
        let request::Plan { settled, calls } = request::plan(items, &self.config);
        Box::pin(driver::deliver(self, settled, vec![calls]))
    }

    fn destinations(&self) -> Vec<&Destination> {
        vec![&self.destination]
    }
}

/// Outcomes of the inputs of a call HubSpot accepted (2xx; a 207 may still reject some inputs).
fn map_success(call: &Call, reply: &Reply) -> Vec<Outcome> {
    let correlation_id = reply.header(CORRELATION_ID_HEADER);
    match call {
        Call::GdprDelete(_) => vec![Outcome::Applied],
        Call::Upsert(inputs) => match parse::<UpsertResult>(reply) {
            Ok(batch) => inputs
                .iter()
                .map(|i| batch.upsert_outcome(i, correlation_id))
                .collect(),
            Err(unreadable) => vec![unreadable; inputs.len()],
        },
        Call::BatchWrite(writes) => match parse::<StatusResult>(reply) {
            Ok(batch) => writes
                .iter()
                .map(|w| {
                    batch.status_outcome(
                        &w.subscriber_id_string,
                        Some(w.subscription_id),
                        correlation_id,
                    )
                })
                .collect(),
            Err(unreadable) => vec![unreadable; writes.len()],
        },
        Call::UnsubscribeAll(contacts) => match parse::<StatusResult>(reply) {
            Ok(batch) => contacts
                .iter()
                .map(|c| batch.unsubscribe_all_outcome(&c.email, correlation_id))
                .collect(),
            Err(unreadable) => vec![unreadable; contacts.len()],
        },
    }
}

fn parse<R: DeserializeOwned + Default>(reply: &Reply) -> Result<BatchResponse<R>, Outcome> {
    // The change may have happened; repeating an upsert or a status write is harmless.
    serde_json::from_slice(&reply.body).map_err(|_| {
        Outcome::retryable(format!(
            "HTTP {}: unreadable HubSpot batch response",
            reply.status
        ))
    })
}

/// Time until the next midnight UTC. HubSpot resets its daily limit at midnight in the account's
/// time zone, which the relay does not know, so UTC midnight stands in for it: for an account
/// east of UTC the pause ends up to the offset late; for one west of UTC it ends before the reset,
/// and the next request meets the DAILY policy again.
fn until_utc_midnight(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(86_400 - secs % 86_400)
}

/// Replaces the call's email addresses, and every word that looks like one, with `<email>`:
/// outcome reasons end up in the ledger and the DLQ, which must not hold raw addresses. Known
/// addresses go first because HubSpot echoes malformed ones, which need not contain an `@`.
fn redact(text: &str, emails: &[&str]) -> String {
    let text = emails
        .iter()
        .filter(|e| !e.is_empty())
        .fold(text.to_owned(), |text, email| {
            text.replace(email, "<email>")
        });
    relay_delivery::redact_emails(&text)
}

/// ` (correlationId …)`, or nothing.
fn correlation_suffix(correlation_id: Option<&str>) -> String {
    correlation_id
        .map(|id| format!(" (correlationId {id})"))
        .unwrap_or_default()
}

/// HubSpot's rate-limit headers (docs/vendors/hubspot.md §1f). Search endpoints send none of the
/// burst ones, OAuth apps none of the daily ones.
#[derive(Debug, Default, PartialEq, Eq)]
struct RateLimitHeaders {
    remaining: Option<u64>,
    interval: Option<Duration>,
    daily_remaining: Option<u64>,
}

impl RateLimitHeaders {
    fn read(reply: &Reply) -> Self {
        let number = |name: &str| {
            reply
                .header(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        RateLimitHeaders {
            remaining: number("x-hubspot-ratelimit-remaining"),
            interval: number("x-hubspot-ratelimit-interval-milliseconds")
                .map(Duration::from_millis),
            daily_remaining: number("x-hubspot-ratelimit-daily-remaining"),
        }
    }

    /// The burst window: the one HubSpot names, or its documented ten seconds.
    fn interval(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_INTERVAL)
    }
}

/// HubSpot's error body (docs/vendors/hubspot.md §1g); every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ErrorBody {
    message: Option<String>,
    category: Option<String>,
    correlation_id: Option<String>,
    policy_name: Option<String>,
}

impl ErrorBody {
    fn is_hubspot(&self) -> bool {
        self.message.is_some() || self.category.is_some()
    }

    /// `message [CATEGORY] (correlationId …)`, or the start of a body that is not HubSpot's. The
    /// correlation id comes from the body, else from the header.
    fn detail(&self, body: &[u8], correlation_header: Option<&str>, emails: &[&str]) -> String {
        if !self.is_hubspot() {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            return if text.trim().is_empty() {
                "no error body".to_owned()
            } else {
                redact(&text, emails)
            };
        }
        let mut parts = Vec::new();
        if let Some(m) = &self.message {
            parts.push(redact(m, emails));
        }
        if let Some(c) = &self.category {
            parts.push(format!("[{c}]"));
        }
        parts.join(" ") + &correlation_suffix(self.correlation_id.as_deref().or(correlation_header))
    }
}

/// A batch envelope (docs/vendors/hubspot.md §1c, §1d), reduced to what decides outcomes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BatchResponse<R> {
    results: Vec<R>,
    errors: Vec<BatchError>,
}

/// A batch-write result, or an unsubscribe-all result with its per-subscription `statuses`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct StatusResult {
    subscriber_id_string: String,
    subscription_id: Option<i64>,
    set_status_success_reason: Option<String>,
    statuses: Vec<StatusResult>,
}

/// A contact upsert result: the echoed trace id, and the properties, email among them.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct UpsertResult {
    object_write_trace_id: Option<String>,
    properties: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BatchError {
    message: String,
    category: String,
    context: BTreeMap<String, serde_json::Value>,
}

impl BatchError {
    /// Whether the error's context names `email` or `trace_id` (context values are arrays of
    /// strings).
    fn names(&self, email: &str, trace_id: Option<&str>) -> bool {
        let named = |v: &serde_json::Value| {
            v.as_str()
                .is_some_and(|s| Some(s) == trace_id || normalize::email(s) == email)
        };
        self.context.values().any(|v| match v {
            serde_json::Value::Array(values) => values.iter().any(named),
            other => named(other),
        })
    }
}

impl<R> BatchResponse<R> {
    /// The error naming the input of `email` (or its `trace_id`), as its permanent outcome.
    fn rejection(
        &self,
        email: &str,
        trace_id: Option<&str>,
        correlation_id: Option<&str>,
    ) -> Option<Outcome> {
        let error = self.errors.iter().find(|e| e.names(email, trace_id))?;
        Some(Outcome::permanent(format!(
            "HubSpot rejected the input: {} [{}]{}",
            redact(&error.message, &[email]),
            error.category,
            correlation_suffix(correlation_id)
        )))
    }
}

impl BatchResponse<UpsertResult> {
    /// The outcome of one upsert input. A successful upsert counts as "already applied": the
    /// consent change is the status write that follows, so the item's fate is left to it.
    fn upsert_outcome(&self, input: &ContactInput, correlation_id: Option<&str>) -> Outcome {
        let trace_id = input.object_write_trace_id.as_str();
        let found = self.results.iter().any(|r| {
            r.object_write_trace_id.as_deref() == Some(trace_id)
                || r.properties
                    .get("email")
                    .and_then(Option::as_deref)
                    .is_some_and(|e| normalize::email(e) == input.id)
        });
        if found {
            return Outcome::AlreadyApplied;
        }
        self.rejection(&input.id, Some(trace_id), correlation_id)
            .unwrap_or_else(|| Outcome::retryable("no result for input"))
    }
}

impl BatchResponse<StatusResult> {
    /// The outcome of one input: the input for `subscription_id` of `email` in a batch write, or
    /// `email`'s entry in an unsubscribe-all (`subscription_id` `None`).
    fn status_outcome(
        &self,
        email: &str,
        subscription_id: Option<i64>,
        correlation_id: Option<&str>,
    ) -> Outcome {
        let result = self.results.iter().find(|r| {
            normalize::email(&r.subscriber_id_string) == email
                && (subscription_id.is_none() || r.subscription_id == subscription_id)
        });
        if let Some(result) = result {
            return if result.changed_nothing() {
                Outcome::AlreadyApplied
            } else {
                Outcome::Applied
            };
        }
        self.rejection(email, None, correlation_id)
            .unwrap_or_else(|| Outcome::retryable("no result for input"))
    }
}

impl BatchResponse<StatusResult> {
    /// The outcome of one unsubscribe-all input. HubSpot lists contacts only on request
    /// (`verbose`) but always lists errors: an input no error names is done, whether or not a
    /// result lists it (docs/vendors/hubspot.md §1c).
    fn unsubscribe_all_outcome(&self, email: &str, correlation_id: Option<&str>) -> Outcome {
        match self.status_outcome(email, None, correlation_id) {
            Outcome::Retryable { .. } => Outcome::Applied,
            decided => decided,
        }
    }
}

impl StatusResult {
    /// True when every reason HubSpot gave is `NO_STATUS_CHANGE`. An unsubscribe-all result may
    /// carry its reasons per subscription type in `statuses`; no reason at all counts as a change.
    fn changed_nothing(&self) -> bool {
        let reasons: Vec<&str> = self
            .set_status_success_reason
            .as_deref()
            .into_iter()
            .chain(
                self.statuses
                    .iter()
                    .filter_map(|s| s.set_status_success_reason.as_deref()),
            )
            .collect();
        !reasons.is_empty() && reasons.iter().all(|r| *r == NO_STATUS_CHANGE)
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

    use super::*;

    fn batch<R: DeserializeOwned + Default>(json: &str) -> BatchResponse<R> {
        serde_json::from_str(json).unwrap()
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Reply {
            status,
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    fn sink() -> HubSpotSink {
        HubSpotSink::new(HubSpotConfig {
            token: Some("t".into()),
            ..HubSpotConfig::default()
        })
        .unwrap()
    }

    fn after(outcome: &Outcome) -> Option<Duration> {
        match outcome {
            Outcome::Unavailable { after, .. } => *after,
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn status_results_map_per_input() {
        let b: BatchResponse<StatusResult> = batch(
            r#"{"status":"COMPLETE","results":[
                {"subscriberIdString":"a@b.de","subscriptionId":1,"status":"SUBSCRIBED",
                 "setStatusSuccessReason":"REQUESTED_CHANGE_OCCURRED"},
                {"subscriberIdString":"A@B.de","subscriptionId":2,
                 "setStatusSuccessReason":"NO_STATUS_CHANGE"}],
              "errors":[{"status":"error","category":"VALIDATION_ERROR",
                 "message":"Invalid email address bad@@x","context":{"subscriberIdString":["bad@@x"]}}],
              "numErrors":1}"#,
        );
        assert_eq!(b.status_outcome("a@b.de", Some(1), None), Outcome::Applied);
        assert_eq!(
            b.status_outcome("a@b.de", Some(2), None),
            Outcome::AlreadyApplied
        );
        assert_eq!(
            b.status_outcome("bad@@x", Some(1), Some("c0ffee")),
            Outcome::permanent(
                "HubSpot rejected the input: Invalid email address <email> [VALIDATION_ERROR] \
                 (correlationId c0ffee)"
            )
        );
        assert_eq!(
            b.status_outcome("a@b.de", Some(3), None),
            Outcome::retryable("no result for input")
        );
    }

    #[test]
    fn unsubscribe_all_reasons_may_sit_per_subscription() {
        let b: BatchResponse<StatusResult> = batch(
            r#"{"results":[
                {"subscriberIdString":"a@b.de","statuses":[
                    {"subscriptionId":1,"setStatusSuccessReason":"NO_STATUS_CHANGE"},
                    {"subscriptionId":2,"setStatusSuccessReason":"NO_STATUS_CHANGE"}]},
                {"subscriberIdString":"c@d.de","statuses":[
                    {"subscriptionId":1,"setStatusSuccessReason":"NO_STATUS_CHANGE"},
                    {"subscriptionId":2,"setStatusSuccessReason":"UNSUBSCRIBE_FROM_ALL_OCCURRED"}]},
                {"subscriberIdString":"e@f.de","statuses":[]}]}"#,
        );
        assert_eq!(
            b.status_outcome("a@b.de", None, None),
            Outcome::AlreadyApplied
        );
        assert_eq!(b.status_outcome("c@d.de", None, None), Outcome::Applied);
        assert_eq!(b.status_outcome("e@f.de", None, None), Outcome::Applied);
    }

    fn upsert_input(email: &str, trace_id: &str) -> ContactInput {
        ContactInput {
            item: 0,
            id: email.into(),
            id_property: "email",
            properties: BTreeMap::new(),
            object_write_trace_id: trace_id.into(),
        }
    }

    #[test]
    fn upsert_results_match_by_trace_id_or_email_and_errors_by_context() {
        let b: BatchResponse<UpsertResult> = batch(
            r#"{"status":"COMPLETE","results":[
                {"id":"101","new":true,"archived":false,"objectWriteTraceId":"t-1",
                 "properties":{"email":"a@b.de"}},
                {"id":"102","new":false,"archived":false,
                 "properties":{"email":"C@d.de","firstname":null}}],
              "errors":[
                {"status":"error","category":"VALIDATION_ERROR","context":{"ids":["no-at-sign"]},
                 "message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Email address no-at-sign is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}]"},
                {"status":"error","category":"VALIDATION_ERROR","context":{"objectWriteTraceId":["t-4"]},
                 "message":"Something else"}]}"#,
        );
        let done = Outcome::AlreadyApplied;
        assert_eq!(b.upsert_outcome(&upsert_input("a@b.de", "t-1"), None), done);
        assert_eq!(b.upsert_outcome(&upsert_input("c@d.de", "t-2"), None), done);
        let rejected = b.upsert_outcome(&upsert_input("no-at-sign", "t-3"), Some("abc-123"));
        let Outcome::Permanent { reason } = &rejected else {
            panic!("{rejected:?}");
        };
        assert!(
            reason.starts_with("HubSpot rejected the input: Property values were not valid"),
            "{reason}"
        );
        assert!(
            reason.ends_with("[VALIDATION_ERROR] (correlationId abc-123)"),
            "{reason}"
        );
        assert!(!reason.contains("no-at-sign"), "{reason}");
        assert!(matches!(
            b.upsert_outcome(&upsert_input("x@y.de", "t-4"), None),
            Outcome::Permanent { .. }
        ));
        assert_eq!(
            b.upsert_outcome(&upsert_input("z@y.de", "t-5"), None),
            Outcome::retryable("no result for input")
        );
    }

    #[test]
    fn error_detail_names_message_category_and_correlation_id() {
        let e: ErrorBody = serde_json::from_str(
            r#"{"status":"error","message":"Contact x@y.de is blocked","category":"VALIDATION_ERROR",
                "correlationId":"c0ffee"}"#,
        )
        .unwrap();
        assert_eq!(
            e.detail(b"", Some("from-header"), &[]),
            "Contact <email> is blocked [VALIDATION_ERROR] (correlationId c0ffee)"
        );
        let no_id = ErrorBody {
            correlation_id: None,
            ..e
        };
        assert_eq!(
            no_id.detail(b"", Some("from-header"), &[]),
            "Contact <email> is blocked [VALIDATION_ERROR] (correlationId from-header)"
        );
        let foreign = ErrorBody::default();
        assert_eq!(
            foreign.detail(b"<html>bad gateway</html>", None, &[]),
            "<html>bad gateway</html>"
        );
        assert_eq!(
            foreign.detail(b"no such list: plain-text", None, &["plain-text"]),
            "no such list: <email>"
        );
        assert_eq!(foreign.detail(b"", None, &[]), "no error body");
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let r = reply(
            200,
            &[
                ("X-HubSpot-RateLimit-Remaining", "0"),
                ("X-HubSpot-RateLimit-Interval-Milliseconds", "1000"),
                ("X-HubSpot-RateLimit-Daily-Remaining", "249999"),
            ],
            "",
        );
        let limits = RateLimitHeaders::read(&r);
        assert_eq!(
            limits,
            RateLimitHeaders {
                remaining: Some(0),
                interval: Some(Duration::from_secs(1)),
                daily_remaining: Some(249_999),
            }
        );
        assert_eq!(
            RateLimitHeaders::read(&reply(200, &[], "")).interval(),
            DEFAULT_INTERVAL
        );
    }

    #[tokio::test]
    async fn a_secondly_429_without_retry_after_waits_the_named_window() {
        let sink = sink();
        let body = r#"{"status":"error","message":"You have reached your secondly limit.",
            "category":"RATE_LIMITS","policyName":"TEN_SECONDLY_ROLLING"}"#;
        let error: ErrorBody = serde_json::from_str(body).unwrap();
        let r = reply(429, &[], body);
        let outcome = sink.failure(&r, &error, &RateLimitHeaders::read(&r), &[]);
        assert_eq!(after(&outcome), Some(DEFAULT_INTERVAL));

        let r = reply(
            429,
            &[("X-HubSpot-RateLimit-Interval-Milliseconds", "1500")],
            body,
        );
        let outcome = sink.failure(&r, &error, &RateLimitHeaders::read(&r), &[]);
        assert_eq!(after(&outcome), Some(Duration::from_secs(2)), "rounded up");

        let r = reply(429, &[("Retry-After", "3")], body);
        let outcome = sink.failure(&r, &error, &RateLimitHeaders::read(&r), &[]);
        assert_eq!(after(&outcome), Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn a_daily_429_waits_for_midnight_utc() {
        let sink = sink();
        let body = r#"{"status":"error","message":"You have reached your daily limit.",
            "category":"RATE_LIMITS","policyName":"DAILY"}"#;
        let error: ErrorBody = serde_json::from_str(body).unwrap();
        let r = reply(429, &[], body);
        let wait = after(&sink.failure(&r, &error, &RateLimitHeaders::read(&r), &[])).unwrap();
        let expected = until_utc_midnight(SystemTime::now());
        assert!(
            wait.abs_diff(expected) <= Duration::from_secs(2),
            "{wait:?}"
        );
    }

    #[test]
    fn midnight_utc() {
        let day = 86_400;
        let at = |secs: u64| until_utc_midnight(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(20_000 * day + 3_600), Duration::from_secs(day - 3_600));
        assert_eq!(at(20_000 * day), Duration::from_secs(day));
        assert_eq!(at(20_001 * day - 1), Duration::from_secs(1));
    }
}
