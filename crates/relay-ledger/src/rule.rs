//! The version rule (DESIGN.md §3.1) and idempotency check (§3.2) as a pure function, so both
//! backends decide identically and the rule can be tested without a database.

use std::collections::HashMap;

use relay_events::Action;

use crate::{Claim, Decision, DeliveryKey, Status, SubjectState};

/// The order of decisions: newer `occurred_at` wins; on a tie the higher action rank
/// (withdraw/erase over grant) wins.
fn version(occurred_at_ms: i64, action: Action) -> (i64, Action) {
    (occurred_at_ms, action)
}

/// A delivery row as the rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryState {
    pub status: Status,
    pub attempts: u32,
    /// The generation of the newest parked copy recorded (0: never parked).
    pub parks: u32,
}

/// Decides one claim given its delivery row, if any, and the subject states stored for its
/// subject and sink.
pub(crate) fn decide(
    claim: &Claim,
    delivery: Option<DeliveryState>,
    states: &[SubjectState],
) -> Decision {
    if let Some(d) = delivery {
        let replayed = claim.replay && d.status == Status::DeadLettered;
        // Not one awaiting the person's confirmation: sending the grant again would subscribe
        // them without it.
        let reasserted =
            claim.reassert && matches!(d.status, Status::Applied | Status::AlreadyApplied);
        if d.status.is_final() && !replayed && !reasserted {
            return Decision::Duplicate { status: d.status };
        }
    }
    if let (Some(generation), Some(d)) = (claim.ticket, delivery) {
        // A newer copy exists: this one is stale.
        if generation < d.parks {
            return Decision::Duplicate { status: d.status };
        }
    }
    let own = version(claim.occurred_at_ms, claim.action);
    let target = claim.key.target.as_str();
    let newest_other = states
        .iter()
        .filter(|s| s.sink == claim.key.sink && (s.target == target || s.target == "*"))
        // The claim's own event in the state means we crashed after claiming it: redo it.
        .filter(|s| s.event_id != claim.key.event_id)
        // A grant loses a tie. A withdrawal or erasure tied with the same decision goes out again:
        // that decision may never have reached the destination (dead-lettered for a missing email,
        // the copy with the email a correction of it), and repeating it can only take consent away.
        .filter(|s| {
            let theirs = version(s.occurred_at_ms, s.action);
            theirs > own || (theirs == own && claim.action == Action::Grant)
        })
        .max_by_key(|s| version(s.occurred_at_ms, s.action));
    if let Some(s) = newest_other {
        if let (true, Some(d)) = (claim.reassert, delivery) {
            // The newer decision is re-asserted on its own; a final row stays as it was (one
            // still under way, a re-assertion parked meanwhile, is superseded like any other).
            if d.status.is_final() {
                return Decision::Duplicate { status: d.status };
            }
        }
        return Decision::Superseded { by: s.event_id };
    }
    let attempt = delivery.map_or(0, |d| d.attempts).saturating_add(1);
    if target != "*" || claim.action != Action::Withdraw {
        return Decision::Proceed { attempt };
    }
    // A whole-subject withdrawal must not undo a purpose the person granted after it (possible
    // when it arrives late, from another topic). An erasure is not narrowed: it asks for everything.
    let mut keep: Vec<String> = states
        .iter()
        .filter(|s| s.sink == claim.key.sink && s.target != "*")
        .filter(|s| s.event_id != claim.key.event_id && s.action == Action::Grant)
        .filter(|s| version(s.occurred_at_ms, s.action) > own)
        .map(|s| s.target.clone())
        .collect();
    keep.sort_unstable();
    if keep.is_empty() {
        Decision::Proceed { attempt }
    } else {
        Decision::ProceedExcept { attempt, keep }
    }
}

/// What a batch of claims read before deciding: the delivery rows of its keys and the subject
/// states of its subjects (all targets, at the claims' sinks).
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub deliveries: HashMap<DeliveryKey, DeliveryState>,
    pub states: HashMap<String, Vec<SubjectState>>,
}

/// A claim's row of `deliveries` after the batch: key, subject, status, attempts, and how many
/// re-assertions of it the batch started.
pub(crate) type ClaimedRow = (DeliveryKey, String, Status, u32, u32);

/// What a batch of claims writes: each row once, with the value its last claim left, which is
/// what claiming them one after the other would have left in the tables.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    /// (subject_id, state)
    pub states: Vec<(String, SubjectState)>,
    pub claimed: Vec<ClaimedRow>,
}

