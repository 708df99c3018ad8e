//! [`SharedSource`]: a token source that refreshes through a [`TokenStore`], so that the
//! replicas of a service share one token and one refresh.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Keyring, LeaseOwner, StoreError, TokenStore, Written};
use crate::BoxError;
use crate::error::{RefreshError, TransientError, TransientKind};
use crate::keyed::SourceFactory;
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, RevocationRequest};
use crate::source::{BoxFuture, TokenRequest, TokenSource};
use crate::token::{AccessToken, RefreshToken, TokenSet};

/// The default lease: longer than the cell's default refresh timeout (30 s), as a lease must
/// be, so that a holder's refresh ends or times out before anyone else may start one.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// A stored token is taken only with at least this long to live (default): one about to
/// expire is refreshed instead.
const DEFAULT_MIN_LIFETIME: Duration = Duration::from_secs(30);

/// Writes of a sign-in or a sign-out tried before giving up on an entry that changes under
/// each of them.
const PUBLISH_ATTEMPTS: usize = 4;

/// Refresh tokens a signed-out entry names, the newest kept.
const MAX_SIGNED_OUT: usize = 8;

/// Wraps a [`TokenSource`] so that every refresh goes through a shared [`TokenStore`]: many
/// replicas, one token and one refresh per lifetime.
///
/// A refresh first reads the shared entry: if another replica wrote tokens this one has not
/// seen yet, with time to live, they are the answer and no token request is made. Otherwise
/// the refresh takes the entry's lease (one replica at a time), reads once more, presents the
/// entry's refresh token (the newest the fleet holds, so a rotating grant never sees an old
/// one), writes the answer by compare-and-swap and releases the lease. The lease is extended
/// while the token request runs. A replica that waits for another's lease hears of its write
/// through the store's notification.
///
/// When the store fails, the policy depends on the grant:
///
/// - a grant without a refresh token (client credentials, JWT bearer, token exchange) asks
///   the token endpoint itself: each replica then refreshes on its own until the store is
///   back, which costs token requests and nothing else;
/// - a grant with a refresh token does not refresh without the lease, since with rotation
///   two replicas presenting one refresh token revoke the grant: the refresh fails as
///   [`TransientKind::StoreUnavailable`], the cell keeps serving its valid token and tries
///   again later.
///
/// A sign-in and a sign-out on one replica reach the others through the entry:
///
/// - tokens installed with [`set_tokens`](crate::RefreshLayer::set_tokens) are written to it
///   (by the persistence that follows), so the other replicas take them at their next
///   refresh, and the fleet presents their refresh token from then on;
/// - a [`sign_out`](crate::RefreshLayer::sign_out) replaces it with one that holds no token and
///   names the refresh tokens signed out (the cell's and the entry's). A replica whose own
///   refresh token is one of them is signed out at its next refresh, with
///   [`ReauthRequired`](crate::ReauthRequired) `signed_out` and no token request, even if the
///   server was never told. A new sign-in's refresh token (a new cell's, a `set_tokens`) is
///   presented as usual.
///
/// The token cell around it stays the first level: requests read the cell, never the store.
///
/// ```
/// # #[cfg(feature = "redis")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use oauth_refresh::store::{Keyring, RedisStore, SharedSource, StoreKey};
/// use oauth_refresh::{ClientCredentials, RefreshLayer};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379/", "billing:").await?;
/// let keys = Keyring::new(StoreKey::new("2026-12", &[7u8; 32])?);
/// let grant = ClientCredentials::new("https://login.example.com/token", "billing", "s3cr3t");
/// let layer = RefreshLayer::new(SharedSource::new(grant, store, keys, "billing-api"));
/// # drop(layer);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "redis"))]
/// # fn main() {}
/// ```
pub struct SharedSource {
    inner: Box<dyn TokenSource>,
    store: Arc<dyn TokenStore>,
    keys: Arc<Keyring>,
    key: String,
    lease: Duration,
    min_lifetime: Duration,
    /// The entry version this replica last took or wrote: an entry of that version holds the
    /// tokens the cell has, which is why it refreshes.
    seen: Mutex<Option<u64>>,
    /// The refresh token of the last tokens this source answered, as the entry holds it: the
    /// cell's persistence of those tokens writes nothing more.
    answered: Mutex<Option<RefreshToken>>,
}

