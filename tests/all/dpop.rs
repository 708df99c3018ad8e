//! DPoP (RFC 9449) through the layer: the proof on every request, the nonce resend and the
//! rejected-token resend (at most one of each, in either order), body replay, and the token
//! endpoint's side (a proof per token request, `use_dpop_nonce` resent once, a `Bearer`
//! answer refused with its refresh token kept).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use oauth_refresh::dpop::DpopKey;
use oauth_refresh::oauth::Es256Key;
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshLayer, RetryStatus, TokenRequest, TokenSet,
    TokenSource,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt};

/// Hands out `at-1`, `at-2`, ... bound to its key, for an hour each.
#[derive(Clone)]
struct BoundSource {
    key: DpopKey,
    calls: Arc<AtomicUsize>,
}

impl BoundSource {
    fn new() -> Self {
        BoundSource {
            key: DpopKey::es256(Es256Key::generate().unwrap()),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for BoundSource {
    fn fetch(&self, _request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            Ok(TokenSet::new(AccessToken::new(format!("at-{n}")))
                .with_expires_in(Duration::from_secs(3600)))
        })
    }

    fn dpop_key(&self) -> Option<&DpopKey> {
        Some(&self.key)
    }
}

/// The claims of the proof a request carries, after checking its header names the key.
fn proof_claims(headers: &http::HeaderMap, key: &DpopKey) -> Value {
    let proof = headers["dpop"].to_str().unwrap();
    let parts: Vec<&str> = proof.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    let header: Value = serde_json::from_slice(&BASE64URL.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    let jwk = &header["jwk"];
    let canonical = format!(
        r#"{{"crv":{},"kty":{},"x":{},"y":{}}}"#,
        jwk["crv"], jwk["kty"], jwk["x"], jwk["y"]
    );
    assert_eq!(
        BASE64URL.encode(Sha256::digest(canonical.as_bytes())),
        key.thumbprint(),
        "the proof carries the key's public JWK"
    );
    serde_json::from_slice(&BASE64URL.decode(parts[1]).unwrap()).unwrap()
}

fn ath(token: &str) -> String {
    BASE64URL.encode(Sha256::digest(token.as_bytes()))
}

fn challenge(error: &str, nonce: Option<&str>) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(401)
        .header("www-authenticate", format!(r#"DPoP error="{error}""#));
    if let Some(nonce) = nonce {
        response = response.header("dpop-nonce", nonce);
    }
    response.body(Full::new(Bytes::new())).unwrap()
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

fn post(uri: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

type Mock = tower_test::mock::Mock<Request<Full<Bytes>>, Response<Full<Bytes>>>;
type MockHandle = tower_test::mock::Handle<Request<Full<Bytes>>, Response<Full<Bytes>>>;

fn mocked(
    layer: &RefreshLayer,
) -> (
    tower_test::mock::Spawn<oauth_refresh::Refresh<Mock>>,
    MockHandle,
) {
    let (mock, mut handle) = tower_test::mock::pair();
    handle.allow(10);
    (tower_test::mock::Spawn::new(layer.layer(mock)), handle)
}

/// `future`'s output, or a panic where a step the test expects never comes (on the paused
/// clock, a minute passes as soon as nothing else can run): a failure, never a hang.
async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("the step the test waits for never came")
}

/// The response a spawned request ends with.
async fn answer<T>(response: tokio::task::JoinHandle<Result<T, tower::BoxError>>) -> T {
    within(response).await.unwrap().unwrap()
}

/// What the API received: the token, the proof's claims, the body.
async fn received(
    handle: &mut MockHandle,
    key: &DpopKey,
) -> (
    String,
    Value,
    Bytes,
    tower_test::mock::SendResponse<Response<Full<Bytes>>>,
) {
    let (request, reply) = within(handle.next_request()).await.expect("a request");
    assert!(request.headers()["dpop"].is_sensitive());
    assert!(request.headers()["authorization"].is_sensitive());
    let authorization = request.headers()["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    let claims = proof_claims(request.headers(), key);
    let body = request.into_body().collect().await.unwrap().to_bytes();
    (authorization, claims, body, reply)
}

#[tokio::test(start_paused = true)]
async fn each_request_carries_the_token_as_dpop_and_a_proof_of_its_own() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);
    let mut jtis = Vec::new();
    for i in 0..3 {
        tokio_test::assert_ready_ok!(service.poll_ready());
        let response = tokio::spawn(service.call(post(&format!(
            "https://API.example.com:443/items/{i}?page=2#top"
        ))));
        let (authorization, claims, body, reply) = received(&mut handle, &source.key).await;
        assert_eq!(authorization, "DPoP at-1");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], format!("https://api.example.com/items/{i}"));
        assert_eq!(claims["ath"], ath("at-1"));
        assert!(claims["iat"].as_u64().is_some());
        assert!(claims.get("nonce").is_none(), "no nonce was asked for");
        assert_eq!(body, "payload");
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
        reply.send_response(ok());
        let response = answer(response).await;
        assert_eq!(response.status(), 200);
        assert!(response.extensions().get::<RetryStatus>().is_none());
    }
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 3, "a fresh jti for every proof");
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn step_by_step_a_nonce_then_a_rejected_token_each_get_one_resend_and_never_a_third() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://api.example.com/items")));

