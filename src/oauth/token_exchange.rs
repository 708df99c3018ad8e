//! Token exchange (RFC 8693): a token for one audience, obtained by presenting another token.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use super::endpoint::{Endpoint, ParamNames};
use super::supply::{Input, Supply};
use crate::BoxError;
use crate::cell::TokenCell;
use crate::error::{ConfigurationError, RefreshError};
use crate::layer::RefreshLayer;
use crate::source::{BoxFuture, TokenRequest, TokenSource};
use crate::token::{ClientSecret, TokenSet};

/// The token type URIs of RFC 8693 §3, for [`SecurityToken`]'s type and
/// [`TokenExchange::requested_token_type`].
pub mod token_type {
    /// An OAuth 2.0 access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// An OAuth 2.0 refresh token. Never accepted as the issued token: it would travel in an
    /// `Authorization` header.
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// An OpenID Connect ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// A JWT (RFC 7519), such as a Kubernetes service-account token.
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// A base64url-encoded SAML 1.1 assertion.
    pub const SAML1: &str = "urn:ietf:params:oauth:token-type:saml1";
    /// A base64url-encoded SAML 2.0 assertion.
    pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
}

const SUBJECT: Input = Input {
    name: "the subject token",
    code: "subject_token_unavailable",
};

const ACTOR: Input = Input {
    name: "the actor token",
    code: "actor_token_unavailable",
};

/// A token that a [`TokenExchange`] presents, as its `subject_token` or `actor_token`, with
/// its type URI. It is obtained afresh for every exchange, so the exchange always presents
/// the current one: the current token of another layer, what a closure returns, or what a
/// file holds at that moment.
///
/// Its value never shows in `Debug`, errors or logs.
///
/// ```
/// use oauth_refresh::oauth::{SecurityToken, token_type};
/// use oauth_refresh::{ClientCredentials, RefreshLayer};
///
/// // Another layer's current access token.
/// let user = RefreshLayer::new(ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t"));
/// let subject = SecurityToken::from_layer(&user);
///
/// // A Kubernetes projected service-account token, read again for every exchange.
/// let workload = SecurityToken::from_file(token_type::JWT, "/var/run/secrets/tokens/sts-token");
///
/// // Anything else, from a closure.
/// let other = SecurityToken::from_fn(token_type::ID_TOKEN, || async {
///     Ok::<_, std::io::Error>("eyJhbGciOiJFUzI1NiJ9.e30.sig".to_owned())
/// });
/// assert!(!format!("{other:?}").contains("eyJ"));
/// # drop((subject, workload));
/// ```
#[derive(Clone)]
pub struct SecurityToken {
    from: Origin,
    token_type: String,
}

#[derive(Clone)]
enum Origin {
    /// Another layer's token cell: its current token, refreshed as a request would have it.
    Cell(Arc<TokenCell>),
    Supply(Supply),
}

impl SecurityToken {
    /// The current access token of `layer` (of type [`token_type::ACCESS_TOKEN`]), as
    /// [`RefreshLayer::access_token`] gives it: refreshed when needed, by the layer's own
    /// single refresh, its cooldowns and its refused grant respected.
    ///
    /// If the exchange answers `invalid_grant`, the layer's token may have been revoked
    /// while still valid by the clock: it is treated like a token a server rejected (one
    /// refresh, spaced out as for rejected requests) and the exchange is sent once more with
    /// the new one.
    ///
    /// Never the exchange's own layer: its refresh would wait for itself until its timeout.
    pub fn from_layer(layer: &RefreshLayer) -> Self {
        SecurityToken {
            from: Origin::Cell(layer.shared.cell.clone()),
            token_type: super::token_type::ACCESS_TOKEN.to_owned(),
        }
    }

    /// What `f` returns, called for every exchange, with the type URI `token_type`.
    ///
    /// An error of the crate's types ([`RefreshError`], [`ReauthRequired`](crate::ReauthRequired),
    /// [`TransientError`](crate::TransientError), [`ConfigurationError`]) keeps its class;
    /// any other is a [`ConfigurationError`] whose description holds its `Display`, which
    /// therefore must not hold secrets.
    pub fn from_fn<F, Fut, E>(token_type: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        SecurityToken {
            from: Origin::Supply(Supply::from_fn(f)),
            token_type: token_type.into(),
        }
    }

