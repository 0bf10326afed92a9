use std::collections::{BTreeMap, BTreeSet, HashMap};

use relay_delivery::driver::{self, Part};
use relay_delivery::{Change, Outcome, SinkItem};
use relay_events::{normalize, Contact};
use serde::Serialize;
use serde_json::json;

use crate::config::{ContactProperty, HubSpotConfig, LegalBasis};

/// Creates or updates contacts by email (docs/vendors/hubspot.md §1d).
pub const UPSERT_PATH: &str = "/crm/v3/objects/contacts/batch/upsert";
/// Sets subscription statuses for many (contact, subscription type) pairs
/// (docs/vendors/hubspot.md §1c).
pub const BATCH_WRITE_PATH: &str = "/communication-preferences/v4/statuses/batch/write";
/// Opts contacts out of all email (docs/vendors/hubspot.md §1c). `channel` is required;
/// `verbose=true` asks HubSpot to list each contact's changed statuses (without it the results are
/// empty, and only errors name inputs).
pub const UNSUBSCRIBE_ALL_PATH: &str =
    "/communication-preferences/v4/statuses/batch/unsubscribe-all?channel=EMAIL&verbose=true";
/// Permanently deletes a contact and blocklists its address (docs/vendors/hubspot.md §1e).
pub const GDPR_DELETE_PATH: &str = "/crm/v3/objects/contacts/gdpr-delete";

/// The status a batch-write input asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusState {
    Subscribed,
    Unsubscribed,
}

/// One input of a v4 batch write, serialized exactly as HubSpot expects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusInput {
    /// Index of the item this input serves; never sent.
    #[serde(skip)]
    pub item: usize,
    /// The normalized email address.
    pub subscriber_id_string: String,
    pub channel: &'static str,
    pub status_state: StatusState,
    pub subscription_id: i64,
    pub legal_basis: LegalBasis,
    pub legal_basis_explanation: String,
}

/// One input of a contact batch upsert by email, serialized exactly as HubSpot expects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactInput {
    /// Index of the item this input serves; never sent.
    #[serde(skip)]
    pub item: usize,
    /// The normalized email address: the contact's key.
    pub id: String,
    pub id_property: &'static str,
    /// Only allow-listed properties with a value.
    pub properties: BTreeMap<&'static str, String>,
    /// The event id: HubSpot echoes it in the result, which ties results to inputs.
    pub object_write_trace_id: String,
}

/// A contact addressed by normalized email, and the item that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRef {
    pub item: usize,
    pub email: String,
}

/// One HTTP request to HubSpot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Upsert(Vec<ContactInput>),
    BatchWrite(Vec<StatusInput>),
    UnsubscribeAll(Vec<ContactRef>),
    GdprDelete(ContactRef),
}

impl Call {
    /// Path and query, relative to the configured base URL.
    pub fn path(&self) -> &'static str {
        match self {
            Call::Upsert(_) => UPSERT_PATH,
            Call::BatchWrite(_) => BATCH_WRITE_PATH,
            Call::UnsubscribeAll(_) => UNSUBSCRIBE_ALL_PATH,
            Call::GdprDelete(_) => GDPR_DELETE_PATH,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        match self {
            Call::Upsert(inputs) => json!({ "inputs": inputs }),
            Call::BatchWrite(inputs) => json!({ "inputs": inputs }),
            Call::UnsubscribeAll(contacts) => {
                json!({ "inputs": contacts.iter().map(|c| &c.email).collect::<Vec<_>>() })
            }
            Call::GdprDelete(contact) => {
                json!({ "objectId": contact.email, "idProperty": "email" })
            }
        }
    }

    /// `(item, email)` of every input, in request order.
    pub fn inputs(&self) -> Vec<(usize, &str)> {
        match self {
            Call::Upsert(inputs) => inputs.iter().map(|i| (i.item, i.id.as_str())).collect(),
            Call::BatchWrite(inputs) => inputs
                .iter()
                .map(|i| (i.item, i.subscriber_id_string.as_str()))
                .collect(),
            Call::UnsubscribeAll(contacts) => contacts
                .iter()
                .map(|c| (c.item, c.email.as_str()))
                .collect(),
            Call::GdprDelete(c) => vec![(c.item, c.email.as_str())],
        }
    }

