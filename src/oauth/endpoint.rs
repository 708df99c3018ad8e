//! One token endpoint and the client that calls it: the request every grant sends, and the
//! settings they share.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, header};
use http_body_util::BodyExt;
use url::Url;

use super::http::HttpClient;
use super::response::{self, Rules};
use crate::dpop::Dpop;
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind, is_loopback};
use crate::token::{ClientSecret, TokenSet};

/// The most a token endpoint's answer may hold. Token responses are a few kilobytes, ID
/// tokens included; anything far larger is an error page or an attack.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 * 1024;

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a confidential client proves its identity to the token endpoint: with its secret
/// (RFC 6749 §2.3.1), or with an assertion (RFC 7521 §4.2). A client without a secret and
/// without an assertion sends only its `client_id`, in the form.
///
/// Every request a grant sends to the authorization server is authenticated this way,
/// resends included, and an assertion is made anew for each. A [`PrivateKeyJwt`](super::PrivateKeyJwt)
/// or a [`ClientAssertion`](super::ClientAssertion) converts into its variant.
///
/// ```
/// use oauth_refresh::{ClientCredentials, RefreshTokenGrant};
/// use oauth_refresh::oauth::{ClientAuth, Es256Key, PrivateKeyJwt};
///
/// let grant = ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t")
///     .client_auth(ClientAuth::Post);
/// let user = RefreshTokenGrant::new("https://login.example.com/token", "app", "rt-stored")
///     .client_auth(PrivateKeyJwt::new(Es256Key::generate()?));
/// # drop((grant, user));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic, with the id and the secret each form-urlencoded
    /// before Base64, as RFC 6749 §2.3.1 requires. The default.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
    /// `private_key_jwt` (RFC 7523 §2.2): a JWT signed by the client's key, a new one for
    /// every request. No client secret is sent.
    PrivateKeyJwt(super::PrivateKeyJwt),
    /// An assertion from outside (a file re-read for every request, or a function), such
    /// as a projected service-account token. No client secret is sent.
    ClientAssertion(super::ClientAssertion),
}

impl From<super::PrivateKeyJwt> for ClientAuth {
    fn from(auth: super::PrivateKeyJwt) -> Self {
        ClientAuth::PrivateKeyJwt(auth)
    }
}

impl From<super::ClientAssertion> for ClientAuth {
    fn from(assertion: super::ClientAssertion) -> Self {
        ClientAuth::ClientAssertion(assertion)
    }
}

/// A token endpoint, with the client credentials and transport settings of one grant.
#[derive(Clone)]
pub(crate) struct Endpoint {
    token_url: Result<Url, String>,
    client_id: String,
    pub(crate) client_secret: Option<ClientSecret>,
    pub(crate) auth: ClientAuth,
    pub(crate) http: Option<Arc<dyn HttpClient>>,
    pub(crate) timeout: Duration,
    pub(crate) allow_insecure_http: bool,
    pub(crate) reauth_codes: Vec<String>,
    /// The key the tokens are bound to (DPoP), and the token endpoint's nonce.
    pub(crate) dpop: Option<Dpop>,
}

impl Endpoint {
    pub(crate) fn new(token_url: &str, client_id: String) -> Self {
        Endpoint {
            token_url: Url::parse(token_url).map_err(|error| error.to_string()),
            client_id,
            client_secret: None,
            auth: ClientAuth::default(),
            http: None,
            timeout: DEFAULT_TIMEOUT,
            allow_insecure_http: false,
            reauth_codes: Vec::new(),
            dpop: None,
        }
    }

    pub(crate) fn host(&self) -> Option<&str> {
        self.token_url.as_ref().ok()?.host_str()
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Posts a token request with `params` (client authentication is added here) and reads
    /// the answer.
    ///
    /// `answered_resend_safe` says whether the request may be sent again once it may have
    /// reached the server: not for a `refresh_token` grant, whose token the server may have
    /// rotated before failing.
    pub(crate) async fn request(
        &self,
        params: &[(&str, &str)],
        answered_resend_safe: bool,
    ) -> Result<TokenSet, RefreshError> {
        let (head, body) = self.post(params, answered_resend_safe).await?;
        let rules = self.rules(answered_resend_safe);
        response::token_set(head.status, &head.headers, &body, &rules)
    }

    /// [`request`](Self::request) for a token exchange (RFC 8693), resent like any grant
    /// whose request may be sent twice: its answer also names the `issued_token_type`.
    pub(crate) async fn request_exchange(
        &self,
        params: &[(&str, &str)],
        accept_not_access_token: bool,
    ) -> Result<(TokenSet, String), RefreshError> {
        let (head, body) = self.post(params, true).await?;
        let rules = self.rules(true);
        response::exchanged_token_set(
            head.status,
            &head.headers,
            &body,
            &rules,
            accept_not_access_token,
        )
    }

    /// How this endpoint's answers are classified.
    pub(crate) fn rules(&self, answered_resend_safe: bool) -> Rules<'_> {
        Rules {
            host: self.host(),
            reauth_codes: &self.reauth_codes,
            answered_resend_safe,
            dpop: self.dpop.is_some(),
        }
    }

