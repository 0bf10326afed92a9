//! A hashed-identifier audience at a network consent-relay ships no client for, spoken to over a
//! small JSON contract an operator points at the network (docs/vendors/generic-audience.md): the
//! audience, its configuration, its requests and the mapping of its answers.
//!
//! The contract: `POST {base_url}{add_path}` or `{remove_path}` with `Authorization: Bearer`, a
//! JSON object whose `members_field` lists one object per person with `email_field` (lowercase hex
//! SHA-256 of the trimmed, lowercased address) and, where configured and known, `phone_field`
//! (SHA-256 of the E.164 number). Any 2xx applies the whole request; adding a member twice or
//! removing an absent one must be a 2xx as well. Everything else is read by its status alone:
//! 408 and 429 pause, 500 and 502-599 retry, and every other status refuses: no single member can
//! cause it.

use relay_delivery::{
    classify_status, redact_emails, ConfigProblems, DestinationConfig, Outcome, Reply, Secret,
};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use relay_events::normalize;

use crate::meta::Session;
use crate::platform::{AudiencePlatform, HASHED_EMAIL};
use crate::reconcile::LedgerHash;
use crate::request::{excerpt, Answer, Body, HttpCall, Member, Op};

/// The most members a request may carry: far above what a network takes in one request, low
/// enough that one request stays a few MiB.
pub const MAX_MEMBERS_CEILING: usize = 50_000;

/// An audience at a network reached through the generic contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericAudience {
    /// The network's API root, e.g. `https://api.example-network.com`.
    pub base_url: String,
    /// Path members are added at, starting with `/`, e.g. `/v1/audiences/4711/members:add`. No
    /// query: `ledger audit` names it, and a credential in it would show there.
    pub add_path: String,
    /// Path members are removed at, starting with `/`, no query.
    pub remove_path: String,
    /// Sent as `Authorization: Bearer`. Normally left out of the file: the binary fills it from
    /// the environment ([`crate::token_env_var`]).
    #[serde(default)]
    pub token: Option<Secret>,
    /// The request body's field that lists the members.
    #[serde(default = "members_field")]
    pub members_field: String,
    /// A member's field for the hashed email.
    #[serde(default = "email_field")]
    pub email_field: String,
    /// A member's field for the hashed phone number; unset: phone numbers are not sent.
    #[serde(default)]
    pub phone_field: Option<String>,
    /// Members per request, at most 50 000. Set it to the network's documented limit.
    #[serde(default = "max_members")]
    pub max_members_per_request: usize,
    /// Rate limit, daily budget, concurrency and timeout of the network account, as the network
    /// documents them; each key set overrides only itself. Defaults: no window, no daily budget,
    /// 60 s timeout.
    #[serde(default = "limits", deserialize_with = "limits_with_overrides")]
    pub limits: DestinationConfig,
}

fn members_field() -> String {
    "members".to_owned()
}
fn email_field() -> String {
    "email_sha256".to_owned()
}
fn max_members() -> usize {
    1_000
}
fn limits() -> DestinationConfig {
    DestinationConfig {
        request_timeout_ms: 60_000,
        ..DestinationConfig::default()
    }
}
fn limits_with_overrides<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<DestinationConfig, D::Error> {
    DestinationConfig::deserialize_over(d, limits())
}

