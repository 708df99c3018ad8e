//! The device authorization grant (RFC 8628): the first tokens on a device without a browser
//! (a TV, a command-line tool on a server), with the user signing in on another device.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use super::discovery::ServerMetadata;
use super::endpoint::{Endpoint, ParamNames, UrlForDebug, check_transport};
use super::refresh_token::{PersistHook, RefreshTokenGrant};
use super::response::{self, Rules};
use super::revocation::{self, RevocationUrl};
use crate::BoxError;
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind};
use crate::persist::TokenUpdate;
use crate::token::{ClientSecret, TokenSet};

/// `grant_type` of the token requests that poll for the user's answer (RFC 8628 §3.4).
pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The wait between polls when the server names none (RFC 8628 §3.2).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// What a `slow_down` answer adds to the wait, for every later poll (RFC 8628 §3.5).
pub(crate) const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The shortest wait between polls: a server that says 0 is not polled in a loop.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between polls, whatever the server says or `slow_down` adds up to.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The longest a device code is taken to live: nobody waits longer at a TV, and no hostile
/// `expires_in` makes a device poll for ever.
pub(crate) const MAX_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// The longest wait after failed polls (network, 5xx), unless the server's `Retry-After`
/// or its own interval is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Starts sign-ins with the device authorization grant (RFC 8628), for a device that cannot
/// show a browser: it asks the server for a code, shows the user where to enter it, and
/// polls the token endpoint until the user has signed in elsewhere.
///
/// [`start`](Self::start) returns a [`PendingDeviceAuthorization`] with what to show the user
/// (the verification URI and the user code); [`PendingDeviceAuthorization::poll`] consumes it
/// and ends with a [`RefreshTokenGrant`] that starts with the tokens obtained, as
/// [`PendingAuthorization::exchange`](super::PendingAuthorization::exchange) does. The client
/// authenticates to the device authorization endpoint as to the token endpoint.
///
/// ```
/// use oauth_refresh::RefreshLayer;
/// use oauth_refresh::oauth::DeviceAuthorization;
/// # use bytes::Bytes;
/// # use http_body_util::{BodyExt, Full};
/// # use oauth_refresh::{BoxFuture, TransientError, oauth::{HttpClient, ResponseBody}};
/// # /// The device authorization endpoint, then a token endpoint whose user has signed in.
/// # struct Server;
/// # impl HttpClient for Server {
/// #     fn send(&self, request: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
/// #         let body: &'static [u8] = match request.uri().path() {
/// #             "/oauth2/device" => br#"{"device_code":"dc-1","user_code":"WDJB-MJHT","verification_uri":"https://login.example.com/device","expires_in":1800,"interval":5}"#,
/// #             _ => br#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-1"}"#,
/// #         };
/// #         let body = Full::new(Bytes::from_static(body)).map_err(|never| match never {}).boxed_unsync();
/// #         Box::pin(async move { Ok(http::Response::new(body)) })
/// #     }
/// # }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sign_in = DeviceAuthorization::new(
///     "https://login.example.com/oauth2/device",
///     "https://login.example.com/oauth2/token",
///     "tv-app",
/// )
/// .scope("openid offline_access")
/// # .http_client(Server)
/// ;
/// let pending = sign_in.start().await?;
/// println!("Go to {} and enter {}", pending.verification_uri(), pending.user_code());
/// assert_eq!(pending.user_code(), "WDJB-MJHT");
///
/// // Polls every 5 s (slower if the server asks) until the user has signed in.
/// let grant = pending.poll().await?;
/// let layer = RefreshLayer::new(grant);
/// assert_eq!(layer.stats().generation, 1); // the sign-in's token, in use at once
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DeviceAuthorization {
    device_authorization_url: Result<Url, String>,
    endpoint: Endpoint,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    revocation_url: RevocationUrl,
    persist: Option<Arc<PersistHook>>,
}