impl SharedSource {
    /// `inner`'s refreshes shared through `store` as the entry `key`, sealed with `keys`.
    ///
    /// Every replica sharing the credential gives the same `key` and keyring; another
    /// credential needs another key.
    pub fn new(
        inner: impl TokenSource,
        store: impl TokenStore,
        keys: Keyring,
        key: impl Into<String>,
    ) -> Self {
        Self::from_arcs(Box::new(inner), Arc::new(store), Arc::new(keys), key.into())
    }

    /// [`new`](Self::new) with a store and keyring shared with other sources (the keyed layer's
    /// cells share one of each).
    pub fn from_arcs(
        inner: Box<dyn TokenSource>,
        store: Arc<dyn TokenStore>,
        keys: Arc<Keyring>,
        key: String,
    ) -> Self {
        SharedSource {
            inner,
            store,
            keys,
            key,
            lease: DEFAULT_LEASE,
            min_lifetime: DEFAULT_MIN_LIFETIME,
            seen: Mutex::new(None),
            answered: Mutex::new(None),
        }
    }

    /// How long a refresh holds the entry's lease before it runs out by itself (default 60 s).
    /// Keep it longer than the layer's refresh timeout; it is extended while the token request
    /// runs, and a replica that dies holding it delays the others at most this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// A stored token is taken only with at least this long to live (default 30 s); set it
    /// to the layer's refresh-ahead window, so that a token taken from the store is FRESH.
    pub fn min_lifetime(mut self, min_lifetime: Duration) -> Self {
        self.min_lifetime = min_lifetime;
        self
    }

    fn seen(&self) -> Option<u64> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn see(&self, version: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        *seen = Some(seen.map_or(version, |seen| seen.max(version)));
    }

    fn answered(&self) -> Option<RefreshToken> {
        self.answered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The entry holds `refresh_token` as the tokens this source answers now.
    fn answer(&self, refresh_token: Option<RefreshToken>) {
        *self.answered.lock().unwrap_or_else(PoisonError::into_inner) = refresh_token;
    }

    /// The entry now: its version and what it holds (`None` if it does not open).
    async fn read(&self) -> Result<(Option<u64>, Option<Stored>), StoreError> {
        let Some(entry) = self.store.read(&self.key).await? else {
            return Ok((None, None));
        };
        let stored = match self.keys.open(&self.key, &entry.value) {
            Ok(plain) => Stored::decode(&plain),
            Err(error) => {
                // Written over by the next refresh; its content is never shown.
                tracing::warn!(key = %self.key, %error, "shared token entry refused");
                None
            }
        };
        Ok((Some(entry.version), stored))
    }

    async fn refresh(&self, request: TokenRequest) -> Result<TokenSet, RefreshError> {
        loop {
            let (version, stored) = match self.read().await {
                Ok(read) => read,
                Err(error) => return self.without_store(request, error).await,
            };
            if let (Some(version), Some(stored)) = (version, &stored)
                && Some(version) != self.seen()
                && let Some(tokens) = stored.usable(self.min_lifetime)
            {
                self.see(version);
                self.answer(tokens.refresh_token.clone());
                tracing::debug!(key = %self.key, version, "tokens taken from the shared store");
                return Ok(tokens);
            }
            if let Some(stored) = &stored
                && stored.refuses(request.refresh_token.as_ref())
            {
                tracing::debug!(key = %self.key, "signed out on another replica");
                return Err(signed_out_elsewhere());
            }
            let owner = LeaseOwner::random();
            match self.store.try_lease(&self.key, &owner, self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another replica refreshes: its write, or its lease running out.
                    if let Err(error) = self.store.changed(&self.key, version, self.lease).await {
                        return self.without_store(request, error).await;
                    }
                    continue;
                }
                Err(error) => return self.without_store(request, error).await,
            }
            let outcome = self.refresh_leased(&request, &owner, version, stored).await;
            if let Err(error) = self.store.release_lease(&self.key, &owner).await {
                // It runs out by itself.
                tracing::warn!(key = %self.key, error = %error, "shared token lease not released");
            }
            match outcome {
                Leased::Done(result) => return result,
                Leased::Moved => continue,
            }
        }
    }

