//! Client authentication by assertion (RFC 7521 §4.2, RFC 7523 §2.2): a JWT the client signs
//! for each token request ([`PrivateKeyJwt`]), or one it is handed from outside
//! ([`ClientAssertion`]), such as a projected Kubernetes service-account token.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
#[cfg(test)]
use serde_json::Value;

use super::jws;
use super::signer::JwsSigner;
use crate::BoxError;
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind};
use crate::source::BoxFuture;

/// `client_assertion_type` of a JWT (RFC 7523 §2.2).
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid by default: long enough for clocks a little apart,
/// short enough that a captured one is soon worthless.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core §9): each
/// token request carries a JWT the client signs with its private key, so no client secret
/// exists to leak. Set it on any grant with
/// [`client_auth(ClientAuth::PrivateKeyJwt(..))`](super::ClientAuth::PrivateKeyJwt).
///
/// Each assertion carries:
///
/// | claim | value |
/// |---|---|
/// | `iss` | the client id |
/// | `sub` | the client id, or [`subject`](Self::subject) |
/// | `aud` | [`audience`](Self::audience), or else the token endpoint URL; a single string |
/// | `jti` | 128 fresh random bits: a new one for every token request, resends included |
/// | `iat`, `exp` | now, and now plus [`lifetime`](Self::lifetime) (60 s by default) |
///
/// and its header `alg`, `typ` (`JWT` by default, see [`typ`](Self::typ)), and the signer's
/// `kid` and `x5t#S256` when it has them. The assertion is made anew for every request: a
/// server that remembers `jti`s (as it should) never sees one twice.
///
/// **Audience.** Servers differ: the current guidance (draft-ietf-oauth-rfc7523bis, FAPI
/// 2.0) is the authorization server's issuer identifier, and some servers insist on it;
/// others (Microsoft Entra ID, Okta) ask for the token endpoint URL, the default here, which
/// RFC 7523 also allows. oidc-provider accepts either. Set the issuer when the server
/// asks for it, for example the one discovery found:
///
/// ```
/// use oauth_refresh::ClientCredentials;
/// use oauth_refresh::oauth::{ClientAuth, Es256Key, PrivateKeyJwt};
///
/// # fn load_key() -> String { String::new() }
/// # let pem = Es256Key::generate()?;
/// # let key = if false {
/// let key = Es256Key::from_pkcs8_pem(&load_key())?.with_key_id("client-key-1");
/// # key } else { pem.with_key_id("client-key-1") };
/// let auth = PrivateKeyJwt::new(key).audience("https://login.example.com");
/// let grant = ClientCredentials::with_client_auth(
///     "https://login.example.com/oauth2/token",
///     "reporting",
///     ClientAuth::PrivateKeyJwt(auth),
/// );
/// // Debug names the key by `kid`, never shows it.
/// assert!(format!("{grant:?}").contains("client-key-1"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// `examples/private_key_jwt.rs` runs this against a token endpoint on loopback that checks
/// each assertion's signature with the registered public JWK and refuses a replayed `jti`.
///
/// A secret set on the grant is never sent beside an assertion. With client credentials,
/// [`ClientCredentials::with_client_auth`](crate::ClientCredentials::with_client_auth) takes
/// the client authentication instead of a secret.
#[derive(Clone)]
pub struct PrivateKeyJwt {
    signer: Arc<dyn JwsSigner>,
    audience: Option<String>,
    subject: Option<String>,
    lifetime: Duration,
    typ: Option<String>,
}

