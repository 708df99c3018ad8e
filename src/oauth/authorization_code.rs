//! The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636 S256): the first tokens,
//! from a sign-in in a browser.

use std::error::Error;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use url::Url;

use super::endpoint::{Endpoint, ParamNames, UrlForDebug, check_transport};
use super::refresh_token::RefreshTokenGrant;
use crate::error::{ConfigurationError, RefreshError};
use crate::token::ClientSecret;

/// Starts sign-ins with the authorization code grant and PKCE.
///
/// [`start`](Self::start) builds the URL to send the user to and returns a
/// [`PendingAuthorization`] that owns the PKCE verifier, the `state` and the redirect URI.
/// [`PendingAuthorization::exchange`] consumes it: a code cannot be redeemed twice, the
/// redirect URI cannot differ between the two steps, and the verifier cannot be lost.
///
/// ```
/// use oauth_refresh::oauth::AuthorizationCode;
///
/// let sign_in = AuthorizationCode::new(
///     "https://login.example.com/authorize",
///     "https://login.example.com/oauth2/token",
///     "my-app",
///     "http://127.0.0.1:8765/callback",
/// )
/// .scope("openid")
/// .scope("offline_access");
/// let pending = sign_in.start()?;
/// assert!(pending.url().as_str().contains("code_challenge_method=S256"));
/// // Send the user to `pending.url()`; when the browser comes back to the redirect URI:
/// // let grant = pending.exchange(&callback_url).await?;
/// # Ok::<_, oauth_refresh::ConfigurationError>(())
/// ```
///
/// The exchange takes the pending authorization by value, so it cannot be run twice:
///
/// ```compile_fail
/// # use oauth_refresh::oauth::AuthorizationCode;
/// # async fn sign_in(sign_in: AuthorizationCode, callback: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let pending = sign_in.start()?;
/// let grant = pending.exchange(callback).await?;
/// let again = pending.exchange(callback).await?; // error: use of moved value `pending`
/// # drop((grant, again));
/// # Ok(())
/// # }
/// # let _ = sign_in;
/// ```
#[derive(Clone)]
pub struct AuthorizationCode {
    authorization_url: Result<Url, String>,
    endpoint: Endpoint,
    redirect_uri: String,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
}

impl AuthorizationCode {
    /// Sign-ins for `client_id` at `authorization_url`, redeemed at `token_url`, coming back
    /// to `redirect_uri`.
    pub fn new(
        authorization_url: impl AsRef<str>,
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        AuthorizationCode {
            authorization_url: Url::parse(authorization_url.as_ref()).map_err(|e| e.to_string()),
            endpoint: Endpoint::new(token_url.as_ref(), client_id.into()),
            redirect_uri: redirect_uri.into(),
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The client secret of a confidential client. Public clients rely on PKCE alone.
    pub fn client_secret(mut self, client_secret: impl Into<ClientSecret>) -> Self {
        self.endpoint.client_secret = Some(client_secret.into());
        self
    }

    /// Adds a scope to request; scopes are sent space-separated.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds a parameter to the authorization URL, such as `prompt` or `audience`. `Debug`
    /// shows its name, never its value.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    super::endpoint_setters!();

    /// Starts one sign-in: a fresh PKCE verifier and `state`, and the URL to send the user to.
    ///
    /// Fails if a URL does not parse, if the authorization URL is plain `http://` to a host
    /// other than loopback, or if the system's random source fails.
    pub fn start(&self) -> Result<PendingAuthorization, ConfigurationError> {
        let mut url = self.authorization_url.clone().map_err(|reason| {
            ConfigurationError::local("invalid_authorization_url").with_description(format!(
                "the authorization URL could not be parsed: {reason}"
            ))
        })?;
        check_transport(&url, self.endpoint.allow_insecure_http)?;
        self.endpoint.checked_url()?;
        let redirect_uri = Url::parse(&self.redirect_uri).map_err(|e| {
            ConfigurationError::local("invalid_redirect_uri")
                .with_description(format!("the redirect URI could not be parsed: {e}"))
        })?;
        let verifier = random_base64url::<32>()?;
        let state = random_base64url::<16>()?;
        let challenge = BASE64URL.encode(Sha256::digest(verifier.as_bytes()));
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", self.endpoint.client_id())
                .append_pair("redirect_uri", &self.redirect_uri);
            if !self.scopes.is_empty() {
                query.append_pair("scope", &self.scopes.join(" "));
            }
            query
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            for (name, value) in &self.params {
                query.append_pair(name, value);
            }
        }
        Ok(PendingAuthorization {
            url,
            state,
            verifier: ClientSecret::new(verifier),
            redirect_uri,
            endpoint: self.endpoint.clone(),
        })
    }
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("authorization_url", &UrlForDebug(&self.authorization_url))
            .field("endpoint", &self.endpoint)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("params", &ParamNames(&self.params))
            .finish()
    }
}

