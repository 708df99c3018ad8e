//! Keeps OAuth 2.0 access tokens fresh for outgoing HTTP requests.
//!
//! # Overview
//!
//! One [`RefreshLayer`] value is a `tower::Layer` and, with feature `reqwest` (on by
//! default), a `reqwest_middleware::Middleware`. It reads the current token lock-free through
//! `arc-swap`, refreshes it before expiry without making requests wait, shares one refresh
//! among all concurrent callers, resends a request once when the server rejects its token,
//! and raises [`ReauthRequired`] when the refresh itself is refused, so the application knows
//! a person must sign in again.
//!
//! Clones of a layer share one token cell: add one clone to a tower stack and another to a
//! reqwest client, and both use the same token and the same refresh.
//!
//! # Quick start: tower
//!
//! ```
//! use oauth_refresh::{ClientCredentials, RefreshLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//! # use bytes::Bytes;
//! # use http_body_util::{BodyExt, Full};
//! # use oauth_refresh::{BoxFuture, TransientError, oauth::{HttpClient, ResponseBody}};
//! # struct TokenEndpoint;
//! # impl HttpClient for TokenEndpoint {
//! #     fn send(&self, _: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
//! #         let body = br#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600}"#;
//! #         let body = Full::new(Bytes::from_static(body)).map_err(|never| match never {}).boxed_unsync();
//! #         Box::pin(async move { Ok(http::Response::new(body)) })
//! #     }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let http_client = tower::service_fn(|request: http::Request<String>| async move {
//! #     assert_eq!(request.headers()["authorization"], "Bearer at-1");
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! # });
//! let layer = RefreshLayer::new(
//!     ClientCredentials::new("https://login.example.com/oauth2/token", "reporting", "s3cr3t")
//!         .scope("api:read")
//! #       .http_client(TokenEndpoint)
//! );
//! // `http_client`: any tower HTTP client service, such as hyper-util's `Client`.
//! let service = ServiceBuilder::new().layer(layer.clone()).service(http_client);
//!
//! let request = http::Request::get("https://api.example.com/reports").body(String::new())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/tower_hyper.rs` runs this over hyper-util's client against a server on loopback.
//!
#![cfg_attr(feature = "reqwest", doc = include_str!("docs/reqwest.md"))]
//!
//! # Token states
//!
//! Each request finds the token in one of three states, by the monotonic clock:
//!
//! - **FRESH**: attach and send.
//! - **STALE** (inside the refresh-ahead window, still valid): attach and send now, and start
//!   a background refresh if none is running. No request waits.
//! - **EXPIRED** (or no token yet, or rejected): wait for the one shared refresh, then send.
//!
//! The refresh-ahead window is 30 s by default ([`RefreshLayerBuilder::refresh_ahead`]), jittered down
//! by up to a fifth, and never more than half the token's lifetime: a token that lives 60 s is
//! refreshed in the background from about 30 s on.
//!
//! ```
//! use std::time::Duration;
//! use oauth_refresh::RefreshLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! # use oauth_refresh::{AccessToken, BoxFuture, RefreshError, TokenRequest, TokenSet, TokenSource};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # /// Issues `at-1`, `at-2`, ..., each living 60 s.
//! # #[derive(Default)]
//! # struct Issuer(AtomicUsize);
//! # impl TokenSource for Issuer {
//! #     fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
//! #         let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
//! #         Box::pin(async move {
//! #             Ok(TokenSet::new(AccessToken::new(format!("at-{n}"))).with_expires_in(Duration::from_secs(60)))
//! #         })
//! #     }
//! # }
//! # async fn token_sent<S>(service: &mut S) -> String
//! # where S: Service<http::Request<String>, Response = http::Response<oauth_refresh::RefreshBody<String>>>, S::Error: std::fmt::Debug {
//! #     use http_body_util::BodyExt;
//! #     let response = service.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
//! #     String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
//! # }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! # let api = tower::service_fn(|request: http::Request<String>| async move {
//! #     let token = request.headers()["authorization"].to_str().unwrap().to_owned();
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(token))
//! # });
//! let layer = RefreshLayer::new(Issuer::default());
//! let mut service = ServiceBuilder::new().layer(layer.clone()).service(api);
//!
//! // No token yet: the first request waits for the first refresh.
//! assert_eq!(token_sent(&mut service).await, "Bearer at-1");
//! // FRESH: sent as it is.
//! tokio::time::advance(Duration::from_secs(20)).await;
//! assert_eq!(token_sent(&mut service).await, "Bearer at-1");
//! // STALE: sent at once with the valid token; a background refresh starts.
//! tokio::time::advance(Duration::from_secs(25)).await;
//! assert_eq!(token_sent(&mut service).await, "Bearer at-1");
//! tokio::time::sleep(Duration::from_millis(1)).await; // the refresh task runs
//! assert_eq!(token_sent(&mut service).await, "Bearer at-2");
//! // EXPIRED, with no request for longer than a lifetime: the next one waits.
//! tokio::time::advance(Duration::from_secs(61)).await;
//! assert_eq!(token_sent(&mut service).await, "Bearer at-3");
//! assert_eq!(layer.stats().refreshes, 3);
//! # }
//! ```
//!
//! # What is retried
//!
//! A response the classifier calls a rejection of the token is answered by one resend. By
//! default that is a `401` whose `Bearer` challenge says `error="invalid_token"`, or a `401`
//! with no Bearer challenge; replace the rule with [`RefreshLayer::classifier`] (see
//! [`classify`]). Before resending, the layer:
//!
//! - uses a newer token if another request already replaced the rejected one, without a
//!   refresh of its own;
//! - otherwise marks the rejected token invalid and joins the one shared refresh;
//! - drains the rejected response's body, so the connection is reused.
//!
//! A rejection costs the request that got it, not everyone: the rejected token is not marked
//! for other requests, which go on with it (an endpoint may answer 401 for reasons of its
//! own), and a token the server really revoked is rejected everywhere, its rejections joining
//! the same refresh. Refreshes start at most once a second, whatever triggers them, and the
//! refreshes that rejections ask for are spaced out further when the token they brought is
//! rejected again: 1 s, 2 s, 4 s, ... up to 5 minutes. An endpoint that answers 401 to every
//! token thus costs at most 20 token requests in an hour (12 an hour after that); meanwhile
//! its rejections come back as they came, marked [`RetryStatus::BackedOff`]. Refreshes that
//! expiry needs are never held back by it.
//!
//! The answer to the resend is returned as it is, a second rejection included, with
//! [`RetryStatus::Retried`] in its extensions: one resend, never a loop.
//!
//! Not resent:
//!
//! - a request whose body cannot be replayed (a stream): it is sent once, never failed up
//!   front, and its rejection comes back untouched, marked [`RetryStatus::BodyNotReplayable`].
//!   The tower service replays in-memory bodies (`Full<Bytes>`, `String`, `Bytes`, ...) and
//!   the body types a layer was taught with [`RefreshLayer::replay_body`]; the reqwest
//!   middleware whatever `reqwest::Request::try_clone` can copy;
//! - a request with [`NoRetry`], or every request after [`RefreshLayer::retry`]`(false)`:
//!   marked [`RetryStatus::Disabled`];
//! - a `403` with `insufficient_scope`, and any other answer the classifier accepts;
//! - a request that carries its own `Authorization` header, or [`SkipAuth`]: passed through
//!   untouched;
//! - a failure of the inner service or the network: that is a retry policy's job, not this
//!   layer's.
//!
//! ```
//! use oauth_refresh::{NoRetry, RefreshLayer, RetryStatus};
//! use tower::{ServiceBuilder, ServiceExt};
//! # use std::time::Duration;
//! # use oauth_refresh::{AccessToken, BoxFuture, RefreshError, TokenRequest, TokenSet, TokenSource};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # #[derive(Default)]
//! # struct Issuer(AtomicUsize);
//! # impl TokenSource for Issuer {
//! #     fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
//! #         let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
//! #         Box::pin(async move {
//! #             Ok(TokenSet::new(AccessToken::new(format!("at-{n}"))).with_expires_in(Duration::from_secs(3600)))
//! #         })
//! #     }
//! # }
//! # /// Revoked `at-1` early: answers 401 `invalid_token` to it.
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let api = tower::service_fn(|request: http::Request<String>| async move {
//! #     let status = match request.headers()["authorization"] == "Bearer at-1" { true => 401, false => 200 };
//! #     let response = http::Response::builder().status(status)
//! #         .header("www-authenticate", r#"Bearer error="invalid_token""#).body(String::new()).unwrap();
//! #     Ok::<_, std::convert::Infallible>(response)
//! # });
//! let layer = RefreshLayer::new(Issuer::default());
//! let service = ServiceBuilder::new().layer(layer.clone()).service(api);
//!
//! // The API rejects at-1: the layer refreshes and resends once.
//! let response = service.clone().oneshot(http::Request::new(String::new())).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
//!
//! // A request the application retries itself.
//! let mut request = http::Request::new(String::new());
//! request.extensions_mut().insert(NoRetry);
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.extensions().get::<RetryStatus>(), None); // at-2 was accepted
//! assert_eq!(layer.stats().retries, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Persisting rotated refresh tokens
//!
//! With rotation, each refresh answers with a new refresh token and the old one stops
//! working: an application that restarts with the old one has lost its sign-in. Give the
//! grant a [`persist`](RefreshTokenGrant::persist) hook. It receives a [`TokenUpdate`], whose
//! `refresh_token` is always the one to present next (rotated, or kept when the server sent
//! none), with the one it replaces, for a compare-and-swap store. It runs whenever the held
//! refresh token changes (an answer that failed otherwise but rotated it included, and
//! tokens installed with [`RefreshLayer::set_tokens`]), and after every refresh: after the
//! new token is in use and before the requests waiting for it go on, one call at a time, in
//! order. If it fails, the tokens stay in memory, the failure is logged, and
//! [`Stats::persist_failures`] counts it.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::{Duration, SystemTime};
//! use oauth_refresh::{RefreshLayer, RefreshTokenGrant, TokenUpdate};
//! # use bytes::Bytes;
//! # use http_body_util::{BodyExt, Full};
//! # use oauth_refresh::{BoxFuture, TransientError, oauth::{HttpClient, ResponseBody}};
//! # struct TokenEndpoint;
//! # impl HttpClient for TokenEndpoint {
//! #     fn send(&self, request: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
//! #         assert!(String::from_utf8_lossy(request.body()).contains("refresh_token=rt-1"));
//! #         let body = br#"{"access_token":"at-2","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-2"}"#;
//! #         let body = Full::new(Bytes::from_static(body)).map_err(|never| match never {}).boxed_unsync();
//! #         Box::pin(async move { Ok(http::Response::new(body)) })
//! #     }
//! # }
//!
//! /// Stands in for a database row: the refresh token to present next.
//! #[derive(Clone, Default)]
//! struct Store(Arc<Mutex<Option<String>>>);
//!
//! impl Store {
//!     /// Replaces the stored token only if it is still the one that was presented.
//!     async fn save(&self, update: TokenUpdate) -> std::io::Result<()> {
//!         let mut row = self.0.lock().unwrap();
//!         let replaced = update.previous_refresh_token.as_ref().map(|t| t.secret());
//!         if row.as_deref() == replaced {
//!             *row = update.refresh_token.map(|t| t.secret().to_owned());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), oauth_refresh::RefreshError> {
//! let store = Store(Arc::new(Mutex::new(Some("rt-1".into()))));
//! let stored = store.0.lock().unwrap().clone().unwrap();
//! let expired = SystemTime::now() - Duration::from_secs(1);
//! let hook = store.clone();
//! let grant = RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", stored)
//!     .initial_access_token("at-1", expired) // the stored access token, if any, and its expiry
//!     .persist(move |update| {
//!         let store = hook.clone();
//!         async move { store.save(update).await }
//!     })
//! #   .http_client(TokenEndpoint)
//!     ;
//! let layer = RefreshLayer::new(grant);
//!
//! layer.refresh().await?; // what the first request would do with an expired token
//! assert_eq!(store.0.lock().unwrap().as_deref(), Some("rt-2"));
//! # Ok(())
//! # }
//! ```
//!
//! # Handling `ReauthRequired`
//!
//! When the authorization server refuses the refresh (`invalid_grant`: the user revoked the
//! app, the refresh token expired or was reused), no retry can help: a person must sign in
//! again. The layer keeps serving the token it has while it is valid, and raises
//! [`ReauthRequired`] only to requests that have no usable token left. After a new sign-in,
//! install its tokens with [`RefreshLayer::set_tokens`], and every clone of the layer uses
//! them.
//!
//! The tower service's error is a `BoxError`; refresh failures arrive as the crate's own
//! types, reached with `downcast_ref`: [`ReauthRequired`] (sign in again),
//! [`TransientError`] (the token endpoint failed for now; retry later), [`ConfigurationError`]
//! (the client is refused, e.g. `invalid_client`, or misconfigured, e.g. a token URL that does
//! not parse), and [`InsecureTransport`].
//!
//! ```
//! use oauth_refresh::{AccessToken, ReauthRequired, RefreshLayer, TokenSet, TransientError};
//!
//! enum Next {
//!     SignIn,
//!     TryLater,
//!     Report,
//! }
//!
//! fn next_step(err: &tower::BoxError) -> Next {
//!     if let Some(reauth) = err.downcast_ref::<ReauthRequired>() {
//!         // "the authorization server at login.example.com refused to refresh the token
//!         // (invalid_grant); the user must sign in again"
//!         eprintln!("{reauth}");
//!         Next::SignIn
//!     } else if err.is::<TransientError>() {
//!         Next::TryLater
//!     } else {
//!         Next::Report
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let revoked = oauth_refresh::source_fn(|_| async {
//! #     Err(ReauthRequired::new("invalid_grant").with_host("login.example.com").into())
//! # });
//! # let api = tower::service_fn(|_: http::Request<String>| async move {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! # });
//! # use tower::ServiceExt;
//! let layer = RefreshLayer::new(revoked);
//! let service = tower::ServiceBuilder::new().layer(layer.clone()).service(api);
//!
//! let err = service.clone().oneshot(http::Request::new(String::new())).await.unwrap_err();
//! assert!(matches!(next_step(&err), Next::SignIn));
//!
//! // After a new sign-in (`oauth::AuthorizationCode`), hand its tokens to the layer.
//! let tokens = TokenSet::new(AccessToken::new("at-new")).with_refresh_token("rt-new");
//! layer.set_tokens(tokens).unwrap();
//! let response = service.oneshot(http::Request::new(String::new())).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # }
//! ```
//!
//! # Many tokens
//!
//! [`keyed::KeyedRefreshLayer`] holds a token cell per key (a user, a tenant, or the
//! [`oauth::TokenParams`] a request asks its token for), each with every promise above, made
//! on first use by an async factory and dropped when idle. A request never gets another key's
//! token; one whose key cannot be resolved fails with [`keyed::KeyError`] and is not sent.
//!
//! # Grants
//!
//! The crate's grants implement [`TokenSource`] and talk to the token endpoint with their own
//! HTTP client (reqwest by default, feature `reqwest`), never through the layer:
//! [`ClientCredentials`], [`RefreshTokenGrant`] (with rotation and a persistence hook), and
//! for the first tokens [`oauth::AuthorizationCode`] with PKCE or, on a device without a
//! browser, [`oauth::DeviceAuthorization`]. See [`oauth`].
//!
//! # Signing out
//!
//! [`RefreshLayer::sign_out`] discards the tokens at once (later requests get
//! [`ReauthRequired`] `signed_out` without a token request), tells the persistence hook to
//! delete the stored ones ([`TokenUpdate::is_removal`]), and revokes them at the server
//! through [`TokenSource::revoke`]: RFC 7009 at a [`RefreshTokenGrant`]'s
//! [`revocation_url`](RefreshTokenGrant::revocation_url). A revocation that fails still signs
//! the user out here, and returns a [`RevocationError`] saying what the server was not told.
//!
//! Two more grants present a token they obtain afresh for each request: [`TokenExchange`]
//! (RFC 8693) exchanges another token, such as another layer's current one, for a token to
//! another audience; [`JwtBearer`] (RFC 7523 §2.1) presents a signed JWT assertion, such as a
//! workload's identity token. Both are run again at expiry, like client credentials.
//!
//! ```
//! use oauth_refresh::{ClientCredentials, RefreshLayer, RefreshTokenGrant, TokenUpdate};
//!
//! let service_token = RefreshLayer::new(
//!     ClientCredentials::new("https://login.example.com/oauth2/token", "reporting", "s3cr3t")
//!         .scope("api:read"),
//! );
//!
//! # async fn save(_: TokenUpdate) -> std::io::Result<()> { Ok(()) }
//! let user_token = RefreshLayer::new(
//!     RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", "rt-stored")
//!         .persist(|update: TokenUpdate| save(update)),
//! );
//! # drop((service_token, user_token));
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `reqwest` | yes | `RefreshLayer` as a `reqwest_middleware::Middleware`, and reqwest (rustls) as the grants' HTTP client for the token endpoint |
//! | `jwt-signing` | yes | built-in ES256 and RS256 keys (`oauth::Es256Key`, `oauth::Rs256Key`) for `private_key_jwt` client authentication, on aws-lc-rs, which rustls already builds; without it, [`oauth::PrivateKeyJwt`] takes a [`oauth::JwsSigner`] of the application's |
//! | `metrics` | no | counters and histograms of token requests, refreshes, resends, `ReauthRequired` and persistence failures, through the `metrics` facade, listed in the `metrics` module |
//! | `store` | no | the shared second level for many replicas: the `store::TokenStore` trait, and entries sealed with AES-256-GCM (aws-lc-rs) under a rotatable `store::Keyring`; `store::SharedSource` (and `store::SharedFactory` for a keyed layer) refreshes through it, one replica at a time |
//! | `redis` | no | `store::RedisStore`, the shared store on Redis (the `redis` crate's tokio connection manager) |
//!
//! Without `reqwest`, the layer is a tower layer only, and each grant needs an HTTP client
//! of the application's ([`oauth::HttpClient`], set with `http_client`).
//!
//! # Performance
//!
//! Reading the token takes no lock and allocates nothing: a check of the token cell's
//! snapshot, a clock read and the clone of a header value built once per token. Requests on
//! different threads write no cache line in common: the header exists in one copy per stripe
//! of threads, and each built service has its own options `Arc`. The retry's replay copy is
//! the main per-request cost and can be turned off ([`RefreshLayer::retry`], or [`NoRetry`]
//! for one request).
//!
//! Against the same request through a static header in the same run (medians of three to
//! five runs, `BENCHMARKS.md` in the repository):
//!
//! | | retry off | retry on |
//! |---|---|---|
//! | tower, against tower-http's `SetRequestHeader` (`benches/hot_path.rs`) | 1.18x | 1.68x |
//! | tower, an empty request, against tower-http's `AddAuthorization` | 1.34x | 1.58x |
//! | reqwest-middleware, against a static-header middleware | 1.18x | 1.40x |
//! | throughput of two threads over one (`benches/threads.rs`; an `RwLock`'d token: 1.49x) | 1.91x | 1.87x |
//!
//! 10,000 callers crossing expiry at once make one token request and wait one refresh
//! (`benches/stampede.rs`), and a request whose token is in its refresh-ahead window costs
//! what a fresh one does while the refresh runs (`benches/refresh_ahead.rs`: 1.04x).
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88 (edition 2024, let chains).

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod cell;
pub mod classify;
pub mod dpop;
mod error;
mod extension;
mod future;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod keyed;
mod layer;
// With the feature, the instruments' documentation; without it, functions that do nothing.
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod oauth;
mod persist;
mod replay;
#[cfg(feature = "reqwest")]
mod reqwest;
mod resend;
mod revocation;
mod service;
mod shared;
mod source;
#[cfg(feature = "store")]
pub mod store;
mod token;

pub use body::RefreshBody;
pub use cell::Stats;
pub use error::{
    ConfigurationError, InsecureTransport, ReauthRequired, RefreshError, RefreshErrorKind,
    TransientError, TransientKind,
};
pub use extension::{NoRetry, RetryStatus, SkipAuth};
pub use future::ResponseFuture;
pub use layer::{RefreshLayer, RefreshLayerBuilder};
pub use oauth::{ClientCredentials, RefreshTokenGrant};
pub use oauth::{JwtBearer, TokenExchange};
pub use persist::TokenUpdate;
pub use revocation::{RevocationError, RevocationRequest, Revoke};
pub use service::Refresh;
pub use source::{BoxFuture, SourceFn, TokenRequest, TokenSource, source_fn};
pub use token::{AccessToken, ClientSecret, RefreshToken, TokenSet};

/// The error type of the tower service: refresh errors and the inner service's own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