    /// Posts the form and reads the answer's head and body, within the timeout.
    async fn post(
        &self,
        params: &[(&str, &str)],
        answered_resend_safe: bool,
    ) -> Result<(http::response::Parts, Bytes), RefreshError> {
        let url = self.checked_url()?;
        let (head, body) = self.post_token(url, params, answered_resend_safe).await?;
        tracing::debug!(status = head.status.as_u16(), "token endpoint answered");
        Ok((head, body))
    }

    /// Posts `params` to `url` with the client's authentication, as a token request is
    /// posted, and reads the answer within the timeout and the size cap: for the server's
    /// endpoints other than the token endpoint that authenticate the client (device
    /// authorization, revocation). Check `url` with [`check_transport`] first.
    pub(crate) async fn post_form(
        &self,
        url: &Url,
        params: &[(&str, &str)],
        answered_resend_safe: bool,
    ) -> Result<(http::response::Parts, Bytes), RefreshError> {
        self.send_form(url, params, answered_resend_safe, None)
            .await
            .map(|(answer, _nonce)| answer)
    }

    /// [`post_form`](Self::post_form) for a token request (to the token endpoint at `url`):
    /// with a DPoP key, it carries a proof, and an answer asking for the server's nonce
    /// (`use_dpop_nonce`) is resent once with it. That resend is safe whatever the grant:
    /// the server refused the request before reading its grant.
    pub(crate) async fn post_token(
        &self,
        url: &Url,
        params: &[(&str, &str)],
        answered_resend_safe: bool,
    ) -> Result<(http::response::Parts, Bytes), RefreshError> {
        let Some(dpop) = &self.dpop else {
            return self.post_form(url, params, answered_resend_safe).await;
        };
        let uri = dpop_uri(url)?;
        let (answer, sent) = self
            .send_form(url, params, answered_resend_safe, Some((dpop, &uri)))
            .await?;
        let asked = answer.0.status == http::StatusCode::BAD_REQUEST
            && response::error_code(&answer.0.headers, &answer.1).as_deref()
                == Some(crate::dpop::USE_DPOP_NONCE);
        if !dpop.learn(&uri, &answer.0.headers, sent.as_deref(), asked) {
            return Ok(answer);
        }
        tracing::debug!("the token endpoint asked for its DPoP nonce; resending once with it");
        let (answer, _nonce) = self
            .send_form(url, params, answered_resend_safe, Some((dpop, &uri)))
            .await?;
        dpop.nonces.learn(&uri, &answer.0.headers);
        Ok(answer)
    }

