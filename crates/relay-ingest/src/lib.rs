//! `consent-relay ingest`: the HTTP server that hears what people decided *at* a downstream (an
//! unsubscribe link in a newsletter, a HubSpot opt-out, a GDPR deletion there) and puts it on the
//! source topic as a consent event, so every other downstream follows (DESIGN.md §3.9).
//!
//! Owns: verifying each vendor's webhooks (HubSpot v3 signatures, Mailchimp's URL secret, Brevo's
//! configured credentials), mapping them to `Unsubscribed` / `ConsentWithdrawn` /
//! `ErasureRequested` through the configured purpose maps, finding the subject by email hash in
//! the ledger (following a vendor's address change, and remembering each HubSpot contact's
//! address hash for its privacy deletion, which comes once the address is gone), recording
//! people the ledger does not know, not publishing the relay's own withdrawals a vendor reports
//! back (echoes), deterministic event ids, and answering 2xx only after the broker acknowledged
//! the events; `--poll` reads Mailchimp's unsubscribes where its webhooks cannot be used
//! (`poll`). Must not: apply anything to a downstream, decide versions (the version rule in the
//! consumers does, as for any event), turn a vendor-side opt-in into a grant (no notice, no proof
//! of consent), or log or store a raw email address.

#![forbid(unsafe_code)]

pub mod brevo;
pub mod config;
pub mod hubspot;
pub mod mailchimp;
pub mod metrics;
pub mod notice;
pub mod poll;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use relay_events::ConsentEvent;
use relay_ledger::AnyLedger;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{BrevoAuth, BrevoIngest, HubSpotIngest, IngestConfig, MailchimpIngest, Secret};
pub use metrics::Metrics;
pub use notice::{ListWriters, Notice, Vendor};

pub const HUBSPOT_PATH: &str = "/webhooks/hubspot";
pub const MAILCHIMP_PATH: &str = "/webhooks/mailchimp/{secret}";
pub const BREVO_PATH: &str = "/webhooks/brevo";

/// The vendors time out (HubSpot after a few seconds) and retry; an answer that comes too late
/// is a retry anyway, so give up first and say so (503). One budget per request, lookups and
/// publishing together.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// How long the contact addresses of one webhook request may take to learn, after its answer.
const LEARN_WITHIN: Duration = Duration::from_secs(60);
/// Contact reads for learning at once, over all requests.
const LEARN_READS: usize = 4;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the events go: Kafka in production, a recorder in tests.
pub trait Publish: Send + Sync + 'static {
    /// Returns once every event is durable, or why not.
    fn publish<'a>(&'a self, events: &'a [ConsentEvent]) -> BoxFuture<'a, Result<(), String>>;
}

/// Publishes to the source topic and waits for the broker's acknowledgement.
pub struct KafkaPublish {
    pub publisher: relay_runtime::Publisher,
    pub topic: String,
}

impl Publish for KafkaPublish {
    fn publish<'a>(&'a self, events: &'a [ConsentEvent]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.publisher
                .send(&self.topic, events)
                .await
                .map_err(|e| format!("publishing to {} failed: {e}", self.topic))
        })
    }
}

#[derive(Clone)]
pub struct Ingest {
    config: Arc<IngestConfig>,
    ledger: Arc<AnyLedger>,
    publish: Arc<dyn Publish>,
    metrics: Metrics,
    http: reqwest::Client,
    /// Polls read pages of a thousand members: more time than a webhook's lookup may take.
    poll_http: reqwest::Client,
    writers: Option<ListWriters>,
    /// The contact addresses being learned after their requests' answers: waited for on
    /// shutdown (at most [`LEARN_WITHIN`]).
    learning: tokio_util::task::TaskTracker,
    /// Contact reads for learning at once, so that they leave HubSpot's rate limit to the reads
    /// that answer webhooks.
    learn_reads: Arc<tokio::sync::Semaphore>,
}

