//! [`KeyedRefreshLayer`]: one layer value, a token cell per key.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::factory::SourceFactory;
use super::key::{KeyFrom, RequestHead};
use super::map::{Cells, Eviction};
use super::service::KeyedRefresh;
use crate::cell::{MAX_SPAN, Schedule, Stats, TokenCell};
use crate::classify::ClassifyRejection;
use crate::error::RefreshError;
use crate::revocation::{RevocationError, Revoke};
use crate::shared::{Classifier, Options};

/// Keeps a token fresh per key (a user, a tenant, an audience) for the requests of the
/// services it wraps. Each key has its own token cell, with every promise of
/// [`RefreshLayer`](crate::RefreshLayer)'s: one refresh at a time, in its own task; the retry
/// once on rejection; [`ReauthRequired`](crate::ReauthRequired) for that key alone;
/// persistence, with the key handed to [`SourceFactory::persist`].
///
/// A request names its key with an extension of type `K` (`request.extensions_mut().insert(key)`,
/// or reqwest-middleware's `with_extension`), or through a function of the request
/// ([`key_fn`](Self::key_fn)). A request that names no key, or whose key the factory does not
/// know, fails with a [`KeyError`](super::KeyError) and is not sent.
///
/// # Clone
///
/// Cloning this layer does not create new cells: every clone, and every service built from
/// one, shares the cells of every key. As with `RefreshLayer`, the cells' settings (refresh
/// window, timeout, eviction) are set once on the [`builder`](Self::builder), and the request
/// path's ([`classifier`](Self::classifier), [`retry`](Self::retry),
/// [`allow_insecure_http`](Self::allow_insecure_http), [`key_fn`](Self::key_fn)) per value.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
/// use oauth_refresh::{AccessToken, TokenSet, TokenSource, source_fn};
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// struct Tenant(&'static str);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = KeyedRefreshLayer::new(factory_fn(|tenant: Tenant| async move {
///     let source = source_fn(move |_request| async move {
///         let token = AccessToken::new(format!("token-of-{}", tenant.0));
///         Ok(TokenSet::new(token).with_expires_in(Duration::from_secs(3600)))
///     });
///     Ok(Some(Box::new(source) as Box<dyn TokenSource>))
/// }));
/// let api = tower::service_fn(|request: http::Request<String>| async move {
///     let auth = request.headers()[http::header::AUTHORIZATION].to_str().unwrap().to_owned();
///     Ok::<_, std::convert::Infallible>(http::Response::new(auth))
/// });
/// let service = ServiceBuilder::new().layer(layer.clone()).service(api);
///
/// let mut request = http::Request::new(String::new());
/// request.extensions_mut().insert(Tenant("acme"));
/// let response = service.oneshot(request).await?;
/// let body = response.into_body().collect().await?.to_bytes();
/// assert_eq!(body, "Bearer token-of-acme");
/// assert_eq!(layer.cells(), 1);
/// # Ok(())
/// # }
/// ```
pub struct KeyedRefreshLayer<K> {
    pub(super) cells: Arc<Cells<K>>,
    pub(super) keys: KeyFrom<K>,
    pub(super) options: Options,
}

impl<K> Clone for KeyedRefreshLayer<K> {
    fn clone(&self) -> Self {
        KeyedRefreshLayer {
            cells: self.cells.clone(),
            keys: self.keys.clone(),
            options: self.options.clone(),
        }
    }
}

