//! The instruments the layer records through the [`metrics`](https://docs.rs/metrics) facade,
//! with feature `metrics`.
//!
//! The crate installs no recorder and no exporter: install one of the `metrics` ecosystem's
//! (a Prometheus exporter, say) and the instruments below appear in it. Everything is
//! recorded on the refresh path or when a request is resent; a request answered
//! from a fresh token records nothing, so the hot path costs what it does without the
//! feature.
//!
//! # Instruments
//!
//! Named in the manner of OpenTelemetry's semantic conventions (a namespace, the unit in
//! the name, `_total` on counters as Prometheus writes them), one table:
//!
//! | name | type | unit | labels | meaning |
//! |---|---|---|---|---|
//! | `oauth_refresh_token_requests_total` | counter | `{request}` | `grant`, `host`, `outcome` | Requests to the token endpoint (each attempt of a refresh, resends of transient failures included), by how the source answered |
//! | `oauth_refresh_refresh_duration_seconds` | histogram | `s` | `grant`, `host`, `outcome` | One refresh, from its start (after any delay it was scheduled with) until its result is settled, resends and backoff included |
//! | `oauth_refresh_reauth_required_total` | counter | `{refresh}` | `grant`, `host` | Refreshes that ended in [`ReauthRequired`](crate::ReauthRequired) (`invalid_grant` and the like): a person must sign in again |
//! | `oauth_refresh_resends_total` | counter | `{request}` | `grant`, `host` | Requests resent with a new token after the server rejected theirs |
//! | `oauth_refresh_dpop_nonce_resends_total` | counter | `{request}` | `grant`, `host` | Requests resent with the nonce their API asked for (DPoP `use_dpop_nonce`), apart from the resends above; the token endpoint's own nonce resend is part of its token request |
//! | `oauth_refresh_persist_failures_total` | counter | `{failure}` | `grant`, `host` | Times the persistence hook failed (an error, a panic or a timeout); the new tokens stayed in use |
//! | `oauth_refresh_token_remaining_lifetime_seconds` | histogram | `s` | `grant`, `host` | As a refresh starts, how long the token it replaces had left (0 if expired); not recorded when no token or no lifetime is known |
//!
//! Labels:
//!
//! | label | values |
//! |---|---|
//! | `grant` | the source's [`grant`](crate::TokenSource::grant): `client_credentials`, `refresh_token`, `custom`, ... |
//! | `host` | the token endpoint's host, from [`host`](crate::TokenSource::host), or `unknown` |
//! | `outcome` | `success`, `transient`, `reauth`, `configuration` (the [`RefreshErrorKind`](crate::RefreshErrorKind)) |
//!
//! Their cardinality is bounded: the values name a grant and a host, never a user's key, a
//! token or a URL path, so a keyed layer of many users makes one series per grant and host,
//! not one per user. A custom [`TokenSource`] should keep its `grant`
//! and `host` to such names too.
//!
//! # Alerting
//!
//! A refused grant does not heal by itself, so any is worth a page; transient failures are
//! worth one when they are most of the token requests:
//!
//! ```yaml
//! groups:
//!   - name: oauth-refresh
//!     rules:
//!       - alert: OAuthReauthRequired
//!         expr: sum by (grant, host) (rate(oauth_refresh_reauth_required_total[5m])) > 0
//!         annotations:
//!           summary: "{{ $labels.host }} refuses the {{ $labels.grant }} grant (invalid_grant): sign in again"
//!       - alert: OAuthTokenEndpointFailing
//!         expr: |
//!           sum by (host) (rate(oauth_refresh_token_requests_total{outcome="transient"}[10m]))
//!             / sum by (host) (rate(oauth_refresh_token_requests_total[10m])) > 0.5
//!         for: 10m
//! ```