    let (authorization, claims, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(authorization, "DPoP at-1");
    assert!(claims.get("nonce").is_none());
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));

    // The nonce resend: the same token, a new proof with the nonce, the body again.
    let (authorization, claims, body, reply) = received(&mut handle, &source.key).await;
    assert_eq!(authorization, "DPoP at-1");
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(body, "payload");
    reply.send_response(challenge("invalid_token", None));

    // The token resend: refreshed, a proof for the new token, with the nonce.
    let (authorization, claims, body, reply) = received(&mut handle, &source.key).await;
    assert_eq!(authorization, "DPoP at-2");
    assert_eq!(claims["ath"], ath("at-2"));
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(body, "payload");
    // Another nonce: both resends are spent, so this answer goes back as it is.
    reply.send_response(challenge("use_dpop_nonce", Some("n-2")));

    let response = answer(response).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());
    assert_eq!(source.calls(), 2);
    let stats = layer.stats();
    assert_eq!((stats.nonce_resends, stats.retries), (1, 1));

    // The nonce learned last goes on the next request.
    tokio_test::assert_ready_ok!(service.poll_ready());
    let next = tokio::spawn(service.call(post("https://api.example.com/other")));
    let (_, claims, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(claims["nonce"], "n-2");
    reply.send_response(ok());
    assert_eq!(answer(next).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn step_by_step_a_rejected_token_then_a_nonce_each_get_one_resend() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://api.example.com/items")));

    let (authorization, _, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(authorization, "DPoP at-1");
    reply.send_response(challenge("invalid_token", None));

    let (authorization, claims, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(authorization, "DPoP at-2");
    assert!(claims.get("nonce").is_none());
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));

    let (authorization, claims, body, reply) = received(&mut handle, &source.key).await;
    assert_eq!(authorization, "DPoP at-2");
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(body, "payload");
    // Rejected again: the token resend is spent, so no third refresh.
    reply.send_response(challenge("invalid_token", None));

    let response = answer(response).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_nonce_challenge_without_a_new_nonce_is_returned_and_never_refreshes() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);

    // No nonce at all in the answer: resending could only get the same answer.
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://api.example.com/a")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(challenge("use_dpop_nonce", None));
    let response = answer(response).await;
    assert_eq!(response.status(), 401);
    assert!(response.extensions().get::<RetryStatus>().is_none());

    // The nonce the proof already carried, asked for again: the same.
    tokio_test::assert_ready_ok!(service.poll_ready());
    let first = tokio::spawn(service.call(post("https://api.example.com/b")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));
    let (_, claims, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(claims["nonce"], "n-1");
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));
    assert_eq!(answer(first).await.status(), 401);

    // A proof the API finds wrong is no reason to refresh the token either.
    tokio_test::assert_ready_ok!(service.poll_ready());
    let bad_proof = tokio::spawn(service.call(post("https://api.example.com/c")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(challenge("invalid_dpop_proof", None));
    assert_eq!(answer(bad_proof).await.status(), 401);

    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());
    assert_eq!(source.calls(), 1);
    assert_eq!(layer.stats().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_nonce_in_every_challenge_gets_one_resend_and_never_a_loop() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://api.example.com/items")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));
    let (_, claims, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(claims["nonce"], "n-1");
    reply.send_response(challenge("use_dpop_nonce", Some("n-2")));

    let response = answer(response).await;
    assert_eq!(response.status(), 401);
    assert!(response.extensions().get::<RetryStatus>().is_none());
    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());
    assert_eq!(source.calls(), 1);
    assert_eq!(layer.stats().nonce_resends, 1);
}

/// Each nonce resend is counted for operators, apart from the resends with a new token.
#[tokio::test(start_paused = true)]
async fn a_nonce_resend_is_counted_in_its_own_metric() {
    use crate::metrics::{counter, read};

    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://api.example.com/items")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(ok());
    assert_eq!(answer(response).await.status(), 200);

    let recorded = read(&snapshotter);
    let labels = [("grant", "custom"), ("host", "unknown")];
    let nonce_resends = "oauth_refresh_dpop_nonce_resends_total";
    assert_eq!(counter(&recorded, nonce_resends, &labels), 1);
    assert_eq!(
        counter(&recorded, "oauth_refresh_resends_total", &labels),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_sent_once_and_its_nonce_kept_for_the_next() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mock, mut handle) = tower_test::mock::pair::<
        Request<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>,
        Response<Full<Bytes>>,
    >();
    handle.allow(10);
    let mut service = tower_test::mock::Spawn::new(layer.layer(mock));
    // A boxed body: the layer cannot copy it.
    let streaming = || {
        Request::post("https://api.example.com/upload")
            .body(Full::new(Bytes::from_static(b"stream")).boxed_unsync())
            .unwrap()
    };

    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(streaming()));
    let (request, reply) = within(handle.next_request()).await.unwrap();
    assert!(
        proof_claims(request.headers(), &source.key)
            .get("nonce")
            .is_none()
    );
    reply.send_response(challenge("use_dpop_nonce", Some("n-1")));
    let response = answer(response).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.extensions().get(),
        Some(&RetryStatus::BodyNotReplayable)
    );
    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());

    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(streaming()));
    let (request, reply) = within(handle.next_request()).await.unwrap();
    assert_eq!(proof_claims(request.headers(), &source.key)["nonce"], "n-1");
    reply.send_response(ok());
    assert_eq!(answer(response).await.status(), 200);
    assert_eq!(layer.stats().nonce_resends, 0);
}