impl Ingest {
    pub fn new(
        config: IngestConfig,
        ledger: Arc<AnyLedger>,
        publish: Arc<dyn Publish>,
        metrics: Metrics,
    ) -> Ingest {
        Ingest {
            config: Arc::new(config),
            ledger,
            publish,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            poll_http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            writers: None,
            learning: tokio_util::task::TaskTracker::new(),
            learn_reads: Arc::new(tokio::sync::Semaphore::new(LEARN_READS)),
        }
    }

    /// Which destinations write which vendor list (from the newsletter sink's configuration):
    /// echoes are then recognised by the list the relay wrote. Without it, a withdrawal
    /// delivered to any newsletter destination makes a Mailchimp or Brevo notice an echo.
    pub fn with_list_writers(mut self, writers: ListWriters) -> Ingest {
        self.writers = Some(writers);
        self
    }

    /// The webhook routes of the configured vendors, and `/healthz`.
    pub fn router(self) -> Router {
        let mut router = Router::new().route("/healthz", get(|| async { "ok" }));
        if self.config.hubspot.is_some() {
            router = router.route(HUBSPOT_PATH, post(hubspot_webhook));
        }
        // Polled only: no secret, no route (an empty secret would let anyone in).
        if self
            .config
            .mailchimp
            .as_ref()
            .is_some_and(|m| !m.path_secret.is_blank())
        {
            router = router.route(MAILCHIMP_PATH, get(mailchimp_check).post(mailchimp_webhook));
        }
        if self.config.brevo.is_some() {
            router = router.route(BREVO_PATH, post(brevo_webhook));
        }
        router
            .layer(DefaultBodyLimit::max(self.config.max_body_bytes))
            .with_state(self)
    }

    /// Turns verified notices into events and publishes them: known people's decisions are
    /// published (and acknowledged) before the 200, unknown people are recorded.
    async fn decide(
        &self,
        vendor: Vendor,
        notices: Vec<Notice>,
        ignored: Vec<&'static str>,
        deadline: Instant,
    ) -> Response {
        for reason in &ignored {
            self.metrics.add(metrics::IGNORED, vendor, reason, 1);
        }
        match tokio::time::timeout_at(deadline, self.publish_known(vendor, notices)).await {
            Ok(Ok(Outcome {
                published,
                unknown,
                echoes,
            })) => (
                StatusCode::OK,
                Json(json!({
                    "published": published,
                    "unknown": unknown,
                    "echoes": echoes,
                    "ignored": ignored.len(),
                })),
            )
                .into_response(),
            Ok(Err(failure)) => failure.into_response(),
            // The publish may still land after the 503; the vendor's retry then carries the
            // same event id, a duplicate the consumers recognise.
            Err(_) => self.too_late(vendor),
        }
    }

    fn too_late(&self, vendor: Vendor) -> Response {
        self.metrics.add(metrics::FAILED, vendor, "timeout", 1);
        tracing::warn!(
            vendor = vendor.as_str(),
            "webhook not decided in time; answering 503"
        );
        unavailable("not decided in time")
    }

