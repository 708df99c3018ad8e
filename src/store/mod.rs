//! A shared second level behind the token cell, so that many replicas of a service share one
//! token and one refresh per lifetime (feature `store`;
#![cfg_attr(feature = "redis", doc = "[`RedisStore`]")]
#![cfg_attr(not(feature = "redis"), doc = "`RedisStore`")]
//! with feature `redis`).
//!
//! [`SharedSource`] wraps a grant so that its refreshes go through a store, and
//! [`SharedFactory`] does the same for every key of a keyed layer; [`TokenStore`] is what a
//! store implements; [`Keyring`] seals the entries.
//!
//! # Running many replicas
//!
//! **What is shared.** One entry per credential (per key of a keyed layer): the access token,
//! its expiry in wall-clock time, the newest refresh token and the granted scope, sealed. The
//! in-process cell stays the first level: a request never reaches the store, only a refresh
//! does. Each replica keeps its own schedule, cooldowns and persistence hook.
//!
//! **A refresh through the store.** The replica reads the entry first: tokens another replica
//! wrote, that this one has not taken yet and that have time to live, are the answer, with no
//! token request. Otherwise it takes the entry's lease, reads again, presents the entry's
//! refresh token (the newest the fleet holds), writes the answer by compare-and-swap on the
//! entry's version and releases the lease. Replicas that find the lease taken wait for the
//! holder's write or release, woken by a notification, and poll at the lease's end if none
//! comes.
//!
//! **What the lease guarantees.** One replica at a time presents the entry's refresh token,
//! as long as the lease (60 s by default) outlasts the refresh: keep it longer than the
//! layer's refresh timeout; it is extended while the token request runs. A replica that dies
//! holding it (SIGKILL, a lost machine) delays the others by at most the lease, measured in
//! `tests/all/replicas.rs`.
//!
//! **What a crash can still lose, with a rotating grant.** A replica that sent its refresh
//! and died (or lost the store) before writing the answer took the rotated refresh token with
//! it: the server has retired the one in the entry, so the next replica's refresh is refused
//! (`invalid_grant`, [`ReauthRequired`](crate::ReauthRequired)) and the user signs in again.
//! No protocol on the client's side can close this window, since only the dead replica ever
//! saw the new token; servers that allow a grace period for the previous refresh token
//! (several do, for this reason) close it on theirs. The persistence hook of the replica that
//! refreshed still runs before its waiters are released, as without a store.
//!
//! **Signing in and out.** What the application installs on one replica reaches the others
//! through the entry, by the persistence that follows it.
//! [`set_tokens`](crate::RefreshLayer::set_tokens) (a new sign-in) writes its tokens there, so
//! the fleet takes them and presents their refresh token from then on.
//! [`sign_out`](crate::RefreshLayer::sign_out) writes an entry without tokens that names the
//! refresh tokens signed out. A replica still holding one of them is signed out at its next
//! refresh ([`ReauthRequired`](crate::ReauthRequired) `signed_out`, no token request), even
//! when the server could not be told. A refresh that was at the server as the sign-out was
//! written is signed out as well, and the token it received is named with the others. A new
//! sign-in's refresh token, brought by a new cell's source, is presented as usual. Until its
//! next refresh, a replica serves the access token it holds.
//!
//! **When the store is down.** The valid token keeps being served. A grant without a refresh
//! token (client credentials, JWT bearer, token exchange) asks the token endpoint itself, so
//! each replica refreshes on its own until the store is back; a grant with a refresh token
//! does not refresh without the lease, since two replicas presenting one rotating refresh
//! token revoke the grant: its refresh fails as
//! [`TransientKind::StoreUnavailable`](crate::TransientKind::StoreUnavailable) and is tried
//! again after the cooldown.
//!
//! **The key and its rotation.** Entries are sealed with AES-256-GCM under a 32-byte key the
//! application supplies (from its secret manager, never from source code), bound to the
//! entry's name, so a stored token can be neither read nor moved to another entry; a
//! replica refreshes over an entry it cannot open. Each entry names its key's id in clear. To
//! rotate, give every replica a [`Keyring`] with the new key as current and the old one as
//! previous; once every entry has been written again (one token lifetime, or the refresh
//! token's for idle users), drop the old one.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "redis")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use oauth_refresh::store::{Keyring, RedisStore, SharedSource, StoreKey};
//! use oauth_refresh::{RefreshLayer, RefreshTokenGrant};
//!
//! // Connects lazily: nothing is sent until a refresh needs the store.
//! let store = RedisStore::connect("redis://127.0.0.1:6379/", "billing:").await?;
//! // 32 bytes from the application's secret manager, with an id for rotation.
//! let keys = Keyring::new(StoreKey::new("2026-12", &[7u8; 32])?);
//! let grant = RefreshTokenGrant::new("https://login.example.com/token", "billing", "rt-stored");
//! let layer = RefreshLayer::new(SharedSource::new(grant, store, keys, "billing-reports"));
//! # drop(layer);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```

