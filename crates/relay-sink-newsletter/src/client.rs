use std::collections::BTreeMap;
use std::time::Duration;

use relay_delivery::driver::{self, Answer, Single, Transport};
use relay_delivery::{
    body_excerpt, classify_status, redact_emails, BoxFuture, ConfigError, Destination, Outcome,
    Reply, Secret, Sink, SinkItem,
};
use serde::Deserialize;

use crate::config::{ListConfig, NewsletterConfig};
use crate::request::{self, Call, Op};

/// Brevo's rate-limit headers (docs/vendors/brevo.md §6); `reset` is in seconds.
const BREVO_REMAINING: &str = "x-sib-ratelimit-remaining";
const BREVO_RESET: &str = "x-sib-ratelimit-reset";

/// Mailchimp's `title` for subscribing an address that unsubscribed before.
const MAILCHIMP_COMPLIANCE_STATE: &str = "Member In Compliance State";
/// Mailchimp's `title` for writing an address that was permanently deleted.
const MAILCHIMP_FORGOTTEN: &str = "Forgotten Email Not Subscribed";

const COMPLIANCE_REASON: &str = "Mailchimp refuses to subscribe the address, even as pending \
    re-confirmation, because it is in a compliance state (it bounced or is under review); the \
    person must sign up again through a Mailchimp signup form, a replay will not help";
const FORGOTTEN_REASON: &str = "Mailchimp refuses to subscribe the address because it was \
    permanently deleted (erasure) and cannot be re-imported; the person must sign up again \
    through a Mailchimp signup form, a replay will not help";

/// The newsletter sink: keeps Brevo lists and Mailchimp audiences in step with consent events.
pub struct NewsletterSink {
    /// `newsletter`, or `newsletter.<list>` for a sink of one list.
    name: String,
    pub(crate) config: NewsletterConfig,
    pub(crate) lists: BTreeMap<String, ListClient>,
}

/// One configured list with its HTTP front.
pub(crate) struct ListClient {
    pub(crate) provider: Provider,
    pub(crate) base_url: String,
    api_key: Secret,
    destination: Destination,
}

pub(crate) enum Provider {
    Brevo,
    /// The audience id, to ask whether the audience exists when a member is not found.
    Mailchimp {
        list_id: String,
    },
}

impl NewsletterSink {
    /// Validates `config` and builds one HTTP front (rate limit, concurrency) per list.
    pub fn new(config: NewsletterConfig) -> Result<NewsletterSink, ConfigError> {
        config.validate()?;
        NewsletterSink::build("newsletter".to_owned(), config)
    }

    /// Validates `config` and builds one sink per list, named `newsletter.<list>`, each with the
    /// purposes that route to it.
    pub fn per_list(config: NewsletterConfig) -> Result<Vec<NewsletterSink>, ConfigError> {
        config.validate()?;
        config
            .lists
            .keys()
            .map(|list| NewsletterSink::build(format!("newsletter.{list}"), config.only(list)))
            .collect()
    }

    /// The purposes that route to this sink.
    pub fn purposes(&self) -> std::collections::BTreeSet<String> {
        self.config.purposes()
    }

    fn build(name: String, config: NewsletterConfig) -> Result<NewsletterSink, ConfigError> {
        let mut lists = BTreeMap::new();
        for (name, list) in &config.lists {
            // validate() has checked that the key is there and the base URL derivable.
            let (provider, base_url, api_key, limits) = match list {
                ListConfig::Brevo(b) => (
                    Provider::Brevo,
                    b.base_url.clone(),
                    b.api_key.clone(),
                    &b.limits,
                ),
                ListConfig::Mailchimp(m) => (
                    Provider::Mailchimp {
                        list_id: m.list_id.clone(),
                    },
                    m.effective_base_url().unwrap_or_default(),
                    m.api_key.clone(),
                    &m.limits,
                ),
            };
            let destination = Destination::new(limits.clone()).map_err(ConfigError::Client)?;
            lists.insert(
                name.clone(),
                ListClient {
                    provider,
                    base_url: base_url.trim_end_matches('/').to_owned(),
                    api_key: Secret::new(api_key.unwrap_or_default().expose().trim()),
                    destination,
                },
            );
        }
        Ok(NewsletterSink {
            name,
            config,
            lists,
        })
    }

