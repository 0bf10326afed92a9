//! Google Customer Match through the Data Manager API (docs/vendors/google.md §3a):
//! `audienceMembers:ingest` adds with both ad consents granted, `audienceMembers:remove` removes;
//! hashes hex-encoded.

use std::time::SystemTime;

use relay_delivery::{classify_status, parse_retry_after, Outcome, Reply};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use relay_delivery::{ConfigProblems, DestinationConfig, Secret};
use relay_events::normalize;

use crate::config::{digits, GoogleAudience, GOOGLE_MAX_MEMBERS};
use crate::meta::Session;
use crate::platform::{AudiencePlatform, HASHED_EMAIL};
use crate::reconcile::LedgerHash;
use crate::request::{excerpt, Answer, Body, HttpCall, Member, Op};

pub const INGEST_PATH: &str = "/v1/audienceMembers:ingest";
pub const REMOVE_PATH: &str = "/v1/audienceMembers:remove";

/// The ingest or remove request for one batch. Adds carry request-level consent: `validate` made
/// sure that every purpose routed to a Google audience means `ad_user_data` and
/// `ad_personalization` consent. Removals need no consent.
pub fn call(a: &GoogleAudience, op: Op, batch: &[Member]) -> HttpCall {
    let members: Vec<Value> = batch
        .iter()
        .map(|m| {
            let mut identifiers = vec![json!({ "emailAddress": m.email })];
            if let Some(phone) = &m.phone {
                identifiers.push(json!({ "phoneNumber": phone }));
            }
            json!({ "userData": { "userIdentifiers": identifiers } })
        })
        .collect();
    let mut body = json!({
        "destinations": [{
            "operatingAccount": {
                "accountType": a.account_type,
                "accountId": a.operating_account_id,
            },
            "productDestinationId": a.product_destination_id,
        }],
        "audienceMembers": members,
        "encoding": "HEX",
    });
    let path = match op {
        Op::Add => {
            body["consent"] = json!({
                "adUserData": "CONSENT_GRANTED",
                "adPersonalization": "CONSENT_GRANTED",
            });
            INGEST_PATH
        }
        Op::Remove => REMOVE_PATH,
    };
    HttpCall {
        method: Method::POST,
        url: format!("{}{path}", a.base_url.trim_end_matches('/')),
        headers: Vec::new(),
        body: Body::Json(body),
    }
}

/// Maps Google's answer to a request of `sent` members. A 2xx means Google took the whole request
/// (it processes asynchronously and answers only a `requestId`).
pub fn answer(reply: &Reply, sent: usize) -> Answer {
    if reply.is_success() {
        return Answer::applied(sent);
    }
    let error = serde_json::from_slice::<Envelope>(&reply.body)
        .map(|e| e.error)
        .unwrap_or_default();
    let detail = if error.message.is_empty() {
        excerpt(&String::from_utf8_lossy(&reply.body))
    } else {
        format!("{} {}", error.status, excerpt(&error.message))
    };
    // The ingestion quota is per project: after RESOURCE_EXHAUSTED nothing else can pass,
    // whatever the HTTP status says, so it counts as the 429 it stands for (the reason keeps the
    // status Google sent).
    let outcome = if error.status == "RESOURCE_EXHAUSTED" && reply.status != 429 {
        Outcome::Unavailable {
            after: reply
                .header("retry-after")
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
            reason: format!("HTTP {} (a quota, as 429): {detail}", reply.status),
        }
    } else {
        classify_status(reply.status, reply.header("retry-after"), detail)
    };

    // Google rejects a whole request for one bad member and names it in a field violation. Only
    // that member is dead-lettered; the others were fine and are retried without it.
    let rejected = error.rejected_members(sent);
    if matches!(outcome, Outcome::Permanent { .. }) && !rejected.is_empty() {
        let outcomes = (0..sent)
            .map(|i| match rejected.iter().find(|(at, _)| *at == i) {
                Some((_, reason)) => {
                    Outcome::permanent(format!("Google rejected this member: {reason}"))
                }
                None => Outcome::retryable(
                    "not applied: Google rejected another member of the same request",
                ),
            })
            .collect();
        return Answer::per_part(outcomes);
    }
    Answer::whole(outcome, sent)
}

