use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use relay_delivery::{Change, Outcome, SinkItem};
use relay_events::ConsentEvent;
use serde_json::{json, Map};
use sha2::Sha256;

use crate::config::PartnerConfig;

/// A person consented to the partner's purpose: the allow-listed lead fields.
pub const LEAD_CONSENTED: &str = "lead.consented";
/// The person withdrew (or unsubscribed from everything): stop using the lead and delete it.
pub const CONSENT_WITHDRAWN: &str = "consent.withdrawn";
/// The person asked for erasure (GDPR Art. 17, passed on per Art. 19).
pub const SUBJECT_ERASED: &str = "subject.erased";

/// One webhook, ready to sign and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `webhook-id`: our event id, so that a redelivery carries the same id and the partner's
    /// idempotency check recognises it.
    pub id: String,
    /// The payload's `type`.
    pub kind: &'static str,
    /// The exact bytes that are signed and sent.
    pub body: Vec<u8>,
}

/// Whether `item` concerns `partner`: its gating purpose, or the whole subject.
pub fn concerns(item: &SinkItem, partner: &PartnerConfig) -> bool {
    match &item.change {
        Change::Grant(purpose) | Change::Withdraw(purpose) => *purpose == partner.purpose,
        Change::WithdrawAll | Change::Erase => true,
    }
}

/// The webhook `item` means for `partner`.
///
/// Only a lead carries contact data, and only the allow-listed fields. Withdrawal and erasure
/// notices identify the person by `subject_id` alone, which every lead carries: a global
/// unsubscribe or an erasure goes to every partner, including partners that never received this
/// person, and those must not learn an email address from the notice.
pub fn message(item: &SinkItem, partner: &PartnerConfig) -> Result<Message, Outcome> {
    let event = &item.event;
    let occurred_at = rfc3339(event)?;
    let mut data = Map::new();
    data.insert("subject_id".into(), event.subject_id.clone().into());
    data.insert("event_id".into(), event.event_id.to_string().into());
    data.insert("occurred_at".into(), occurred_at.clone().into());
    let kind = match item.change {
        Change::Grant(_) => {
            data.insert("purpose".into(), partner.purpose.clone().into());
            if let Some(v) = &event.notice_version {
                data.insert("notice_version".into(), v.clone().into());
            }
            for field in &partner.fields {
                if let Some(value) = field.value(&event.contact) {
                    data.insert(field.key().into(), value.into());
                }
            }
            LEAD_CONSENTED
        }
        Change::Withdraw(_) | Change::WithdrawAll => {
            // A global unsubscribe withdraws the partner's purpose too.
            data.insert("purpose".into(), partner.purpose.clone().into());
            CONSENT_WITHDRAWN
        }
        Change::Erase => SUBJECT_ERASED,
    };
    // `timestamp` is when the event occurred (Standard Webhooks), so a redelivery sends the same
    // bytes; the time of the attempt goes into the `webhook-timestamp` header.
    let body = json!({ "type": kind, "timestamp": occurred_at, "data": data });
    Ok(Message {
        id: event.event_id.to_string(),
        kind,
        body: serde_json::to_vec(&body).expect("a JSON value serializes"),
    })
}

/// `webhook-signature` (Standard Webhooks v1): `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

fn rfc3339(event: &ConsentEvent) -> Result<String, Outcome> {
    // Validation guarantees a positive time; a negative one would be a bug upstream of us.
    let ms = u64::try_from(event.occurred_at_ms)
        .map_err(|_| Outcome::permanent("occurred_at is before 1970"))?;
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use relay_delivery::{DestinationConfig, Target};
    use relay_events::{Action, Contact};
    use serde_json::Value;

    use super::*;
    use crate::config::LeadField;
    use relay_testkit::items::{self, ItemFixture};

    fn partner(fields: &[LeadField]) -> PartnerConfig {
        PartnerConfig {
            endpoint: "https://leads.example/hook".into(),
            signing_secret: None,
            purpose: "partner_in_gmbh".into(),
            fields: fields.to_vec(),
            limits: DestinationConfig::default(),
        }
    }

    fn item(action: Action, target: Target) -> SinkItem {
        ItemFixture::new(action, target)
            .event_id(uuid::Uuid::from_u128(
                0x0b9f_4a4e_6c1d_4b3a_9a57_2f1d_3c4e_5f60,
            ))
            .subject("subj-42")
            .occurred_at_ms(1_795_687_200_123)
            .notice("sphinx-2026-10")
            .contact(Contact {
                phone: Some("+49 30 1234567".into()),
                company_size: None,
                ..items::full_contact()
            })
            .build()
    }

    fn body(m: &Message) -> Value {
        serde_json::from_slice(&m.body).unwrap()
    }

    #[test]
    fn a_lead_carries_exactly_the_allow_listed_fields_that_are_set() {
        let p = partner(&[
            LeadField::Email,
            LeadField::LastName,
            LeadField::City,
            LeadField::CompanySize,
        ]);
        let m = message(&item(Action::Grant, Target::Purpose(p.purpose.clone())), &p).unwrap();
        assert_eq!(m.id, "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60");
        assert_eq!(m.kind, LEAD_CONSENTED);
        assert_eq!(
            body(&m),
            json!({
                "type": "lead.consented",
                "timestamp": "2026-11-26T10:00:00.123Z",
                "data": {
                    "subject_id": "subj-42",
                    "event_id": "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60",
                    "purpose": "partner_in_gmbh",
                    "notice_version": "sphinx-2026-10",
                    "occurred_at": "2026-11-26T10:00:00.123Z",
                    "email": "max@example.de",
                    "last_name": "Mustermann",
                    "city": "Köln",
                }
            })
        );
    }

    #[test]
    fn notices_identify_the_person_by_subject_id_only() {
        let p = partner(&[LeadField::Email, LeadField::Phone]);
        let withdrawn = message(&item(Action::Withdraw, Target::All), &p).unwrap();
        assert_eq!(withdrawn.kind, CONSENT_WITHDRAWN);
        assert_eq!(
            body(&withdrawn)["data"],
            json!({
                "subject_id": "subj-42",
                "event_id": "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60",
                "purpose": "partner_in_gmbh",
                "occurred_at": "2026-11-26T10:00:00.123Z",
            })
        );
        let erased = message(&item(Action::Erase, Target::All), &p).unwrap();
        assert_eq!(erased.kind, SUBJECT_ERASED);
        let keys: BTreeSet<String> = body(&erased)["data"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["subject_id", "event_id", "occurred_at"].map(String::from))
        );
    }

    #[test]
    fn the_same_item_gives_the_same_bytes() {
        let p = partner(&[LeadField::Email]);
        let it = item(Action::Grant, Target::Purpose(p.purpose.clone()));
        assert_eq!(message(&it, &p), message(&it, &p));
    }

    #[test]
    fn routing_by_the_gating_purpose() {
        let p = partner(&[LeadField::Email]);
        assert!(concerns(
            &item(Action::Grant, Target::Purpose("partner_in_gmbh".into())),
            &p
        ));
        assert!(!concerns(
            &item(Action::Grant, Target::Purpose("newsletter".into())),
            &p
        ));
        assert!(concerns(&item(Action::Erase, Target::All), &p));
    }

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries' tests.
        let key = crate::config::secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