impl DeviceAuthorization {
    /// Device sign-ins for `client_id`, started at `device_authorization_url` and polled for
    /// at `token_url`.
    pub fn new(
        device_authorization_url: impl AsRef<str>,
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
    ) -> Self {
        DeviceAuthorization {
            device_authorization_url: Url::parse(device_authorization_url.as_ref())
                .map_err(|e| e.to_string()),
            endpoint: Endpoint::new(token_url.as_ref(), client_id.into()),
            scopes: Vec::new(),
            params: Vec::new(),
            revocation_url: None,
            persist: None,
        }
    }

    /// Device sign-ins at the endpoints of `metadata` (from [`ServerMetadata::discover`]): its
    /// device authorization and token endpoints, and its revocation endpoint if it has one,
    /// which the resulting grant uses for [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out).
    ///
    /// Fails if the server names no `device_authorization_endpoint`.
    ///
    /// ```
    /// use oauth_refresh::oauth::{DeviceAuthorization, ServerMetadata};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let metadata = ServerMetadata::discover("https://login.example.com").await?;
    /// let sign_in = DeviceAuthorization::from_metadata(&metadata, "tv-app")?.scope("offline_access");
    /// # drop(sign_in);
    /// # Ok(())
    /// # }
    /// # drop(run());
    /// ```
    pub fn from_metadata(
        metadata: &ServerMetadata,
        client_id: impl Into<String>,
    ) -> Result<Self, ConfigurationError> {
        let Some(device_authorization_url) = &metadata.device_authorization_endpoint else {
            return Err(
                ConfigurationError::local("no_device_authorization_endpoint").with_description(
                    format!(
                        "the metadata of {} names no device_authorization_endpoint",
                        metadata.issuer
                    ),
                ),
            );
        };
        let sign_in = Self::new(
            device_authorization_url,
            &metadata.token_endpoint,
            client_id,
        );
        Ok(match &metadata.revocation_endpoint {
            Some(url) => sign_in.revocation_url(url),
            None => sign_in,
        })
    }

    /// The client secret of a confidential client.
    pub fn client_secret(mut self, client_secret: impl Into<ClientSecret>) -> Self {
        self.endpoint.client_secret = Some(client_secret.into());
        self
    }

    /// Adds a scope to request; a string with spaces adds each of its words, and scopes are
    /// sent space-separated.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        self.scopes
            .extend(scope.as_ref().split_whitespace().map(str::to_owned));
        self
    }

    /// Adds a parameter to the device authorization request, such as `audience` or
    /// `resource`. `Debug` shows its name, never its value.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// The revocation endpoint the resulting grant signs out at: see
    /// [`RefreshTokenGrant::revocation_url`].
    pub fn revocation_url(mut self, url: impl AsRef<str>) -> Self {
        self.revocation_url = revocation::parse(url.as_ref());
        self
    }

    /// Stores the tokens each time they change, from the first ones on: `hook` receives the
    /// [`TokenUpdate`] of the sign-in's tokens before [`poll`](PendingDeviceAuthorization::poll)
    /// returns, and goes on with the resulting grant, which calls it as
    /// [`RefreshTokenGrant::persist`] does (removals after a sign-out included).
    ///
    /// If it fails on the first tokens, the failure is logged and the grant returned all the
    /// same: the tokens are in use in memory, and the next change reaches the hook again.
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

    super::endpoint_setters!();

    /// Starts one sign-in: asks the device authorization endpoint for a device code and a
    /// user code, and returns what to show the user.
    ///
    /// Fails before any request if a URL does not parse or is plain `http://` to a host other
    /// than loopback; fails with the server's error ([`ConfigurationError`] for
    /// `invalid_client` or `invalid_scope`, [`TransientError`] for 5xx or an answer that
    /// cannot be read) otherwise. It is not resent: call it again to retry.
    pub async fn start(&self) -> Result<PendingDeviceAuthorization, DeviceAuthorizationError> {
        let url = self.checked_device_authorization_url()?;
        self.endpoint.checked_url()?;
        let scope = self.scopes.join(" ");
        let mut params: Vec<(&str, &str)> = Vec::new();
        if !scope.is_empty() {
            params.push(("scope", &scope));
        }
        params.extend(self.params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let sent_at = Instant::now();
        let (head, body) = self.endpoint.post_form(url, &params, false).await?;
        tracing::debug!(
            status = head.status.as_u16(),
            "device authorization endpoint answered"
        );
        let rules = Rules {
            host: url.host_str(),
            ..self.endpoint.rules(false)
        };
        let answer = device_authorization(head.status, &head.headers, &body, &rules)?;
        let expires_at = sent_at + answer.expires_in;
        Ok(PendingDeviceAuthorization {
            answer,
            expires_at,
            endpoint: self.endpoint.clone(),
            revocation_url: self.revocation_url.clone(),
            persist: self.persist.clone(),
        })
    }

    fn checked_device_authorization_url(&self) -> Result<&Url, ConfigurationError> {
        let url = self.device_authorization_url.as_ref().map_err(|reason| {
            ConfigurationError::local("invalid_device_authorization_url").with_description(format!(
                "the device authorization URL could not be parsed: {reason}"
            ))
        })?;
        check_transport(url, self.endpoint.allow_insecure_http)?;
        Ok(url)
    }
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field(
                "device_authorization_url",
                &UrlForDebug(&self.device_authorization_url),
            )
            .field("endpoint", &self.endpoint)
            .field("scopes", &self.scopes)
            .field("params", &ParamNames(&self.params))
            .field("persist", &self.persist.is_some())
            .finish_non_exhaustive()
    }
}

