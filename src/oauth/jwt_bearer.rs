//! The JWT-bearer authorization grant (RFC 7523 §2.1): a token for a signed JWT assertion.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use super::endpoint::{Endpoint, ParamNames};
use super::supply::{Input, Supply};
use crate::BoxError;
use crate::error::{ConfigurationError, RefreshError};
use crate::source::{BoxFuture, TokenRequest, TokenSource};
use crate::token::{ClientSecret, TokenSet};

const ASSERTION: Input = Input {
    name: "the assertion",
    code: "assertion_unavailable",
};

/// RFC 7523 §2.1.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Where a [`JwtBearer`] grant gets its assertion: a signed JWT, obtained afresh for every
/// token request (so each may carry its own `jti` and a short `exp`, where the provider makes
/// them so). Its value never shows in `Debug`, errors or logs.
///
/// Two ways, both from outside the crate: a closure (a cloud SDK, a KMS signing call, a
/// metadata server) or a file re-read on each request (a Kubernetes projected
/// service-account token, a cloud's identity token). Signing the assertion with a key the
/// crate holds will be a third constructor of this type.
///
/// ```
/// use oauth_refresh::oauth::Assertion;
///
/// let from_disk = Assertion::from_file("/var/run/secrets/tokens/identity-token");
/// let from_code = Assertion::from_fn(|| async {
///     Ok::<_, std::io::Error>("eyJhbGciOiJFUzI1NiJ9.e30.sig".to_owned())
/// });
/// assert!(!format!("{from_code:?}").contains("eyJ"));
/// # drop(from_disk);
/// ```
#[derive(Clone)]
pub struct Assertion {
    // The seam for assertions the crate signs itself: a `Signed { signer, claims }` kind of
    // its own beside `Supply`, built by a constructor of `Assertion`, asked for a fresh
    // assertion (new `jti`, `iat`, `exp`) in `obtain`.
    supply: Supply,
}

impl Assertion {
    /// What `f` returns, called for every token request.
    ///
    /// An error of the crate's types ([`RefreshError`], [`ReauthRequired`](crate::ReauthRequired),
    /// [`TransientError`](crate::TransientError), [`ConfigurationError`]) keeps its class;
    /// any other is a [`ConfigurationError`] `assertion_unavailable` whose description holds
    /// its `Display`, which therefore must not hold secrets.
    pub fn from_fn<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Assertion {
            supply: Supply::from_fn(f),
        }
    }

    /// The contents of the file at `path`, read again for every token request (surrounding
    /// whitespace trimmed).
    ///
    /// A file that is missing or empty, as it can be for a moment while it is replaced,
    /// fails the request with a [`TransientError`](crate::TransientError) of kind
    /// [`Credential`](crate::TransientKind::Credential), asked again with backoff; one that
    /// cannot be read (no permission, a directory, more than 64 KiB, not UTF-8) with a
    /// [`ConfigurationError`] `assertion_unavailable`. The errors name the path, never the
    /// content.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Assertion {
            supply: Supply::from_file(path),
        }
    }

    async fn obtain(&self) -> Result<String, RefreshError> {
        self.supply.obtain(ASSERTION).await
    }
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Assertion").field(&self.supply).finish()
    }
}

/// Obtains tokens with a JWT assertion as the authorization grant (RFC 7523 §2.1,
/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`): the assertion's issuer vouches
/// for its subject, and the server issues a token for that subject. Workload identity works
/// this way: a service presents the identity token its platform gives it, and holds no
/// secret.
///
/// The grant is run again when its token nears expiry, like
/// [`ClientCredentials`](crate::ClientCredentials), each time with an assertion obtained
/// afresh; a failure may be resent (with a new assertion). A `refresh_token` in the answer
/// is never presented by this grant: the next token comes from the next assertion, so no
/// token outlives the identity that the assertions state. It is not dropped either: the cell
/// keeps it and hands it to the persistence hook, as every refresh token it receives.
///
/// # Errors
///
/// The server answers `invalid_grant` when it refuses the assertion (RFC 7523 §3.1: a bad
/// signature, issuer, audience, or an expired one). No sign-in fixes that, so it is a
/// [`ConfigurationError`] `invalid_grant` rather than a
/// [`ReauthRequired`](crate::ReauthRequired): the layer asks again, with a new assertion,
/// after its cooldown, so a file rotated late recovers by itself. Codes set with
/// [`reauth_on`](Self::reauth_on) still mean `ReauthRequired`. An assertion that cannot be
/// obtained fails the request before anything is sent, in the class its source reported.
///
/// Client authentication is optional in this grant (RFC 7523 §3.1): without a
/// [`client_secret`](Self::client_secret) the form carries the `client_id`, as a public
/// client's does.
///
/// ```
/// use oauth_refresh::RefreshLayer;
/// use oauth_refresh::oauth::{Assertion, JwtBearer};
///
/// let grant = JwtBearer::new(
///     "https://login.example.com/oauth2/token",
///     "billing-job",
///     Assertion::from_file("/var/run/secrets/tokens/identity-token"),
/// )
/// .scope("invoices:write");
/// let layer = RefreshLayer::new(grant);
/// # drop(layer);
/// ```
///
/// Each token request presents a new assertion:
///
/// ```
/// # use bytes::Bytes;
/// # use http_body_util::{BodyExt, Full};
/// # use oauth_refresh::{BoxFuture, TransientError, oauth::{HttpClient, ResponseBody}};
/// # struct Login;
/// # impl HttpClient for Login {
/// #     fn send(&self, request: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
/// #         let form: std::collections::HashMap<String, String> =
/// #             url::form_urlencoded::parse(request.body()).into_owned().collect();
/// #         assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
/// #         let body = format!(r#"{{"access_token":"at-for-{}","token_type":"Bearer","expires_in":300}}"#, form["assertion"]);
/// #         let body = Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
/// #         Box::pin(async move { Ok(http::Response::new(body)) })
/// #     }
/// # }
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use oauth_refresh::RefreshLayer;
/// use oauth_refresh::oauth::{Assertion, JwtBearer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), oauth_refresh::RefreshError> {
/// static SIGNED: AtomicU32 = AtomicU32::new(0);
/// // Stands for a call that signs a JWT with a fresh `jti` (a KMS, a cloud SDK).
/// let assertion = Assertion::from_fn(|| async {
///     let n = SIGNED.fetch_add(1, Ordering::SeqCst) + 1;
///     Ok::<_, std::io::Error>(format!("jwt-{n}"))
/// });
/// let layer = RefreshLayer::new(
///     JwtBearer::new("https://login.example.com/token", "billing-job", assertion)
/// #       .http_client(Login)
/// );
/// layer.refresh().await?;
/// layer.refresh().await?;
/// assert_eq!(layer.access_token().await?.secret(), "at-for-jwt-2");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct JwtBearer {
    endpoint: Endpoint,
    assertion: Assertion,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
}