    /// The contents of the file at `path`, read again for every exchange (surrounding
    /// whitespace trimmed), with the type URI `token_type`: a Kubernetes projected
    /// service-account token, a cloud's identity token, which someone else rotates on disk.
    ///
    /// A file that is missing or empty, as it can be for a moment while it is replaced,
    /// fails the request with a [`TransientError`](crate::TransientError) of kind
    /// [`Credential`](crate::TransientKind::Credential), asked again with backoff; one that
    /// cannot be read (no permission, a directory, more than 64 KiB, not UTF-8) with a
    /// [`ConfigurationError`] `subject_token_unavailable` (`actor_token_unavailable` for the
    /// actor). The errors name the path, never the content.
    pub fn from_file(token_type: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        SecurityToken {
            from: Origin::Supply(Supply::from_file(path)),
            token_type: token_type.into(),
        }
    }

    /// Sets the type URI (by default [`token_type::ACCESS_TOKEN`] for
    /// [`from_layer`](Self::from_layer)).
    pub fn token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// The token now, and the generation it had in its layer's cell.
    async fn obtain(&self, input: Input) -> Result<Obtained, RefreshError> {
        match &self.from {
            Origin::Cell(cell) => {
                let (token, generation) = cell
                    .access_token()
                    .await
                    .map_err(|error| super::supply::unavailable(error, input))?;
                Ok(Obtained {
                    value: token.secret().to_owned(),
                    generation: Some(generation),
                })
            }
            Origin::Supply(supply) => Ok(Obtained {
                value: supply.obtain(input).await?,
                generation: None,
            }),
        }
    }

    /// After the server refused `obtained`: a newer token from its layer, if it comes from
    /// one and a refresh is allowed now; `None` otherwise.
    async fn after_refusal(
        &self,
        obtained: &Obtained,
        input: Input,
    ) -> Option<Result<Obtained, RefreshError>> {
        let (Origin::Cell(cell), Some(generation)) = (&self.from, obtained.generation) else {
            return None;
        };
        let renewed = cell.access_token_after_rejection(generation).await?;
        Some(
            renewed
                .map(|(token, generation)| Obtained {
                    value: token.secret().to_owned(),
                    generation: Some(generation),
                })
                .map_err(|error| super::supply::unavailable(error, input)),
        )
    }
}

/// A token as one exchange presents it.
struct Obtained {
    value: String,
    /// Its generation in its layer's cell, if it comes from one.
    generation: Option<u64>,
}

impl fmt::Debug for SecurityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from: &dyn fmt::Debug = match &self.from {
            Origin::Cell(_) => &"layer",
            Origin::Supply(supply) => supply,
        };
        f.debug_struct("SecurityToken")
            .field("from", from)
            .field("token_type", &self.token_type)
            .finish()
    }
}

