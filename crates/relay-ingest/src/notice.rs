//! What every vendor's notification becomes before the ledger is asked whom it is about, and the
//! event it then becomes.

use std::collections::BTreeMap;

use relay_events::{normalize, ConsentEvent, Contact, EventKind, Scope};
use relay_ledger::DeliveredWithdrawal;
use uuid::Uuid;

/// The namespace of ingest's event ids (UUID v5): the same vendor notification always maps to
/// the same `event_id`, so a vendor's retry is a duplicate the relay recognises.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_4c2e_8b8a_4f0e_9c55_1d2b_ce11_a0e7);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vendor {
    HubSpot,
    Mailchimp,
    Brevo,
}

impl Vendor {
    pub const ALL: [Vendor; 3] = [Vendor::HubSpot, Vendor::Mailchimp, Vendor::Brevo];

    /// Also the events' `source`, so `ledger audit` names the vendor.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::HubSpot => "hubspot",
            Vendor::Mailchimp => "mailchimp",
            Vendor::Brevo => "brevo",
        }
    }

    /// Whether `sink` (a sink's or destination's name, `newsletter.<list>`) is of the sink that
    /// writes to this vendor.
    fn is_written_by(self, sink: &str) -> bool {
        let name = match self {
            Vendor::HubSpot => "hubspot",
            Vendor::Mailchimp | Vendor::Brevo => "newsletter",
        };
        sink.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }
}

/// Which of the relay's destinations write which vendor list, from the newsletter sink's
/// configuration (`newsletter.<name>` writes its `list_id`): an echo is recognised by the very
/// list the relay wrote, not by any list of the vendor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListWriters(BTreeMap<(Vendor, String), Vec<String>>);

impl ListWriters {
    pub fn insert(&mut self, vendor: Vendor, list_id: &str, destination: &str) {
        self.0
            .entry((vendor, list_id.to_owned()))
            .or_default()
            .push(destination.to_owned());
    }

    /// Whether `destination` writes one of `lists` at `vendor`, or, for a notice that names no
    /// list (a Brevo spam complaint), any list there.
    fn writes(&self, vendor: Vendor, lists: &[String], destination: &str) -> bool {
        self.0.iter().any(|((v, list), destinations)| {
            *v == vendor
                && (lists.is_empty() || lists.contains(list))
                && destinations.iter().any(|d| d == destination)
        })
    }
}

/// One consent decision a vendor told us about. Holds the raw email: never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct Notice {
    pub vendor: Vendor,
    /// The vendor's own identity of the notification (its event id, or what identifies the
    /// notification where the vendor has none); the event id is derived from it.
    pub vendor_key: String,
    /// What an operator needs to find the record at the vendor (list id, contact id).
    pub vendor_ref: String,
    /// The vendor's lists the notice is about (none for HubSpot, or a Brevo complaint).
    pub lists: Vec<String>,
    pub kind: EventKind,
    pub scope: Scope,
    pub email: Option<String>,
    /// The address's hash where only that is known: a HubSpot privacy deletion, matched by the
    /// contact id once the contact (and its address) is gone. Ignored when `email` is set.
    pub email_hash: Option<String>,
    pub occurred_at_ms: i64,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("vendor", &self.vendor)
            .field("vendor_key", &"<may hold an email hash>")
            .field("vendor_ref", &self.vendor_ref)
            .field("lists", &self.lists)
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
            .field(
                "email_hash",
                &self.email_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("occurred_at_ms", &self.occurred_at_ms)
            .finish()
    }
}

impl Notice {
    pub fn event_id(&self) -> Uuid {
        let name = format!("{}:{}", self.vendor.as_str(), self.vendor_key);
        Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
    }

    pub fn email_sha256(&self) -> Option<String> {
        self.email
            .as_deref()
            .map(normalize::email_sha256)
            .or_else(|| self.email_hash.clone())
    }

    pub fn purposes(&self) -> Vec<String> {
        match &self.scope {
            Scope::All => vec!["*".to_owned()],
            Scope::Purposes(p) => p.clone(),
        }
    }

