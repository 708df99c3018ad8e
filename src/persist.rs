//! [`TokenUpdate`]: what the persistence hook is handed each time the cell's tokens change.

use std::time::SystemTime;

use crate::token::{AccessToken, RefreshToken};

/// The tokens a token cell holds after a change, as [`TokenSource::persist`] receives them,
/// or the news that they are gone ([`is_removal`](Self::is_removal)).
///
/// The hook runs whenever the refresh token the cell holds changes, whatever the reason: a
/// refresh that succeeded, an answer that failed otherwise but rotated the refresh token
/// all the same, tokens installed with
/// [`RefreshLayer::set_tokens`](crate::RefreshLayer::set_tokens). A refresh token kept only in
/// memory is lost at the next restart, and with rotation the one stored before no longer
/// works.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use oauth_refresh::{AccessToken, RefreshToken, TokenUpdate};
///
/// fn row(update: &TokenUpdate) -> (Option<&str>, Option<u64>) {
///     let expires_at = update
///         .expires_at
///         .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
///         .map(|since_epoch| since_epoch.as_secs());
///     (update.refresh_token.as_ref().map(RefreshToken::secret), expires_at)
/// }
///
/// let update = TokenUpdate::new(Some(RefreshToken::new("rt-2")))
///     .with_previous_refresh_token(RefreshToken::new("rt-1"))
///     .with_access_token(AccessToken::new("at-2"), SystemTime::UNIX_EPOCH + Duration::from_secs(60));
/// assert_eq!(row(&update), (Some("rt-2"), Some(60)));
/// assert!(update.refresh_token_changed());
/// assert!(!format!("{update:?}").contains("rt-2"));
/// ```
///
/// After [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out) the hook receives a
/// removal: delete the stored tokens, rather than store new ones.
///
/// ```
/// use oauth_refresh::{RefreshToken, TokenUpdate};
///
/// # fn delete(_: Option<&RefreshToken>) {}
/// # fn store(_: Option<&RefreshToken>) {}
/// fn apply(update: &TokenUpdate) {
///     if update.is_removal() {
///         delete(update.previous_refresh_token.as_ref()); // signed out
///     } else {
///         store(update.refresh_token.as_ref());
///     }
/// }
///
/// let removal = TokenUpdate::removal(Some(RefreshToken::new("rt-2")));
/// assert!(removal.is_removal() && removal.refresh_token.is_none());
/// apply(&removal);
/// ```
///
/// [`TokenSource::persist`]: crate::TokenSource::persist
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenUpdate {
    /// The refresh token to present next: the rotated one, or the one kept when the server
    /// sent none. `None` only if the cell holds none at all.
    pub refresh_token: Option<RefreshToken>,
    /// The refresh token this update replaces (the one the refresh presented), for a
    /// compare-and-swap store.
    pub previous_refresh_token: Option<RefreshToken>,
    /// The new access token, if the change brought a usable one. `None` when only the
    /// refresh token changed (an answer that failed otherwise but carried a rotated one).
    pub access_token: Option<AccessToken>,
    /// When that access token expires, in wall-clock time, fit for storing; give it back
    /// with [`RefreshTokenGrant::initial_access_token`](crate::RefreshTokenGrant) on load.
    pub expires_at: Option<SystemTime>,
    /// The scope the server granted with it, if it said.
    pub scope: Option<String>,
    /// The tokens were discarded (a sign-out): the stored ones are to be deleted.
    removal: bool,
}

impl TokenUpdate {
    /// An update to `refresh_token`, with nothing else known.
    pub fn new(refresh_token: Option<RefreshToken>) -> Self {
        TokenUpdate {
            refresh_token,
            previous_refresh_token: None,
            access_token: None,
            expires_at: None,
            scope: None,
            removal: false,
        }
    }

    /// The news that the cell discarded its tokens (a sign-out): delete the stored ones.
    /// `previous` is the refresh token the cell held, the one the store should hold, for a
    /// compare-and-delete; every other field is empty.
    pub fn removal(previous: Option<RefreshToken>) -> Self {
        TokenUpdate {
            previous_refresh_token: previous,
            removal: true,
            ..TokenUpdate::new(None)
        }
    }

    /// Whether this update says to delete the stored tokens rather than store new ones.
    pub fn is_removal(&self) -> bool {
        self.removal
    }

    /// Sets the refresh token replaced.
    pub fn with_previous_refresh_token(mut self, previous: RefreshToken) -> Self {
        self.previous_refresh_token = Some(previous);
        self
    }

    /// Sets the new access token and its expiry.
    pub fn with_access_token(mut self, access_token: AccessToken, expires_at: SystemTime) -> Self {
        self.access_token = Some(access_token);
        self.expires_at = Some(expires_at);
        self
    }

    /// Whether the refresh token to present next differs from the one replaced.
    pub fn refresh_token_changed(&self) -> bool {
        self.refresh_token != self.previous_refresh_token
    }
}
