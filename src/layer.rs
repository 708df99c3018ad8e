//! [`RefreshLayer`]: the value users hold, clone and configure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::cell::{Stats, TokenCell};
use crate::classify::{ClassifyRejection, DefaultClassifier};
use crate::error::RefreshError;
use crate::service::Refresh;
use crate::source::TokenSource;
use crate::token::TokenSet;

/// Keeps an OAuth 2.0 access token fresh for the requests of the services it wraps.
///
/// # Clone
///
/// Cloning this layer does not create a new token cell: every clone, and every service built
/// from one, shares one token, one refresh and one set of stats. Add one clone to a tower
/// stack and another to a reqwest client, and they refresh together.
///
/// The timing setters ([`refresh_ahead`](Self::refresh_ahead),
/// [`refresh_timeout`](Self::refresh_timeout)) change that shared cell. The request setters
/// ([`classifier`](Self::classifier), [`retry`](Self::retry),
/// [`allow_insecure_http`](Self::allow_insecure_http)) belong to the value they are called
/// on and the clones made from it afterwards.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh::{AccessToken, RefreshLayer, TokenSet, source_fn};
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let source = source_fn(|_request| async {
///     Ok(TokenSet::new(AccessToken::new("at-1")).with_expires_in(Duration::from_secs(3600)))
/// });
/// let layer = RefreshLayer::new(source).refresh_ahead(Duration::from_secs(60));
/// let api = tower::service_fn(|request: http::Request<String>| async move {
///     let auth = request.headers()[http::header::AUTHORIZATION].clone();
///     Ok::<_, std::convert::Infallible>(http::Response::new(auth.to_str().unwrap().to_owned()))
/// });
/// let service = ServiceBuilder::new().layer(layer.clone()).service(api);
///
/// let response = service.oneshot(http::Request::new(String::new())).await?;
/// let body = response.into_body().collect().await?.to_bytes();
/// assert_eq!(body, "Bearer at-1");
/// assert_eq!(layer.stats().refreshes, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RefreshLayer {
    pub(crate) shared: Arc<Shared>,
}

/// What a service needs per request: the shared cell and this layer value's options. One
/// `Arc`, so a request clones one pointer.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) cell: Arc<TokenCell>,
    pub(crate) classifier: Arc<dyn ClassifyRejection>,
    pub(crate) retry: bool,
    pub(crate) allow_insecure_http: bool,
}

impl RefreshLayer {
    /// A layer whose tokens come from `source`. No token is fetched until the first request
    /// (or [`refresh`](Self::refresh)).
    pub fn new(source: impl TokenSource) -> Self {
        Self::from_arc(Arc::new(source))
    }

    /// A layer over a shared or boxed source.
    pub fn from_arc(source: Arc<dyn TokenSource>) -> Self {
        RefreshLayer {
            shared: Arc::new(Shared {
                cell: Arc::new(TokenCell::new(source)),
                classifier: Arc::new(DefaultClassifier),
                retry: true,
                allow_insecure_http: false,
            }),
        }
    }

    /// How long before expiry a background refresh starts (default 30 s). Requests never wait
    /// for it. The window is jittered down by up to a fifth, and never exceeds half the
    /// token's lifetime, so a token that lives 3 s is refreshed after about 1.5 s.
    pub fn refresh_ahead(self, window: Duration) -> Self {
        self.shared.cell.configure(|s| s.refresh_ahead = window);
        self
    }

    /// The longest one refresh may take, resends included (default 30 s). The refresh runs in
    /// its own task: a caller that gives up sooner does not cancel it.
    pub fn refresh_timeout(self, timeout: Duration) -> Self {
        self.shared.cell.configure(|s| s.refresh_timeout = timeout);
        self
    }

    /// Replaces the rule that decides whether a response means the token was rejected.
    /// See [`classify`](crate::classify).
    pub fn classifier(mut self, classifier: impl ClassifyRejection) -> Self {
        Arc::make_mut(&mut self.shared).classifier = Arc::new(classifier);
        self
    }

    /// Whether a request whose token was rejected is resent once (default `true`).
    pub fn retry(mut self, retry: bool) -> Self {
        Arc::make_mut(&mut self.shared).retry = retry;
        self
    }

    /// Allows sending the token over plain `http://` to hosts other than loopback (default
    /// `false`: such requests fail with [`InsecureTransport`](crate::InsecureTransport)).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        Arc::make_mut(&mut self.shared).allow_insecure_http = allow;
        self
    }

    /// Refreshes now, joining a refresh already running, and waits for its outcome.
    ///
    /// This is an explicit request, so it does not wait out the cooldown after a failure or
    /// a server's `Retry-After`, which only hold back the refreshes the layer starts itself.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        self.shared.cell.refresh_now().await
    }

    /// Marks the current token as rejected: the next request waits for a new one.
    pub fn invalidate(&self) {
        self.shared.cell.invalidate();
    }

    /// Installs tokens obtained elsewhere, typically after a new sign-in that answered
    /// [`ReauthRequired`](crate::ReauthRequired). Their lifetime counts from now.
    pub fn set_tokens(&self, tokens: TokenSet) -> Result<(), RefreshError> {
        self.shared.cell.seed(tokens)
    }

    /// Counters and state of the shared token cell.
    pub fn stats(&self) -> Stats {
        self.shared.cell.stats()
    }
}

impl<S> Layer<S> for RefreshLayer {
    type Service = Refresh<S>;

    /// Each service gets its own copy of the options (the token cell stays shared): its
    /// requests then count references in their own `Arc`, not in one that the services of
    /// every thread write.
    fn layer(&self, inner: S) -> Self::Service {
        Refresh::new(inner, Arc::new(Shared::clone(&self.shared)))
    }
}

impl fmt::Debug for RefreshLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshLayer")
            .field("cell", &self.shared.cell)
            .field("retry", &self.shared.retry)
            .field("allow_insecure_http", &self.shared.allow_insecure_http)
            .finish_non_exhaustive()
    }
}
