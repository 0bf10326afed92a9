//! `ingest --poll`: where a vendor's webhooks cannot be used (no endpoint reachable from the
//! internet, a firewall), read the decisions it holds instead: each mapped Mailchimp list's members
//! unsubscribed since the stored cursor (docs/vendors/mailchimp.md "Polling"). Every unsubscribe
//! found goes the way a webhook's does (subject by email hash, unknown people recorded, echoes
//! left out, published and acknowledged), and the cursor moves only after all of a list's were,
//! so a poll that fails half-way is repeated, never skipped.

use std::time::Duration;

use relay_events::{normalize, EventKind, Scope};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::MailchimpPoll;
use crate::notice::{format_utc_datetime, parse_iso8601, Notice, Vendor};
use crate::{metrics, now_ms, Ingest};

/// Read back this far behind the cursor: Mailchimp filters by its clock and the cursor is ours,
/// and a member who unsubscribed while the previous poll was paging may have been passed over.
/// What is read twice is a duplicate (the same event id).
const OVERLAP_MS: i64 = 10 * 60 * 1000;

/// Mailchimp's largest page of members.
const PAGE: usize = 1000;

/// Passes over a list's unsubscribed members until one finds nobody new.
const MAX_PASSES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("Mailchimp poll: {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// Mailchimp's error `title` only: its `detail` may repeat an address.
    #[error("Mailchimp poll: {url} answered {status} {title}")]
    Status {
        url: String,
        status: u16,
        title: String,
    },
    #[error("Mailchimp poll: {url}: {what}")]
    Answer { url: String, what: String },
    #[error("Mailchimp poll: no API base URL (ingest.mailchimp.poll.api_base_url)")]
    NoBaseUrl,
    #[error("Mailchimp poll: the ledger failed: {0}")]
    Ledger(#[from] relay_ledger::LedgerError),
    #[error("Mailchimp poll of {list}: not published: {why}")]
    Undecided { list: String, why: String },
    #[error("Mailchimp poll of {list}: the unsubscribed members kept changing while they were read ({MAX_PASSES} passes); the next poll reads them again")]
    Unsettled { list: String },
}

/// What one poll of one list found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// `mailchimp:<list id>`, the cursor's name.
    pub source: String,
    /// The cursor read from (after the overlap), and the one stored.
    pub since_ms: i64,
    pub cursor_ms: i64,
    pub unsubscribed: usize,
    pub published: usize,
    pub unknown: usize,
    pub echoes: usize,
    /// Read again within the overlap: logged already, not published twice.
    pub already_logged: usize,
    /// Addresses no event may carry (counted as `ignored{reason="invalid_address"}`).
    pub skipped: usize,
}

#[derive(Deserialize)]
struct MembersPage {
    #[serde(default)]
    members: Vec<MemberRow>,
    total_items: usize,
}

#[derive(Deserialize)]
struct MemberRow {
    email_address: String,
    #[serde(default)]
    last_changed: Option<String>,
    /// When the member last opted in (empty for one who never did).
    #[serde(default)]
    timestamp_opt: Option<String>,
}

#[derive(Deserialize)]
struct ActivityPage {
    #[serde(default)]
    activity: Vec<ActivityRow>,
}

#[derive(Deserialize)]
struct ActivityRow {
    action: String,
    timestamp: String,
}

#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    title: String,
}

impl Ingest {
    /// Polls every mapped list once; a list that fails does not hold back the others.
    pub async fn poll_once(&self) -> Vec<Result<PollReport, PollError>> {
        let Some(mailchimp) = &self.config.mailchimp else {
            return Vec::new();
        };
        let Some(poll) = &mailchimp.poll else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (list_id, purposes) in &mailchimp.lists {
            let result = self.poll_list(poll, list_id, purposes).await;
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            self.metrics
                .add(metrics::POLLS, Vendor::Mailchimp, outcome, 1);
            match &result {
                Ok(r) => tracing::info!(
                    source = %r.source,
                    since_ms = r.since_ms,
                    unsubscribed = r.unsubscribed,
                    published = r.published,
                    unknown = r.unknown,
                    echoes = r.echoes,
                    already_logged = r.already_logged,
                    skipped = r.skipped,
                    "poll finished"
                ),
                Err(e) => {
                    tracing::warn!(list_id, error = %e, "poll failed; the next one reads the same again")
                }
            }
            out.push(result);
        }
        out
    }

