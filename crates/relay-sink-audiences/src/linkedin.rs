//! LinkedIn Matched Audiences (docs/vendors/linkedin.md §4): a Rest.li `BATCH_CREATE` on
//! `/rest/dmpSegments/{id}/users` with one `ADD` or `REMOVE` element per user, answered with one
//! status per element.

use relay_delivery::{classify_status, Outcome, Reply};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use relay_delivery::{ConfigProblems, DestinationConfig, Secret};
use relay_events::normalize;

use crate::config::{digits, LinkedInAudience, LINKEDIN_MAX_USERS_CEILING};
use crate::meta::Session;
use crate::platform::{AudiencePlatform, HASHED_EMAIL};
use crate::reconcile::LedgerHash;
use crate::request::{excerpt, Answer, Body, HttpCall, Member, Op};

/// The batch request for one batch of users.
pub fn call(a: &LinkedInAudience, op: Op, batch: &[Member]) -> HttpCall {
    let action = match op {
        Op::Add => "ADD",
        Op::Remove => "REMOVE",
    };
    let elements: Vec<_> = batch
        .iter()
        .map(|m| {
            json!({
                "action": action,
                "userIds": [{ "idType": "SHA256_EMAIL", "idValue": m.email }],
            })
        })
        .collect();
    HttpCall {
        method: Method::POST,
        url: format!(
            "{}/rest/dmpSegments/{}/users",
            a.base_url.trim_end_matches('/'),
            a.segment_id
        ),
        headers: vec![
            ("linkedin-version", a.linkedin_version.clone()),
            ("x-restli-protocol-version", "2.0.0".to_owned()),
            ("x-restli-method", "BATCH_CREATE".to_owned()),
        ],
        body: Body::Json(json!({ "elements": elements })),
    }
}

/// Maps LinkedIn's answer to a request of `sent` users: per element when the batch went through,
/// else one outcome for all. Re-adding a member or removing an absent one is a 201 "by design"
/// (docs/vendors/README.md §0.6), so every 2xx element is applied.
pub fn answer(reply: &Reply, sent: usize) -> Answer {
    if !reply.is_success() {
        let body = String::from_utf8_lossy(&reply.body);
        let detail = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) if !e.message.is_empty() => format!("{} {}", e.code, excerpt(&e.message)),
            _ => excerpt(&body),
        };
        // LinkedIn's limits are per member and app: after a 429 nothing else can pass, which
        // the driver knows from the whole request being unavailable.
        return Answer::whole(
            classify_status(reply.status, reply.header("retry-after"), detail),
            sent,
        );
    }
    let Ok(batch) = serde_json::from_slice::<BatchResponse>(&reply.body) else {
        // The changes may have landed; sending them again is harmless.
        return Answer::whole(Outcome::retryable("unreadable LinkedIn batch answer"), sent);
    };
    let outcomes = (0..sent)
        .map(|i| match batch.elements.get(i) {
            Some(element) if (200..300).contains(&element.status) => Outcome::Applied,
            Some(element) => classify_status(
                element.status,
                None,
                format!("LinkedIn element status {}", element.status),
            ),
            None => Outcome::retryable("LinkedIn answered no status for this element"),
        })
        .collect();
    Answer::per_part(outcomes)
}

#[derive(Deserialize)]
struct BatchResponse {
    elements: Vec<ElementStatus>,
}

#[derive(Deserialize)]
struct ElementStatus {
    status: u16,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl AudiencePlatform for LinkedInAudience {
    fn name(&self) -> &'static str {
        "linkedin"
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
        ("max_users_per_request", LINKEDIN_MAX_USERS_CEILING)
    }
    fn credential(&self, field: &str) -> Option<&Option<Secret>> {
        (field == "token").then_some(&self.token)
    }
    fn credential_mut(&mut self, field: &str) -> Option<&mut Option<Secret>> {
        (field == "token").then_some(&mut self.token)
    }
    fn identify(&self, email: &str, _: Option<&str>) -> Option<(String, Option<String>)> {
        Some((normalize::linkedin_email(email)?, None))
    }
    fn call(&self, op: Op, batch: &[Member], _: Option<Session>) -> HttpCall {
        call(self, op, batch)
    }
    fn answer(&self, reply: &Reply, sent: usize) -> Answer {
        answer(reply, sent)
    }
    fn problems(&self, problems: &mut ConfigProblems, key: &dyn Fn(&str) -> String, _: &[&str]) {
        digits(problems, key("segment_id"), &self.segment_id);
        if self.linkedin_version.len() != 6
            || !self.linkedin_version.chars().all(|c| c.is_ascii_digit())
        {
            problems.push(key("linkedin_version"), "must be YYYYMM, e.g. \"202601\"");
        }
    }
    /// Trim and lowercase, as the ledger hashes.
    fn ledger_hash(&self) -> LedgerHash {
        LedgerHash::Email
    }
    fn recipient(&self) -> (String, String) {
        (
            format!("LinkedIn (Matched Audience segment {})", self.segment_id),
            HASHED_EMAIL.to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;
    use serde_json::Value;

    use super::*;

    fn audience() -> LinkedInAudience {
        toml::from_str(
            r#"base_url = "http://fake"
               segment_id = "987654"
               linkedin_version = "202601""#,
        )
        .unwrap()
    }

    #[test]
    fn batch_create_with_rest_li_headers() {
        let batch = [Member {
            items: vec![0],
            email: "h1".into(),
            phone: Some("not sent".into()),
        }];
        let add = call(&audience(), Op::Add, &batch);
        assert_eq!(add.method, Method::POST);
        assert_eq!(add.url, "http://fake/rest/dmpSegments/987654/users");
        assert_eq!(
            add.headers,
            vec![
                ("linkedin-version", "202601".to_owned()),
                ("x-restli-protocol-version", "2.0.0".to_owned()),
                ("x-restli-method", "BATCH_CREATE".to_owned()),
            ]
        );
        assert_eq!(
            add.body,
            Body::Json(json!({"elements": [
                {"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": "h1"}]}]}))
        );
        let remove = call(&audience(), Op::Remove, &batch);
        assert!(matches!(&remove.body, Body::Json(b) if b["elements"][0]["action"] == "REMOVE"));
    }

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn element_statuses_map_per_user() {
        let a = answer(
            &reply(
                200,
                json!({"elements": [{"status": 201}, {"status": 200}, {"status": 400},
                                    {"status": 429}, {"status": 500}]}),
            ),
            6,
        );
        assert!(!a.stops_lane());
        let classes: Vec<_> = a.outcomes().iter().map(|o| o.class().as_str()).collect();
        assert_eq!(
            classes,
            [
                "applied",
                "applied",
                "permanent",
                "unavailable",
                "retryable",
                "retryable"
            ]
        );
    }

    #[test]
    fn request_level_errors() {
        let limited = answer(
            &reply(
                429,
                json!({"status": 429, "serviceErrorCode": 101, "code": "TOO_MANY_REQUESTS",
                       "message": "Resource level throttle APPLICATION DAY limit reached"}),
            ),
            2,
        );
        assert!(limited.stops_lane());
        assert!(
            matches!(&limited.outcomes()[0], Outcome::Unavailable { reason, .. }
            if reason.contains("TOO_MANY_REQUESTS"))
        );
        assert_eq!(
            answer(&reply(426, json!({})), 1).outcomes()[0].class(),
            "refused"
        );
        assert_eq!(
            answer(&reply(200, json!([])), 1).outcomes()[0].class(),
            "retryable"
        );
    }
}
