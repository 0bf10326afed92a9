//! Items → per-audience work, independent of the platform: which audiences an item touches, the
//! platform's hashes of the person, and the requests' common shape. The platform modules turn a
//! batch of members into their request and read their answer.

use std::collections::{BTreeMap, HashMap, HashSet};

use relay_delivery::{Change, Outcome, SinkItem};
use relay_events::normalize;
use reqwest::Method;

use crate::config::{AudienceConfig, AudiencesConfig};

/// What a request does to an audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Remove => "remove",
        }
    }
}

/// One person as one platform knows them: hashes only. Raw identifiers end at [`identify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The items this member stands for: usually one, more when two items carry the same address.
    pub items: Vec<usize>,
    /// Lowercase hex SHA-256 of the email, normalized the platform's way.
    pub email: String,
    /// Lowercase hex SHA-256 of the phone, normalized the platform's way, where the audience sends
    /// phones and the event's phone can be normalized.
    pub phone: Option<String>,
}

/// Everything one delivery does to one audience. Removals go first (withdrawals never wait
/// behind grants), and adds and removes never share a request.
#[derive(Debug, Default)]
pub struct AudienceWork<'a> {
    pub name: &'a str,
    pub removes: Vec<Member>,
    pub adds: Vec<Member>,
}

/// What to do for a batch of items.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Per item: what is known without asking a platform (a missing email, an address one platform
    /// cannot normalize, a held-back add). Folded with the request outcomes by `Outcome::worst`.
    pub settled: Vec<Option<Outcome>>,
    /// Per audience, in name order.
    pub audiences: Vec<AudienceWork<'a>>,
}

/// Turns items into per-audience adds and removes.
pub fn plan<'a>(items: &[SinkItem], config: &'a AudiencesConfig) -> Plan<'a> {
    let mut settled: Vec<Option<Outcome>> = vec![None; items.len()];
    let mut work: BTreeMap<&'a str, Staging> = BTreeMap::new();

    for (index, item) in items.iter().enumerate() {
        let (op, names) = match targets(item, config) {
            Ok(targets) => targets,
            Err(outcome) => {
                settled[index] = Some(outcome);
                continue;
            }
        };
        if names.is_empty() {
            // Only a whole-subject removal with no audience configured gets here: the person is in
            // none of our audiences, which is what was asked.
            settled[index] = Some(Outcome::AlreadyApplied);
            continue;
        }
        for (name, audience) in names {
            match identify(item, audience) {
                Some((email, phone)) => work.entry(name).or_default().push(op, index, email, phone),
                None => merge(
                    &mut settled[index],
                    Outcome::permanent(format!(
                        "the event's email cannot be normalized for {}",
                        audience.platform().name()
                    )),
                ),
            }
        }
    }

    let audiences = work
        .into_iter()
        .map(|(name, staging)| {
            let (removes, adds, held) = staging.finish();
            for item in held {
                merge(
                    &mut settled[item],
                    Outcome::retryable(format!(
                        "held back: the same identifier leaves audience {name} in this delivery"
                    )),
                );
            }
            AudienceWork {
                name,
                removes,
                adds,
            }
        })
        .collect();
    Plan { settled, audiences }
}

type Targets<'a> = (Op, Vec<(&'a str, &'a AudienceConfig)>);

/// Whether the item adds or removes, and where.
fn targets<'a>(item: &SinkItem, config: &'a AudiencesConfig) -> Result<Targets<'a>, Outcome> {
    if item.event.contact.email.is_none() {
        return Err(Outcome::permanent("event has no email"));
    }
    let named = |purpose: &str| {
        let names = config.purposes.get(purpose).ok_or_else(|| {
            Outcome::permanent(format!("purpose {purpose:?} has no audiences configured"))
        })?;
        Ok(names
            .iter()
            .filter_map(|n| config.audiences.get_key_value(n))
            .map(|(n, a)| (n.as_str(), a))
            .collect())
    };
    let everywhere = || {
        config
            .audiences
            .iter()
            .map(|(n, a)| (n.as_str(), a))
            .collect()
    };
    match &item.change {
        Change::Grant(purpose) => Ok((Op::Add, named(purpose)?)),
        Change::Withdraw(purpose) => Ok((Op::Remove, named(purpose)?)),
        // An unsubscribe-from-all or an erasure takes the person out of every audience we feed.
        Change::WithdrawAll | Change::Erase => Ok((Op::Remove, everywhere())),
    }
}

