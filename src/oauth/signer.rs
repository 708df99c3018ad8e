//! The keys that sign JWTs for the client: the [`JwsSigner`] trait, and the built-in ES256
//! and RS256 keys (feature `jwt-signing`).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::BoxError;
use crate::source::BoxFuture;

/// A private key that signs JWS (RFC 7515), wherever it is held: in memory (the built-in
#[cfg_attr(feature = "jwt-signing", doc = "[`Es256Key`] and [`Rs256Key`],")]
#[cfg_attr(not(feature = "jwt-signing"), doc = "`Es256Key` and `Rs256Key`,")]
/// feature `jwt-signing`), or in a KMS or HSM that is asked
/// over the network, which is why [`sign`](Self::sign) is async. Usable as
/// `dyn JwsSigner`; an `Arc` of a signer is a signer.
///
/// The crate builds the JWS header from [`alg`](Self::alg), [`key_id`](Self::key_id) and
/// [`x5t_s256`](Self::x5t_s256), and asks for one signature per JWT.
///
/// An error from `sign` fails the token request before anything is sent: as a
/// [`TransientError`](crate::TransientError) of kind
/// [`ClientAssertion`](crate::TransientKind::Credential) (a KMS briefly out of reach is
/// asked again with backoff), unless the error is a
/// [`ConfigurationError`](crate::ConfigurationError) or a `TransientError` itself, which are
/// passed on as they are. Its text must not carry key material.
///
/// ```
/// use oauth_refresh::BoxFuture;
/// use oauth_refresh::oauth::JwsSigner;
///
/// /// A key held by a remote signing service.
/// struct Kms { key_name: String }
///
/// impl JwsSigner for Kms {
///     fn alg(&self) -> &str {
///         "ES256"
///     }
///
///     fn key_id(&self) -> Option<&str> {
///         Some(&self.key_name)
///     }
///
///     fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, oauth_refresh::BoxError>> {
///         Box::pin(async move {
///             // Ask the KMS to sign `signing_input` with SHA-256 and P-256. ES256 wants the
///             // 64-byte r||s form: convert a DER signature (as some KMSs return) first.
/// #           let _ = signing_input;
///             Ok(vec![0; 64])
///         })
///     }
/// }
///
/// let signer: Box<dyn JwsSigner> = Box::new(Kms { key_name: "client-key-1".into() });
/// assert_eq!(signer.key_id(), Some("client-key-1"));
/// ```
pub trait JwsSigner: Send + Sync + 'static {
    /// The JWS `alg` this key signs with, e.g. `"ES256"` or `"RS256"`.
    fn alg(&self) -> &str;

    /// The `kid` header: which of the client's registered keys signed. `None` by default
    /// (a client with one registered key may leave it out).
    fn key_id(&self) -> Option<&str> {
        None
    }

    /// The `x5t#S256` header: the base64url SHA-256 thumbprint of the key's X.509 certificate,
    /// for servers that identify client keys by certificate. `None` by default.
    fn x5t_s256(&self) -> Option<&str> {
        None
    }

    /// Signs the JWS signing input (`base64url(header) "." base64url(claims)`) and returns
    /// the signature's bytes as JWS defines them for [`alg`](Self::alg): for ES256 the 64
    /// bytes of r and s, not a DER structure; for RS256 the PKCS #1 v1.5 signature.
    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>>;
}

impl<S: JwsSigner + ?Sized> JwsSigner for Arc<S> {
    fn alg(&self) -> &str {
        (**self).alg()
    }

    fn key_id(&self) -> Option<&str> {
        (**self).key_id()
    }

    fn x5t_s256(&self) -> Option<&str> {
        (**self).x5t_s256()
    }

    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
        (**self).sign(signing_input)
    }
}

impl fmt::Debug for dyn JwsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwsSigner")
            .field("alg", &self.alg())
            .field("kid", &self.key_id())
            .finish_non_exhaustive()
    }
}

#[allow(dead_code)]
fn _obj_safe(_: &dyn JwsSigner) {}

/// A signing key could not be loaded or made. Its message names the reason, never the key.
///
/// ```
/// # #[cfg(feature = "jwt-signing")] {
/// use oauth_refresh::oauth::Es256Key;
///
/// let err = Es256Key::from_pkcs8_pem("not a key").unwrap_err();
/// assert_eq!(err.to_string(), "the signing key was refused: no PEM block `PRIVATE KEY` (PKCS #8) found");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SigningKeyError {
    reason: String,
}