/// The device code: what the device polls with, a secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DeviceCode(String);

impl DeviceCode {
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceCode([redacted])")
    }
}

/// A device authorization endpoint's answer (RFC 8628 §3.2), its numbers cut to sane bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceCodeAnswer {
    pub(crate) device_code: DeviceCode,
    pub(crate) user_code: String,
    pub(crate) verification_uri: String,
    pub(crate) verification_uri_complete: Option<String>,
    /// Cut to [`MAX_DEVICE_CODE_LIFETIME`].
    pub(crate) expires_in: Duration,
    /// [`DEFAULT_INTERVAL`] if none was given (or none readable), cut to
    /// [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    pub(crate) interval: Duration,
}

/// Reads a device authorization endpoint's answer. An error body (RFC 6749 §5.2), whatever
/// the status, or a status that is not a success, is classified as a token endpoint's would
/// be; a success must carry a `device_code`, a `user_code`, a `verification_uri` (or the
/// `verification_url` some servers still send) and an `expires_in`, or it is a
/// [`TransientKind::InvalidResponse`] that quotes none of them.
pub(crate) fn device_authorization(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    rules: &Rules<'_>,
) -> Result<DeviceCodeAnswer, RefreshError> {
    let fields = response::fields(headers, body);
    let error = fields
        .as_ref()
        .is_some_and(|f| f.get("error").is_some_and(Value::is_string));
    let Some(fields) = fields.filter(|_| status.is_success() && !error) else {
        return Err(match response::token_set(status, headers, body, rules) {
            Err(error) => error,
            // A status that is not a success with an `access_token` in it: not a device
            // authorization answer either.
            Ok(_) => invalid(format!("{status} with a token answer")),
        });
    };
    let required = |name: &str| response::string(&fields, name);
    let (Some(device_code), Some(user_code), Some(verification_uri)) = (
        required("device_code"),
        required("user_code"),
        required("verification_uri").or_else(|| required("verification_url")),
    ) else {
        return Err(invalid(format!(
            "{status} without a device_code, user_code and verification_uri"
        )));
    };
    let verification_uri_complete = required("verification_uri_complete");
    // Shown to the user as they are: nothing a terminal could take as a command.
    let shown = [
        Some(&user_code),
        Some(&verification_uri),
        verification_uri_complete.as_ref(),
    ];
    if shown
        .into_iter()
        .flatten()
        .any(|s| s.chars().any(char::is_control))
    {
        return Err(invalid(
            "a user code or verification URI with control characters".to_owned(),
        ));
    }
    let Some(expires_in) = fields.get("expires_in").and_then(response::lifetime) else {
        return Err(invalid(format!("{status} without a readable expires_in")));
    };
    let interval = match fields.get("interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL,
        Some(value) => response::lifetime(value).unwrap_or_else(|| {
            tracing::warn!("the device authorization endpoint sent an unreadable interval");
            DEFAULT_INTERVAL
        }),
    };
    Ok(DeviceCodeAnswer {
        device_code: DeviceCode(device_code),
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in: expires_in.min(MAX_DEVICE_CODE_LIFETIME),
        interval: interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
    })
}