/// The platform's hashes of the item's person: the email (required) and the phone (when the
/// platform takes phones and the event's normalizes). `None` when the email cannot be normalized.
fn identify(item: &SinkItem, audience: &AudienceConfig) -> Option<(String, Option<String>)> {
    let contact = &item.event.contact;
    let raw_email = contact.email.as_deref()?;
    let raw_phone = contact.phone.as_deref();
    let (email, phone) = audience.platform().identify(raw_email, raw_phone)?;
    Some((
        normalize::sha256_hex(&email),
        phone.as_deref().map(normalize::sha256_hex),
    ))
}

/// One audience's members while the items are read, deduplicated by email hash.
#[derive(Default)]
struct Staging {
    adds: Vec<Member>,
    removes: Vec<Member>,
    add_index: HashMap<String, usize>,
    remove_index: HashMap<String, usize>,
}

impl Staging {
    fn push(&mut self, op: Op, item: usize, email: String, phone: Option<String>) {
        let (members, index) = match op {
            Op::Add => (&mut self.adds, &mut self.add_index),
            Op::Remove => (&mut self.removes, &mut self.remove_index),
        };
        match index.get(&email) {
            Some(&at) => {
                let member = &mut members[at];
                member.items.push(item);
                member.phone = member.phone.take().or(phone);
            }
            None => {
                index.insert(email.clone(), members.len());
                members.push(Member {
                    items: vec![item],
                    email,
                    phone,
                });
            }
        }
    }

    /// Removes, adds, and the items of adds held back. Two subjects may share an address; when one
    /// leaves and the other joins in the same delivery, the removal goes first and the add is
    /// retried in a later delivery, so that it lands after the removal instead of racing it.
    fn finish(self) -> (Vec<Member>, Vec<Member>, Vec<usize>) {
        let leaving: HashSet<&String> = self.removes.iter().map(|m| &m.email).collect();
        let (held, adds): (Vec<Member>, Vec<Member>) = self
            .adds
            .into_iter()
            .partition(|m| leaving.contains(&m.email));
        let held = held.into_iter().flat_map(|m| m.items).collect();
        (self.removes, adds, held)
    }
}

pub use relay_delivery::driver::merge;

/// One HTTP request, built by a platform module and sent by the client. It holds no secret (the
/// client adds the token where the body says), so it can be printed.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A JSON body; the platform client adds its own authentication (Bearer token, or an OAuth 1.0a signature for X).
    Json(serde_json::Value),
    /// `application/x-www-form-urlencoded` pairs; the token goes in the field `token_field`.
    Form {
        pairs: Vec<(&'static str, String)>,
        token_field: &'static str,
    },
}

/// A platform's answer to one request: one outcome per member, in request order.
pub use relay_delivery::driver::Answer;

