//! The tower `Service` contract inside real stacks: readiness, permits, Buffer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oauth_refresh::{RefreshLayer, SkipAuth, TransientError, TransientKind};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

use crate::support::{Api, Step, TestSource, get, send};

#[tokio::test(start_paused = true)]
async fn buffer_over_concurrency_limit_answers_1000_calls_across_an_expiry() {
    let source = TestSource::new(Duration::from_secs(2));
    let api = Api::open();
    let layer = RefreshLayer::new(source.clone());
    let service = ServiceBuilder::new()
        .buffer(64)
        .layer(layer.clone())
        .concurrency_limit(8)
        .service(api.clone());

    let mut calls = Vec::new();
    for i in 0..1000 {
        let service = service.clone();
        calls.push(tokio::spawn(async move {
            // spread the calls over 5 s: two expiries and several refreshes
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            service.oneshot(get()).await
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ok = 0;
        for call in calls {
            let response = call.await.expect("no panic").expect("answered");
            assert_eq!(response.status(), 200);
            ok += 1;
        }
        ok
    })
    .await
    .expect("no hang");

    assert_eq!(all, 1000);
    assert_eq!(api.calls(), 1000);
    assert!(
        source.calls() >= 3,
        "refreshed across expiries: {}",
        source.calls()
    );
    assert!(
        source.calls() <= 6,
        "about one refresh per half-life: {}",
        source.calls()
    );
}

/// A service that insists on the readiness contract: `call` only after `poll_ready` on the
/// same instance, and a clone starts unready.
struct Strict {
    ready: bool,
    inner: Api,
    polls: Arc<AtomicUsize>,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Strict {
            ready: false,
            inner: self.inner.clone(),
            polls: self.polls.clone(),
        }
    }
}

impl Service<Request<Full<Bytes>>> for Strict {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        assert!(self.ready, "call without poll_ready on this instance");
        self.ready = false;
        Service::<Request<Full<Bytes>>>::call(&mut self.inner, request)
    }
}

#[tokio::test(start_paused = true)]
async fn call_uses_the_readied_service_and_the_resend_readies_its_own_clone() {
    let polls = Arc::new(AtomicUsize::new(0));
    let api = Api::accepting(|token| token != "at-1");
    let strict = Strict {
        ready: false,
        inner: api.clone(),
        polls: polls.clone(),
    };
    let layer = RefreshLayer::new(TestSource::new(Duration::from_secs(3600)));
    layer.refresh().await.unwrap();
    let mut service = layer.layer(strict);

    for _ in 0..3 {
        let response = send(&mut service, get()).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // expired path too: waits for the refresh, then readies a clone
    layer.invalidate();
    let response = send(&mut service, get()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.calls(), 5, "one resend after at-1 was rejected");
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reports_only_the_inner_readiness() {
    let source = TestSource::new(Duration::from_secs(3600));
    for _ in 0..3 {
        source.then(Step::Fail(
            TransientError::new(TransientKind::Network).into(),
        ));
    }
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let mut service = tower_test::mock::Spawn::new(RefreshLayer::new(source.clone()).layer(mock));

    handle.allow(0);
    tokio_test::assert_pending!(service.poll_ready());
    handle.allow(1);
    tokio_test::assert_ready_ok!(service.poll_ready());

    // The refresh fails: the request gets the error, the service stays usable.
    let err = service.call(get()).await.unwrap_err();
    assert!(err.is::<TransientError>());
    handle.allow(1);
    tokio_test::assert_ready_ok!(service.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_refresh_holds_no_permit() {
    let source = TestSource::build(Some(Duration::from_secs(3600)), false, true, None);
    let api = Api::open();
    let service = ServiceBuilder::new()
        .layer(RefreshLayer::new(source.clone()))
        .concurrency_limit(1)
        .service(api.clone());

    // This request waits for a refresh held at the gate...
    let waiting = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    // ...and the only permit is free for a request that needs no token.
    let mut anonymous = get();
    anonymous.extensions_mut().insert(SkipAuth);
    let response = tokio::time::timeout(Duration::from_secs(1), service.clone().oneshot(anonymous))
        .await
        .expect("the permit was not held across the refresh")
        .unwrap();
    assert_eq!(response.status(), 401);

    source.open(1);
    assert_eq!(waiting.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn reauth_is_reachable_through_buffer() {
    let source = TestSource::new(Duration::from_secs(3600));
    source.then(Step::Fail(
        oauth_refresh::ReauthRequired::new("invalid_grant").into(),
    ));
    let service = ServiceBuilder::new()
        .buffer(8)
        .layer(RefreshLayer::new(source))
        .service(Api::open());

    let err: BoxError = service.oneshot(get()).await.unwrap_err();
    let reauth = err
        .downcast_ref::<oauth_refresh::ReauthRequired>()
        .expect("ReauthRequired through Buffer");
    assert_eq!(reauth.error(), "invalid_grant");
}

#[tokio::test(start_paused = true)]
async fn step_by_step_a_request_is_resent_once_and_never_again() {
    let source = TestSource::new(Duration::from_secs(3600));
    let layer = RefreshLayer::new(source.clone());
    layer.refresh().await.unwrap();
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let mut service = tower_test::mock::Spawn::new(layer.layer(mock));
    let unauthorized = || {
        Response::builder()
            .status(401)
            .header("www-authenticate", r#"Bearer error="invalid_token""#)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    handle.allow(10);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(get()));

    let (request, reply) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()["authorization"], "Bearer at-1");
    reply.send_response(unauthorized());

    // refreshed, then resent once with the new token
    let (request, reply) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()["authorization"], "Bearer at-2");
    reply.send_response(unauthorized());

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.extensions().get(),
        Some(&oauth_refresh::RetryStatus::Retried)
    );
    tokio_test::assert_pending!(tokio_test::task::spawn(handle.next_request()).poll());
    assert_eq!(source.calls(), 2);
}
