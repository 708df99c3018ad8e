//! Where tokens come from: the [`TokenSource`] trait every grant implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::BoxError;
use crate::dpop::DpopKey;
use crate::error::RefreshError;
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, RevocationRequest};
use crate::token::{RefreshToken, TokenSet};

/// A boxed, `Send` future, as [`TokenSource::fetch`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the token cell asks a [`TokenSource`] for.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenRequest {
    /// The newest refresh token the cell holds, read inside the refresh slot so that a
    /// rotated token is never sent twice.
    pub refresh_token: Option<RefreshToken>,
    /// 1 for the first attempt of a refresh, 2 for its first resend, and so on.
    pub attempt: u32,
}

/// Obtains tokens: one call is one token request. Every grant implements it; it is usable as
/// `dyn TokenSource`.
///
/// A source says how it failed through [`RefreshError`]: [`ReauthRequired`](crate::ReauthRequired)
/// when the server refused the grant, [`TransientError`](crate::TransientError) when it may pass
/// (with a retry-after hint and whether the request may be resent),
/// [`ConfigurationError`](crate::ConfigurationError) when the client itself is refused.
///
/// The cell calls it from a task of its own, one call at a time per token cell; retries,
/// timeouts, rotation and scheduling are the cell's work, not the source's.
///
/// A closure can be a source too: see [`source_fn`].
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh::{AccessToken, BoxFuture, RefreshError, TokenRequest, TokenSet, TokenSource};
///
/// /// Hands out a fixed token, as a test double would.
/// struct Static;
///
/// impl TokenSource for Static {
///     fn fetch(&self, _request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
///         Box::pin(async {
///             Ok(TokenSet::new(AccessToken::new("at-1")).with_expires_in(Duration::from_secs(3600)))
///         })
///     }
/// }
///
/// let source: Box<dyn TokenSource> = Box::new(Static);
/// assert_eq!(source.grant(), "custom");
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Requests a new token set.
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>>;

    /// The grant's name for logs and spans, e.g. `"client_credentials"`.
    fn grant(&self) -> &str {
        "custom"
    }

    /// The token endpoint's host, for logs and spans.
    fn host(&self) -> Option<&str> {
        None
    }

    /// The key this source's tokens are bound to (DPoP, RFC 9449), if they are: a layer over
    /// it then sends each token as `Authorization: DPoP <token>`, beside a proof signed by
    /// this key for each request. The grants return the key given to their `dpop` setter.
    fn dpop_key(&self) -> Option<&DpopKey> {
        None
    }

    /// The refresh token to start from, such as one stored by an earlier run.
    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        None
    }

    /// Tokens to start from, so the first request needs no token request: those of a
    /// sign-in that just completed, or a stored access token. `expires_in` counts from the
    /// moment this is called (the layer's construction).
    fn initial_tokens(&self) -> Option<TokenSet> {
        None
    }

    /// Stores the cell's tokens after a change: `update.refresh_token` is the one to present
    /// next (rotated, or kept from before); `update.previous_refresh_token` is the one it
    /// replaces, for a compare-and-swap store.
    ///
    /// The cell calls it whenever the refresh token it holds changes, whatever the reason,
    /// and after every refresh that brought new tokens: after swapping the new token in and
    /// before releasing the requests that wait for it, one call at a time, in the order of
    /// the changes. An error is logged and counted; the new tokens are used all the same.
    ///
    /// After [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out) it receives a removal
    /// ([`TokenUpdate::is_removal`]): delete what is stored.
    fn persist(&self, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        let _ = update;
        Box::pin(std::future::ready(Ok(())))
    }

    /// Revokes tokens at the server (RFC 7009), for a sign-out: called by
    /// [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out) after the cell has discarded
    /// them, with the ones it held. The default says this source cannot revoke
    /// ([`RevocationError::Unsupported`]); [`RefreshTokenGrant`](crate::RefreshTokenGrant)
    /// revokes at its [`revocation_url`](crate::RefreshTokenGrant::revocation_url).
    ///
    /// The cell calls it from a task of its own, with no refresh running, once per sign-out;
    /// the tokens are gone from the cell whatever it returns.
    fn revoke(&self, request: RevocationRequest) -> BoxFuture<'_, Result<(), RevocationError>> {
        let _ = request;
        Box::pin(std::future::ready(Err(RevocationError::Unsupported)))
    }
}

