//! [`RefreshLayer`]: the value users hold, clone and configure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::cell::{MAX_SPAN, Schedule, Stats, TokenCell};
use crate::classify::ClassifyRejection;
use crate::error::RefreshError;
#[cfg(doc)]
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, Revoke};
use crate::service::Refresh;
use crate::shared::{Classifier, Options, Shared};
use crate::source::TokenSource;
use crate::token::{AccessToken, TokenSet};

/// Keeps an OAuth 2.0 access token fresh for the requests of the services it wraps.
///
/// # Clone
///
/// Cloning this layer does not create a new token cell: every clone, and every service built
/// from one, shares one token, one refresh and one set of stats. Add one clone to a tower
/// stack and another to a reqwest client, and they refresh together.
///
/// Two kinds of settings, set in two places:
///
/// - **The token cell's**, shared by every clone: when to refresh
///   ([`refresh_ahead`](RefreshLayerBuilder::refresh_ahead)) and how long a refresh may take
///   ([`refresh_timeout`](RefreshLayerBuilder::refresh_timeout)). They are set once, on the
///   [`builder`](Self::builder), before the cell exists, so they apply to every token the
///   cell holds, the source's initial tokens included, and no clone can change them under
///   another.
/// - **The request path's**, per layer value: the [`classifier`](Self::classifier), the
///   [`retry`](Self::retry) and [`allow_insecure_http`](Self::allow_insecure_http). They change
///   the value they are called on (and the clones made from it afterwards), never other
///   clones, so a tower stack and a reqwest client can share a token and classify
///   differently.
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
/// let layer = RefreshLayer::builder(source)
///     .refresh_ahead(Duration::from_secs(60))
///     .build();
/// let api = tower::service_fn(|request: http::Request<String>| async move {
///     let auth = request.headers()[http::header::AUTHORIZATION].clone();
///     Ok::<_, std::convert::Infallible>(http::Response::new(auth.to_str().unwrap().to_owned()))
/// });
/// // This clone shares the token, and never resends.
/// let service = ServiceBuilder::new().layer(layer.clone().retry(false)).service(api);
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

impl RefreshLayer {
    /// A layer whose tokens come from `source`, with the default settings. No token is
    /// fetched until the first request (or [`refresh`](Self::refresh)).
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A layer over a shared or boxed source, with the default settings.
    pub fn from_arc(source: Arc<dyn TokenSource>) -> Self {
        RefreshLayerBuilder::from_arc(source).build()
    }

    /// Starts a layer whose token cell's settings differ from the defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oauth_refresh::{ClientCredentials, RefreshLayer};
    ///
    /// let layer = RefreshLayer::builder(ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t"))
    ///     .refresh_ahead(Duration::from_secs(5 * 60))
    ///     .refresh_timeout(Duration::from_secs(10))
    ///     .build();
    /// # drop(layer);
    /// ```
    pub fn builder(source: impl TokenSource) -> RefreshLayerBuilder {
        RefreshLayerBuilder::from_arc(Arc::new(source))
    }

    /// Replaces the rule that decides whether a response means the token was rejected, for
    /// this value and the clones made from it. See [`classify`](crate::classify).
    pub fn classifier(mut self, classifier: impl ClassifyRejection) -> Self {
        Arc::make_mut(&mut self.shared).options.classifier =
            Classifier::Custom(Arc::new(classifier));
        self
    }

    /// Whether a request whose token was rejected is resent once (default `true`), for this
    /// value and the clones made from it.
    pub fn retry(mut self, retry: bool) -> Self {
        Arc::make_mut(&mut self.shared).options.retry = retry;
        self
    }

