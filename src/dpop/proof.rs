//! The DPoP proof (RFC 9449 §4): a JWS of type `dpop+jwt` whose header carries the public
//! key, signed for one request.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use http::{Method, Uri};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{ConfigurationError, RefreshError};
use crate::oauth::jws::{append_signature, new_jti, unix_now};
use crate::oauth::{JwsSigner, SigningKeyError};

/// A key that proves possession: a [`JwsSigner`] (a built-in key, or a KMS or HSM behind the
/// trait) and its public JWK, which every proof carries in its header.
///
/// The header is encoded once, here; a proof then costs its claims and the signature.
/// `Debug` shows the algorithm and the key's thumbprint (public by nature), nothing else.
#[derive(Clone)]
pub struct DpopKey {
    signer: Arc<dyn JwsSigner>,
    /// `base64url({"typ":"dpop+jwt","alg":…,"jwk":…})` and the `.` after it.
    header: Arc<str>,
    thumbprint: Arc<str>,
}

impl DpopKey {
    /// A key from a signer and its public JWK (a JSON object: `kty` `EC`, `RSA` or `OKP` and
    /// the members of the public key; `kid`, `alg`, `use` and other parameters may be there
    /// and are left out of the proofs).
    ///
    /// Refused: a JWK that is not a public key of a known type, one that carries a private
    /// member (`d`, `p`, ... : a proof would publish it), a symmetric `alg` on the signer.
    /// The error never quotes the JWK.
    ///
    /// ```
    /// use oauth_refresh::dpop::DpopKey;
    /// # use oauth_refresh::oauth::JwsSigner;
    /// # struct Kms;
    /// # impl JwsSigner for Kms {
    /// #     fn alg(&self) -> &str { "ES256" }
    /// #     fn sign<'a>(&'a self, _: &'a [u8]) -> oauth_refresh::BoxFuture<'a, Result<Vec<u8>, oauth_refresh::BoxError>> {
    /// #         Box::pin(async { Ok(vec![0; 64]) })
    /// #     }
    /// # }
    /// let jwk = r#"{"kty":"EC","crv":"P-256","kid":"k1",
    ///     "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    ///     "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    /// let key = DpopKey::new(Kms, jwk).unwrap();
    /// assert_eq!(key.thumbprint().len(), 43);
    ///
    /// let private = r#"{"kty":"EC","crv":"P-256","x":"f83O","y":"x_FE","d":"secret"}"#;
    /// let err = DpopKey::new(Kms, private).unwrap_err();
    /// assert!(!err.to_string().contains("secret"));
    /// ```
    pub fn new(signer: impl JwsSigner, public_jwk: &str) -> Result<Self, SigningKeyError> {
        let alg = signer.alg();
        if alg.is_empty() || alg.eq_ignore_ascii_case("none") || alg.starts_with("HS") {
            return Err(SigningKeyError::new(
                "a DPoP key signs with an asymmetric algorithm",
            ));
        }
        let jwk = public_members(public_jwk)?;
        let mut header = Map::new();
        header.insert("typ".into(), "dpop+jwt".into());
        header.insert("alg".into(), alg.into());
        header.insert("jwk".into(), Value::Object(jwk.clone()));
        let mut encoded = BASE64URL.encode(Value::Object(header).to_string());
        encoded.push('.');
        Ok(DpopKey {
            thumbprint: thumbprint(&jwk).into(),
            header: encoded.into(),
            signer: Arc::new(signer),
        })
    }

    /// A built-in ES256 key, with the JWK it derives.
    #[cfg(feature = "jwt-signing")]
    pub fn es256(key: crate::oauth::Es256Key) -> Self {
        let jwk = key.public_jwk();
        Self::new(key, &jwk).expect("the built-in key's own JWK")
    }

    /// The key's JWK SHA-256 thumbprint (RFC 7638), base64url: what a server binds its tokens
    /// to (`cnf.jkt`), and what `dpop_jkt` names in an authorization request.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for one request: a fresh `jti`, `iat` now, the request's method and URL
    /// (without query and fragment), and, as asked, the access token's hash (`ath`) and the
    /// server's nonce.
    ///
    /// Fails before anything is sent: a URL without scheme or host is a
    /// [`ConfigurationError`] `dpop_htu`; a signer's failure is classed as for client
    /// assertions (its own classification, or a resend-safe transient error).
    pub async fn proof(&self, request: ProofRequest<'_>) -> Result<String, RefreshError> {
        let claims = claims(&request)?;
        let mut jws = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 90);
        jws.push_str(&self.header);
        BASE64URL.encode_string(&claims, &mut jws);
        append_signature(&*self.signer, &mut jws).await?;
        Ok(jws)
    }
}

