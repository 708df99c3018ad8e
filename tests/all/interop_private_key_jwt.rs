//! `private_key_jwt` against a real third-party authorization server: oidc-provider on
//! 127.0.0.1 (see `oidc_provider.rs`), with clients registered for `private_key_jwt` with
//! ES256 and RS256 keys, and its own replay detection of assertion `jti`s.
//!
//! Real clock: the server checks `iat` and `exp` against real seconds.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use http::StatusCode;
use oauth_refresh::oauth::{
    AuthorizationCode, ClientAuth, HttpClient, JwsSigner, PrivateKeyJwt, ResponseBody,
    ServerMetadata,
};
use oauth_refresh::{
    BoxFuture, ClientCredentials, RefreshLayer, TokenSource, TransientError, TransientKind,
};
use serde_json::Value;

use crate::oidc_provider::{
    APP_REDIRECT_URI, OidcProvider, PKJWT_ES256_ID, PKJWT_RS256_ID, Stats, authorize_headless,
    pkjwt_es256_key, pkjwt_rs256_key,
};

/// The current access token of `layer`, through a request the layer stamps.
async fn access_token(layer: &RefreshLayer) -> String {
    use tower::{Layer, ServiceExt};
    // Echoes the Authorization header it got back in a response header.
    let seen = tower::service_fn(|request: http::Request<String>| async move {
        let mut response = http::Response::new(String::new());
        let header = request.headers()[http::header::AUTHORIZATION].clone();
        response.headers_mut().insert("x-seen", header);
        Ok::<_, std::convert::Infallible>(response)
    });
    let request = http::Request::get("http://127.0.0.1/resource")
        .body(String::new())
        .unwrap();
    let response = layer.layer(seen).oneshot(request).await.unwrap();
    let header = response.headers()["x-seen"].to_str().unwrap();
    header
        .strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_owned()
}

/// The claims of a form's `client_assertion`, decoded (not verified).
fn assertion_claims(form: &[u8]) -> Value {
    let assertion = url::form_urlencoded::parse(form)
        .find(|(name, _)| name == "client_assertion")
        .map(|(_, value)| value.into_owned())
        .expect("a client_assertion");
    let claims = assertion.split('.').nth(1).expect("a JWS");
    serde_json::from_slice(&BASE64URL.decode(claims).unwrap()).unwrap()
}

/// Client credentials (twice), a code exchange with PKCE, and two rotating refreshes for
/// `client_id`, every request authenticated by an assertion `signer` signs.
async fn all_grants(
    provider: &OidcProvider,
    client_id: &str,
    auth: PrivateKeyJwt,
) -> Result<(), String> {
    let metadata = ServerMetadata::discover(&provider.issuer).await.unwrap();
    let client_credentials = RefreshLayer::new(
        ClientCredentials::with_client_auth(
            &metadata.token_endpoint,
            client_id,
            ClientAuth::PrivateKeyJwt(auth.clone()),
        )
        .scope("api:read"),
    );
    client_credentials
        .refresh()
        .await
        .map_err(|e| e.to_string())?;
    let first = access_token(&client_credentials).await;
    client_credentials
        .refresh()
        .await
        .map_err(|e| e.to_string())?;
    let second = access_token(&client_credentials).await;
    assert_ne!(first, second);
    assert!(provider.token_active(&second).await);

    let sign_in = AuthorizationCode::new(
        metadata.authorization_endpoint.clone().unwrap(),
        &metadata.token_endpoint,
        client_id,
        APP_REDIRECT_URI,
    )
    .client_auth(ClientAuth::PrivateKeyJwt(auth))
    .scope("openid")
    .scope("api:read");
    let pending = sign_in.start().unwrap();
    let callback = authorize_headless(pending.url().as_str()).await;
    let grant = pending
        .exchange(&callback)
        .await
        .map_err(|e| e.to_string())?;
    assert!(grant.refresh_token().is_some(), "a refresh token");
    let user = RefreshLayer::new(grant);
    assert_eq!(
        provider
            .token_subject(&access_token(&user).await)
            .await
            .as_deref(),
        Some("alice")
    );
    user.refresh().await.map_err(|e| e.to_string())?;
    user.refresh().await.map_err(|e| e.to_string())?;
    assert!(provider.token_active(&access_token(&user).await).await);
    Ok(())
}

