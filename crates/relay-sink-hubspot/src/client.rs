use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use relay_delivery::{classify_status, classify_transport, BoxFuture, Outcome, Sink, SinkItem};
use relay_events::normalize;
use serde::Deserialize;

use crate::config::{ConfigError, HubSpotConfig};
use crate::request::{self, Call};

/// HubSpot's `setStatusSuccessReason` for a write that changed nothing.
const NO_STATUS_CHANGE: &str = "NO_STATUS_CHANGE";

/// The HubSpot sink: subscription statuses, global unsubscribe and GDPR delete.
pub struct HubSpotSink {
    http: reqwest::Client,
    base_url: String,
    token: String,
    config: HubSpotConfig,
}

impl HubSpotSink {
    /// Validates `config` and builds the HTTP client.
    pub fn new(config: HubSpotConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .map_err(ConfigError::Client)?;
        Ok(HubSpotSink {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            // validate() has checked that the token is there.
            token: config.token.clone().unwrap_or_default(),
            config,
        })
    }

    async fn deliver_items(&self, items: &[SinkItem]) -> Vec<Outcome> {
        let request::Plan { settled, calls } = request::plan(items, &self.config);
        let mut outcomes = settled;
        // Contacts with a change that did not go through. Their later changes in this delivery are
        // held back too: sending them now would let the runtime's retry of the earlier change land
        // after them and undo the newer decision.
        let mut stalled: HashSet<String> = HashSet::new();
        // HubSpot's rate limit is per account, so after a 429 nothing else in this delivery is sent.
        let mut rate_limited: Option<Outcome> = None;

        for mut call in calls {
            let held: Vec<usize> = call
                .inputs()
                .into_iter()
                .filter(|(_, email)| stalled.contains(*email))
                .map(|(item, _)| item)
                .collect();
            for item in held {
                merge(
                    &mut outcomes[item],
                    Outcome::retryable("held back: an earlier change of this contact failed"),
                );
            }
            if !call.retain(|email| !stalled.contains(email)) {
                continue;
            }

            let per_input = match &rate_limited {
                Some(limited) => vec![limited.clone(); call.inputs().len()],
                None => match self.send(&call).await {
                    Ok(per_input) => per_input,
                    Err(failure) => {
                        if failure.rate_limited {
                            let after = match &failure.outcome {
                                Outcome::Retryable { after, .. } => *after,
                                _ => None,
                            };
                            rate_limited = Some(Outcome::Retryable {
                                after,
                                reason: "not sent: HubSpot answered 429 earlier in this delivery"
                                    .to_owned(),
                            });
                        }
                        vec![failure.outcome; call.inputs().len()]
                    }
                },
            };
            for ((item, email), outcome) in call.inputs().into_iter().zip(per_input) {
                if !outcome.is_done() {
                    stalled.insert(email.to_owned());
                }
                merge(&mut outcomes[item], outcome);
            }
        }

        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retryable("no request covered this item")))
            .collect()
    }

    /// Sends one call and maps the answer to one outcome per input, or one outcome for all.
    async fn send(&self, call: &Call) -> Result<Vec<Outcome>, CallFailure> {
        let inputs = call.inputs();
        let response = self
            .http
            .post(format!("{}{}", self.base_url, call.path()))
            .bearer_auth(&self.token)
            .json(&call.body())
            .send()
            .await
            .map_err(|e| CallFailure::from(classify_transport(&e)))?;
        let status = response.status().as_u16();
        let retry_after = header(&response, "retry-after");
        let body = response
            .bytes()
            .await
            .map_err(|e| CallFailure::from(classify_transport(&e)))?;
        tracing::debug!(
            sink = "hubspot",
            path = call.path(),
            inputs = inputs.len(),
            status,
            "HubSpot answered"
        );

        if !(200..300).contains(&status) {
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            // HubSpot answers a GDPR delete of an unknown contact by blocklisting the address: the
            // erasure holds either way. An empty or foreign 404 body means a wrong URL, not that.
            if matches!(call, Call::GdprDelete(_)) && status == 404 && error.is_hubspot() {
                return Ok(vec![Outcome::Applied]);
            }
            return Err(failure(status, retry_after.as_deref(), &error, &body));
        }

        match call {
            Call::GdprDelete(_) => Ok(vec![Outcome::Applied]),
            Call::BatchWrite(writes) => {
                let Ok(batch) = serde_json::from_slice::<BatchResponse>(&body) else {
                    return Err(unreadable(status));
                };
                Ok(writes
                    .iter()
                    .map(|w| batch.outcome_of(&w.subscriber_id_string, Some(w.subscription_id)))
                    .collect())
            }
            Call::UnsubscribeAll(contacts) => {
                let Ok(batch) = serde_json::from_slice::<BatchResponse>(&body) else {
                    return Err(unreadable(status));
                };
                Ok(contacts
                    .iter()
                    .map(|c| batch.outcome_of(&c.email, None))
                    .collect())
            }
        }
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
        Box::pin(self.deliver_items(items))
    }
}