    /// Polls every `interval_ms` (counted from the end of a poll) until `shutdown`.
    pub async fn poll_until(&self, shutdown: CancellationToken) {
        let interval = self
            .config
            .mailchimp
            .as_ref()
            .and_then(|m| m.poll.as_ref())
            .map(|p| Duration::from_millis(p.interval_ms));
        let Some(interval) = interval else { return };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.poll_once() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn poll_list(
        &self,
        poll: &MailchimpPoll,
        list_id: &str,
        purposes: &[String],
    ) -> Result<PollReport, PollError> {
        let base = poll.base_url().ok_or(PollError::NoBaseUrl)?;
        let source = format!("mailchimp:{list_id}");
        // The cursor stored is when this poll started: everything Mailchimp held then is read.
        let started = now_ms();
        let since = self
            .ledger
            .poll_cursor(&source)
            .await?
            .map_or(0, |c| c.saturating_sub(OVERLAP_MS).max(0));
        let mut report = PollReport {
            source: source.clone(),
            since_ms: since,
            cursor_ms: started,
            ..PollReport::default()
        };
        let since_text = format_utc_datetime(since).replacen(' ', "T", 1) + "+00:00";
        // Paged by offset while the set may change (a member re-subscribed or erased leaves it and
        // moves the rest forward), so a member may be passed over: read again until a pass finds
        // nobody new. Members seen once are not asked about or published again in this poll.
        let mut seen = std::collections::HashSet::new();
        for pass in 1..=MAX_PASSES {
            // Settled: a pass that read as many members as the list said it held, the same
            // number at its start and its end, and found none it had not seen, except members
            // who changed after this poll started (the next poll's overlap reads them).
            let (mut new_in_pass, mut read_in_pass) = (0, 0);
            let mut totals: Option<(usize, usize)> = None;
            let mut offset = 0;
            loop {
                let page: MembersPage = self
                    .mailchimp_get(
                        poll,
                        &format!("{base}/lists/{list_id}/members"),
                        &[
                            ("status", "unsubscribed"),
                            ("unsubscribed_since", &since_text),
                            ("count", &PAGE.to_string()),
                            ("offset", &offset.to_string()),
                            (
                                "fields",
                                "members.email_address,members.last_changed,members.timestamp_opt,total_items",
                            ),
                        ],
                    )
                    .await?;
                let read = page.members.len();
                read_in_pass += read;
                totals = Some(
                    totals.map_or((page.total_items, page.total_items), |(first, _)| {
                        (first, page.total_items)
                    }),
                );
                let mut notices = Vec::with_capacity(read);
                for member in page.members {
                    let hash = normalize::email_sha256(&member.email_address);
                    if !seen.insert(hash.clone()) {
                        continue;
                    }
                    let changed_since_start = member
                        .last_changed
                        .as_deref()
                        .and_then(parse_iso8601)
                        .is_some_and(|c| c >= started);
                    if !changed_since_start {
                        new_in_pass += 1;
                    }
                    report.unsubscribed += 1;
                    let at = self
                        .unsubscribed_at(poll, &base, list_id, since, &member)
                        .await?;
                    let notice = Notice {
                        vendor: Vendor::Mailchimp,
                        vendor_key: format!(
                            "{list_id}:unsubscribe:{hash}:{}",
                            format_utc_datetime(at)
                        ),
                        vendor_ref: format!("list {list_id}"),
                        lists: vec![list_id.to_owned()],
                        kind: EventKind::Unsubscribed,
                        scope: Scope::Purposes(purposes.to_vec()),
                        email: Some(member.email_address),
                        email_hash: None,
                        occurred_at_ms: at,
                    };
                    // An address the event rules refuse cannot be published; it must not hold
                    // back the list's other members (every other field is ours).
                    let probe = notice.clone().into_event("subject".to_owned());
                    if let Err(e) = probe.validate() {
                        self.metrics
                            .add(metrics::IGNORED, Vendor::Mailchimp, "invalid_address", 1);
                        tracing::warn!(%source, email_sha256 = %hash, error = %e, "unsubscribed member with an address no event may carry; skipped");
                        report.skipped += 1;
                        continue;
                    }
                    notices.push(notice);
                }
                // Read again within the overlap: already logged, nothing to publish twice.
                let ids: Vec<uuid::Uuid> = notices.iter().map(Notice::event_id).collect();
                let logged = self.ledger.logged_event_ids(&ids).await?;
                notices.retain(|n| !logged.contains(&n.event_id()));
                report.already_logged += ids.len() - notices.len();
                let outcome = self
                    .publish_known(Vendor::Mailchimp, notices)
                    .await
                    .map_err(|f| PollError::Undecided {
                        list: source.clone(),
                        why: f.to_string(),
                    })?;
                report.published += outcome.published;
                report.unknown += outcome.unknown;
                report.echoes += outcome.echoes;
                offset += read;
                if read < PAGE || offset >= page.total_items {
                    break;
                }
                // A backfill of a large list takes one activity request per member: say how far
                // it got, a line per page.
                tracing::info!(%source, pass, read = offset, total = page.total_items, published = report.published, "poll in progress");
            }
            let stable = totals.is_some_and(|(first, last)| first == last && read_in_pass >= first);
            if new_in_pass == 0 && stable {
                self.ledger.set_poll_cursor(&source, started).await?;
                return Ok(report);
            }
        }
        // Still changing: the cursor stays, and the next poll reads the same window again.
        Err(PollError::Unsettled { list: source })
    }

    /// When the member unsubscribed: their newest `unsub` activity if it is of this unsubscribe
    /// (since the window's start and after their last opt-in: an older one belongs to an
    /// unsubscribe they took back; an opt-in Mailchimp did not record, an API re-subscribe or
    /// an import, is not seen here); else `last_changed`, which is no earlier than the
    /// unsubscribe, so the withdrawal is never dated before a decision it followed. Mailchimp
    /// keeps 50 events, and whether API and admin unsubscribes appear there is unconfirmed.
    async fn unsubscribed_at(
        &self,
        poll: &MailchimpPoll,
        base: &str,
        list_id: &str,
        since: i64,
        member: &MemberRow,
    ) -> Result<i64, PollError> {
        let hash = normalize::mailchimp_subscriber_hash(&member.email_address);
        let path = format!("{base}/lists/{list_id}/members/{hash}/activity");
        let changed = member.last_changed.as_deref().and_then(parse_iso8601);
        let opted_in = member.timestamp_opt.as_deref().and_then(parse_iso8601);
        let asked: Result<ActivityPage, PollError> = self
            .mailchimp_get(
                poll,
                &path,
                &[
                    ("action", "unsub"),
                    ("fields", "activity.action,activity.timestamp"),
                ],
            )
            .await;
        let activity = match asked {
            Ok(page) => page.activity,
            // One member's activity must not stall the list: last_changed dates it safely.
            Err(e) if changed.is_some() => {
                tracing::warn!(list_id, error = %e, "member activity unreadable; dated by last_changed");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let newest = activity
            .iter()
            .filter(|a| a.action == "unsub")
            .filter_map(|a| parse_iso8601(&a.timestamp))
            .max()
            .filter(|at| *at >= since && opted_in.is_none_or(|o| *at >= o));
        newest.or(changed).ok_or_else(|| PollError::Answer {
            url: path,
            what: "an unsubscribed member with no unsub activity and no last_changed".into(),
        })
    }

    /// GETs `path` with `query` (encoded: Mailchimp's times hold a `+`).
    async fn mailchimp_get<T: serde::de::DeserializeOwned>(
        &self,
        poll: &MailchimpPoll,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, PollError> {
        let url = reqwest::Url::parse_with_params(path, query)
            .map_err(|e| PollError::Answer {
                url: path.to_owned(),
                what: format!("no valid URL: {e}"),
            })?
            .to_string();
        let url = url.as_str();
        let transport = |source| PollError::Transport {
            url: url.to_owned(),
            source,
        };
        let answer = self
            .poll_http
            .get(url)
            .basic_auth("consent-relay", Some(poll.api_key.expose()))
            .send()
            .await
            .map_err(transport)?;
        let status = answer.status().as_u16();
        let body = answer.bytes().await.map_err(transport)?;
        if status != 200 {
            let problem: Problem = serde_json::from_slice(&body).unwrap_or_default();
            return Err(PollError::Status {
                url: url.to_owned(),
                status,
                title: problem.title,
            });
        }
        serde_json::from_slice(&body).map_err(|e| PollError::Answer {
            url: url.to_owned(),
            what: format!("a body that is not the expected JSON: {e}"),
        })
    }
}