impl<K> KeyedRefreshLayer<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// A layer whose cells' sources come from `factory`, with the default settings. No cell
    /// is made until a request (or [`refresh`](Self::refresh)) names its key.
    pub fn new(factory: impl SourceFactory<K>) -> Self {
        Self::builder(factory).build()
    }

    /// Starts a layer whose cells' settings differ from the defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
    ///
    /// let layer = KeyedRefreshLayer::<String>::builder(factory_fn(|_user: String| async { Ok(None) }))
    ///     .refresh_ahead(Duration::from_secs(60))
    ///     .idle_timeout(Duration::from_secs(15 * 60))
    ///     .max_cells(10_000)
    ///     .build();
    /// assert_eq!(layer.cells(), 0);
    /// ```
    pub fn builder(factory: impl SourceFactory<K>) -> KeyedRefreshLayerBuilder<K> {
        KeyedRefreshLayerBuilder {
            factory: Arc::new(factory),
            schedule: Schedule::default(),
            eviction: Eviction::default(),
        }
    }

    /// Derives each request's key with `key_fn` rather than reading it from an extension of
    /// type `K`: from the host (a tenant per domain), a header, or several extensions.
    /// `None` fails the request with a [`KeyError`](super::KeyError). Per layer value, as the
    /// request path's other options.
    ///
    /// ```
    /// use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
    ///
    /// let layer = KeyedRefreshLayer::new(factory_fn(|_tenant: String| async { Ok(None) }))
    ///     .key_fn(|request| request.host()?.strip_suffix(".api.example.com").map(str::to_owned));
    /// # drop(layer);
    /// ```
    pub fn key_fn(
        mut self,
        key_fn: impl Fn(&RequestHead<'_>) -> Option<K> + Send + Sync + 'static,
    ) -> Self {
        self.keys = KeyFrom::Function(Arc::new(key_fn));
        self
    }

    /// As [`RefreshLayer::classifier`](crate::RefreshLayer::classifier).
    pub fn classifier(mut self, classifier: impl ClassifyRejection) -> Self {
        self.options.classifier = Classifier::Custom(Arc::new(classifier));
        self
    }

    /// As [`RefreshLayer::retry`](crate::RefreshLayer::retry).
    pub fn retry(mut self, retry: bool) -> Self {
        self.options.retry = retry;
        self
    }

    /// As [`RefreshLayer::replay_body`](crate::RefreshLayer::replay_body).
    pub fn replay_body<B: Send + 'static>(
        mut self,
        clone: impl Fn(&B) -> Option<B> + Send + Sync + 'static,
    ) -> Self {
        self.options.replayers = self.options.replayers.with(clone);
        self
    }

    /// As [`RefreshLayer::allow_insecure_http`](crate::RefreshLayer::allow_insecure_http).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.options.allow_insecure_http = allow;
        self
    }

    /// Refreshes `key`'s token now (making its cell if there is none), or joins the refresh
    /// already running for it.
    pub async fn refresh(&self, key: &K) -> Result<(), KeyedRefreshError> {
        let cell = self.cells.resolve(key).await?;
        Ok(cell.refresh_now().await?)
    }

    /// Marks `key`'s current token rejected, if it has a cell: its next request waits for a
    /// refresh.
    pub fn invalidate(&self, key: &K) {
        if let Some(cell) = self.cells.existing(key) {
            cell.invalidate();
        }
    }

    /// Signs `key`'s user out, as [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out)
    /// does for a layer's one token: its tokens are discarded, the removal goes to the
    /// source's and the factory's persistence hooks, and the source revokes them at the
    /// server. A key without a cell gets one from the factory first, so that the stored
    /// refresh token is revoked too.
    ///
    /// The key's cell stays, signed out: its requests get
    /// [`ReauthRequired`](crate::ReauthRequired) `signed_out` without a token request until it
    /// is evicted or [`remove`](Self::remove)d; the factory then decides what the key's next
    /// request gets (the stored tokens are gone, so most factories answer "unknown key").
    ///
    /// ```
    /// use oauth_refresh::keyed::{KeyedRefreshError, KeyedRefreshLayer, factory_fn};
    /// use oauth_refresh::{RefreshTokenGrant, RevocationError, Revoke, TokenSource};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = KeyedRefreshLayer::new(factory_fn(|user: String| async move {
    ///     let grant = RefreshTokenGrant::new("https://login.example.com/token", "web-app", format!("rt-of-{user}"));
    ///     Ok(Some(Box::new(grant) as Box<dyn TokenSource>))
    /// }));
    /// // This grant has no revocation URL: the tokens are discarded here only, and the error
    /// // says the server was not told.
    /// let err = layer.sign_out(&"alice".to_owned(), Revoke::RefreshToken).await.unwrap_err();
    /// assert!(matches!(err, KeyedRefreshError::Revocation(RevocationError::Failed(_))));
    /// # }
    /// ```
    pub async fn sign_out(&self, key: &K, revoke: Revoke) -> Result<(), KeyedRefreshError> {
        let cell = self.cells.resolve(key).await?;
        Ok(cell.sign_out(revoke).await?)
    }

    /// Counters and state of `key`'s cell, if it has one.
    pub fn stats(&self, key: &K) -> Option<Stats> {
        self.cells.existing(key).as_deref().map(TokenCell::stats)
    }

    /// The cells held now (keys whose cell is being made included).
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Drops `key`'s cell now, if nothing is using it (no request, no refresh, nothing
    /// waiting for the store): its next request makes it again from the factory. `false` if
    /// it is in use and stays.
    pub fn remove(&self, key: &K) -> bool {
        self.cells.remove(key)
    }
}