    /// Teaches the tower service to replay request bodies of type `B`, for this value and the
    /// clones made from it: `clone` returns a copy to resend, or `None` for a body it cannot
    /// copy (which is then sent once, its rejection marked
    /// [`BodyNotReplayable`](crate::RetryStatus::BodyNotReplayable)).
    ///
    /// The crate replays `Full<Bytes>`, `Empty<Bytes>`, `Bytes`, `String`, `Vec<u8>`,
    /// `&'static str`, `&'static [u8]` and `()` by itself; this is for the rest: a body type
    /// of the application's own, or a boxed body (axum's `Body`, `BoxBody`) whose size hint
    /// says it is empty. A later call for the same type replaces the earlier one. Looking the
    /// function up costs a request whose body type is not on the crate's list one scan of
    /// the few types taught. The reqwest middleware replays whatever
    /// `reqwest::Request::try_clone` copies and does not use this.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body as _;
    /// use http_body_util::{BodyExt, Empty, combinators::BoxBody};
    /// use oauth_refresh::{RefreshLayer, source_fn, AccessToken, TokenSet};
    ///
    /// type Body = BoxBody<Bytes, std::convert::Infallible>;
    ///
    /// let source = source_fn(|_| async { Ok(TokenSet::new(AccessToken::new("at"))) });
    /// let layer = RefreshLayer::new(source).replay_body(|body: &Body| {
    ///     // A boxed body cannot be copied, but an empty one can be made again.
    ///     (body.size_hint().exact() == Some(0)).then(|| Empty::new().boxed())
    /// });
    /// # drop(layer);
    /// ```
    pub fn replay_body<B: Send + 'static>(
        mut self,
        clone: impl Fn(&B) -> Option<B> + Send + Sync + 'static,
    ) -> Self {
        let options = &mut Arc::make_mut(&mut self.shared).options;
        options.replayers = options.replayers.with(clone);
        self
    }

    /// Allows sending the token over plain `http://` to hosts other than loopback (default
    /// `false`: such requests fail with [`InsecureTransport`](crate::InsecureTransport)), for
    /// this value and the clones made from it.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        Arc::make_mut(&mut self.shared).options.allow_insecure_http = allow;
        self
    }

    /// Refreshes now, joining a refresh already running, and waits for its outcome.
    ///
    /// This is an explicit request, so it does not wait out the cooldown after a failure or
    /// a server's `Retry-After`, which only hold back the refreshes the layer starts itself.
    /// Outside a tokio runtime it fails at once with a
    /// [`ConfigurationError`](crate::ConfigurationError): the refresh runs as a tokio task.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        self.shared.cell.refresh_now().await
    }

    /// The current access token, as a request through this layer would get it: at once while
    /// it is valid (inside the refresh-ahead window, a background refresh starts), else once
    /// the one shared refresh ends. Cooldowns after failures and a refused grant hold as
    /// they do for requests: no call here drives the token endpoint harder than requests do.
    ///
    /// For code that sends the token by other means than a request through the layer, such
    /// as a [`TokenExchange`](crate::oauth::TokenExchange) presenting it as its subject token
    /// (see [`SecurityToken::from_layer`](crate::oauth::SecurityToken::from_layer)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use oauth_refresh::{AccessToken, RefreshLayer, TokenSet, source_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), oauth_refresh::RefreshError> {
    /// let layer = RefreshLayer::new(source_fn(|_request| async {
    ///     Ok(TokenSet::new(AccessToken::new("at-1")).with_expires_in(Duration::from_secs(3600)))
    /// }));
    /// assert_eq!(layer.access_token().await?.secret(), "at-1");
    /// assert_eq!(layer.access_token().await?.secret(), "at-1");
    /// assert_eq!(layer.stats().refreshes, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn access_token(&self) -> Result<AccessToken, RefreshError> {
        let (access_token, _generation) = self.shared.cell.access_token().await?;
        Ok(access_token)
    }

    /// Marks the current token as rejected: the next request waits for a new one.
    pub fn invalidate(&self) {
        self.shared.cell.invalidate();
    }

    /// Installs tokens obtained elsewhere, typically after a new sign-in that answered
    /// [`ReauthRequired`](crate::ReauthRequired). Their lifetime counts from now; the
    /// refresh-ahead window applies to them as to any other.
    ///
    /// The source's persistence hook receives them, in order with the refreshes before and
    /// after: at once if no refresh is running (within a tokio runtime), else when it ends.
    pub fn set_tokens(&self, tokens: TokenSet) -> Result<(), RefreshError> {
        self.shared.cell.seed(tokens)
    }

    /// Signs the user out: discards the tokens of every clone of this layer, tells the
    /// persistence hook to remove the stored ones ([`TokenUpdate::is_removal`]), and revokes
    /// at the server what `revoke` says ([`TokenSource::revoke`]; for a
    /// [`RefreshTokenGrant`](crate::RefreshTokenGrant), RFC 7009 at its
    /// [`revocation_url`](crate::RefreshTokenGrant::revocation_url)).
    ///
    /// From the call on, requests fail with [`ReauthRequired`](crate::ReauthRequired)
    /// `signed_out` without a token request, [`refresh`](Self::refresh) too, until
    /// [`set_tokens`](Self::set_tokens) installs the tokens of a new sign-in. A refresh
    /// running meanwhile installs nothing: the sign-out waits for it and revokes the refresh
    /// token it may have rotated to. A new sign-in installed while the sign-out still waits
    /// keeps its tokens; the grant signed out is revoked all the same.
    ///
    /// If the server cannot be told (unreachable, 5xx, no revocation endpoint configured),
    /// the tokens are gone all the same, locally and from the store, and the error says
    /// what failed: the server may honour them until they expire. The revocation runs in a
    /// task of its own, within the refresh timeout: a caller that gives up does not cancel
    /// it.
    ///
    /// Over a `store::SharedSource` (feature `store`), the other replicas are signed out too,
    /// at their next refresh.
    ///
    /// ```
    /// use oauth_refresh::{ReauthRequired, RefreshLayer, RefreshTokenGrant, Revoke, TokenUpdate};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// # use bytes::Bytes;
    /// # use http_body_util::{BodyExt, Full};
    /// # use oauth_refresh::{BoxFuture, TransientError, oauth::{HttpClient, ResponseBody}};
    /// # /// The revocation endpoint: 200 to any token, as RFC 7009 answers.
    /// # struct Server;
    /// # impl HttpClient for Server {
    /// #     fn send(&self, request: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
    /// #         assert_eq!(request.uri().path(), "/oauth2/revoke");
    /// #         let body = Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync();
    /// #         Box::pin(async move { Ok(http::Response::new(body)) })
    /// #     }
    /// # }
    /// # async fn delete_stored_tokens() -> std::io::Result<()> { Ok(()) }
    /// # async fn save(_: TokenUpdate) -> std::io::Result<()> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let grant = RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", "rt-stored")
    ///     .revocation_url("https://login.example.com/oauth2/revoke")
    ///     .persist(|update: TokenUpdate| async move {
    ///         match update.is_removal() {
    ///             true => delete_stored_tokens().await,
    ///             false => save(update).await,
    ///         }
    ///     })
    /// #   .http_client(Server)
    ///     ;
    /// let layer = RefreshLayer::new(grant);
    ///
    /// layer.sign_out(Revoke::RefreshToken).await?;
    ///
    /// let api = tower::service_fn(|_: http::Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// let service = ServiceBuilder::new().layer(layer.clone()).service(api);
    /// let err = service.oneshot(http::Request::new(String::new())).await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<ReauthRequired>().unwrap().error(), "signed_out");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sign_out(&self, revoke: Revoke) -> Result<(), RevocationError> {
        self.shared.cell.sign_out(revoke).await
    }

    /// Counters and state of the shared token cell.
    pub fn stats(&self) -> Stats {
        self.shared.cell.stats()
    }
}