    async fn publish_known(
        &self,
        vendor: Vendor,
        notices: Vec<Notice>,
    ) -> Result<Outcome, Failure> {
        let mut events = Vec::new();
        let (mut unknown, mut echoes) = (0, 0);
        for notice in notices {
            let subject = match notice.email_sha256() {
                Some(hash) => self.ledger.subject_for_email(&hash).await.map_err(|e| {
                    self.fail(vendor, "ledger", format!("ledger lookup failed: {e}"))
                })?,
                None => None,
            };
            match subject {
                Some(subject) => {
                    let Some(notice) = self.beyond_echo(vendor, &subject, notice).await? else {
                        echoes += 1;
                        continue;
                    };
                    let event = notice.into_event(subject);
                    if let Err(e) = event.validate() {
                        self.metrics.add(metrics::FAILED, vendor, "invalid", 1);
                        tracing::warn!(vendor = vendor.as_str(), event_id = %event.event_id, error = %e, "webhook does not make a valid event");
                        return Err(Failure::Invalid(e.to_string()));
                    }
                    events.push(event);
                }
                None => {
                    let record = notice.unknown();
                    let new = self
                        .ledger
                        .record_unknown_contact(&record)
                        .await
                        .map_err(|e| {
                            self.fail(
                                vendor,
                                "ledger",
                                format!("recording an unknown contact failed: {e}"),
                            )
                        })?;
                    // A vendor's retry, or a poll reading it again, is the same record.
                    if new {
                        tracing::info!(vendor = vendor.as_str(), event_id = %record.event_id, email_sha256 = record.email_sha256.as_deref().unwrap_or("-"), "decision about a contact the ledger does not know; recorded");
                        self.metrics.add(metrics::UNKNOWN, vendor, "", 1);
                    }
                    unknown += 1;
                }
            }
        }
        if !events.is_empty() {
            self.publish
                .publish(&events)
                .await
                .map_err(|e| self.fail(vendor, "publish", e))?;
            for ev in &events {
                tracing::info!(vendor = vendor.as_str(), event_id = %ev.event_id, subject_id = %ev.subject_id, kind = ev.kind.name(), "published");
            }
            self.metrics
                .add(metrics::PUBLISHED, vendor, "", events.len() as u64);
        }
        Ok(Outcome {
            published: events.len(),
            unknown,
            echoes,
        })
    }

    /// Whether the notice only reports back a withdrawal the relay delivered to the vendor
    /// The notice without what only reports back the relay's own withdrawals
    /// ([`Notice::beyond`]); a notice that is all echo is counted and logged, not published.
    async fn beyond_echo(
        &self,
        vendor: Vendor,
        subject: &str,
        notice: Notice,
    ) -> Result<Option<Notice>, Failure> {
        let window = i64::try_from(self.config.echo_window_ms).unwrap_or(i64::MAX);
        let at = notice.occurred_at_ms;
        let event_id = notice.event_id();
        let delivered = self
            .ledger
            .withdrawals_delivered_between(
                subject,
                at.saturating_sub(window),
                at.saturating_add(window),
                event_id,
            )
            .await
            .map_err(|e| self.fail(vendor, "ledger", format!("ledger lookup failed: {e}")))?;
        let left = notice.beyond(&delivered, self.writers.as_ref());
        if left.is_none() {
            self.metrics.add(metrics::IGNORED, vendor, "echo", 1);
            tracing::info!(vendor = vendor.as_str(), %event_id, subject_id = subject, "the vendor reports back a withdrawal the relay delivered there; not published");
        }
        Ok(left)
    }