fn invalid(reason: String) -> RefreshError {
    TransientError::new(TransientKind::InvalidResponse)
        .with_source(reason)
        .into()
}

/// What one poll of the token endpoint said (RFC 8628 §3.5).
#[derive(Debug)]
pub(crate) enum PollAnswer {
    Tokens(TokenSet),
    /// `authorization_pending`: the user has not finished; poll again after the interval.
    Pending,
    /// `slow_down`: as pending, and the interval grows by 5 s for good.
    SlowDown,
    /// `access_denied`, with the server's description.
    Denied(Option<String>),
    /// `expired_token`.
    Expired,
    /// Anything else: transient failures are polled through, the rest end the sign-in.
    Failed(RefreshError),
}

/// Reads a token endpoint's answer to a device code poll.
pub(crate) fn poll_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    rules: &Rules<'_>,
) -> PollAnswer {
    let fields: Option<Map<String, Value>> = response::fields(headers, body);
    let code = fields
        .as_ref()
        .and_then(|f| f.get("error"))
        .and_then(Value::as_str);
    match code {
        Some("authorization_pending") => PollAnswer::Pending,
        Some("slow_down") => PollAnswer::SlowDown,
        Some("expired_token") => PollAnswer::Expired,
        Some("access_denied") => PollAnswer::Denied(
            fields
                .as_ref()
                .and_then(|f| f.get("error_description"))
                .and_then(Value::as_str)
                .map(|d| response::printable(d, 300)),
        ),
        _ => match response::token_set(status, headers, body, rules) {
            Ok(tokens) => PollAnswer::Tokens(tokens),
            Err(error) => PollAnswer::Failed(error),
        },
    }
}

/// The wait before the next poll after `failures` failed ones in a row (network, 5xx):
/// doubling from the interval up to a minute (or the interval, if longer), and never shorter
/// than the server's `Retry-After` (cut to [`MAX_INTERVAL`]).
pub(crate) fn backoff(
    interval: Duration,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let doubled = interval.saturating_mul(1 << failures.min(6));
    doubled
        .min(MAX_BACKOFF.max(interval))
        .max(retry_after.unwrap_or_default().min(MAX_INTERVAL))
}

/// One device sign-in in progress: what to show the user, and the device code to poll with.
/// Consumed by [`poll`](Self::poll).
///
/// `Debug` shows the user code and the URIs, which the user sees anyway, never the device
/// code.
pub struct PendingDeviceAuthorization {
    answer: DeviceCodeAnswer,
    expires_at: Instant,
    endpoint: Endpoint,
    revocation_url: RevocationUrl,
    persist: Option<Arc<PersistHook>>,
}

impl PendingDeviceAuthorization {
    /// Where the user goes to enter the code, on another device.
    pub fn verification_uri(&self) -> &str {
        &self.answer.verification_uri
    }

