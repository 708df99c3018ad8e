//! [`TokenUpdate`]: what the persistence hook is handed each time the cell's tokens change.

use std::time::SystemTime;

use crate::token::{AccessToken, RefreshToken};

/// The tokens a token cell holds after a change, as [`TokenSource::persist`] receives them.
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
        }
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