#[cfg(feature = "redis")]
mod redis;
mod seal;
mod shared;

use std::fmt;
use std::time::Duration;

use crate::source::BoxFuture;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use seal::{Keyring, OpenError, StoreKey};
pub use shared::{SharedFactory, SharedSource};

/// A stored entry: its sealed bytes and the version that compare-and-swap writes check.
///
/// ```
/// use oauth_refresh::store::Entry;
///
/// let entry = Entry { version: 3, value: b"sealed".to_vec() };
/// assert_eq!(format!("{entry:?}"), "Entry { version: 3, value: [6 sealed bytes] }");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Starts at 1 and grows by one with each write.
    pub version: u64,
    /// The sealed value, opaque to the store.
    pub value: Vec<u8>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("version", &self.version)
            .field(
                "value",
                &format_args!("[{} sealed bytes]", self.value.len()),
            )
            .finish()
    }
}

/// What a compare-and-swap write did.
///
/// ```
/// use oauth_refresh::store::Written;
///
/// fn stored(written: Written) -> Option<u64> {
///     match written {
///         Written::Version(version) => Some(version),
///         // Another replica wrote first: read its entry instead.
///         Written::Conflict => None,
///     }
/// }
/// assert_eq!(stored(Written::Version(2)), Some(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the entry's new version.
    Version(u64),
    /// Not written: the entry's version was not the one expected. Read it again.
    Conflict,
}

/// A random token naming one holder of a lease; a lease is released or extended only by the
/// holder that took it.
///
/// ```
/// use oauth_refresh::store::LeaseOwner;
///
/// let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
/// assert_ne!(a, b);
/// assert_eq!(a.as_str().len(), 32);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseOwner(String);

impl LeaseOwner {
    /// A new owner token: 16 random bytes, hex-encoded.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the system's random source");
        LeaseOwner(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token, as the store keeps it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LeaseOwner").field(&self.0).finish()
    }
}

/// A store failed: unreachable, timed out, or answered what a store should not. Transient by
/// nature: the layer keeps serving its valid token meanwhile.
///
/// ```
/// use std::error::Error;
/// use oauth_refresh::store::StoreError;
///
/// let error = StoreError::new("connection refused");
/// assert_eq!(error.to_string(), "the shared token store failed");
/// assert_eq!(error.source().unwrap().to_string(), "connection refused");
/// ```
#[derive(Debug)]
pub struct StoreError {
    source: crate::BoxError,
}

impl StoreError {
    /// A store error caused by `source`.
    pub fn new(source: impl Into<crate::BoxError>) -> Self {
        StoreError {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the shared token store failed")
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A shared store of token entries with a lease per entry: what replicas share.
///
/// Keys are strings the layer derives (one per credential, or per key of a keyed layer); the
/// store may prefix them. Values are sealed before they reach the store.
///
/// ```
/// # #[cfg(feature = "redis")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), oauth_refresh::store::StoreError> {
/// use std::sync::Arc;
/// use oauth_refresh::store::{RedisStore, TokenStore};
///
/// let store: Arc<dyn TokenStore> =
///     Arc::new(RedisStore::connect("redis://127.0.0.1:6379/", "billing:").await?);
/// # drop(store);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "redis"))]
/// # fn main() {}
/// ```
pub trait TokenStore: Send + Sync + 'static {
    /// The entry of `key`, if any.
    fn read<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;

    /// Writes `value` as the entry of `key` if its version is `expected` (`None`: if there is
    /// no entry yet), and tells the replicas waiting on [`changed`](Self::changed).
    fn write<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<Written, StoreError>>;

    /// Takes the lease of `key` for `owner` if nobody holds it; `false` if another does. A
    /// lease ends by itself after `lease`, so a holder that dies delays the others at most that
    /// long.
    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a LeaseOwner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Extends `owner`'s lease of `key` to `lease` from now; `false` if `owner` no longer holds
    /// it.
    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a LeaseOwner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Ends `owner`'s lease of `key`; `false` if `owner` did not hold it (it had run out).
    fn release_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a LeaseOwner,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Waits until the entry of `key` is written with a version other than `seen`, its lease
    /// is released, or `timeout` passes; returns the entry then read. A notification ends the
    /// wait at once; without one (it may be lost), the entry is read again at the timeout.
    fn changed<'a>(
        &'a self,
        key: &'a str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;
}

fn _obj_safe(_: &dyn TokenStore) {}
