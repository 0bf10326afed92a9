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

/// One unit of work for a sink: apply `action` for `target` of `event`'s subject.
#[derive(Debug, Clone)]
pub struct SinkItem {
    pub event: Arc<ConsentEvent>,
    pub action: Action,
    pub target: Target,
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
