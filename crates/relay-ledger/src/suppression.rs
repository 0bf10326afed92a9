//! The suppression list of a purpose: everyone whose newest decision for it is a withdrawal, an
//! unsubscribe or an erasure. Marketing reconciles its lists against it (`suppression export`).

use relay_events::{Action, EventKind};
use serde::Serialize;
use uuid::Uuid;

use crate::ConsentRecord;

/// One suppressed person: no raw contact data, only the pseudonymous id and the email hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppressed {
    pub subject_id: String,
    pub email_sha256: Option<String>,
    /// The address hashed as Google normalizes it, and the variant with a gmail `+tag` kept
    /// (logged from ledger schema v5 on).
    pub google_email_sha256: Option<String>,
    pub google_email_plus_sha256: Option<String>,
    /// What the newest decision was: `withdraw` (consent for the purpose withdrawn),
    /// `unsubscribe` (from everything) or `erase`.
    pub decision: &'static str,
    pub occurred_at_ms: i64,
    pub event_id: Uuid,
    pub source: String,
}

/// The newest decision per subject among `records` (which must concern `purpose`, as
/// [`crate::Ledger::consent_for_purpose`] returns them), by the version rule of DESIGN.md §3.1;
/// those that are not grants. Events of unknown kinds are ignored.
pub fn suppression_list(records: &[ConsentRecord]) -> Vec<Suppressed> {
    let mut newest: std::collections::BTreeMap<&str, (i64, Action, &ConsentRecord)> =
        std::collections::BTreeMap::new();
    // The deciding event may carry no address (a withdrawal by phone, one dead-lettered for want
    // of an email): the person's hashes then come from their newest event that has them, or the
    // platforms' lists could not be cleaned of them.
    let mut hashed: std::collections::BTreeMap<&str, &ConsentRecord> =
        std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| r.email_sha256.is_some()) {
        match hashed.get(r.subject_id.as_str()) {
            Some(kept) if kept.occurred_at_ms > r.occurred_at_ms => {}
            _ => {
                hashed.insert(&r.subject_id, r);
            }
        }
    }
    for r in records {
        let Some(action) = EventKind::from_name(&r.kind).map(EventKind::action) else {
            continue;
        };
        let version = (r.occurred_at_ms, action);
        match newest.get(r.subject_id.as_str()) {
            Some((at, a, _)) if (*at, *a) >= version => {}
            _ => {
                newest.insert(&r.subject_id, (r.occurred_at_ms, action, r));
            }
        }
    }
    newest
        .into_values()
        .filter(|(_, action, _)| *action != Action::Grant)
        .map(|(_, _, r)| {
            let h = match hashed.get(r.subject_id.as_str()) {
                Some(with) if r.email_sha256.is_none() => with,
                _ => &r,
            };
            Suppressed {
                subject_id: r.subject_id.clone(),
                email_sha256: h.email_sha256.clone(),
                google_email_sha256: h.google_email_sha256.clone(),
                google_email_plus_sha256: h.google_email_plus_sha256.clone(),
                decision: match EventKind::from_name(&r.kind) {
                    Some(EventKind::Unsubscribed) => "unsubscribe",
                    Some(EventKind::ErasureRequested) => "erase",
                    _ => "withdraw",
                },
                occurred_at_ms: r.occurred_at_ms,
                event_id: r.event_id,
                source: r.source.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(subject: &str, kind: &str, at: i64) -> ConsentRecord {
        ConsentRecord {
            event_id: Uuid::new_v4(),
            subject_id: subject.into(),
            kind: kind.into(),
            purposes: vec!["newsletter".into()],
            occurred_at_ms: at,
            source: "test".into(),
            notice_version: None,
            email_sha256: Some("ab".repeat(32)),
            topic: "t".into(),
            partition: 0,
            offset: 0,
            payload_digest: None,
            late: false,
            google_email_sha256: None,
            google_email_plus_sha256: None,
        }
    }

    #[test]
    fn the_newest_decision_per_subject_decides_and_ties_go_to_withdrawal() {
        let records = [
            rec("a", "ConsentGranted", 1),
            rec("a", "ConsentWithdrawn", 2),
            rec("b", "ConsentWithdrawn", 1),
            rec("b", "ConsentGranted", 2),
            rec("c", "ConsentGranted", 5),
            rec("c", "Unsubscribed", 5),
            rec("d", "ErasureRequested", 3),
        ];
        let list = suppression_list(&records);
        let got: Vec<(&str, &str)> = list
            .iter()
            .map(|s| (s.subject_id.as_str(), s.decision))
            .collect();
        assert_eq!(
            got,
            [("a", "withdraw"), ("c", "unsubscribe"), ("d", "erase")]
        );
    }

    #[test]
    fn a_deciding_event_without_an_address_takes_the_persons_newest_hash() {
        let mut grant = rec("a", "ConsentGranted", 1);
        grant.email_sha256 = Some("11".repeat(32));
        grant.google_email_sha256 = Some("22".repeat(32));
        let mut withdrawal = rec("a", "ConsentWithdrawn", 2);
        withdrawal.email_sha256 = None;
        let mut never = rec("b", "ConsentWithdrawn", 2);
        never.email_sha256 = None;
        let list = suppression_list(&[grant, withdrawal.clone(), never]);
        assert_eq!(
            list[0].event_id, withdrawal.event_id,
            "still the deciding event"
        );
        assert_eq!(list[0].email_sha256, Some("11".repeat(32)));
        assert_eq!(list[0].google_email_sha256, Some("22".repeat(32)));
        assert_eq!(list[1].email_sha256, None, "no address ever: none");
    }
}
