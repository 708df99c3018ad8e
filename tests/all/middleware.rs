//! The layer as a reqwest-middleware `Middleware`, over real HTTP on 127.0.0.1: one value
//! shared with a tower stack, the resend through `Request::try_clone`, streaming bodies, the
//! opt-out extensions, and errors reached by downcast from `reqwest_middleware::Error`.
//!
//! Real clock: a paused clock would jump ahead while a socket waits.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use oauth_refresh::classify::{ClassifyRejection, Verdict};
use oauth_refresh::{
    BoxError, ClientCredentials, InsecureTransport, NoRetry, ReauthRequired, RefreshLayer,
    RefreshTokenGrant, RetryStatus, SkipAuth, TransientError, TransientKind,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

use crate::api_server::ApiServer;
use crate::support::{Api, TestSource};
use crate::token_endpoint::{Answer, TokenEndpoint};

fn token(access_token: &str) -> Answer {
    Answer::json(
        200,
        json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600}),
    )
}

fn client(layer: &RefreshLayer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build()
}

/// A layer over an in-memory source issuing `at-1`, `at-2`, ... (an hour each), and an API
/// on 127.0.0.1 that accepts the tokens `accepts` approves.
async fn setup(
    accepts: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> (TestSource, RefreshLayer, Api, ApiServer) {
    let source = TestSource::new(Duration::from_secs(3600));
    let layer = RefreshLayer::new(source.clone());
    let api = Api::accepting(accepts);
    let server = ApiServer::start(api.clone()).await;
    (source, layer, api, server)
}

fn client_credentials(endpoint: &TokenEndpoint) -> RefreshLayer {
    RefreshLayer::new(ClientCredentials::new(
        endpoint.url(),
        "reporting",
        "s3cr3t",
    ))
}

/// A tower stack's HTTP client for these tests: a plain reqwest client, no middleware.
fn plain_http() -> impl tower::Service<
    Request<Bytes>,
    Response = http::Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let client = reqwest::Client::new();
    tower::service_fn(move |request: Request<Bytes>| {
        let client = client.clone();
        async move {
            let response = client.execute(reqwest::Request::try_from(request)?).await?;
            Ok::<_, BoxError>(http::Response::from(response))
        }
    })
}

#[tokio::test]
async fn one_layer_value_shares_one_token_and_one_refresh_between_tower_and_reqwest() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.push(token("at-1"));
    endpoint.push(token("at-2"));
    let api = Api::accepting(|token| token == "at-1");
    let server = ApiServer::start(api.clone()).await;
    let layer = client_credentials(&endpoint);
    let reqwest_client = client(&layer);
    let tower_stack = ServiceBuilder::new()
        .layer(layer.clone())
        .service(plain_http());
    let tower_get = || {
        let request = Request::get(server.url("/items"))
            .body(Bytes::new())
            .unwrap();
        tower_stack.clone().oneshot(request)
    };

    let response = reqwest_client.get(server.url("/items")).send().await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(tower_get().await.unwrap().status(), 200);
    assert_eq!(
        endpoint.count(),
        1,
        "the tower stack used the reqwest client's token"
    );

    // The API stops honouring at-1: the reqwest client's resend refreshes once, and the tower
    // stack then sends at-2 without a refresh of its own.
    api.set_policy(|token| token == "at-2");
    let response = reqwest_client
        .get(server.url("/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.extensions().get::<RetryStatus>(),
        Some(&RetryStatus::Retried)
    );
    assert_eq!(tower_get().await.unwrap().status(), 200);
    assert_eq!(endpoint.count(), 2);
    assert_eq!(layer.stats().refreshes, 2);
    assert_eq!(
        api.seen().last().unwrap().as_deref(),
        Some("Bearer at-2"),
        "the tower stack sent the token the reqwest client's refresh obtained"
    );

    // An expired token, callers on both stacks at once: one refresh for all of them.
    endpoint.push(token("at-3"));
    api.set_policy(|token| token == "at-3");
    layer.invalidate();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let reqwest_call = reqwest_client.get(server.url("/items")).send();
        callers.spawn(async move {
            reqwest_call
                .await
                .map(|r| r.status())
                .map_err(BoxError::from)
        });
        let tower_call = tower_get();
        callers.spawn(async move { tower_call.await.map(|r| r.status()) });
    }
    while let Some(status) = callers.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    assert_eq!(
        endpoint.count(),
        3,
        "one refresh for 40 callers on two stacks"
    );
    assert_eq!(
        layer.stats().retries,
        1,
        "no caller was rejected after the refresh"
    );
}

