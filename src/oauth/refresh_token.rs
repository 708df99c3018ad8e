//! The refresh token grant (RFC 6749 §6), rotation included.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::discovery::ServerMetadata;
use super::endpoint::{Endpoint, UrlForDebug};
use super::revocation::{self, RevocationUrl};
use crate::BoxError;
use crate::error::{ReauthRequired, RefreshError};
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, RevocationRequest};
use crate::source::{BoxFuture, TokenRequest, TokenSource};
use crate::token::{AccessToken, ClientSecret, RefreshToken, TokenSet};

pub(crate) type PersistHook =
    dyn Fn(TokenUpdate) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;

/// Keeps a user's access token alive with a refresh token (`grant_type=refresh_token`).
///
/// The server may rotate the refresh token on every use. The token cell always presents the
/// newest one it received, keeps the old one when an answer carries none, and never sends a
/// refresh request twice once it may have reached the server (a resent rotated token can trip
/// the server's reuse detection and revoke the whole sign-in).
///
/// A [`persist`](Self::persist) hook stores each new token set, so the next run of the
/// program starts from the current refresh token rather than one the server has retired.
///
/// ```
/// use oauth_refresh::{RefreshLayer, RefreshTokenGrant, TokenUpdate};
///
/// # fn load() -> String { "rt-stored".into() }
/// # async fn save(_: TokenUpdate) -> std::io::Result<()> { Ok(()) }
/// let grant = RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", load())
///     .client_secret("s3cr3t")
///     .persist(|update: TokenUpdate| save(update));
/// let layer = RefreshLayer::new(grant);
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct RefreshTokenGrant {
    endpoint: Endpoint,
    refresh_token: Option<RefreshToken>,
    scopes: Vec<String>,
    initial: Option<(TokenSet, Instant)>,
    persist: Option<Arc<PersistHook>>,
    revocation_url: RevocationUrl,
}

impl RefreshTokenGrant {
    /// A grant for the public client `client_id` that starts from a stored `refresh_token`.
    /// Add [`client_secret`](Self::client_secret) for a confidential client.
    pub fn new(
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
        refresh_token: impl Into<RefreshToken>,
    ) -> Self {
        Self::from_parts(
            Endpoint::new(token_url.as_ref(), client_id.into()),
            Some(refresh_token.into()),
            None,
        )
    }

    pub(crate) fn from_parts(
        endpoint: Endpoint,
        refresh_token: Option<RefreshToken>,
        initial: Option<(TokenSet, Instant)>,
    ) -> Self {
        RefreshTokenGrant {
            endpoint,
            refresh_token,
            scopes: Vec::new(),
            initial,
            persist: None,
            revocation_url: None,
        }
    }

    /// A grant at the endpoints of `metadata` (from [`ServerMetadata::discover`]): its token
    /// endpoint, and its revocation endpoint if it has one, for
    /// [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out).
    ///
    /// ```
    /// use oauth_refresh::RefreshTokenGrant;
    /// use oauth_refresh::oauth::ServerMetadata;
    ///
    /// # async fn run() -> Result<(), oauth_refresh::RefreshError> {
    /// let metadata = ServerMetadata::discover("https://login.example.com").await?;
    /// let grant = RefreshTokenGrant::from_metadata(&metadata, "my-app", "rt-stored");
    /// # drop(grant);
    /// # Ok(())
    /// # }
    /// # drop(run());
    /// ```
    pub fn from_metadata(
        metadata: &ServerMetadata,
        client_id: impl Into<String>,
        refresh_token: impl Into<RefreshToken>,
    ) -> Self {
        let grant = Self::new(&metadata.token_endpoint, client_id, refresh_token);
        match &metadata.revocation_endpoint {
            Some(url) => grant.revocation_url(url),
            None => grant,
        }
    }

    /// The server's revocation endpoint (RFC 7009, `revocation_endpoint` in its metadata),
    /// where [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out) revokes the tokens.
    /// Without it, a sign-out discards them locally and reports that the server was not
    /// told. The client authenticates there as at the token endpoint.
    ///
    /// ```
    /// use oauth_refresh::RefreshTokenGrant;
    ///
    /// let grant = RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", "rt-stored")
    ///     .revocation_url("https://login.example.com/oauth2/revoke");
    /// assert!(format!("{grant:?}").contains("/oauth2/revoke"));
    /// ```
    pub fn revocation_url(mut self, url: impl AsRef<str>) -> Self {
        self.revocation_url = revocation::parse(url.as_ref());
        self
    }

    /// Sets the revocation URL a sign-in flow found (device authorization, discovery).
    pub(crate) fn with_revocation_url(mut self, url: RevocationUrl) -> Self {
        self.revocation_url = url;
        self
    }