impl AudiencePlatform for GenericAudience {
    fn name(&self) -> &'static str {
        "generic"
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
        ("max_members_per_request", MAX_MEMBERS_CEILING)
    }
    fn credential(&self, field: &str) -> Option<&Option<Secret>> {
        (field == "token").then_some(&self.token)
    }
    fn credential_mut(&mut self, field: &str) -> Option<&mut Option<Secret>> {
        (field == "token").then_some(&mut self.token)
    }
    fn identify(&self, email: &str, phone: Option<&str>) -> Option<(String, Option<String>)> {
        let phone = self.phone_field.as_ref().and(phone);
        Some((
            normalize::generic_email(email)?,
            phone.and_then(normalize::google_phone),
        ))
    }
    fn call(&self, op: Op, batch: &[Member], _: Option<Session>) -> HttpCall {
        call(self, op, batch)
    }
    fn answer(&self, reply: &Reply, sent: usize) -> Answer {
        answer(reply, sent)
    }
    fn problems(&self, problems: &mut ConfigProblems, key: &dyn Fn(&str) -> String, _: &[&str]) {
        // The token and the hashes go to a third party: https only, and nothing in the URL that
        // would swallow the paths appended to it or carry a credential of its own.
        match reqwest::Url::parse(&self.base_url) {
            Ok(url)
                if url.query().is_some()
                    || url.fragment().is_some()
                    || !url.username().is_empty()
                    || url.password().is_some() =>
            {
                problems.push(key("base_url"), "must have no query, fragment or user info")
            }
            _ => {}
        }
        for (field, path) in [
            ("add_path", &self.add_path),
            ("remove_path", &self.remove_path),
        ] {
            if !path.starts_with('/')
                || path
                    .chars()
                    .any(|c| c.is_whitespace() || c == '#' || c == '?')
            {
                problems.push(
                    key(field),
                    "must be a path starting with /, without spaces, ? or #",
                );
            }
        }
        if self.add_path == self.remove_path {
            problems.push(key("remove_path"), "must differ from add_path");
        }
        let mut fields = vec![
            ("members_field", &self.members_field),
            ("email_field", &self.email_field),
        ];
        fields.extend(self.phone_field.as_ref().map(|f| ("phone_field", f)));
        for (field, name) in &fields {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                problems.push(key(field), "must be a JSON field name (letters, digits, _)");
            }
        }
        if self.phone_field.as_ref() == Some(&self.email_field) {
            problems.push(key("phone_field"), "must differ from email_field");
        }
    }
    /// Trim and lowercase, as the ledger hashes.
    fn ledger_hash(&self) -> LedgerHash {
        LedgerHash::Email
    }
    fn recipient(&self) -> (String, String) {
        (
            format!(
                "the network at {} (generic hashed audience, members added at {})",
                host(&self.base_url),
                self.add_path
            ),
            match self.phone_field {
                None => HASHED_EMAIL.to_owned(),
                Some(_) => format!("{HASHED_EMAIL}, SHA-256 of the phone number where given"),
            },
        )
    }
}

/// The host and port of `url`, without user info: what an Art. 15 answer may show (as partner
/// recipients show theirs).
fn host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => "an invalid base_url".to_owned(),
        },
        Err(_) => "an invalid base_url".to_owned(),
    }
}

/// The request for one batch of members.
pub fn call(a: &GenericAudience, op: Op, batch: &[Member]) -> HttpCall {
    let path = match op {
        Op::Add => &a.add_path,
        Op::Remove => &a.remove_path,
    };
    let members: Vec<Value> = batch
        .iter()
        .map(|m| {
            let mut member = Map::new();
            member.insert(a.email_field.clone(), m.email.clone().into());
            if let (Some(field), Some(phone)) = (&a.phone_field, &m.phone) {
                member.insert(field.clone(), phone.clone().into());
            }
            Value::Object(member)
        })
        .collect();
    let mut body = Map::new();
    body.insert(a.members_field.clone(), Value::Array(members));
    HttpCall {
        method: Method::POST,
        url: format!("{}{path}", a.base_url.trim_end_matches('/')),
        headers: Vec::new(),
        body: Body::Json(Value::Object(body)),
    }
}