/// A keyed layer's [`refresh`](KeyedRefreshLayer::refresh) or
/// [`sign_out`](KeyedRefreshLayer::sign_out) failed: the key's cell could not be made, or its
/// refresh or revocation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyedRefreshError {
    /// No cell for the key: see [`KeyError`](super::KeyError).
    Key(super::KeyError),
    /// The key's refresh failed.
    Refresh(RefreshError),
    /// The key's tokens were discarded, but not revoked at the server.
    Revocation(RevocationError),
}

impl fmt::Display for KeyedRefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyedRefreshError::Key(error) => fmt::Display::fmt(error, f),
            KeyedRefreshError::Refresh(error) => fmt::Display::fmt(error, f),
            KeyedRefreshError::Revocation(error) => fmt::Display::fmt(error, f),
        }
    }
}

/// Transparent, as `RefreshError` is: the variant's own error is the message and its
/// source the next link.
impl std::error::Error for KeyedRefreshError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyedRefreshError::Key(error) => std::error::Error::source(error),
            KeyedRefreshError::Refresh(error) => std::error::Error::source(error),
            KeyedRefreshError::Revocation(error) => std::error::Error::source(error),
        }
    }
}

impl From<super::KeyError> for KeyedRefreshError {
    fn from(error: super::KeyError) -> Self {
        KeyedRefreshError::Key(error)
    }
}

impl From<RevocationError> for KeyedRefreshError {
    fn from(error: RevocationError) -> Self {
        KeyedRefreshError::Revocation(error)
    }
}

impl From<RefreshError> for KeyedRefreshError {
    fn from(error: RefreshError) -> Self {
        KeyedRefreshError::Refresh(error)
    }
}

/// The settings of a keyed layer's cells, shared by every clone of the layer it builds.
pub struct KeyedRefreshLayerBuilder<K> {
    factory: Arc<dyn SourceFactory<K>>,
    schedule: Schedule,
    eviction: Eviction,
}

impl<K> KeyedRefreshLayerBuilder<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// As [`RefreshLayerBuilder::refresh_ahead`](crate::RefreshLayerBuilder::refresh_ahead),
    /// for every key.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.schedule.refresh_ahead = window.min(MAX_SPAN);
        self
    }

    /// As [`RefreshLayerBuilder::refresh_timeout`](crate::RefreshLayerBuilder::refresh_timeout),
    /// for every key.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.schedule.refresh_timeout = timeout.min(MAX_SPAN);
        self
    }

    /// A key's cell unused for this long is dropped (default 30 min), unless a refresh is
    /// running for it or its newest tokens have not reached the store. Its next request makes
    /// it again from the factory. Checked every quarter of it, on the tokio runtime of the
    /// first request.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.eviction.idle = idle.min(MAX_SPAN);
        self
    }

    /// Past this many cells (default 100,000), the least recently used ones that can go are
    /// dropped, down to seven eighths of it, as a new key comes in. Cells in use stay even
    /// past it.
    pub fn max_cells(mut self, max: usize) -> Self {
        self.eviction.max_cells = max.max(1);
        self
    }

    /// The layer, with no cell yet.
    pub fn build(self) -> KeyedRefreshLayer<K> {
        KeyedRefreshLayer {
            cells: Arc::new(Cells::new(self.factory, self.schedule, self.eviction)),
            keys: KeyFrom::Extension,
            options: Options::default(),
        }
    }
}

impl<K> fmt::Debug for KeyedRefreshLayerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRefreshLayerBuilder")
            .field("refresh_ahead", &self.schedule.refresh_ahead)
            .field("refresh_timeout", &self.schedule.refresh_timeout)
            .field("idle_timeout", &self.eviction.idle)
            .field("max_cells", &self.eviction.max_cells)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone> Layer<S> for KeyedRefreshLayer<K> {
    type Service = KeyedRefresh<S, K>;

    /// Each service gets its own copy of the options, as with `RefreshLayer`.
    fn layer(&self, inner: S) -> Self::Service {
        KeyedRefresh::new(
            inner,
            self.cells.clone(),
            self.keys.clone(),
            Arc::new(self.options.clone()),
        )
    }
}

/// No key and no token: the number of cells and the request path's options.
impl<K> fmt::Debug for KeyedRefreshLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRefreshLayer")
            .field("cells", &self.cells)
            .field("retry", &self.options.retry)
            .field("allow_insecure_http", &self.options.allow_insecure_http)
            .field(
                "key_from",
                &match self.keys {
                    KeyFrom::Extension => "extension",
                    KeyFrom::Function(_) => "function",
                },
            )
            .finish_non_exhaustive()
    }
}