    /// Sends one call and maps the answer to the item's outcome.
    async fn send(&self, call: &Call) -> Outcome {
        let Some(list) = self.lists.get(&call.list) else {
            return Outcome::permanent(format!("list {:?} is not configured", call.list));
        };
        let mut request = list.destination.http().request(
            call.method.clone(),
            format!("{}{}", list.base_url, call.path),
        );
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let reply = match list.send(request).await {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        };
        // Paths hold the address (Brevo) or its hash (Mailchimp): never logged.
        tracing::debug!(
            sink = "newsletter",
            list = %call.list,
            op = ?call.op,
            status = reply.status,
            "newsletter provider answered"
        );
        match &list.provider {
            Provider::Brevo => {
                list.honor_brevo_rate_limit(&reply);
                brevo_outcome(call.op, &reply)
            }
            Provider::Mailchimp { list_id } => match mailchimp_outcome(call.op, &reply) {
                MailchimpAnswer::Done(Outcome::Applied) if call.op == Op::Subscribe => {
                    match member_status(&reply).as_deref() {
                        Some("subscribed") => Outcome::Applied,
                        // Waiting for the person's click on Mailchimp's opt-in email.
                        Some("pending") => Outcome::AwaitingConfirmation,
                        Some("unsubscribed" | "cleaned") => list.mailchimp_reconfirm(call).await,
                        // Archived, transactional (or an answer without a status): not a
                        // compliance state, so the member may be set subscribed.
                        _ => list.mailchimp_set_subscribed(call).await,
                    }
                }
                MailchimpAnswer::Done(outcome) => outcome,
                MailchimpAnswer::NotFound => list.mailchimp_member_gone(list_id).await,
                MailchimpAnswer::InComplianceState => list.mailchimp_reconfirm(call).await,
            },
        }
    }
}

impl ListClient {
    /// The list's HTTP client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        self.destination.http()
    }

    /// Sends `request` with the provider's authentication, through the list's rate limiter.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, Outcome> {
        let request = match self.provider {
            Provider::Brevo => request.header("api-key", self.api_key.expose()),
            // Mailchimp takes any user name with the key as the password.
            Provider::Mailchimp { .. } => {
                request.basic_auth("consent-relay", Some(self.api_key.expose()))
            }
        };
        self.destination.send(request).await
    }

    /// Brevo tells its limits in headers on every answer, not only on the 429: pausing when the
    /// window is used up saves a rejected request.
    pub(crate) fn honor_brevo_rate_limit(&self, reply: &Reply) {
        let exhausted = reply.status == 429 || reply.header(BREVO_REMAINING) == Some("0");
        let reset = reply
            .header(BREVO_RESET)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (true, Some(reset)) = (exhausted, reset) {
            self.destination.pause_for(Duration::from_secs(reset));
        }
    }

    /// A grant for an existing member that is neither subscribed, pending nor in a compliance
    /// state: set subscribed.
    async fn mailchimp_set_subscribed(&self, call: &Call) -> Outcome {
        self.mailchimp_put_status(call, "subscribed", Outcome::Applied)
            .await
    }

    /// A grant for a member in a compliance state (it unsubscribed before): Mailchimp will not set
    /// it to `subscribed`, but `pending` sends its double opt-in email, and the person's click
    /// subscribes it (docs/vendors/mailchimp.md). The grant is then awaiting confirmation. A
    /// member Mailchimp will not even ask (a bounced address) is a permanent failure.
    async fn mailchimp_reconfirm(&self, call: &Call) -> Outcome {
        self.mailchimp_put_status(call, "pending", Outcome::AwaitingConfirmation)
            .await
    }

    /// Sends the member upsert of `call` again with `status`; `done` is the outcome of success.
    async fn mailchimp_put_status(&self, call: &Call, status: &str, done: Outcome) -> Outcome {
        let mut body = call.body.clone().unwrap_or_default();
        body["status"] = status.into();
        body["status_if_new"] = status.into();
        let request = self
            .destination
            .http()
            .request(
                call.method.clone(),
                format!("{}{}", self.base_url, call.path),
            )
            .json(&body);
        match self.send(request).await {
            Err(outcome) => outcome,
            Ok(reply) => match mailchimp_outcome(call.op, &reply) {
                MailchimpAnswer::Done(Outcome::Applied) => done,
                MailchimpAnswer::Done(outcome) => outcome,
                MailchimpAnswer::InComplianceState => Outcome::permanent(COMPLIANCE_REASON),
                MailchimpAnswer::NotFound => Outcome::Refused {
                    reason: "Mailchimp has no audience with the configured list_id".to_owned(),
                },
            },
        }
    }

    /// A permanent delete answered 404, which Mailchimp also says for a missing audience: only
    /// when the audience exists is the member already gone. A wrong `list_id` must not make
    /// erasures look done.
    async fn mailchimp_member_gone(&self, list_id: &str) -> Outcome {
        let url = format!("{}{}", self.base_url, request::mailchimp_list_path(list_id));
        match self.send(self.destination.http().get(url)).await {
            Err(outcome) => outcome,
            Ok(reply) if reply.is_success() => Outcome::AlreadyApplied,
            Ok(reply) if reply.status == 404 => Outcome::Refused {
                reason: "Mailchimp has no audience with the configured list_id".to_owned(),
            },
            Ok(reply) => {
                let problem: Problem = serde_json::from_slice(&reply.body).unwrap_or_default();
                classify_status(
                    reply.status,
                    reply.header("retry-after"),
                    problem.detail(&reply.body),
                )
            }
        }
    }
}