    /// Sets a persistence hook already made (one a sign-in flow called with the first
    /// tokens).
    pub(crate) fn with_persist_hook(mut self, hook: Option<Arc<PersistHook>>) -> Self {
        self.persist = hook;
        self
    }

    /// The client secret of a confidential client.
    pub fn client_secret(mut self, client_secret: impl Into<ClientSecret>) -> Self {
        self.endpoint.client_secret = Some(client_secret.into());
        self
    }

    /// Asks for a narrower scope than the one granted (RFC 6749 §6); may be given more than
    /// once.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Starts from a stored access token too, so the first request needs no refresh.
    /// `expires_at` is wall-clock time, as it was persisted; it is converted once, here.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use oauth_refresh::{RefreshLayer, RefreshTokenGrant};
    ///
    /// let expires_at = SystemTime::now() + Duration::from_secs(600);
    /// let grant = RefreshTokenGrant::new("https://login.example.com/oauth2/token", "my-app", "rt-stored")
    ///     .initial_access_token("at-stored", expires_at);
    /// let layer = RefreshLayer::new(grant);
    /// // The stored token is in use at once: no token request yet.
    /// assert_eq!(layer.stats().refreshes, 0);
    /// assert!(layer.stats().time_to_expiry.is_some());
    /// ```
    pub fn initial_access_token(
        mut self,
        access_token: impl Into<AccessToken>,
        expires_at: SystemTime,
    ) -> Self {
        let mut tokens = TokenSet::new(access_token.into());
        tokens.expires_in = Some(
            expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        );
        tokens.refresh_token = self.refresh_token.clone();
        self.initial = Some((tokens, Instant::now()));
        self
    }

    /// Stores the tokens each time they change: `hook(update)` receives a [`TokenUpdate`]
    /// whose `refresh_token` is always the one to present next (rotated or kept), with the
    /// one it replaces, for a compare-and-swap store.
    ///
    /// The hook runs whenever the held refresh token changes, an answer that failed but
    /// rotated it included, and after every refresh: after the token is swapped in and
    /// before the requests waiting for it are released, within the refresh's time budget.
    /// If it fails or times out, the new token is used all the same; the failure is logged
    /// and counted in [`Stats::persist_failures`](crate::Stats::persist_failures).
    ///
    /// After [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out), it receives a removal
    /// ([`TokenUpdate::is_removal`]): delete the stored tokens rather than store new ones.
    pub fn persist<F, Fut, E>(mut self, hook: F) -> Self
    where
        F: Fn(TokenUpdate) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.persist = Some(Arc::new(move |update| {
            let stored = hook(update);
            Box::pin(async move { stored.await.map_err(Into::into) })
        }));
        self
    }

    /// The refresh token this grant starts from, if it has one: store it after a sign-in.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    super::endpoint_setters!();
}

impl TokenSource for RefreshTokenGrant {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            let Some(refresh_token) = request.refresh_token else {
                let mut error = ReauthRequired::new("missing_refresh_token")
                    .with_description("no refresh token is held: the server issued none");
                if let Some(host) = self.endpoint.host() {
                    error = error.with_host(host);
                }
                return Err(error.into());
            };
            let scope = self.scopes.join(" ");
            let mut params = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.secret()),
            ];
            if !scope.is_empty() {
                params.push(("scope", &scope));
            }
            // Once the request may have reached the server, it is never resent.
            self.endpoint.request(&params, false).await
        })
    }

    fn grant(&self) -> &str {
        "refresh_token"
    }

    fn host(&self) -> Option<&str> {
        self.endpoint.host()
    }

    fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.endpoint.dpop.as_ref().map(|dpop| &dpop.key)
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.refresh_token.clone()
    }

    fn initial_tokens(&self) -> Option<TokenSet> {
        let (tokens, obtained_at) = self.initial.as_ref()?;
        let mut tokens = tokens.clone();
        tokens.expires_in = tokens
            .expires_in
            .map(|lifetime| lifetime.saturating_sub(obtained_at.elapsed()));
        Some(tokens)
    }

    fn persist(&self, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        match &self.persist {
            Some(hook) => hook(update.clone()),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn revoke(&self, request: RevocationRequest) -> BoxFuture<'_, Result<(), RevocationError>> {
        Box::pin(revocation::revoke(
            &self.endpoint,
            &self.revocation_url,
            request,
        ))
    }
}

impl fmt::Debug for RefreshTokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrant")
            .field("endpoint", &self.endpoint)
            .field("refresh_token", &self.refresh_token)
            .field("scopes", &self.scopes)
            .field("persist", &self.persist.is_some())
            .field(
                "revocation_url",
                &self.revocation_url.as_ref().map(UrlForDebug),
            )
            .finish_non_exhaustive()
    }
}