    /// The refresh under the lease, from the entry read as `version` before it was taken.
    async fn refresh_leased(
        &self,
        request: &TokenRequest,
        owner: &LeaseOwner,
        version: Option<u64>,
        stored: Option<Stored>,
    ) -> Leased {
        // Between that read and the lease, another replica may have written.
        match self.read().await {
            Ok((now, _)) if now != version => return Leased::Moved,
            Ok(_) => {}
            Err(error) => return Leased::Done(Err(unavailable(error))),
        }
        // The fleet's newest refresh token, else the cell's own (the first refresh).
        let refresh_token = stored
            .and_then(|stored| stored.refresh_token)
            .or_else(|| request.refresh_token.clone());
        // The lifetime counts from before the request, as the cell counts it.
        let sent_at = SystemTime::now();
        let fetch = self.inner.fetch(TokenRequest {
            refresh_token: refresh_token.clone(),
            attempt: request.attempt,
        });
        let result = self.extending(owner, fetch).await;
        let written = match &result {
            Ok(tokens) => {
                let kept = tokens.refresh_token.clone().or(refresh_token.clone());
                Stored::of(tokens, kept, sent_at)
            }
            // A failed answer that rotated the refresh token all the same: the fleet needs it.
            Err(RefreshError::Transient(error)) => match error.received_refresh_token() {
                Some(rotated) => Stored::refresh_token_only(rotated.clone()),
                None => return Leased::Done(result),
            },
            Err(_) => return Leased::Done(result),
        };
        let sealed = self.keys.seal(&self.key, &written.encode());
        match self.store.write(&self.key, version, &sealed).await {
            Ok(Written::Version(version)) => {
                self.see(version);
                self.answer(written.refresh_token);
            }
            Ok(Written::Conflict) => {
                // Only a sign-in or a sign-out writes without the lease.
                if self
                    .signed_out_meanwhile(refresh_token.as_ref(), written.refresh_token.clone())
                    .await
                {
                    return Leased::Done(Err(signed_out_elsewhere()));
                }
                tracing::warn!(key = %self.key, "shared token entry changed under the lease");
                // A sign-in's tokens are newer: the cell's persistence must not write over them.
                self.answer(written.refresh_token);
            }
            // The tokens are good; the fleet's next refresh presents the older refresh token.
            // With rotation this is what an outage at this instant can cost.
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "shared token entry not written")
            }
        }
        Leased::Done(result)
    }

    /// After a write under the lease found the entry changed: whether it was a sign-out of the
    /// refresh token this refresh `presented`. If so, the one it `received` is named signed
    /// out too (once, best effort: the server's revocation of the grant covers it as well).
    async fn signed_out_meanwhile(
        &self,
        presented: Option<&RefreshToken>,
        received: Option<RefreshToken>,
    ) -> bool {
        let Ok((Some(version), Some(stored))) = self.read().await else {
            return false;
        };
        if !stored.refuses(presented) {
            return false;
        }
        let mut signed_out = stored.signed_out;
        signed_out.extend(received);
        let sealed = self
            .keys
            .seal(&self.key, &Stored::signed_out(signed_out).encode());
        if let Err(error) = self.store.write(&self.key, Some(version), &sealed).await {
            tracing::warn!(key = %self.key, %error, "shared token entry not written");
        }
        true
    }

    /// Writes to the entry what the cell holds that did not come from this source: a
    /// sign-in's tokens ([`set_tokens`](crate::RefreshLayer::set_tokens)) or a sign-out. The
    /// tokens of a refresh are in the entry already.
    async fn publish(&self, update: &TokenUpdate) -> Result<(), StoreError> {
        if !update.is_removal() && update.refresh_token == self.answered() {
            return Ok(());
        }
        for _ in 0..PUBLISH_ATTEMPTS {
            let (version, stored) = self.read().await?;
            let (signed_out, fleets) = stored.map_or_else(Default::default, |stored| {
                (stored.signed_out, stored.refresh_token)
            });
            let next = if update.is_removal() {
                // Every refresh token the fleet might present: the cell's and the entry's.
                let mut signed_out = signed_out;
                signed_out.extend(update.previous_refresh_token.clone());
                signed_out.extend(fleets);
                Stored::signed_out(signed_out)
            } else {
                Stored::signed_in(update, signed_out)
            };
            let sealed = self.keys.seal(&self.key, &next.encode());
            match self.store.write(&self.key, version, &sealed).await? {
                Written::Version(version) => {
                    self.see(version);
                    self.answer(next.refresh_token);
                    return Ok(());
                }
                Written::Conflict => continue,
            }
        }
        Err(StoreError::new(
            "the shared token entry changed under every write",
        ))
    }

    /// Runs the token request, extending the lease every third of it meanwhile.
    async fn extending<F>(&self, owner: &LeaseOwner, fetch: F) -> F::Output
    where
        F: Future,
    {
        let mut fetch = std::pin::pin!(fetch);
        let every = self.lease / 3;
        loop {
            tokio::select! {
                result = &mut fetch => return result,
                () = tokio::time::sleep(every) => {
                    match self.store.extend_lease(&self.key, owner, self.lease).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(key = %self.key, "shared token lease lost during a refresh"),
                        Err(error) => tracing::warn!(key = %self.key, %error, "shared token lease not extended"),
                    }
                }
            }
        }
    }

    /// The store failed: see the policy in the type's docs.
    async fn without_store(
        &self,
        request: TokenRequest,
        error: StoreError,
    ) -> Result<TokenSet, RefreshError> {
        let rotating =
            request.refresh_token.is_some() || self.inner.initial_refresh_token().is_some();
        if rotating {
            return Err(unavailable(error));
        }
        tracing::warn!(key = %self.key, %error, "shared token store unavailable: refreshing alone");
        self.inner.fetch(request).await
    }
}