    /// The address HubSpot has for a contact, `None` once it is deleted.
    async fn hubspot_email(
        &self,
        config: &HubSpotIngest,
        contact_id: i64,
        deadline: Instant,
    ) -> Result<Option<String>, Response> {
        let vendor = Vendor::HubSpot;
        let lookup = hubspot::contact_email(&self.http, config, contact_id);
        match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(email)) => Ok(email),
            Ok(Err(e)) => Err(self.fail(vendor, "lookup", e.to_string()).into_response()),
            Err(_) => Err(self.too_late(vendor)),
        }
    }

    /// Remembers the address hash of HubSpot contacts, for a later notice that names only the
    /// contact; an address not given is read from HubSpot (and dated by that read). Best effort,
    /// one at a time, within [`LEARN_WITHIN`]: a failure is logged and counted
    /// (`address_changes{reason="learn_failed"}`) and not retried, since the vendor got its 2xx.
    async fn learn_contacts(&self, contacts: Vec<hubspot::Learned>) {
        let vendor = Vendor::HubSpot;
        let Some(config) = self.config.hubspot.as_ref() else {
            return;
        };
        let deadline = Instant::now() + LEARN_WITHIN;
        for learned in contacts {
            let contact_ref = learned.contact_ref.clone();
            let learn = async {
                let (email, at) = match learned.email {
                    Some(email) => (Some(email), learned.occurred_at_ms),
                    None => {
                        let _permit = self
                            .learn_reads
                            .acquire()
                            .await
                            .map_err(|e| e.to_string())?;
                        (
                            hubspot::contact_email(&self.http, config, learned.contact_id)
                                .await
                                .map_err(|e| e.to_string())?,
                            now_ms(),
                        )
                    }
                };
                // Deleted again before we asked: nothing to remember.
                let Some(email) = email else {
                    return Ok(false);
                };
                let hash = relay_events::normalize::email_sha256(&email);
                self.ledger
                    .record_contact_ref(vendor.as_str(), &contact_ref, &hash, at)
                    .await
                    .map_err(|e| format!("recording it failed: {e}"))?;
                Ok::<bool, String>(true)
            };
            let reason = match tokio::time::timeout_at(deadline, learn).await {
                Ok(Ok(true)) => "contact_learned",
                Ok(Ok(false)) => "contact_gone",
                Ok(Err(e)) => {
                    tracing::warn!(vendor = vendor.as_str(), contact = %contact_ref, error = %e, "a contact's address was not learned; a later privacy deletion of it will be recorded as unknown");
                    "learn_failed"
                }
                Err(_) => {
                    tracing::warn!(vendor = vendor.as_str(), contact = %contact_ref, "no time left to learn a contact's address; a later privacy deletion of it will be recorded as unknown");
                    "learn_failed"
                }
            };
            self.metrics
                .add(metrics::ADDRESS_CHANGES, vendor, reason, 1);
        }
    }

    /// Follows a vendor-side address change: the new address finds the old one's subject.
    async fn follow_address(
        &self,
        vendor: Vendor,
        vendor_ref: String,
        old_sha256: &str,
        new_sha256: &str,
    ) -> Response {
        let failed = |e: relay_ledger::LedgerError| {
            self.fail(
                vendor,
                "ledger",
                format!("following an address change failed: {e}"),
            )
            .into_response()
        };
        let subject = match self.ledger.subject_for_email(old_sha256).await {
            Ok(subject) => subject,
            Err(e) => return failed(e),
        };
        let Some(subject) = subject else {
            self.metrics
                .add(metrics::ADDRESS_CHANGES, vendor, "unknown_address", 1);
            tracing::info!(
                vendor = vendor.as_str(),
                email_sha256 = old_sha256,
                "address change of an address the ledger does not know; nothing to follow"
            );
            return (StatusCode::OK, Json(json!({"followed": 0}))).into_response();
        };
        if let Err(e) = self
            .ledger
            .record_email_alias(new_sha256, &subject, vendor.as_str(), &vendor_ref)
            .await
        {
            return failed(e);
        }
        self.metrics
            .add(metrics::ADDRESS_CHANGES, vendor, "followed", 1);
        tracing::info!(vendor = vendor.as_str(), subject_id = %subject, email_sha256 = new_sha256, "address change followed");
        (StatusCode::OK, Json(json!({"followed": 1}))).into_response()
    }

    fn fail(&self, vendor: Vendor, stage: &'static str, message: String) -> Failure {
        self.metrics.add(metrics::FAILED, vendor, stage, 1);
        tracing::error!(vendor = vendor.as_str(), stage, error = %message, "not acknowledged: the vendor retries its webhook, a poll reads it again");
        Failure::Unavailable(stage)
    }

    fn reject(&self, vendor: Vendor, reason: &'static str) -> Response {
        self.metrics.add(metrics::REJECTED, vendor, reason, 1);
        tracing::warn!(vendor = vendor.as_str(), reason, "webhook rejected");
        (StatusCode::UNAUTHORIZED, Json(json!({"error": reason}))).into_response()
    }
}

/// What became of a request's notices.
struct Outcome {
    published: usize,
    unknown: usize,
    echoes: usize,
}