    /// What is left of this notice once what merely reports back the relay's own withdrawals
    /// is taken out; `None` when nothing is. Such an echo carries the time the relay's request
    /// landed, later than the decision it repeats, and published it would outrank a grant the
    /// person gave in between. `delivered` is what the relay was delivering for the person around
    /// the notice's time; `writers` which destination writes which list (without it, any
    /// destination of the vendor's sink counts).
    ///
    /// It is an echo only if a withdrawal went to this very list (or HubSpot) then, and only of
    /// an unsubscribe or an erasure (a spam complaint is the person's, whatever the relay did).
    /// It covers the purposes the relay was withdrawing then, at any destination; the rest of the
    /// notice is published: a list mapped to more purposes than the relay withdrew may be the
    /// person's own unsubscribe, and dropping a withdrawal is worse than repeating one.
    pub fn beyond(
        self,
        delivered: &[DeliveredWithdrawal],
        writers: Option<&ListWriters>,
    ) -> Option<Notice> {
        let erasure = self.kind == EventKind::ErasureRequested;
        if !(erasure || self.kind == EventKind::Unsubscribed) {
            return Some(self);
        }
        let is_erasure = |d: &DeliveredWithdrawal| d.kind == EventKind::ErasureRequested.name();
        let caused = delivered.iter().any(|d| {
            let to_this_vendor = match (self.vendor, writers) {
                (Vendor::HubSpot, _) | (_, None) => self.vendor.is_written_by(&d.sink),
                (vendor, Some(w)) => w.writes(vendor, &self.lists, &d.sink),
            };
            to_this_vendor && (!erasure || is_erasure(d))
        });
        if !caused {
            return Some(self);
        }
        if erasure || delivered.iter().any(|d| is_erasure(d) || d.target == "*") {
            return None;
        }
        let Scope::Purposes(purposes) = &self.scope else {
            // An unsubscribe from everything repeats only a withdrawal of everything.
            return Some(self);
        };
        let left: Vec<String> = purposes
            .iter()
            .filter(|p| !delivered.iter().any(|d| &d.target == *p))
            .cloned()
            .collect();
        if left.is_empty() {
            None
        } else if left.len() == purposes.len() {
            Some(self)
        } else {
            // Another event than the whole notice, so another id: a retry of the webhook that
            // finds other deliveries is no conflicting copy of this one.
            Some(Notice {
                vendor_key: format!("{}:beyond-echo:{}", self.vendor_key, left.join(",")),
                scope: Scope::Purposes(left),
                ..self
            })
        }
    }

    /// The event for the person the ledger knows as `subject_id`.
    pub fn into_event(self, subject_id: String) -> ConsentEvent {
        ConsentEvent {
            event_id: self.event_id(),
            kind: self.kind,
            subject_id,
            occurred_at_ms: self.occurred_at_ms,
            source: self.vendor.as_str().to_owned(),
            notice_version: None,
            scope: self.scope,
            contact: Contact {
                // Vendors' forms keep stray spaces; the event rules refuse them.
                email: self.email.map(|e| e.trim().to_owned()),
                ..Contact::default()
            },
        }
    }

    pub fn unknown(&self) -> relay_ledger::UnknownContact {
        relay_ledger::UnknownContact {
            event_id: self.event_id(),
            vendor: self.vendor.as_str().to_owned(),
            kind: self.kind.name().to_owned(),
            purposes: self.purposes(),
            email_sha256: self.email_sha256(),
            vendor_ref: self.vendor_ref.clone(),
            occurred_at_ms: self.occurred_at_ms,
            recorded_at_ms: 0,
        }
    }
}