enum Leased {
    Done(Result<TokenSet, RefreshError>),
    /// Another replica wrote before the lease was taken: start over.
    Moved,
}

/// What a refresh gets whose refresh token another replica signed out.
fn signed_out_elsewhere() -> RefreshError {
    crate::ReauthRequired::local("signed_out")
        .with_description("the user was signed out on another replica")
        .into()
}

fn unavailable(error: StoreError) -> RefreshError {
    TransientError::new(TransientKind::StoreUnavailable)
        .with_source(error)
        .into()
}

impl TokenSource for SharedSource {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(self.refresh(request))
    }

    fn grant(&self) -> &str {
        self.inner.grant()
    }

    fn host(&self) -> Option<&str> {
        self.inner.host()
    }

    fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.inner.dpop_key()
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.inner.initial_refresh_token()
    }

    fn initial_tokens(&self) -> Option<TokenSet> {
        self.inner.initial_tokens()
    }

    fn persist(&self, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        let own = self.inner.persist(update);
        let update = update.clone();
        Box::pin(async move {
            // Both run even if the first fails: each is a store the application relies on.
            let own = own.await;
            let shared = self.publish(&update).await.map_err(BoxError::from);
            own.and(shared)
        })
    }

    fn revoke(&self, request: RevocationRequest) -> BoxFuture<'_, Result<(), RevocationError>> {
        self.inner.revoke(request)
    }
}

/// A [`SourceFactory`] whose every key's source refreshes through one [`TokenStore`]: a
/// keyed layer's users, tenants or audiences shared by the replicas, one entry (and lease)
/// per key.
///
/// `entry_key` names each key's entry in the store. It must give distinct keys distinct
/// names (the user id, a tenant's id), and every replica the same name for the same key; the
/// names stay out of metrics and logs beyond the store's own warnings.
///
/// ```
/// # #[cfg(feature = "redis")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
/// use oauth_refresh::store::{Keyring, RedisStore, SharedFactory, StoreKey};
/// use oauth_refresh::{BoxError, RefreshTokenGrant, TokenSource};
///
/// # async fn stored_refresh_token(_: &str) -> Result<String, BoxError> { Ok("rt".into()) }
/// let users = factory_fn(|user: String| async move {
///     let refresh_token = stored_refresh_token(&user).await?;
///     let grant = RefreshTokenGrant::new("https://login.example.com/token", "web", refresh_token);
///     Ok(Some(Box::new(grant) as Box<dyn TokenSource>))
/// });
/// let store = RedisStore::connect("redis://127.0.0.1:6379/", "web:").await?;
/// let keys = Keyring::new(StoreKey::new("2026-12", &[7u8; 32])?);
/// let shared = SharedFactory::new(users, store, keys, |user: &String| format!("user:{user}"));
/// let layer = KeyedRefreshLayer::<String>::new(shared);
/// # drop(layer);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "redis"))]
/// # fn main() {}
/// ```
pub struct SharedFactory<K> {
    inner: Box<dyn SourceFactory<K>>,
    store: Arc<dyn TokenStore>,
    keys: Arc<Keyring>,
    entry_key: Box<dyn Fn(&K) -> String + Send + Sync>,
    lease: Duration,
    min_lifetime: Duration,
}