impl PrivateKeyJwt {
    /// Assertions signed by `signer`: a built-in
    #[cfg_attr(
        feature = "jwt-signing",
        doc = "[`Es256Key`](super::Es256Key) or [`Rs256Key`](super::Rs256Key)"
    )]
    #[cfg_attr(not(feature = "jwt-signing"), doc = "`Es256Key` or `Rs256Key`")]
    /// (feature `jwt-signing`), or a [`JwsSigner`] of your own (a KMS, an HSM).
    pub fn new(signer: impl JwsSigner) -> Self {
        PrivateKeyJwt {
            signer: Arc::new(signer),
            audience: None,
            subject: None,
            lifetime: DEFAULT_LIFETIME,
            typ: Some("JWT".into()),
        }
    }

    /// The `aud` claim, such as the authorization server's issuer identifier (default: the
    /// URL of the endpoint the request goes to, the token endpoint for a token request).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The `sub` claim, for a server that knows the client by another name than its id
    /// (default: the client id).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// How long each assertion is valid, from `iat` to `exp` (default 60 s; at least 1 s).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.max(Duration::from_secs(1));
        self
    }

    /// The header's `typ` (default `JWT`). draft-ietf-oauth-rfc7523bis registers
    /// `client-authentication+jwt` for servers that ask for explicit typing; an empty value
    /// leaves `typ` out.
    ///
    /// ```
    /// use oauth_refresh::oauth::{Es256Key, PrivateKeyJwt};
    ///
    /// let auth = PrivateKeyJwt::new(Es256Key::generate()?).typ("client-authentication+jwt");
    /// assert!(format!("{auth:?}").contains("client-authentication+jwt"));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn typ(mut self, typ: impl Into<String>) -> Self {
        let typ = typ.into();
        self.typ = (!typ.is_empty()).then_some(typ);
        self
    }

    /// A newly signed assertion for `client_id`, addressed to `audience` unless one was set.
    pub(crate) async fn assertion(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<String, RefreshError> {
        let now = jws::unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), client_id.into());
        let subject = self.subject.as_deref().unwrap_or(client_id);
        claims.insert("sub".into(), subject.into());
        let audience = self.audience.as_deref().unwrap_or(audience);
        claims.insert("aud".into(), audience.into());
        claims.insert("jti".into(), jws::new_jti()?.into());
        claims.insert("iat".into(), now.into());
        let exp = now.saturating_add(self.lifetime.as_secs());
        claims.insert("exp".into(), exp.into());
        jws::signed_jwt(&*self.signer, self.typ.as_deref(), &claims).await
    }
}

impl fmt::Debug for PrivateKeyJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyJwt")
            .field("signer", &&*self.signer)
            .field("audience", &self.audience)
            .field("subject", &self.subject)
            .field("lifetime", &self.lifetime)
            .field("typ", &self.typ)
            .finish()
    }
}

type AssertionFn = dyn Fn() -> BoxFuture<'static, Result<String, BoxError>> + Send + Sync;

#[derive(Clone)]
enum Origin {
    File(PathBuf),
    Fn(Arc<AssertionFn>),
}

/// Client authentication with an assertion made elsewhere and fetched anew for every token
/// request: a projected Kubernetes service-account token, a cloud's workload identity token,
/// a JWT a sidecar signs. Sent as `client_assertion`, with `client_assertion_type`
/// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` unless
/// [`assertion_type`](Self::assertion_type) says otherwise. Set it on any grant with
/// [`client_auth(ClientAuth::ClientAssertion(..))`](super::ClientAuth::ClientAssertion).
///
/// The assertion is never cached here: whoever makes it decides how long it lives, and
/// one that rotates on disk is read as it is now. It never shows in `Debug` or in errors.
///
/// ```
/// use oauth_refresh::ClientCredentials;
/// use oauth_refresh::oauth::{ClientAssertion, ClientAuth};
///
/// let grant = ClientCredentials::with_client_auth(
///     "https://login.example.com/oauth2/token",
///     "workload-1",
///     ClientAuth::ClientAssertion(ClientAssertion::from_file("/var/run/secrets/tokens/oauth-token")),
/// );
/// # drop(grant);
/// ```
#[derive(Clone)]
pub struct ClientAssertion {
    origin: Origin,
    assertion_type: String,
}

