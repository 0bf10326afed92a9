//! The retry schedule: exponential bounds from `backon`, full jitter on top (backon's own jitter
//! only adds, it never draws below the bound), and the downstream's `Retry-After` as a floor.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::config::RetryConfig;

/// The delays of one item group's retries. Never runs out: once the ramp is over, every further
/// delay is drawn below `max_delay_ms`.
pub struct RetrySchedule {
    ramp: ExponentialBackoff,
    max: Duration,
}

impl RetrySchedule {
    pub fn new(config: &RetryConfig) -> RetrySchedule {
        let ramp = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(config.initial_delay_ms))
            .with_max_delay(Duration::from_millis(config.max_delay_ms))
            .with_factor(config.factor)
            .with_max_times(config.ramp_attempts)
            .build();
        RetrySchedule {
            ramp,
            max: Duration::from_millis(config.max_delay_ms),
        }
    }

    /// The next delay: a full-jitter draw from `[0, bound]`, but never shorter than what the
    /// downstream asked for with `Retry-After`.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let bound = self.ramp.next().unwrap_or(self.max);
        let jittered = bound.mul_f64(fastrand::f64());
        match retry_after {
            Some(floor) => jittered.max(floor),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            initial_delay_ms: 100,
            max_delay_ms: 1_000,
            factor: 2.0,
            ramp_attempts: 4,
            ..RetryConfig::default()
        }
    }

    #[test]
    fn delays_stay_within_growing_bounds_and_never_run_out() {
        let mut s = RetrySchedule::new(&config());
        let bounds = [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000];
        for bound in bounds {
            let d = s.next_delay(None);
            assert!(d <= Duration::from_millis(bound), "{d:?} > {bound}ms");
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut s = RetrySchedule::new(&config());
        for _ in 0..20 {
            assert!(s.next_delay(Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let mut s = RetrySchedule::new(&config());
            seen.insert(s.next_delay(None));
        }
        assert!(
            seen.len() > 10,
            "full jitter should rarely repeat: {seen:?}"
        );
    }
}