impl JwtBearer {
    /// A grant for the client `client_id` at the token endpoint `token_url`, presenting
    /// `assertion`.
    pub fn new(
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
        assertion: Assertion,
    ) -> Self {
        JwtBearer {
            endpoint: Endpoint::new(token_url.as_ref(), client_id.into()),
            assertion,
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The client secret of a confidential client.
    pub fn client_secret(mut self, client_secret: impl Into<ClientSecret>) -> Self {
        self.endpoint.client_secret = Some(client_secret.into());
        self
    }

    /// Adds a scope to request; scopes are sent space-separated.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds any other form parameter, such as an `audience` or a `resource`. `Debug` shows
    /// its name, never its value.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    super::endpoint_setters!();
}

impl TokenSource for JwtBearer {
    fn fetch(&self, _request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            let assertion = self.assertion.obtain().await?;
            let scope = self.scopes.join(" ");
            let mut params = vec![("grant_type", GRANT_TYPE), ("assertion", &assertion)];
            if !scope.is_empty() {
                params.push(("scope", &scope));
            }
            params.extend(self.params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            match self.endpoint.request(&params, true).await {
                // A refresh token in the answer stays in the set or the error, for the hook.
                Ok(set) => Ok(set),
                Err(RefreshError::Reauth(reauth))
                    if reauth.error() == "invalid_grant"
                        && !self
                            .endpoint
                            .reauth_codes
                            .iter()
                            .any(|c| c == "invalid_grant") =>
                {
                    let description = match reauth.description() {
                        Some(description) => format!("the assertion was refused: {description}"),
                        None => "the assertion was refused".to_owned(),
                    };
                    Err(ConfigurationError::new("invalid_grant")
                        .with_description(description)
                        .into())
                }
                Err(error) => Err(error),
            }
        })
    }

    fn grant(&self) -> &str {
        "jwt_bearer"
    }

    fn host(&self) -> Option<&str> {
        self.endpoint.host()
    }

    fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.endpoint.dpop.as_ref().map(|dpop| &dpop.key)
    }
}

impl fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearer")
            .field("endpoint", &self.endpoint)
            .field("assertion", &self.assertion)
            .field("scopes", &self.scopes)
            .field("params", &ParamNames(&self.params))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::token_exchange::tests::{Canned, request};

    #[tokio::test]
    async fn a_refresh_token_in_the_answer_is_kept_for_the_hook() {
        let grant = JwtBearer::new(
            "https://login.example.com/token",
            "job",
            Assertion::from_fn(|| async { Ok::<_, std::io::Error>("jwt".to_owned()) }),
        )
        .http_client(Canned(
            r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt"}"#,
        ));
        let set = grant.fetch(request()).await.unwrap();
        assert_eq!(set.access_token.secret(), "at");
        assert_eq!(set.refresh_token.unwrap().secret(), "rt");
        let grant = grant.http_client(Canned(r#"{"token_type":"Bearer","refresh_token":"rt"}"#));
        let RefreshError::Transient(err) = grant.fetch(request()).await.unwrap_err() else {
            panic!()
        };
        assert_eq!(err.received_refresh_token().unwrap().secret(), "rt");
    }

    #[test]
    fn debug_shows_no_assertion_or_secret() {
        let grant = JwtBearer::new(
            "https://login.example.com/token",
            "job",
            Assertion::from_fn(|| async { Ok::<_, std::io::Error>("as-s3cr3t".to_owned()) }),
        )
        .client_secret("cs-s3cr3t")
        .scope("invoices:write");
        for printed in [format!("{grant:?}"), format!("{grant:#?}")] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(
                printed.contains("Assertion(") && printed.contains("Fn"),
                "{printed}"
            );
            assert!(printed.contains("invoices:write"), "{printed}");
        }
    }
}
