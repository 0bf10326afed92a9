//! Which deliveries an event means for one sink, and how a batch of them is coalesced and ordered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use relay_delivery::{Change, SinkItem, Target};
use relay_events::{Action, ConsentEvent, ErrorCode, Scope};

use crate::decode::Rejected;

/// The purposes a sink serves, and what it needs of an event.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Every purpose the configuration knows; an event naming another is invalid.
    pub known: BTreeSet<String>,
    /// The purposes that route to this sink.
    pub sink: BTreeSet<String>,
    pub requires_email: bool,
}

#[derive(Debug)]
pub enum Routed {
    Items(Vec<SinkItem>),
    /// Valid, but none of its purposes route to this sink.
    Elsewhere,
    Rejected(Rejected),
}

pub fn route(event: &Arc<ConsentEvent>, routes: &Routes) -> Routed {
    let reject = |code: ErrorCode, message: String| {
        Routed::Rejected(Rejected {
            code,
            message,
            event_id: Some(event.event_id),
            subject_id: Some(event.subject_id.clone()),
        })
    };
    let action = event.action();
    let targets: Vec<Target> = match &event.scope {
        // A global unsubscribe or an erasure concerns every sink that holds anything of the person.
        Scope::All => vec![Target::All],
        Scope::Purposes(purposes) => {
            if let Some(unknown) = purposes.iter().find(|p| !routes.known.contains(*p)) {
                return reject(
                    ErrorCode::UnknownPurpose,
                    format!("purpose {unknown:?} is not in the configured purpose map"),
                );
            }
            purposes
                .iter()
                .filter(|p| routes.sink.contains(*p))
                .map(|p| Target::Purpose(p.clone()))
                .collect()
        }
    };
    if targets.is_empty() {
        return Routed::Elsewhere;
    }
    if routes.requires_email && event.contact.email.is_none() {
        return reject(
            ErrorCode::MissingEmail,
            "the event routes to a sink that needs an email address, and has none".to_owned(),
        );
    }
    let mut items = Vec::with_capacity(targets.len());
    for target in targets {
        match Change::new(action, target) {
            Some(change) => items.push(SinkItem {
                event: event.clone(),
                change,
            }),
            // Validation rules these out; an event that got past it anyway is rejected, not
            // guessed at.
            None => {
                return reject(
                    ErrorCode::InvalidPurposes,
                    format!("a {} must not cover this scope", event.kind.name()),
                )
            }
        }
    }
    Routed::Items(items)
}

/// The version of a decision (DESIGN.md §3.1): newer `occurred_at` wins; on a tie the higher
/// action wins, so a withdrawal beats a grant.
pub fn version(item: &SinkItem) -> (i64, Action) {
    (item.event.occurred_at_ms, item.action())
}

/// A batch after coalescing: the items to apply, in waves that must be applied one after the
/// other, and the items a newer item of the same batch made moot.
#[derive(Debug, Default)]
pub struct Plan {
    pub waves: Vec<Vec<SinkItem>>,
    pub superseded: Vec<(SinkItem, SinkItem)>,
}