/// How outcome reasons name a list's provider.
const PROVIDER: &str = "the list's provider";

impl Transport for NewsletterSink {
    /// The list is the lane, the address the person.
    type Request = Single<Call>;

    fn who(&self, _lane: usize) -> &str {
        PROVIDER
    }

    fn send<'a>(&'a self, call: &'a Single<Call>) -> BoxFuture<'a, Answer> {
        Box::pin(async move { Answer::whole(NewsletterSink::send(self, &call.call).await, 1) })
    }
}

impl Sink for NewsletterSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn requires_email(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        let request::Plan { settled, chains } = request::plan(items, &self.config);
        // A chain is one address: its calls wait for each other, other addresses' do not.
        let chains = chains
            .into_iter()
            .enumerate()
            .map(|(address, chain)| {
                chain
                    .into_iter()
                    .map(|call| Single {
                        item: call.item,
                        lane: self
                            .lists
                            .keys()
                            .position(|l| *l == call.list)
                            .unwrap_or(usize::MAX),
                        person: address.to_string(),
                        call,
                    })
                    .collect()
            })
            .collect();
        Box::pin(driver::deliver(self, settled, chains))
    }

    fn destinations(&self) -> Vec<&Destination> {
        self.lists.values().map(|l| &l.destination).collect()
    }
}

fn brevo_outcome(op: Op, reply: &Reply) -> Outcome {
    if reply.is_success() {
        return Outcome::Applied;
    }
    let error: BrevoError = serde_json::from_slice(&reply.body).unwrap_or_default();
    // Nothing to take off a list and nothing to erase. Only Brevo's own code counts: an empty 404
    // is a wrong base URL, not a missing contact.
    if reply.status == 404
        && error.code.as_deref() == Some("document_not_found")
        && op != Op::Subscribe
    {
        return Outcome::AlreadyApplied;
    }
    let wait = match reply.status {
        429 => reply.header(BREVO_RESET).or(reply.header("retry-after")),
        _ => reply.header("retry-after"),
    };
    classify_status(reply.status, wait, error.detail(&reply.body))
}

enum MailchimpAnswer {
    Done(Outcome),
    /// A permanent delete found nothing; whether that is the member or the audience is unknown.
    NotFound,
    /// A subscribe of a member that unsubscribed (or bounced) before.
    InComplianceState,
}

