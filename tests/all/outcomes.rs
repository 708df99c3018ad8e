//! What a refresh can end in, and what callers see of it.

use std::time::Duration;

use oauth_refresh::{
    ConfigurationError, ReauthRequired, RefreshErrorKind, RefreshLayer, TransientError,
    TransientKind,
};
use tower::{Layer, ServiceExt};

use crate::request_path::wait_for;
use crate::support::{Api, Step, TestSource, get, text};

fn invalid_grant() -> oauth_refresh::RefreshError {
    ReauthRequired::new("invalid_grant")
        .with_description("Token is not active")
        .with_host("auth.test")
        .into()
}

#[tokio::test(start_paused = true)]
async fn reauth_reaches_callers_only_once_no_valid_token_remains() {
    let source = TestSource::new(Duration::from_secs(100));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());
    service.clone().oneshot(get()).await.unwrap();

    // In the window, the background refresh is refused...
    source.then(Step::Fail(invalid_grant()));
    tokio::time::advance(Duration::from_secs(80)).await;
    service.clone().oneshot(get()).await.unwrap();
    wait_for(|| layer.stats().reauths == 1).await;

    // ...but the token is still valid, so requests keep succeeding with it.
    for _ in 0..5 {
        let response = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(text(response).await, "hello at-1");
        tokio::time::advance(Duration::from_secs(3)).await;
    }

    // Once it has expired, callers learn that a person must sign in again, without the
    // refused grant being sent again.
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = service.oneshot(get()).await.unwrap_err();
    let reauth = err
        .downcast_ref::<ReauthRequired>()
        .expect("ReauthRequired");
    assert_eq!(reauth.error(), "invalid_grant");
    assert_eq!(reauth.host(), Some("auth.test"));
    assert!(
        reauth.to_string().contains("must sign in again"),
        "{reauth}"
    );
    assert_eq!(layer.stats().last_error, Some(RefreshErrorKind::Reauth));
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn new_tokens_after_a_sign_in_clear_the_reauth() {
    let source = TestSource::new(Duration::from_secs(100));
    source.then(Step::Fail(invalid_grant()));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());
    let err = service.clone().oneshot(get()).await.unwrap_err();
    assert!(err.is::<ReauthRequired>());

    let tokens = oauth_refresh::TokenSet::new(oauth_refresh::AccessToken::new("signed-in"))
        .with_expires_in(Duration::from_secs(100));
    layer.set_tokens(tokens).unwrap();

    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(text(response).await, "hello signed-in");
    assert_eq!(layer.stats().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn transient_failure_keeps_serving_the_valid_token() {
    let source = TestSource::new(Duration::from_secs(100));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());
    service.clone().oneshot(get()).await.unwrap();

    for _ in 0..3 {
        source.then(Step::Fail(
            TransientError::new(TransientKind::Network).into(),
        ));
    }
    tokio::time::advance(Duration::from_secs(80)).await;
    service.clone().oneshot(get()).await.unwrap();
    wait_for(|| layer.stats().failures == 1).await;

    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-1");
    assert_eq!(layer.stats().last_error, Some(RefreshErrorKind::Transient));

    // After the cooldown a stale request starts a new refresh, which succeeds.
    tokio::time::advance(Duration::from_secs(2)).await;
    service.clone().oneshot(get()).await.unwrap();
    wait_for(|| layer.stats().generation == 2).await;
    assert_eq!(layer.stats().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn resend_safe_failures_are_resent_with_backoff() {
    let source = TestSource::new(Duration::from_secs(100));
    source
        .then(Step::Fail(
            TransientError::new(TransientKind::Network).into(),
        ))
        .then(Step::Fail(
            TransientError::new(TransientKind::ServerError(502)).into(),
        ));
    let layer = RefreshLayer::new(source.clone());

    layer.refresh().await.unwrap();

    let requests = source.requests();
    let attempts: Vec<u32> = requests.iter().map(|r| r.2).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    let first_pause = requests[1].0 - requests[0].0;
    let second_pause = requests[2].0 - requests[1].0;
    assert!(first_pause >= Duration::from_millis(100), "{first_pause:?}");
    assert!(
        second_pause >= Duration::from_millis(200),
        "{second_pause:?}"
    );
    assert_eq!(layer.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_hint_is_honoured() {
    let source = TestSource::new(Duration::from_secs(100));
    source.then(Step::Fail(
        TransientError::new(TransientKind::RateLimited)
            .with_retry_after(Duration::from_secs(7))
            .into(),
    ));
    let layer = RefreshLayer::new(source.clone());

    layer.refresh().await.unwrap();

    let requests = source.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].0 - requests[0].0 >= Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_refresh_budget_becomes_the_cooldown() {
    let source = TestSource::new(Duration::from_secs(100));
    source.then(Step::Fail(
        TransientError::new(TransientKind::RateLimited)
            .with_retry_after(Duration::from_secs(120))
            .into(),
    ));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());

    let err = service.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<TransientError>().unwrap().kind(),
        TransientKind::RateLimited
    );
    assert_eq!(source.calls(), 1, "not resent inside the refresh");

    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(service.clone().oneshot(get()).await.is_err());
    assert_eq!(source.calls(), 1, "the server asked for 120 s");

    tokio::time::advance(Duration::from_secs(21)).await;
    service.oneshot(get()).await.unwrap();
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn failure_unsafe_to_resend_is_not_resent() {
    let source = TestSource::new(Duration::from_secs(100));
    source.then(Step::Fail(
        TransientError::new(TransientKind::Timeout)
            .with_resend_safe(false)
            .into(),
    ));
    let layer = RefreshLayer::new(source.clone());

    let err = layer.refresh().await.unwrap_err();

    assert!(matches!(err, oauth_refresh::RefreshError::Transient(_)));
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn cooldown_keeps_a_dead_endpoint_from_being_hammered() {
    let source = TestSource::new(Duration::from_secs(100));
    for _ in 0..100 {
        source.then(Step::Fail(
            TransientError::new(TransientKind::Network)
                .with_resend_safe(false)
                .into(),
        ));
    }
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());

    for _ in 0..50 {
        assert!(service.clone().oneshot(get()).await.is_err());
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(source.calls(), 1, "failed fast during the cooldown");

    // The cooldown doubles with each failure in a row.
    let mut calls_at = Vec::new();
    for _ in 0..600 {
        let _ = service.clone().oneshot(get()).await;
        calls_at.push(source.calls());
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(
        source.calls() <= 8,
        "{} source calls in 60 s",
        source.calls()
    );
    assert!(source.calls() >= 4, "still tries again: {}", source.calls());
}

#[tokio::test(start_paused = true)]
async fn configuration_error_is_told_apart_from_reauth() {
    let source = TestSource::new(Duration::from_secs(100));
    source.then(Step::Fail(ConfigurationError::new("invalid_client").into()));
    let layer = RefreshLayer::new(source.clone());

    let err = layer.layer(Api::open()).oneshot(get()).await.unwrap_err();

    assert!(err.downcast_ref::<ReauthRequired>().is_none());
    let config = err.downcast_ref::<ConfigurationError>().unwrap();
    assert_eq!(config.error(), "invalid_client");
    assert_eq!(
        layer.stats().last_error,
        Some(RefreshErrorKind::Configuration)
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_from_a_sign_in_win_over_a_refresh_running_meanwhile() {
    let source = TestSource::build(Some(Duration::from_secs(100)), true, true, Some("rt-old"));
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());
    let waiting = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;

    let tokens = oauth_refresh::TokenSet::new(oauth_refresh::AccessToken::new("signed-in"))
        .with_expires_in(Duration::from_secs(100))
        .with_refresh_token("rt-signed-in");
    layer.set_tokens(tokens).unwrap();
    source.then(Step::Fail(invalid_grant()));
    source.open(1);

    let response = waiting.await.unwrap().unwrap();
    assert_eq!(text(response).await, "hello signed-in");
    assert_eq!(layer.stats().last_error, None);
    tokio::time::advance(Duration::from_secs(101)).await;
    source.open(1);
    service.oneshot(get()).await.unwrap();
    assert_eq!(source.requests()[1].1.as_deref(), Some("rt-signed-in"));
}

#[tokio::test(start_paused = true)]
async fn an_old_expired_token_is_not_sent_after_a_failed_refresh() {
    let source = TestSource::new(Duration::from_secs(10));
    let layer = RefreshLayer::new(source.clone());
    let api = Api::open();
    let service = layer.layer(api.clone());
    service.clone().oneshot(get()).await.unwrap();

    // at-1 expires; the refresh fails; the cooldown (at most 1 s) ends before the minimum
    // interval since that refresh started (1 s) does.
    tokio::time::advance(Duration::from_secs(11)).await;
    source.then(Step::Fail(
        TransientError::new(TransientKind::Network)
            .with_resend_safe(false)
            .into(),
    ));
    assert!(service.clone().oneshot(get()).await.is_err());
    tokio::time::advance(Duration::from_millis(999)).await;

    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(
        text(response).await,
        "hello at-3",
        "the second fetch failed"
    );
    assert!(
        !api.seen()
            .iter()
            .skip(1)
            .any(|a| a.as_deref() == Some("Bearer at-1"))
    );
}