/// Maps the network's answer to a request of `sent` members: the contract has no per-member
/// results, so the status decides for all of them. Every member is a hash in a fixed shape, so
/// no person can make a request fail: what would be permanent elsewhere (a 400, a 404 for a wrong
/// path, a 413 for a batch too large, a 3xx) is our configuration or the contract, and refused
/// pauses the audience until an operator acts, instead of dead-lettering withdrawals.
pub fn answer(reply: &Reply, sent: usize) -> Answer {
    if reply.is_success() {
        return Answer::applied(sent);
    }
    // An unknown network may echo what it resolved a hash to.
    let body = excerpt(&redact_emails(&String::from_utf8_lossy(&reply.body)));
    let outcome = match classify_status(reply.status, reply.header("retry-after"), body) {
        Outcome::Permanent { reason } => Outcome::Refused {
            reason: match reply.status {
                413 => format!(
                    "{reason} (the network takes fewer members per request than \
                     max_members_per_request)"
                ),
                _ => format!(
                    "{reason} (a request of the generic contract cannot fail for one member)"
                ),
            },
        },
        other => other,
    };
    Answer::whole(outcome, sent)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;
    use serde_json::json;

    use super::*;

    fn audience(phone_field: Option<&str>) -> GenericAudience {
        GenericAudience {
            base_url: "https://net.example/".into(),
            add_path: "/v1/audiences/7/members:add".into(),
            remove_path: "/v1/audiences/7/members:remove".into(),
            token: Some("t".into()),
            members_field: members_field(),
            email_field: email_field(),
            phone_field: phone_field.map(str::to_owned),
            max_members_per_request: max_members(),
            limits: limits(),
        }
    }

    fn member(email: &str, phone: Option<&str>) -> Member {
        Member {
            items: vec![0],
            email: email.into(),
            phone: phone.map(str::to_owned),
        }
    }

    #[test]
    fn members_go_in_the_configured_fields_phones_only_where_asked() {
        let batch = [member("e1", Some("p1")), member("e2", None)];
        let add = call(&audience(Some("phone_sha256")), Op::Add, &batch);
        assert_eq!(add.url, "https://net.example/v1/audiences/7/members:add");
        assert_eq!(
            add.body,
            Body::Json(json!({"members": [
                {"email_sha256": "e1", "phone_sha256": "p1"}, {"email_sha256": "e2"}
            ]}))
        );
        let remove = call(&audience(None), Op::Remove, &batch);
        assert!(remove.url.ends_with("members:remove"));
        assert_eq!(
            remove.body,
            Body::Json(json!({"members": [{"email_sha256": "e1"}, {"email_sha256": "e2"}]}))
        );
    }

    #[test]
    fn the_status_decides_for_every_member() {
        let reply = |status| Reply {
            status,
            headers: HeaderMap::new(),
            body: b"{\"error\":\"x\"}".to_vec(),
        };
        assert_eq!(answer(&reply(204), 2), Answer::applied(2));
        let limited = answer(&reply(429), 2);
        assert!(limited.stops_lane());
        assert_eq!(limited.outcomes()[1].class(), "unavailable");
        assert_eq!(answer(&reply(401), 1).outcomes()[0].class(), "refused");
        assert_eq!(answer(&reply(503), 1).outcomes()[0].class(), "retryable");
        assert_eq!(answer(&reply(408), 1).outcomes()[0].class(), "unavailable");
        for refused in [301, 400, 404, 413, 422, 501] {
            assert_eq!(
                answer(&reply(refused), 1).outcomes()[0].class(),
                "refused",
                "{refused}"
            );
        }
        let echo = Reply {
            body: b"no such member max@example.de".to_vec(),
            ..reply(400)
        };
        assert!(!answer(&echo, 1).outcomes()[0]
            .reason()
            .unwrap()
            .contains('@'));
    }

    #[test]
    fn paths_and_field_names_are_checked() {
        let mut a = audience(Some("email_sha256"));
        a.base_url = "http://net.example/?x=1".into();
        a.add_path = "v1/add".into();
        a.remove_path = "v1/add".into();
        a.members_field = "mem bers".into();
        let mut problems = ConfigProblems::default();
        a.problems(&mut problems, &|f| format!("audiences.n.{f}"), &[]);
        let err = problems.into_result().unwrap_err().to_string();
        for key in [
            "base_url",
            "add_path",
            "remove_path",
            "members_field",
            "phone_field",
        ] {
            assert!(err.contains(&format!("audiences.n.{key}")), "{key}: {err}");
        }
        let mut fine = ConfigProblems::default();
        audience(None).problems(&mut fine, &|f| f.to_owned(), &[]);
        assert!(fine.into_result().is_ok());
    }
}