#[derive(Debug)]
enum Failure {
    Unavailable(&'static str),
    Invalid(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(stage) => write!(f, "{stage} unavailable"),
            Failure::Invalid(reason) => write!(f, "no valid event: {reason}"),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Unavailable(stage) => unavailable(stage),
            Failure::Invalid(reason) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": reason})),
            )
                .into_response(),
        }
    }
}

fn unavailable(what: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": format!("{what}; retry later")})),
    )
        .into_response()
}

fn malformed(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": reason}))).into_response()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn hubspot_webhook(
    State(ingest): State<Ingest>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let vendor = Vendor::HubSpot;
    let deadline = Instant::now() + ANSWER_WITHIN;
    ingest.metrics.add(metrics::RECEIVED, vendor, "", 1);
    let Some(config) = ingest.config.hubspot.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", ingest.config.public_url.trim_end_matches('/'));
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = hubspot::SignedRequest {
        method: method.as_str(),
        uri: &url,
        body: &body,
        signature: header_text(hubspot::SIGNATURE_HEADER),
        timestamp: header_text(hubspot::TIMESTAMP_HEADER),
    };
    if let Err(why) = hubspot::verify(&config.client_secret, config.max_age_ms, &signed, now_ms()) {
        return ingest.reject(vendor, why.as_str());
    }
    ingest.metrics.add(metrics::VERIFIED, vendor, "", 1);
    let events: Vec<hubspot::WebhookEvent> = match serde_json::from_slice(&body) {
        Ok(events) => events,
        Err(e) => return malformed(format!("HubSpot webhook body is not an event array: {e}")),
    };
    let (pending, ignored) = hubspot::decisions(config, &events);
    let mut learn = hubspot::addresses(&events);
    // Per contact, the newest address this very request tells (by HubSpot's time): it may come
    // with the privacy deletion it precedes, before anything is learned. It is taken over what
    // the ledger holds, which can only be newer when HubSpot delivers out of order.
    let mut changed: HashMap<String, String> = HashMap::new();
    let mut by_time: Vec<&hubspot::Learned> = learn.iter().filter(|l| l.email.is_some()).collect();
    by_time.sort_by_key(|l| l.occurred_at_ms);
    for l in by_time {
        if let Some(email) = &l.email {
            let hash = relay_events::normalize::email_sha256(email);
            changed.insert(l.contact_ref.clone(), hash);
        }
    }
    // Decisions first: what a contact's address is only matters for a later privacy deletion,
    // and must neither take the budget from them nor fail them.
    let mut notices = Vec::new();
    for p in pending {
        let email = match ingest.hubspot_email(config, p.contact_id, deadline).await {
            Ok(email) => email,
            Err(response) => return response,
        };
        let email_hash = match &email {
            Some(email) => {
                // The address as read now, dated now: it may be newer than the notice. A
                // deletion later in this request finds it.
                changed.insert(
                    p.contact_ref(),
                    relay_events::normalize::email_sha256(email),
                );
                learn.push(hubspot::Learned {
                    contact_ref: p.contact_ref(),
                    contact_id: p.contact_id,
                    email: Some(email.clone()),
                    occurred_at_ms: now_ms(),
                });
                None
            }
            // A privacy deletion arrives once the contact is gone: the address it had, as
            // learned from its creation, address change or an earlier opt-out.
            None if p.kind == relay_events::EventKind::ErasureRequested => {
                let contact = p.contact_ref();
                if let Some(hash) = changed.get(&contact) {
                    Some(hash.clone())
                } else {
                    let known = ingest
                        .ledger
                        .contact_email_sha256(vendor.as_str(), &contact);
                    match tokio::time::timeout_at(deadline, known).await {
                        Ok(Ok(hash)) => hash,
                        Err(_) => return ingest.too_late(vendor),
                        Ok(Err(e)) => {
                            return ingest
                                .fail(vendor, "ledger", format!("ledger lookup failed: {e}"))
                                .into_response()
                        }
                    }
                }
            }
            None => None,
        };
        notices.push(p.into_notice(email, email_hash));
    }
    let answer = ingest
        .decide(vendor, notices, vec!["no_decision"; ignored], deadline)
        .await;
    // After the answer, on a budget of its own: a batch of a hundred creations is a hundred
    // contact reads. A vendor retry (answer not 2xx) brings the same entries again.
    if answer.status().is_success() && !learn.is_empty() {
        // The addresses at hand first: a slow HubSpot may use up the budget on reads.
        learn.sort_by_key(|l| l.email.is_none());
        let ingest = ingest.clone();
        ingest
            .learning
            .clone()
            .spawn(async move { ingest.learn_contacts(learn).await });
    }
    answer
}