#[tokio::test(start_paused = true)]
async fn each_origin_has_its_own_nonce_and_no_retry_means_no_nonce_resend_either() {
    let source = BoundSource::new();
    let layer = RefreshLayer::new(source.clone());
    let (mut service, mut handle) = mocked(&layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://a.example.com/x")));
    let (_, _, _, reply) = received(&mut handle, &source.key).await;
    reply.send_response(
        Response::builder()
            .header("dpop-nonce", "n-a")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    assert_eq!(answer(response).await.status(), 200);

    tokio_test::assert_ready_ok!(service.poll_ready());
    let mut request = post("https://b.example.com/x");
    request.extensions_mut().insert(oauth_refresh::NoRetry);
    let response = tokio::spawn(service.call(request));
    let (_, claims, _, reply) = received(&mut handle, &source.key).await;
    assert!(claims.get("nonce").is_none(), "a's nonce is not b's");
    reply.send_response(challenge("use_dpop_nonce", Some("n-b")));
    let response = answer(response).await;
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Disabled));
    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());

    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(post("https://a.example.com/y")));
    let (_, claims, _, reply) = received(&mut handle, &source.key).await;
    assert_eq!(claims["nonce"], "n-a");
    reply.send_response(ok());
    assert_eq!(answer(response).await.status(), 200);
}

