//! Client authentication by assertion over real HTTP, against the scripted token endpoint on
//! 127.0.0.1: `private_key_jwt` on every grant (what each assertion says, that its signature
//! verifies with the public key alone, a fresh `jti` on every attempt, resends included) and
//! an assertion read from a file on every request.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use oauth_refresh::oauth::{
    AuthorizationCode, ClientAssertion, ClientAuth, Es256Key, JwsSigner, PrivateKeyJwt, Rs256Key,
};
use oauth_refresh::{
    BoxError, BoxFuture, ClientCredentials, RefreshError, RefreshLayer, RefreshTokenGrant,
    TransientKind,
};
use serde_json::{Value, json};

use crate::token_endpoint::{Answer, Recorded, TokenEndpoint};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn tokens(access_token: &str, refresh_token: Option<&str>) -> Answer {
    let mut body =
        json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600});
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    Answer::json(200, body)
}

/// A JWS split into its decoded header, decoded claims, signing input and signature.
struct Jws {
    header: Value,
    claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

fn decode(jws: &str) -> Jws {
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS: {} parts", parts.len());
    let json = |part: &str| -> Value {
        serde_json::from_slice(&BASE64URL.decode(part).expect("base64url")).expect("JSON")
    };
    Jws {
        header: json(parts[0]),
        claims: json(parts[1]),
        signing_input: format!("{}.{}", parts[0], parts[1]),
        signature: BASE64URL.decode(parts[2]).expect("base64url signature"),
    }
}

/// Checks a JWS signature with the public JWK alone, as the authorization server does.
fn verifies(jwk: &str, jws: &Jws) -> bool {
    let jwk: Value = serde_json::from_str(jwk).unwrap();
    let field = |name: &str| BASE64URL.decode(jwk[name].as_str().unwrap()).unwrap();
    let message = jws.signing_input.as_bytes();
    match jwk["kty"].as_str().unwrap() {
        "EC" => {
            let mut point = vec![4];
            point.extend(field("x"));
            point.extend(field("y"));
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, &jws.signature)
                .is_ok()
        }
        "RSA" => RsaPublicKeyComponents {
            n: field("n"),
            e: field("e"),
        }
        .verify(&RSA_PKCS1_2048_8192_SHA256, message, &jws.signature)
        .is_ok(),
        other => panic!("unexpected kty {other}"),
    }
}

/// The assertion a recorded request carried, after checking the parameters around it.
fn assertion_of(request: &Recorded, client_id: &str) -> String {
    assert!(
        request.headers.get("authorization").is_none(),
        "no Basic credentials beside an assertion"
    );
    assert_eq!(request.param("client_secret"), None, "no secret beside it");
    assert_eq!(request.param("client_id").as_deref(), Some(client_id));
    assert_eq!(
        request.param("client_assertion_type").as_deref(),
        Some(JWT_BEARER)
    );
    request.param("client_assertion").expect("client_assertion")
}

fn jti(jws: &Jws) -> String {
    jws.claims["jti"].as_str().expect("jti").to_owned()
}

#[tokio::test]
async fn private_key_jwt_signs_claims_a_server_can_verify_with_es256_and_rs256() {
    let es256 = Es256Key::generate()
        .unwrap()
        .with_key_id("es-1")
        .with_x5t_s256("x5t-thumbprint");
    let rs256 = Rs256Key::generate().unwrap().with_key_id("rs-1");
    let jwks = [es256.public_jwk(), rs256.public_jwk()];
    let auths = [
        ("ES256", "es-1", PrivateKeyJwt::new(es256)),
        ("RS256", "rs-1", PrivateKeyJwt::new(rs256)),
    ];
    for ((alg, kid, auth), jwk) in auths.into_iter().zip(jwks) {
        let server = TokenEndpoint::start().await;
        server.push(tokens("at-1", None));
        let grant = ClientCredentials::with_client_auth(
            server.url(),
            "svc",
            ClientAuth::PrivateKeyJwt(auth),
        )
        .scope("api:read");
        let layer = RefreshLayer::new(grant);
        layer.refresh().await.unwrap();

        let [request] = server.requests().try_into().expect("one token request");
        assert_eq!(
            request.param("grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(request.param("scope").as_deref(), Some("api:read"));
        let jws = decode(&assertion_of(&request, "svc"));
        assert_eq!(jws.header["alg"], alg);
        assert_eq!(jws.header["typ"], "JWT");
        assert_eq!(jws.header["kid"], kid);
        if alg == "ES256" {
            assert_eq!(jws.header["x5t#S256"], "x5t-thumbprint");
            assert_eq!(jws.signature.len(), 64, "r||s");
        } else {
            assert!(jws.header.get("x5t#S256").is_none());
        }
        assert_eq!(jws.claims["iss"], "svc");
        assert_eq!(jws.claims["sub"], "svc");
        assert_eq!(jws.claims["aud"], server.url().as_str(), "a single string");
        let iat = jws.claims["iat"].as_u64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(iat.abs_diff(now) <= 5, "iat {iat}, now {now}");
        assert_eq!(jws.claims["exp"].as_u64().unwrap(), iat + 60);
        assert!(verifies(&jwk, &jws), "{alg}: the signature verifies");
        let mut forged = decode(&assertion_of(&request, "svc"));
        forged.signing_input = forged.signing_input.replace('.', ".e30");
        assert!(
            !verifies(&jwk, &forged),
            "{alg}: and only for what it signed"
        );
    }
}

#[tokio::test]
async fn every_attempt_signs_a_new_assertion_resends_included() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::raw(503, None, ""));
    server.push(Answer::close());
    server.push(tokens("at-1", None));
    server.push(tokens("at-2", None));
    let grant = ClientCredentials::with_client_auth(
        server.url(),
        "svc",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(Es256Key::generate().unwrap())),
    );
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    assert_eq!(server.count(), 3, "two resends");
    assert_eq!(layer.stats().generation, 1);
    layer.refresh().await.unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    let assertions: HashSet<String> = requests.iter().map(|r| assertion_of(r, "svc")).collect();
    assert_eq!(assertions.len(), 4, "no assertion sent twice");
    let jtis: HashSet<String> = assertions.iter().map(|a| jti(&decode(a))).collect();
    assert_eq!(jtis.len(), 4, "no jti sent twice");
}