impl ClientAssertion {
    /// The assertion is the content of the file at `path`, read on every token request
    /// (surrounding whitespace removed, at most 64 KiB).
    ///
    /// A file that is missing or empty, as it can be for a moment while it is replaced,
    /// fails the request with a [`TransientError`](crate::TransientError) of kind
    /// [`Credential`](crate::TransientKind::Credential), asked again with backoff;
    /// one that cannot be read (no permission, a directory, too large, not UTF-8) with a
    /// [`ConfigurationError`](crate::ConfigurationError). The errors name the path, never
    /// the content.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        ClientAssertion {
            origin: Origin::File(path.into()),
            assertion_type: JWT_BEARER.into(),
        }
    }

    /// The assertion is what `make()` returns, called on every token request.
    ///
    /// Its error is classified as a [`JwsSigner`]'s is: a
    /// [`ConfigurationError`](crate::ConfigurationError) or
    /// [`TransientError`](crate::TransientError) passes as it is, anything else is transient
    /// (kind [`Credential`](crate::TransientKind::Credential)). Its text must not
    /// carry the assertion.
    ///
    /// ```
    /// use oauth_refresh::ClientCredentials;
    /// use oauth_refresh::oauth::{ClientAssertion, ClientAuth};
    ///
    /// # async fn identity_token(audience: &str) -> std::io::Result<String> { Ok(audience.into()) }
    /// let assertion = ClientAssertion::from_fn(|| identity_token("https://login.example.com"));
    /// let grant = ClientCredentials::with_client_auth(
    ///     "https://login.example.com/oauth2/token",
    ///     "workload-1",
    ///     ClientAuth::ClientAssertion(assertion),
    /// );
    /// # drop(grant);
    /// ```
    pub fn from_fn<F, Fut, E>(make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let make: Arc<AssertionFn> = Arc::new(move || {
            let made = make();
            Box::pin(async move { made.await.map_err(Into::into) })
        });
        ClientAssertion {
            origin: Origin::Fn(make),
            assertion_type: JWT_BEARER.into(),
        }
    }

    /// The `client_assertion_type` to send (default
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`).
    pub fn assertion_type(mut self, assertion_type: impl Into<String>) -> Self {
        self.assertion_type = assertion_type.into();
        self
    }

    pub(crate) fn type_uri(&self) -> &str {
        &self.assertion_type
    }

    /// The assertion as it is now.
    pub(crate) async fn assertion(&self) -> Result<String, RefreshError> {
        let assertion = match &self.origin {
            Origin::File(path) => {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || read_assertion_file(&path)).await {
                    Ok(read) => read?,
                    Err(join) => {
                        return Err(TransientError::new(TransientKind::Credential)
                            .with_source(format!("reading the assertion file failed: {join}"))
                            .into());
                    }
                }
            }
            Origin::Fn(make) => make().await.map_err(jws::assertion_failure)?,
        };
        if assertion.is_empty() {
            return Err(ConfigurationError::local("invalid_client_assertion")
                .with_description("the client assertion source returned an empty assertion")
                .into());
        }
        Ok(assertion)
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ClientAssertion");
        match &self.origin {
            Origin::File(path) => debug.field("file", path),
            Origin::Fn(_) => debug.field("from_fn", &true),
        };
        debug.field("assertion_type", &self.assertion_type).finish()
    }
}

/// The file's content, trimmed. Missing or empty is transient: a writer that replaces the
/// file may leave it so for a moment.
fn read_assertion_file(path: &Path) -> Result<String, RefreshError> {
    super::supply::read_credential_file(
        path,
        "the client assertion file",
        "client_assertion_unreadable",
    )
}

/// The claims of an assertion, for tests: decoded, not verified.
#[cfg(test)]
pub(crate) fn decode_part(jws: &str, index: usize) -> Value {
    use base64::Engine;
    let part = jws.split('.').nth(index).expect("a JWS part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recording;

    impl JwsSigner for Recording {
        fn alg(&self) -> &str {
            "RS256"
        }

        fn key_id(&self) -> Option<&str> {
            Some("k-1")
        }

        fn sign<'a>(&'a self, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
            // Not a signature: the input's length, so tests can see it was the input signed.
            Box::pin(async move { Ok(input.len().to_be_bytes().to_vec()) })
        }
    }

    #[tokio::test]
    async fn claims_name_the_client_the_audience_and_a_short_life() {
        let auth = PrivateKeyJwt::new(Recording);
        let jws = auth
            .assertion("svc", "https://login.example.com/token")
            .await
            .unwrap();
        let claims = decode_part(&jws, 1);
        assert_eq!(claims["iss"], "svc");
        assert_eq!(claims["sub"], "svc");
        assert_eq!(claims["aud"], "https://login.example.com/token");
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
        assert!(iat.abs_diff(jws::unix_now()) <= 2);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
        assert_eq!(
            decode_part(&jws, 0),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k-1"})
        );

        let auth = auth
            .audience("https://login.example.com")
            .subject("svc-subject")
            .lifetime(Duration::from_secs(30))
            .typ("client-authentication+jwt");
        let jws = auth
            .assertion("svc", "https://login.example.com/token")
            .await
            .unwrap();
        let claims = decode_part(&jws, 1);
        assert_eq!(claims["aud"], "https://login.example.com");
        assert_eq!(claims["sub"], "svc-subject");
        assert_eq!(claims["iss"], "svc");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            30
        );
        assert_eq!(decode_part(&jws, 0)["typ"], "client-authentication+jwt");
        let untyped = auth.typ("").assertion("svc", "aud").await.unwrap();
        assert!(decode_part(&untyped, 0).get("typ").is_none());
    }

    #[tokio::test]
    async fn every_assertion_has_its_own_jti() {
        let auth = PrivateKeyJwt::new(Recording);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let jws = auth.assertion("svc", "aud").await.unwrap();
            let jti = decode_part(&jws, 1)["jti"].as_str().unwrap().to_owned();
            assert!(seen.insert(jti), "a jti came twice");
        }
    }

    #[tokio::test]
    async fn a_file_is_read_anew_each_time_and_errors_never_show_it() {
        let dir = std::env::temp_dir().join(format!(
            "oauth-refresh-assertion-{}",
            jws::new_jti().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let assertion = ClientAssertion::from_file(&path);

        let err = assertion.assertion().await.unwrap_err();
        let RefreshError::Transient(missing) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(missing.kind(), TransientKind::Credential);
        assert!(missing.is_resend_safe());
        let reason = std::error::Error::source(missing).unwrap().to_string();
        assert!(
            reason.contains("is missing") && reason.contains("token"),
            "{reason}"
        );

        std::fs::write(&path, "eyJ.first-s3cr3t.sig\n").unwrap();
        assert_eq!(assertion.assertion().await.unwrap(), "eyJ.first-s3cr3t.sig");
        std::fs::write(&path, "eyJ.second-s3cr3t.sig").unwrap();
        assert_eq!(
            assertion.assertion().await.unwrap(),
            "eyJ.second-s3cr3t.sig"
        );

        std::fs::write(&path, " \n").unwrap();
        let err = assertion.assertion().await.unwrap_err();
        assert!(matches!(err, RefreshError::Transient(_)), "{err:?}");

        std::fs::write(&path, [b'a'; 70 * 1024]).unwrap();
        let err = assertion.assertion().await.unwrap_err();
        let RefreshError::Configuration(large) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(large.error(), "client_assertion_unreadable");
        assert!(!large.to_string().contains("aaaa"), "{large}");

        std::fs::write(&path, [0xff, 0xfe, b's']).unwrap();
        let err = assertion.assertion().await.unwrap_err();
        assert!(matches!(err, RefreshError::Configuration(_)), "{err:?}");

        let directory = ClientAssertion::from_file(&dir);
        let err = directory.assertion().await.unwrap_err();
        assert!(matches!(err, RefreshError::Configuration(_)), "{err:?}");

        std::fs::write(&path, "eyJ.third-s3cr3t.sig").unwrap();
        let printed = format!("{assertion:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("token"), "{printed}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_closure_is_called_for_each_request() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let assertion = ClientAssertion::from_fn(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(format!("assertion-{n}")) }
        });
        assert_eq!(assertion.assertion().await.unwrap(), "assertion-0");
        assert_eq!(assertion.assertion().await.unwrap(), "assertion-1");
        let failing = ClientAssertion::from_fn(|| async {
            Err::<String, _>(std::io::Error::other("metadata server unreachable"))
        });
        let err = failing.assertion().await.unwrap_err();
        assert!(
            matches!(&err, RefreshError::Transient(t) if t.kind() == TransientKind::Credential),
            "{err:?}"
        );
        let empty = ClientAssertion::from_fn(|| async { Ok::<_, std::io::Error>(String::new()) });
        assert!(matches!(
            empty.assertion().await.unwrap_err(),
            RefreshError::Configuration(_)
        ));
        assert!(format!("{assertion:?}").contains("from_fn"));
    }
}