    /// Keeps only the inputs at the positions `keep` says yes to; returns whether any is left.
    fn retain_at(&mut self, keep: &mut dyn FnMut(usize) -> bool) -> bool {
        match self {
            Call::Upsert(inputs) => driver::retain_positions(inputs, keep),
            Call::BatchWrite(inputs) => driver::retain_positions(inputs, keep),
            Call::UnsubscribeAll(contacts) => driver::retain_positions(contacts, keep),
            Call::GdprDelete(_) => keep(0),
        }
    }
}

/// The driver's view: HubSpot is one lane (the account), and every input is about one contact,
/// keyed by its normalized address.
impl driver::Request for Call {
    fn lane(&self) -> usize {
        0
    }

    fn parts(&self) -> Vec<Part<'_>> {
        fn part<'a>(item: &'a usize, email: &'a str) -> Part<'a> {
            Part {
                items: std::slice::from_ref(item),
                person: Some(email),
            }
        }
        match self {
            Call::Upsert(inputs) => inputs.iter().map(|i| part(&i.item, &i.id)).collect(),
            Call::BatchWrite(inputs) => inputs
                .iter()
                .map(|i| part(&i.item, &i.subscriber_id_string))
                .collect(),
            Call::UnsubscribeAll(contacts) => {
                contacts.iter().map(|c| part(&c.item, &c.email)).collect()
            }
            Call::GdprDelete(c) => vec![part(&c.item, &c.email)],
        }
    }

    fn retain(&mut self, keep: &mut dyn FnMut(usize) -> bool) -> bool {
        self.retain_at(keep)
    }
}

/// What to do for a batch of items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Per item: the outcome already known without asking HubSpot (no email, nothing configured),
    /// or `None` when the item has at least one input in `calls`.
    pub settled: Vec<Option<Outcome>>,
    /// Requests in the order they must be sent. Two changes to the same contact keep their item
    /// order: the later one is in a later call. An item's contact upsert is in an earlier call
    /// than its status writes.
    pub calls: Vec<Call>,
}

/// Turns items into HubSpot requests, at most `max_inputs_per_request` inputs per batch call.
pub fn plan(items: &[SinkItem], config: &HubSpotConfig) -> Plan {
    let mut builder = Builder::new(config.max_inputs_per_request);
    let mut settled = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        settled.push(plan_item(index, item, config, &mut builder).err());
    }
    Plan {
        settled,
        calls: builder.finish(),
    }
}

/// Adds `item`'s inputs to `builder`, or says why the item needs no request.
fn plan_item(
    index: usize,
    item: &SinkItem,
    config: &HubSpotConfig,
    builder: &mut Builder,
) -> Result<(), Outcome> {
    let email = item
        .event
        .contact
        .email
        .as_deref()
        .map(normalize::email)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Outcome::permanent("event has no email"))?;
    match &item.change {
        Change::Grant(name) | Change::Withdraw(name) => {
            let purpose = config.purposes.get(name).ok_or_else(|| {
                Outcome::permanent(format!(
                    "purpose {name:?} has no HubSpot subscription types configured"
                ))
            })?;
            let granted = matches!(item.change, Change::Grant(_));
            let status_state = if granted {
                StatusState::Subscribed
            } else {
                StatusState::Unsubscribed
            };
            if granted && purpose.create_contact {
                builder.upsert(ContactInput {
                    item: index,
                    properties: contact_properties(
                        &item.event.contact,
                        &email,
                        &config.contact_properties,
                    ),
                    id: email.clone(),
                    id_property: "email",
                    object_write_trace_id: item.event.event_id.to_string(),
                });
            }
            // The notice version makes HubSpot's own record a proof of which text was consented to.
            let legal_basis_explanation = match item.event.notice_version.as_deref() {
                Some(v) if !v.is_empty() => {
                    format!("{} (notice {v})", purpose.legal_basis_explanation)
                }
                _ => purpose.legal_basis_explanation.clone(),
            };
            for &subscription_id in &purpose.subscription_ids {
                builder.write(StatusInput {
                    item: index,
                    subscriber_id_string: email.clone(),
                    channel: "EMAIL",
                    status_state,
                    subscription_id,
                    legal_basis: purpose.legal_basis,
                    legal_basis_explanation: legal_basis_explanation.clone(),
                });
            }
            Ok(())
        }
        Change::WithdrawAll => {
            builder.unsubscribe_all(ContactRef { item: index, email });
            Ok(())
        }
        Change::Erase => {
            builder.gdpr_delete(ContactRef { item: index, email });
            Ok(())
        }
    }
}

