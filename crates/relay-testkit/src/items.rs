//! `SinkItem`s for sink tests, built the way routing builds them: the event's kind and scope follow
//! from the item's action and target, so a test names only what it is about.

use std::sync::Arc;

use relay_delivery::{Change, SinkItem, Target};
use relay_events::{Action, ConsentEvent, Contact, EventKind, Scope};

/// An item under construction; [`ItemFixture::build`] makes it. Defaults: subject `subject-1`,
/// occurred 2026-01-01T00:00:00Z, source `web-form`, notice `n-2026-01`, a fresh event id, no
/// contact data.
#[derive(Debug, Clone)]
pub struct ItemFixture {
    event: ConsentEvent,
    change: Change,
}

/// A grant of `purpose`.
pub fn grant(purpose: &str) -> ItemFixture {
    ItemFixture::new(Action::Grant, Target::Purpose(purpose.into()))
}

/// A withdrawal of `purpose`.
pub fn withdraw(purpose: &str) -> ItemFixture {
    ItemFixture::new(Action::Withdraw, Target::Purpose(purpose.into()))
}

/// A global unsubscribe.
pub fn unsubscribe_all() -> ItemFixture {
    ItemFixture::new(Action::Withdraw, Target::All)
}

/// An erasure.
pub fn erase() -> ItemFixture {
    ItemFixture::new(Action::Erase, Target::All)
}

/// Every contact field filled, as a lead form would: for allow-list tests.
pub fn full_contact() -> Contact {
    Contact {
        email: Some("max@example.de".into()),
        phone: Some("+49 221 1234567".into()),
        first_name: Some("Max".into()),
        last_name: Some("Mustermann".into()),
        company: Some("Beispiel GmbH".into()),
        street: Some("Venloer Straße 47".into()),
        postal_code: Some("50672".into()),
        city: Some("Köln".into()),
        country: Some("DE".into()),
        company_size: Some("50-249".into()),
    }
}

impl ItemFixture {
    /// `action` for `target`, with the event routing would have made it from.
    ///
    /// # Panics
    /// For a combination validation rules out (a grant of everything, an erasure of a purpose).
    pub fn new(action: Action, target: Target) -> ItemFixture {
        let kind = match (action, &target) {
            (Action::Grant, _) => EventKind::ConsentGranted,
            (Action::Withdraw, Target::All) => EventKind::Unsubscribed,
            (Action::Withdraw, Target::Purpose(_)) => EventKind::ConsentWithdrawn,
            (Action::Erase, _) => EventKind::ErasureRequested,
        };
        let scope = match &target {
            Target::Purpose(p) => Scope::Purposes(vec![p.clone()]),
            Target::All => Scope::All,
        };
        ItemFixture {
            event: ConsentEvent {
                event_id: uuid::Uuid::new_v4(),
                kind,
                subject_id: "subject-1".into(),
                occurred_at_ms: 1_767_225_600_000,
                source: "web-form".into(),
                notice_version: Some("n-2026-01".into()),
                scope,
                contact: Contact::default(),
            },
            change: Change::new(action, target).expect("a change validation allows"),
        }
    }

    pub fn subject(mut self, subject: &str) -> Self {
        self.event.subject_id = subject.to_owned();
        self
    }

    pub fn email(mut self, email: Option<&str>) -> Self {
        self.event.contact.email = email.map(str::to_owned);
        self
    }

    pub fn phone(mut self, phone: Option<&str>) -> Self {
        self.event.contact.phone = phone.map(str::to_owned);
        self
    }

    /// The whole contact, replacing what [`ItemFixture::email`] and [`ItemFixture::phone`] set.
    pub fn contact(mut self, contact: Contact) -> Self {
        self.event.contact = contact;
        self
    }

    pub fn occurred_at_ms(mut self, at_ms: i64) -> Self {
        self.event.occurred_at_ms = at_ms;
        self
    }

    pub fn source(mut self, source: &str) -> Self {
        self.event.source = source.to_owned();
        self
    }

    pub fn notice(mut self, notice_version: &str) -> Self {
        self.event.notice_version = Some(notice_version.to_owned());
        self
    }

    pub fn event_id(mut self, event_id: uuid::Uuid) -> Self {
        self.event.event_id = event_id;
        self
    }

    pub fn build(self) -> SinkItem {
        SinkItem {
            event: Arc::new(self.event),
            change: self.change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_follows_the_action_and_target() {
        let item = unsubscribe_all().email(Some("a@b.de")).subject("s").build();
        assert_eq!(item.event.kind, EventKind::Unsubscribed);
        assert_eq!(item.event.scope, Scope::All);
        assert_eq!(item.event.contact.email.as_deref(), Some("a@b.de"));
        let item = withdraw("ads").build();
        assert_eq!(item.event.kind, EventKind::ConsentWithdrawn);
        assert_eq!(item.event.scope, Scope::Purposes(vec!["ads".into()]));
        assert_eq!(item.change, Change::Withdraw("ads".into()));
    }
}