/// Decides `claims` in order, each seeing what the ones before it decided (a batch may hold two
/// events of one subject, or the same event twice), exactly as if each were claimed in its own
/// statement after the previous one was written.
pub(crate) fn decide_all(claims: &[Claim], mut known: Known) -> (Vec<Decision>, Writes) {
    let mut decisions = Vec::with_capacity(claims.len());
    let mut writes = Writes::default();
    let mut state_row: HashMap<(String, String, String), usize> = HashMap::new();
    let mut claimed_row: HashMap<DeliveryKey, usize> = HashMap::new();
    for claim in claims {
        let delivery = known.deliveries.get(&claim.key).copied();
        let states = known
            .states
            .get(&claim.subject_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let decision = decide(claim, delivery, states);
        let (status, attempts) = match &decision {
            Decision::Duplicate { .. } => {
                decisions.push(decision);
                continue;
            }
            Decision::Superseded { .. } => (Status::Superseded, delivery.map_or(0, |d| d.attempts)),
            Decision::Proceed { attempt } | Decision::ProceedExcept { attempt, .. } => {
                let state = SubjectState {
                    sink: claim.key.sink.clone(),
                    target: claim.key.target.clone(),
                    action: claim.action,
                    occurred_at_ms: claim.occurred_at_ms,
                    event_id: claim.key.event_id,
                };
                let subject_states = known.states.entry(claim.subject_id.clone()).or_default();
                match subject_states
                    .iter_mut()
                    .find(|s| s.sink == state.sink && s.target == state.target)
                {
                    Some(s) => *s = state.clone(),
                    None => subject_states.push(state.clone()),
                }
                let row_key = (
                    claim.subject_id.clone(),
                    claim.key.sink.clone(),
                    claim.key.target.clone(),
                );
                let row = (claim.subject_id.clone(), state);
                match state_row.get(&row_key) {
                    Some(&i) => writes.states[i] = row,
                    None => {
                        state_row.insert(row_key, writes.states.len());
                        writes.states.push(row);
                    }
                }
                (Status::InFlight, *attempt)
            }
        };
        let parks = delivery.map_or(0, |d| d.parks);
        known.deliveries.insert(
            claim.key.clone(),
            DeliveryState {
                status,
                attempts,
                parks,
            },
        );
        let reasserted = u32::from(claim.reassert && status == Status::InFlight);
        let row = (
            claim.key.clone(),
            claim.subject_id.clone(),
            status,
            attempts,
            reasserted,
        );
        match claimed_row.get(&claim.key) {
            Some(&i) => {
                let before = writes.claimed[i].4;
                writes.claimed[i] = row;
                writes.claimed[i].4 += before;
            }
            None => {
                claimed_row.insert(claim.key.clone(), writes.claimed.len());
                writes.claimed.push(row);
            }
        }
        decisions.push(decision);
    }
    (decisions, writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeliveryKey;
    use uuid::Uuid;

    fn claim(target: &str, action: Action, at: i64) -> Claim {
        Claim {
            key: DeliveryKey {
                event_id: Uuid::new_v4(),
                sink: "hubspot".into(),
                target: target.into(),
            },
            subject_id: "s".into(),
            action,
            occurred_at_ms: at,
            replay: false,
            ticket: None,
            reassert: false,
        }
    }

    fn row(status: Status, attempts: u32) -> Option<DeliveryState> {
        Some(DeliveryState {
            status,
            attempts,
            parks: 0,
        })
    }

    fn state(target: &str, action: Action, at: i64) -> SubjectState {
        SubjectState {
            sink: "hubspot".into(),
            target: target.into(),
            action,
            occurred_at_ms: at,
            event_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_late_global_withdrawal_spares_purposes_granted_after_it() {
        let newer = state("product", Action::Grant, 9);
        let older = state("newsletter", Action::Grant, 3);
        let withdrawn = state("ads", Action::Withdraw, 8);
        let d = decide(
            &claim("*", Action::Withdraw, 5),
            None,
            &[newer, older.clone(), withdrawn],
        );
        assert_eq!(
            d,
            Decision::ProceedExcept {
                attempt: 1,
                keep: vec!["product".into()]
            }
        );
        // Nothing newer: an ordinary proceed. An erasure is never narrowed.
        assert_eq!(
            decide(&claim("*", Action::Withdraw, 5), None, &[older]),
            Decision::Proceed { attempt: 1 }
        );
        assert_eq!(
            decide(
                &claim("*", Action::Erase, 5),
                None,
                &[state("product", Action::Grant, 9)]
            ),
            Decision::Proceed { attempt: 1 }
        );
        // A purpose claim ignores other purposes' states, as before.
        assert_eq!(
            decide(
                &claim("newsletter", Action::Withdraw, 5),
                None,
                &[state("product", Action::Grant, 9)]
            ),
            Decision::Proceed { attempt: 1 }
        );
    }

    #[test]
    fn a_replay_decides_a_dead_lettered_delivery_again_and_nothing_else() {
        let mut c = claim("n", Action::Grant, 5);
        c.replay = true;
        assert_eq!(
            decide(&c, row(Status::DeadLettered, 1), &[]),
            Decision::Proceed { attempt: 2 }
        );
        assert_eq!(
            decide(&c, row(Status::Applied, 1), &[]),
            Decision::Duplicate {
                status: Status::Applied
            }
        );
        // Replayed after a newer decision: superseded like any stale event.
        let newer = state("n", Action::Withdraw, 9);
        assert!(matches!(
            decide(&c, row(Status::DeadLettered, 1), &[newer]),
            Decision::Superseded { .. }
        ));
        c.replay = false;
        assert_eq!(
            decide(&c, row(Status::DeadLettered, 1), &[]),
            Decision::Duplicate {
                status: Status::DeadLettered
            }
        );
    }

    #[test]
    fn final_delivery_is_duplicate_whatever_the_state() {
        for status in [Status::Applied, Status::Superseded, Status::NotRouted] {
            let d = decide(&claim("n", Action::Erase, 9), row(status, 1), &[]);
            assert_eq!(d, Decision::Duplicate { status });
        }
    }

    #[test]
    fn retrying_delivery_counts_the_next_attempt() {
        let d = decide(&claim("n", Action::Grant, 1), row(Status::Retrying, 3), &[]);
        assert_eq!(d, Decision::Proceed { attempt: 4 });
    }

    #[test]
    fn tie_goes_to_the_higher_rank_and_a_tied_withdrawal_goes_out_again() {
        let w = state("n", Action::Withdraw, 5);
        let d = decide(
            &claim("n", Action::Grant, 5),
            None,
            std::slice::from_ref(&w),
        );
        assert_eq!(d, Decision::Superseded { by: w.event_id });
        let g = state("n", Action::Grant, 5);
        let d = decide(
            &claim("n", Action::Grant, 5),
            None,
            std::slice::from_ref(&g),
        );
        assert_eq!(d, Decision::Superseded { by: g.event_id });
        // The stored withdrawal may be one that never reached the destination (dead-lettered for
        // want of an email); its corrected copy, same time, must not be dropped as stale.
        let d = decide(
            &claim("n", Action::Withdraw, 5),
            None,
            std::slice::from_ref(&w),
        );
        assert_eq!(d, Decision::Proceed { attempt: 1 });
        let d = decide(&claim("n", Action::Erase, 5), None, &[w]);
        assert_eq!(d, Decision::Proceed { attempt: 1 });
    }

    #[test]
    fn newest_of_purpose_and_global_state_is_named() {
        let global = state("*", Action::Withdraw, 7);
        let purpose = state("n", Action::Grant, 8);
        let d = decide(
            &claim("n", Action::Grant, 6),
            None,
            &[global, purpose.clone()],
        );
        assert_eq!(
            d,
            Decision::Superseded {
                by: purpose.event_id
            }
        );
    }

    #[test]
    fn global_claim_is_not_superseded_by_purpose_states_nor_other_sinks() {
        // A newer purpose grant does not supersede a global withdrawal; it is spared by it.
        let purpose = state("n", Action::Grant, 8);
        let mut elsewhere = state("*", Action::Erase, 9);
        elsewhere.sink = "meta".into();
        let d = decide(
            &claim("*", Action::Withdraw, 6),
            None,
            &[purpose, elsewhere],
        );
        assert_eq!(
            d,
            Decision::ProceedExcept {
                attempt: 1,
                keep: vec!["n".into()]
            }
        );
    }

    #[test]
    fn own_event_in_state_is_a_redelivery() {
        let c = claim("n", Action::Grant, 5);
        let mut own = state("n", Action::Grant, 5);
        own.event_id = c.key.event_id;
        let d = decide(&c, row(Status::InFlight, 1), &[own]);
        assert_eq!(d, Decision::Proceed { attempt: 2 });
    }

    #[test]
    fn a_parked_copy_of_an_older_generation_is_stale() {
        let parked = Some(DeliveryState {
            status: Status::Parked,
            attempts: 5,
            parks: 2,
        });
        let mut c = claim("n", Action::Withdraw, 5);
        c.ticket = Some(2);
        assert_eq!(decide(&c, parked, &[]), Decision::Proceed { attempt: 6 });
        // Written but not yet recorded (the copy goes first): the newest, so it proceeds.
        c.ticket = Some(3);
        assert_eq!(decide(&c, parked, &[]), Decision::Proceed { attempt: 6 });
        // A newer copy exists.
        c.ticket = Some(1);
        assert_eq!(
            decide(&c, parked, &[]),
            Decision::Duplicate {
                status: Status::Parked
            }
        );
        // Finished meanwhile: a duplicate like any other.
        c.ticket = Some(2);
        assert_eq!(
            decide(&c, row(Status::Applied, 6), &[]),
            Decision::Duplicate {
                status: Status::Applied
            }
        );
        // A newer decision supersedes a live parked copy.
        let newer = state("n", Action::Grant, 9);
        assert!(matches!(
            decide(&c, parked, &[newer]),
            Decision::Superseded { .. }
        ));
        // A claim from the source topic may always proceed.
        c.ticket = None;
        assert_eq!(decide(&c, parked, &[]), Decision::Proceed { attempt: 6 });
    }
}
