//! HubSpot app webhooks: the v3 signature, the event batch, and the contact lookup the batch
//! needs (docs/vendors/hubspot.md "Webhooks").

use base64::Engine;
use hmac::{Hmac, Mac};
use relay_events::{EventKind, Scope};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{HubSpotIngest, Secret};
use crate::notice::{Notice, Vendor};

pub const SIGNATURE_HEADER: &str = "x-hubspot-signature-v3";
pub const TIMESTAMP_HEADER: &str = "x-hubspot-request-timestamp";

/// Why a request is not HubSpot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    MissingHeaders,
    StaleTimestamp,
    BadSignature,
}

impl Unverified {
    pub fn as_str(self) -> &'static str {
        match self {
            Unverified::MissingHeaders => "missing_headers",
            Unverified::StaleTimestamp => "stale_timestamp",
            Unverified::BadSignature => "bad_signature",
        }
    }
}

/// The URI as HubSpot signs it: the characters its docs list are decoded, everything else stays
/// as sent ("hs:/apps/legacy-apps/authentication/validating-requests", v3).
pub fn signed_uri(uri: &str) -> String {
    const DECODED: [(&str, char); 12] = [
        ("%3A", ':'),
        ("%2F", '/'),
        ("%3F", '?'),
        ("%40", '@'),
        ("%21", '!'),
        ("%24", '$'),
        ("%27", '\''),
        ("%28", '('),
        ("%29", ')'),
        ("%2A", '*'),
        ("%2C", ','),
        ("%3B", ';'),
    ];
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at..at + 3).unwrap_or("");
        match DECODED.iter().find(|(c, _)| c.eq_ignore_ascii_case(code)) {
            Some((_, ch)) => {
                out.push(*ch);
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// HMAC-SHA256(client secret, method + URI + body + timestamp), the URI as HubSpot signs it.
fn mac(secret: &Secret, method: &str, uri: &str, body: &[u8], timestamp: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(method.as_bytes());
    mac.update(signed_uri(uri).as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

/// A request as HubSpot signed it: `uri` is the full URL it called.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub body: &'a [u8],
    pub signature: Option<&'a str>,
    pub timestamp: Option<&'a str>,
}

/// Checks the v3 signature and the timestamp's age against `now_ms`.
pub fn verify(
    secret: &Secret,
    max_age_ms: u64,
    req: &SignedRequest<'_>,
    now_ms: i64,
) -> Result<(), Unverified> {
    let (method, uri, body) = (req.method, req.uri, req.body);
    let (Some(signature), Some(timestamp)) = (req.signature, req.timestamp) else {
        return Err(Unverified::MissingHeaders);
    };
    let Ok(sent_ms) = timestamp.parse::<i64>() else {
        return Err(Unverified::StaleTimestamp);
    };
    // Both directions: a timestamp from the future would stay "fresh" for longer than 5 minutes.
    if now_ms.abs_diff(sent_ms) > max_age_ms {
        return Err(Unverified::StaleTimestamp);
    }
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return Err(Unverified::BadSignature);
    };
    // verify_slice compares in constant time.
    mac(secret, method, uri, body, timestamp)
        .verify_slice(&given)
        .map_err(|_| Unverified::BadSignature)
}

/// One entry of a webhook batch; fields we do not read are ignored, as HubSpot adds some.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    pub event_id: i64,
    #[serde(default)]
    pub portal_id: i64,
    pub occurred_at: i64,
    pub subscription_type: String,
    pub object_id: i64,
    #[serde(default)]
    pub property_name: Option<String>,
    #[serde(default)]
    pub property_value: Option<String>,
}

/// `property_value` holds the new address of an `email` change: never in debug output.
impl std::fmt::Debug for WebhookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEvent")
            .field("event_id", &self.event_id)
            .field("portal_id", &self.portal_id)
            .field("occurred_at", &self.occurred_at)
            .field("subscription_type", &self.subscription_type)
            .field("object_id", &self.object_id)
            .field("property_name", &self.property_name)
            .field(
                "property_value",
                &self.property_value.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What a batch entry asks for, before the contact's email is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub portal_id: i64,
    pub contact_id: i64,
    pub key: String,
    pub kind: EventKind,
    pub scope: Scope,
    pub occurred_at_ms: i64,
}

/// The opt-out property of all email, and the prefix of the per-subscription-type ones.
const OPT_OUT_ALL: &str = "hs_email_optout";
const OPT_OUT_PREFIX: &str = "hs_email_optout_";
/// The contact property that holds its address.
const EMAIL: &str = "email";

/// How the ledger knows a HubSpot contact: contact ids are per portal (account).
pub fn contact_ref(portal_id: i64, contact_id: i64) -> String {
    format!("{portal_id}:{contact_id}")
}

/// A contact whose address an entry tells of (a creation, an address change), to be remembered
/// for the privacy deletion that names the contact only once its address is gone. `email` is
/// `None` where the address must be read from HubSpot (a creation carries none).
#[derive(Clone, PartialEq, Eq)]
pub struct Learned {
    pub contact_ref: String,
    pub contact_id: i64,
    pub email: Option<String>,
    /// HubSpot's time of the entry: an older report never replaces a newer address.
    pub occurred_at_ms: i64,
}

impl std::fmt::Debug for Learned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learned")
            .field("contact_ref", &self.contact_ref)
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The entries that tell of a contact's address: no decision, but what a later privacy deletion
/// of the contact is matched by.
pub fn addresses(events: &[WebhookEvent]) -> Vec<Learned> {
    events
        .iter()
        .filter_map(|e| {
            let email = match (e.subscription_type.as_str(), e.property_name.as_deref()) {
                ("contact.creation", _) => None,
                ("contact.propertyChange", Some(EMAIL)) => {
                    Some(e.property_value.clone().filter(|v| !v.trim().is_empty())?)
                }
                _ => return None,
            };
            Some(Learned {
                contact_ref: contact_ref(e.portal_id, e.object_id),
                contact_id: e.object_id,
                email,
                occurred_at_ms: e.occurred_at,
            })
        })
        .collect()
}

fn tells_address(e: &WebhookEvent) -> bool {
    !addresses(std::slice::from_ref(e)).is_empty()
}

/// The entries that are consent decisions; the rest (opt-ins, other properties, other objects)
/// are no decision of the person we may act on, and are only counted.
pub fn decisions(config: &HubSpotIngest, events: &[WebhookEvent]) -> (Vec<Pending>, usize) {
    let mut out = Vec::new();
    let mut ignored = 0;
    for e in events {
        let key = format!("{}:{}", e.portal_id, e.event_id);
        let (kind, scope) = match (e.subscription_type.as_str(), e.property_name.as_deref()) {
            ("contact.privacyDeletion", _) => (EventKind::ErasureRequested, Scope::All),
            ("contact.propertyChange", Some(OPT_OUT_ALL)) if opted_out(e) => {
                (EventKind::Unsubscribed, Scope::All)
            }
            ("contact.propertyChange", Some(p))
                if p.starts_with(OPT_OUT_PREFIX) && opted_out(e) =>
            {
                match config.subscriptions.get(&p[OPT_OUT_PREFIX.len()..]) {
                    Some(purposes) => (EventKind::Unsubscribed, Scope::Purposes(purposes.clone())),
                    None => {
                        tracing::warn!(property = p, "HubSpot opt-out of a subscription type not in ingest.hubspot.subscriptions");
                        ignored += 1;
                        continue;
                    }
                }
            }
            // Counted where it is learned (`addresses`).
            _ if tells_address(e) => continue,
            _ => {
                ignored += 1;
                continue;
            }
        };
        out.push(Pending {
            portal_id: e.portal_id,
            contact_id: e.object_id,
            key,
            kind,
            scope,
            occurred_at_ms: e.occurred_at,
        });
    }
    (out, ignored)
}

fn opted_out(e: &WebhookEvent) -> bool {
    e.property_value.as_deref() == Some("true")
}

impl Pending {
    pub fn contact_ref(&self) -> String {
        contact_ref(self.portal_id, self.contact_id)
    }

    /// `email_hash` stands in for the address when HubSpot no longer has it.
    pub fn into_notice(self, email: Option<String>, email_hash: Option<String>) -> Notice {
        Notice {
            vendor: Vendor::HubSpot,
            vendor_key: self.key,
            vendor_ref: format!("contact {}", self.contact_id),
            lists: Vec::new(),
            kind: self.kind,
            scope: self.scope,
            email,
            email_hash,
            occurred_at_ms: self.occurred_at_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("HubSpot contact lookup at {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("HubSpot contact lookup at {url} answered {status}")]
    Status { url: String, status: u16 },
}

#[derive(Deserialize)]
struct ContactAnswer {
    #[serde(default)]
    properties: ContactProperties,
}

#[derive(Deserialize, Default)]
struct ContactProperties {
    #[serde(default)]
    email: Option<String>,
}

/// The email of a contact, `None` when HubSpot no longer has it (a privacy deletion removes it
/// before the webhook fires) or it has none.
pub async fn contact_email(
    http: &reqwest::Client,
    config: &HubSpotIngest,
    contact_id: i64,
) -> Result<Option<String>, LookupError> {
    let base = config.api_base_url.trim_end_matches('/');
    let url = format!("{base}/crm/v3/objects/contacts/{contact_id}?properties=email");
    let answer = http
        .get(&url)
        .bearer_auth(config.token.expose())
        .send()
        .await
        .map_err(|source| LookupError::Transport {
            url: url.clone(),
            source,
        })?;
    match answer.status().as_u16() {
        404 => Ok(None),
        200 => {
            let body: ContactAnswer =
                answer
                    .json()
                    .await
                    .map_err(|source| LookupError::Transport {
                        url: url.clone(),
                        source,
                    })?;
            Ok(body.properties.email.filter(|e| !e.trim().is_empty()))
        }
        status => Err(LookupError::Status { url, status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature_v3(secret: &Secret, method: &str, uri: &str, body: &[u8], ts: &str) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(mac(secret, method, uri, body, ts).finalize().into_bytes())
    }

    /// The v3 vector of HubSpot's own Python SDK (HubSpot/hubspot-api-python,
    /// tests/spec/utils/test_signature.py `test_get_signature__v3`), not derived from our code.
    #[test]
    fn the_official_sdk_v3_vector_verifies() {
        let secret = Secret::new("yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy");
        let body = b"{'example_field':'example_value'}";
        let url = "https://www.example.com/webhook_uri";
        let ts = "1693657560000";
        let expected = "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=";
        assert_eq!(signature_v3(&secret, "POST", url, body, ts), expected);
        let now = 1_693_657_560_000 + 60_000;
        let req = SignedRequest {
            method: "POST",
            uri: url,
            body,
            signature: Some(expected),
            timestamp: Some(ts),
        };
        assert_eq!(verify(&secret, 300_000, &req, now), Ok(()));
        let tampered = SignedRequest {
            body: b"{'example_field':'other_value'}",
            ..req
        };
        assert_eq!(
            verify(&secret, 300_000, &tampered, now),
            Err(Unverified::BadSignature)
        );
        assert_eq!(
            verify(&secret, 300_000, &req, now + 300_000),
            Err(Unverified::StaleTimestamp),
            "older than 5 minutes"
        );
        let unsigned = SignedRequest {
            signature: None,
            ..req
        };
        assert_eq!(
            verify(&secret, 300_000, &unsigned, now),
            Err(Unverified::MissingHeaders)
        );
    }

    #[test]
    fn only_the_listed_escapes_are_decoded() {
        assert_eq!(
            signed_uri("https://x.de/h?a=b%3Ac%2Fd%40e%2a&f=%20%25"),
            "https://x.de/h?a=b:c/d@e*&f=%20%25"
        );
        assert_eq!(signed_uri("https://x.de/%"), "https://x.de/%");
    }

    #[test]
    fn opt_outs_and_privacy_deletions_are_decisions_opt_ins_are_not() {
        let config: HubSpotIngest =
            toml::from_str("[subscriptions]\n12345 = [\"newsletter\"]\n").unwrap();
        let events: Vec<WebhookEvent> = serde_json::from_str(
            r#"[
            {"eventId":1,"portalId":62515,"occurredAt":1000,"subscriptionType":"contact.propertyChange","objectId":7,"propertyName":"hs_email_optout_12345","propertyValue":"true","attemptNumber":0},
            {"eventId":2,"portalId":62515,"occurredAt":2000,"subscriptionType":"contact.propertyChange","objectId":7,"propertyName":"hs_email_optout","propertyValue":"true"},
            {"eventId":3,"portalId":62515,"occurredAt":3000,"subscriptionType":"contact.privacyDeletion","objectId":8},
            {"eventId":4,"portalId":62515,"occurredAt":4000,"subscriptionType":"contact.propertyChange","objectId":7,"propertyName":"hs_email_optout_12345","propertyValue":"false"},
            {"eventId":5,"portalId":62515,"occurredAt":5000,"subscriptionType":"contact.propertyChange","objectId":7,"propertyName":"hs_email_optout_999","propertyValue":"true"},
            {"eventId":6,"portalId":62515,"occurredAt":6000,"subscriptionType":"contact.creation","objectId":9},
            {"eventId":7,"portalId":62515,"occurredAt":7000,"subscriptionType":"contact.propertyChange","objectId":9,"propertyName":"email","propertyValue":"neu@example.de"},
            {"eventId":8,"portalId":62515,"occurredAt":8000,"subscriptionType":"contact.propertyChange","objectId":9,"propertyName":"email","propertyValue":""}
        ]"#,
        )
        .unwrap();
        let (pending, ignored) = decisions(&config, &events);
        // The opt-in, the unmapped type, the emptied address; the creation and the address
        // change are learned, not ignored.
        assert_eq!(ignored, 3);
        let learned = addresses(&events);
        assert_eq!(
            learned,
            [
                Learned {
                    contact_ref: "62515:9".into(),
                    contact_id: 9,
                    email: None,
                    occurred_at_ms: 6000
                },
                Learned {
                    contact_ref: "62515:9".into(),
                    contact_id: 9,
                    email: Some("neu@example.de".into()),
                    occurred_at_ms: 7000
                },
            ]
        );
        assert!(
            !format!("{learned:?}").contains("neu@"),
            "no address in debug output"
        );
        assert_eq!(
            pending,
            [
                Pending {
                    portal_id: 62515,
                    contact_id: 7,
                    key: "62515:1".into(),
                    kind: EventKind::Unsubscribed,
                    scope: Scope::Purposes(vec!["newsletter".into()]),
                    occurred_at_ms: 1000
                },
                Pending {
                    portal_id: 62515,
                    contact_id: 7,
                    key: "62515:2".into(),
                    kind: EventKind::Unsubscribed,
                    scope: Scope::All,
                    occurred_at_ms: 2000
                },
                Pending {
                    portal_id: 62515,
                    contact_id: 8,
                    key: "62515:3".into(),
                    kind: EventKind::ErasureRequested,
                    scope: Scope::All,
                    occurred_at_ms: 3000
                },
            ]
        );
    }
}
