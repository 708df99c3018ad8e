//! The errors a refresh can end in, and the one a request can be refused with.
//!
//! Each is a small struct of its own, so that it can be reached with `downcast_ref` from a
//! tower stack's `BoxError`; [`RefreshError`] gathers them for code that matches.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::token::RefreshToken;

/// The authorization server refused the refresh itself (`invalid_grant`, or a code configured
/// as permanent): no new token will come without a new sign-in.
///
/// The layer raises it to callers only once no usable token is left; until then the still
/// valid token is served.
///
/// ```
/// use oauth_refresh::ReauthRequired;
///
/// let err = ReauthRequired::new("invalid_grant")
///     .with_description("refresh token revoked")
///     .with_host("login.example.com");
/// assert_eq!(err.error(), "invalid_grant");
/// assert_eq!(err.description(), Some("refresh token revoked"));
/// assert_eq!(err.host(), Some("login.example.com"));
/// assert!(err.to_string().contains("sign in again"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReauthRequired {
    error: String,
    description: Option<String>,
    uri: Option<String>,
    host: Option<String>,
    /// Decided by the client (a sign-out), not a refusal by the server: the message must not
    /// blame the server.
    local: bool,
}

impl ReauthRequired {
    /// A refusal with the OAuth `error` code the server sent, e.g. `"invalid_grant"`.
    pub fn new(error: impl Into<String>) -> Self {
        ReauthRequired {
            error: error.into(),
            description: None,
            uri: None,
            host: None,
            local: false,
        }
    }

    /// A new sign-in is needed for a reason of the client's own, not a refusal by the
    /// server: `"signed_out"` after [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out).
    ///
    /// ```
    /// use oauth_refresh::ReauthRequired;
    ///
    /// let err = ReauthRequired::local("signed_out").with_description("the user signed out");
    /// assert_eq!(err.error(), "signed_out");
    /// assert_eq!(
    ///     err.to_string(),
    ///     "no token to use (signed_out: the user signed out); the user must sign in again"
    /// );
    /// ```
    pub fn local(error: impl Into<String>) -> Self {
        ReauthRequired {
            local: true,
            ..ReauthRequired::new(error)
        }
    }

    /// Sets the server's `error_description`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the server's `error_uri`.
    pub fn with_uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = Some(uri.into());
        self
    }

    /// Sets the host of the token endpoint that refused.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The OAuth `error` code, e.g. `"invalid_grant"`.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// The server's `error_description`, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The server's `error_uri`, if any.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// The token endpoint's host, if known.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
}

impl fmt::Display for ReauthRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local {
            write!(f, "no token to use ({}", self.error)?;
            if let Some(description) = &self.description {
                write!(f, ": {description}")?;
            }
            return f.write_str("); the user must sign in again");
        }
        match &self.host {
            Some(host) => write!(f, "the authorization server at {host}")?,
            None => f.write_str("the authorization server")?,
        }
        write!(f, " refused to refresh the token ({}", self.error)?;
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        f.write_str("); the user must sign in again")
    }
}

impl Error for ReauthRequired {}

/// Why a refresh failed for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransientKind {
    /// The token endpoint could not be reached, or the connection broke.
    Network,
    /// The token request, or the whole refresh, took longer than its timeout.
    Timeout,
    /// The token endpoint answered with a 5xx status.
    ServerError(u16),
    /// The token endpoint answered 429.
    RateLimited,
    /// The token endpoint answered `temporarily_unavailable`.
    TemporarilyUnavailable,
    /// The token endpoint's answer could not be read.
    InvalidResponse,
    /// The token endpoint's answer was larger than the grant reads.
    ResponseTooLarge,
    /// The refresh task panicked before it reported an outcome: a bug in the source, most
    /// likely.
    Aborted,
    /// The refresh was cancelled: the tokio runtime that ran it shut down before it
    /// reported an outcome.
    RuntimeShutdown,
    /// A credential the client presents could not be had for now: a client assertion whose
    /// signer failed, a file (an assertion, a subject token) missing or empty while someone
    /// else rotates it. Nothing was sent to the token endpoint.
    Credential,
    /// The shared token store failed, and the grant (one with a refresh token) does not
    /// refresh without it: see `store::SharedSource` (feature `store`).
    StoreUnavailable,
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransientKind::Network => f.write_str("the token endpoint could not be reached"),
            TransientKind::Timeout => f.write_str("the token request timed out"),
            TransientKind::ServerError(status) => {
                write!(f, "the token endpoint answered {status}")
            }
            TransientKind::RateLimited => f.write_str("the token endpoint is rate limiting"),
            TransientKind::TemporarilyUnavailable => {
                f.write_str("the token endpoint is temporarily unavailable")
            }
            TransientKind::InvalidResponse => {
                f.write_str("the token endpoint's answer could not be read")
            }
            TransientKind::ResponseTooLarge => {
                f.write_str("the token endpoint's answer was too large to read")
            }
            TransientKind::Aborted => f.write_str("the refresh task panicked"),
            TransientKind::RuntimeShutdown => {
                f.write_str("the refresh was cancelled: the tokio runtime that ran it shut down")
            }
            TransientKind::Credential => f.write_str("the client assertion could not be made"),
            TransientKind::StoreUnavailable => f.write_str(
                "the shared token store is unavailable, and this grant refreshes only through it",
            ),
        }
    }
}