#[tokio::test]
async fn private_key_jwt_with_es256_and_rs256_on_client_credentials_code_and_refresh() {
    let provider = OidcProvider::start().await;
    let issuer = provider.issuer.clone();

    // ES256, addressed to the token endpoint (the default).
    let es256 = PrivateKeyJwt::new(pkjwt_es256_key());
    all_grants(&provider, PKJWT_ES256_ID, es256)
        .await
        .unwrap_or_else(|e| panic!("ES256: {e}; server:\n{}", provider.stderr_tail()));
    let stats = provider.stats().await;
    assert_eq!(
        stats,
        Stats {
            client_credentials: 2,
            authorization_code: 1,
            refresh_token: 2,
            private_key_jwt: 5,
            ..Stats::default()
        },
        "every request authenticated by assertion, none replayed, no refresh token reused"
    );

    // RS256, addressed to the issuer identifier, as draft-ietf-oauth-rfc7523bis asks.
    provider.reset().await;
    let rs256 = PrivateKeyJwt::new(pkjwt_rs256_key()).audience(&issuer);
    all_grants(&provider, PKJWT_RS256_ID, rs256)
        .await
        .unwrap_or_else(|e| panic!("RS256: {e}; server:\n{}", provider.stderr_tail()));
    let stats = provider.stats().await;
    assert_eq!(
        stats,
        Stats {
            client_credentials: 2,
            authorization_code: 1,
            refresh_token: 2,
            private_key_jwt: 5,
            private_key_jwt_aud_issuer: 5,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn the_server_refuses_a_key_it_does_not_know_and_a_secret_for_a_key_client() {
    let provider = OidcProvider::start().await;
    // The RS256 client's key signing for the ES256 client: the wrong key and algorithm.
    let wrong = ClientCredentials::with_client_auth(
        provider.token_url(),
        PKJWT_ES256_ID,
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(pkjwt_rs256_key())),
    );
    let err = RefreshLayer::new(wrong).refresh().await.unwrap_err();
    let configuration = match &err {
        oauth_refresh::RefreshError::Configuration(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(configuration.error(), "invalid_client");
    let secret = ClientCredentials::new(provider.token_url(), PKJWT_ES256_ID, "not-a-secret");
    let err = RefreshLayer::new(secret).refresh().await.unwrap_err();
    assert!(err.to_string().contains("invalid_client"), "{err}");
}

/// Sends token requests with reqwest and keeps each one's form. While `withhold` is set, it
/// keeps the next request back instead, failing it as a refused connection would (so the
/// client may resend it): an assertion the server never saw.
struct Recording {
    http: reqwest::Client,
    sent: Mutex<Vec<Bytes>>,
    withheld: Mutex<Vec<Bytes>>,
    withhold: std::sync::atomic::AtomicBool,
}

impl HttpClient for Recording {
    fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
        let form = request.body().clone();
        if self
            .withhold
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.withheld.lock().unwrap().push(form);
            return Box::pin(async {
                Err(TransientError::new(TransientKind::Network).with_resend_safe(true))
            });
        }
        self.sent.lock().unwrap().push(form);
        HttpClient::send(&self.http, request)
    }
}

/// A [`Recording`] shared with the test that reads it.
struct Shared(Arc<Recording>);

impl HttpClient for Shared {
    fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
        self.0.send(request)
    }
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_and_the_client_never_sends_one_twice() {
    let provider = OidcProvider::start().await;
    let recording = Arc::new(Recording {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap(),
        sent: Mutex::default(),
        withheld: Mutex::default(),
        withhold: true.into(),
    });
    let key = pkjwt_es256_key();
    assert_eq!(key.alg(), "ES256");
    let grant = ClientCredentials::with_client_auth(
        provider.token_url(),
        PKJWT_ES256_ID,
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(key)),
    )
    .http_client(Shared(recording.clone()));
    assert_eq!(grant.grant(), "client_credentials");
    let layer = RefreshLayer::new(grant);

    // The first attempt is withheld; the resend and three more refreshes reach the server,
    // which would refuse any assertion whose jti it had seen.
    for _ in 0..4 {
        layer
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("{e}; server:\n{}", provider.stderr_tail()));
    }
    let stats = provider.stats().await;
    assert_eq!(
        (
            stats.client_credentials,
            stats.private_key_jwt,
            stats.client_assertion_replayed
        ),
        (4, 4, 0)
    );
    let sent = recording.sent.lock().unwrap().clone();
    let [withheld] = recording
        .withheld
        .lock()
        .unwrap()
        .clone()
        .try_into()
        .unwrap();
    let jtis: HashSet<String> = sent
        .iter()
        .chain([&withheld])
        .map(|form| assertion_claims(form)["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        jtis.len(),
        5,
        "every attempt had its own jti, the withheld one included"
    );

    // The withheld assertion, never seen by the server: valid once, refused the second time.
    let (status, answer) = provider.raw_token_request(&withheld).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = provider.raw_token_request(&withheld).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["error"], "invalid_client");
    // One the client sent: refused as a replay too.
    let (status, answer) = provider.raw_token_request(&sent[0]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(provider.stats().await.client_assertion_replayed, 2);
}

/// The file a projected token would be: an assertion made elsewhere, read on every request.
/// The assertions in it are ones the client signed but never sent (withheld), so the server
/// has seen none of them.
#[tokio::test]
async fn an_assertion_file_is_read_for_every_request_and_its_replay_is_refused() {
    let provider = OidcProvider::start().await;
    let recording = Arc::new(Recording {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        sent: Mutex::default(),
        withheld: Mutex::default(),
        withhold: false.into(),
    });
    let signing = RefreshLayer::new(
        ClientCredentials::with_client_auth(
            provider.token_url(),
            PKJWT_RS256_ID,
            ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(pkjwt_rs256_key())),
        )
        .http_client(Shared(recording.clone())),
    );
    for _ in 0..2 {
        recording
            .withhold
            .store(true, std::sync::atomic::Ordering::SeqCst);
        signing.refresh().await.unwrap();
    }
    let withheld: Vec<String> = recording
        .withheld
        .lock()
        .unwrap()
        .iter()
        .map(|form| {
            url::form_urlencoded::parse(form)
                .find(|(name, _)| name == "client_assertion")
                .map(|(_, value)| value.into_owned())
                .unwrap()
        })
        .collect();
    assert_eq!(withheld.len(), 2);

    let dir = std::env::temp_dir().join(format!(
        "oauth-refresh-interop-assertion-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, format!("{}\n", withheld[0])).unwrap();
    let from_file = RefreshLayer::new(ClientCredentials::with_client_auth(
        provider.token_url(),
        PKJWT_RS256_ID,
        ClientAuth::ClientAssertion(oauth_refresh::oauth::ClientAssertion::from_file(&path)),
    ));
    provider.reset().await;
    from_file
        .refresh()
        .await
        .unwrap_or_else(|e| panic!("{e}; server:\n{}", provider.stderr_tail()));
    // Not rotated yet: the same assertion again, which the server refuses as a replay.
    let err = from_file.refresh().await.unwrap_err();
    assert!(
        matches!(&err, oauth_refresh::RefreshError::Configuration(c) if c.error() == "invalid_client"),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(&withheld[0]));
    // Rotated: the next request reads the new one.
    std::fs::write(&path, &withheld[1]).unwrap();
    from_file.refresh().await.unwrap();
    let stats = provider.stats().await;
    assert_eq!(
        (
            stats.client_credentials,
            stats.private_key_jwt,
            stats.client_assertion_replayed
        ),
        (3, 3, 1)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