impl SigningKeyError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        SigningKeyError {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SigningKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the signing key was refused: {}", self.reason)
    }
}

impl Error for SigningKeyError {}

#[cfg(feature = "jwt-signing")]
pub use keys::{Es256Key, Rs256Key};

#[cfg(feature = "jwt-signing")]
mod keys {
    use std::fmt;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    };
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
    use serde_json::{Map, Value};

    use super::{JwsSigner, SigningKeyError};
    use crate::BoxError;
    use crate::source::BoxFuture;

    /// An ECDSA P-256 private key that signs ES256 (RFC 7518 §3.4), with aws-lc-rs.
    ///
    /// Load it from PKCS #8 ([`from_pkcs8_pem`](Self::from_pkcs8_pem),
    /// [`from_pkcs8_der`](Self::from_pkcs8_der)) or make one ([`generate`](Self::generate));
    /// register [`public_jwk`](Self::public_jwk) at the authorization server as the client's
    /// `jwks`. `Debug` shows the algorithm and `kid`, never the key.
    ///
    /// ```
    /// use oauth_refresh::oauth::{Es256Key, JwsSigner};
    ///
    /// let key = Es256Key::generate()?.with_key_id("client-key-1");
    /// assert_eq!(key.alg(), "ES256");
    /// let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk())?;
    /// assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
    /// assert_eq!(jwk["kid"], "client-key-1");
    /// assert!(jwk.get("d").is_none(), "the public JWK holds no private part");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub struct Es256Key {
        key: EcdsaKeyPair,
        kid: Option<String>,
        x5t_s256: Option<String>,
    }

    impl Es256Key {
        /// A new random P-256 key, for tests and examples (a deployed client keeps its key:
        /// the server knows it by its public JWK).
        pub fn generate() -> Result<Self, SigningKeyError> {
            let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|_| SigningKeyError::new("a P-256 key could not be generated"))?;
            Ok(Self::from_key(key))
        }

        /// A P-256 key from an unencrypted PKCS #8 DER document.
        pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SigningKeyError> {
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|e| SigningKeyError::new(format!("not a PKCS #8 P-256 key ({e})")))?;
            Ok(Self::from_key(key))
        }

        /// A P-256 key from an unencrypted PKCS #8 PEM document (`-----BEGIN PRIVATE
        /// KEY-----`, as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
        /// writes it).
        pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SigningKeyError> {
            Self::from_pkcs8_der(&pkcs8_pem_to_der(pem)?)
        }

        fn from_key(key: EcdsaKeyPair) -> Self {
            Es256Key {
                key,
                kid: None,
                x5t_s256: None,
            }
        }

        /// Sets the `kid` this key is registered under; it goes into every JWS header and
        /// into [`public_jwk`](Self::public_jwk).
        pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
            self.kid = Some(kid.into());
            self
        }

        /// Sets the `x5t#S256` header: the base64url SHA-256 thumbprint of the key's
        /// certificate.
        pub fn with_x5t_s256(mut self, thumbprint: impl Into<String>) -> Self {
            self.x5t_s256 = Some(thumbprint.into());
            self
        }

        /// The public key as a JWK (RFC 7517) in JSON, with `kid`, `alg` and `use`: what the
        /// authorization server needs in the client's `jwks` to check its assertions.
        pub fn public_jwk(&self) -> String {
            // X9.62 uncompressed point: 0x04, then x and y, 32 bytes each.
            let point = self.key.public_key().as_ref();
            let (x, y) = point[1..].split_at(32);
            let mut jwk = Map::new();
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), "P-256".into());
            jwk.insert("x".into(), BASE64URL.encode(x).into());
            jwk.insert("y".into(), BASE64URL.encode(y).into());
            finish_jwk(jwk, "ES256", self.kid.as_deref())
        }
    }

    impl JwsSigner for Es256Key {
        fn alg(&self) -> &str {
            "ES256"
        }

        fn key_id(&self) -> Option<&str> {
            self.kid.as_deref()
        }

        fn x5t_s256(&self) -> Option<&str> {
            self.x5t_s256.as_deref()
        }

        fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
            // The fixed form is JWS's r||s (RFC 7518 §3.4), not DER.
            let signed = self
                .key
                .sign(&SystemRandom::new(), signing_input)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| BoxError::from("ES256 signing failed"));
            Box::pin(async move { signed })
        }
    }

    impl fmt::Debug for Es256Key {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Es256Key")
                .field("kid", &self.kid)
                .field("x5t#S256", &self.x5t_s256)
                .finish_non_exhaustive()
        }
    }

    /// An RSA private key (2048 bits or more) that signs RS256, RSASSA-PKCS1-v1_5 with
    /// SHA-256 (RFC 7518 §3.3), with aws-lc-rs.
    ///
    /// `Debug` shows the `kid`, never the key.
    ///
    /// ```
    /// use oauth_refresh::oauth::{JwsSigner, Rs256Key};
    ///
    /// let key = Rs256Key::generate()?.with_key_id("client-key-rsa");
    /// assert_eq!(key.alg(), "RS256");
    /// let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk())?;
    /// assert_eq!((jwk["kty"].as_str(), jwk["e"].as_str()), (Some("RSA"), Some("AQAB")));
    /// assert!(jwk.get("d").is_none(), "the public JWK holds no private part");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub struct Rs256Key {
        key: RsaKeyPair,
        kid: Option<String>,
        x5t_s256: Option<String>,
    }

    impl Rs256Key {
        /// A new random 2048-bit key, for tests and examples. Generating one takes tens of
        /// milliseconds or more.
        pub fn generate() -> Result<Self, SigningKeyError> {
            let key = RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(|_| SigningKeyError::new("an RSA key could not be generated"))?;
            Ok(Self::from_key(key))
        }

        /// An RSA key from an unencrypted PKCS #8 DER document.
        pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SigningKeyError> {
            let key = RsaKeyPair::from_pkcs8(der)
                .map_err(|e| SigningKeyError::new(format!("not a PKCS #8 RSA key ({e})")))?;
            Ok(Self::from_key(key))
        }

        /// An RSA key from an unencrypted PKCS #8 PEM document (`-----BEGIN PRIVATE
        /// KEY-----`, as `openssl genpkey -algorithm RSA` writes it).
        pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SigningKeyError> {
            Self::from_pkcs8_der(&pkcs8_pem_to_der(pem)?)
        }

        fn from_key(key: RsaKeyPair) -> Self {
            Rs256Key {
                key,
                kid: None,
                x5t_s256: None,
            }
        }

        /// Sets the `kid` this key is registered under.
        pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
            self.kid = Some(kid.into());
            self
        }

        /// Sets the `x5t#S256` header.
        pub fn with_x5t_s256(mut self, thumbprint: impl Into<String>) -> Self {
            self.x5t_s256 = Some(thumbprint.into());
            self
        }

        /// The public key as a JWK (RFC 7517) in JSON, with `kid`, `alg` and `use`.
        pub fn public_jwk(&self) -> String {
            let public = self.key.public_key();
            let mut jwk = Map::new();
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert(
                "n".into(),
                BASE64URL
                    .encode(public.modulus().big_endian_without_leading_zero())
                    .into(),
            );
            jwk.insert(
                "e".into(),
                BASE64URL
                    .encode(public.exponent().big_endian_without_leading_zero())
                    .into(),
            );
            finish_jwk(jwk, "RS256", self.kid.as_deref())
        }
    }

    impl JwsSigner for Rs256Key {
        fn alg(&self) -> &str {
            "RS256"
        }

        fn key_id(&self) -> Option<&str> {
            self.kid.as_deref()
        }

        fn x5t_s256(&self) -> Option<&str> {
            self.x5t_s256.as_deref()
        }

        fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
            let mut signature = vec![0; self.key.public_modulus_len()];
            let signed = self
                .key
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    signing_input,
                    &mut signature,
                )
                .map(|()| signature)
                .map_err(|_| BoxError::from("RS256 signing failed"));
            Box::pin(async move { signed })
        }
    }

    impl fmt::Debug for Rs256Key {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Rs256Key")
                .field("kid", &self.kid)
                .field("x5t#S256", &self.x5t_s256)
                .finish_non_exhaustive()
        }
    }

    fn finish_jwk(mut jwk: Map<String, Value>, alg: &str, kid: Option<&str>) -> String {
        if let Some(kid) = kid {
            jwk.insert("kid".into(), kid.into());
        }
        jwk.insert("alg".into(), alg.into());
        jwk.insert("use".into(), "sig".into());
        Value::Object(jwk).to_string()
    }

    /// The DER inside a PEM `PRIVATE KEY` block (RFC 7468 §10). Other blocks get a reason
    /// that says what to do; no error carries any of the PEM's text.
    fn pkcs8_pem_to_der(pem: &str) -> Result<Vec<u8>, SigningKeyError> {
        const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
        const END: &str = "-----END PRIVATE KEY-----";
        let Some(start) = pem.find(BEGIN) else {
            let reason = if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                "an encrypted PKCS #8 key: decrypt it first"
            } else if pem.contains("-----BEGIN EC PRIVATE KEY-----")
                || pem.contains("-----BEGIN RSA PRIVATE KEY-----")
            {
                "not PKCS #8: convert it with `openssl pkcs8 -topk8 -nocrypt`"
            } else {
                "no PEM block `PRIVATE KEY` (PKCS #8) found"
            };
            return Err(SigningKeyError::new(reason));
        };
        let body = &pem[start + BEGIN.len()..];
        let Some(end) = body.find(END) else {
            return Err(SigningKeyError::new("the PEM block has no end line"));
        };
        let base64: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        BASE64
            .decode(base64)
            .map_err(|_| SigningKeyError::new("the PEM block is not valid Base64"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pem_errors_say_what_to_do_and_show_no_key_text() {
            let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIK3y-s3cr3t\n-----END EC PRIVATE KEY-----\n";
            let err = Es256Key::from_pkcs8_pem(sec1).unwrap_err().to_string();
            assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
            let garbage = "-----BEGIN PRIVATE KEY-----\n!!s3cr3t!!\n-----END PRIVATE KEY-----";
            let err = Rs256Key::from_pkcs8_pem(garbage).unwrap_err().to_string();
            assert!(!err.contains("s3cr3t"), "{err}");
            // A P-256 key is not an RSA key, and the reverse.
            let ec = Es256Key::generate().unwrap();
            let der = ec.key.to_pkcs8v1().unwrap();
            assert!(Rs256Key::from_pkcs8_der(der.as_ref()).is_err());
            assert!(Es256Key::from_pkcs8_der(der.as_ref()).is_ok());
        }

        /// Verifies with the public JWK alone, as the authorization server does.
        fn verify(jwk: &str, message: &[u8], signature: &[u8]) -> bool {
            use aws_lc_rs::signature::{
                ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
                UnparsedPublicKey,
            };
            let jwk: Value = serde_json::from_str(jwk).unwrap();
            let field = |name: &str| BASE64URL.decode(jwk[name].as_str().unwrap()).unwrap();
            match jwk["kty"].as_str().unwrap() {
                "EC" => {
                    let mut point = vec![4];
                    point.extend(field("x"));
                    point.extend(field("y"));
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
                }
                _ => RsaPublicKeyComponents {
                    n: field("n"),
                    e: field("e"),
                }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            }
        }

        #[tokio::test]
        async fn signatures_verify_with_the_public_jwk() {
            let es = Es256Key::generate().unwrap();
            let signature = es.sign(b"header.claims").await.unwrap();
            assert_eq!(signature.len(), 64, "r||s, not DER");
            assert!(verify(&es.public_jwk(), b"header.claims", &signature));
            assert!(!verify(&es.public_jwk(), b"header.claimz", &signature));
            let other = Es256Key::generate().unwrap();
            assert!(!verify(&other.public_jwk(), b"header.claims", &signature));

            let rs = Rs256Key::generate().unwrap();
            let signature = rs.sign(b"header.claims").await.unwrap();
            assert_eq!(signature.len(), 256);
            assert!(verify(&rs.public_jwk(), b"header.claims", &signature));
            assert!(!verify(&rs.public_jwk(), b"header.claimz", &signature));
        }

        #[test]
        fn debug_shows_no_key_material() {
            let key = Es256Key::generate().unwrap().with_key_id("k1");
            let printed = format!("{key:?}");
            assert_eq!(
                printed,
                r#"Es256Key { kid: Some("k1"), x5t#S256: None, .. }"#
            );
            let der = key.key.to_pkcs8v1().unwrap();
            let pem_body = BASE64.encode(der.as_ref());
            assert!(!printed.contains(&pem_body[..16]));
        }
    }
}
