//! The delivery driver every sink uses. A sink turns items into requests (within the API's
//! limits) and maps an answer to one outcome per part of a request; the driver sends the requests
//! in the sink's order, holds back later requests about a person whose earlier one failed, stops a
//! lane (an account, list or partner) once a whole request to it was unavailable, unanswered or
//! refused (unless the sink says the lane goes on), and folds the outcomes of every part back into
//! one outcome per item.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::{join_all, BoxFuture, Outcome};

/// One part of a request: the items it stands for (usually one; more when items share an
/// identifier) and the person it is about.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub items: &'a [usize],
    /// The key of the person for hold-back: after a part about this person is not done, the
    /// person's later parts in this delivery are held back, since the runtime's retry of the
    /// earlier one could otherwise land after them and undo the newer decision. `None`: never held.
    pub person: Option<&'a str>,
}

/// A request a sink has built, not yet sent.
pub trait Request: Send + Sync {
    /// The lane it goes to (an index the sink chooses: account, list or partner). Once a lane
    /// stops, its later requests in this delivery are not sent.
    fn lane(&self) -> usize;

    /// Its parts, in the order the answer's outcomes come in.
    fn parts(&self) -> Vec<Part<'_>>;

    /// Keeps the parts for which `keep` (given the part's position) says yes; `false` when none
    /// is left. Called before sending, to take out parts that are held back.
    fn retain(&mut self, keep: &mut dyn FnMut(usize) -> bool) -> bool;
}

/// A request of one part: one item, to one lane, about one person (a newsletter call, a partner
/// message).
#[derive(Debug)]
pub struct Single<C> {
    pub lane: usize,
    pub item: usize,
    pub person: String,
    pub call: C,
}

impl<C: Send + Sync> Request for Single<C> {
    fn lane(&self) -> usize {
        self.lane
    }

    fn parts(&self) -> Vec<Part<'_>> {
        vec![Part {
            items: std::slice::from_ref(&self.item),
            person: Some(&self.person),
        }]
    }

    fn retain(&mut self, keep: &mut dyn FnMut(usize) -> bool) -> bool {
        keep(0)
    }
}

/// What sends a sink's requests and maps the answers.
pub trait Transport: Sync {
    type Request: Request;

    /// How outcome reasons name the downstream of `lane` ("HubSpot", "the partner").
    fn who(&self, lane: usize) -> &str;

    /// Sends `request` and maps the downstream's answer (or the failure to get one).
    fn send<'a>(&'a self, request: &'a Self::Request) -> BoxFuture<'a, Answer>;
}

/// The downstream's answer to one request, as one outcome per part.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    outcomes: Vec<Outcome>,
    /// The request failed or succeeded as a whole (an HTTP status, a transport failure), not part
    /// by part.
    whole: bool,
    stop: Stop,
}

#[derive(Debug, Clone, PartialEq)]
enum Stop {
    /// As the outcomes say: a whole request unavailable, unanswered or refused, or any part
    /// refused, stops the lane.
    ByOutcome,
    /// The lane goes on whatever the outcomes say.
    Never,
    /// The lane stops; what is left gets this outcome.
    With(Outcome),
}

impl Answer {
    /// The downstream answered the request as a whole: every one of its `parts` gets `outcome`.
    pub fn whole(outcome: Outcome, parts: usize) -> Answer {
        Answer {
            outcomes: vec![outcome; parts],
            whole: true,
            stop: Stop::ByOutcome,
        }
    }

    /// The downstream answered part by part, in request order.
    pub fn per_part(outcomes: Vec<Outcome>) -> Answer {
        Answer {
            outcomes,
            whole: false,
            stop: Stop::ByOutcome,
        }
    }

    /// The whole request was applied.
    pub fn applied(parts: usize) -> Answer {
        Answer::whole(Outcome::Applied, parts)
    }

    /// The lane goes on whatever this answer's outcomes say: the destination has paused itself for
    /// as long as the answer asked and holds the next request until then (HubSpot's burst
    /// window), or the failure was this request's alone (a message that could not be built).
    pub fn lane_goes_on(mut self) -> Answer {
        self.stop = Stop::Never;
        self
    }

    /// Nothing more goes to this lane in this delivery (a spent daily limit, say, under a
    /// successful answer); what is left gets `not_sent`.
    pub fn stop_lane(mut self, not_sent: Outcome) -> Answer {
        self.stop = Stop::With(not_sent);
        self
    }

    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    pub fn into_outcomes(self) -> Vec<Outcome> {
        self.outcomes
    }

    /// Whether this answer stops its lane for the rest of the delivery.
    pub fn stops_lane(&self) -> bool {
        self.stops_with("").is_some()
    }