fn mailchimp_outcome(op: Op, reply: &Reply) -> MailchimpAnswer {
    if reply.is_success() {
        return MailchimpAnswer::Done(Outcome::Applied);
    }
    let problem: Problem = serde_json::from_slice(&reply.body).unwrap_or_default();
    let done = MailchimpAnswer::Done;
    match (reply.status, problem.title.as_deref(), op) {
        (400, Some(MAILCHIMP_COMPLIANCE_STATE), Op::Subscribe) => {
            MailchimpAnswer::InComplianceState
        }
        (400, Some(MAILCHIMP_FORGOTTEN), Op::Subscribe) => {
            done(Outcome::permanent(FORGOTTEN_REASON))
        }
        // A permanently deleted address receives nothing: the withdrawal holds already.
        (400, Some(MAILCHIMP_FORGOTTEN), Op::Unsubscribe { .. }) => done(Outcome::AlreadyApplied),
        (404, Some(_), Op::Delete) => MailchimpAnswer::NotFound,
        // An upsert creates missing members, so its 404 is the audience: every item would fail
        // the same way until an operator fixes list_id.
        (404, Some(_), _) => done(Outcome::Refused {
            reason: "Mailchimp has no audience with the configured list_id".to_owned(),
        }),
        _ => done(classify_status(
            reply.status,
            reply.header("retry-after"),
            problem.detail(&reply.body),
        )),
    }
}

/// The `status` of the member a Mailchimp upsert answered with.
fn member_status(reply: &Reply) -> Option<String> {
    #[derive(Deserialize)]
    struct Member {
        status: Option<String>,
    }
    serde_json::from_slice::<Member>(&reply.body)
        .ok()
        .and_then(|m| m.status)
}

/// Brevo's error body (docs/vendors/brevo.md §6).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BrevoError {
    code: Option<String>,
    message: Option<String>,
}

impl BrevoError {
    fn detail(&self, body: &[u8]) -> String {
        match (&self.message, &self.code) {
            (Some(m), Some(c)) => format!("{} [{c}]", redact_emails(m)),
            (Some(m), None) => redact_emails(m),
            (None, Some(c)) => format!("[{c}]"),
            (None, None) => body_excerpt(body),
        }
    }
}

/// Mailchimp's `application/problem+json` error body (docs/vendors/mailchimp.md §6).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Problem {
    title: Option<String>,
    detail: Option<String>,
    instance: Option<String>,
}

