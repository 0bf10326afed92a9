//! The payload digest that tells a redelivery from a conflicting duplicate: the same `event_id`
//! with the same digest is the same event again; with another digest it is a different payload
//! under a reused id, and the first decision must stand.
//!
//! Computed from the decoded event, not the bytes, so the framing (Confluent or single-object),
//! the writer schema version as far as it carries the same fields, and re-encoding by another Avro
//! library all give the same digest.

use sha2::{Digest, Sha256};

use crate::normalize::hex;
use crate::{ConsentEvent, Scope};

/// Names the encoding below. Changing the encoding means a new tag, so digests of two encodings
/// can never be mistaken for a conflict of one.
const DIGEST_VERSION: &[u8] = b"consent-relay/event-digest/v1";

impl ConsentEvent {
    /// Lowercase hex SHA-256 (64 characters) over a canonical encoding of every field: the
    /// version tag, then in a fixed order the event id (16 bytes), the kind's name, subject id,
    /// `occurred_at` (8 bytes big-endian), source, notice version, the scope, and the ten contact
    /// fields. Every string is length-prefixed (8 bytes big-endian) so that no two field lists
    /// encode alike; an optional field is a 0 byte when absent, a 1 byte and the string when
    /// present (so `None` and `Some("")` differ). Purposes are sorted first: a list is a set
    /// (duplicates are invalid), and a producer rebuilding it in another order on a retry has
    /// not changed the decision.
    ///
    /// The digest covers contact data, so like the email hash it is confirmation-prone (whoever
    /// guesses every field can check the guess) and belongs only where the email hash may be.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        put_str(&mut h, DIGEST_VERSION);
        h.update(self.event_id.as_bytes());
        put_str(&mut h, self.kind.name().as_bytes());
        put_str(&mut h, self.subject_id.as_bytes());
        h.update(self.occurred_at_ms.to_be_bytes());
        put_str(&mut h, self.source.as_bytes());
        put_opt(&mut h, &self.notice_version);
        match &self.scope {
            Scope::All => h.update([0]),
            Scope::Purposes(purposes) => {
                let mut sorted: Vec<&str> = purposes.iter().map(String::as_str).collect();
                sorted.sort_unstable();
                h.update([1]);
                h.update((sorted.len() as u64).to_be_bytes());
                for purpose in sorted {
                    put_str(&mut h, purpose.as_bytes());
                }
            }
        }
        let c = &self.contact;
        for field in [
            &c.email,
            &c.phone,
            &c.first_name,
            &c.last_name,
            &c.company,
            &c.street,
            &c.postal_code,
            &c.city,
            &c.country,
            &c.company_size,
        ] {
            put_opt(&mut h, field);
        }
        hex(&h.finalize())
    }
}

fn put_str(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn put_opt(h: &mut Sha256, value: &Option<String>) {
    match value {
        None => h.update([0]),
        Some(s) => {
            h.update([1]);
            put_str(h, s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::{encode_confluent, encode_single_object, wire, Contact, EventKind};

    use super::*;

    fn grant() -> ConsentEvent {
        ConsentEvent {
            event_id: Uuid::from_u128(0x0b9f_4a4e_6c1d_4b3a_9a57_2f1d_3c4e_5f60),
            kind: EventKind::ConsentGranted,
            subject_id: "subj-42".into(),
            occurred_at_ms: 1_795_687_200_000,
            source: "web-form".into(),
            notice_version: Some("2026-10".into()),
            scope: Scope::Purposes(vec!["newsletter".into(), "ads_remarketing".into()]),
            contact: Contact {
                email: Some("max@example.de".into()),
                first_name: Some("Max".into()),
                ..Contact::default()
            },
        }
    }

    #[test]
    fn is_64_lowercase_hex_and_pinned() {
        let d = grant().digest();
        assert_eq!(d.len(), 64);
        assert!(d
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // Pinned (and recomputed independently from the encoding as documented, with Python's
        // hashlib): a change of the encoding must come with a new DIGEST_VERSION, or every stored
        // digest would turn every redelivery into a conflict.
        assert_eq!(
            d,
            "9edb16b517efc19ffdaefc40c464a7890abf7c88b1b4f69013739efeb9f7cf64"
        );
    }

    #[test]
    fn survives_both_framings() {
        let ev = grant();
        let single = crate::decode(&encode_single_object(&ev)).unwrap();
        let confluent = &encode_confluent(7, &ev)[5..];
        let writer = &crate::schemas::newest(ev.kind).schema;
        let confluent = wire::decode_with_writer_schema(writer, confluent).unwrap();
        assert_eq!(single.digest(), ev.digest());
        assert_eq!(confluent.digest(), ev.digest());
    }

    #[test]
    fn every_field_counts_and_purpose_order_does_not() {
        let base = grant().digest();
        let mut reordered = grant();
        reordered.scope = Scope::Purposes(vec!["ads_remarketing".into(), "newsletter".into()]);
        assert_eq!(reordered.digest(), base);

        let changes: &[fn(&mut ConsentEvent)] = &[
            |e| e.event_id = Uuid::from_u128(1),
            |e| e.kind = EventKind::ConsentWithdrawn,
            |e| e.subject_id.push('x'),
            |e| e.occurred_at_ms += 1,
            |e| e.source.push('x'),
            |e| e.notice_version = None,
            |e| e.notice_version = Some(String::new()),
            |e| e.scope = Scope::All,
            |e| e.scope = Scope::Purposes(vec!["newsletter".into()]),
            |e| e.contact.email = None,
            |e| e.contact.phone = Some(String::new()),
            |e| e.contact.first_name = Some("Maxi".into()),
            |e| e.contact.last_name = Some(String::new()),
            |e| e.contact.company = Some("x".into()),
            |e| e.contact.street = Some("x".into()),
            |e| e.contact.postal_code = Some("x".into()),
            |e| e.contact.city = Some("x".into()),
            |e| e.contact.country = Some("DE".into()),
            |e| e.contact.company_size = Some("x".into()),
            // The length prefix: moving a character from one field to the next is a change.
            |e| {
                e.source = "web-for".into();
                e.notice_version = Some("m2026-10".into());
            },
        ];
        let mut seen = std::collections::HashSet::from([base]);
        for (i, change) in changes.iter().enumerate() {
            let mut ev = grant();
            change(&mut ev);
            assert!(seen.insert(ev.digest()), "change {i} collides");
        }
    }
}