#[tokio::test]
async fn a_bearer_layer_sends_no_proof_and_a_dpop_one_refuses_a_relative_uri() {
    let layer = RefreshLayer::new(BoundSource::new());
    let api = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(ok())
    });
    let err = layer
        .layer(api)
        .oneshot(post("/relative"))
        .await
        .expect_err("a proof names an absolute URL");
    let configuration = err
        .downcast_ref::<oauth_refresh::ConfigurationError>()
        .expect("a ConfigurationError");
    assert_eq!(configuration.error(), "dpop_htu");

    let bearer = RefreshLayer::new(oauth_refresh::source_fn(|_| async {
        Ok(TokenSet::new(AccessToken::new("at-1")))
    }));
    let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        assert!(request.headers().get("dpop").is_none());
        assert_eq!(request.headers()["authorization"], "Bearer at-1");
        Ok::<_, std::convert::Infallible>(ok())
    });
    let response = bearer
        .layer(api)
        .oneshot(post("https://api.example.com/x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[cfg(feature = "reqwest")]
mod over_http {
    //! The reqwest middleware and the grants, against scripted servers on 127.0.0.1.

    use super::*;
    use crate::token_endpoint::{Answer, TokenEndpoint};
    use oauth_refresh::{ClientCredentials, RefreshTokenGrant, TransientKind};
    use serde_json::json;

    fn bound(access_token: &str) -> Answer {
        Answer::json(
            200,
            json!({"access_token": access_token, "token_type": "DPoP", "expires_in": 3600}),
        )
    }

    #[tokio::test]
    async fn the_reqwest_middleware_proves_each_request_and_resends_once_per_kind() {
        let source = BoundSource::new();
        let layer = RefreshLayer::new(source.clone());
        let api = TokenEndpoint::start().await;
        let answers = Arc::new(std::sync::Mutex::new(vec![
            Answer::raw(401, None, "")
                .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                .header("dpop-nonce", "n-1"),
            Answer::raw(401, None, "").header("www-authenticate", r#"DPoP error="invalid_token""#),
            Answer::raw(401, None, "")
                .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                .header("dpop-nonce", "n-2"),
        ]));
        let script = answers.clone();
        api.respond_with(move |_| {
            let mut script = script.lock().unwrap();
            match script.is_empty() {
                true => Answer::raw(200, None, "ok"),
                false => script.remove(0),
            }
        });
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(layer.clone())
            .build();

        let response = client.post(api.url()).body("payload").send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
        let seen = api.requests();
        assert_eq!(
            seen.len(),
            3,
            "the first send, the nonce resend, the token resend"
        );
        let tokens: Vec<_> = seen
            .iter()
            .map(|r| r.headers["authorization"].clone())
            .collect();
        assert_eq!(tokens, ["DPoP at-1", "DPoP at-1", "DPoP at-2"]);
        let nonces: Vec<_> = seen
            .iter()
            .map(|r| proof_claims(&r.headers, &source.key)["nonce"].clone())
            .collect();
        assert_eq!(nonces, [Value::Null, json!("n-1"), json!("n-1")]);
        for request in &seen {
            let claims = proof_claims(&request.headers, &source.key);
            assert_eq!(claims["htm"], "POST");
            assert_eq!(claims["htu"], api.url());
            assert_eq!(request.body, "payload");
        }
        assert_eq!(
            proof_claims(&seen[2].headers, &source.key)["ath"],
            ath("at-2")
        );

        let response = client.get(api.url()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let last = api.requests().pop().unwrap();
        assert_eq!(proof_claims(&last.headers, &source.key)["nonce"], "n-2");
        assert_eq!(proof_claims(&last.headers, &source.key)["htm"], "GET");
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn through_reqwest_a_new_nonce_in_every_challenge_gets_one_resend() {
        let source = BoundSource::new();
        let layer = RefreshLayer::new(source.clone());
        let api = TokenEndpoint::start().await;
        let rotations = Arc::new(AtomicUsize::new(0));
        let counter = rotations.clone();
        api.respond_with(move |_| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            Answer::raw(401, None, "")
                .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                .header("dpop-nonce", &format!("n-{n}"))
        });
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(layer.clone())
            .build();
        let sent = client.post(api.url()).body("payload").send();
        let response = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("a request that is resent forever never ends")
            .unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            api.requests().len(),
            2,
            "the first send and one nonce resend"
        );
        assert_eq!(source.calls(), 1);
        assert_eq!(layer.stats().nonce_resends, 1);
    }

    #[tokio::test]
    async fn token_requests_carry_a_proof_and_a_nonce_answer_is_resent_once() {
        let key = DpopKey::es256(Es256Key::generate().unwrap());
        let endpoint = TokenEndpoint::start().await;
        endpoint.push(
            Answer::json(400, json!({"error": "use_dpop_nonce"})).header("dpop-nonce", "as-1"),
        );
        endpoint.push(bound("at-1").header("dpop-nonce", "as-2"));
        endpoint.push(
            Answer::json(400, json!({"error": "use_dpop_nonce"})).header("dpop-nonce", "as-3"),
        );
        endpoint.push(
            Answer::json(400, json!({"error": "use_dpop_nonce"})).header("dpop-nonce", "as-4"),
        );
        let grant = RefreshTokenGrant::new(endpoint.url(), "app", "rt-1")
            .client_secret("s3cr3t")
            .dpop(key.clone());
        let layer = RefreshLayer::new(grant);

        layer.refresh().await.unwrap();
        let seen = endpoint.requests();
        assert_eq!(seen.len(), 2);
        for (request, nonce) in seen.iter().zip([Value::Null, json!("as-1")]) {
            let claims = proof_claims(&request.headers, &key);
            assert_eq!(claims["htm"], "POST");
            assert_eq!(claims["htu"], endpoint.url());
            assert!(
                claims.get("ath").is_none(),
                "a token request carries no token"
            );
            assert_eq!(claims["nonce"], nonce);
            assert_eq!(request.param("refresh_token").as_deref(), Some("rt-1"));
        }

        // The nonce of the last answer goes on the next request; a second use_dpop_nonce
        // after the resend is an error, not a loop.
        let err = layer.refresh().await.unwrap_err();
        let RefreshError::Transient(transient) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(transient.kind(), TransientKind::TemporarilyUnavailable);
        let seen = endpoint.requests();
        assert_eq!(seen.len(), 4);
        assert_eq!(proof_claims(&seen[2].headers, &key)["nonce"], "as-2");
        assert_eq!(proof_claims(&seen[3].headers, &key)["nonce"], "as-3");
    }

    #[tokio::test]
    async fn a_bearer_answer_to_a_dpop_grant_is_refused_and_its_refresh_token_kept() {
        let key = DpopKey::es256(Es256Key::generate().unwrap());
        let endpoint = TokenEndpoint::start().await;
        endpoint.push(Answer::json(
            200,
            json!({"access_token": "bearer-at", "token_type": "Bearer",
                   "refresh_token": "rt-2", "expires_in": 3600}),
        ));
        endpoint.push(bound("at-2"));
        let grant = RefreshTokenGrant::new(endpoint.url(), "app", "rt-1")
            .client_secret("s3cr3t")
            .dpop(key.clone());
        let layer = RefreshLayer::new(grant);

        let err = layer.refresh().await.unwrap_err();
        let RefreshError::Transient(transient) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(transient.kind(), TransientKind::InvalidResponse);
        let reason = std::error::Error::source(transient).unwrap().to_string();
        assert!(reason.contains("\"Bearer\""), "{reason}");
        assert!(reason.contains("DPoP-bound"), "{reason}");
        assert!(!format!("{err:?} {err}").contains("bearer-at"));

        // The rotated refresh token was kept, and is the one presented next.
        layer.refresh().await.unwrap();
        let seen = endpoint.requests();
        assert_eq!(seen[1].param("refresh_token").as_deref(), Some("rt-2"));

        // A client-credentials grant with the key checks the same, an answer without a
        // token_type included (every resend of it gets the same answer).
        let untyped = TokenEndpoint::start().await;
        untyped.respond_with(|_| {
            Answer::json(
                200,
                json!({"access_token": "no-type-at", "expires_in": 3600}),
            )
        });
        let grant = ClientCredentials::new(untyped.url(), "svc", "s3cr3t").dpop(key);
        let err = RefreshLayer::new(grant).refresh().await.unwrap_err();
        let RefreshError::Transient(transient) = &err else {
            panic!("{err:?}");
        };
        let reason = std::error::Error::source(transient).unwrap().to_string();
        assert!(reason.contains("DPoP-bound"), "{reason}");
        assert!(err.to_string().contains("could not be read"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_keyed_layer_proves_every_request_of_each_key_with_its_keys_token() {
    use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct User(&'static str);

    let key = DpopKey::es256(Es256Key::generate().unwrap());
    let shared = key.clone();
    let layer = KeyedRefreshLayer::new(factory_fn(move |user: User| {
        let key = shared.clone();
        async move {
            let source = BoundSource {
                key,
                calls: Arc::default(),
            };
            // Each user's tokens say whose they are.
            let source = UserSource(user.0, source);
            Ok(Some(Box::new(source) as Box<dyn TokenSource>))
        }
    }));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let api = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let record = record.clone();
        async move {
            let authorization = request.headers()["authorization"]
                .to_str()
                .unwrap()
                .to_owned();
            record
                .lock()
                .unwrap()
                .push((authorization, request.headers().clone()));
            Ok::<_, std::convert::Infallible>(ok())
        }
    });
    let service = layer.layer(api);
    for round in 0..3 {
        for user in ["alice", "bob"] {
            let mut request = post("https://api.example.com/items");
            request.extensions_mut().insert(User(user));
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200, "round {round}");
        }
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6);
    for (i, (authorization, headers)) in seen.iter().enumerate() {
        let user = ["alice", "bob"][i % 2];
        assert_eq!(*authorization, format!("DPoP {user}-at-1"));
        let claims = proof_claims(headers, &key);
        assert_eq!(claims["ath"], ath(&format!("{user}-at-1")), "request {i}");
    }
    let mut jtis: Vec<_> = seen
        .iter()
        .map(|(_, headers)| proof_claims(headers, &key)["jti"].clone().to_string())
        .collect();
    jtis.sort();
    jtis.dedup();
    assert_eq!(
        jtis.len(),
        6,
        "every request, FRESH ones included, has its own proof"
    );
}

/// A [`BoundSource`] whose tokens name their user.
struct UserSource(&'static str, BoundSource);

impl TokenSource for UserSource {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        let user = self.0;
        let inner = self.1.fetch(request);
        Box::pin(async move {
            let mut set = inner.await?;
            set.access_token = AccessToken::new(format!("{user}-{}", set.access_token.secret()));
            Ok(set)
        })
    }

    fn dpop_key(&self) -> Option<&DpopKey> {
        self.1.dpop_key()
    }
}
