use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use relay_events::{Action, ConsentEvent};

use crate::{Destination, Outcome};

/// A boxed future, so that the runtime can hold sinks of different types side by side.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one delivery is about: a purpose, or the whole subject (global unsubscribe, erasure).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Purpose(String),
    All,
}

impl Target {
    /// The ledger's spelling: the purpose name, or `*` for the whole subject.
    pub fn key(&self) -> &str {
        match self {
            Target::Purpose(p) => p,
            Target::All => "*",
        }
    }
}

/// What one delivery asks of a downstream: the legal cases only. Validation rules out a grant of
/// everything (a grant names its purposes) and an erasure of some purposes (it covers all).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The person consents to the purpose.
    Grant(String),
    /// The person withdraws the purpose (a withdrawal, or an unsubscribe naming purposes).
    Withdraw(String),
    /// A global unsubscribe: every purpose, and every list.
    WithdrawAll,
    /// The person is to be erased everywhere.
    Erase,
}

impl Change {
    /// The change `action` makes for `target`; `None` for a combination validation rules out.
    pub fn new(action: Action, target: Target) -> Option<Change> {
        match (action, target) {
            (Action::Grant, Target::Purpose(p)) => Some(Change::Grant(p)),
            (Action::Withdraw, Target::Purpose(p)) => Some(Change::Withdraw(p)),
            (Action::Withdraw, Target::All) => Some(Change::WithdrawAll),
            (Action::Erase, Target::All) => Some(Change::Erase),
            (Action::Grant, Target::All) | (Action::Erase, Target::Purpose(_)) => None,
        }
    }

    pub fn action(&self) -> Action {
        match self {
            Change::Grant(_) => Action::Grant,
            Change::Withdraw(_) | Change::WithdrawAll => Action::Withdraw,
            Change::Erase => Action::Erase,
        }
    }

    pub fn target(&self) -> Target {
        match self {
            Change::Grant(p) | Change::Withdraw(p) => Target::Purpose(p.clone()),
            Change::WithdrawAll | Change::Erase => Target::All,
        }
    }

    /// Whether `self` and `other` are about the same target (without building either `Target`).
    pub fn same_target(&self, other: &Change) -> bool {
        match (self, other) {
            (Change::Grant(a) | Change::Withdraw(a), Change::Grant(b) | Change::Withdraw(b)) => {
                a == b
            }
            (Change::WithdrawAll | Change::Erase, Change::WithdrawAll | Change::Erase) => true,
            _ => false,
        }
    }

    /// The ledger's spelling of the target: the purpose name, or `*` for the whole subject.
    pub fn target_key(&self) -> &str {
        match self {
            Change::Grant(p) | Change::Withdraw(p) => p,
            Change::WithdrawAll | Change::Erase => "*",
        }
    }
}

/// One unit of work for a sink: make `change` for `event`'s subject.
#[derive(Debug, Clone)]
pub struct SinkItem {
    pub event: Arc<ConsentEvent>,
    pub change: Change,
}

impl SinkItem {
    pub fn action(&self) -> Action {
        self.change.action()
    }

    pub fn target(&self) -> Target {
        self.change.target()
    }
}

/// A downstream. A sink builds requests and maps the responses to one outcome per part, and hands
/// both to [`crate::driver::deliver`], which sends them in order, holds back and stops lanes, and
/// folds the outcomes per item. It never sleeps, retries, batches across calls, or sees Kafka, the
/// ledger or offsets: the runtime owns all of that.
pub trait Sink: Send + Sync + 'static {
    /// The sink's name in config, consumer group (`consent-relay.<name>`), ledger and logs.
    fn name(&self) -> &str;

    /// Whether items for this sink are invalid without an email address.
    fn requires_email(&self) -> bool;

    /// Delivers `items` and returns exactly one outcome per item, in the same order.
    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>>;

    /// The sink's HTTP fronts, so the runtime can export their statistics.
    fn destinations(&self) -> Vec<&Destination> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_changes_validation_allows_exist() {
        let purpose = || Target::Purpose("ads".into());
        assert_eq!(Change::new(Action::Grant, Target::All), None);
        assert!(!Change::Grant("ads".into()).same_target(&Change::WithdrawAll));
        assert!(Change::Grant("ads".into()).same_target(&Change::Withdraw("ads".into())));
        assert_eq!(Change::new(Action::Erase, purpose()), None);
        for (action, target) in [
            (Action::Grant, purpose()),
            (Action::Withdraw, purpose()),
            (Action::Withdraw, Target::All),
            (Action::Erase, Target::All),
        ] {
            let change = Change::new(action, target.clone()).unwrap();
            assert_eq!((change.action(), change.target()), (action, target.clone()));
            assert_eq!(change.target_key(), target.key());
            assert!(change.same_target(&Change::new(action, target).unwrap()));
        }
    }
}
