//! When to refresh: the refresh-ahead window, backoff and cooldown, as pure functions.

use std::time::Duration;

use tokio::time::Instant;

/// The cell's timing settings, set through [`RefreshLayer`](crate::RefreshLayer)'s setters.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// How long before expiry a background refresh starts.
    pub(crate) refresh_ahead: Duration,
    /// The share of the window taken off at random, so that many processes holding tokens
    /// issued together do not refresh together.
    pub(crate) jitter: f64,
    /// The window never exceeds this share of the token's lifetime, so that a short-lived
    /// token is not refreshed on every request.
    pub(crate) max_lifetime_share: f64,
    /// No refresh starts sooner than this after the previous one started.
    pub(crate) min_interval: Duration,
    /// The whole refresh, every attempt included.
    pub(crate) refresh_timeout: Duration,
    /// Attempts within one refresh, for failures the source says are safe to resend.
    pub(crate) max_attempts: u32,
    /// The first pause between attempts; it doubles each time.
    pub(crate) backoff: Duration,
    /// After a failed refresh, no new one starts before this (doubling per failure, up to
    /// `max_cooldown`), so that a dead endpoint is not hammered.
    pub(crate) cooldown: Duration,
    pub(crate) max_cooldown: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            refresh_ahead: Duration::from_secs(30),
            jitter: 0.2,
            max_lifetime_share: 0.5,
            min_interval: Duration::from_secs(1),
            refresh_timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Duration::from_millis(200),
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

impl Schedule {
    /// When a token obtained from a request sent at `sent_at`, living `expires_in`, enters the
    /// refresh-ahead window. `random` is uniform in `[0, 1)`.
    pub(crate) fn refresh_at(
        &self,
        sent_at: Instant,
        expires_in: Duration,
        random: f64,
    ) -> Instant {
        let jittered = self.refresh_ahead.mul_f64(1.0 - self.jitter * random);
        let cap = expires_in.mul_f64(self.max_lifetime_share);
        sent_at + expires_in - jittered.min(cap)
    }

    /// The pause before attempt `attempt + 1` of one refresh (`attempt` >= 1): exponential,
    /// with the upper half jittered, and never shorter than the server's hint.
    pub(crate) fn backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let base = exponential(self.backoff, attempt, self.max_cooldown);
        half_jitter(base, random).max(retry_after.unwrap_or_default())
    }

    /// How long no refresh may start after `failures` failed refreshes in a row (>= 1).
    pub(crate) fn cooldown(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let base = exponential(self.cooldown, failures, self.max_cooldown);
        half_jitter(base, random).max(retry_after.unwrap_or_default())
    }
}

/// `first * 2^(n-1)`, capped.
fn exponential(first: Duration, n: u32, cap: Duration) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(20);
    first.saturating_mul(factor).min(cap)
}

/// A duration in `[d/2, d)`: spread out, but never far below the intended pause.
fn half_jitter(d: Duration, random: f64) -> Duration {
    d.mul_f64(0.5 + 0.5 * random)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule::default()
    }

    #[test]
    fn window_is_the_refresh_ahead_for_long_lived_tokens() {
        let now = Instant::now();
        let at = schedule().refresh_at(now, Duration::from_secs(3600), 0.0);
        assert_eq!(at, now + Duration::from_secs(3600 - 30));
    }

    #[test]
    fn window_is_jittered_by_at_most_its_jitter_share() {
        let now = Instant::now();
        let at = schedule().refresh_at(now, Duration::from_secs(3600), 0.999_999);
        let window = now + Duration::from_secs(3600) - at;
        assert!(window > Duration::from_secs(24) && window <= Duration::from_secs(30));
    }

    #[test]
    fn window_is_capped_at_half_the_lifetime() {
        let now = Instant::now();
        let at = schedule().refresh_at(now, Duration::from_secs(3), 0.0);
        assert_eq!(at, now + Duration::from_millis(1500));
    }

    #[test]
    fn zero_lifetime_is_due_at_once() {
        let now = Instant::now();
        assert_eq!(schedule().refresh_at(now, Duration::ZERO, 0.5), now);
    }

    #[test]
    fn backoff_doubles_and_honours_retry_after() {
        let s = schedule();
        assert_eq!(s.backoff(1, None, 1.0), Duration::from_millis(200));
        assert_eq!(s.backoff(2, None, 1.0), Duration::from_millis(400));
        assert_eq!(s.backoff(2, None, 0.0), Duration::from_millis(200));
        assert_eq!(
            s.backoff(1, Some(Duration::from_secs(5)), 1.0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn cooldown_grows_and_is_capped() {
        let s = schedule();
        assert_eq!(s.cooldown(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(s.cooldown(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(s.cooldown(40, None, 1.0), Duration::from_secs(60));
        assert_eq!(
            s.cooldown(1, Some(Duration::from_secs(120)), 0.0),
            Duration::from_secs(120)
        );
    }
}
