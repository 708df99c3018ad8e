//! Access and refresh tokens, and the token set a source returns.
//!
//! Every type here that holds a secret prints it redacted in `Debug` and `Display`; the secret
//! is reached only through an explicit `secret()` call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const REDACTED: &str = "[redacted]";

/// The longest lifetime a token is taken to have: servers send absurd numbers (`expires_in`
/// of `u64::MAX` or `1e300`), and a token said to live longer is refreshed after a year.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
struct Secret(Arc<str>);

impl Secret {
    fn new(value: impl Into<String>) -> Self {
        Secret(Arc::from(value.into()))
    }
}

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Secret);

        impl $name {
            /// Wraps a secret string.
            pub fn new(value: impl Into<String>) -> Self {
                $name(Secret::new(value))
            }

            /// The token itself. This is the only way to read it.
            pub fn secret(&self) -> &str {
                &(self.0).0
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name::new(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name::new(value)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&format_args!("{REDACTED}")).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(REDACTED)
            }
        }
    };
}

secret_type!(
    /// An OAuth 2.0 access token, sent as `Authorization: Bearer <token>`.
    ///
    /// ```
    /// use oauth_refresh::AccessToken;
    ///
    /// let token = AccessToken::new("eyJhbGciOi...");
    /// assert_eq!(token.secret(), "eyJhbGciOi...");
    /// assert_eq!(format!("{token:?}"), "AccessToken([redacted])");
    /// ```
    AccessToken
);

secret_type!(
    /// An OAuth 2.0 refresh token. The cell keeps the newest one it has received and never
    /// drops it: a response without a refresh token keeps the previous one (RFC 6749 §6).
    ///
    /// ```
    /// use oauth_refresh::RefreshToken;
    ///
    /// let token = RefreshToken::new("tGzv3JOkF0XG5Qx2TlKWIA");
    /// assert_eq!(token.to_string(), "[redacted]");
    /// ```
    RefreshToken
);

secret_type!(
    /// An OAuth 2.0 client secret, sent to the token endpoint only.
    ///
    /// ```
    /// use oauth_refresh::ClientSecret;
    ///
    /// let secret = ClientSecret::new("k8s:+/%&=~ x");
    /// assert_eq!(format!("{secret:?}"), "ClientSecret([redacted])");
    /// ```
    ClientSecret
);

/// What a [`TokenSource`](crate::TokenSource) obtained: an access token, its lifetime, and
/// perhaps a (rotated) refresh token.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh::{AccessToken, RefreshToken, TokenSet};
///
/// let set = TokenSet::new(AccessToken::new("at-1"))
///     .with_refresh_token("rt-1")
///     .with_expires_in(Duration::from_secs(3600));
/// assert_eq!(set.refresh_token.as_ref().map(RefreshToken::secret), Some("rt-1"));
/// assert!(!format!("{set:?}").contains("at-1"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenSet {
    /// The access token.
    pub access_token: AccessToken,
    /// A refresh token, new or rotated. `None` keeps the one the cell already holds.
    pub refresh_token: Option<RefreshToken>,
    /// The lifetime, counted from the moment the token request was sent. `Some(ZERO)` means
    /// already expired; `None` means unknown, and a rejected request is the backstop. A
    /// lifetime over a year is taken as a year.
    pub expires_in: Option<Duration>,
    /// The scope the server granted, if it said.
    pub scope: Option<String>,
}

impl TokenSet {
    /// A token set holding only an access token, of unknown lifetime.
    pub fn new(access_token: AccessToken) -> Self {
        TokenSet {
            access_token,
            refresh_token: None,
            expires_in: None,
            scope: None,
        }
    }

    /// Sets the refresh token, new or rotated.
    ///
    /// ```
    /// use oauth_refresh::{AccessToken, TokenSet};
    ///
    /// let set = TokenSet::new(AccessToken::new("at-1")).with_refresh_token("rt-1");
    /// assert_eq!(set.refresh_token.unwrap().secret(), "rt-1");
    /// ```
    pub fn with_refresh_token(mut self, refresh_token: impl Into<RefreshToken>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Sets the lifetime, counted from the moment the token request was sent.
    /// `Duration::ZERO` means already expired.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oauth_refresh::{AccessToken, TokenSet};
    ///
    /// let set = TokenSet::new(AccessToken::new("at-1")).with_expires_in(Duration::from_secs(3600));
    /// assert_eq!(set.expires_in, Some(Duration::from_secs(3600)));
    /// ```
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = Some(expires_in);
        self
    }

    /// Sets the scope the server granted, space-separated as OAuth sends it.
    ///
    /// ```
    /// use oauth_refresh::{AccessToken, TokenSet};
    ///
    /// let set = TokenSet::new(AccessToken::new("at-1")).with_scope("api:read api:write");
    /// assert_eq!(set.scope.as_deref(), Some("api:read api:write"));
    /// ```
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_is_redacted_in_debug_and_display() {
        let token = AccessToken::new("s3cr3t-access");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!format!("{token:#?}").contains("s3cr3t"));
        assert!(!token.to_string().contains("s3cr3t"));
        assert_eq!(token.secret(), "s3cr3t-access");
    }

    #[test]
    fn refresh_token_is_redacted_in_debug_and_display() {
        let token = RefreshToken::new("s3cr3t-refresh");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!token.to_string().contains("s3cr3t"));
        assert_eq!(token.secret(), "s3cr3t-refresh");
    }

    #[test]
    fn token_set_is_redacted_in_debug() {
        let set = TokenSet::new(AccessToken::new("s3cr3t-access"))
            .with_refresh_token("s3cr3t-refresh")
            .with_scope("api:read");
        let printed = format!("{set:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("api:read"));
    }
}