/// A refresh failed for a reason that may pass: network, timeout, 5xx, 429,
/// `temporarily_unavailable`. Retryable; the still-valid token keeps being served meanwhile.
///
/// ```
/// use std::time::Duration;
/// use oauth_refresh::{TransientError, TransientKind};
///
/// let err = TransientError::new(TransientKind::RateLimited)
///     .with_retry_after(Duration::from_secs(5));
/// assert_eq!(err.kind(), TransientKind::RateLimited);
/// assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
/// assert!(err.is_resend_safe());
/// ```
#[derive(Clone, Debug)]
pub struct TransientError {
    kind: TransientKind,
    retry_after: Option<Duration>,
    resend_safe: bool,
    source: Option<Arc<dyn Error + Send + Sync>>,
    refresh_token: Option<RefreshToken>,
}

impl TransientError {
    /// A transient failure of the given kind, safe to resend.
    pub fn new(kind: TransientKind) -> Self {
        TransientError {
            kind,
            retry_after: None,
            resend_safe: true,
            source: None,
            refresh_token: None,
        }
    }

    /// The server's `Retry-After`: the cell will not call the source again before it.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Says whether the same token request may be sent again within this refresh. A
    /// `refresh_token` grant whose request may have reached the server sets `false`: resending
    /// a rotated refresh token can trip the server's reuse detection.
    pub fn with_resend_safe(mut self, resend_safe: bool) -> Self {
        self.resend_safe = resend_safe;
        self
    }

    /// The underlying error. It must not carry secrets or raw response bodies.
    pub fn with_source(mut self, source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// A refresh token the failed answer carried all the same. The cell keeps it, since the
    /// server may have rotated the old one away, and hands it to the persistence hook; it
    /// takes it out of the error first, so that it does not travel to every waiter.
    pub fn with_refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// The refresh token the failed answer carried, if any. Crate-private: the cell takes it
    /// out before the error reaches any caller.
    #[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
    pub(crate) fn received_refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// Takes the refresh token out, so that it does not travel with the error to every
    /// waiter and into the stats: the cell keeps it.
    pub(crate) fn take_refresh_token(&mut self) -> Option<RefreshToken> {
        self.refresh_token.take()
    }

    /// Like [`with_source`](Self::with_source), for an error already boxed: no generic
    /// conversion, which keeps the futures that call it `Send` for every lifetime.
    pub(crate) fn with_boxed_source(mut self, source: Box<dyn Error + Send + Sync>) -> Self {
        self.source = Some(Arc::from(source));
        self
    }

    /// Why the refresh failed.
    pub fn kind(&self) -> TransientKind {
        self.kind
    }

    /// The server's retry hint (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the source said the request may be resent.
    pub fn is_resend_safe(&self) -> bool {
        self.resend_safe
    }
}

impl fmt::Display for TransientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token refresh failed for now: {}", self.kind)?;
        if let Some(retry_after) = self.retry_after {
            write!(f, " (retry after {}s)", retry_after.as_secs())?;
        }
        Ok(())
    }
}

impl Error for TransientError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// The client is misconfigured: permanent until the configuration changes, and no sign-in
/// fixes it.
///
/// Either the token endpoint refused the client itself ([`new`](Self::new): `invalid_client`,
/// `unauthorized_client`, `invalid_scope`, ...), or the client found the problem on its own
/// side before or without any refusal ([`local`](Self::local): a token URL that does not
/// parse, plain `http://` refused, no HTTP client).
///
/// ```
/// use oauth_refresh::ConfigurationError;
///
/// let refused = ConfigurationError::new("invalid_client").with_description("unknown client");
/// assert_eq!(refused.error(), "invalid_client");
/// assert_eq!(
///     refused.to_string(),
///     "the token endpoint refused the client (invalid_client: unknown client); \
///      check the client configuration"
/// );
///
/// let local = ConfigurationError::local("invalid_token_url")
///     .with_description("the token URL could not be parsed: relative URL without a base");
/// assert_eq!(local.error(), "invalid_token_url");
/// assert!(local.to_string().starts_with("cannot refresh the token (invalid_token_url: "));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigurationError {
    error: String,
    description: Option<String>,
    /// Found by the client, not a refusal by the server: the message must not blame the
    /// token endpoint.
    local: bool,
}