/// Gives the installed recorder each instrument's unit and help text, from the table above;
/// exporters show them (Prometheus as `# HELP` lines). Call it once after installing the
/// recorder; without it the instruments still record, undescribed.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
/// oauth_refresh::metrics::describe();
/// // ... later, on the scrape endpoint:
/// let exposition = prometheus.render();
/// # drop(exposition);
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "oauth_refresh_token_requests_total",
        Unit::Count,
        "Requests to the token endpoint, each attempt of a refresh, by grant, host and outcome"
    );
    describe_histogram!(
        "oauth_refresh_refresh_duration_seconds",
        Unit::Seconds,
        "One refresh from its start until its result is settled, resends and backoff included"
    );
    describe_counter!(
        "oauth_refresh_reauth_required_total",
        Unit::Count,
        "Refreshes refused by the server (invalid_grant): a person must sign in again"
    );
    describe_counter!(
        "oauth_refresh_resends_total",
        Unit::Count,
        "Requests resent with a new token after the server rejected theirs"
    );
    describe_counter!(
        "oauth_refresh_dpop_nonce_resends_total",
        Unit::Count,
        "Requests resent with the nonce their API asked for (DPoP use_dpop_nonce)"
    );
    describe_counter!(
        "oauth_refresh_persist_failures_total",
        Unit::Count,
        "Times the persistence hook failed; the new tokens stayed in use"
    );
    describe_histogram!(
        "oauth_refresh_token_remaining_lifetime_seconds",
        Unit::Seconds,
        "As a refresh starts, how long the token it replaces had left"
    );
}

#[cfg(feature = "metrics")]
use std::time::Duration;

use crate::error::RefreshError;
use crate::source::TokenSource;

/// A token request's answer, as the source gave it.
#[inline]
pub(crate) fn token_request(source: &dyn TokenSource, result: Result<(), &RefreshError>) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        "oauth_refresh_token_requests_total",
        "grant" => grant(source),
        "host" => host(source),
        "outcome" => outcome(result),
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (source, result);
}

/// A refresh settled after `elapsed`.
#[cfg(feature = "metrics")]
pub(crate) fn refresh(
    source: &dyn TokenSource,
    elapsed: Duration,
    result: Result<(), &RefreshError>,
) {
    ::metrics::histogram!(
        "oauth_refresh_refresh_duration_seconds",
        "grant" => grant(source),
        "host" => host(source),
        "outcome" => outcome(result),
    )
    .record(elapsed.as_secs_f64());
}

/// A refresh ended in `ReauthRequired`.
#[inline]
pub(crate) fn reauth_required(source: &dyn TokenSource) {
    count("oauth_refresh_reauth_required_total", source);
}

/// A rejected request is resent with a new token.
#[inline]
pub(crate) fn resend(source: &dyn TokenSource) {
    count("oauth_refresh_resends_total", source);
}

/// A request is resent with the nonce its API asked for (DPoP).
#[inline]
pub(crate) fn nonce_resend(source: &dyn TokenSource) {
    count("oauth_refresh_dpop_nonce_resends_total", source);
}

/// The persistence hook failed.
#[inline]
pub(crate) fn persist_failure(source: &dyn TokenSource) {
    count("oauth_refresh_persist_failures_total", source);
}

/// A refresh starts, replacing a token with `remaining` left (`None`: unknown).
#[cfg(feature = "metrics")]
pub(crate) fn remaining_lifetime(source: &dyn TokenSource, remaining: Option<Duration>) {
    if let Some(remaining) = remaining {
        ::metrics::histogram!(
            "oauth_refresh_token_remaining_lifetime_seconds",
            "grant" => grant(source),
            "host" => host(source),
        )
        .record(remaining.as_secs_f64());
    }
}

/// One more of counter `name`, labelled with the source's grant and host.
#[inline]
fn count(name: &'static str, source: &dyn TokenSource) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name, "grant" => grant(source), "host" => host(source)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, source);
}

// Label values are copied per recording: recordings happen per refresh, and keeping them in
// the cell would cost every idle key of a keyed layer the memory.
#[cfg(feature = "metrics")]
fn grant(source: &dyn TokenSource) -> String {
    source.grant().to_owned()
}

#[cfg(feature = "metrics")]
fn host(source: &dyn TokenSource) -> String {
    source.host().unwrap_or("unknown").to_owned()
}

#[cfg(feature = "metrics")]
fn outcome(result: Result<(), &RefreshError>) -> &'static str {
    use crate::error::RefreshErrorKind;
    match result.map_err(RefreshError::kind) {
        Ok(()) => "success",
        Err(RefreshErrorKind::Transient) => "transient",
        Err(RefreshErrorKind::Reauth) => "reauth",
        Err(RefreshErrorKind::Configuration) => "configuration",
    }
}
