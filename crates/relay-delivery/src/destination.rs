//! One downstream account as the sinks see it: the HTTP client with its timeout, a rolling-window
//! rate limiter and an optional daily budget that every request (retries included) draws from,
//! bounded concurrency, and the `Retry-After` gate that holds back every request to the account.
//! Waiting for a permit is the delivery layer's job; a sink only builds requests and reads replies.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::{classify_transport, parse_retry_after, Outcome};

/// Limits of one destination account. Every field is optional in the TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Requests allowed per rolling window (HubSpot: 100 or 190 per 10 s); unset = no limit.
    #[serde(default)]
    pub max_requests_per_window: Option<u32>,
    /// Length of the rolling window, in milliseconds.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Requests allowed per UTC day; unset = no limit. When it is spent, deliveries come back
    /// retryable with the time until midnight UTC.
    #[serde(default)]
    pub daily_budget: Option<u32>,
    /// Requests in flight at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Timeout of one request, connect to last byte, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_window_ms() -> u64 {
    10_000
}
fn default_max_concurrency() -> usize {
    4
}
fn default_request_timeout_ms() -> u64 {
    10_000
}

impl Default for DestinationConfig {
    fn default() -> Self {
        DestinationConfig {
            max_requests_per_window: None,
            window_ms: default_window_ms(),
            daily_budget: None,
            max_concurrency: default_max_concurrency(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

impl DestinationConfig {
    /// Reads a `limits` table as changes to a destination's own `defaults`, key by key: the one
    /// meaning of `limits` in every sink. Read straight into `DestinationConfig`, a table would
    /// fill its missing keys with the generic defaults instead, and one holding only
    /// `request_timeout_ms` would silently drop the vendor's rate limit.
    pub fn deserialize_over<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
        defaults: DestinationConfig,
    ) -> Result<DestinationConfig, D::Error> {
        /// The keys of [`DestinationConfig`], each optional; their meaning is documented there.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Overrides {
            max_requests_per_window: Option<u32>,
            window_ms: Option<u64>,
            daily_budget: Option<u32>,
            max_concurrency: Option<usize>,
            request_timeout_ms: Option<u64>,
        }
        let o = Overrides::deserialize(deserializer)?;
        // No `..defaults`: a key added to DestinationConfig must be added to Overrides too.
        Ok(DestinationConfig {
            max_requests_per_window: o
                .max_requests_per_window
                .or(defaults.max_requests_per_window),
            window_ms: o.window_ms.unwrap_or(defaults.window_ms),
            daily_budget: o.daily_budget.or(defaults.daily_budget),
            max_concurrency: o.max_concurrency.unwrap_or(defaults.max_concurrency),
            request_timeout_ms: o.request_timeout_ms.unwrap_or(defaults.request_timeout_ms),
        })
    }

    /// Problems with the values, each naming its key relative to the table.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_requests_per_window == Some(0) {
            p.push(
                "max_requests_per_window: must be at least 1 (leave it out for no limit)".into(),
            );
        }
        if self.window_ms == 0 {
            p.push("window_ms: must be at least 1".into());
        }
        if self.daily_budget == Some(0) {
            p.push("daily_budget: must be at least 1 (leave it out for no limit)".into());
        }
        if self.max_concurrency == 0 {
            p.push("max_concurrency: must be at least 1".into());
        }
        if self.request_timeout_ms == 0 {
            p.push("request_timeout_ms: must be at least 1".into());
        }
        p
    }
}