/// One sign-in in progress: the URL to send the user to, and what redeeming the code needs.
/// Consumed by [`exchange`](Self::exchange).
pub struct PendingAuthorization {
    url: Url,
    state: String,
    /// The PKCE code verifier: a secret until the exchange.
    verifier: ClientSecret,
    redirect_uri: Url,
    endpoint: Endpoint,
}

impl PendingAuthorization {
    /// The authorization URL, with `state` and the S256 code challenge.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The `state` value, for an application that keeps pending sign-ins keyed by it.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Redeems the code the authorization server sent back, given the full URL the browser
    /// was redirected to (`<redirect_uri>?code=...&state=...`).
    ///
    /// The callback is checked before any network call: it must be the redirect URI, carry
    /// this sign-in's `state`, and carry a code rather than an `error`. The result is a
    /// [`RefreshTokenGrant`] that starts with the tokens obtained, ready for
    /// [`RefreshLayer::new`](crate::RefreshLayer::new).
    pub async fn exchange(
        self,
        callback_url: &str,
    ) -> Result<RefreshTokenGrant, AuthorizationError> {
        let code = self.code(callback_url)?;
        let params = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", self.verifier.secret()),
        ];
        let sent_at = Instant::now();
        // A code is single-use: the exchange is never resent.
        let tokens = self
            .endpoint
            .request(&params, false)
            .await
            .map_err(AuthorizationError::Token)?;
        let refresh_token = tokens.refresh_token.clone();
        Ok(RefreshTokenGrant::from_parts(
            self.endpoint,
            refresh_token,
            Some((tokens, sent_at)),
        ))
    }

    /// The code from the callback, once the callback is known to answer this sign-in.
    fn code(&self, callback_url: &str) -> Result<String, AuthorizationError> {
        let callback =
            Url::parse(callback_url).map_err(|_| AuthorizationError::RedirectMismatch)?;
        let same_target = callback.scheme() == self.redirect_uri.scheme()
            && callback.host_str() == self.redirect_uri.host_str()
            && callback.port_or_known_default() == self.redirect_uri.port_or_known_default()
            && callback.path() == self.redirect_uri.path();
        if !same_target {
            return Err(AuthorizationError::RedirectMismatch);
        }
        let param = |name: &str| {
            callback
                .query_pairs()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.into_owned())
        };
        // The state is checked first: an error or code from another sign-in is not ours.
        let state_matches = param("state").is_some_and(|state| {
            state.len() == self.state.len()
                && state
                    .bytes()
                    .zip(self.state.bytes())
                    .fold(0, |diff, (a, b)| diff | (a ^ b))
                    == 0
        });
        if !state_matches {
            return Err(AuthorizationError::StateMismatch);
        }
        if let Some(error) = param("error") {
            return Err(AuthorizationError::Denied {
                error,
                description: param("error_description"),
            });
        }
        param("code")
            .filter(|code| !code.is_empty())
            .ok_or(AuthorizationError::MissingCode)
    }
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("authorization_endpoint", &self.url.host_str())
            .field("state", &"[redacted]")
            .field("verifier", &self.verifier)
            .field("redirect_uri", &self.redirect_uri.as_str())
            .finish_non_exhaustive()
    }
}

/// `N` random bytes from the system's secure source, Base64url-encoded without padding
/// (32 bytes give the 43 characters RFC 7636 asks of a verifier at least).
fn random_base64url<const N: usize>() -> Result<String, ConfigurationError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| {
        ConfigurationError::local("random_source")
            .with_description(format!("the system's random source failed: {error}"))
    })?;
    Ok(BASE64URL.encode(bytes))
}

/// Why a sign-in could not be completed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// The callback's `state` is not this sign-in's: it belongs to another sign-in, or was
    /// forged. Nothing was sent.
    StateMismatch,
    /// The callback URL is not the redirect URI this sign-in started with. Nothing was sent.
    RedirectMismatch,
    /// The authorization server or the user refused (`access_denied`, ...).
    Denied {
        /// The OAuth `error` code.
        error: String,
        /// The server's `error_description`, if any.
        description: Option<String>,
    },
    /// The callback carried neither a code nor an error.
    MissingCode,
    /// The token endpoint refused the code, or could not be reached. The message includes
    /// the refresh error's; `source()` goes on from that error's own source, so no message
    /// shows twice down the chain.
    Token(RefreshError),
}

impl fmt::Display for AuthorizationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizationError::StateMismatch => {
                f.write_str("the sign-in callback's state does not match this sign-in")
            }
            AuthorizationError::RedirectMismatch => f.write_str(
                "the sign-in callback is not the redirect URI this sign-in started with",
            ),
            AuthorizationError::Denied { error, description } => {
                write!(f, "the sign-in was refused ({error}")?;
                if let Some(description) = description {
                    write!(f, ": {description}")?;
                }
                f.write_str(")")
            }
            AuthorizationError::MissingCode => f.write_str("the sign-in callback carried no code"),
            AuthorizationError::Token(error) => write!(f, "redeeming the code failed: {error}"),
        }
    }
}

