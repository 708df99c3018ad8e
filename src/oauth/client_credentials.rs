//! The client credentials grant (RFC 6749 §4.4): a service's own token, no user involved.

use std::fmt;

use super::endpoint::{Endpoint, ParamNames};
use crate::error::RefreshError;
use crate::source::{BoxFuture, TokenRequest, TokenSource};
use crate::token::{ClientSecret, TokenSet};

/// Obtains tokens with the client's own credentials (`grant_type=client_credentials`).
///
/// No refresh token is expected: when the token nears expiry the grant is simply run again.
/// Every failure of this grant may be resent, since asking twice costs nothing.
///
/// ```
/// use oauth_refresh::{ClientCredentials, RefreshLayer};
///
/// let grant = ClientCredentials::new("https://login.example.com/oauth2/token", "reporting", "s3cr3t")
///     .scope("api:read")
///     .scope("api:write")
///     .audience("https://api.example.com");
/// let layer = RefreshLayer::new(grant);
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct ClientCredentials {
    endpoint: Endpoint,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
}

impl ClientCredentials {
    /// A grant for `client_id` with `client_secret` at the token endpoint `token_url`.
    ///
    /// A URL that does not parse, or plain `http://` to a host other than loopback, fails
    /// each refresh with a [`ConfigurationError`](crate::ConfigurationError) before any
    /// network call.
    pub fn new(
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
        client_secret: impl Into<ClientSecret>,
    ) -> Self {
        let mut endpoint = Endpoint::new(token_url.as_ref(), client_id.into());
        endpoint.client_secret = Some(client_secret.into());
        ClientCredentials {
            endpoint,
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// A grant for `client_id` that authenticates with `auth` rather than a secret: a signed
    /// JWT ([`ClientAuth::PrivateKeyJwt`](super::ClientAuth::PrivateKeyJwt)) or an assertion
    /// from outside ([`ClientAuth::ClientAssertion`](super::ClientAuth::ClientAssertion)).
    ///
    /// ```
    /// use oauth_refresh::{ClientCredentials, RefreshLayer};
    /// use oauth_refresh::oauth::{Es256Key, PrivateKeyJwt};
    ///
    /// let key = Es256Key::generate()?.with_key_id("client-key-1");
    /// let grant = ClientCredentials::with_client_auth(
    ///     "https://login.example.com/oauth2/token",
    ///     "reporting",
    ///     PrivateKeyJwt::new(key),
    /// )
    /// .scope("api:read");
    /// let layer = RefreshLayer::new(grant);
    /// # drop(layer);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_client_auth(
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
        auth: impl Into<super::ClientAuth>,
    ) -> Self {
        let mut endpoint = Endpoint::new(token_url.as_ref(), client_id.into());
        endpoint.auth = auth.into();
        ClientCredentials {
            endpoint,
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Adds a scope to request; scopes are sent space-separated.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds an `audience` parameter (Auth0, Okta and others name the API this way); may be
    /// given more than once, like [`resource`](Self::resource).
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Adds a `resource` parameter (RFC 8707); may be given more than once.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Adds any other form parameter to the token request, such as a `client_assertion`.
    /// `Debug` shows its name, never its value.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// This grant asking for `params` instead: their scopes, if they name any, replace the
    /// grant's own; their audiences and resources are added to the grant's.
    ///
    /// A keyed layer over a `ClientCredentials` does this per key: see
    /// [`TokenParams`](super::TokenParams).
    ///
    /// ```
    /// use oauth_refresh::ClientCredentials;
    /// use oauth_refresh::oauth::TokenParams;
    ///
    /// let grant = ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t").scope("default");
    /// let orders = grant.with_params(&TokenParams::new().scope("orders:read").audience("https://orders.example.com"));
    /// assert!(format!("{orders:?}").contains(r#"scopes: ["orders:read"]"#));
    /// ```
    pub fn with_params(&self, params: &super::TokenParams) -> Self {
        let mut grant = self.clone();
        if params.scopes().next().is_some() {
            grant.scopes = params.scopes().map(str::to_owned).collect();
        }
        for audience in params.audiences() {
            grant = grant.audience(audience);
        }
        for resource in params.resources() {
            grant = grant.resource(resource);
        }
        grant
    }

    super::endpoint_setters!();
}

impl TokenSource for ClientCredentials {
    fn fetch(&self, _request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            let scope = self.scopes.join(" ");
            let mut params = vec![("grant_type", "client_credentials")];
            if !scope.is_empty() {
                params.push(("scope", &scope));
            }
            params.extend(self.params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            self.endpoint.request(&params, true).await
        })
    }

    fn grant(&self) -> &str {
        "client_credentials"
    }

    fn host(&self) -> Option<&str> {
        self.endpoint.host()
    }

    fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.endpoint.dpop.as_ref().map(|dpop| &dpop.key)
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("endpoint", &self.endpoint)
            .field("scopes", &self.scopes)
            .field("params", &ParamNames(&self.params))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_extra_parameters_by_name_only() {
        let grant = ClientCredentials::new("https://login.example.com/token", "svc", "cs-s3cr3t")
            .scope("api:read")
            .audience("https://api.example.com")
            .param("client_assertion", "eyJhbGciOiJSUzI1NiJ9.ca-s3cr3t.sig")
            .param(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
        for printed in [format!("{grant:?}"), format!("{grant:#?}")] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(!printed.contains("eyJhbGciOiJSUzI1NiJ9"), "{printed}");
            assert!(printed.contains("client_assertion"), "{printed}");
            assert!(printed.contains("audience"), "{printed}");
            assert!(printed.contains("api:read"), "{printed}");
        }
    }
}
