//! Request extensions that opt one request out, and the response extension that says what the
//! retry did.
//!
//! ```
//! use oauth_refresh::{NoRetry, SkipAuth};
//!
//! let mut request = http::Request::new(());
//! request.extensions_mut().insert(NoRetry);
//! let mut public = http::Request::new(());
//! public.extensions_mut().insert(SkipAuth);
//! ```

/// Request extension: send this request without a token, untouched by the layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipAuth;

/// Request extension: attach the token, but never resend this request (for example a
/// non-idempotent call the application retries itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoRetry;

/// Response extension, present when the server rejected the token a request was first sent
/// with: says whether the layer resent it.
///
/// ```
/// use oauth_refresh::RetryStatus;
///
/// # let response = http::Response::new(());
/// match response.extensions().get::<RetryStatus>() {
///     None => { /* the token was accepted the first time */ }
///     Some(RetryStatus::Retried) => { /* this is the answer to the resend */ }
///     Some(status) => eprintln!("token rejected, not resent: {status:?}"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryStatus {
    /// The request was resent once with a newer token; this is the answer to the resend.
    Retried,
    /// The request body could not be replayed, so the rejection is returned as it came.
    BodyNotReplayable,
    /// The retry was off for this request ([`NoRetry`], or the layer's setting).
    Disabled,
    /// The rejection is returned as it came, without a refresh: the token is still valid by
    /// its clock, and refreshes asked for by rejections are spaced out for now (this token
    /// was itself the answer to one, and was rejected again), or the token endpoint is
    /// cooling down after a failure or refused the grant. An endpoint that rejects every
    /// token ends here, and costs the token endpoint a trickle of requests; see
    /// [`Stats::backed_off`](crate::Stats::backed_off).
    BackedOff,
}
