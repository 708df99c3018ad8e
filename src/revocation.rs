//! Signing out: what the token cell asks a [`TokenSource`](crate::TokenSource) to revoke at
//! the server (RFC 7009), and how that can fail.

use std::error::Error;
use std::fmt;

use crate::error::RefreshError;
use crate::token::{AccessToken, RefreshToken};

/// Which tokens [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out) revokes at the
/// server. Either way, every token is discarded locally.
///
/// ```
/// use oauth_refresh::Revoke;
///
/// assert_ne!(Revoke::RefreshToken, Revoke::AllTokens);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revoke {
    /// The refresh token (`token_type_hint=refresh_token`). Servers revoke the access tokens
    /// of the same grant with it, as RFC 7009 §2.1 asks of them. The default.
    #[default]
    RefreshToken,
    /// The refresh token, then the current access token (`token_type_hint=access_token`), for
    /// servers that let access tokens live on after their refresh token is revoked.
    AllTokens,
}

/// The tokens a sign-out asks a source to revoke, from
/// [`TokenSource::revoke`](crate::TokenSource::revoke). Either may be absent: a cell that
/// holds no refresh token (client credentials), or no access token yet.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RevocationRequest {
    /// The refresh token the cell held, to revoke with `token_type_hint=refresh_token`.
    pub refresh_token: Option<RefreshToken>,
    /// The access token the cell held, if [`Revoke::AllTokens`] asked for it, to revoke with
    /// `token_type_hint=access_token`.
    pub access_token: Option<AccessToken>,
}

impl RevocationRequest {
    /// A request to revoke these tokens.
    ///
    /// ```
    /// use oauth_refresh::{RefreshToken, RevocationRequest};
    ///
    /// let request = RevocationRequest::new(Some(RefreshToken::new("rt-1")), None);
    /// assert!(!format!("{request:?}").contains("rt-1"));
    /// ```
    pub fn new(refresh_token: Option<RefreshToken>, access_token: Option<AccessToken>) -> Self {
        RevocationRequest {
            refresh_token,
            access_token,
        }
    }
}

/// A sign-out could not revoke the tokens at the server. They were discarded locally all the
/// same, and the persistence hook was told to remove them: a user who signed out must not stay
/// signed in because a server was down. The server may honour them until they expire.
///
/// ```
/// use oauth_refresh::RevocationError;
///
/// let err = RevocationError::Unsupported;
/// assert!(err.is_unsupported());
/// assert!(err.to_string().contains("discarded locally"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RevocationError {
    /// The source cannot revoke tokens (the default of
    /// [`TokenSource::revoke`](crate::TokenSource::revoke)).
    Unsupported,
    /// The revocation request failed: the endpoint could not be reached or answered 5xx
    /// ([`RefreshError::Transient`]), refused the client or the token type, or none is
    /// configured ([`RefreshError::Configuration`]).
    Failed(RefreshError),
    /// The sign-out needs a tokio runtime to run on, and there was none, or it shut down.
    /// The tokens were discarded locally.
    NoRuntime,
}

impl RevocationError {
    /// Whether the source cannot revoke at all.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, RevocationError::Unsupported)
    }
}

impl fmt::Display for RevocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevocationError::Unsupported => f.write_str(
                "the token source cannot revoke tokens at the server; they were discarded locally",
            ),
            RevocationError::Failed(error) => write!(
                f,
                "revoking the tokens at the server failed; they were discarded locally: {error}"
            ),
            RevocationError::NoRuntime => f.write_str(
                "the tokens were discarded locally but not revoked: no tokio runtime to run the \
                 revocation on",
            ),
        }
    }
}

/// Its message includes the refresh error's; `source()` goes on from that error's own.
impl Error for RevocationError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RevocationError::Failed(error) => error.source(),
            _ => None,
        }
    }
}

impl From<RefreshError> for RevocationError {
    fn from(error: RefreshError) -> Self {
        RevocationError::Failed(error)
    }
}