impl ConfigurationError {
    /// A refusal by the token endpoint, with the OAuth `error` code it sent, e.g.
    /// `"invalid_client"`.
    pub fn new(error: impl Into<String>) -> Self {
        ConfigurationError {
            error: error.into(),
            description: None,
            local: false,
        }
    }

    /// A problem found on the client's side, not a refusal by the server, with a short code
    /// of the source's own, e.g. `"invalid_token_url"`.
    ///
    /// ```
    /// use oauth_refresh::ConfigurationError;
    ///
    /// let err = ConfigurationError::local("http_client").with_description("no HTTP client");
    /// assert_eq!(
    ///     err.to_string(),
    ///     "cannot refresh the token (http_client: no HTTP client); check the configuration"
    /// );
    /// ```
    pub fn local(error: impl Into<String>) -> Self {
        ConfigurationError {
            local: true,
            ..ConfigurationError::new(error)
        }
    }

    /// Sets a description (the server's `error_description`, or the source's own words).
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The error code.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// The description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
}

impl fmt::Display for ConfigurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local {
            true => write!(f, "cannot refresh the token ({}", self.error)?,
            false => write!(f, "the token endpoint refused the client ({}", self.error)?,
        }
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        match self.local {
            true => f.write_str("); check the configuration"),
            false => f.write_str("); check the client configuration"),
        }
    }
}

impl Error for ConfigurationError {}

/// How a refresh failed: what a [`TokenSource`](crate::TokenSource) reports, and what every
/// caller waiting on that refresh receives.
///
/// Through a tower stack each variant arrives as its own struct inside the `BoxError`, so
/// `err.downcast_ref::<ReauthRequired>()` works.
///
/// It is transparent: its `Display` is the variant's, and its `source()` the variant's own
/// source, so a walk down the chain (`anyhow`'s `{:#}`, a loop over `source()`) prints each
/// message once.
///
/// ```
/// use std::error::Error;
/// use oauth_refresh::{RefreshError, TransientError, TransientKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let err = RefreshError::from(TransientError::new(TransientKind::Network).with_source(io));
/// assert_eq!(err.to_string(), "token refresh failed for now: the token endpoint could not be reached");
/// assert_eq!(err.source().unwrap().to_string(), "connection refused");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RefreshError {
    /// A new sign-in is needed.
    Reauth(ReauthRequired),
    /// Retryable.
    Transient(TransientError),
    /// Permanent, but not fixed by a sign-in.
    Configuration(ConfigurationError),
}

impl RefreshError {
    /// The class of this error, for stats and logs.
    pub fn kind(&self) -> RefreshErrorKind {
        match self {
            RefreshError::Reauth(_) => RefreshErrorKind::Reauth,
            RefreshError::Transient(_) => RefreshErrorKind::Transient,
            RefreshError::Configuration(_) => RefreshErrorKind::Configuration,
        }
    }

    /// The error as a boxed error whose concrete type is the variant's struct.
    pub(crate) fn into_box(self) -> Box<dyn Error + Send + Sync> {
        match self {
            RefreshError::Reauth(e) => Box::new(e),
            RefreshError::Transient(e) => Box::new(e),
            RefreshError::Configuration(e) => Box::new(e),
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RefreshError::Transient(e) => e.retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::Reauth(e) => e.fmt(f),
            RefreshError::Transient(e) => e.fmt(f),
            RefreshError::Configuration(e) => e.fmt(f),
        }
    }
}

/// Transparent: the variant's Display is this error's, so the chain skips the variant.
impl Error for RefreshError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RefreshError::Reauth(e) => e.source(),
            RefreshError::Transient(e) => e.source(),
            RefreshError::Configuration(e) => e.source(),
        }
    }
}

impl From<ReauthRequired> for RefreshError {
    fn from(e: ReauthRequired) -> Self {
        RefreshError::Reauth(e)
    }
}

impl From<TransientError> for RefreshError {
    fn from(e: TransientError) -> Self {
        RefreshError::Transient(e)
    }
}

impl From<ConfigurationError> for RefreshError {
    fn from(e: ConfigurationError) -> Self {
        RefreshError::Configuration(e)
    }
}