impl<K> SharedFactory<K> {
    /// `inner`'s sources, each shared through `store` under `entry_key(key)`, sealed with
    /// `keys`.
    pub fn new(
        inner: impl SourceFactory<K>,
        store: impl TokenStore,
        keys: Keyring,
        entry_key: impl Fn(&K) -> String + Send + Sync + 'static,
    ) -> Self {
        SharedFactory {
            inner: Box::new(inner),
            store: Arc::new(store),
            keys: Arc::new(keys),
            entry_key: Box::new(entry_key),
            lease: DEFAULT_LEASE,
            min_lifetime: DEFAULT_MIN_LIFETIME,
        }
    }

    /// Each key's lease: see [`SharedSource::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// See [`SharedSource::min_lifetime`].
    pub fn min_lifetime(mut self, min_lifetime: Duration) -> Self {
        self.min_lifetime = min_lifetime;
        self
    }
}

impl<K: Send + Sync + 'static> SourceFactory<K> for SharedFactory<K> {
    fn source(&self, key: K) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        let entry_key = (self.entry_key)(&key);
        Box::pin(async move {
            let Some(inner) = self.inner.source(key).await? else {
                return Ok(None);
            };
            let shared =
                SharedSource::from_arcs(inner, self.store.clone(), self.keys.clone(), entry_key)
                    .lease(self.lease)
                    .min_lifetime(self.min_lifetime);
            Ok(Some(Box::new(shared) as Box<dyn TokenSource>))
        })
    }

    fn persist(&self, key: &K, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        self.inner.persist(key, update)
    }
}

impl<K> fmt::Debug for SharedFactory<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFactory")
            .field("lease", &self.lease)
            .field("min_lifetime", &self.min_lifetime)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSource")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .field("min_lifetime", &self.min_lifetime)
            .finish_non_exhaustive()
    }
}

/// What an entry holds once opened.
#[derive(Default)]
struct Stored {
    access_token: Option<AccessToken>,
    /// Wall-clock time, since replicas share no monotonic clock.
    expires_at: Option<SystemTime>,
    refresh_token: Option<RefreshToken>,
    scope: Option<String>,
    /// Refresh tokens signed out: a replica holding one of them is signed out too, unless
    /// the entry holds a refresh token of its own to present instead.
    signed_out: Vec<RefreshToken>,
}

impl Stored {
    fn of(tokens: &TokenSet, refresh_token: Option<RefreshToken>, sent_at: SystemTime) -> Self {
        Stored {
            access_token: Some(tokens.access_token.clone()),
            expires_at: tokens
                .expires_in
                .map(|lifetime| lifetime.min(crate::token::MAX_LIFETIME))
                .and_then(|lifetime| sent_at.checked_add(lifetime)),
            refresh_token,
            scope: tokens.scope.clone(),
            signed_out: Vec::new(),
        }
    }

    fn refresh_token_only(refresh_token: RefreshToken) -> Self {
        Stored {
            refresh_token: Some(refresh_token),
            ..Stored::default()
        }
    }

    /// The tokens of a sign-in, still refusing what was signed out before (a replica that
    /// holds such a token presents the new refresh token, or none if the sign-in brought none).
    fn signed_in(update: &TokenUpdate, signed_out: Vec<RefreshToken>) -> Self {
        Stored {
            access_token: update.access_token.clone(),
            expires_at: update.expires_at,
            refresh_token: update.refresh_token.clone(),
            scope: update.scope.clone(),
            signed_out,
        }
    }

