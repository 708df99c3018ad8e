//! When to refresh: the refresh-ahead window, backoff, cooldown and the spacing of refreshes
//! that rejections ask for, as pure functions; and the one guarded way to add to an instant.

use std::time::Duration;

use tokio::time::Instant;

/// The longest span the cell adds to an instant: lifetimes, windows, timeouts and pauses are
/// cut to it. Servers send absurd numbers (`expires_in` of `u64::MAX`, `1e300`), and
/// `Instant + Duration` panics on overflow; a token said to live longer than a year is
/// refreshed after a year.
pub(crate) const MAX_SPAN: Duration = crate::token::MAX_LIFETIME;

/// The longest `Retry-After` honoured: a server asking for more is asked again after an hour,
/// rather than leaving the application without a token for as long as it says.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// `at + span`, with `span` cut to [`MAX_SPAN`]: never an overflow, never a panic. Every
/// addition to an instant in the cell goes through here.
pub(crate) fn after(at: Instant, span: Duration) -> Instant {
    // On a platform whose clock cannot reach a year ahead, "at once" is the safe answer:
    // the token is refreshed early rather than kept past its time.
    at.checked_add(span.min(MAX_SPAN)).unwrap_or(at)
}

/// The cell's timing settings, fixed when the layer is built
/// ([`RefreshLayerBuilder`](crate::RefreshLayerBuilder)).
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
    /// After a refresh that a rejection asked for, the next one a rejection asks for waits
    /// this long (doubling with each, up to `max_rejection_spacing`): an endpoint that answers
    /// 401 to every token must not drive the token endpoint harder than a trickle.
    pub(crate) rejection_spacing: Duration,
    pub(crate) max_rejection_spacing: Duration,
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
            rejection_spacing: Duration::from_secs(1),
            max_rejection_spacing: Duration::from_secs(5 * 60),
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
        let expires_in = expires_in.min(MAX_SPAN);
        let jittered = self
            .refresh_ahead
            .min(MAX_SPAN)
            .mul_f64(1.0 - self.jitter * random);
        let cap = expires_in.mul_f64(self.max_lifetime_share);
        after(sent_at, expires_in.saturating_sub(jittered.min(cap)))
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
        half_jitter(base, random).max(honoured(retry_after))
    }

    /// How long no refresh may start after `failures` failed refreshes in a row (>= 1).
    pub(crate) fn cooldown(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let base = exponential(self.cooldown, failures, self.max_cooldown);
        half_jitter(base, random).max(honoured(retry_after))
    }

    /// How long after the `strikes`-th refresh asked for by a rejection (>= 1) the next such
    /// refresh may start. Refreshes that expiry needs are not held back by it.
    ///
    /// With the defaults (1 s, doubling, at most 5 min), an endpoint that rejects every token
    /// for an hour causes at most 20 token requests in that hour (at 0, 1, 3, 7, ..., 511 s,
    /// then every 5 min), and 12 in each hour after.
    pub(crate) fn rejection_spacing(&self, strikes: u32) -> Duration {
        exponential(self.rejection_spacing, strikes, self.max_rejection_spacing)
    }

    /// Past this much quiet, rejections count again from the first: they are a new episode.
    pub(crate) fn rejection_quiet(&self) -> Duration {
        self.max_rejection_spacing.saturating_mul(2)
    }
}

/// A server's `Retry-After`, within [`MAX_RETRY_AFTER`].
fn honoured(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_default().min(MAX_RETRY_AFTER)
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
    fn absurd_spans_are_cut_and_never_overflow() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + MAX_SPAN);
        let mut s = schedule();
        s.refresh_ahead = Duration::MAX;
        let at = s.refresh_at(now, Duration::MAX, 0.999);
        assert!(at > now && at <= now + MAX_SPAN, "{:?}", at - now);
        assert_eq!(
            s.cooldown(1, Some(Duration::MAX), 0.0),
            MAX_RETRY_AFTER,
            "a Retry-After of forever"
        );
        assert_eq!(
            s.backoff(u32::MAX, Some(Duration::MAX), 1.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn rejection_spacing_doubles_to_five_minutes() {
        let s = schedule();
        let spacing: Vec<u64> = (1..=11).map(|n| s.rejection_spacing(n).as_secs()).collect();
        assert_eq!(spacing, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        // The bound the docs state: refreshes at 0, then after each spacing in turn.
        let mut at = 0;
        let mut in_first_hour = 0;
        for strikes in 1.. {
            if at > 3600 {
                break;
            }
            in_first_hour += 1;
            at += s.rejection_spacing(strikes).as_secs();
        }
        assert_eq!(in_first_hour, 20);
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
        assert_eq!(
            s.cooldown(1, Some(Duration::from_secs(7200)), 0.0),
            MAX_RETRY_AFTER
        );
    }
}