#[tokio::test]
async fn refresh_and_code_exchange_authenticate_with_the_assertion_too() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-2")));
    server.push(tokens("at-2", Some("rt-3")));
    server.push(tokens("at-3", None));
    let key = Arc::new(Rs256Key::generate().unwrap().with_key_id("app-key"));
    let auth = PrivateKeyJwt::new(key.clone()).audience("https://issuer.example");

    // The code exchange, and the refresh grant it seeds.
    let sign_in = AuthorizationCode::new(
        "http://127.0.0.1:1/authorize",
        server.url(),
        "app",
        "http://127.0.0.1/callback",
    )
    .client_auth(ClientAuth::PrivateKeyJwt(auth.clone()));
    let pending = sign_in.start().unwrap();
    let callback = format!(
        "http://127.0.0.1/callback?code=c-1&state={}",
        pending.state()
    );
    let seeded = pending.exchange(&callback).await.unwrap();
    let layer = RefreshLayer::new(seeded);
    layer.refresh().await.unwrap();

    // A refresh grant from a stored refresh token.
    let stored = RefreshTokenGrant::new(server.url(), "app", "rt-stored")
        .client_auth(ClientAuth::PrivateKeyJwt(auth));
    RefreshLayer::new(stored).refresh().await.unwrap();

    let requests = server.requests();
    let grants: Vec<Option<String>> = requests.iter().map(|r| r.param("grant_type")).collect();
    assert_eq!(
        grants,
        [
            Some("authorization_code".to_owned()),
            Some("refresh_token".to_owned()),
            Some("refresh_token".to_owned())
        ]
    );
    assert_eq!(requests[1].param("refresh_token").as_deref(), Some("rt-2"));
    assert_eq!(
        requests[2].param("refresh_token").as_deref(),
        Some("rt-stored")
    );
    let mut jtis = HashSet::new();
    for request in &requests {
        let jws = decode(&assertion_of(request, "app"));
        assert_eq!(jws.claims["aud"], "https://issuer.example");
        assert_eq!(jws.header["kid"], "app-key");
        assert!(verifies(&key.public_jwk(), &jws));
        assert!(jtis.insert(jti(&jws)));
    }
}

#[tokio::test]
async fn a_secret_is_never_sent_beside_an_assertion() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    server.push(tokens("at-2", None));
    let grant = ClientCredentials::new(server.url(), "svc", "cs-s3cr3t").client_auth(
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(Es256Key::generate().unwrap())),
    );
    RefreshLayer::new(grant).refresh().await.unwrap();
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-1")
        .client_secret("cs-s3cr3t")
        .client_auth(ClientAuth::ClientAssertion(ClientAssertion::from_fn(
            || async { Ok::<_, std::io::Error>("given.assertion.sig".to_owned()) },
        )));
    RefreshLayer::new(grant).refresh().await.unwrap();
    let requests = server.requests();
    assertion_of(&requests[0], "svc");
    assert_eq!(assertion_of(&requests[1], "app"), "given.assertion.sig");
    for request in requests {
        assert!(!String::from_utf8_lossy(&request.body).contains("s3cr3t"));
    }
}