#[derive(Deserialize)]
struct Envelope {
    error: GoogleError,
}

/// `google.rpc.Status` as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GoogleError {
    message: String,
    status: String,
    details: Vec<Detail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Detail {
    field_violations: Vec<FieldViolation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FieldViolation {
    field: String,
    description: String,
    reason: String,
}

impl GoogleError {
    /// `(member index, reason)` of every field violation that names a member of the request, e.g.
    /// `audience_members.audience_members[3].user_data`.
    fn rejected_members(&self, sent: usize) -> Vec<(usize, String)> {
        self.details
            .iter()
            .flat_map(|d| &d.field_violations)
            .filter_map(|v| {
                let (_, rest) = v.field.rsplit_once("audience_members[")?;
                let index: usize = rest.split(']').next()?.parse().ok()?;
                let reason = [v.reason.as_str(), v.description.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ");
                (index < sent).then(|| (index, excerpt(&reason)))
            })
            .collect()
    }
}

impl AudiencePlatform for GoogleAudience {
    fn name(&self) -> &'static str {
        "google"
    }
    fn base_url(&self) -> &str {
        &self.base_url
    }
    fn limits(&self) -> &DestinationConfig {
        &self.limits
    }
    fn batch_size(&self) -> usize {
        self.max_members_per_request
    }
    fn batch_limit(&self) -> (&'static str, usize) {
        ("max_members_per_request", GOOGLE_MAX_MEMBERS)
    }
    fn credential(&self, field: &str) -> Option<&Option<Secret>> {
        (field == "token").then_some(&self.token)
    }
    fn credential_mut(&mut self, field: &str) -> Option<&mut Option<Secret>> {
        (field == "token").then_some(&mut self.token)
    }
    fn identify(&self, email: &str, phone: Option<&str>) -> Option<(String, Option<String>)> {
        Some((
            normalize::google_email(email, self.remove_gmail_plus_suffix)?,
            phone.and_then(normalize::google_phone),
        ))
    }
    fn call(&self, op: Op, batch: &[Member], _: Option<Session>) -> HttpCall {
        call(self, op, batch)
    }
    fn answer(&self, reply: &Reply, sent: usize) -> Answer {
        answer(reply, sent)
    }
    fn problems(
        &self,
        problems: &mut ConfigProblems,
        key: &dyn Fn(&str) -> String,
        purposes: &[&str],
    ) {
        digits(
            problems,
            key("operating_account_id"),
            &self.operating_account_id,
        );
        digits(
            problems,
            key("product_destination_id"),
            &self.product_destination_id,
        );
        if self.account_type.is_empty()
            || !self
                .account_type
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
        {
            problems.push(key("account_type"), "must look like \"GOOGLE_ADS\"");
        }
        for purpose in purposes {
            if !self.consent_purposes.iter().any(|p| p == purpose) {
                problems.push(
                    key("consent_purposes"),
                    format!(
                        "does not list {purpose:?}, which routes to this audience: Google adds \
                         members only with ad_user_data and ad_personalization consent"
                    ),
                );
            }
        }
        for listed in &self.consent_purposes {
            if !purposes.contains(&listed.as_str()) {
                problems.push(
                    key("consent_purposes"),
                    format!("lists {listed:?}, which does not route to this audience"),
                );
            }
        }
    }
    fn ledger_hash(&self) -> LedgerHash {
        LedgerHash::Google {
            plus_removed: self.remove_gmail_plus_suffix,
        }
    }
    fn recipient(&self) -> (String, String) {
        (
            format!(
                "Google (Customer Match, Data Manager destination {})",
                self.product_destination_id
            ),
            format!("{HASHED_EMAIL}, SHA-256 of the phone number where given"),
        )
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;

    use super::*;

    fn audience() -> GoogleAudience {
        toml::from_str(
            r#"base_url = "http://fake"
               operating_account_id = "1234567890"
               product_destination_id = "555"
               consent_purposes = ["ads"]"#,
        )
        .unwrap()
    }

    fn members() -> Vec<Member> {
        vec![
            Member {
                items: vec![0],
                email: "e1".into(),
                phone: Some("p1".into()),
            },
            Member {
                items: vec![1],
                email: "e2".into(),
                phone: None,
            },
        ]
    }

    #[test]
    fn ingest_carries_consent_and_remove_does_not() {
        let add = call(&audience(), Op::Add, &members());
        assert_eq!(add.method, Method::POST);
        assert_eq!(add.url, "http://fake/v1/audienceMembers:ingest");
        let destinations = json!([{
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
            "productDestinationId": "555",
        }]);
        let audience_members = json!([
            {"userData": {"userIdentifiers": [{"emailAddress": "e1"}, {"phoneNumber": "p1"}]}},
            {"userData": {"userIdentifiers": [{"emailAddress": "e2"}]}},
        ]);
        assert_eq!(
            add.body,
            Body::Json(json!({
                "destinations": destinations,
                "audienceMembers": audience_members,
                "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
                "encoding": "HEX",
            }))
        );
        let remove = call(&audience(), Op::Remove, &members());
        assert_eq!(remove.url, "http://fake/v1/audienceMembers:remove");
        assert_eq!(
            remove.body,
            Body::Json(json!({
                "destinations": destinations,
                "audienceMembers": audience_members,
                "encoding": "HEX",
            }))
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
    fn quota_exhaustion_makes_the_destination_unavailable_and_throttles() {
        let a = answer(
            &reply(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                 "message": "Quota exceeded for IngestionMutateRequestsPerMinutePerProject"}}),
            ),
            2,
        );
        assert!(a.stops_lane());
        assert_eq!(a.outcomes()[0].class(), "unavailable");
        assert!(
            matches!(&a.outcomes()[1], Outcome::Unavailable { reason, .. }
            if reason.contains("RESOURCE_EXHAUSTED"))
        );
    }

    #[test]
    fn quota_exhaustion_under_another_status_counts_as_a_429() {
        let a = answer(
            &reply(
                400,
                json!({"error": {"code": 400, "status": "RESOURCE_EXHAUSTED", "message": "Quota"}}),
            ),
            2,
        );
        assert!(a.stops_lane());
        assert!(
            matches!(&a.outcomes()[0], Outcome::Unavailable { reason, .. }
            if reason.starts_with("HTTP 400 (a quota, as 429): RESOURCE_EXHAUSTED")),
            "{a:?}"
        );
    }

    #[test]
    fn a_field_violation_dead_letters_only_its_member() {
        // The error shape of the Data Manager quickstart ("Understand success and failure
        // responses").
        let a = answer(
            &reply(
                400,
                json!({"error": {"code": 400, "message": "There was a problem with the request.",
                  "status": "INVALID_ARGUMENT", "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_ARGUMENT"},
                    {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                      {"field": "audience_members.audience_members[1]", "reason": "INVALID_SHA256_FORMAT"}]}]}}),
            ),
            3,
        );
        let classes: Vec<_> = a.outcomes().iter().map(Outcome::class).collect();
        assert_eq!(classes, ["retryable", "permanent", "retryable"]);
        assert!(
            matches!(&a.outcomes()[1], Outcome::Permanent { reason } if reason.contains("INVALID_SHA256_FORMAT"))
        );
    }

    #[test]
    fn other_statuses_go_through_the_classifier() {
        assert_eq!(
            answer(&reply(200, json!({"requestId": "r"})), 2),
            Answer::applied(2)
        );
        let class = |status, body| answer(&reply(status, body), 1).outcomes()[0].class();
        assert_eq!(
            class(
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "m"}})
            ),
            "refused"
        );
        assert_eq!(
            class(
                400,
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "m"}})
            ),
            "permanent"
        );
        assert_eq!(class(503, json!("unavailable")), "retryable");
    }
}
