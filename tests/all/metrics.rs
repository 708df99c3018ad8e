//! The instruments of feature `metrics` (`src/metrics.rs`), read back from `metrics-util`'s
//! debugging recorder.
//!
//! Each test sets its own recorder for its thread only, so tests running in parallel do not
//! see each other's figures. `#[tokio::test]` runs on a current-thread runtime, so the
//! refresh task the cell spawns runs on the test's thread and records into that recorder.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use oauth_refresh::{
    BoxError, BoxFuture, ReauthRequired, Refresh, RefreshError, RefreshLayer, TokenRequest,
    TokenSet, TokenSource, TokenUpdate, TransientError, TransientKind, source_fn,
};
use tower::{Layer, ServiceExt};

use crate::request_path::wait_for;
use crate::support::{Api, Step, TestSource, get, text};

const LIFETIME: Duration = Duration::from_secs(100);
const TEST: &[(&str, &str)] = &[("grant", "test"), ("host", "auth.test")];

/// One metric as recorded: name, labels, value.
pub(crate) type Recorded = (String, Vec<(String, String)>, DebugValue);

/// What was recorded since the last read (the debugging recorder drains on each read).
pub(crate) fn read(snapshotter: &Snapshotter) -> Vec<Recorded> {
    let recorded: Vec<Recorded> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect();
    // Bounded cardinality: only these label names, and never a token in a value.
    for (name, labels, _) in &recorded {
        for (label, value) in labels {
            assert!(
                ["grant", "host", "outcome"].contains(&label.as_str()),
                "{name}: {label}"
            );
            assert!(
                !value.contains("at-") && !value.contains("rt-"),
                "{name}: {value}"
            );
        }
    }
    recorded
}