impl Error for AuthorizationError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            // Its message is already in ours.
            AuthorizationError::Token(error) => error.source(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> PendingAuthorization {
        AuthorizationCode::new(
            "https://login.example.com/authorize?tenant=t1",
            "https://login.example.com/token",
            "my app",
            "http://127.0.0.1:8765/callback",
        )
        .scope("openid")
        .scope("offline_access")
        .start()
        .unwrap()
    }

    #[test]
    fn the_url_carries_state_and_an_s256_challenge_of_the_verifier() {
        let pending = pending();
        let query: Vec<(String, String)> = pending.url().query_pairs().into_owned().collect();
        let get = |name: &str| {
            query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("tenant"), Some("t1"));
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("client_id"), Some("my app"));
        assert_eq!(get("redirect_uri"), Some("http://127.0.0.1:8765/callback"));
        assert_eq!(get("scope"), Some("openid offline_access"));
        assert_eq!(get("state"), Some(pending.state()));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        let verifier = pending.verifier.secret();
        assert_eq!(verifier.len(), 43);
        let expected = BASE64URL.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(get("code_challenge"), Some(expected.as_str()));
        assert!(!pending.url().as_str().contains(verifier));
    }

    #[test]
    fn each_sign_in_has_its_own_verifier_and_state() {
        let (a, b) = (pending(), pending());
        assert_ne!(a.verifier.secret(), b.verifier.secret());
        assert_ne!(a.state(), b.state());
    }

    #[test]
    fn rfc_7636_appendix_b_challenge() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            BASE64URL.encode(Sha256::digest(verifier.as_bytes())),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_callback_is_checked_before_any_request() {
        let pending = pending();
        let state = pending.state().to_owned();
        let at = |query: &str| format!("http://127.0.0.1:8765/callback?{query}");
        assert!(matches!(
            pending.code(&at("code=c&state=forged")),
            Err(AuthorizationError::StateMismatch)
        ));
        assert!(matches!(
            pending.code(&at("code=c")),
            Err(AuthorizationError::StateMismatch)
        ));
        assert!(matches!(
            pending.code(&format!(
                "http://127.0.0.1:9999/callback?code=c&state={state}"
            )),
            Err(AuthorizationError::RedirectMismatch)
        ));
        assert!(matches!(
            pending.code(&at(&format!("error=access_denied&state={state}"))),
            Err(AuthorizationError::Denied { error, .. }) if error == "access_denied"
        ));
        assert!(matches!(
            pending.code(&at(&format!("state={state}"))),
            Err(AuthorizationError::MissingCode)
        ));
        assert_eq!(
            pending
                .code(&at(&format!("code=abc&state={state}")))
                .unwrap(),
            "abc"
        );
    }

    #[test]
    fn debug_shows_authorization_parameters_by_name_only() {
        let sign_in = AuthorizationCode::new(
            "https://login.example.com/authorize?tenant=t1",
            "https://login.example.com/token",
            "my app",
            "http://127.0.0.1:8765/callback",
        )
        .client_secret("cs-s3cr3t")
        .param("request", "eyJhbGciOiJSUzI1NiJ9.req-s3cr3t.sig");
        for printed in [format!("{sign_in:?}"), format!("{sign_in:#?}")] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(printed.contains("\"request\""), "{printed}");
        }
    }

    #[test]
    fn debug_hides_the_verifier_and_state() {
        let pending = pending();
        let printed = format!("{pending:?}");
        assert!(!printed.contains(pending.verifier.secret()), "{printed}");
        assert!(!printed.contains(pending.state()), "{printed}");
    }

    #[test]
    fn a_failed_exchange_prints_each_message_once_down_its_chain() {
        use crate::error::{TransientError, TransientKind};

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = AuthorizationError::Token(
            TransientError::new(TransientKind::Network)
                .with_source(io)
                .into(),
        );
        let mut messages = Vec::new();
        let mut next: Option<&(dyn Error + 'static)> = Some(&err);
        while let Some(err) = next {
            messages.push(err.to_string());
            next = err.source();
        }
        assert_eq!(
            messages,
            [
                "redeeming the code failed: token refresh failed for now: the token endpoint \
                 could not be reached",
                "connection refused",
            ]
        );
    }

    #[test]
    fn plain_http_authorization_url_is_refused() {
        let err = AuthorizationCode::new(
            "http://login.example.com/authorize",
            "https://login.example.com/token",
            "app",
            "http://127.0.0.1/callback",
        )
        .start()
        .unwrap_err();
        assert_eq!(err.error(), "insecure_endpoint");
    }
}