    /// One attempt: the request built (signed, proved) and sent, the answer read within the
    /// timeout. With `dpop`, also the nonce the proof carried.
    async fn send_form(
        &self,
        url: &Url,
        params: &[(&str, &str)],
        answered_resend_safe: bool,
        dpop: Option<(&Dpop, &http::Uri)>,
    ) -> Result<((http::response::Parts, Bytes), Option<Arc<str>>), RefreshError> {
        let http = self.http_client()?;
        // Built per attempt: an assertion is signed anew for each, so no `jti` is sent twice.
        let (request, nonce) =
            match tokio::time::timeout(self.timeout, self.build(url, params, dpop)).await {
                Ok(built) => built?,
                // A signer (a KMS) that does not answer: nothing was sent yet.
                Err(_elapsed) => {
                    return Err(TransientError::new(TransientKind::Credential)
                        .with_source("the signer did not answer within the request's timeout")
                        .into());
                }
            };
        let may_resend = |error: TransientError| {
            let never_sent = error.is_resend_safe();
            error.with_resend_safe(never_sent || answered_resend_safe)
        };
        let exchange = async {
            let response = http.send(request).await.map_err(may_resend)?;
            let (head, body) = response.into_parts();
            let body = read_capped(&head.headers, body)
                .await
                .map_err(|e| e.with_resend_safe(answered_resend_safe))?;
            Ok::<_, TransientError>((head, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => Ok((answer?, nonce)),
            Err(_elapsed) => Err(TransientError::new(TransientKind::Timeout)
                .with_resend_safe(answered_resend_safe)
                .into()),
        }
    }

    /// The token URL, once it is known to be fit for secrets.
    pub(crate) fn checked_url(&self) -> Result<&Url, ConfigurationError> {
        let url = self.token_url.as_ref().map_err(|reason| {
            ConfigurationError::local("invalid_token_url")
                .with_description(format!("the token URL could not be parsed: {reason}"))
        })?;
        check_transport(url, self.allow_insecure_http)?;
        Ok(url)
    }

    fn http_client(&self) -> Result<Arc<dyn HttpClient>, ConfigurationError> {
        resolve_client(self.http.as_ref())
    }

    /// The token request: `params`, then the client's authentication, and with `dpop` a proof
    /// (whose nonce comes back beside the request).
    async fn build(
        &self,
        url: &Url,
        params: &[(&str, &str)],
        dpop: Option<(&Dpop, &http::Uri)>,
    ) -> Result<(http::Request<Bytes>, Option<Arc<str>>), RefreshError> {
        // Made before the form, which is not `Send` across an await. The default audience is
        // the URL the request goes to: the token endpoint for a token request, and another
        // endpoint (revocation, device authorization) for a request there.
        let assertion = match &self.auth {
            ClientAuth::PrivateKeyJwt(jwt) => Some((
                super::assertion::JWT_BEARER,
                jwt.assertion(&self.client_id, url.as_str()).await?,
            )),
            ClientAuth::ClientAssertion(from) => Some((from.type_uri(), from.assertion().await?)),
            ClientAuth::Basic | ClientAuth::Post => None,
        };
        let proof = match dpop {
            Some((dpop, uri)) => Some(dpop.proof(&Method::POST, uri, None).await?),
            None => None,
        };
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(params);
        let mut authorization = None;
        match (assertion, &self.auth, &self.client_secret) {
            // An assertion authenticates the client: a secret is never sent beside it.
            (Some((assertion_type, assertion)), _, _) => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_assertion_type", assertion_type);
                form.append_pair("client_assertion", &assertion);
            }
            (None, ClientAuth::Basic, Some(secret)) => {
                authorization = Some(basic_authorization(&self.client_id, secret)?);
            }
            (None, ClientAuth::Post, Some(secret)) => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", secret.secret());
            }
            // A public client identifies itself and nothing more (RFC 6749 §3.2.1).
            (None, _, _) => {
                form.append_pair("client_id", &self.client_id);
            }
        }
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri(url.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Bytes::from(form.finish()))
            .map_err(|error| {
                ConfigurationError::local("invalid_token_url").with_description(error.to_string())
            })?;
        if let Some(authorization) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization);
        }
        let nonce = proof.and_then(|(proof, nonce)| {
            request.headers_mut().insert(crate::dpop::DPOP, proof);
            nonce
        });
        Ok((request, nonce))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("token_url", &UrlForDebug(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("dpop", &self.dpop.as_ref().map(|dpop| &dpop.key))
            .finish_non_exhaustive()
    }
}

/// A configured URL as `Debug` shows it: without a password or query values, which may be
/// credentials (the crate drops URLs from reqwest's errors for the same reason).
pub(crate) struct UrlForDebug<'a>(pub(crate) &'a Result<Url, String>);

impl fmt::Debug for UrlForDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match self.0 {
            Ok(url) => url,
            Err(reason) => return write!(f, "Err({reason:?})"),
        };
        let mut bare = url.clone();
        let _ = bare.set_password(None);
        bare.set_query(None);
        bare.set_fragment(None);
        let mut shown = String::from(bare.as_str());
        for (i, (name, _value)) in url.query_pairs().enumerate() {
            shown.push(if i == 0 { '?' } else { '&' });
            shown.push_str(&name);
            shown.push_str("=[redacted]");
        }
        fmt::Debug::fmt(&shown, f)
    }
}

/// Extra form or query parameters as `Debug` shows them: by name only, since a value may be a
/// credential (`client_assertion`, a signed request object).
pub(crate) struct ParamNames<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Debug for ParamNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _value)| name))
            .finish()
    }
}

/// The token URL as the proofs name it (`htu`) and the nonces are kept by.
fn dpop_uri(url: &Url) -> Result<http::Uri, ConfigurationError> {
    url.as_str().parse().map_err(|_| {
        ConfigurationError::local("dpop_htu")
            .with_description("the token URL cannot be named in a DPoP proof")
    })
}