/// An HTTP answer, whatever its status; the sink maps it to outcomes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Upper bounds of the latency histograms, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS`] (cumulative).
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, seconds: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (slot, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= *bound {
                *slot += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// Adds `other`'s observations to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (slot, n) in self.buckets.iter_mut().zip(&other.buckets) {
            *slot += n;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Counters a destination keeps for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct DestinationStats {
    pub requests: u64,
    pub rate_limited_replies: u64,
    pub rate_limit_wait: Duration,
}

#[derive(Debug)]
struct Limiter {
    /// Send times within the current window, oldest first.
    sent: VecDeque<Instant>,
    day: u64,
    sent_today: u32,
    paused_until: Option<Instant>,
    stats: DestinationStats,
    /// Request latency by status class: `2xx`, `3xx`, `4xx`, `5xx`, `transport`.
    latency: std::collections::BTreeMap<&'static str, LatencyHistogram>,
}

#[derive(Debug)]
pub struct Destination {
    http: reqwest::Client,
    config: DestinationConfig,
    limiter: Mutex<Limiter>,
    in_flight: Semaphore,
}

enum Permit {
    /// The request may go; its slot in the window is held from this instant until it settles.
    Granted(Instant),
    Wait(Duration),
    DailyBudgetSpent(Duration),
}

impl Destination {
    pub fn new(config: DestinationConfig) -> Result<Destination, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            // A followed 301/302 turns the POST into a bodiless GET, whose 2xx would count as the
            // change applied; an API that moved is an operator's matter (a 3xx is not success).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Destination {
            http,
            in_flight: Semaphore::new(config.max_concurrency.max(1)),
            limiter: Mutex::new(Limiter {
                sent: VecDeque::new(),
                day: utc_day(),
                sent_today: 0,
                paused_until: None,
                stats: DestinationStats::default(),
                latency: Default::default(),
            }),
            config,
        })
    }

    /// How long a request may take before the client gives up on it.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// The client to build requests with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn stats(&self) -> DestinationStats {
        self.lock().stats
    }

    /// Request latency so far, by status class.
    pub fn latency(&self) -> Vec<(&'static str, LatencyHistogram)> {
        self.lock()
            .latency
            .iter()
            .map(|(class, h)| (*class, h.clone()))
            .collect()
    }

    fn record_latency(&self, class: &'static str, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.lock()
            .latency
            .entry(class)
            .or_default()
            .observe(seconds);
    }

    /// Holds back every request to this destination for `duration`, e.g. when a vendor signals a
    /// rate limit in a response body or in its own headers.
    pub fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut l = self.lock();
        l.paused_until = Some(l.paused_until.map_or(until, |u| u.max(until)));
    }

    /// Sends `request` once the destination allows it: after any `Retry-After` pause, within the
    /// rolling window, the daily budget and the concurrency bound. `Err` is the outcome of a request
    /// that got no HTTP answer (transport failure) or was not sent (daily budget spent). A reply
    /// with `Retry-After` pauses the whole destination for that long.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, Outcome> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let slot = loop {
            match self.permit() {
                Permit::Granted(slot) => break slot,
                Permit::Wait(d) => {
                    self.lock().stats.rate_limit_wait += d;
                    tokio::time::sleep(d).await;
                }
                Permit::DailyBudgetSpent(until_midnight) => {
                    return Err(Outcome::Unavailable {
                        after: Some(until_midnight),
                        reason: "daily request budget of this destination is spent".to_owned(),
                    })
                }
            }
        };
        let started = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.settle(slot);
                self.record_latency("transport", started);
                return Err(classify_transport(&e));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                self.settle(slot);
                self.record_latency("transport", started);
                return Err(classify_transport(&e));
            }
        };
        self.settle(slot);
        self.record_latency(
            match status {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            started,
        );
        let reply = Reply {
            status,
            headers,
            body,
        };
        if status == 429 {
            self.lock().stats.rate_limited_replies += 1;
        }
        if let Some(after) = reply
            .header("retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
        {
            if status == 429 || status >= 500 {
                self.pause_for(after);
            }
        }
        Ok(reply)
    }

    /// Takes a slot in the window and the day, or says how long to wait.
    fn permit(&self) -> Permit {
        let now = Instant::now();
        let mut l = self.lock();
        if let Some(until) = l.paused_until {
            if until > now {
                return Permit::Wait(until - now);
            }
            l.paused_until = None;
        }
        let today = utc_day();
        if today != l.day {
            l.day = today;
            l.sent_today = 0;
        }
        if let Some(budget) = self.config.daily_budget {
            if l.sent_today >= budget {
                return Permit::DailyBudgetSpent(until_utc_midnight());
            }
        }
        if let Some(max) = self.config.max_requests_per_window {
            let window = Duration::from_millis(self.config.window_ms);
            while l
                .sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                l.sent.pop_front();
            }
            if l.sent.len() >= max as usize {
                let oldest = *l.sent.front().expect("the window is full, so not empty");
                return Permit::Wait(window - now.duration_since(oldest));
            }
            l.sent.push_back(now);
        }
        l.sent_today += 1;
        l.stats.requests += 1;
        Permit::Granted(now)
    }

    /// Moves a request's slot from when it was permitted to when its answer came back. The
    /// downstream counts a request when it arrives, which may be later than we sent it (a new
    /// connection, a slow network): counting from the answer can only be late, never early, so
    /// our window never admits a request the downstream's window would refuse.
    fn settle(&self, permitted_at: Instant) {
        if self.config.max_requests_per_window.is_none() {
            return;
        }
        let now = Instant::now();
        let mut l = self.lock();
        if let Some(slot) = l.sent.iter_mut().find(|t| **t == permitted_at) {
            *slot = now;
        }
        l.sent.make_contiguous().sort_unstable();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().expect("limiter lock poisoned")
    }
}