/// The allow-listed properties that have a value. Blank values are left out rather than sent:
/// HubSpot reads an empty string as "clear this property", which an event never means.
fn contact_properties(
    contact: &Contact,
    email: &str,
    allowed: &[ContactProperty],
) -> BTreeMap<&'static str, String> {
    allowed
        .iter()
        .filter_map(|&property| {
            let value = match property {
                ContactProperty::Email => Some(email),
                ContactProperty::Firstname => contact.first_name.as_deref(),
                ContactProperty::Lastname => contact.last_name.as_deref(),
                ContactProperty::Company => contact.company.as_deref(),
                ContactProperty::Phone => contact.phone.as_deref(),
            }?
            .trim();
            (!value.is_empty()).then(|| (property.name(), value.to_owned()))
        })
        .collect()
}

/// What the open segment already does to one contact.
enum Touch {
    /// An upsert (or none) and status writes for these subscription types.
    Parts {
        upserted: bool,
        subscriptions: BTreeSet<i64>,
    },
    /// An unsubscribe-all or a GDPR delete.
    WholeContact,
}

/// Packs inputs into calls. Calls are built in segments: within one segment no contact is touched
/// by two whole-contact operations, nor upserted twice (HubSpot rejects duplicate ids in a batch),
/// nor written twice for the same subscription type. An input that would break that closes the
/// segment, which keeps each contact's changes in item order even though HubSpot does not promise
/// any order inside one batch. Within a segment the upserts go first, so that an item's contact
/// exists before its status is written.
struct Builder {
    limit: usize,
    calls: Vec<Call>,
    upsert: Vec<ContactInput>,
    write: Vec<StatusInput>,
    unsubscribe: Vec<ContactRef>,
    touched: HashMap<String, Touch>,
}

impl Builder {
    fn new(limit: usize) -> Self {
        Builder {
            limit,
            calls: Vec::new(),
            upsert: Vec::new(),
            write: Vec::new(),
            unsubscribe: Vec::new(),
            touched: HashMap::new(),
        }
    }

    fn upsert(&mut self, input: ContactInput) {
        if matches!(
            self.touched.get(&input.id),
            Some(Touch::WholeContact | Touch::Parts { upserted: true, .. })
        ) {
            self.close_segment();
        }
        if let Touch::Parts { upserted, .. } = self.parts(&input.id) {
            *upserted = true;
        }
        self.upsert.push(input);
        if self.upsert.len() == self.limit {
            self.flush_upserts();
        }
    }

    fn write(&mut self, input: StatusInput) {
        let id = input.subscription_id;
        let conflict = match self.touched.get(&input.subscriber_id_string) {
            None => false,
            Some(Touch::Parts { subscriptions, .. }) => subscriptions.contains(&id),
            Some(Touch::WholeContact) => true,
        };
        if conflict {
            self.close_segment();
        }
        if let Touch::Parts { subscriptions, .. } = self.parts(&input.subscriber_id_string) {
            subscriptions.insert(id);
        }
        self.write.push(input);
        if self.write.len() == self.limit {
            // The upserts of these writes' items must not end up behind them.
            self.flush_upserts();
            self.calls
                .push(Call::BatchWrite(std::mem::take(&mut self.write)));
        }
    }

    fn unsubscribe_all(&mut self, contact: ContactRef) {
        if self.touched.contains_key(&contact.email) {
            self.close_segment();
        }
        self.touched
            .insert(contact.email.clone(), Touch::WholeContact);
        self.unsubscribe.push(contact);
        if self.unsubscribe.len() == self.limit {
            self.calls
                .push(Call::UnsubscribeAll(std::mem::take(&mut self.unsubscribe)));
        }
    }

    fn gdpr_delete(&mut self, contact: ContactRef) {
        if self.touched.contains_key(&contact.email) {
            self.close_segment();
        }
        self.touched
            .insert(contact.email.clone(), Touch::WholeContact);
        self.calls.push(Call::GdprDelete(contact));
    }

