//! Secrets never print; refreshes are traced and counted.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use oauth_refresh::RefreshLayer;
use tower::{Layer, ServiceExt};

use crate::support::{Api, TestSource, get};

#[tokio::test(start_paused = true)]
async fn layer_and_service_debug_never_show_the_token() {
    let source = TestSource::build(
        Some(Duration::from_secs(3600)),
        true,
        false,
        Some("rt-secret"),
    );
    let layer = RefreshLayer::new(source);
    let service = layer.layer(Api::open());
    service.clone().oneshot(get()).await.unwrap();

    for printed in [format!("{layer:?}"), format!("{layer:#?}")] {
        assert!(!printed.contains("at-1"), "{printed}");
        assert!(!printed.contains("rt-"), "{printed}");
        assert!(printed.contains("generation: 1"), "{printed}");
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_service_debug_never_shows_the_token() {
    let layer = RefreshLayer::new(TestSource::new(Duration::from_secs(3600)));
    layer.refresh().await.unwrap();
    let service = layer.layer(Api::open());
    let printed = format!("{service:?}");
    assert!(printed.contains("generation: 1"), "{printed}");
    assert!(!printed.contains("at-1"), "{printed}");
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything any test traces goes here. A global subscriber, because tracing caches each
/// callsite's interest process-wide: a thread-local one races with the other tests' threads.
fn trace_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        captured
    })
}

#[tokio::test(start_paused = true)]
async fn refreshes_are_traced_without_secrets() {
    let log = trace_log();
    let source = TestSource::build(
        Some(Duration::from_secs(3600)),
        true,
        false,
        Some("rt-secret"),
    )
    .with_host("traced.test");
    let layer = RefreshLayer::new(source);
    layer.layer(Api::open()).oneshot(get()).await.unwrap();

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("traced.test"))
        .collect();
    assert!(ours.iter().any(|l| l.contains("refresh started")), "{log}");
    assert!(ours.iter().any(|l| l.contains("token refreshed")), "{log}");
    assert!(
        ours.iter()
            .any(|l| l.contains("grant=\"test\"") || l.contains("grant=test")),
        "{log}"
    );
    assert!(!log.contains("at-1") && !log.contains("rt-"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn stats_count_refreshes_failures_and_retries() {
    let source = TestSource::new(Duration::from_secs(100));
    let api = Api::accepting(|token| token != "at-1");
    let layer = RefreshLayer::new(source);
    layer.layer(api).oneshot(get()).await.unwrap();

    tokio::time::advance(Duration::from_secs(40)).await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.failures, 0);
    assert_eq!(stats.generation, 2);
    assert_eq!(stats.time_to_expiry, Some(Duration::from_secs(60)));
    assert_eq!(stats.last_error, None);
}
