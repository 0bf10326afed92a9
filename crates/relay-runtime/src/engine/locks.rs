//! Per-subject exclusion inside one engine. Batches of a sink run side by side (from the source
//! topics and from the retry topic, and several of each), but the items of one person are claimed,
//! sent and recorded by one of them at a time: requests about a person then reach the destination
//! in the order their claims were decided, which is what the version rule relies on (a stale grant
//! still on the wire when a newer withdrawal is sent could land after it).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct SubjectLocks {
    held: Mutex<HashSet<String>>,
    released: Notify,
}

/// Subjects held by one delivery; released one by one as their items finish, the rest on drop.
pub(crate) struct Held {
    locks: Arc<SubjectLocks>,
    subjects: BTreeSet<String>,
}

impl SubjectLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().expect("subject locks poisoned")
    }

    /// Takes those of `subjects` that are free now; returns them held, and the others.
    pub fn try_acquire(self: &Arc<Self>, subjects: BTreeSet<String>) -> (Held, BTreeSet<String>) {
        let mut held = self.held();
        let (free, busy): (BTreeSet<String>, BTreeSet<String>) =
            subjects.into_iter().partition(|s| !held.contains(s));
        held.extend(free.iter().cloned());
        (
            Held {
                locks: self.clone(),
                subjects: free,
            },
            busy,
        )
    }

    /// Waits until `subject` is free and takes it.
    pub async fn acquire(self: &Arc<Self>, subject: String) -> Held {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release in between is not missed.
            released.as_mut().enable();
            {
                let mut held = self.held();
                if held.insert(subject.clone()) {
                    return Held {
                        locks: self.clone(),
                        subjects: BTreeSet::from([subject]),
                    };
                }
            }
            released.await;
        }
    }

    fn release(&self, subjects: impl IntoIterator<Item = String>) {
        let mut held = self.held();
        for s in subjects {
            held.remove(&s);
        }
        drop(held);
        self.released.notify_waiters();
    }
}

impl Held {
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
            tokio::spawn(async move { locks.acquire("b".to_owned()).await })
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
            .unwrap();
        assert_eq!(held.subjects, set(&["b"]));
    }
}