/// The class of a [`RefreshError`], as the stats report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshErrorKind {
    /// [`ReauthRequired`].
    Reauth,
    /// [`TransientError`].
    Transient,
    /// [`ConfigurationError`].
    Configuration,
}

/// The layer refused to send a bearer token over plain `http://` to a host that is not
/// loopback. Allow it with [`RefreshLayer::allow_insecure_http`](crate::RefreshLayer::allow_insecure_http).
#[derive(Clone, Debug)]
pub struct InsecureTransport {
    host: String,
}

impl InsecureTransport {
    pub(crate) fn new(host: &str) -> Self {
        InsecureTransport {
            host: host.to_owned(),
        }
    }

    /// The host the request was meant for.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for InsecureTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused to send a bearer token over plain http to {}",
            self.host
        )
    }
}

impl Error for InsecureTransport {}

/// Whether `host` (a name, an IP address, or a bracketed IPv6 address) is this machine:
/// plain http stays on it, so secrets sent there cross no network.
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reauth_required_says_a_sign_in_is_needed() {
        let err = ReauthRequired::new("invalid_grant")
            .with_description("Token is revoked")
            .with_uri("https://docs.example.com/errors")
            .with_host("login.example.com");
        assert_eq!(
            err.to_string(),
            "the authorization server at login.example.com refused to refresh the token \
             (invalid_grant: Token is revoked); the user must sign in again"
        );
        assert_eq!(err.uri(), Some("https://docs.example.com/errors"));
        assert_eq!(err.description(), Some("Token is revoked"));
        assert_eq!(err.host(), Some("login.example.com"));
    }

    #[test]
    fn a_refusal_blames_the_token_endpoint_and_a_local_problem_does_not() {
        let refused = ConfigurationError::new("invalid_client").with_description("unknown client");
        assert_eq!(
            refused.to_string(),
            "the token endpoint refused the client (invalid_client: unknown client); \
             check the client configuration"
        );
        let local = ConfigurationError::local("invalid_token_url")
            .with_description("the token URL could not be parsed: empty host");
        assert_eq!(
            local.to_string(),
            "cannot refresh the token (invalid_token_url: the token URL could not be parsed: \
             empty host); check the configuration"
        );
        assert_eq!(
            ConfigurationError::local("http_client").to_string(),
            "cannot refresh the token (http_client); check the configuration"
        );
        assert_ne!(ConfigurationError::new("x"), ConfigurationError::local("x"));
    }

    #[test]
    fn a_panic_and_a_runtime_shutdown_are_told_apart() {
        assert_eq!(
            TransientError::new(TransientKind::Aborted).to_string(),
            "token refresh failed for now: the refresh task panicked"
        );
        assert_eq!(
            TransientError::new(TransientKind::RuntimeShutdown).to_string(),
            "token refresh failed for now: the refresh was cancelled: the tokio runtime that \
             ran it shut down"
        );
    }

    #[test]
    fn reauth_required_is_reachable_from_a_box_error() {
        let boxed = RefreshError::from(ReauthRequired::new("invalid_grant")).into_box();
        let err = boxed.downcast_ref::<ReauthRequired>().expect("downcast");
        assert_eq!(err.error(), "invalid_grant");
    }

    /// Every message down `err`'s source chain, `err`'s own first.
    fn chain(err: &(dyn Error + 'static)) -> Vec<String> {
        let mut messages = Vec::new();
        let mut next = Some(err);
        while let Some(err) = next {
            messages.push(err.to_string());
            next = err.source();
        }
        messages
    }

    #[test]
    fn a_refresh_error_chain_prints_each_message_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = RefreshError::from(TransientError::new(TransientKind::Network).with_source(io));
        let messages = chain(&err);
        for (i, message) in messages.iter().enumerate() {
            assert!(
                !messages[..i].contains(message),
                "{message:?} twice in {messages:?}"
            );
        }
        assert_eq!(
            messages,
            [
                "token refresh failed for now: the token endpoint could not be reached",
                "connection refused",
            ]
        );
        for err in [
            RefreshError::from(ReauthRequired::new("invalid_grant")),
            RefreshError::from(ConfigurationError::new("invalid_client")),
        ] {
            assert_eq!(chain(&err).len(), 1, "{err}");
        }
    }

    #[test]
    fn transient_error_keeps_its_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = TransientError::new(TransientKind::Network).with_source(io);
        assert!(err.source().is_some());
        assert_eq!(
            err.to_string(),
            "token refresh failed for now: the token endpoint could not be reached"
        );
    }
}