    /// The outcome of the lane's later requests in this delivery, if this answer stops it.
    fn stops_with(&self, who: &str) -> Option<Outcome> {
        match &self.stop {
            Stop::Never => None,
            Stop::With(outcome) => Some(outcome.clone()),
            Stop::ByOutcome if self.whole => self.outcomes.first()?.unsent_after(who),
            Stop::ByOutcome => self
                .outcomes
                .iter()
                .find(|o| matches!(o, Outcome::Refused { .. }))?
                .unsent_after(who),
        }
    }

    /// A stopped lane's answer: `outcome` for every part, and nothing more to stop.
    fn not_sent(outcome: Outcome, parts: usize) -> Answer {
        Answer::whole(outcome, parts).lane_goes_on()
    }
}

/// Delivers `chains` of requests and returns one outcome per item. Chains run side by side,
/// the requests of one chain one after the other; a sink with one writer per account gives one
/// chain. `settled` holds, per item, what the sink knew without asking (folded with the answers
/// by [`Outcome::worst`]); an item no request covered and nothing settled is retryable.
pub async fn deliver<T: Transport>(
    transport: &T,
    settled: Vec<Option<Outcome>>,
    chains: Vec<Vec<T::Request>>,
) -> Vec<Outcome> {
    let state = Mutex::new(State {
        outcomes: settled,
        stopped: HashMap::new(),
        stalled: HashSet::new(),
    });
    join_all(
        chains
            .into_iter()
            .map(|chain| run_chain(transport, chain, &state))
            .collect(),
    )
    .await;
    let state = state.into_inner().unwrap_or_else(|e| e.into_inner());
    state
        .outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::retryable("no request covered this item")))
        .collect()
}

/// What one delivery has learnt so far, shared by its chains.
struct State {
    outcomes: Vec<Option<Outcome>>,
    /// Lanes not to be asked again, with the outcome their remaining parts get instead.
    stopped: HashMap<usize, Outcome>,
    /// Persons with a part that is not done.
    stalled: HashSet<String>,
}

impl State {
    fn settle(&mut self, items: &[usize], outcome: &Outcome) {
        for &item in items {
            merge(&mut self.outcomes[item], outcome.clone());
        }
    }
}

async fn run_chain<T: Transport>(transport: &T, chain: Vec<T::Request>, state: &Mutex<State>) {
    for mut request in chain {
        let stopped = {
            let mut s = lock(state);
            let mut held = Vec::new();
            for part in request.parts() {
                let stalled = part.person.is_some_and(|person| s.stalled.contains(person));
                if stalled {
                    s.settle(
                        part.items,
                        &Outcome::retryable(
                            "held back: an earlier change of this person failed in this delivery",
                        ),
                    );
                }
                held.push(stalled);
            }
            // A `retain` that asks about more positions than `parts` gave keeps them.
            let held_at = |at: usize| held.get(at).copied().unwrap_or(false);
            if !request.retain(&mut |at| !held_at(at)) {
                continue;
            }
            s.stopped.get(&request.lane()).cloned()
        };
        let parts = request.parts().len();
        let answer = match stopped {
            Some(outcome) => Answer::not_sent(outcome, parts),
            None => transport.send(&request).await,
        };
        let mut s = lock(state);
        if let Some(not_sent) = answer.stops_with(transport.who(request.lane())) {
            s.stopped.entry(request.lane()).or_insert(not_sent);
        }
        for (part, outcome) in request.parts().into_iter().zip(answer.outcomes) {
            if !outcome.is_done() {
                if let Some(person) = part.person {
                    s.stalled.insert(person.to_owned());
                }
            }
            s.settle(part.items, &outcome);
        }
    }
}

/// Keeps the elements of `parts` for which `keep` (given the position) says yes; `false` when none
/// is left. For [`Request::retain`] of a request that is a list of parts.
pub fn retain_positions<T>(parts: &mut Vec<T>, keep: &mut dyn FnMut(usize) -> bool) -> bool {
    let mut at = 0;
    parts.retain(|_| {
        at += 1;
        keep(at - 1)
    });
    !parts.is_empty()
}