/// The settings of a layer's token cell, shared by every clone of the layer it builds. From
/// [`RefreshLayer::builder`].
///
/// Each setting applies to every token the cell holds, the source's initial tokens
/// included, whatever the order of the calls. Durations beyond a year are taken as a year.
pub struct RefreshLayerBuilder {
    source: Arc<dyn TokenSource>,
    schedule: Schedule,
}

impl RefreshLayerBuilder {
    /// A builder over a shared or boxed source.
    pub fn from_arc(source: Arc<dyn TokenSource>) -> Self {
        RefreshLayerBuilder {
            source,
            schedule: Schedule::default(),
        }
    }

    /// How long before expiry a background refresh starts (default 30 s). Requests never wait
    /// for it. The window is jittered down by up to a fifth, and never exceeds half the
    /// token's lifetime, so a token that lives 3 s is refreshed after about 1.5 s.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.schedule.refresh_ahead = window.min(MAX_SPAN);
        self
    }

    /// The longest one refresh may take, resends included (default 30 s). The refresh runs in
    /// its own task: a caller that gives up sooner does not cancel it.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.schedule.refresh_timeout = timeout.min(MAX_SPAN);
        self
    }

    /// The layer, with its token cell. The source's initial tokens, if any, are installed
    /// now, under these settings.
    pub fn build(self) -> RefreshLayer {
        let cell = Arc::new(TokenCell::new(self.source, self.schedule));
        RefreshLayer {
            shared: Arc::new(Shared {
                dpop: cell.dpop().is_some(),
                cell,
                options: Options::default(),
            }),
        }
    }
}

impl fmt::Debug for RefreshLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshLayerBuilder")
            .field("source", &self.source)
            .field("refresh_ahead", &self.schedule.refresh_ahead)
            .field("refresh_timeout", &self.schedule.refresh_timeout)
            .finish()
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
            .field("retry", &self.shared.options.retry)
            .field(
                "allow_insecure_http",
                &self.shared.options.allow_insecure_http,
            )
            .finish_non_exhaustive()
    }
}
