//! Many tokens in one layer: a token cell per key, for an application that calls APIs on
//! behalf of many users, tenants or audiences through one HTTP client.
//!
//! [`KeyedRefreshLayer`] holds one token cell per key, each with every promise of
//! [`RefreshLayer`](crate::RefreshLayer)'s single cell. Keys are the application's own type
//! (a user id, a tenant, a set of token parameters); a request names its key with an extension
//! of that type, or through a [`key_fn`](KeyedRefreshLayer::key_fn). A key's cell is made on
//! its first use by a [`SourceFactory`], which may be async (load a user's stored refresh
//! token from the application's database), and dropped when idle.
//!
//! A token is never sent on a request of another key: a request whose key has no cell yet
//! waits for the factory, and one whose key the factory does not know fails with a
//! [`KeyError`] without being sent.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
//! use oauth_refresh::{RefreshTokenGrant, TokenSource, TokenUpdate};
//!
//! #[derive(Clone, Debug, PartialEq, Eq, Hash)]
//! struct UserId(u64);
//!
//! # async fn load_refresh_token(_: &UserId) -> Result<Option<String>, tower::BoxError> { Ok(None) }
//! # async fn store_refresh_token(_: UserId, _: TokenUpdate) -> Result<(), std::io::Error> { Ok(()) }
//! let layer = KeyedRefreshLayer::builder(factory_fn(|user: UserId| async move {
//!     let Some(stored) = load_refresh_token(&user).await? else {
//!         return Ok(None); // never signed in: the request fails with a KeyError
//!     };
//!     let grant = RefreshTokenGrant::new("https://login.example.com/token", "web-app", stored)
//!         .persist(move |update| store_refresh_token(user.clone(), update));
//!     Ok(Some(Box::new(grant) as Box<dyn TokenSource>))
//! }))
//! .idle_timeout(Duration::from_secs(15 * 60))
//! .build();
//!
//! // Per request: `request.extensions_mut().insert(UserId(42))`.
//! # drop(layer);
//! ```

mod factory;
mod key;
mod layer;
mod map;
#[cfg(feature = "reqwest")]
mod reqwest;
mod service;

pub use factory::{FactoryFn, SourceFactory, factory_fn};
pub use key::{KeyError, RequestHead};
pub use layer::{KeyedRefreshError, KeyedRefreshLayer, KeyedRefreshLayerBuilder};
pub use service::{KeyedRefresh, KeyedResponseFuture};
