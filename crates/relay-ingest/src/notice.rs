//! What every vendor's notification becomes before the ledger is asked whom it is about, and the
//! event it then becomes.

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

    /// Whether `sink` (a sink's or destination's name, `newsletter.<list>`) writes to this
    /// vendor: its deliveries are what the vendor's webhooks may echo.
    pub fn is_written_by(self, sink: &str) -> bool {
        let name = match self {
            Vendor::HubSpot => "hubspot",
            Vendor::Mailchimp | Vendor::Brevo => "newsletter",
        };
        sink.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
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
    pub kind: EventKind,
    pub scope: Scope,
    pub email: Option<String>,
    pub occurred_at_ms: i64,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("vendor", &self.vendor)
            .field("vendor_key", &"<may hold an email hash>")
            .field("vendor_ref", &self.vendor_ref)
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
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
        self.email.as_deref().map(normalize::email_sha256)
    }

    pub fn purposes(&self) -> Vec<String> {
        match &self.scope {
            Scope::All => vec!["*".to_owned()],
            Scope::Purposes(p) => p.clone(),
        }
    }

    /// What is left of this notice once the relay's own withdrawals of the same moment are
    /// taken out, `None` if nothing is. The vendor's webhook for a change the relay made there
    /// (an echo) carries the time the relay's request landed, later than the decision it
    /// repeats, and published it would outrank a grant the person gave in between. It is one
    /// when a withdrawal was being delivered to this vendor; what it covers is every purpose the
    /// relay was withdrawing then, at any sink (a list mapped to several purposes echoes the
    /// decisions that withdrew them together). An erasure is covered only by an erasure, an
    /// unsubscribe from everything only by a withdrawal of everything.
    pub fn beyond(self, delivered: &[DeliveredWithdrawal]) -> Option<Notice> {
        if !delivered.iter().any(|d| self.vendor.is_written_by(&d.sink)) {
            return Some(self);
        }
        let erased = delivered
            .iter()
            .any(|d| d.kind == EventKind::ErasureRequested.name());
        let everything = erased
            || delivered
                .iter()
                .any(|d| d.purposes.iter().any(|p| p == "*"));
        match (&self.kind, &self.scope) {
            (EventKind::ErasureRequested, _) => (!erased).then_some(self),
            _ if everything => None,
            (_, Scope::All) => Some(self),
            (_, Scope::Purposes(purposes)) => {
                let left: Vec<String> = purposes
                    .iter()
                    .filter(|p| !delivered.iter().any(|d| d.purposes.contains(p)))
                    .cloned()
                    .collect();
                if left.is_empty() {
                    None
                } else if left.len() == purposes.len() {
                    Some(self)
                } else {
                    // Another event than the whole notice, so another id: a retry of the webhook
                    // that finds other deliveries is no conflicting copy of this one.
                    Some(Notice {
                        vendor_key: format!("{}:beyond:{}", self.vendor_key, left.join(",")),
                        scope: Scope::Purposes(left),
                        ..self
                    })
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(key: &str) -> Notice {
        Notice {
            vendor: Vendor::Mailchimp,
            vendor_key: key.into(),
            vendor_ref: "list a".into(),
            kind: EventKind::Unsubscribed,
            scope: Scope::Purposes(vec!["newsletter".into()]),
            email: Some("Max@Example.de ".into()),
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
    fn the_relays_own_withdrawals_are_taken_out() {
        let withdrawn = |sink: &str, kind: &str, p: &[&str]| DeliveredWithdrawal {
            sink: sink.into(),
            kind: kind.into(),
            purposes: p.iter().map(|p| p.to_string()).collect(),
        };
        let mut n = notice("k1");
        n.scope = Scope::Purposes(vec!["newsletter".into(), "ads".into()]);
        assert_eq!(n.clone().beyond(&[]), Some(n.clone()), "nothing delivered");
        let to_list = withdrawn("newsletter.main", "Unsubscribed", &["newsletter"]);
        let left = n
            .clone()
            .beyond(std::slice::from_ref(&to_list))
            .expect("ads is left");
        assert_eq!(left.scope, Scope::Purposes(vec!["ads".into()]));
        assert_ne!(left.event_id(), n.event_id());
        assert_eq!(
            n.clone()
                .beyond(std::slice::from_ref(&to_list))
                .map(|l| l.event_id()),
            Some(left.event_id()),
            "the same narrowing, the same id"
        );
        let to_meta = withdrawn("audiences.meta", "ConsentWithdrawn", &["ads"]);
        assert_eq!(
            n.clone().beyond(&[to_list.clone(), to_meta.clone()]),
            None,
            "an echo of both"
        );
        assert_eq!(
            n.clone().beyond(std::slice::from_ref(&to_meta)),
            Some(n.clone()),
            "nothing went to this vendor: its webhook is the person's own"
        );
        assert_eq!(
            n.clone()
                .beyond(&[withdrawn("newsletterish", "Unsubscribed", &["*"])]),
            Some(n.clone()),
            "another sink"
        );
        let all_lists = withdrawn("newsletter", "Unsubscribed", &["*"]);
        assert_eq!(n.clone().beyond(std::slice::from_ref(&all_lists)), None);
        let mut all = notice("k2");
        all.scope = Scope::All;
        assert_eq!(
            all.clone().beyond(&[to_list.clone(), to_meta]),
            Some(all.clone())
        );
        assert_eq!(all.clone().beyond(std::slice::from_ref(&all_lists)), None);
        let mut erasure = notice("k3");
        erasure.kind = EventKind::ErasureRequested;
        erasure.scope = Scope::All;
        assert_eq!(
            erasure.clone().beyond(&[all_lists]),
            Some(erasure.clone()),
            "a withdrawal does not repeat an erasure"
        );
        assert_eq!(
            erasure.beyond(&[withdrawn("newsletter.main", "ErasureRequested", &["*"])]),
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
    }
}