    /// The verification URI with the user code in it, if the server gave one: for a QR code,
    /// so the user need not type the code.
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.answer.verification_uri_complete.as_deref()
    }

    /// The code the user enters at the verification URI. Meant to be shown.
    pub fn user_code(&self) -> &str {
        &self.answer.user_code
    }

    /// How long the codes live, as the server said (at most an hour is believed).
    pub fn expires_in(&self) -> Duration {
        self.answer.expires_in
    }

    /// When the codes expire, on tokio's clock: polling ends then.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// The wait between polls, as the server said (5 s if it did not; at least 1 s and at
    /// most 5 min are believed).
    pub fn interval(&self) -> Duration {
        self.answer.interval
    }

    /// Polls the token endpoint with the device code until the user has signed in, and
    /// returns a [`RefreshTokenGrant`] that starts with the tokens obtained, ready for
    /// [`RefreshLayer::new`](crate::RefreshLayer::new).
    ///
    /// - The first poll is one interval after the answer, each next one an interval after
    ///   the previous answer. `authorization_pending` keeps polling; `slow_down` adds 5 s to
    ///   the interval for every later poll.
    /// - `access_denied` ends with [`DeviceAuthorizationError::AccessDenied`]; `expired_token`,
    ///   or the codes' own expiry (reached without another request), with
    ///   [`DeviceAuthorizationError::Expired`].
    /// - A poll that fails for now (network, timeout, 5xx, 429) is polled through, waiting
    ///   twice as long each time up to a minute (or the server's `Retry-After`), until the
    ///   codes expire; the last such failure is then the expired error's `source()`.
    /// - Any other failure (`invalid_client`, `invalid_grant`, ...) ends with
    ///   [`DeviceAuthorizationError::Request`].
    ///
    /// Dropping the future stops polling.
    pub async fn poll(self) -> Result<RefreshTokenGrant, DeviceAuthorizationError> {
        let token_url = self.endpoint.checked_url()?.clone();
        let params = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", self.answer.device_code.secret()),
        ];
        let rules = self.endpoint.rules(true);
        let mut interval = self.answer.interval;
        let mut wait = interval;
        let mut failures = 0;
        let mut last_failure = None;
        let (tokens, sent_at) = loop {
            let next = Instant::now().checked_add(wait);
            let Some(next) = next.filter(|at| *at < self.expires_at) else {
                tokio::time::sleep_until(self.expires_at).await;
                return Err(DeviceAuthorizationError::Expired {
                    last_failure: last_failure.map(Box::new),
                });
            };
            tokio::time::sleep_until(next).await;
            let sent_at = Instant::now();
            let answer = match self.endpoint.post_token(&token_url, &params, true).await {
                Ok((head, body)) => poll_answer(head.status, &head.headers, &body, &rules),
                Err(error) => PollAnswer::Failed(error),
            };
            match answer {
                PollAnswer::Tokens(tokens) => break (tokens, sent_at),
                PollAnswer::Pending => {}
                PollAnswer::SlowDown => {
                    interval = (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL);
                    tracing::debug!(interval_s = interval.as_secs(), "asked to slow down");
                }
                PollAnswer::Denied(description) => {
                    return Err(DeviceAuthorizationError::AccessDenied { description });
                }
                PollAnswer::Expired => {
                    return Err(DeviceAuthorizationError::Expired { last_failure: None });
                }
                PollAnswer::Failed(RefreshError::Transient(error)) => {
                    failures += 1;
                    wait = backoff(interval, failures, error.retry_after());
                    tracing::debug!(%error, wait_s = wait.as_secs(), "device code poll failed; polling on");
                    last_failure = Some(RefreshError::Transient(error));
                    continue;
                }
                PollAnswer::Failed(error) => return Err(DeviceAuthorizationError::Request(error)),
            }
            failures = 0;
            last_failure = None;
            wait = interval;
        };
        self.persist_first(&tokens, sent_at).await;
        let refresh_token = tokens.refresh_token.clone();
        Ok(
            RefreshTokenGrant::from_parts(self.endpoint, refresh_token, Some((tokens, sent_at)))
                .with_revocation_url(self.revocation_url)
                .with_persist_hook(self.persist),
        )
    }

    /// Hands the sign-in's tokens to the persistence hook, within the token request timeout.
    async fn persist_first(&self, tokens: &TokenSet, sent_at: Instant) {
        let Some(hook) = &self.persist else { return };
        let mut update = TokenUpdate::new(tokens.refresh_token.clone());
        if let Some(lifetime) = tokens.expires_in {
            let left = lifetime.saturating_sub(sent_at.elapsed());
            let expires_at = SystemTime::now()
                .checked_add(left)
                .unwrap_or(SystemTime::now());
            update = update.with_access_token(tokens.access_token.clone(), expires_at);
        } else {
            update.access_token = Some(tokens.access_token.clone());
        }
        update.scope = tokens.scope.clone();
        let failure = match tokio::time::timeout(self.endpoint.timeout, hook(update)).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_elapsed) => format!("the hook took longer than {:?}", self.endpoint.timeout),
        };
        tracing::error!(
            error = %failure,
            "storing the first tokens of the device sign-in failed; they are in use in memory"
        );
    }
}