    /// The contact's per-part touch in the open segment. After a conflict the segment is new, so
    /// the contact has no whole-contact touch here.
    fn parts(&mut self, email: &str) -> &mut Touch {
        self.touched
            .entry(email.to_owned())
            .or_insert_with(|| Touch::Parts {
                upserted: false,
                subscriptions: BTreeSet::new(),
            })
    }

    fn flush_upserts(&mut self) {
        if !self.upsert.is_empty() {
            self.calls
                .push(Call::Upsert(std::mem::take(&mut self.upsert)));
        }
    }

    fn close_segment(&mut self) {
        self.flush_upserts();
        if !self.write.is_empty() {
            self.calls
                .push(Call::BatchWrite(std::mem::take(&mut self.write)));
        }
        if !self.unsubscribe.is_empty() {
            self.calls
                .push(Call::UnsubscribeAll(std::mem::take(&mut self.unsubscribe)));
        }
        self.touched.clear();
    }

    fn finish(mut self) -> Vec<Call> {
        self.close_segment();
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use relay_delivery::Target;
    use relay_events::Action;
    use relay_testkit::items::ItemFixture;

    use super::*;
    use crate::config::PurposeConfig;

    fn config(limit: usize) -> HubSpotConfig {
        let mut c = HubSpotConfig {
            token: Some("t".into()),
            max_inputs_per_request: limit,
            ..HubSpotConfig::default()
        };
        c.purposes.insert(
            "newsletter".into(),
            PurposeConfig {
                subscription_ids: vec![11, 22],
                legal_basis: LegalBasis::ConsentWithNotice,
                legal_basis_explanation: "Web form opt-in".into(),
                create_contact: false,
            },
        );
        c.purposes.insert(
            "events".into(),
            PurposeConfig {
                subscription_ids: vec![33],
                legal_basis: LegalBasis::LegitimateInterestClient,
                legal_basis_explanation: "Customer events".into(),
                create_contact: false,
            },
        );
        c.purposes.insert(
            "webinar".into(),
            PurposeConfig {
                subscription_ids: vec![44],
                legal_basis: LegalBasis::ConsentWithNotice,
                legal_basis_explanation: "Webinar sign-up".into(),
                create_contact: true,
            },
        );
        c
    }

    fn item(email: Option<&str>, action: Action, target: Target) -> SinkItem {
        ItemFixture::new(action, target)
            .subject("subj-1")
            .occurred_at_ms(1_700_000_000_000)
            .notice("2026-01")
            .email(email)
            .build()
    }

    fn purpose(p: &str) -> Target {
        Target::Purpose(p.into())
    }

    #[test]
    fn grant_writes_one_subscribed_input_per_subscription_type() {
        let plan = plan(
            &[item(
                Some(" Max@Example.DE "),
                Action::Grant,
                purpose("newsletter"),
            )],
            &config(100),
        );
        assert_eq!(plan.settled, vec![None]);
        assert_eq!(plan.calls.len(), 1);
        assert_eq!(plan.calls[0].path(), BATCH_WRITE_PATH);
        assert_eq!(
            plan.calls[0].body(),
            json!({"inputs": [
                {"subscriberIdString": "max@example.de", "channel": "EMAIL",
                 "statusState": "SUBSCRIBED", "subscriptionId": 11,
                 "legalBasis": "CONSENT_WITH_NOTICE",
                 "legalBasisExplanation": "Web form opt-in (notice 2026-01)"},
                {"subscriberIdString": "max@example.de", "channel": "EMAIL",
                 "statusState": "SUBSCRIBED", "subscriptionId": 22,
                 "legalBasis": "CONSENT_WITH_NOTICE",
                 "legalBasisExplanation": "Web form opt-in (notice 2026-01)"},
            ]})
        );
    }

    #[test]
    fn withdraw_writes_unsubscribed_with_the_purposes_legal_basis() {
        let mut it = item(Some("a@b.de"), Action::Withdraw, purpose("events"));
        Arc::get_mut(&mut it.event).unwrap().notice_version = None;
        let plan = plan(&[it], &config(100));
        assert_eq!(
            plan.calls[0].body(),
            json!({"inputs": [
                {"subscriberIdString": "a@b.de", "channel": "EMAIL",
                 "statusState": "UNSUBSCRIBED", "subscriptionId": 33,
                 "legalBasis": "LEGITIMATE_INTEREST_CLIENT",
                 "legalBasisExplanation": "Customer events"},
            ]})
        );
    }

    #[test]
    fn global_unsubscribe_and_erasure() {
        let plan = plan(
            &[
                item(Some("A@b.de"), Action::Withdraw, Target::All),
                item(Some("c@d.de"), Action::Withdraw, Target::All),
                item(Some("E@f.de"), Action::Erase, Target::All),
                item(Some("g@h.de"), Action::Erase, Target::All),
            ],
            &config(100),
        );
        assert_eq!(plan.settled, vec![None; 4]);
        let shapes: Vec<_> = plan.calls.iter().map(|c| (c.path(), c.body())).collect();
        assert_eq!(
            shapes,
            vec![
                (
                    GDPR_DELETE_PATH,
                    json!({"objectId": "e@f.de", "idProperty": "email"})
                ),
                (
                    GDPR_DELETE_PATH,
                    json!({"objectId": "g@h.de", "idProperty": "email"})
                ),
                (
                    UNSUBSCRIBE_ALL_PATH,
                    json!({"inputs": ["a@b.de", "c@d.de"]})
                ),
            ]
        );
        assert!(UNSUBSCRIBE_ALL_PATH.ends_with("?channel=EMAIL&verbose=true"));
    }

    #[test]
    fn items_that_need_no_request_are_settled() {
        let plan = plan(
            &[
                item(None, Action::Grant, purpose("newsletter")),
                item(Some("  "), Action::Withdraw, Target::All),
                item(Some("a@b.de"), Action::Grant, purpose("unknown")),
            ],
            &config(100),
        );
        assert!(plan.calls.is_empty());
        let reasons: Vec<_> = plan
            .settled
            .iter()
            .map(|o| match o {
                Some(Outcome::Permanent { reason }) => reason.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons[0], "event has no email");
        assert_eq!(reasons[1], "event has no email");
        assert!(reasons[2].contains("\"unknown\""), "{}", reasons[2]);
    }

    #[test]
    fn batches_are_chunked_at_the_limit_and_remember_their_items() {
        let items: Vec<_> = (0..5)
            .map(|i| {
                item(
                    Some(&format!("u{i}@x.de")),
                    Action::Grant,
                    purpose("newsletter"),
                )
            })
            .collect();
        let plan = plan(&items, &config(4));
        let sizes: Vec<_> = plan.calls.iter().map(|c| c.inputs().len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let owners: Vec<_> = plan
            .calls
            .iter()
            .flat_map(|c| c.inputs().into_iter().map(|(item, _)| item))
            .collect();
        assert_eq!(owners, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn changes_to_one_contact_keep_their_order() {
        let plan = plan(
            &[
                item(Some("a@b.de"), Action::Grant, purpose("newsletter")),
                item(Some("other@b.de"), Action::Grant, purpose("events")),
                item(Some("a@b.de"), Action::Withdraw, Target::All),
                item(Some("a@b.de"), Action::Grant, purpose("events")),
                item(Some("A@B.de"), Action::Withdraw, purpose("events")),
                item(Some("a@b.de"), Action::Erase, Target::All),
            ],
            &config(100),
        );
        let calls: Vec<_> = plan
            .calls
            .iter()
            .map(|c| {
                (
                    c.path(),
                    c.inputs().iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            vec![
                (BATCH_WRITE_PATH, vec![0, 0, 1]),
                (UNSUBSCRIBE_ALL_PATH, vec![2]),
                (BATCH_WRITE_PATH, vec![3]),
                (BATCH_WRITE_PATH, vec![4]),
                (GDPR_DELETE_PATH, vec![5]),
            ]
        );
    }

    fn with_contact(mut item: SinkItem, contact: Contact) -> SinkItem {
        Arc::get_mut(&mut item.event).unwrap().contact = contact;
        item
    }

    #[test]
    fn a_grant_with_create_contact_upserts_before_it_writes() {
        let it = with_contact(
            item(None, Action::Grant, purpose("webinar")),
            Contact {
                email: Some(" Max@Example.DE ".into()),
                first_name: Some("Max".into()),
                last_name: Some("  ".into()),
                company: None,
                phone: Some("+49 30 1234567".into()),
                ..Contact::default()
            },
        );
        let event_id = it.event.event_id.to_string();
        let plan = plan(&[it], &config(100));
        let paths: Vec<_> = plan.calls.iter().map(Call::path).collect();
        assert_eq!(paths, [UPSERT_PATH, BATCH_WRITE_PATH]);
        assert_eq!(
            plan.calls[0].body(),
            json!({"inputs": [{
                "id": "max@example.de",
                "idProperty": "email",
                "properties": {"email": "max@example.de", "firstname": "Max",
                               "phone": "+49 30 1234567"},
                "objectWriteTraceId": event_id,
            }]})
        );
    }

    #[test]
    fn only_allow_listed_properties_are_sent() {
        let mut c = config(100);
        c.contact_properties = vec![ContactProperty::Lastname];
        let it = with_contact(
            item(None, Action::Grant, purpose("webinar")),
            Contact {
                email: Some("a@b.de".into()),
                first_name: Some("Anna".into()),
                last_name: Some("Berg".into()),
                company: Some("ACME".into()),
                phone: Some("+4930".into()),
                ..Contact::default()
            },
        );
        let plan = plan(&[it], &c);
        assert_eq!(
            plan.calls[0].body()["inputs"][0]["properties"],
            json!({"lastname": "Berg"})
        );
    }

    #[test]
    fn withdrawals_and_purposes_without_create_contact_send_no_upsert() {
        let plan = plan(
            &[
                item(Some("a@b.de"), Action::Withdraw, purpose("webinar")),
                item(Some("c@d.de"), Action::Grant, purpose("events")),
            ],
            &config(100),
        );
        assert!(plan.calls.iter().all(|c| c.path() != UPSERT_PATH));
    }

    #[test]
    fn upserts_stay_ahead_of_their_writes_across_full_batches() {
        let items: Vec<_> = (0..3)
            .map(|i| {
                item(
                    Some(&format!("u{i}@x.de")),
                    Action::Grant,
                    purpose("webinar"),
                )
            })
            .collect();
        let plan = plan(&items, &config(2));
        let calls: Vec<_> = plan
            .calls
            .iter()
            .map(|c| {
                (
                    c.path(),
                    c.inputs().iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            vec![
                (UPSERT_PATH, vec![0, 1]),
                (BATCH_WRITE_PATH, vec![0, 1]),
                (UPSERT_PATH, vec![2]),
                (BATCH_WRITE_PATH, vec![2]),
            ]
        );
    }

    #[test]
    fn a_contact_is_upserted_once_per_call_and_never_across_an_erasure() {
        let plan = plan(
            &[
                item(Some("a@b.de"), Action::Grant, purpose("webinar")),
                item(Some("a@b.de"), Action::Grant, purpose("webinar")),
                item(Some("a@b.de"), Action::Erase, Target::All),
                item(Some("a@b.de"), Action::Grant, purpose("webinar")),
            ],
            &config(100),
        );
        let calls: Vec<_> = plan
            .calls
            .iter()
            .map(|c| {
                (
                    c.path(),
                    c.inputs().iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            vec![
                (UPSERT_PATH, vec![0]),
                (BATCH_WRITE_PATH, vec![0]),
                (UPSERT_PATH, vec![1]),
                (BATCH_WRITE_PATH, vec![1]),
                (GDPR_DELETE_PATH, vec![2]),
                (UPSERT_PATH, vec![3]),
                (BATCH_WRITE_PATH, vec![3]),
            ]
        );
    }

    #[test]
    fn retain_drops_inputs_by_email() {
        let mut call = plan(
            &[
                item(Some("a@b.de"), Action::Withdraw, Target::All),
                item(Some("c@d.de"), Action::Withdraw, Target::All),
            ],
            &config(100),
        )
        .calls
        .remove(0);
        assert!(driver::Request::retain(&mut call, &mut |at| at != 0));
        assert_eq!(call.inputs(), vec![(1, "c@d.de")]);
        assert!(!driver::Request::retain(&mut call, &mut |_| false));
    }
}