/// A whole call went wrong; every input in it shares the outcome.
struct CallFailure {
    outcome: Outcome,
    rate_limited: bool,
}

impl From<Outcome> for CallFailure {
    fn from(outcome: Outcome) -> Self {
        CallFailure {
            outcome,
            rate_limited: false,
        }
    }
}

fn failure(status: u16, retry_after: Option<&str>, error: &ErrorBody, body: &[u8]) -> CallFailure {
    // HubSpot does not document Retry-After on 429s; its own SDK waits out the ten-second window.
    let retry_after = retry_after.or((status == 429
        && error.policy_name.as_deref() == Some("TEN_SECONDLY_ROLLING"))
    .then_some("10"));
    CallFailure {
        outcome: classify_status(status, retry_after, error.detail(body)),
        rate_limited: status == 429,
    }
}

fn unreadable(status: u16) -> CallFailure {
    // The change may have happened; repeating a status write is harmless.
    CallFailure::from(Outcome::retryable(format!(
        "HTTP {status}: unreadable HubSpot batch response"
    )))
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Folds the outcome of one more input into its item's outcome.
fn merge(slot: &mut Option<Outcome>, outcome: Outcome) {
    *slot = Some(match slot.take() {
        Some(so_far) => so_far.worst(outcome),
        None => outcome,
    });
}

/// Replaces every word that looks like an email address: outcome reasons end up in the ledger and
/// the DLQ, which must not hold raw addresses.
fn redact(text: &str) -> String {
    text.split_whitespace()
        .map(|word| if word.contains('@') { "<email>" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// HubSpot's error body (api-notes §1g); every field is optional.
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

    /// `message [CATEGORY] (correlationId …)`, or the start of a body that is not HubSpot's.
    fn detail(&self, body: &[u8]) -> String {
        if !self.is_hubspot() {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            return if text.trim().is_empty() {
                "no error body".to_owned()
            } else {
                redact(&text)
            };
        }
        let mut parts = Vec::new();
        if let Some(m) = &self.message {
            parts.push(redact(m));
        }
        if let Some(c) = &self.category {
            parts.push(format!("[{c}]"));
        }
        if let Some(id) = &self.correlation_id {
            parts.push(format!("(correlationId {id})"));
        }
        parts.join(" ")
    }
}

/// The v4 batch envelope (api-notes §1c), reduced to what decides outcomes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BatchResponse {
    results: Vec<StatusResult>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BatchError {
    message: String,
    category: String,
    context: BTreeMap<String, serde_json::Value>,
}

impl BatchError {
    /// Whether the error's context names `email` (context values are arrays of strings).
    fn names(&self, email: &str) -> bool {
        let is_email =
            |v: &serde_json::Value| v.as_str().is_some_and(|s| normalize::email(s) == email);
        self.context.values().any(|v| match v {
            serde_json::Value::Array(values) => values.iter().any(is_email),
            other => is_email(other),
        })
    }
}

impl BatchResponse {
    /// The outcome of one input: the input for `subscription_id` of `email` in a batch write, or
    /// `email`'s entry in an unsubscribe-all (`subscription_id` `None`).
    fn outcome_of(&self, email: &str, subscription_id: Option<i64>) -> Outcome {
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
        if let Some(error) = self.errors.iter().find(|e| e.names(email)) {
            return Outcome::permanent(format!(
                "HubSpot rejected the input: {} [{}]",
                redact(&error.message),
                error.category
            ));
        }
        Outcome::retryable("no result for input")
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
    use super::*;

    fn batch(json: &str) -> BatchResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn batch_results_map_per_input() {
        let b = batch(
            r#"{"status":"COMPLETE","results":[
                {"subscriberIdString":"a@b.de","subscriptionId":1,"status":"SUBSCRIBED",
                 "setStatusSuccessReason":"REQUESTED_CHANGE_OCCURRED"},
                {"subscriberIdString":"A@B.de","subscriptionId":2,
                 "setStatusSuccessReason":"NO_STATUS_CHANGE"}],
              "errors":[{"status":"error","category":"VALIDATION_ERROR",
                 "message":"Invalid email address bad@@x","context":{"subscriberIdString":["bad@@x"]}}],
              "numErrors":1}"#,
        );
        assert_eq!(b.outcome_of("a@b.de", Some(1)), Outcome::Applied);
        assert_eq!(b.outcome_of("a@b.de", Some(2)), Outcome::AlreadyApplied);
        assert_eq!(
            b.outcome_of("bad@@x", Some(1)),
            Outcome::permanent(
                "HubSpot rejected the input: Invalid email address <email> [VALIDATION_ERROR]"
            )
        );
        assert_eq!(
            b.outcome_of("a@b.de", Some(3)),
            Outcome::retryable("no result for input")
        );
    }

    #[test]
    fn unsubscribe_all_reasons_may_sit_per_subscription() {
        let b = batch(
            r#"{"results":[
                {"subscriberIdString":"a@b.de","statuses":[
                    {"subscriptionId":1,"setStatusSuccessReason":"NO_STATUS_CHANGE"},
                    {"subscriptionId":2,"setStatusSuccessReason":"NO_STATUS_CHANGE"}]},
                {"subscriberIdString":"c@d.de","statuses":[
                    {"subscriptionId":1,"setStatusSuccessReason":"NO_STATUS_CHANGE"},
                    {"subscriptionId":2,"setStatusSuccessReason":"UNSUBSCRIBE_FROM_ALL_OCCURRED"}]},
                {"subscriberIdString":"e@f.de","statuses":[]}]}"#,
        );
        assert_eq!(b.outcome_of("a@b.de", None), Outcome::AlreadyApplied);
        assert_eq!(b.outcome_of("c@d.de", None), Outcome::Applied);
        assert_eq!(b.outcome_of("e@f.de", None), Outcome::Applied);
    }

    #[test]
    fn error_detail_names_message_category_and_correlation_id() {
        let e: ErrorBody = serde_json::from_str(
            r#"{"status":"error","message":"Contact x@y.de is blocked","category":"VALIDATION_ERROR",
                "correlationId":"c0ffee"}"#,
        )
        .unwrap();
        assert_eq!(
            e.detail(b""),
            "Contact <email> is blocked [VALIDATION_ERROR] (correlationId c0ffee)"
        );
        let foreign = ErrorBody::default();
        assert_eq!(
            foreign.detail(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(foreign.detail(b""), "no error body");
    }

    #[test]
    fn secondly_rate_limit_without_retry_after_waits_the_window() {
        let e = ErrorBody {
            policy_name: Some("TEN_SECONDLY_ROLLING".into()),
            ..ErrorBody::default()
        };
        let f = failure(429, None, &e, b"");
        assert!(f.rate_limited);
        match f.outcome {
            Outcome::Retryable { after, .. } => assert_eq!(after, Some(Duration::from_secs(10))),
            other => panic!("{other:?}"),
        }
    }
}