/// `2009-03-26 21:35:57` (UTC), the form Mailchimp's `fired_at` takes, in milliseconds.
pub fn parse_utc_datetime(text: &str) -> Option<i64> {
    let rfc3339 = format!("{}Z", text.trim().replacen(' ', "T", 1));
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

/// The same time as Mailchimp's `fired_at` writes it (UTC, whole seconds).
pub fn format_utc_datetime(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// ISO 8601 with a zone, as Mailchimp's API writes times (`2015-10-21T15:41:36+00:00`, or `Z`),
/// in milliseconds.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let text = text.trim();
    let (local, offset_min) = if let Some(local) = text.strip_suffix('Z') {
        (local, 0)
    } else {
        let at = text.len().checked_sub(6)?;
        let (local, zone) = (text.get(..at)?, text.get(at..)?);
        let sign = match zone.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = zone.get(1..)?.split_once(':')?;
        let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
        (local, sign * minutes)
    };
    let t = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let ms = i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(ms - offset_min * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(key: &str) -> Notice {
        Notice {
            vendor: Vendor::Mailchimp,
            vendor_key: key.into(),
            vendor_ref: "list a".into(),
            lists: vec!["a".into()],
            kind: EventKind::Unsubscribed,
            scope: Scope::Purposes(vec!["newsletter".into()]),
            email: Some("Max@Example.de ".into()),
            email_hash: None,
            occurred_at_ms: 1,
        }
    }

    #[test]
    fn event_ids_follow_the_vendor_key_only() {
        assert_eq!(notice("k1").event_id(), notice("k1").event_id());
        assert_ne!(notice("k1").event_id(), notice("k2").event_id());
        assert_eq!(notice("k1").event_id().get_version_num(), 5);
        let ev = notice("k1").into_event("s1".into());
        assert_eq!(ev.source, "mailchimp");
        ev.validate().unwrap();
    }

    #[test]
    fn debug_and_unknown_records_hold_no_address() {
        let n = notice("k1");
        assert!(!format!("{n:?}").contains("Example"));
        let u = n.unknown();
        assert_eq!(
            u.email_sha256.as_deref(),
            Some(normalize::email_sha256("max@example.de").as_str())
        );
        assert!(!format!("{u:?}").contains("Example"));
    }

    #[test]
    fn an_echo_is_what_the_relay_withdrew_at_the_same_list() {
        let withdrawn = |sink: &str, target: &str, kind: &str| DeliveredWithdrawal {
            sink: sink.into(),
            target: target.into(),
            kind: kind.into(),
        };
        let mut writers = ListWriters::default();
        writers.insert(Vendor::Mailchimp, "a", "newsletter.main");
        writers.insert(Vendor::Mailchimp, "b", "newsletter.other");
        writers.insert(Vendor::Brevo, "7", "newsletter.brevo");
        let w = Some(&writers);
        let n = notice("k1");
        let to_main = withdrawn("newsletter.main", "newsletter", "Unsubscribed");
        assert_eq!(
            n.clone().beyond(&[], w),
            Some(n.clone()),
            "nothing delivered"
        );
        assert_eq!(n.clone().beyond(std::slice::from_ref(&to_main), w), None);
        let elsewhere = withdrawn("newsletter.other", "newsletter", "Unsubscribed");
        assert_eq!(
            n.clone().beyond(std::slice::from_ref(&elsewhere), w),
            Some(n.clone()),
            "the relay wrote another list: the person's own decision"
        );
        assert_eq!(
            n.clone().beyond(std::slice::from_ref(&elsewhere), None),
            None,
            "without the sink's configuration, any of its destinations"
        );
        assert_eq!(
            n.clone().beyond(
                &[withdrawn("newsletterish", "newsletter", "Unsubscribed")],
                None
            ),
            Some(n.clone())
        );

        // A list for two purposes: the one the relay withdrew is the echo, the other is published.
        let mut two = notice("k2");
        two.scope = Scope::Purposes(vec!["newsletter".into(), "ads".into()]);
        let left = two
            .clone()
            .beyond(std::slice::from_ref(&to_main), w)
            .expect("ads is left");
        assert_eq!(left.scope, Scope::Purposes(vec!["ads".into()]));
        assert_ne!(left.event_id(), two.event_id());
        let with_ads = [
            to_main.clone(),
            withdrawn("audiences.meta", "ads", "ConsentWithdrawn"),
        ];
        assert_eq!(
            two.clone().beyond(&with_ads, w),
            None,
            "withdrawn at Meta too"
        );
        assert_eq!(
            two.clone()
                .beyond(&[withdrawn("audiences.meta", "ads", "ConsentWithdrawn")], w),
            Some(two.clone()),
            "nothing went to this list"
        );
        let everything = withdrawn("newsletter.main", "*", "Unsubscribed");
        assert_eq!(
            two.clone().beyond(std::slice::from_ref(&everything), w),
            None
        );

        // A complaint is the person's own; so is an unsubscribe from everything the relay did not
        // withdraw everything of.
        let mut complaint = notice("k3");
        complaint.kind = EventKind::ConsentWithdrawn;
        assert_eq!(
            complaint.clone().beyond(std::slice::from_ref(&to_main), w),
            Some(complaint)
        );
        let mut all = notice("k4");
        all.scope = Scope::All;
        assert_eq!(
            all.clone().beyond(std::slice::from_ref(&to_main), w),
            Some(all.clone())
        );
        assert_eq!(all.beyond(std::slice::from_ref(&everything), w), None);

        let mut erasure = notice("k5");
        erasure.vendor = Vendor::HubSpot;
        erasure.kind = EventKind::ErasureRequested;
        erasure.scope = Scope::All;
        erasure.lists.clear();
        assert_eq!(
            erasure
                .clone()
                .beyond(&[withdrawn("hubspot", "*", "Unsubscribed")], w),
            Some(erasure.clone()),
            "a withdrawal does not repeat an erasure"
        );
        assert_eq!(
            erasure.beyond(&[withdrawn("hubspot", "*", "ErasureRequested")], w),
            None
        );
    }

    #[test]
    fn mailchimp_times_are_utc() {
        assert_eq!(
            parse_utc_datetime("2009-03-26 21:35:57"),
            Some(1_238_103_357_000)
        );
        assert_eq!(parse_utc_datetime("yesterday"), None);
        assert_eq!(
            format_utc_datetime(1_238_103_357_000),
            "2009-03-26 21:35:57"
        );
    }

    #[test]
    fn api_times_carry_their_zone() {
        let utc = 1_445_442_096_000;
        assert_eq!(parse_iso8601("2015-10-21T15:41:36+00:00"), Some(utc));
        assert_eq!(parse_iso8601("2015-10-21T15:41:36Z"), Some(utc));
        assert_eq!(parse_iso8601("2015-10-21T17:41:36+02:00"), Some(utc));
        assert_eq!(parse_iso8601("2015-10-21T10:41:36-05:00"), Some(utc));
        assert_eq!(parse_iso8601("2015-10-21T15:41:36"), None, "no zone");
        assert_eq!(parse_iso8601(""), None);
    }
}