/// The start of a platform's error text for an outcome reason. Our requests carry hashes only, so
/// a platform that echoes its input echoes no raw identifier; the length bound keeps a large
/// echo out of the ledger.
pub fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let text = text.trim();
    if text.is_empty() {
        return "no error body".to_owned();
    }
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {

    use relay_delivery::Target;
    use relay_events::Action;
    use relay_testkit::items::ItemFixture;

    use super::*;

    pub(crate) fn item(
        email: Option<&str>,
        phone: Option<&str>,
        action: Action,
        target: Target,
    ) -> SinkItem {
        ItemFixture::new(action, target)
            .email(email)
            .phone(phone)
            .source("cmp")
            .notice("ads-2026-01")
            .build()
    }

    fn config() -> AudiencesConfig {
        toml::from_str(
            r#"
            [purposes]
            ads = ["meta", "google"]
            b2b = ["linkedin"]

            [audiences.meta]
            platform = "meta"
            audience_id = "1"
            schema = "email_phone"

            [audiences.google]
            platform = "google"
            operating_account_id = "2"
            product_destination_id = "3"
            consent_purposes = ["ads"]

            [audiences.linkedin]
            platform = "linkedin"
            segment_id = "4"
            linkedin_version = "202601"
            "#,
        )
        .unwrap()
    }

    fn purpose(p: &str) -> Target {
        Target::Purpose(p.into())
    }

    fn names<'a>(plan: &'a Plan<'_>) -> Vec<&'a str> {
        plan.audiences.iter().map(|a| a.name).collect()
    }

    #[test]
    fn a_grant_adds_to_the_purposes_audiences_with_per_platform_hashes() {
        let config = config();
        let items = [item(
            Some("Jane.Doe+ads@Gmail.com"),
            Some("+49 30 1234567"),
            Action::Grant,
            purpose("ads"),
        )];
        let plan = plan(&items, &config);
        assert_eq!(plan.settled, vec![None]);
        assert_eq!(names(&plan), ["google", "meta"]);
        let google = &plan.audiences[0];
        assert!(google.removes.is_empty());
        assert_eq!(
            google.adds,
            vec![Member {
                items: vec![0],
                email: normalize::sha256_hex("janedoe@gmail.com"),
                phone: Some(normalize::sha256_hex("+49301234567")),
            }]
        );
        let meta = &plan.audiences[1];
        assert_eq!(
            meta.adds,
            vec![Member {
                items: vec![0],
                email: normalize::sha256_hex("jane.doe+ads@gmail.com"),
                phone: Some(normalize::sha256_hex("49301234567")),
            }]
        );
    }

    #[test]
    fn withdrawal_removes_from_the_purpose_and_unsubscribe_or_erasure_from_all() {
        let config = config();
        let items = [
            item(Some("a@b.de"), None, Action::Withdraw, purpose("b2b")),
            item(Some("c@d.de"), None, Action::Withdraw, Target::All),
            item(Some("e@f.de"), None, Action::Erase, Target::All),
        ];
        let plan = plan(&items, &config);
        assert_eq!(plan.settled, vec![None; 3]);
        assert_eq!(names(&plan), ["google", "linkedin", "meta"]);
        let removed = |name: &str| -> Vec<Vec<usize>> {
            let work = plan.audiences.iter().find(|a| a.name == name).unwrap();
            assert!(work.adds.is_empty());
            work.removes.iter().map(|m| m.items.clone()).collect()
        };
        assert_eq!(removed("linkedin"), [vec![0], vec![1], vec![2]]);
        assert_eq!(removed("meta"), [vec![1], vec![2]]);
        assert_eq!(removed("google"), [vec![1], vec![2]]);
    }

    #[test]
    fn what_needs_no_request_is_settled() {
        let config = config();
        let items = [
            item(None, None, Action::Grant, purpose("ads")),
            item(Some("a@b.de"), None, Action::Grant, purpose("unknown")),
        ];
        let plan = plan(&items, &config);
        assert!(plan.audiences.is_empty());
        let classes: Vec<_> = plan
            .settled
            .iter()
            .map(|o| o.as_ref().unwrap().class())
            .collect();
        assert_eq!(classes, ["permanent"; 2]);

        let empty = AudiencesConfig::default();
        let plan = super::plan(
            &[item(Some("a@b.de"), None, Action::Erase, Target::All)],
            &empty,
        );
        assert_eq!(plan.settled, vec![Some(Outcome::AlreadyApplied)]);
    }

    #[test]
    fn shared_addresses_are_sent_once_and_a_removal_holds_back_an_add() {
        let config = config();
        let items = [
            item(Some("same@b.de"), None, Action::Grant, purpose("b2b")),
            item(Some(" SAME@b.de"), None, Action::Grant, purpose("b2b")),
            item(Some("x@y.de"), None, Action::Grant, purpose("b2b")),
            item(Some("x@y.de"), None, Action::Withdraw, Target::All),
        ];
        let plan = plan(&items, &config);
        let linkedin = plan
            .audiences
            .iter()
            .find(|a| a.name == "linkedin")
            .unwrap();
        assert_eq!(linkedin.adds.len(), 1);
        assert_eq!(linkedin.adds[0].items, [0, 1]);
        assert_eq!(linkedin.removes.len(), 1);
        assert_eq!(linkedin.removes[0].items, [3]);
        assert_eq!(
            plan.settled[2].as_ref().map(|o| o.class().as_str()),
            Some("retryable")
        );
        assert_eq!(plan.settled[3], None);
    }

    #[test]
    fn a_phone_that_cannot_be_normalized_is_left_out() {
        let config = config();
        let items = [item(
            Some("a@b.de"),
            Some("030 1234567"),
            Action::Grant,
            purpose("ads"),
        )];
        let plan = plan(&items, &config);
        assert!(plan.audiences.iter().all(|a| a.adds[0].phone.is_none()));
    }

    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(excerpt("  "), "no error body");
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), 301);
    }
}