/// Makes a [`TokenSource`] of a closure, as `tower::service_fn` makes a service of one: each
/// token request calls `f` with the cell's [`TokenRequest`] and awaits the future it returns.
///
/// The source has the trait's defaults for everything but [`fetch`](TokenSource::fetch): grant
/// `"custom"`, no host, no initial tokens, nothing persisted. Implement [`TokenSource`] for a
/// type of your own when you need those.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use oauth_refresh::{AccessToken, RefreshLayer, TokenSet, source_fn};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let issued = Arc::new(AtomicUsize::new(0));
/// let counter = issued.clone();
/// let layer = RefreshLayer::new(source_fn(move |_request| {
///     let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
///     async move {
///         Ok(TokenSet::new(AccessToken::new(format!("at-{n}"))).with_expires_in(Duration::from_secs(3600)))
///     }
/// }));
///
/// layer.refresh().await?; // at-1
/// layer.refresh().await?; // at-2
/// assert_eq!(issued.load(Ordering::SeqCst), 2);
///
/// // Requests carry the newest token.
/// let api = tower::service_fn(|request: http::Request<String>| async move {
///     assert_eq!(request.headers()["authorization"], "Bearer at-2");
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// let service = ServiceBuilder::new().layer(layer.clone()).service(api);
/// service.oneshot(http::Request::new(String::new())).await?;
/// # Ok(())
/// # }
/// ```
pub fn source_fn<F, Fut>(f: F) -> SourceFn<F>
where
    F: Fn(TokenRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenSet, RefreshError>> + Send + 'static,
{
    SourceFn { f }
}

/// A [`TokenSource`] made of a closure by [`source_fn`].
#[derive(Clone, Copy)]
pub struct SourceFn<F> {
    f: F,
}

impl<F, Fut> TokenSource for SourceFn<F>
where
    F: Fn(TokenRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenSet, RefreshError>> + Send + 'static,
{
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin((self.f)(request))
    }
}

/// Names the closure's type, never what it captured.
impl<F> fmt::Debug for SourceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceFn")
            .field("f", &format_args!("{}", std::any::type_name::<F>()))
            .finish()
    }
}

impl fmt::Debug for dyn TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("grant", &self.grant())
            .field("host", &self.host())
            .finish()
    }
}

#[allow(dead_code)]
fn _obj_safe(_: &dyn TokenSource) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::AccessToken;

    #[tokio::test]
    async fn source_fn_hands_the_request_to_the_closure() {
        let source: Box<dyn TokenSource> =
            Box::new(source_fn(|request: TokenRequest| async move {
                let presented = request.refresh_token.map(|t| t.secret().to_owned());
                let access_token =
                    format!("at-{}-{}", request.attempt, presented.unwrap_or_default());
                Ok(TokenSet::new(AccessToken::new(access_token)))
            }));
        let request = TokenRequest {
            refresh_token: Some(RefreshToken::new("rt-1")),
            attempt: 3,
        };
        let tokens = source.fetch(request).await.unwrap();
        assert_eq!(tokens.access_token.secret(), "at-3-rt-1");
        assert_eq!(source.grant(), "custom");
        assert!(source.initial_tokens().is_none());
    }

    #[test]
    fn source_fn_debug_shows_nothing_the_closure_captured() {
        let captured = String::from("s3cr3t-captured");
        let source = source_fn(move |_| {
            let access_token = captured.clone();
            async move { Ok(TokenSet::new(AccessToken::new(access_token))) }
        });
        let copy = source.clone();
        let printed = format!("{copy:?} {copy:#?}");
        assert!(printed.starts_with("SourceFn"), "{printed}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        drop(source);
    }

    #[test]
    fn token_request_debug_hides_the_refresh_token() {
        let request = TokenRequest {
            refresh_token: Some(RefreshToken::new("s3cr3t-refresh")),
            attempt: 2,
        };
        let printed = format!("{request:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("attempt: 2"), "{printed}");
    }
}
