//! The single-flight refresh: one source call for every trigger, detached from callers.

use std::time::Duration;

use oauth_refresh::{RefreshLayer, TransientError, TransientKind};
use tower::{Layer, Service, ServiceExt};

use crate::request_path::wait_for;
use crate::support::{Api, Req, Step, TestSource, get, send, text};

#[tokio::test(start_paused = true)]
async fn thousand_callers_on_an_empty_cell_cause_one_fetch() {
    let source = TestSource::new(Duration::from_secs(3600));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());

    let calls = (0..1000).map(|_| tokio::spawn(service.clone().oneshot(get())));
    for call in futures_join(calls).await {
        assert_eq!(text(call.unwrap()).await, "hello at-1");
    }
    assert_eq!(source.calls(), 1);
    assert_eq!(layer.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn thousand_callers_on_an_expired_cell_cause_one_fetch() {
    let source = TestSource::new(Duration::from_secs(60));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());
    service.clone().oneshot(get()).await.unwrap();

    tokio::time::advance(Duration::from_secs(61)).await;
    let calls = (0..1000).map(|_| tokio::spawn(service.clone().oneshot(get())));
    for call in futures_join(calls).await {
        assert_eq!(text(call.unwrap()).await, "hello at-2");
    }
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_caller_does_not_cancel_refresh() {
    let source = TestSource::build(Some(Duration::from_secs(3600)), true, true, Some("rt-0"));
    let layer = RefreshLayer::new(source.clone());
    let mut service = layer.layer(Api::open());

    // The first caller starts the refresh, then gives up while the source is still working.
    let call = ServiceExt::<Req>::ready(&mut service)
        .await
        .unwrap()
        .call(get());
    let mut call = tokio_test::task::spawn(call);
    tokio_test::assert_pending!(call.poll());
    tokio::task::yield_now().await;
    drop(call);

    source.open(1);
    wait_for(|| layer.stats().generation == 1).await;

    let response = send(&mut service, get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-1");
    assert_eq!(
        source.calls(),
        1,
        "the next call used the detached refresh's token"
    );
    assert_eq!(source.requests()[0].1.as_deref(), Some("rt-0"));
}

#[tokio::test(start_paused = true)]
async fn every_waiter_gets_the_same_error() {
    let source = TestSource::new(Duration::from_secs(3600));
    source.then(Step::Fail(
        TransientError::new(TransientKind::ServerError(503))
            .with_resend_safe(false)
            .into(),
    ));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());

    let calls = (0..200).map(|_| tokio::spawn(service.clone().oneshot(get())));
    for call in futures_join(calls).await {
        let err = call.unwrap_err();
        let err = err
            .downcast_ref::<TransientError>()
            .expect("a TransientError");
        assert_eq!(err.kind(), TransientKind::ServerError(503));
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_has_its_own_timeout() {
    let source = TestSource::new(Duration::from_secs(3600));
    source.then(Step::Hang);
    let layer = RefreshLayer::builder(source.clone())
        .refresh_timeout(Duration::from_secs(5))
        .build();
    let service = layer.layer(Api::open());

    let started = tokio::time::Instant::now();
    let err = service.clone().oneshot(get()).await.unwrap_err();
    let err = err.downcast_ref::<TransientError>().unwrap();
    assert_eq!(err.kind(), TransientKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    // The slot is free again: after the cooldown, the next request refreshes.
    tokio::time::advance(Duration::from_secs(5)).await;
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn manual_refresh_and_invalidate_share_the_slot() {
    let source = TestSource::new(Duration::from_secs(3600));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());

    let (a, b) = tokio::join!(layer.refresh(), service.clone().oneshot(get()));
    a.unwrap();
    assert_eq!(text(b.unwrap()).await, "hello at-1");
    assert_eq!(source.calls(), 1, "the request joined the manual refresh");

    layer.invalidate();
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-2");
    assert_eq!(layer.stats().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn rotated_refresh_token_is_presented_next_and_kept_when_absent() {
    let source = TestSource::build(Some(Duration::from_secs(60)), true, false, Some("rt-0"));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());
    service.clone().oneshot(get()).await.unwrap();

    // The server stops rotating: its next answer carries no refresh token.
    let no_rotation = oauth_refresh::TokenSet::new(oauth_refresh::AccessToken::new("at-x"));
    source.then(Step::Tokens(no_rotation));
    layer.refresh().await.unwrap();
    layer.refresh().await.unwrap();

    let presented: Vec<_> = source.requests().into_iter().map(|r| r.1).collect();
    assert_eq!(
        presented,
        vec![
            Some("rt-0".into()),
            Some("rt-1".into()),
            Some("rt-1".into())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_token_survives_an_access_token_unfit_for_a_header() {
    let source = TestSource::build(Some(Duration::from_secs(60)), true, false, Some("rt-0"));
    let layer = RefreshLayer::new(source.clone());
    let mut bad = oauth_refresh::TokenSet::new(oauth_refresh::AccessToken::new("bad\ntoken"));
    bad.refresh_token = Some(oauth_refresh::RefreshToken::new("rt-new"));
    source.then(Step::Tokens(bad));

    let err = layer.refresh().await.unwrap_err();
    assert!(
        matches!(err, oauth_refresh::RefreshError::Transient(_)),
        "{err:?}"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    layer.refresh().await.unwrap();

    assert_eq!(source.requests()[1].1.as_deref(), Some("rt-new"));
}

/// Spawns first, then awaits every task in order; a panicked task fails the test.
pub async fn futures_join<T>(
    handles: impl IntoIterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T>
where
    T: Send + 'static,
{
    let handles: Vec<_> = handles.into_iter().collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task panicked"));
    }
    out
}