/// Folds one more outcome into an item's outcome.
pub fn merge(slot: &mut Option<Outcome>, outcome: Outcome) {
    *slot = Some(match slot.take() {
        Some(so_far) => so_far.worst(outcome),
        None => outcome,
    });
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Nothing panics while holding it; a poisoned lock still holds consistent data.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A request of parts (item, person) to one lane.
    struct Req {
        lane: usize,
        parts: Vec<([usize; 1], Option<String>)>,
    }

    impl Request for Req {
        fn lane(&self) -> usize {
            self.lane
        }
        fn parts(&self) -> Vec<Part<'_>> {
            self.parts
                .iter()
                .map(|(items, person)| Part {
                    items,
                    person: person.as_deref(),
                })
                .collect()
        }
        fn retain(&mut self, keep: &mut dyn FnMut(usize) -> bool) -> bool {
            retain_positions(&mut self.parts, keep)
        }
    }

    /// Answers the n-th request it is sent with `answers[n]`.
    struct Scripted {
        answers: Vec<Answer>,
        sent: AtomicUsize,
        sizes: Mutex<Vec<usize>>,
    }

    impl Transport for Scripted {
        type Request = Req;
        fn who(&self, _lane: usize) -> &str {
            "the fake"
        }
        fn send<'a>(&'a self, request: &'a Req) -> BoxFuture<'a, Answer> {
            let n = self.sent.fetch_add(1, Ordering::SeqCst);
            self.sizes.lock().unwrap().push(request.parts.len());
            let answer = self.answers[n].clone();
            Box::pin(async move { answer })
        }
    }

    fn scripted(answers: Vec<Answer>) -> Scripted {
        Scripted {
            answers,
            sent: AtomicUsize::new(0),
            sizes: Mutex::new(Vec::new()),
        }
    }

    fn req(lane: usize, parts: &[(usize, &str)]) -> Req {
        Req {
            lane,
            parts: parts
                .iter()
                .map(|(item, person)| ([*item], Some(person.to_string())))
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_person_whose_change_failed_is_held_back_and_the_rest_of_the_request_goes() {
        let fake = scripted(vec![
            Answer::per_part(vec![Outcome::retryable("5xx"), Outcome::Applied]),
            Answer::applied(1),
        ]);
        let chain = vec![req(0, &[(0, "a"), (1, "b")]), req(0, &[(2, "a"), (3, "c")])];
        let outcomes = deliver(&fake, vec![None; 4], vec![chain]).await;
        assert_eq!(outcomes[1], Outcome::Applied);
        assert!(outcomes[2].reason().unwrap().starts_with("held back"));
        assert_eq!(outcomes[3], Outcome::Applied);
        assert_eq!(
            *fake.sizes.lock().unwrap(),
            [2, 1],
            "a taken out of the second"
        );
    }

    #[tokio::test]
    async fn a_lane_that_is_unavailable_as_a_whole_gets_no_more_requests_others_go_on() {
        let fake = scripted(vec![
            Answer::whole(Outcome::unavailable("429"), 1),
            Answer::applied(1),
        ]);
        let chain = vec![
            req(0, &[(0, "a")]),
            req(0, &[(1, "b")]),
            req(1, &[(2, "c")]),
        ];
        let outcomes = deliver(&fake, vec![None; 3], vec![chain]).await;
        assert!(matches!(outcomes[1], Outcome::Unavailable { .. }));
        assert!(outcomes[1].reason().unwrap().starts_with("not sent"));
        assert_eq!(outcomes[2], Outcome::Applied);
        assert_eq!(fake.sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_part_unavailable_on_its_own_does_not_stop_the_lane_a_refused_one_does() {
        let fake = scripted(vec![
            Answer::per_part(vec![Outcome::unavailable("element 429")]),
            Answer::per_part(vec![Outcome::Refused {
                reason: "403".into(),
            }]),
        ]);
        let chain = vec![
            req(0, &[(0, "a")]),
            req(0, &[(1, "b")]),
            req(0, &[(2, "c")]),
        ];
        let outcomes = deliver(&fake, vec![None; 3], vec![chain]).await;
        assert!(matches!(outcomes[2], Outcome::Refused { .. }));
        assert!(outcomes[2].reason().unwrap().starts_with("not sent"));
        assert_eq!(fake.sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sink_decides_when_a_lane_goes_on_or_stops_after_success() {
        let daily = Outcome::unavailable("not sent: daily limit");
        let fake = scripted(vec![
            Answer::whole(Outcome::unavailable("burst 429"), 1).lane_goes_on(),
            Answer::applied(1).stop_lane(daily.clone()),
        ]);
        let chain = vec![
            req(0, &[(0, "a")]),
            req(0, &[(1, "b")]),
            req(0, &[(2, "c")]),
        ];
        let outcomes = deliver(&fake, vec![None; 3], vec![chain]).await;
        assert_eq!(outcomes[1], Outcome::Applied);
        assert_eq!(outcomes[2], daily);
    }

    #[tokio::test]
    async fn settled_items_fold_with_answers_and_uncovered_ones_are_retryable() {
        let fake = scripted(vec![Answer::applied(1)]);
        let settled = vec![Some(Outcome::permanent("bad phone")), None, None];
        let outcomes = deliver(&fake, settled, vec![vec![req(0, &[(0, "a")])]]).await;
        assert!(matches!(outcomes[0], Outcome::Permanent { .. }));
        assert_eq!(outcomes[1].class(), crate::OutcomeClass::Retryable);
        assert_eq!(outcomes[2].class(), crate::OutcomeClass::Retryable);
    }
}