/// Obtains tokens by token exchange (RFC 8693, `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`):
/// it presents a subject token (and perhaps an actor token) and receives a token for
/// another audience, resource or scope.
///
/// Each exchange takes the subject token afresh from its [`SecurityToken`]: another layer's
/// current token, a file, a closure. The exchange is run again when its token nears expiry,
/// like [`ClientCredentials`](crate::ClientCredentials), and every failure of it may be
/// resent, since asking twice costs nothing.
///
/// # The answer
///
/// - `issued_token_type` is required (RFC 8693 §2.2.1): an answer without one is a
///   [`TransientError`](crate::TransientError) of kind
///   [`InvalidResponse`](crate::TransientKind::InvalidResponse).
/// - The token goes into an `Authorization: Bearer` header. A `token_type` of `N_A` says the
///   server did not issue an access token (an ID token, a JWT for another protocol): that is
///   a [`ConfigurationError`] `not_an_access_token`, unless
///   [`accept_not_access_token`](Self::accept_not_access_token) says the API takes it as a
///   bearer token. An issued refresh token is never sent.
/// - A `refresh_token` in the answer is never presented by this grant: the exchanged token
///   follows the subject's, so it is obtained again from the current subject token rather
///   than kept alive on its own, past the subject's sign-in. It is not dropped either: the
///   cell keeps it and hands it to the persistence hook, as every refresh token it receives.
///
/// # Errors
///
/// - The subject (or actor) token cannot be obtained: the same class its source reported,
///   saying which token it was. A [`ReauthRequired`](crate::ReauthRequired) from the
///   subject's layer means the subject must sign in again: once it has (`set_tokens` on that
///   layer), call [`refresh`](RefreshLayer::refresh) on the exchange's layer too, since a
///   layer holds its refreshes back after a `ReauthRequired` until then.
/// - The server answers `invalid_grant`: it refused the subject or actor token (RFC 8693
///   says servers should answer `invalid_request`; many answer `invalid_grant`). That alone
///   does not mean the subject must sign in again: a token from a layer is renewed once (see
///   [`SecurityToken::from_layer`]) and the exchange resent; a refusal that remains is a
///   [`ConfigurationError`] `invalid_grant` (a policy, an audience or a trust the server
///   lacks), which the layer retries after its cooldown. Codes set with
///   [`reauth_on`](Self::reauth_on) still mean [`ReauthRequired`](crate::ReauthRequired).
///
/// ```
/// use oauth_refresh::oauth::{SecurityToken, TokenExchange, token_type};
/// use oauth_refresh::{RefreshLayer, RefreshTokenGrant};
///
/// // The user's own token, kept fresh by its layer...
/// let user = RefreshLayer::new(RefreshTokenGrant::new("https://login.example.com/token", "web", "rt-stored"));
/// // ...exchanged for a token to call the orders API on the user's behalf.
/// let exchange = TokenExchange::new("https://login.example.com/token", "gateway", SecurityToken::from_layer(&user))
///     .client_secret("s3cr3t")
///     .audience("https://orders.example.com")
///     .scope("orders:read")
///     .requested_token_type(token_type::ACCESS_TOKEN);
/// let orders = RefreshLayer::new(exchange);
/// # drop(orders);
/// ```
///
/// Every exchange presents the subject layer's current token:
///
/// ```
/// # use bytes::Bytes;
/// # use http_body_util::{BodyExt, Full};
/// # use oauth_refresh::{BoxFuture, TransientError, oauth::{HttpClient, ResponseBody}};
/// # /// One token endpoint for both grants, answering from the form.
/// # struct Login;
/// # impl HttpClient for Login {
/// #     fn send(&self, request: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
/// #         let form: std::collections::HashMap<String, String> =
/// #             url::form_urlencoded::parse(request.body()).into_owned().collect();
/// #         let body = match form["grant_type"].as_str() {
/// #             "client_credentials" => r#"{"access_token":"service-at","token_type":"Bearer","expires_in":3600}"#.to_owned(),
/// #             _ => {
/// #                 assert_eq!(form["subject_token"], "service-at");
/// #                 assert_eq!(form["audience"], "https://orders.example.com");
/// #                 r#"{"access_token":"orders-at","token_type":"Bearer","expires_in":300,
/// #                     "issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#.to_owned()
/// #             }
/// #         };
/// #         let body = Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
/// #         Box::pin(async move { Ok(http::Response::new(body)) })
/// #     }
/// # }
/// use oauth_refresh::oauth::{SecurityToken, TokenExchange};
/// use oauth_refresh::{ClientCredentials, RefreshLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), oauth_refresh::RefreshError> {
/// let token_url = "https://login.example.com/token";
/// let service = RefreshLayer::new(
///     ClientCredentials::new(token_url, "svc", "s3cr3t")
/// #       .http_client(Login)
/// );
/// let orders = RefreshLayer::new(
///     TokenExchange::new(token_url, "gateway", SecurityToken::from_layer(&service))
///         .audience("https://orders.example.com")
/// #       .http_client(Login)
/// );
/// // The first exchange makes the service layer fetch its own token first.
/// assert_eq!(orders.access_token().await?.secret(), "orders-at");
/// assert_eq!((service.stats().refreshes, orders.stats().refreshes), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenExchange {
    endpoint: Endpoint,
    subject: SecurityToken,
    actor: Option<SecurityToken>,
    requested_token_type: Option<String>,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    accept_not_access_token: bool,
}

