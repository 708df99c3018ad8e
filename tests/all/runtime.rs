//! Without a tokio runtime, and with one shutting down: every caller ends at once with a
//! typed error, never a hang, never a panic.

use std::sync::mpsc;
use std::time::Duration;

use futures_executor::block_on;
use oauth_refresh::{
    AccessToken, ConfigurationError, RefreshError, RefreshLayer, TokenSet, TransientError,
    TransientKind,
};
use tower::{Layer, ServiceExt};

use crate::support::{Api, Step, TestSource, get, text};

const HOUR: Duration = Duration::from_secs(3600);

/// Runs `work` on a thread of its own and waits at most `limit` for it: a hang fails the
/// test instead of stalling the suite.
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    outcome
        .recv_timeout(limit)
        .expect("ended at once, without hanging or panicking")
}

fn is_no_runtime(error: &ConfigurationError) -> bool {
    error.error() == "no_tokio_runtime" && error.to_string().contains("tokio runtime")
}

#[test]
fn refresh_without_a_runtime_fails_at_once() {
    let source = TestSource::new(HOUR);
    let layer = RefreshLayer::new(source.clone());

    let outcome = within(Duration::from_secs(5), {
        let layer = layer.clone();
        move || block_on(layer.refresh())
    });

    match outcome {
        Err(RefreshError::Configuration(error)) => assert!(is_no_runtime(&error), "{error}"),
        other => panic!("expected the no-runtime error, got {other:?}"),
    }
    assert_eq!(source.calls(), 0);
    // The slot is free again: the same layer works once a runtime is there.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(layer.refresh()).unwrap();
    assert_eq!(layer.stats().generation, 1);
}

#[test]
fn an_expired_request_without_a_runtime_fails_at_once() {
    let api = Api::open();
    let layer = RefreshLayer::new(TestSource::new(HOUR));
    let service = layer.layer(api.clone());

    let error = within(Duration::from_secs(5), move || {
        block_on(service.oneshot(get())).unwrap_err()
    });

    let error = error
        .downcast_ref::<ConfigurationError>()
        .unwrap_or_else(|| panic!("a ConfigurationError, got {error}"));
    assert!(is_no_runtime(error), "{error}");
    assert_eq!(api.calls(), 0, "nothing is sent without a token");
}

#[test]
fn a_fresh_token_needs_no_runtime() {
    let api = Api::open();
    let layer = RefreshLayer::new(TestSource::new(HOUR));
    let mut tokens = TokenSet::new(AccessToken::new("at-signed-in"));
    tokens.expires_in = Some(HOUR);
    layer.set_tokens(tokens).unwrap();
    let service = layer.layer(api.clone());

    let body = within(Duration::from_secs(5), move || {
        block_on(async { text(service.oneshot(get()).await.unwrap()).await })
    });

    assert_eq!(body, "hello at-signed-in");
}

#[test]
fn waiters_of_a_refresh_cut_short_by_a_runtime_shutdown_end_at_once() {
    let source = TestSource::new(HOUR);
    source.then(Step::Hang);
    let layer = RefreshLayer::new(source.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn({
        let layer = layer.clone();
        async move { layer.refresh().await }
    });
    while source.calls() == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A caller on a thread of its own, no runtime: it joins the running refresh.
    let (joined, waiter) = mpsc::channel();
    let waiter_thread = std::thread::spawn({
        let layer = layer.clone();
        move || {
            let _ = joined.send(());
            block_on(layer.refresh())
        }
    });
    waiter.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));

    drop(runtime);

    let outcome = within(Duration::from_secs(5), move || {
        waiter_thread.join().unwrap()
    });
    match outcome {
        Err(RefreshError::Transient(error)) => {
            assert_eq!(error.kind(), TransientKind::RuntimeShutdown, "{error}");
        }
        other => panic!("expected RuntimeShutdown, got {other:?}"),
    }
    // The next runtime gets a working layer.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(layer.refresh()).unwrap();
    assert_eq!(source.calls(), 2);
}

#[test]
fn a_refresh_started_on_a_runtime_that_has_shut_down_fails_at_once() {
    let source = TestSource::new(HOUR);
    let layer = RefreshLayer::new(source.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let handle = runtime.handle().clone();
    drop(runtime);

    let outcome = within(Duration::from_secs(5), {
        let layer = layer.clone();
        move || {
            let _entered = handle.enter();
            block_on(layer.refresh())
        }
    });

    let error = match outcome {
        Err(RefreshError::Transient(error)) => error,
        other => panic!("expected RuntimeShutdown, got {other:?}"),
    };
    assert_eq!(error.kind(), TransientKind::RuntimeShutdown);
    assert!(
        error.to_string().contains("shut down"),
        "{}",
        TransientError::to_string(&error)
    );
    assert_eq!(source.calls(), 0);
}