#[tokio::test]
async fn a_rejected_request_is_resent_once_with_its_body_through_try_clone() {
    let (source, layer, api, server) = setup(|token| token == "at-2").await;

    let response = client(&layer)
        .post(server.url("/items"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"name":"widget"}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.extensions().get::<RetryStatus>(),
        Some(&RetryStatus::Retried)
    );
    assert_eq!(response.url().as_str(), server.url("/items"));
    assert_eq!(response.text().await.unwrap(), "hello at-2");
    assert_eq!(
        api.seen(),
        [Some("Bearer at-1".into()), Some("Bearer at-2".into())]
    );
    let body = Bytes::from_static(br#"{"name":"widget"}"#);
    assert_eq!(
        server.bodies(),
        [body.clone(), body],
        "the resend carried the body"
    );
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn a_second_rejection_is_returned_as_it_is() {
    let (source, layer, api, server) = setup(|_| false).await;

    let response = client(&layer)
        .get(server.url("/items"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<RetryStatus>(),
        Some(&RetryStatus::Retried)
    );
    assert_eq!(api.calls(), 2, "one resend, never a loop");
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn a_streaming_body_is_sent_once_and_its_401_returned_untouched() {
    let (source, layer, api, server) = setup(|_| false).await;
    // `Body::wrap` makes a streaming body, which `Request::try_clone` cannot copy.
    let stream = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from_static(b"chunk")));

    let response = client(&layer)
        .post(server.url("/upload"))
        .body(stream)
        .send()
        .await
        .expect("a body that cannot be replayed is sent, never failed up front");

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<RetryStatus>(),
        Some(&RetryStatus::BodyNotReplayable)
    );
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="invalid_token""#
    );
    assert_eq!(response.text().await.unwrap(), "token rejected");
    assert_eq!(api.calls(), 1);
    assert_eq!(server.bodies(), [Bytes::from_static(b"chunk")]);
    assert_eq!(
        source.calls(),
        1,
        "no refresh was spent on a resend that cannot happen"
    );

    // The rejection was not resent, but it started the refresh it asked for, in the
    // background: once it lands, requests carry the new token.
    api.set_policy(|token| token == "at-2");
    tokio::time::timeout(Duration::from_secs(5), async {
        while layer.stats().generation < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the rejection starts a refresh");
    let response = client(&layer)
        .get(server.url("/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.extensions().get::<RetryStatus>(), None);
    assert_eq!(source.calls(), 2);
}

#[tokio::test]
async fn reauth_required_is_reached_by_downcast_from_reqwest_middleware_error() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "Token is revoked"}),
    ));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(
        endpoint.url(),
        "my-app",
        "rt-revoked",
    ));
    let api = Api::open();
    let server = ApiServer::start(api.clone()).await;

    let err = client(&layer)
        .get(server.url("/items"))
        .send()
        .await
        .expect_err("the refresh was refused");

    // The snippet the crate docs show:
    let reauth = match &err {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<ReauthRequired>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    };
    let reauth = reauth.expect("ReauthRequired inside reqwest_middleware::Error::Middleware");
    assert_eq!(reauth.error(), "invalid_grant");
    assert_eq!(reauth.description(), Some("Token is revoked"));
    assert!(err.to_string().contains("must sign in again"), "{err}");
    assert!(!err.to_string().contains("rt-revoked"));
    assert_eq!(api.calls(), 0, "nothing is sent without a token");
}