async fn mailchimp_check(State(ingest): State<Ingest>, Path(secret): Path<String>) -> Response {
    let vendor = Vendor::Mailchimp;
    ingest.metrics.add(metrics::RECEIVED, vendor, "", 1);
    let Some(config) = ingest.config.mailchimp.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !mailchimp::secret_matches(&secret, config.path_secret.expose()) {
        return ingest.reject(vendor, "bad_secret");
    }
    // Mailchimp validates a webhook URL with a GET that must answer 200.
    StatusCode::OK.into_response()
}

async fn mailchimp_webhook(
    State(ingest): State<Ingest>,
    Path(secret): Path<String>,
    body: Bytes,
) -> Response {
    let vendor = Vendor::Mailchimp;
    let deadline = Instant::now() + ANSWER_WITHIN;
    ingest.metrics.add(metrics::RECEIVED, vendor, "", 1);
    let Some(config) = ingest.config.mailchimp.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !mailchimp::secret_matches(&secret, config.path_secret.expose()) {
        return ingest.reject(vendor, "bad_secret");
    }
    ingest.metrics.add(metrics::VERIFIED, vendor, "", 1);
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    match mailchimp::parse(config, &form) {
        Ok(mailchimp::Parsed::Decision(n)) => {
            ingest.decide(vendor, vec![n], vec![], deadline).await
        }
        Ok(mailchimp::Parsed::AddressChange {
            list_id,
            old_sha256,
            new_sha256,
        }) => {
            let follow =
                ingest.follow_address(vendor, format!("list {list_id}"), &old_sha256, &new_sha256);
            tokio::time::timeout_at(deadline, follow)
                .await
                .unwrap_or_else(|_| ingest.too_late(vendor))
        }
        Ok(mailchimp::Parsed::Ignored(why)) => {
            ingest.decide(vendor, vec![], vec![why], deadline).await
        }
        Err(e) => malformed(e.to_string()),
    }
}

async fn brevo_webhook(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    let vendor = Vendor::Brevo;
    let deadline = Instant::now() + ANSWER_WITHIN;
    ingest.metrics.add(metrics::RECEIVED, vendor, "", 1);
    let Some(config) = ingest.config.brevo.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !brevo::authorized(config, auth) {
        return ingest.reject(vendor, "bad_credentials");
    }
    ingest.metrics.add(metrics::VERIFIED, vendor, "", 1);
    let payload: brevo::Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return malformed(format!("Brevo webhook body is not an event object: {e}")),
    };
    match brevo::parse(config, &payload) {
        Ok(brevo::Parsed::Decision(n)) => ingest.decide(vendor, vec![n], vec![], deadline).await,
        Ok(brevo::Parsed::Ignored(why)) => ingest.decide(vendor, vec![], vec![why], deadline).await,
        Err(e) => malformed(e.to_string()),
    }
}

/// Serves the webhooks on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let learning = ingest.learning.clone();
    let served = axum::serve(listener, ingest.router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    // What the answered requests still learn finishes within its budget.
    learning.close();
    if !learning.is_empty() {
        tracing::info!(
            requests = learning.len(),
            waited_at_most_s = LEARN_WITHIN.as_secs(),
            "stopping: waiting for HubSpot contact addresses still being learned"
        );
    }
    learning.wait().await;
    served
}
