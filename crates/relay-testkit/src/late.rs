//! Requests a downstream applies after the client gave up on them. A real API that is slow (a
//! queue behind its load balancer, a database lock) keeps working on a request whose client has
//! timed out or disconnected, and applies it seconds later: after the client's retry, and after a
//! newer request for the same person. The fakes hold matching requests that long and then apply
//! them, in a task of their own so that the client going away does not cancel them.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The rules of one fake, shared by its handlers; cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct LateApply {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default, Debug)]
struct Inner {
    rules: Vec<Rule>,
    held: usize,
    landed: usize,
}

#[derive(Debug)]
struct Rule {
    method: Method,
    needle: String,
    hold: Duration,
    remaining: usize,
}

impl LateApply {
    /// Holds the next `times` requests with `method` whose body contains `needle` for `hold`
    /// before applying them (and only then answering, to a client that may be gone).
    pub fn hold(&self, method: Method, needle: &str, hold: Duration, times: usize) {
        self.lock().rules.push(Rule {
            method,
            needle: needle.to_owned(),
            hold,
            remaining: times,
        });
    }

    /// Requests held so far.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Held requests applied so far.
    pub fn landed(&self) -> usize {
        self.lock().landed
    }

    /// The hold for a request, if a rule takes it (and counts it).
    pub(crate) fn take(&self, method: &Method, body: &[u8]) -> Option<Duration> {
        let mut inner = self.lock();
        let text = String::from_utf8_lossy(body);
        let rule = inner
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && r.method == method && text.contains(&r.needle))?;
        rule.remaining -= 1;
        let hold = rule.hold;
        inner.held += 1;
        Some(hold)
    }

    /// Runs `apply` once `hold` has passed, whether or not the client is still there.
    pub(crate) async fn apply_late<F>(&self, hold: Duration, apply: F) -> Response
    where
        F: Future<Output = Response> + Send + 'static,
    {
        let this = self.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let response = apply.await;
            this.lock().landed += 1;
            response
        });
        task.await
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