/// RFC 8693 §2.1.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

impl TokenExchange {
    /// An exchange of `subject`'s token by the client `client_id` at the token endpoint
    /// `token_url`. Add [`client_secret`](Self::client_secret) for a confidential client.
    pub fn new(
        token_url: impl AsRef<str>,
        client_id: impl Into<String>,
        subject: SecurityToken,
    ) -> Self {
        TokenExchange {
            endpoint: Endpoint::new(token_url.as_ref(), client_id.into()),
            subject,
            actor: None,
            requested_token_type: None,
            scopes: Vec::new(),
            params: Vec::new(),
            accept_not_access_token: false,
        }
    }

    /// The client secret of a confidential client.
    pub fn client_secret(mut self, client_secret: impl Into<ClientSecret>) -> Self {
        self.endpoint.client_secret = Some(client_secret.into());
        self
    }

    /// Presents an actor token too (`actor_token` and `actor_token_type`): the party that
    /// acts for the subject, for delegation (RFC 8693 §1.1). Obtained afresh for every
    /// exchange, like the subject token.
    pub fn actor(mut self, actor: SecurityToken) -> Self {
        self.actor = Some(actor);
        self
    }

    /// The type of token to ask for (`requested_token_type`), e.g.
    /// [`token_type::ACCESS_TOKEN`](super::token_type::ACCESS_TOKEN). Without it, the server
    /// chooses.
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.requested_token_type = Some(token_type.into());
        self
    }

    /// Adds an `audience`: a logical name of the service the token is for. May be given
    /// more than once.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Adds a `resource`: the URI of the service the token is for (RFC 8693 §2.1,
    /// RFC 8707). May be given more than once.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Adds a scope to request; scopes are sent space-separated.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds any other form parameter. `Debug` shows its name, never its value.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sends an issued token whose `token_type` is `N_A` (the server says it is not an
    /// access token: an ID token, a JWT) as a bearer token all the same, for an API that
    /// takes it so (default `false`: such an answer is a [`ConfigurationError`]
    /// `not_an_access_token`). An issued refresh token is refused whatever this says.
    pub fn accept_not_access_token(mut self, accept: bool) -> Self {
        self.accept_not_access_token = accept;
        self
    }

    super::endpoint_setters!();

    /// One exchange with these subject and actor tokens.
    async fn exchange(
        &self,
        subject: &Obtained,
        actor: Option<&Obtained>,
    ) -> Result<TokenSet, RefreshError> {
        let scope = self.scopes.join(" ");
        let mut params = vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", subject.value.as_str()),
            ("subject_token_type", self.subject.token_type.as_str()),
        ];
        if let (Some(token), Some(actor)) = (actor, &self.actor) {
            params.push(("actor_token", token.value.as_str()));
            params.push(("actor_token_type", actor.token_type.as_str()));
        }
        if let Some(requested) = &self.requested_token_type {
            params.push(("requested_token_type", requested));
        }
        params.extend(self.params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        if !scope.is_empty() {
            params.push(("scope", &scope));
        }
        let answer = self
            .endpoint
            .request_exchange(&params, self.accept_not_access_token)
            .await;
        match answer {
            Ok((set, issued_token_type)) => {
                tracing::debug!(issued_token_type, "token exchanged");
                Ok(set)
            }
            // A refresh token in the answer stays in the set or the error, for the hook.
            Err(error) => Err(error),
        }
    }

    /// Whether `error` is the server refusing what was presented, not a configured reauth code.
    fn is_refusal(&self, error: &RefreshError) -> bool {
        matches!(error, RefreshError::Reauth(reauth) if reauth.error() == "invalid_grant")
            && !self
                .endpoint
                .reauth_codes
                .iter()
                .any(|c| c == "invalid_grant")
    }
}

