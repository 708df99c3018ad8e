//! Signed JWTs in JWS compact serialization (RFC 7515 §7.1), for every assertion the client
//! makes: the header from the signer, the claims as given, one signature.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use serde_json::{Map, Value};

use super::signer::JwsSigner;
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind};

/// `base64url(header) "." base64url(claims) "." base64url(signature)`, with the header's
/// `alg`, `kid` and `x5t#S256` from `signer` and `typ` if given.
///
/// Fails before anything is sent: a signer's own [`ConfigurationError`] or
/// [`TransientError`] is passed on, any other failure is a resend-safe transient error of kind
/// [`ClientAssertion`](TransientKind::Credential).
pub(crate) async fn signed_jwt(
    signer: &dyn JwsSigner,
    typ: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<String, RefreshError> {
    let alg = signer.alg();
    if alg.is_empty() || alg.eq_ignore_ascii_case("none") {
        return Err(ConfigurationError::local("invalid_signer")
            .with_description(format!("a JWS signer must name its algorithm, not {alg:?}"))
            .into());
    }
    let mut header = Map::new();
    header.insert("alg".into(), alg.into());
    if let Some(typ) = typ {
        header.insert("typ".into(), typ.into());
    }
    if let Some(kid) = signer.key_id() {
        header.insert("kid".into(), kid.into());
    }
    if let Some(thumbprint) = signer.x5t_s256() {
        header.insert("x5t#S256".into(), thumbprint.into());
    }
    let mut jws = BASE64URL.encode(Value::Object(header).to_string());
    jws.push('.');
    jws.push_str(&BASE64URL.encode(Value::Object(claims.clone()).to_string()));
    append_signature(signer, &mut jws).await?;
    Ok(jws)
}

/// Signs `jws`, the signing input (`base64url(header) "." base64url(claims)`), with `signer`
/// and appends `"." base64url(signature)`: the last step of every JWS the crate makes.
pub(crate) async fn append_signature(
    signer: &dyn JwsSigner,
    jws: &mut String,
) -> Result<(), RefreshError> {
    let signature = signer
        .sign(jws.as_bytes())
        .await
        .map_err(assertion_failure)?;
    check_signature_length(signer.alg(), signature.len())?;
    jws.push('.');
    BASE64URL.encode_string(signature, jws);
    Ok(())
}

/// A signer's or an assertion source's error as the cell needs it: its own classification if
/// it made one, else transient.
pub(crate) fn assertion_failure(error: crate::BoxError) -> RefreshError {
    let error = match error.downcast::<ConfigurationError>() {
        Ok(configuration) => return (*configuration).into(),
        Err(error) => error,
    };
    match error.downcast::<TransientError>() {
        // Nothing reached the token endpoint: safe to ask again.
        Ok(transient) => (*transient).with_resend_safe(true).into(),
        Err(error) => TransientError::new(TransientKind::Credential)
            .with_boxed_source(error)
            .into(),
    }
}

/// ECDSA signatures in JWS are r||s of fixed length (RFC 7518 §3.4). A KMS that returns DER
/// (AWS KMS does) would be refused by every server; say so here, once, rather than there.
fn check_signature_length(alg: &str, length: usize) -> Result<(), ConfigurationError> {
    let expected = match alg {
        "ES256" => 64,
        "ES384" => 96,
        "ES512" => 132,
        _ => return Ok(()),
    };
    if length == expected {
        return Ok(());
    }
    Err(
        ConfigurationError::local("invalid_signature").with_description(format!(
            "an {alg} signature is {expected} bytes of r and s, the signer returned {length}: \
         convert a DER signature to the JWS form"
        )),
    )
}

/// A fresh JWT ID: 128 bits from the system's secure source, base64url.
pub(crate) fn new_jti() -> Result<String, ConfigurationError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| {
        ConfigurationError::local("random_source")
            .with_description(format!("the system's random source failed: {error}"))
    })?;
    Ok(BASE64URL.encode(bytes))
}

/// Seconds since the Unix epoch, for `iat` and `exp`: wall-clock time, as the server reads it.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use crate::source::BoxFuture;

    struct Fixed {
        alg: &'static str,
        signature: Result<Vec<u8>, fn() -> BoxError>,
    }

    impl JwsSigner for Fixed {
        fn alg(&self) -> &str {
            self.alg
        }

        fn key_id(&self) -> Option<&str> {
            Some("kid-1")
        }

        fn x5t_s256(&self) -> Option<&str> {
            Some("thumb")
        }

        fn sign<'a>(&'a self, _: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
            let signed = self.signature.clone().map_err(|make| make());
            Box::pin(async move { signed })
        }
    }

    fn part(jws: &str, index: usize) -> Value {
        let part = jws.split('.').nth(index).unwrap();
        serde_json::from_slice(&BASE64URL.decode(part).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_header_names_alg_typ_kid_and_thumbprint() {
        let signer = Fixed {
            alg: "ES256",
            signature: Ok(vec![7; 64]),
        };
        let mut claims = Map::new();
        claims.insert("iss".into(), "svc".into());
        let jws = signed_jwt(&signer, Some("JWT"), &claims).await.unwrap();
        assert_eq!(jws.split('.').count(), 3);
        assert_eq!(
            part(&jws, 0),
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "kid-1", "x5t#S256": "thumb"})
        );
        assert_eq!(part(&jws, 1), serde_json::json!({"iss": "svc"}));
        let signature = BASE64URL.decode(jws.split('.').nth(2).unwrap()).unwrap();
        assert_eq!(signature, vec![7; 64]);
        assert!(!jws.contains('='), "base64url without padding: {jws}");
    }

    #[tokio::test]
    async fn a_der_ecdsa_signature_is_refused_with_a_reason() {
        let signer = Fixed {
            alg: "ES256",
            signature: Ok(vec![0x30; 71]),
        };
        let err = signed_jwt(&signer, None, &Map::new()).await.unwrap_err();
        let RefreshError::Configuration(err) = err else {
            panic!("{err:?}")
        };
        assert_eq!(err.error(), "invalid_signature");
        assert!(err.to_string().contains("71"), "{err}");
    }

    #[tokio::test]
    async fn signer_failures_keep_their_class() {
        let failing = |make: fn() -> BoxError| Fixed {
            alg: "RS256",
            signature: Err(make),
        };
        let err = signed_jwt(&failing(|| "kms unreachable".into()), None, &Map::new())
            .await
            .unwrap_err();
        let RefreshError::Transient(transient) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(transient.kind(), TransientKind::Credential);
        assert!(transient.is_resend_safe());
        assert_eq!(
            std::error::Error::source(transient).unwrap().to_string(),
            "kms unreachable"
        );
        let err = signed_jwt(
            &failing(|| Box::new(ConfigurationError::local("kms_access_denied"))),
            None,
            &Map::new(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RefreshError::Configuration(c) if c.error() == "kms_access_denied"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let signer = Fixed {
            alg: "none",
            signature: Ok(Vec::new()),
        };
        let err = signed_jwt(&signer, None, &Map::new()).await.unwrap_err();
        assert!(matches!(err, RefreshError::Configuration(_)), "{err:?}");
    }

    #[test]
    fn each_jti_is_new() {
        let a = new_jti().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, new_jti().unwrap());
    }
}
