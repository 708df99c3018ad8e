//! FRESH / STALE / EXPIRED, the header, pass-through and opt-outs.

use std::time::Duration;

use http::header;
use oauth_refresh::{RefreshLayer, SkipAuth};
use tower::{Layer, Service, ServiceExt};

use crate::support::{Api, Req, TestSource, get, send, text};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn first_request_waits_for_the_first_token() {
    let source = TestSource::new(HOUR);
    let api = Api::open();
    let service = RefreshLayer::new(source.clone()).layer(api.clone());

    let response = service.oneshot(get()).await.unwrap();

    assert_eq!(text(response).await, "hello at-1");
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn fresh_token_is_reused_without_refresh() {
    let source = TestSource::new(HOUR);
    let api = Api::open();
    let mut service = RefreshLayer::new(source.clone()).layer(api.clone());

    for _ in 0..20 {
        let response = send(&mut service, get()).await.unwrap();
        assert_eq!(text(response).await, "hello at-1");
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn authorization_header_is_marked_sensitive() {
    let layer = RefreshLayer::new(TestSource::new(HOUR));
    let service = layer.layer(tower::service_fn(|request: http::Request<()>| async move {
        let value = &request.headers()[header::AUTHORIZATION];
        assert!(value.is_sensitive());
        assert_eq!(value, "Bearer at-1");
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    service.oneshot(http::Request::new(())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stale_token_is_sent_at_once_while_refreshing_in_background() {
    let source = TestSource::build(Some(Duration::from_secs(100)), false, true, None);
    source.open(1);
    let api = Api::open();
    let layer = RefreshLayer::builder(source.clone())
        .refresh_ahead(Duration::from_secs(30))
        .build();
    let mut service = layer.layer(api.clone());
    send(&mut service, get()).await.unwrap();

    // Inside the window (at most 30 s before expiry, jittered down by up to a fifth).
    tokio::time::advance(Duration::from_secs(80)).await;
    // The refresh is held at the gate: requests must still go out at once with at-1.
    for _ in 0..5 {
        let call = ServiceExt::<Req>::ready(&mut service)
            .await
            .unwrap()
            .call(get());
        let response = tokio_test::assert_ready!(tokio_test::task::spawn(call).poll()).unwrap();
        assert_eq!(text(response).await, "hello at-1");
    }
    tokio::task::yield_now().await;
    assert_eq!(
        source.calls(),
        1,
        "the background refresh waits at the gate"
    );

    source.open(1);
    wait_for(|| layer.stats().generation == 2).await;
    let response = send(&mut service, get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-2");
    assert_eq!(
        source.calls(),
        2,
        "one background refresh for all stale requests"
    );
}

#[tokio::test(start_paused = true)]
async fn expired_token_makes_requests_wait_for_the_refresh() {
    let source = TestSource::new(Duration::from_secs(100));
    let api = Api::open();
    let layer = RefreshLayer::new(source.clone());
    let mut service = layer.layer(api.clone());
    send(&mut service, get()).await.unwrap();

    tokio::time::advance(Duration::from_secs(101)).await;
    let response = send(&mut service, get()).await.unwrap();

    assert_eq!(text(response).await, "hello at-2");
    assert_eq!(api.seen().last().unwrap().as_deref(), Some("Bearer at-2"));
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn short_lived_token_is_refreshed_at_about_half_its_life() {
    let source = TestSource::new(Duration::from_secs(3));
    let layer = RefreshLayer::new(source.clone());
    let mut service = layer.layer(Api::open());
    send(&mut service, get()).await.unwrap();

    tokio::time::advance(Duration::from_millis(1400)).await;
    send(&mut service, get()).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(source.calls(), 1, "not refreshed before half its life");

    tokio::time::advance(Duration::from_millis(200)).await;
    send(&mut service, get()).await.unwrap();
    wait_for(|| source.calls() == 2).await;

    // and not on every request afterwards
    for _ in 0..10 {
        send(&mut service, get()).await.unwrap();
    }
    tokio::task::yield_now().await;
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn token_that_arrives_expired_does_not_cause_a_refresh_per_request() {
    let source = TestSource::new(Duration::ZERO);
    let mut service = RefreshLayer::new(source.clone()).layer(Api::open());

    for _ in 0..50 {
        let response = send(&mut service, get()).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        source.calls(),
        1,
        "rate-limited: the fresh token is accepted"
    );

    tokio::time::advance(Duration::from_secs(2)).await;
    send(&mut service, get()).await.unwrap();
    assert_eq!(
        source.calls(),
        2,
        "past the minimum interval, refreshed again"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_lifetime_is_served_until_rejected() {
    let source = TestSource::build(None, false, false, None);
    let api = Api::open();
    let mut service = RefreshLayer::new(source.clone()).layer(api.clone());
    send(&mut service, get()).await.unwrap();

    tokio::time::advance(Duration::from_secs(10 * 3600)).await;
    let response = send(&mut service, get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-1");

    // the 401 path is the backstop
    api.set_policy(|token| token != "at-1");
    let response = send(&mut service, get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-2");
}

#[tokio::test(start_paused = true)]
async fn request_with_its_own_authorization_passes_through_untouched() {
    let source = TestSource::new(HOUR);
    let api = Api::accepting(|_| true);
    let service = RefreshLayer::new(source.clone()).layer(api.clone());

    let mut request = get();
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer mine".parse().unwrap());
    let response = service.oneshot(request).await.unwrap();

    assert_eq!(text(response).await, "hello mine");
    assert_eq!(source.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn skip_auth_sends_without_a_token() {
    let source = TestSource::new(HOUR);
    let api = Api::open();
    let service = RefreshLayer::new(source.clone()).layer(api.clone());

    let mut request = get();
    request.extensions_mut().insert(SkipAuth);
    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 401);
    assert!(
        response
            .extensions()
            .get::<oauth_refresh::RetryStatus>()
            .is_none()
    );
    assert_eq!(api.seen(), vec![None]);
    assert_eq!(source.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn plain_http_is_refused_except_to_loopback_unless_allowed() {
    let api = Api::open();
    let layer = RefreshLayer::new(TestSource::new(HOUR));

    let request = || {
        http::Request::get("http://api.example.com/items")
            .body(())
            .unwrap()
    };
    let err = layer
        .layer(api.clone())
        .oneshot(request())
        .await
        .unwrap_err();
    let err = err
        .downcast_ref::<oauth_refresh::InsecureTransport>()
        .unwrap();
    assert_eq!(err.host(), "api.example.com");
    assert_eq!(api.calls(), 0);

    let loopback = http::Request::get("http://127.0.0.1:8080/")
        .body(())
        .unwrap();
    layer.layer(api.clone()).oneshot(loopback).await.unwrap();

    let allowed = layer.clone().allow_insecure_http(true);
    allowed.layer(api.clone()).oneshot(request()).await.unwrap();
    assert_eq!(api.calls(), 2);
}

/// Lets spawned tasks run until `done` holds (bounded: fails instead of hanging).
pub async fn wait_for(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

#[tokio::test(start_paused = true)]
async fn own_credentials_over_plain_http_are_not_our_business() {
    let source = TestSource::new(HOUR);
    let api = Api::open();
    let request = http::Request::get("http://api.example.com/items")
        .header(header::AUTHORIZATION, "Bearer mine")
        .body(())
        .unwrap();
    let response = RefreshLayer::new(source.clone())
        .layer(api.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(text(response).await, "hello mine");
    assert_eq!(source.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_service_called_again_and_again_sends_each_new_token() {
    // From its second call on, a service keeps the snapshot it last read and only checks
    // that it is still current: every change of token must still reach it, and its clones.
    let source = TestSource::new(HOUR);
    let api = Api::open();
    let layer = RefreshLayer::new(source.clone());
    let mut service = layer.layer(api.clone());

    for round in 1..=4 {
        for _ in 0..3 {
            let response = send(&mut service, get()).await.unwrap();
            assert_eq!(text(response).await, format!("hello at-{round}"));
        }
        let mut clone = service.clone();
        let response = send(&mut clone, get()).await.unwrap();
        assert_eq!(text(response).await, format!("hello at-{round}"));
        match round {
            1 => layer.invalidate(),
            2 => layer.refresh().await.unwrap(),
            _ => tokio::time::advance(HOUR).await,
        }
    }
    assert_eq!(source.calls(), 4);
}
