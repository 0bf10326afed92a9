use uuid::Uuid;

/// The four event types of the contract (DESIGN.md §2), one Avro record each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ConsentGranted,
    ConsentWithdrawn,
    Unsubscribed,
    ErasureRequested,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::ConsentGranted,
        EventKind::ConsentWithdrawn,
        EventKind::Unsubscribed,
        EventKind::ErasureRequested,
    ];

    /// The Avro record name, also used in JSON lines for `publish`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ConsentGranted => "ConsentGranted",
            EventKind::ConsentWithdrawn => "ConsentWithdrawn",
            EventKind::Unsubscribed => "Unsubscribed",
            EventKind::ErasureRequested => "ErasureRequested",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the event asks of every downstream.
    pub fn action(self) -> Action {
        match self {
            EventKind::ConsentGranted => Action::Grant,
            EventKind::ConsentWithdrawn | EventKind::Unsubscribed => Action::Withdraw,
            EventKind::ErasureRequested => Action::Erase,
        }
    }
}

/// The effect an event has downstream. The order of the variants is the tie-break of the version
/// rule (DESIGN.md §3.1): on equal `occurred_at`, the higher rank wins, so a withdrawal beats a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Grant,
    Withdraw,
    Erase,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Grant => "grant",
            Action::Withdraw => "withdraw",
            Action::Erase => "erase",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "grant" => Some(Action::Grant),
            "withdraw" => Some(Action::Withdraw),
            "erase" => Some(Action::Erase),
            _ => None,
        }
    }
}

/// Which purposes an event covers. `All` is a global unsubscribe or an erasure request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Purposes(Vec<String>),
    All,
}

/// Contact fields the downstreams need. Raw PII: never log, never store at rest.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    /// Street and house number of the postal address (schema v2).
    pub street: Option<String>,
    /// Postal code of the postal address (schema v2).
    pub postal_code: Option<String>,
    /// City of the postal address (schema v2).
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2 country code of the postal address (schema v2).
    pub country: Option<String>,
    /// Company size as the form asked for it, e.g. a head-count band (schema v2).
    pub company_size: Option<String>,
}

// A hand-written Debug so that a stray `{:?}` can never put PII into a log line.
impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |v: &Option<String>| if v.is_some() { "<redacted>" } else { "<none>" };
        f.debug_struct("Contact")
            .field("email", &mask(&self.email))
            .field("phone", &mask(&self.phone))
            .field("first_name", &mask(&self.first_name))
            .field("last_name", &mask(&self.last_name))
            .field("company", &mask(&self.company))
            .field("street", &mask(&self.street))
            .field("postal_code", &mask(&self.postal_code))
            .field("city", &mask(&self.city))
            .field("country", &mask(&self.country))
            .field("company_size", &mask(&self.company_size))
            .finish()
    }
}

/// One decoded, validated consent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEvent {
    /// The idempotency key.
    pub event_id: Uuid,
    pub kind: EventKind,
    /// Stable pseudonymous id of the person; the Kafka key.
    pub subject_id: String,
    /// When the person acted, in milliseconds since the Unix epoch: the version of the decision.
    pub occurred_at_ms: i64,
    /// Which upstream system published the event (web-form, cmp, newsletter-link, portal, crm, ...).
    pub source: String,
    /// Which consent text was shown; required for grants (proof of consent, GDPR Art. 7(1)).
    pub notice_version: Option<String>,
    pub scope: Scope,
    pub contact: Contact,
}

impl ConsentEvent {
    pub fn action(&self) -> Action {
        self.kind.action()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_debug_shows_which_fields_are_set_never_their_values() {
        let contact = Contact {
            email: Some("max@example.de".into()),
            phone: Some("+49 30 1234567".into()),
            first_name: Some("Max".into()),
            last_name: Some("Mustermann".into()),
            company: Some("Beispiel GmbH".into()),
            street: Some("Venloer Straße 47".into()),
            postal_code: Some("50672".into()),
            city: Some("Köln".into()),
            country: Some("DE".into()),
            company_size: None,
        };
        let shown = format!("{contact:?}");
        for value in [
            "max@",
            "1234567",
            "Max",
            "Mustermann",
            "Beispiel",
            "Venloer",
            "50672",
            "Köln",
            "\"DE\"",
        ] {
            assert!(!shown.contains(value), "{value} in {shown}");
        }
        assert!(shown.contains("country: \"<redacted>\""), "{shown}");
        assert!(shown.contains("company_size: \"<none>\""), "{shown}");
    }
}