    /// An entry without tokens that refuses `refresh_tokens` (the newest few, once each).
    fn signed_out(refresh_tokens: Vec<RefreshToken>) -> Self {
        let mut newest_first: Vec<RefreshToken> = Vec::new();
        for token in refresh_tokens.into_iter().rev() {
            if !newest_first.contains(&token) {
                newest_first.push(token);
            }
        }
        newest_first.truncate(MAX_SIGNED_OUT);
        newest_first.reverse();
        Stored {
            signed_out: newest_first,
            ..Stored::default()
        }
    }

    /// Whether a replica holding `refresh_token` is signed out: it is one signed out, and
    /// the entry holds no other to present instead.
    fn refuses(&self, refresh_token: Option<&RefreshToken>) -> bool {
        self.refresh_token.is_none()
            && refresh_token.is_some_and(|token| self.signed_out.contains(token))
    }

    /// The tokens as a source answers them, if they have `min_lifetime` to live.
    fn usable(&self, min_lifetime: Duration) -> Option<TokenSet> {
        let access_token = self.access_token.clone()?;
        // A token of unknown lifetime is not taken: nothing says it is still good.
        let left = self.expires_at?.duration_since(SystemTime::now()).ok()?;
        if left < min_lifetime {
            return None;
        }
        let mut tokens = TokenSet::new(access_token).with_expires_in(left);
        tokens.refresh_token = self.refresh_token.clone();
        tokens.scope = self.scope.clone();
        Some(tokens)
    }

    fn encode(&self) -> Vec<u8> {
        let millis = |at: SystemTime| {
            at.duration_since(UNIX_EPOCH).map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
        };
        serde_json::json!({
            "access_token": self.access_token.as_ref().map(AccessToken::secret),
            "expires_at_ms": self.expires_at.map(millis),
            "refresh_token": self.refresh_token.as_ref().map(RefreshToken::secret),
            "scope": self.scope,
            "signed_out": self.signed_out.iter().map(RefreshToken::secret).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes()
    }

    /// `None` if it is not what [`encode`](Self::encode) writes.
    fn decode(plain: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(plain).ok()?;
        let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Some(Stored {
            access_token: text("access_token").map(AccessToken::new),
            expires_at: value
                .get("expires_at_ms")
                .and_then(serde_json::Value::as_u64)
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
            refresh_token: text("refresh_token").map(RefreshToken::new),
            scope: text("scope"),
            signed_out: value
                .get("signed_out")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .map(RefreshToken::new)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(names: &[&str]) -> Vec<RefreshToken> {
        names.iter().map(|name| RefreshToken::new(*name)).collect()
    }

    #[test]
    fn a_signed_out_entry_keeps_the_newest_tokens_once_each_and_opens_as_written() {
        let many: Vec<String> = (0..12).map(|n| format!("rt-{n}")).collect();
        let mut names: Vec<&str> = many.iter().map(String::as_str).collect();
        names.push("rt-11");
        let entry = Stored::signed_out(tokens(&names));
        assert_eq!(
            entry.signed_out,
            tokens(&many[4..].iter().map(String::as_str).collect::<Vec<_>>())
        );

        let opened = Stored::decode(&entry.encode()).unwrap();
        assert_eq!(opened.signed_out, entry.signed_out);
        assert!(opened.refuses(Some(&RefreshToken::new("rt-11"))));
        assert!(
            !opened.refuses(Some(&RefreshToken::new("rt-3"))),
            "dropped past the cap"
        );
        assert!(!opened.refuses(None));
        // An entry written before sign-outs were stored names none.
        let older = Stored::decode(br#"{"refresh_token":"rt-1"}"#).unwrap();
        assert!(older.signed_out.is_empty());
    }

    #[test]
    fn an_entry_with_a_refresh_token_to_present_refuses_nobody() {
        let update = TokenUpdate::new(Some(RefreshToken::new("rt-new")));
        let entry = Stored::signed_in(&update, tokens(&["rt-old"]));
        assert!(!entry.refuses(Some(&RefreshToken::new("rt-old"))));
        let reopened = Stored::decode(&entry.encode()).unwrap();
        assert_eq!(reopened.signed_out, tokens(&["rt-old"]));
        assert_eq!(reopened.refresh_token, Some(RefreshToken::new("rt-new")));
    }
}