#[tokio::test]
async fn a_transient_failure_is_reached_by_downcast_from_reqwest_middleware_error() {
    let endpoint = TokenEndpoint::start().await;
    endpoint.push(Answer::json(503, json!({})).header("retry-after", "7"));
    let layer = RefreshLayer::builder(ClientCredentials::new(
        endpoint.url(),
        "reporting",
        "s3cr3t",
    ))
    .refresh_timeout(Duration::from_millis(500))
    .build();
    let server = ApiServer::start(Api::open()).await;

    let err = client(&layer)
        .get(server.url("/items"))
        .send()
        .await
        .expect_err("the token endpoint is down");

    let reqwest_middleware::Error::Middleware(e) = &err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let transient = e.downcast_ref::<TransientError>().expect("TransientError");
    assert_eq!(transient.kind(), TransientKind::ServerError(503));
    assert_eq!(transient.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn skip_auth_no_retry_and_a_callers_own_authorization_are_honoured() {
    let (source, layer, api, server) = setup(|token| token == "at-2").await;
    let client = client(&layer);

    let response = client
        .get(server.url("/public"))
        .with_extension(SkipAuth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.extensions().get::<RetryStatus>(), None);

    let response = client
        .get(server.url("/items"))
        .header(header::AUTHORIZATION, "Bearer callers-own")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(source.calls(), 0, "neither request needed a token");

    let response = client
        .get(server.url("/items"))
        .with_extension(NoRetry)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<RetryStatus>(),
        Some(&RetryStatus::Disabled)
    );
    assert_eq!(
        api.seen(),
        [
            None,
            Some("Bearer callers-own".into()),
            Some("Bearer at-1".into())
        ]
    );
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_before_anything_is_sent() {
    let source = TestSource::new(Duration::from_secs(3600));
    let layer = RefreshLayer::new(source.clone());

    let err = client(&layer)
        .get("http://api.example.com/items")
        .send()
        .await
        .expect_err("refused");

    let reqwest_middleware::Error::Middleware(e) = &err else {
        panic!("expected a middleware error, got {err:?}");
    };
    assert_eq!(
        e.downcast_ref::<InsecureTransport>().map(|e| e.host()),
        Some("api.example.com")
    );
    assert_eq!(source.calls(), 0);
}

/// An API that says "expired" only in its body: `400 {"error":"token_expired"}`.
struct TokenExpiredInBody;

impl ClassifyRejection for TokenExpiredInBody {
    fn classify(&self, status: StatusCode, _: &HeaderMap) -> Verdict {
        match status {
            StatusCode::BAD_REQUEST => Verdict::ReadBody { limit: 64 },
            _ => Verdict::Accepted,
        }
    }

    fn classify_body(&self, _: StatusCode, _: &HeaderMap, body_prefix: &[u8]) -> bool {
        body_prefix
            .windows(b"token_expired".len())
            .any(|w| w == b"token_expired")
    }
}

#[tokio::test]
async fn a_classifier_reads_the_body_and_the_response_comes_back_whole() {
    let endpoint = TokenEndpoint::start().await;
    let base = endpoint.base_url();
    endpoint.route("/token", token("at-1"));
    endpoint.route(
        "/expired",
        Answer::json(
            400,
            json!({"error": "token_expired", "message": "x".repeat(200)}),
        ),
    );
    endpoint.route(
        "/invalid",
        Answer::json(400, json!({"error": "invalid_request"})),
    );
    let layer = client_credentials(&endpoint).classifier(TokenExpiredInBody);
    let client = client(&layer);

    // Not a rejection: returned whole, with its URL, after the classifier read 64 bytes.
    let response = client.get(format!("{base}/invalid")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.url().as_str(), format!("{base}/invalid"));
    assert_eq!(response.extensions().get::<RetryStatus>(), None);
    let body: serde_json::Value = response.json_body().await;
    assert_eq!(body["error"], "invalid_request");

    // A rejection in the body: resent once, and the answer to the resend is returned.
    let response = client.get(format!("{base}/expired")).send().await.unwrap();
    assert_eq!(
        response.extensions().get::<RetryStatus>(),
        Some(&RetryStatus::Retried)
    );
    let body: serde_json::Value = response.json_body().await;
    assert_eq!(body["message"].as_str().map(str::len), Some(200));
    assert_eq!(layer.stats().refreshes, 2);
}

/// `Response::json` needs reqwest's `json` feature; the tests read bodies by hand.
trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}