/// The client given, or else the default one.
pub(crate) fn resolve_client(
    given: Option<&Arc<dyn HttpClient>>,
) -> Result<Arc<dyn HttpClient>, ConfigurationError> {
    if let Some(http) = given {
        return Ok(http.clone());
    }
    #[cfg(feature = "reqwest")]
    return super::http::default_client();
    #[cfg(not(feature = "reqwest"))]
    return Err(ConfigurationError::local("http_client").with_description(
        "no HTTP client: enable the `reqwest` feature or set one with `http_client`",
    ));
}

/// Refuses plain `http://` to anything but loopback: client secrets, refresh tokens and codes
/// would cross the network in clear text.
pub(crate) fn check_transport(
    url: &Url,
    allow_insecure_http: bool,
) -> Result<(), ConfigurationError> {
    if url.scheme() == "https" || allow_insecure_http {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default();
    if url.scheme() == "http" && is_loopback(host) {
        return Ok(());
    }
    Err(
        ConfigurationError::local("insecure_endpoint").with_description(format!(
            "refused to send credentials to {}://{host}: use https, or allow plain http explicitly",
            url.scheme()
        )),
    )
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`: RFC 6749 §2.3.1 form-encodes both
/// before Base64, which servers that split at the first `:` rely on.
fn basic_authorization(
    client_id: &str,
    secret: &ClientSecret,
) -> Result<HeaderValue, ConfigurationError> {
    let encode =
        |value: &str| url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(secret.secret()));
    let mut value = HeaderValue::try_from(format!("Basic {}", BASE64.encode(credentials)))
        .map_err(|_| ConfigurationError::local("invalid_client_credentials"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads a body to its end, or fails as soon as it passes [`MAX_RESPONSE_BYTES`].
///
/// Frame by frame rather than through `http_body_util::Limited`, whose boxed-error
/// conversion trips rustc's check that the futures awaiting it are `Send`.
pub(crate) async fn read_capped(
    headers: &http::HeaderMap,
    mut body: super::http::ResponseBody,
) -> Result<Bytes, TransientError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_RESPONSE_BYTES as u64) {
        return Err(too_large());
    }
    // Checked against the cap above; a body longer than it declared still fails below.
    let mut read = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            TransientError::new(TransientKind::Network).with_boxed_source(error)
        })?;
        if let Some(data) = frame.data_ref() {
            if read.len() + data.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            read.extend_from_slice(data);
        }
    }
    Ok(read.freeze())
}

fn too_large() -> TransientError {
    TransientError::new(TransientKind::ResponseTooLarge).with_source(format!(
        "the grants read at most {} KiB",
        MAX_RESPONSE_BYTES / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let header =
            basic_authorization("my client", &ClientSecret::new("a:b+c/d%e&f=g~h i")).unwrap();
        assert!(header.is_sensitive());
        let encoded = header.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "my+client:a%3Ab%2Bc%2Fd%25e%26f%3Dg%7Eh+i");
    }

    #[test]
    fn problems_found_here_do_not_blame_the_token_endpoint() {
        let unparsable = Endpoint::new("not a url", "svc".into());
        let insecure = Endpoint::new("http://login.example.com/token", "svc".into());
        for endpoint in [unparsable, insecure] {
            let message = endpoint.checked_url().unwrap_err().to_string();
            assert!(
                message.starts_with("cannot refresh the token ("),
                "{message}"
            );
            assert!(!message.contains("refused the client"), "{message}");
        }
    }

    #[test]
    fn debug_shows_no_password_or_query_value_of_the_token_url() {
        let endpoint = Endpoint::new(
            "https://svc:pw-s3cr3t@login.example.com/token?api_key=key-s3cr3t&tenant=t1",
            "svc".into(),
        );
        let printed = format!("{endpoint:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(
            printed.contains(
                r#""https://svc@login.example.com/token?api_key=[redacted]&tenant=[redacted]""#
            ),
            "{printed}"
        );
        let unparsable = format!("{:?}", Endpoint::new("not a url", "svc".into()));
        assert!(unparsable.contains("token_url: Err("), "{unparsable}");
    }

    #[test]
    fn the_size_reason_does_not_repeat_its_kind() {
        let err = too_large();
        let reason = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(reason, "the grants read at most 256 KiB");
        assert!(!err.to_string().contains(&reason), "{err}");
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        let check = |url: &str, allow| check_transport(&Url::parse(url).unwrap(), allow).is_ok();
        assert!(check("https://login.example.com/token", false));
        assert!(check("http://127.0.0.1:8080/token", false));
        assert!(check("http://[::1]:8080/token", false));
        assert!(check("http://localhost/token", false));
        assert!(!check("http://login.example.com/token", false));
        assert!(check("http://login.example.com/token", true));
        assert!(!check("ftp://login.example.com/token", false));
    }
}