fn matches(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> bool {
    let mut want: Vec<_> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut have = recorded.1.clone();
    want.sort();
    have.sort();
    recorded.0 == name && have == want
}

/// How much a counter moved; 0 if it did not.
pub(crate) fn counter(recorded: &[Recorded], name: &str, labels: &[(&str, &str)]) -> u64 {
    recorded
        .iter()
        .filter(|r| matches(r, name, labels))
        .map(|r| match r.2 {
            DebugValue::Counter(n) => n,
            ref other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// A histogram's values since the last read.
fn histogram(recorded: &[Recorded], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    recorded
        .iter()
        .filter(|r| matches(r, name, labels))
        .flat_map(|r| match &r.2 {
            DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

fn with(outcome: &str) -> Vec<(&str, &str)> {
    let mut labels = TEST.to_vec();
    labels.push(("outcome", outcome));
    labels
}

fn requests(recorded: &[Recorded], outcome: &str) -> u64 {
    counter(
        recorded,
        "oauth_refresh_token_requests_total",
        &with(outcome),
    )
}

fn durations(recorded: &[Recorded], outcome: &str) -> Vec<f64> {
    histogram(
        recorded,
        "oauth_refresh_refresh_duration_seconds",
        &with(outcome),
    )
}

fn remaining(recorded: &[Recorded]) -> Vec<f64> {
    histogram(
        recorded,
        "oauth_refresh_token_remaining_lifetime_seconds",
        TEST,
    )
}

#[tokio::test(start_paused = true)]
async fn a_refresh_records_its_token_request_duration_and_the_lifetime_it_replaces() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let source = TestSource::new(LIFETIME);
    let layer = RefreshLayer::new(source.clone());
    let service = layer.layer(Api::open());

    service.clone().oneshot(get()).await.unwrap();
    let recorded = read(&snapshotter);
    assert_eq!(requests(&recorded, "success"), 1);
    assert_eq!(durations(&recorded, "success").len(), 1);
    // No token was replaced: nothing to say about its lifetime.
    assert!(remaining(&recorded).is_empty());

    // In the refresh-ahead window, the background refresh replaces a token with 20 s left.
    tokio::time::advance(Duration::from_secs(80)).await;
    service.clone().oneshot(get()).await.unwrap();
    wait_for(|| layer.stats().generation == 2).await;
    let recorded = read(&snapshotter);
    assert_eq!(requests(&recorded, "success"), 1);
    assert_eq!(durations(&recorded, "success").len(), 1);
    let left = remaining(&recorded);
    assert_eq!(left.len(), 1);
    assert!((19.0..=20.0).contains(&left[0]), "{left:?}");
}

#[tokio::test(start_paused = true)]
async fn requests_with_a_fresh_token_record_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let source = TestSource::new(LIFETIME);
    let service = RefreshLayer::new(source).layer(Api::open());
    service.clone().oneshot(get()).await.unwrap();
    assert_eq!(requests(&read(&snapshotter), "success"), 1);

    for _ in 0..10 {
        service.clone().oneshot(get()).await.unwrap();
    }
    let after = read(&snapshotter);
    assert!(
        after.iter().all(|r| match &r.2 {
            DebugValue::Counter(n) => *n == 0,
            DebugValue::Histogram(values) => values.is_empty(),
            DebugValue::Gauge(_) => false,
        }),
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_transient_token_request_is_counted_and_the_refresh_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let source = TestSource::new(LIFETIME);
    let unavailable = || RefreshError::from(TransientError::new(TransientKind::Network));
    source
        .then(Step::Fail(unavailable()))
        .then(Step::Fail(unavailable()));
    let service = RefreshLayer::new(source.clone()).layer(Api::open());

    // Two failures resent with backoff, then a success: one refresh, three token requests.
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-3");
    let recorded = read(&snapshotter);
    assert_eq!(requests(&recorded, "transient"), 2);
    assert_eq!(requests(&recorded, "success"), 1);
    let took = durations(&recorded, "success");
    assert_eq!(took.len(), 1);
    assert!(
        took[0] > 0.0,
        "the backoff is part of the refresh: {took:?}"
    );
    assert!(durations(&recorded, "transient").is_empty());

    // A failure not safe to resend ends the refresh in it.
    let refresh = layer_with(Step::Fail(
        TransientError::new(TransientKind::Network)
            .with_resend_safe(false)
            .into(),
    ));
    refresh.oneshot(get()).await.unwrap_err();
    let recorded = read(&snapshotter);
    assert_eq!(requests(&recorded, "transient"), 1);
    assert_eq!(durations(&recorded, "transient").len(), 1);
    assert_eq!(
        counter(&recorded, "oauth_refresh_reauth_required_total", TEST),
        0
    );
}

/// A service whose first token request does `step`.
fn layer_with(step: Step) -> Refresh<Api> {
    let source = TestSource::new(LIFETIME);
    source.then(step);
    RefreshLayer::new(source).layer(Api::open())
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_counts_reauth_required() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let service = layer_with(Step::Fail(
        ReauthRequired::new("invalid_grant")
            .with_host("auth.test")
            .into(),
    ));

    let error = service.oneshot(get()).await.unwrap_err();
    assert!(error.downcast_ref::<ReauthRequired>().is_some(), "{error}");
    let recorded = read(&snapshotter);
    assert_eq!(
        counter(&recorded, "oauth_refresh_reauth_required_total", TEST),
        1
    );
    assert_eq!(requests(&recorded, "reauth"), 1);
    assert_eq!(durations(&recorded, "reauth").len(), 1);
    assert_eq!(requests(&recorded, "success"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_resent_rejection_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let api = Api::open();
    let service = RefreshLayer::new(TestSource::new(LIFETIME)).layer(api.clone());
    service.clone().oneshot(get()).await.unwrap();
    let recorded = read(&snapshotter);
    assert_eq!(counter(&recorded, "oauth_refresh_resends_total", TEST), 0);

    // The API stops taking `at-1` though it has not expired: refresh, resend once.
    api.set_policy(|token| token != "at-1");
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-2");
    let recorded = read(&snapshotter);
    assert_eq!(counter(&recorded, "oauth_refresh_resends_total", TEST), 1);
    assert_eq!(requests(&recorded, "success"), 1);
    // By the clock, the rejected token had most of its lifetime left (the refresh a
    // rejection asks for may start a moment later).
    let left = remaining(&recorded);
    assert_eq!(left.len(), 1);
    assert!((90.0..=100.0).contains(&left[0]), "{left:?}");
}

/// A [`TestSource`] whose store is down.
struct StoreDown(TestSource);

impl TokenSource for StoreDown {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        self.0.fetch(request)
    }

    fn grant(&self) -> &str {
        self.0.grant()
    }

    fn host(&self) -> Option<&str> {
        self.0.host()
    }

    fn persist(&self, _: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Err("the store is down".into()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_persistence_hook_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = RefreshLayer::new(StoreDown(TestSource::new(LIFETIME)));
    let service = layer.layer(Api::open());

    service.oneshot(get()).await.unwrap();
    let recorded = read(&snapshotter);
    assert_eq!(
        counter(&recorded, "oauth_refresh_persist_failures_total", TEST),
        1
    );
    assert_eq!(layer.stats().persist_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_source_without_a_host_is_labelled_unknown() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let source = source_fn(|_| async { Ok(TokenSet::new("at-x".into())) });
    RefreshLayer::new(source)
        .layer(Api::open())
        .oneshot(get())
        .await
        .unwrap();
    let recorded = read(&snapshotter);
    let labels = [
        ("grant", "custom"),
        ("host", "unknown"),
        ("outcome", "success"),
    ];
    assert_eq!(
        counter(&recorded, "oauth_refresh_token_requests_total", &labels),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn described_instruments_carry_their_unit_and_help_text() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    oauth_refresh::metrics::describe();
    let layer = RefreshLayer::new(TestSource::new(LIFETIME));
    layer.layer(Api::open()).oneshot(get()).await.unwrap();

    let described: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, help, _)| (key.key().name().to_owned(), unit, help))
        .collect();
    let names = [
        "oauth_refresh_token_requests_total",
        "oauth_refresh_refresh_duration_seconds",
    ];
    for name in names {
        let (_, unit, help) = described
            .iter()
            .find(|(n, ..)| n == name)
            .unwrap_or_else(|| panic!("{name} not recorded: {described:?}"));
        let want = if name.ends_with("_seconds") {
            metrics::Unit::Seconds
        } else {
            metrics::Unit::Count
        };
        assert_eq!(*unit, Some(want), "{name}");
        assert!(
            help.as_ref().is_some_and(|h| h.len() > 20),
            "{name}: {help:?}"
        );
    }
}

/// Feature `metrics` off: `tests/feature-off/`, a package of its own (this binary always sees
/// the feature), builds the crate without it beside a recorder and shows nothing recorded
/// and the facade not compiled in.
#[test]
fn with_the_feature_off_nothing_is_recorded_or_compiled_in() {
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/feature-off");
    let output = std::process::Command::new(env!("CARGO"))
        .args(["test", "--quiet", "--manifest-path"])
        .arg(format!("{package}/Cargo.toml"))
        // Beside this build's own, never inside the directory it locks.
        .env(
            "CARGO_TARGET_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/feature-off"),
        )
        .output()
        .expect("cargo runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("test result: ok. 2 passed"), "{printed}");
}