impl Problem {
    /// `title: detail (instance …)`, or the start of a body that is not Mailchimp's.
    fn detail(&self, body: &[u8]) -> String {
        let Some(title) = &self.title else {
            return body_excerpt(body);
        };
        let mut out = title.clone();
        if let Some(d) = &self.detail {
            out.push_str(": ");
            out.push_str(&redact_emails(d));
        }
        if let Some(i) = self.instance.as_deref().filter(|i| !i.is_empty()) {
            out.push_str(&format!(" (instance {i})"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn reply(status: u16, headers: &[(&'static str, &str)], body: &str) -> Reply {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Reply {
            status,
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    fn mailchimp(op: Op, r: &Reply) -> Outcome {
        match mailchimp_outcome(op, r) {
            MailchimpAnswer::Done(o) => o,
            MailchimpAnswer::NotFound => panic!("not found"),
            MailchimpAnswer::InComplianceState => Outcome::permanent("in compliance state"),
        }
    }

    #[test]
    fn brevo_not_found_is_done_for_removals_only() {
        let gone = reply(
            404,
            &[],
            r#"{"code":"document_not_found","message":"Contact does not exist"}"#,
        );
        assert_eq!(
            brevo_outcome(Op::Unsubscribe { global: true }, &gone),
            Outcome::AlreadyApplied
        );
        assert_eq!(brevo_outcome(Op::Delete, &gone), Outcome::AlreadyApplied);
        assert!(matches!(
            brevo_outcome(Op::Subscribe, &gone),
            Outcome::Permanent { .. }
        ));
        let empty = reply(404, &[], "");
        assert_eq!(
            brevo_outcome(Op::Delete, &empty),
            Outcome::permanent("HTTP 404: no error body")
        );
    }

    #[test]
    fn brevo_429_waits_for_the_reset_header() {
        let r = reply(
            429,
            &[(BREVO_RESET, "7"), (BREVO_REMAINING, "0")],
            r#"{"code":"too_many_requests","message":"rate limited"}"#,
        );
        assert_eq!(
            brevo_outcome(Op::Subscribe, &r),
            Outcome::Unavailable {
                after: Some(Duration::from_secs(7)),
                reason: "HTTP 429: rate limited [too_many_requests]".into()
            }
        );
    }

    #[test]
    fn brevo_errors_are_redacted() {
        let r = reply(
            400,
            &[],
            r#"{"code":"invalid_parameter","message":"email max@example.de is not valid"}"#,
        );
        assert_eq!(
            brevo_outcome(Op::Subscribe, &r),
            Outcome::permanent("HTTP 400: email <email> is not valid [invalid_parameter]")
        );
        assert!(matches!(
            brevo_outcome(Op::Delete, &reply(401, &[], r#"{"code":"unauthorized"}"#)),
            Outcome::Refused { .. }
        ));
    }

    #[test]
    fn mailchimp_vendor_states() {
        let compliance = reply(
            400,
            &[],
            r#"{"title":"Member In Compliance State","status":400,
                "detail":"a@b.de is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed.","instance":"x"}"#,
        );
        assert!(matches!(
            mailchimp_outcome(Op::Subscribe, &compliance),
            MailchimpAnswer::InComplianceState
        ));
        let forgotten = reply(
            400,
            &[],
            r#"{"title":"Forgotten Email Not Subscribed","status":400,
                "detail":"a@b.de was permanently deleted and cannot be re-imported."}"#,
        );
        assert_eq!(
            mailchimp(Op::Subscribe, &forgotten),
            Outcome::permanent(FORGOTTEN_REASON)
        );
        assert_eq!(
            mailchimp(Op::Unsubscribe { global: false }, &forgotten),
            Outcome::AlreadyApplied
        );
        let other = reply(
            400,
            &[],
            r#"{"title":"Invalid Resource","status":400,"detail":"a@b.de looks fake or invalid","instance":"i-1"}"#,
        );
        assert_eq!(
            mailchimp(Op::Subscribe, &other),
            Outcome::permanent(
                "HTTP 400: Invalid Resource: <email> looks fake or invalid (instance i-1)"
            )
        );
    }

    #[test]
    fn mailchimp_404_is_the_audience_unless_deleting() {
        let missing = reply(
            404,
            &[],
            r#"{"title":"Resource Not Found","status":404,"detail":"The requested resource could not be found."}"#,
        );
        assert!(matches!(
            mailchimp_outcome(Op::Delete, &missing),
            MailchimpAnswer::NotFound
        ));
        assert!(matches!(
            mailchimp(Op::Subscribe, &missing),
            Outcome::Refused { .. }
        ));
        // Not Mailchimp's body: a wrong base URL.
        assert!(matches!(
            mailchimp(Op::Delete, &reply(404, &[], "")),
            Outcome::Permanent { .. }
        ));
    }

    #[test]
    fn a_429_or_a_refusal_blocks_the_list_for_the_delivery() {
        let limited = classify_status(429, Some("3"), "slow");
        assert_eq!(
            limited.unsent_after(PROVIDER),
            Some(Outcome::Unavailable {
                after: Some(Duration::from_secs(3)),
                reason: "not sent: the list's provider was unavailable earlier in this delivery \
                    (HTTP 429: slow)"
                    .into()
            })
        );
        assert!(matches!(
            classify_status(401, None, "key").unsent_after(PROVIDER),
            Some(Outcome::Refused { .. })
        ));
        assert_eq!(classify_status(500, None, "x").unsent_after(PROVIDER), None);
        assert!(matches!(
            Outcome::unavailable("timeout").unsent_after(PROVIDER),
            Some(Outcome::Unavailable { .. })
        ));
        assert_eq!(Outcome::Applied.unsent_after(PROVIDER), None);
    }
}