fn utc_day() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400
}

fn until_utc_midnight() -> Duration {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs(86_400 - secs % 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redirect_is_an_answer_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let mut requests = 0;
            // One connection per request; a followed redirect would come back for /elsewhere.
            while let Ok(Ok((mut socket, _))) =
                tokio::time::timeout(Duration::from_millis(300), listener.accept()).await
            {
                requests += 1;
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://{addr}/elsewhere\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
            requests
        });
        let d = Destination::new(DestinationConfig::default()).unwrap();
        let reply = d
            .send(d.http().post(format!("http://{addr}/members")).body("{}"))
            .await
            .unwrap();
        assert_eq!(reply.status, 302);
        assert_eq!(served.await.unwrap(), 1, "the redirect was not followed");
    }

    fn limited(max: u32, window_ms: u64) -> Destination {
        Destination::new(DestinationConfig {
            max_requests_per_window: Some(max),
            window_ms,
            ..DestinationConfig::default()
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_admits_max_then_waits_for_the_oldest_to_expire() {
        let d = limited(3, 1_000);
        for _ in 0..3 {
            assert!(matches!(d.permit(), Permit::Granted(_)));
        }
        match d.permit() {
            Permit::Wait(w) => assert_eq!(w, Duration::from_millis(1_000)),
            _ => panic!("the fourth request in the window must wait"),
        }
        tokio::time::advance(Duration::from_millis(400)).await;
        match d.permit() {
            Permit::Wait(w) => assert_eq!(w, Duration::from_millis(600)),
            _ => panic!("still within the window"),
        }
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(matches!(d.permit(), Permit::Granted(_)));
        assert_eq!(d.stats().requests, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_counts_from_when_the_answer_came_back() {
        let d = limited(1, 1_000);
        let Permit::Granted(slot) = d.permit() else {
            panic!("the first request may go")
        };
        // The request took 300 ms to be answered: the window runs from then.
        tokio::time::advance(Duration::from_millis(300)).await;
        d.settle(slot);
        // 1 200 ms after the permit, but only 900 ms after the answer: wait the remaining 100 ms.
        tokio::time::advance(Duration::from_millis(900)).await;
        match d.permit() {
            Permit::Wait(w) => assert_eq!(w, Duration::from_millis(100)),
            _ => panic!("1 000 ms have not passed since the answer"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_and_only_grows() {
        let d = limited(100, 1_000);
        d.pause_for(Duration::from_secs(3));
        d.pause_for(Duration::from_secs(1));
        match d.permit() {
            Permit::Wait(w) => assert_eq!(w, Duration::from_secs(3)),
            _ => panic!("paused"),
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(d.permit(), Permit::Granted(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_daily_budget_is_retryable_until_midnight() {
        let d = Destination::new(DestinationConfig {
            daily_budget: Some(2),
            ..DestinationConfig::default()
        })
        .unwrap();
        assert!(matches!(d.permit(), Permit::Granted(_)));
        assert!(matches!(d.permit(), Permit::Granted(_)));
        match d.permit() {
            Permit::DailyBudgetSpent(w) => assert!(w <= Duration::from_secs(86_400)),
            _ => panic!("budget spent"),
        }
    }

    #[test]
    fn latency_buckets_are_cumulative_and_merge() {
        let mut h = LatencyHistogram::default();
        h.observe(0.004);
        h.observe(0.2);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[5], 2, "0.25 s bucket holds both");
        let mut total = LatencyHistogram::default();
        total.merge(&h);
        total.merge(&h);
        assert_eq!(total.count, 4);
        assert_eq!(total.buckets[5], 4);
    }

    #[test]
    fn zero_limits_are_reported_by_key() {
        let c = DestinationConfig {
            max_requests_per_window: Some(0),
            max_concurrency: 0,
            ..DestinationConfig::default()
        };
        let p = c.problems().join("\n");
        assert!(
            p.contains("max_requests_per_window") && p.contains("max_concurrency"),
            "{p}"
        );
    }
}