/// Keeps the newest item per (subject, target); drops purpose items older than a whole-subject
/// item of the same subject; puts purpose items that are newer than a whole-subject item into a
/// second wave (a later grant must land after an earlier unsubscribe-all, not race it). Within a
/// wave, withdrawals and erasures come first.
pub fn plan(items: Vec<SinkItem>) -> Plan {
    let mut newest: BTreeMap<(String, Target), SinkItem> = BTreeMap::new();
    let mut superseded = Vec::new();
    // Withdrawals and erasures tied with the same decision of another event: each goes out, one
    // wave after the one it is tied with, as the ledger's rule lets it (either copy may be the one
    // the destination accepts: the other may carry a mistyped address).
    let mut tied: Vec<SinkItem> = Vec::new();
    for item in items {
        let key = (item.event.subject_id.clone(), item.target());
        match newest.remove(&key) {
            // The same event twice (a producer retry): one copy is enough, and neither is stale.
            Some(kept) if kept.event.event_id == item.event.event_id => {
                newest.insert(key, kept);
            }
            Some(kept) if version(&kept) == version(&item) && item.action() != Action::Grant => {
                let repeated = tied.iter().any(|t| {
                    t.event.event_id == item.event.event_id && t.change.same_target(&item.change)
                });
                if !repeated {
                    tied.push(item);
                }
                newest.insert(key, kept);
            }
            Some(kept) if version(&kept) >= version(&item) => {
                superseded.push((item, kept.clone()));
                newest.insert(key, kept);
            }
            Some(kept) => {
                superseded.push((kept, item.clone()));
                newest.insert(key, item);
            }
            None => {
                newest.insert(key, item);
            }
        }
    }

    let whole_subject: BTreeMap<String, SinkItem> = newest
        .iter()
        .filter(|((_, target), _)| *target == Target::All)
        .map(|((subject, _), item)| (subject.clone(), item.clone()))
        .collect();
    // A purpose item loses to the subject's whole-subject item of the batch as the ledger's rule
    // decides it: when older, or tied while being a grant.
    let outranked = |item: &SinkItem| {
        whole_subject
            .get(&item.event.subject_id)
            .filter(|all| {
                version(all) > version(item)
                    || (version(all) == version(item) && item.action() == Action::Grant)
            })
            .cloned()
    };

    // Waves: whole-subject items and purpose items without one; the whole-subject items tied
    // with those; purpose items after a whole-subject item of the batch; purpose items tied with
    // theirs. A later grant never races an earlier whole-subject withdrawal or erasure.
    let (mut first, mut tied_whole, mut second, mut tied_purpose) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for item in tied {
        let key = (item.event.subject_id.clone(), item.target());
        let newer = newest
            .get(&key)
            .filter(|n| version(n) > version(&item))
            .cloned()
            .or_else(|| match item.target() {
                Target::Purpose(_) => outranked(&item),
                Target::All => None,
            });
        match (newer, &item.target()) {
            (Some(newer), _) => superseded.push((item, newer)),
            (None, Target::All) => tied_whole.push(item),
            (None, Target::Purpose(_)) => tied_purpose.push(item),
        }
    }
    for ((subject, target), item) in newest {
        match (&target, whole_subject.get(&subject)) {
            (Target::Purpose(_), Some(_)) => match outranked(&item) {
                Some(all) => superseded.push((item, all)),
                None => second.push(item),
            },
            _ => first.push(item),
        }
    }
    let mut waves = Vec::new();
    for mut wave in [first, tied_whole, second, tied_purpose] {
        if !wave.is_empty() {
            wave.sort_by_key(|item| std::cmp::Reverse(item.action()));
            waves.push(wave);
        }
    }
    Plan { waves, superseded }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_events::{Contact, EventKind};
    use uuid::Uuid;

    fn event(
        kind: EventKind,
        subject: &str,
        at: i64,
        scope: Scope,
        email: bool,
    ) -> Arc<ConsentEvent> {
        Arc::new(ConsentEvent {
            event_id: Uuid::new_v4(),
            kind,
            subject_id: subject.to_owned(),
            occurred_at_ms: at,
            source: "test".to_owned(),
            notice_version: Some("v1".to_owned()),
            scope,
            contact: Contact {
                email: email.then(|| "a@example.de".to_owned()),
                ..Contact::default()
            },
        })
    }

    fn purposes(p: &[&str]) -> Scope {
        Scope::Purposes(p.iter().map(|s| s.to_string()).collect())
    }

    fn routes() -> Routes {
        Routes {
            known: ["newsletter", "ads", "partner"].map(String::from).into(),
            sink: ["newsletter", "ads"].map(String::from).into(),
            requires_email: true,
        }
    }

    fn items(routed: Routed) -> Vec<SinkItem> {
        match routed {
            Routed::Items(items) => items,
            other => panic!("expected items, got {other:?}"),
        }
    }

    #[test]
    fn routes_only_the_sinks_purposes() {
        let ev = event(
            EventKind::ConsentGranted,
            "s",
            1,
            purposes(&["newsletter", "partner"]),
            true,
        );
        let got = items(route(&ev, &routes()));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].target(), Target::Purpose("newsletter".into()));
        assert_eq!(got[0].action(), Action::Grant);

        let ev = event(
            EventKind::ConsentGranted,
            "s",
            1,
            purposes(&["partner"]),
            true,
        );
        assert!(matches!(route(&ev, &routes()), Routed::Elsewhere));
    }

    #[test]
    fn unknown_purpose_and_missing_email_are_rejected() {
        let ev = event(
            EventKind::ConsentGranted,
            "s",
            1,
            purposes(&["lottery"]),
            true,
        );
        match route(&ev, &routes()) {
            Routed::Rejected(r) => assert_eq!(r.code, ErrorCode::UnknownPurpose),
            other => panic!("{other:?}"),
        }
        let ev = event(
            EventKind::ConsentWithdrawn,
            "s",
            1,
            purposes(&["ads"]),
            false,
        );
        match route(&ev, &routes()) {
            Routed::Rejected(r) => {
                assert_eq!(r.code, ErrorCode::MissingEmail);
                assert_eq!(r.event_id, Some(ev.event_id));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_change_validation_rules_out_is_rejected_not_guessed_at() {
        for ev in [
            event(EventKind::ConsentGranted, "s", 1, Scope::All, true),
            event(
                EventKind::ErasureRequested,
                "s",
                1,
                purposes(&["ads"]),
                true,
            ),
        ] {
            match route(&ev, &routes()) {
                Routed::Rejected(r) => assert_eq!(r.code, ErrorCode::InvalidPurposes),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn whole_subject_events_reach_every_sink() {
        let ev = event(EventKind::ErasureRequested, "s", 1, Scope::All, true);
        let got = items(route(&ev, &routes()));
        assert_eq!(got[0].target(), Target::All);
        assert_eq!(got[0].action(), Action::Erase);
    }

    #[test]
    fn a_later_withdrawal_in_the_batch_wins_over_a_grant() {
        let grant = items(route(
            &event(EventKind::ConsentGranted, "s", 1, purposes(&["ads"]), true),
            &routes(),
        ));
        let withdraw = items(route(
            &event(
                EventKind::ConsentWithdrawn,
                "s",
                2,
                purposes(&["ads"]),
                true,
            ),
            &routes(),
        ));
        let p = plan(grant.into_iter().chain(withdraw).collect());
        assert_eq!(p.waves.len(), 1);
        assert_eq!(p.waves[0].len(), 1);
        assert_eq!(p.waves[0][0].action(), Action::Withdraw);
        assert_eq!(p.superseded.len(), 1);
        assert_eq!(p.superseded[0].0.action(), Action::Grant);
    }

    #[test]
    fn a_stale_grant_after_a_withdrawal_in_the_batch_is_dropped_and_ties_go_to_withdrawal() {
        let withdraw = items(route(
            &event(
                EventKind::ConsentWithdrawn,
                "s",
                5,
                purposes(&["ads"]),
                true,
            ),
            &routes(),
        ));
        let stale = items(route(
            &event(EventKind::ConsentGranted, "s", 4, purposes(&["ads"]), true),
            &routes(),
        ));
        let tie = items(route(
            &event(EventKind::ConsentGranted, "s", 5, purposes(&["ads"]), true),
            &routes(),
        ));
        let p = plan(withdraw.into_iter().chain(stale).chain(tie).collect());
        assert_eq!(p.waves.concat().len(), 1);
        assert_eq!(p.waves[0][0].action(), Action::Withdraw);
        assert_eq!(p.superseded.len(), 2);
    }

    /// A withdrawal with a mistyped address and its correction, both of one time, in one batch:
    /// whichever the destination refuses, the other must still go out.
    #[test]
    fn tied_withdrawals_of_two_events_both_go_out_one_wave_after_the_other() {
        let withdraw = |at| {
            items(route(
                &event(
                    EventKind::ConsentWithdrawn,
                    "s",
                    at,
                    purposes(&["ads"]),
                    true,
                ),
                &routes(),
            ))
        };
        let (first, second) = (withdraw(5), withdraw(5));
        let p = plan(first.iter().chain(&second).cloned().collect());
        assert!(p.superseded.is_empty());
        assert_eq!(p.waves.len(), 2);
        assert_eq!(p.waves[0][0].event.event_id, first[0].event.event_id);
        assert_eq!(p.waves[1][0].event.event_id, second[0].event.event_id);
        // A newer decision in the batch still supersedes a tied one.
        let newer = items(route(
            &event(EventKind::ConsentGranted, "s", 6, purposes(&["ads"]), true),
            &routes(),
        ));
        let p = plan(first.iter().chain(&second).chain(&newer).cloned().collect());
        assert_eq!(p.waves.concat().len(), 1);
        assert_eq!(p.waves[0][0].action(), Action::Grant);
        assert_eq!(p.superseded.len(), 2);
    }

    /// Review findings: a tied whole-subject erasure must not land after a newer grant of the
    /// batch; a purpose withdrawal tied with an unsubscribe-all goes out too; a repeated copy of
    /// a tied event goes out once.
    #[test]
    fn tied_whole_subject_items_go_before_newer_purpose_items_and_copies_once() {
        let all = |kind, at| items(route(&event(kind, "s", at, Scope::All, true), &routes()));
        let (e1, e2) = (
            all(EventKind::ErasureRequested, 5),
            all(EventKind::ErasureRequested, 5),
        );
        let grant = items(route(
            &event(EventKind::ConsentGranted, "s", 6, purposes(&["ads"]), true),
            &routes(),
        ));
        let p = plan(
            e1.iter()
                .chain(&grant)
                .chain(&e2)
                .chain(&e2)
                .cloned()
                .collect(),
        );
        let ids: Vec<Vec<uuid::Uuid>> = p
            .waves
            .iter()
            .map(|w| w.iter().map(|i| i.event.event_id).collect())
            .collect();
        assert_eq!(
            ids,
            [
                vec![e1[0].event.event_id],
                vec![e2[0].event.event_id],
                vec![grant[0].event.event_id]
            ],
            "the tied erasure before the newer grant, once"
        );

        let unsubscribe = all(EventKind::Unsubscribed, 5);
        let withdraw = items(route(
            &event(
                EventKind::ConsentWithdrawn,
                "s",
                5,
                purposes(&["ads"]),
                true,
            ),
            &routes(),
        ));
        let p = plan(unsubscribe.iter().chain(&withdraw).cloned().collect());
        assert!(p.superseded.is_empty(), "{:?}", p.superseded);
        assert_eq!(p.waves.concat().len(), 2);
    }

    #[test]
    fn the_same_event_twice_is_one_item_and_not_superseded() {
        let grant = items(route(
            &event(EventKind::ConsentGranted, "s", 1, purposes(&["ads"]), true),
            &routes(),
        ));
        let p = plan(grant.iter().cloned().chain(grant.clone()).collect());
        assert_eq!(p.waves.concat().len(), 1);
        assert!(p.superseded.is_empty());
    }

    #[test]
    fn unsubscribe_all_orders_against_purpose_items_of_the_same_subject() {
        let old_grant = items(route(
            &event(EventKind::ConsentGranted, "s", 1, purposes(&["ads"]), true),
            &routes(),
        ));
        let unsub_all = items(route(
            &event(EventKind::Unsubscribed, "s", 2, Scope::All, true),
            &routes(),
        ));
        let new_grant = items(route(
            &event(
                EventKind::ConsentGranted,
                "s",
                3,
                purposes(&["newsletter"]),
                true,
            ),
            &routes(),
        ));
        let other = items(route(
            &event(EventKind::ConsentGranted, "t", 1, purposes(&["ads"]), true),
            &routes(),
        ));
        let p = plan(
            old_grant
                .into_iter()
                .chain(unsub_all)
                .chain(new_grant)
                .chain(other)
                .collect(),
        );
        assert_eq!(
            p.superseded.len(),
            1,
            "the grant older than the unsubscribe-all is moot"
        );
        assert_eq!(p.waves.len(), 2);
        assert_eq!(p.waves[0].len(), 2);
        assert_eq!(
            p.waves[0][0].target(),
            Target::All,
            "withdrawals first within a wave"
        );
        assert_eq!(p.waves[1].len(), 1);
        assert_eq!(p.waves[1][0].target(), Target::Purpose("newsletter".into()));
    }
}