impl fmt::Debug for PendingDeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingDeviceAuthorization")
            .field("verification_uri", &self.answer.verification_uri)
            .field(
                "verification_uri_complete",
                &self.answer.verification_uri_complete,
            )
            .field("user_code", &self.answer.user_code)
            .field("device_code", &self.answer.device_code)
            .field("expires_in", &self.answer.expires_in)
            .field("interval", &self.answer.interval)
            .finish_non_exhaustive()
    }
}

/// Why a device sign-in ended without tokens. Tell the cases apart with `match` or the
/// `is_` methods.
///
/// ```
/// use oauth_refresh::oauth::DeviceAuthorizationError;
///
/// fn advice(err: &DeviceAuthorizationError) -> &'static str {
///     match err {
///         DeviceAuthorizationError::AccessDenied { .. } => "the sign-in was refused",
///         DeviceAuthorizationError::Expired { .. } => "too late: start again",
///         _ => "something is wrong with the client or the server",
///     }
/// }
///
/// let err = DeviceAuthorizationError::AccessDenied { description: None };
/// assert!(err.is_access_denied() && !err.is_expired());
/// assert_eq!(advice(&err), "the sign-in was refused");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceAuthorizationError {
    /// The user refused the sign-in (`access_denied`).
    AccessDenied {
        /// The server's `error_description`, if any.
        description: Option<String>,
    },
    /// The codes expired before the user signed in: the server said `expired_token`, or
    /// their `expires_in` passed. Start a new sign-in.
    Expired {
        /// The last failure of polls that failed for now (network, 5xx) right before the
        /// expiry, if they were failing: also the error's `source()`.
        last_failure: Option<Box<RefreshError>>,
    },
    /// The device authorization request, or a poll, failed otherwise: the client was
    /// refused (`invalid_client`, `invalid_scope`: a [`ConfigurationError`]), the grant
    /// refused (`invalid_grant`), a URL is wrong, or the start could not reach the server.
    /// The message includes the refresh error's; `source()` goes on from that error's own.
    Request(RefreshError),
}

impl DeviceAuthorizationError {
    /// Whether the user refused the sign-in.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, DeviceAuthorizationError::AccessDenied { .. })
    }

    /// Whether the codes expired before the user signed in.
    pub fn is_expired(&self) -> bool {
        matches!(self, DeviceAuthorizationError::Expired { .. })
    }
}

impl fmt::Display for DeviceAuthorizationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceAuthorizationError::AccessDenied { description } => {
                f.write_str("the device sign-in was refused (access_denied")?;
                if let Some(description) = description {
                    write!(f, ": {description}")?;
                }
                f.write_str(")")
            }
            DeviceAuthorizationError::Expired { .. } => f.write_str(
                "the device code expired before the user signed in; start a new sign-in",
            ),
            DeviceAuthorizationError::Request(error) => {
                write!(f, "the device sign-in failed: {error}")
            }
        }
    }
}

impl Error for DeviceAuthorizationError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            DeviceAuthorizationError::Expired {
                last_failure: Some(error),
            } => Some(&**error),
            // Its message is already in ours.
            DeviceAuthorizationError::Request(error) => error.source(),
            _ => None,
        }
    }
}

impl From<RefreshError> for DeviceAuthorizationError {
    fn from(error: RefreshError) -> Self {
        DeviceAuthorizationError::Request(error)
    }
}