impl TokenSource for TokenExchange {
    fn fetch(&self, _request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            let mut subject = self.subject.obtain(SUBJECT).await?;
            let mut actor = match &self.actor {
                Some(actor) => Some(actor.obtain(ACTOR).await?),
                None => None,
            };
            let error = match self.exchange(&subject, actor.as_ref()).await {
                Err(error) if self.is_refusal(&error) => error,
                answer => return answer,
            };
            // A layer's token may be revoked while valid by the clock: renew what came from
            // one, and try once more. Nothing to renew: the refusal stands.
            let mut renewed = false;
            if let Some(again) = self.subject.after_refusal(&subject, SUBJECT).await {
                subject = again?;
                renewed = true;
            }
            if let (Some(source), Some(token)) = (&self.actor, &actor)
                && let Some(again) = source.after_refusal(token, ACTOR).await
            {
                actor = Some(again?);
                renewed = true;
            }
            let error = match renewed {
                true => match self.exchange(&subject, actor.as_ref()).await {
                    Err(error) if self.is_refusal(&error) => error,
                    answer => return answer,
                },
                false => error,
            };
            Err(refused(error))
        })
    }

    fn grant(&self) -> &str {
        "token_exchange"
    }

    fn host(&self) -> Option<&str> {
        self.endpoint.host()
    }

    fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.endpoint.dpop.as_ref().map(|dpop| &dpop.key)
    }
}

/// The server's `invalid_grant` for an exchange: a refusal of what was presented, which no
/// sign-in of this layer's fixes.
fn refused(error: RefreshError) -> RefreshError {
    let RefreshError::Reauth(reauth) = error else {
        return error;
    };
    let description = match reauth.description() {
        Some(description) => format!("the token exchange was refused: {description}"),
        None => "the token exchange was refused".to_owned(),
    };
    ConfigurationError::new(reauth.error())
        .with_description(description)
        .into()
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("endpoint", &self.endpoint)
            .field("subject", &self.subject)
            .field("actor", &self.actor)
            .field("requested_token_type", &self.requested_token_type)
            .field("scopes", &self.scopes)
            .field("params", &ParamNames(&self.params))
            .field("accept_not_access_token", &self.accept_not_access_token)
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use crate::error::TransientError;
    use crate::oauth::{HttpClient, ResponseBody};

    /// Answers every token request with `body`, status 200.
    pub(in crate::oauth) struct Canned(pub(in crate::oauth) &'static str);

    impl HttpClient for Canned {
        fn send(
            &self,
            _request: http::Request<Bytes>,
        ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
            let body = Full::new(Bytes::from_static(self.0.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync();
            Box::pin(async move { Ok(http::Response::new(body)) })
        }
    }

    pub(in crate::oauth) fn request() -> TokenRequest {
        TokenRequest {
            refresh_token: None,
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn a_refresh_token_in_the_answer_is_kept_for_the_hook() {
        let exchange = TokenExchange::new(
            "https://login.example.com/token",
            "gateway",
            SecurityToken::from_fn(token_type::JWT, || async {
                Ok::<_, std::io::Error>("st".to_owned())
            }),
        )
        .http_client(Canned(
            r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt",
                "issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
        ));
        let set = exchange.fetch(request()).await.unwrap();
        assert_eq!(set.access_token.secret(), "at");
        assert_eq!(set.refresh_token.unwrap().secret(), "rt");
        // A failed answer's error keeps it too: the cell hands it to the hook.
        let exchange = exchange.http_client(Canned(
            r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt"}"#,
        ));
        let RefreshError::Transient(err) = exchange.fetch(request()).await.unwrap_err() else {
            panic!()
        };
        assert_eq!(err.received_refresh_token().unwrap().secret(), "rt");
    }

    #[test]
    fn debug_shows_no_token_or_secret() {
        let exchange = TokenExchange::new(
            "https://login.example.com/token",
            "gateway",
            SecurityToken::from_fn(token_type::JWT, || async {
                Ok::<_, std::io::Error>("st-s3cr3t".to_owned())
            }),
        )
        .client_secret("cs-s3cr3t")
        .actor(SecurityToken::from_file(token_type::JWT, "/var/run/actor"))
        .audience("https://orders.example.com")
        .param("tenant_hint", "th-s3cr3t");
        for printed in [format!("{exchange:?}"), format!("{exchange:#?}")] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(
                printed.contains("urn:ietf:params:oauth:token-type:jwt"),
                "{printed}"
            );
            assert!(printed.contains("/var/run/actor"), "{printed}");
            assert!(printed.contains("tenant_hint"), "{printed}");
        }
    }
}