/// The proof's claims as JSON, written out: a proof is made for every request, and a map of
/// values built and serialized for each cost a tenth of an ES256 signature.
fn claims(request: &ProofRequest<'_>) -> Result<Vec<u8>, ConfigurationError> {
    // Strings from outside are escaped by `serde_json`; the crate's own (`jti`, `ath`:
    // base64url) and numbers need no escaping.
    let string = |claims: &mut Vec<u8>, value: &str| {
        serde_json::to_writer(claims, value).expect("a string serializes into memory");
    };
    let mut claims = Vec::with_capacity(192);
    claims.extend_from_slice(b"{\"jti\":\"");
    claims.extend_from_slice(new_jti()?.as_bytes());
    claims.extend_from_slice(b"\",\"htm\":");
    string(&mut claims, request.method.as_str());
    claims.extend_from_slice(b",\"htu\":");
    string(&mut claims, &htu(request.uri)?);
    claims.extend_from_slice(b",\"iat\":");
    claims.extend_from_slice(unix_now().to_string().as_bytes());
    if let Some(token) = request.access_token {
        claims.extend_from_slice(b",\"ath\":\"");
        claims.extend_from_slice(ath(token).as_bytes());
        claims.push(b'"');
    }
    if let Some(nonce) = request.nonce {
        claims.extend_from_slice(b",\"nonce\":");
        string(&mut claims, nonce);
    }
    claims.push(b'}');
    Ok(claims)
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.signer.alg())
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// What a proof is for: the request's method and URL, and what else the proof must name.
#[derive(Clone, Copy, Debug)]
pub struct ProofRequest<'a> {
    method: &'a Method,
    uri: &'a Uri,
    access_token: Option<&'a str>,
    nonce: Option<&'a str>,
}

impl<'a> ProofRequest<'a> {
    /// A proof for a request of this method to this URL (its query and fragment are left out
    /// of `htu`).
    pub fn new(method: &'a Method, uri: &'a Uri) -> Self {
        ProofRequest {
            method,
            uri,
            access_token: None,
            nonce: None,
        }
    }

    /// The access token the request carries: the proof holds its hash (`ath`), as every
    /// request to a resource server needs; token requests have none.
    pub fn access_token(mut self, token: &'a str) -> Self {
        self.access_token = Some(token);
        self
    }

    /// The nonce the server asked for (`DPoP-Nonce`).
    pub fn nonce(mut self, nonce: &'a str) -> Self {
        self.nonce = Some(nonce);
        self
    }
}

/// The members of each key type's public key (RFC 7638 §3.2, RFC 8037 §2), in the
/// lexicographic order a thumbprint hashes them in.
fn required_members(kty: &str) -> Option<&'static [&'static str]> {
    match kty {
        "EC" => Some(&["crv", "kty", "x", "y"]),
        "RSA" => Some(&["e", "kty", "n"]),
        "OKP" => Some(&["crv", "kty", "x"]),
        _ => None,
    }
}

/// Members that belong to a private or symmetric key (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The JWK's public key members, checked: each a string, nothing private anywhere in it.
fn public_members(public_jwk: &str) -> Result<Map<String, Value>, SigningKeyError> {
    let Ok(Value::Object(jwk)) = serde_json::from_str::<Value>(public_jwk) else {
        return Err(SigningKeyError::new("the public JWK is not a JSON object"));
    };
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(SigningKeyError::new(format!(
            "the JWK holds the private member {member:?}: a DPoP proof carries its key in the \
             open, so give the public JWK only"
        )));
    }
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
    let Some(required) = required_members(kty) else {
        return Err(SigningKeyError::new(
            "the JWK's kty is none of EC, RSA, OKP",
        ));
    };
    let mut public = Map::new();
    for member in required {
        match jwk.get(*member) {
            Some(Value::String(value)) if !value.is_empty() => {
                public.insert((*member).into(), value.as_str().into());
            }
            _ => {
                return Err(SigningKeyError::new(format!(
                    "the {kty} JWK lacks its {member:?} member"
                )));
            }
        }
    }
    Ok(public)
}

/// RFC 7638: SHA-256 over the required members, in lexicographic order, without whitespace.
/// Written out rather than left to the map's order, which a feature of `serde_json` changes.
fn thumbprint(public: &Map<String, Value>) -> String {
    let kty = public["kty"].as_str().unwrap_or_default();
    let mut canonical = String::from("{");
    for (i, member) in required_members(kty).unwrap_or_default().iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&Value::from(*member).to_string());
        canonical.push(':');
        canonical.push_str(&public[*member].to_string());
    }
    canonical.push('}');
    BASE64URL.encode(Sha256::digest(canonical.as_bytes()))
}

