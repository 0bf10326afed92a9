//! Per-subject exclusion inside one engine. Batches of a sink run side by side (from the source
//! topics and from the retry topic, and several of each), but the items of one person are claimed,
//! sent and recorded by one of them at a time: requests about a person then reach the destination
//! in the order their claims were decided, which is what the version rule relies on (a stale grant
//! still on the wire when a newer withdrawal is sent could land after it).
//!
//! A batch waiting for a person waits while the holder is merely busy (a slow ledger or
//! downstream under a backlog; the engine bounds that wait), and gives up at once when the holder
//! says it is retrying a failure for that person: waiting then would tie this batch to the
//! other's inline budget.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct SubjectLocks {
    /// Held subjects; `true` once the holder retries a failure for the subject.
    held: Mutex<HashMap<String, bool>>,
    /// Fires on every release and every subject marked failing.
    changed: Notify,
}

/// Subjects held by one delivery; released one by one as their items finish, the rest on drop.
pub(crate) struct Held {
    locks: Arc<SubjectLocks>,
    subjects: BTreeSet<String>,
}

impl SubjectLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.held.lock().expect("subject locks poisoned")
    }

    /// Takes those of `subjects` that are free now; returns them held, and the others.
    pub fn try_acquire(self: &Arc<Self>, subjects: BTreeSet<String>) -> (Held, BTreeSet<String>) {
        let mut held = self.held();
        let (free, busy): (BTreeSet<String>, BTreeSet<String>) =
            subjects.into_iter().partition(|s| !held.contains_key(s));
        held.extend(free.iter().map(|s| (s.clone(), false)));
        (
            Held {
                locks: self.clone(),
                subjects: free,
            },
            busy,
        )
    }

    /// Waits until `subject` is free and takes it; `None` as soon as its holder retries a
    /// failure for it.
    pub async fn acquire_unless_failing(self: &Arc<Self>, subject: String) -> Option<Held> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between is not missed.
            changed.as_mut().enable();
            {
                let mut held = self.held();
                match held.get(&subject) {
                    None => {
                        held.insert(subject.clone(), false);
                        return Some(Held {
                            locks: self.clone(),
                            subjects: BTreeSet::from([subject]),
                        });
                    }
                    Some(true) => return None,
                    Some(false) => {}
                }
            }
            changed.await;
        }
    }

    fn release(&self, subjects: impl IntoIterator<Item = String>) {
        let mut held = self.held();
        for s in subjects {
            held.remove(&s);
        }
        drop(held);
        self.changed.notify_waiters();
    }
}

impl Held {
    /// Says that the holder retries a failure for these of its subjects: batches waiting for
    /// them stop waiting.
    pub fn mark_failing<'a>(&self, subjects: impl IntoIterator<Item = &'a String>) {
        let mut held = self.locks.held();
        let mut any = false;
        for s in subjects {
            if self.subjects.contains(s) {
                if let Some(failing) = held.get_mut(s) {
                    any |= !*failing;
                    *failing = true;
                }
            }
        }
        drop(held);
        if any {
            self.locks.changed.notify_waiters();
        }
    }

    /// Takes over the subjects `other` holds, still held.
    pub fn absorb(&mut self, mut other: Held) {
        self.subjects.append(&mut other.subjects);
    }

    /// Releases the subjects that are not in `still_pending`.
    pub fn keep_only(&mut self, still_pending: &BTreeSet<String>) {
        let done: Vec<String> = self
            .subjects
            .iter()
            .filter(|s| !still_pending.contains(*s))
            .cloned()
            .collect();
        if done.is_empty() {
            return;
        }
        for s in &done {
            self.subjects.remove(s);
        }
        self.locks.release(done);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.subjects.is_empty() {
            self.locks.release(std::mem::take(&mut self.subjects));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_subject_waits_and_others_go_at_once() {
        let locks = Arc::new(SubjectLocks::default());
        let (mut first, busy) = locks.try_acquire(set(&["a", "b"]));
        assert!(busy.is_empty());
        let (second, busy) = locks.try_acquire(set(&["b", "c"]));
        assert_eq!(busy, set(&["b"]), "c is free, b is not");
        drop(second);

        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire_unless_failing("b".to_owned()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "b is still held");
        // a is done, b is still pending: b stays held.
        first.keep_only(&set(&["b"]));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        assert!(
            locks.try_acquire(set(&["a"])).1.is_empty(),
            "a was released"
        );
        first.keep_only(&BTreeSet::new());
        let held = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("b is released")
            .unwrap()
            .expect("b was not failing");
        assert_eq!(held.subjects, set(&["b"]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_once_the_holder_retries_a_failure_for_its_subject() {
        let locks = Arc::new(SubjectLocks::default());
        let (first, _) = locks.try_acquire(set(&["a", "b"]));
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire_unless_failing("b".to_owned()).await })
        };
        // Busy for a long time, but not failing: the waiter waits.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished());
        first.mark_failing(&set(&["a"]));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "a failing is no reason to stop waiting for b"
        );
        first.mark_failing(&set(&["b"]));
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter gives up")
            .unwrap();
        assert!(got.is_none());
        // Released, the subject is free again, and no longer failing.
        drop(first);
        assert!(locks.acquire_unless_failing("b".to_owned()).await.is_some());
    }
}
