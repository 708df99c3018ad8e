//! Where a key's token source comes from: the [`SourceFactory`] a keyed layer calls on a key's
//! first use.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::BoxError;
use crate::error::RefreshError;
use crate::oauth::{ClientCredentials, TokenParams};
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, RevocationRequest};
use crate::source::{BoxFuture, TokenRequest, TokenSource};
use crate::token::{RefreshToken, TokenSet};

/// Makes the [`TokenSource`] of a key, on the key's first use (and again after its cell was
/// evicted): for example a [`RefreshTokenGrant`](crate::RefreshTokenGrant) from the refresh
/// token the application stored for a user.
///
/// `Ok(None)` says the key is unknown: the request fails with a [`KeyError`](super::KeyError),
/// as it does when the factory fails. Neither is ever answered with another key's token.
///
/// A closure can be a factory: see [`factory_fn`].
pub trait SourceFactory<K>: Send + Sync + 'static {
    /// The source of `key`'s tokens, `None` if there is no such key.
    fn source(&self, key: K) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>>;

    /// Stores the tokens of `key` after a change, as [`TokenSource::persist`] does for one
    /// token: it runs after the key's own source's hook, with the key. The default stores
    /// nothing.
    fn persist(&self, key: &K, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        let _ = (key, update);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Makes a [`SourceFactory`] of an async closure, as `tower::service_fn` makes a service of
/// one: `f` gets the key (a clone) and returns the key's source, or `None` for an unknown key.
///
/// ```
/// use oauth_refresh::keyed::factory_fn;
/// use oauth_refresh::{BoxError, RefreshTokenGrant, TokenSource};
///
/// # async fn stored_refresh_token(_: &str) -> Result<Option<String>, BoxError> { Ok(None) }
/// let factory = factory_fn(|user: String| async move {
///     let Some(refresh_token) = stored_refresh_token(&user).await? else {
///         return Ok(None);
///     };
///     let grant = RefreshTokenGrant::new("https://login.example.com/token", "web-app", refresh_token);
///     Ok(Some(Box::new(grant) as Box<dyn TokenSource>))
/// });
/// # drop(factory);
/// ```
pub fn factory_fn<K, F, Fut>(f: F) -> FactoryFn<F>
where
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Box<dyn TokenSource>>, BoxError>> + Send + 'static,
{
    FactoryFn(f)
}

/// A [`SourceFactory`] made of a closure by [`factory_fn`].
#[derive(Clone)]
pub struct FactoryFn<F>(F);

impl<K, F, Fut> SourceFactory<K> for FactoryFn<F>
where
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Box<dyn TokenSource>>, BoxError>> + Send + 'static,
{
    fn source(&self, key: K) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        Box::pin((self.0)(key))
    }
}

impl<F> fmt::Debug for FactoryFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FactoryFn").finish_non_exhaustive()
    }
}

/// A key's source as its cell holds it: the factory's source, and the factory's own hook
/// called with the key after the source's.
pub(super) struct KeyedSource<K> {
    pub(super) key: K,
    pub(super) source: Box<dyn TokenSource>,
    pub(super) factory: Arc<dyn SourceFactory<K>>,
}

impl<K: Send + Sync + 'static> TokenSource for KeyedSource<K> {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        self.source.fetch(request)
    }

    fn grant(&self) -> &str {
        self.source.grant()
    }

    fn host(&self) -> Option<&str> {
        self.source.host()
    }

    fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.source.dpop_key()
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.source.initial_refresh_token()
    }

    fn initial_tokens(&self) -> Option<TokenSet> {
        self.source.initial_tokens()
    }

    fn persist(&self, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        let own = self.source.persist(update);
        let keyed = self.factory.persist(&self.key, update);
        Box::pin(async move {
            // Both run even if the first fails: each is a store the application relies on.
            let own = own.await;
            let keyed = keyed.await;
            own.and(keyed)
        })
    }

    fn revoke(&self, request: RevocationRequest) -> BoxFuture<'_, Result<(), RevocationError>> {
        self.source.revoke(request)
    }
}

/// The key stays out of `Debug`: it may name a user.
impl<K> fmt::Debug for KeyedSource<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedSource")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A keyed layer over client credentials, keyed by what each request asks its token for:
/// the key's source is the grant [`with_params`](ClientCredentials::with_params) of the key.
///
/// ```
/// use oauth_refresh::ClientCredentials;
/// use oauth_refresh::keyed::KeyedRefreshLayer;
/// use oauth_refresh::oauth::TokenParams;
///
/// let layer = KeyedRefreshLayer::new(ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t"));
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(TokenParams::new().audience("https://orders.example.com"));
/// # drop((layer, request));
/// ```
impl SourceFactory<TokenParams> for ClientCredentials {
    fn source(
        &self,
        params: TokenParams,
    ) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        let grant: Box<dyn TokenSource> = Box::new(self.with_params(&params));
        Box::pin(std::future::ready(Ok(Some(grant))))
    }
}