/// The `htu` claim: the URL without query and fragment (RFC 9449 §4.2), scheme and host in
/// lower case.
fn htu(uri: &Uri) -> Result<String, ConfigurationError> {
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(ConfigurationError::local("dpop_htu").with_description(
            "a DPoP proof names an absolute URL: this one has no scheme or host",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    // Normalized as RFC 3986 §6.2.3 has servers compare: no user information, and no port
    // where it is the scheme's own.
    let port = match (scheme.as_str(), uri.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => String::new(),
        (_, Some(port)) => format!(":{port}"),
    };
    Ok(format!(
        "{scheme}://{}{port}{}",
        host.to_ascii_lowercase(),
        uri.path()
    ))
}

/// The `ath` claim: base64url of the SHA-256 of the access token's ASCII.
fn ath(access_token: &str) -> String {
    BASE64URL.encode(Sha256::digest(access_token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_is_rfc_7638s_own_example() {
        // RFC 7638 §3.1.
        let jwk = r#"{"kty":"RSA","e":"AQAB","alg":"RS256","kid":"2011-04-29",
            "n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}"#;
        let public = public_members(jwk).unwrap();
        assert_eq!(
            thumbprint(&public),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(!public.contains_key("kid"), "only the key's own members");
    }

    #[test]
    fn htu_leaves_out_query_and_fragment() {
        let uri: Uri = "HTTPS://API.Example.com:8443/a/b?x=1".parse().unwrap();
        assert_eq!(htu(&uri).unwrap(), "https://api.example.com:8443/a/b");
        let defaults: Uri = "https://user@api.example.com:443/a#f".parse().unwrap();
        assert_eq!(htu(&defaults).unwrap(), "https://api.example.com/a");
        let plain: Uri = "http://127.0.0.1:80/a".parse().unwrap();
        assert_eq!(htu(&plain).unwrap(), "http://127.0.0.1/a");
        let relative: Uri = "/a/b".parse().unwrap();
        assert_eq!(htu(&relative).unwrap_err().error(), "dpop_htu");
    }

    #[test]
    fn the_claims_are_json_whatever_the_nonce_holds() {
        let uri: Uri = "https://api.test/a".parse().unwrap();
        let tricky = "n\"1\\\u{7f}";
        let claims = claims(&ProofRequest::new(&Method::GET, &uri).nonce(tricky)).unwrap();
        let claims: Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["nonce"], tricky);
        assert_eq!(claims["htm"], "GET");
        assert!(
            claims["iat"].is_u64() && claims["jti"].is_string(),
            "{claims}"
        );
    }

    #[test]
    fn ath_is_rfc_9449s_example() {
        // RFC 9449 §7.1: the access token of its example and its `ath`.
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn jwks_that_are_not_public_keys_are_refused() {
        for (jwk, says) in [
            ("[1]", "not a JSON object"),
            (r#"{"kty":"oct","k":"c2VjcmV0"}"#, "\"k\""),
            (
                r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"c2VjcmV0"}"#,
                "\"d\"",
            ),
            (r#"{"kty":"EC","crv":"P-256","x":"a"}"#, "\"y\""),
            (r#"{"kty":"XYZ"}"#, "kty"),
        ] {
            let err = public_members(jwk).unwrap_err().to_string();
            assert!(err.contains(says), "{jwk}: {err}");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
    }

    #[cfg(feature = "jwt-signing")]
    #[tokio::test]
    async fn an_es256_proof_names_its_request_and_verifies_with_the_key_in_its_header() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

        let key = DpopKey::es256(crate::oauth::Es256Key::generate().unwrap());
        let uri: Uri = "https://api.test/items?page=2#top".parse().unwrap();
        let request = ProofRequest::new(&Method::POST, &uri)
            .access_token("at-1")
            .nonce("n-1");
        let proof = key.proof(request).await.unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        let decode = |part: &str| -> Value {
            serde_json::from_slice(&BASE64URL.decode(part).unwrap()).unwrap()
        };
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        let jwk = header["jwk"].as_object().unwrap();
        let mut members: Vec<&str> = jwk.keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(
            members,
            ["crv", "kty", "x", "y"],
            "the public key and nothing else"
        );
        assert_eq!(thumbprint(jwk), key.thumbprint());

        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://api.test/items");
        assert_eq!(claims["ath"], ath("at-1"));
        assert_eq!(claims["nonce"], "n-1");
        let iat = claims["iat"].as_u64().unwrap();
        assert!(unix_now().abs_diff(iat) <= 5, "{iat}");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22, "128 bits");

        let x = BASE64URL.decode(jwk["x"].as_str().unwrap()).unwrap();
        let y = BASE64URL.decode(jwk["y"].as_str().unwrap()).unwrap();
        let point = [&[4u8][..], &x, &y].concat();
        let signature = BASE64URL.decode(parts[2]).unwrap();
        let signing_input = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(signing_input.as_bytes(), &signature)
            .expect("the proof verifies with the key it carries");

        // A token request's proof: no `ath`, no nonce; and a fresh `jti` every time.
        let bare = key
            .proof(ProofRequest::new(&Method::POST, &uri))
            .await
            .unwrap();
        let bare = decode(bare.split('.').nth(1).unwrap());
        assert!(
            bare.get("ath").is_none() && bare.get("nonce").is_none(),
            "{bare}"
        );
        assert_ne!(bare["jti"], claims["jti"]);
        assert!(!format!("{key:?}").contains(jwk["x"].as_str().unwrap()));
    }
}