#[tokio::test]
async fn an_assertion_file_is_read_for_every_request_and_a_missing_one_sends_nothing() {
    let dir = std::env::temp_dir().join(format!(
        "oauth-refresh-client-assertion-{}-{}",
        std::process::id(),
        line!()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "eyJ.projected-1-s3cr3t.sig\n").unwrap();

    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    server.push(tokens("at-2", None));
    let grant = ClientCredentials::with_client_auth(
        server.url(),
        "workload",
        ClientAuth::ClientAssertion(ClientAssertion::from_file(&path)),
    );
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    // The kubelet rotates the token: the next request carries the new one.
    std::fs::write(&path, "eyJ.projected-2-s3cr3t.sig").unwrap();
    layer.refresh().await.unwrap();
    let sent: Vec<String> = server
        .requests()
        .iter()
        .map(|r| assertion_of(r, "workload"))
        .collect();
    assert_eq!(
        sent,
        ["eyJ.projected-1-s3cr3t.sig", "eyJ.projected-2-s3cr3t.sig"]
    );

    std::fs::remove_file(&path).unwrap();
    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Transient(transient) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(transient.kind(), TransientKind::Credential);
    assert_eq!(server.count(), 2, "nothing sent without an assertion");
    let chain = format!(
        "{err} / {} / {err:?} / {layer:?}",
        std::error::Error::source(transient).unwrap()
    );
    assert!(chain.contains("is missing"), "{chain}");
    assert!(!chain.contains("s3cr3t"), "{chain}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A KMS that fails its first call: the refresh asks again, and signs a new assertion.
struct FlakyKms {
    key: Es256Key,
    calls: AtomicUsize,
}

impl JwsSigner for FlakyKms {
    fn alg(&self) -> &str {
        self.key.alg()
    }

    fn key_id(&self) -> Option<&str> {
        Some("kms-key")
    }

    fn sign<'a>(&'a self, input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                return Err("the KMS is unreachable".into());
            }
            self.key.sign(input).await
        })
    }
}

#[tokio::test]
async fn a_failing_signer_is_transient_and_asked_again_before_anything_is_sent() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    let key = Es256Key::generate().unwrap();
    let jwk = key.public_jwk();
    let kms = Arc::new(FlakyKms {
        key,
        calls: AtomicUsize::new(0),
    });
    let grant = ClientCredentials::with_client_auth(
        server.url(),
        "svc",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(kms.clone())),
    );
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    assert_eq!(kms.calls.load(Ordering::SeqCst), 2);
    let [request] = server.requests().try_into().expect("one token request");
    let jws = decode(&assertion_of(&request, "svc"));
    assert_eq!(jws.header["kid"], "kms-key");
    assert!(verifies(&jwk, &jws));
}

#[test]
fn debug_never_shows_keys_or_assertions() {
    let key = Es256Key::generate().unwrap().with_key_id("visible-kid");
    let auth = PrivateKeyJwt::new(key).audience("https://issuer.example");
    let grant = ClientCredentials::with_client_auth(
        "https://login.test/token",
        "svc",
        ClientAuth::PrivateKeyJwt(auth.clone()),
    );
    let printed = format!("{grant:?} {grant:#?} {auth:?}");
    assert!(printed.contains("visible-kid"), "{printed}");
    assert!(printed.contains("ES256"), "{printed}");
    assert!(printed.contains("https://issuer.example"), "{printed}");
    for part in ["\"d\"", "PRIVATE", "signer: Es256Key {"] {
        assert!(!printed.contains(part), "{part}: {printed}");
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let from_fn = ClientAssertion::from_fn(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::io::Error>("ca-s3cr3t".to_owned()) }
    });
    let printed = format!(
        "{from_fn:?} {:?}",
        ClientAuth::ClientAssertion(from_fn.clone())
    );
    assert!(!printed.contains("s3cr3t"), "{printed}");
}

/// A projected token file can be missing for a moment while it is replaced: the refresh asks
/// again after its backoff and sends the new one, nothing before it.
#[tokio::test(start_paused = true)]
async fn a_briefly_missing_assertion_file_is_read_again_after_the_backoff() {
    let dir = std::env::temp_dir().join(format!(
        "oauth-refresh-client-assertion-{}-{}",
        std::process::id(),
        line!()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    let _ = std::fs::remove_file(&path);

    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    let grant = ClientCredentials::with_client_auth(
        server.url(),
        "workload",
        ClientAuth::ClientAssertion(ClientAssertion::from_file(&path)),
    );
    let layer = RefreshLayer::new(grant);
    let writer = {
        let path = path.clone();
        tokio::spawn(async move {
            // Sooner than the first backoff (200 ms, jittered down to no less than half).
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(&path, "eyJ.rotated.sig").unwrap();
        })
    };
    let started = tokio::time::Instant::now();
    layer.refresh().await.unwrap();
    writer.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    let [request] = server.requests().try_into().expect("one token request");
    assert_eq!(assertion_of(&request, "workload"), "eyJ.rotated.sig");
    assert_eq!(
        layer.stats().failures,
        0,
        "one refresh, resent within itself"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A signer that never answers (a KMS out of reach) holds no refresh beyond the request
/// timeout, and nothing is sent without its signature.
struct SilentKms;

impl JwsSigner for SilentKms {
    fn alg(&self) -> &str {
        "ES256"
    }

    fn sign<'a>(&'a self, _: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_signer_that_never_answers_times_out_and_sends_nothing() {
    let server = TokenEndpoint::start().await;
    let grant = ClientCredentials::with_client_auth(
        server.url(),
        "svc",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(SilentKms)),
    )
    .timeout(Duration::from_secs(2));
    let layer = RefreshLayer::new(grant);
    let started = tokio::time::Instant::now();
    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Transient(transient) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(transient.kind(), TransientKind::Credential, "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.count(), 0);
}