impl From<ConfigurationError> for DeviceAuthorizationError {
    fn from(error: ConfigurationError) -> Self {
        DeviceAuthorizationError::Request(error.into())
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use serde_json::json;

    const RULES: Rules<'static> = Rules {
        host: Some("login.example.com"),
        reauth_codes: &[],
        answered_resend_safe: false,
        dpop: false,
    };

    fn parse(status: u16, body: &Value) -> Result<DeviceCodeAnswer, RefreshError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        device_authorization(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            body.to_string().as_bytes(),
            &RULES,
        )
    }

    fn answer(extra: Value) -> Value {
        let mut body = json!({
            "device_code": "dc-s3cr3t",
            "user_code": "WDJB-MJHT",
            "verification_uri": "https://login.example.com/device",
            "expires_in": 1800,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    #[test]
    fn rfc_8628_example_answer_is_read() {
        let read = parse(
            200,
            &answer(json!({
                "verification_uri_complete": "https://login.example.com/device?user_code=WDJB-MJHT",
                "interval": 7,
            })),
        )
        .unwrap();
        assert_eq!(read.device_code.secret(), "dc-s3cr3t");
        assert_eq!(read.user_code, "WDJB-MJHT");
        assert_eq!(read.verification_uri, "https://login.example.com/device");
        assert_eq!(
            read.verification_uri_complete.as_deref(),
            Some("https://login.example.com/device?user_code=WDJB-MJHT")
        );
        assert_eq!(read.expires_in, Duration::from_secs(1800));
        assert_eq!(read.interval, Duration::from_secs(7));
    }

    #[test]
    fn interval_defaults_to_5_s_and_verification_url_is_accepted() {
        let mut body = answer(json!({}));
        let uri = body
            .as_object_mut()
            .unwrap()
            .remove("verification_uri")
            .unwrap();
        body["verification_url"] = uri;
        let read = parse(200, &body).unwrap();
        assert_eq!(read.interval, DEFAULT_INTERVAL);
        assert_eq!(read.verification_uri, "https://login.example.com/device");
        let read = parse(200, &answer(json!({"interval": "soon"}))).unwrap();
        assert_eq!(read.interval, DEFAULT_INTERVAL);
    }

    #[test]
    fn hostile_numbers_are_cut_to_sane_bounds() {
        for (expires_in, interval, expected) in [
            (
                json!(u64::MAX),
                json!(u64::MAX),
                (MAX_DEVICE_CODE_LIFETIME, MAX_INTERVAL),
            ),
            (
                json!(1e300),
                json!(0),
                (MAX_DEVICE_CODE_LIFETIME, MIN_INTERVAL),
            ),
            (
                json!("99999999999999999999999"),
                json!(-3),
                (MAX_DEVICE_CODE_LIFETIME, DEFAULT_INTERVAL),
            ),
            (json!(0), json!(0.5), (Duration::ZERO, MIN_INTERVAL)),
        ] {
            let read = parse(
                200,
                &answer(json!({"expires_in": expires_in, "interval": interval})),
            )
            .unwrap();
            assert_eq!((read.expires_in, read.interval), expected);
        }
    }

    #[test]
    fn missing_fields_are_invalid_and_quote_nothing() {
        for name in ["device_code", "user_code", "verification_uri", "expires_in"] {
            let mut body = answer(json!({}));
            body.as_object_mut().unwrap().remove(name);
            let err = parse(200, &body).unwrap_err();
            let RefreshError::Transient(transient) = &err else {
                panic!("{name}: {err:?}")
            };
            assert_eq!(transient.kind(), TransientKind::InvalidResponse);
            let printed = format!("{err} {err:?} {}", transient.source().unwrap());
            assert!(!printed.contains("s3cr3t"), "{printed}");
        }
        let err = parse(200, &answer(json!({"user_code": "A\u{1b}[2J"}))).unwrap_err();
        assert_eq!(err.kind(), crate::RefreshErrorKind::Transient);
    }

    #[test]
    fn errors_are_classified_as_token_endpoint_errors() {
        let class = |status, body: Value| parse(status, &body).unwrap_err().kind();
        use crate::RefreshErrorKind::*;
        assert_eq!(
            class(401, json!({"error": "invalid_client"})),
            Configuration
        );
        assert_eq!(class(400, json!({"error": "invalid_scope"})), Configuration);
        assert_eq!(
            class(200, json!({"error": "invalid_client"})),
            Configuration
        );
        assert_eq!(class(503, json!({})), Transient);
        assert_eq!(class(500, answer(json!({}))), Transient);
    }

    #[test]
    fn poll_answers_name_their_rfc_8628_codes() {
        let poll = |status: u16, body: Value| {
            poll_answer(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                body.to_string().as_bytes(),
                &RULES,
            )
        };
        assert!(matches!(
            poll(400, json!({"error": "authorization_pending"})),
            PollAnswer::Pending
        ));
        assert!(matches!(
            poll(400, json!({"error": "slow_down"})),
            PollAnswer::SlowDown
        ));
        assert!(matches!(
            poll(400, json!({"error": "expired_token"})),
            PollAnswer::Expired
        ));
        assert!(matches!(
            poll(400, json!({"error": "access_denied", "error_description": "no\u{7}pe"})),
            PollAnswer::Denied(Some(d)) if d == "nope"
        ));
        assert!(matches!(
            poll(200, json!({"access_token": "at", "refresh_token": "rt"})),
            PollAnswer::Tokens(t) if t.refresh_token.as_ref().unwrap().secret() == "rt"
        ));
        assert!(matches!(
            poll(400, json!({"error": "invalid_grant"})),
            PollAnswer::Failed(RefreshError::Reauth(_))
        ));
        assert!(matches!(
            poll(503, json!({})),
            PollAnswer::Failed(RefreshError::Transient(_))
        ));
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_honours_retry_after() {
        let five = Duration::from_secs(5);
        let secs = |n| Duration::from_secs(n);
        assert_eq!(backoff(five, 1, None), secs(10));
        assert_eq!(backoff(five, 2, None), secs(20));
        assert_eq!(backoff(five, 4, None), secs(60));
        assert_eq!(backoff(five, u32::MAX, None), secs(60));
        assert_eq!(backoff(secs(90), 3, None), secs(90));
        assert_eq!(backoff(five, 1, Some(secs(30))), secs(30));
        assert_eq!(backoff(five, 1, Some(secs(1 << 40))), MAX_INTERVAL);
    }

    #[test]
    fn debug_shows_the_user_code_never_the_device_code() {
        let read = parse(200, &answer(json!({}))).unwrap();
        let pending = PendingDeviceAuthorization {
            answer: read,
            expires_at: Instant::now(),
            endpoint: Endpoint::new("https://login.example.com/token", "tv".into()),
            revocation_url: None,
            persist: None,
        };
        let printed = format!("{pending:?} {pending:#?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("WDJB-MJHT"), "{printed}");
        let sign_in = DeviceAuthorization::new(
            "https://login.example.com/device?key=k-s3cr3t",
            "https://login.example.com/token",
            "tv",
        )
        .client_secret("cs-s3cr3t")
        .param("audience", "aud-s3cr3t");
        let printed = format!("{sign_in:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }

    #[test]
    fn errors_print_one_line_and_their_chain_once() {
        let expired = DeviceAuthorizationError::Expired {
            last_failure: Some(Box::new(
                TransientError::new(TransientKind::ServerError(503)).into(),
            )),
        };
        assert!(expired.is_expired());
        assert_eq!(
            expired.source().unwrap().to_string(),
            "token refresh failed for now: the token endpoint answered 503"
        );
        let denied = DeviceAuthorizationError::AccessDenied {
            description: Some("user said no".into()),
        };
        assert_eq!(
            denied.to_string(),
            "the device sign-in was refused (access_denied: user said no)"
        );
        for err in [expired, denied] {
            assert!(!err.to_string().contains('\n'));
        }
    }
}
