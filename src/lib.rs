//! Keeps OAuth 2.0 access tokens fresh for outgoing HTTP requests.
//!
//! # Overview
//!
//! One [`RefreshLayer`] value is a `tower::Layer`. It reads the current token lock-free
//! through `arc-swap`, refreshes it before expiry without making requests wait, shares one
//! refresh among all concurrent callers, resends a request once when the server rejects its
//! token, and raises [`ReauthRequired`] when the refresh itself is refused, so the
//! application knows a person must sign in again.
//!
//! Each request finds the token in one of three states, by the monotonic clock:
//!
//! - **FRESH**: attach and send.
//! - **STALE** (inside the refresh-ahead window, still valid): attach and send now, and start
//!   a background refresh if none is running. No request waits.
//! - **EXPIRED** (or no token yet, or rejected): wait for the one shared refresh, then send.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use oauth_refresh::{AccessToken, BoxFuture, RefreshError, RefreshLayer, TokenRequest, TokenSet, TokenSource};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! /// A token source; the crate's grants implement the same trait.
//! struct Issuer;
//!
//! impl TokenSource for Issuer {
//!     fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
//!         Box::pin(async {
//!             let mut tokens = TokenSet::new(AccessToken::new("at-1"));
//!             tokens.expires_in = Some(Duration::from_secs(3600));
//!             Ok(tokens)
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = RefreshLayer::new(Issuer);
//! # let api = tower::service_fn(|request: http::Request<String>| async move {
//! #     assert_eq!(request.headers()["authorization"], "Bearer at-1");
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! # });
//! let service = ServiceBuilder::new().layer(layer.clone()).service(api);
//! let response = service.oneshot(http::Request::new(String::new())).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! # Grants
//!
//! The crate's grants implement [`TokenSource`] and talk to the token endpoint with their own
//! HTTP client (reqwest by default, feature `reqwest`), never through the layer:
//! [`ClientCredentials`], [`RefreshTokenGrant`] (with rotation and a persistence hook), and
//! [`oauth::AuthorizationCode`] with PKCE for the first tokens. See [`oauth`].
//!
//! ```
//! use oauth_refresh::{ClientCredentials, RefreshLayer, RefreshToken, RefreshTokenGrant, TokenSet};
//!
//! let service_token = RefreshLayer::new(
//!     ClientCredentials::new("https://login.example.com/oauth2/token", "reporting", "s3cr3t")
//!         .scope("api:read"),
//! );
//!
//! # async fn save(_: TokenSet, _: Option<RefreshToken>) -> std::io::Result<()> { Ok(()) }
//! let user_token = RefreshLayer::new(
//!     RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", "rt-stored")
//!         .persist(|tokens: TokenSet, previous: Option<RefreshToken>| save(tokens, previous)),
//! );
//! # drop((service_token, user_token));
//! ```
//!
//! # Feature flags
//!
//! - `reqwest` (default): the grants' default HTTP client. Without it, give each grant one
//!   with `http_client`.
//!
//! # Errors
//!
//! The service's error is a `BoxError`. Refresh failures arrive as their own types, reached
//! with `downcast_ref`: [`ReauthRequired`] (sign in again), [`TransientError`] (retryable),
//! [`ConfigurationError`] (the client is refused), and [`InsecureTransport`].
//!
//! ```
//! use oauth_refresh::{ReauthRequired, TransientError};
//!
//! fn handle(err: tower::BoxError) -> &'static str {
//!     if let Some(reauth) = err.downcast_ref::<ReauthRequired>() {
//!         eprintln!("{reauth}"); // "... the user must sign in again"
//!         "show the sign-in page"
//!     } else if err.is::<TransientError>() {
//!         "try again later"
//!     } else {
//!         "report the error"
//!     }
//! }
//! # let err: tower::BoxError = Box::new(ReauthRequired::new("invalid_grant"));
//! assert_eq!(handle(err), "show the sign-in page");
//! ```
//!
//! # Performance
//!
//! Reading the token takes no lock and allocates nothing: an `ArcSwap` load, a clock read
//! and the clone of a header value built once per token. The retry's replay copy is the main
//! per-request cost and can be turned off ([`RefreshLayer::retry`], or [`NoRetry`] for one
//! request). `cargo bench --bench hot_path` compares both against tower-http's static
//! `SetRequestHeader` in the same run; see [`Refresh`] for the figures.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88 (edition 2024, let chains).

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod body;
mod cell;
pub mod classify;
mod error;
mod extension;
mod future;
mod layer;
pub mod oauth;
mod replay;
#[cfg(feature = "reqwest")]
mod reqwest;
mod service;
mod source;
mod token;

pub use body::RefreshBody;
pub use cell::Stats;
pub use error::{
    ConfigurationError, InsecureTransport, ReauthRequired, RefreshError, RefreshErrorKind,
    TransientError, TransientKind,
};
pub use extension::{NoRetry, RetryStatus, SkipAuth};
pub use future::ResponseFuture;
pub use layer::RefreshLayer;
pub use oauth::{ClientCredentials, RefreshTokenGrant};
pub use service::Refresh;
pub use source::{BoxFuture, TokenRequest, TokenSource};
pub use token::{AccessToken, ClientSecret, RefreshToken, TokenSet};

/// The error type of the tower service: refresh errors and the inner service's own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
