//! Secrets never print; refreshes are traced and counted.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::{RefreshLayer, TokenRequest};
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

#[test]
fn token_request_debug_hides_the_refresh_token() {
    let source = TestSource::build(None, false, false, Some("rt-secret"));
    let token = oauth_refresh::TokenSource::initial_refresh_token(&source);
    let mut request = format!("{token:?}");
    request.push_str(&format!("{:?}", token.as_ref().map(|t| t.to_string())));
    assert!(!request.contains("rt-secret"), "{request}");
    let _unused: Option<TokenRequest> = None;
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

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn refreshes_are_traced_without_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let source = TestSource::build(
        Some(Duration::from_secs(3600)),
        true,
        false,
        Some("rt-secret"),
    );
    let layer = RefreshLayer::new(source);
    layer.layer(Api::open()).oneshot(get()).await.unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("refresh started"), "{log}");
    assert!(log.contains("token refreshed"), "{log}");
    assert!(
        log.contains("grant=\"test\"") || log.contains("grant=test"),
        "{log}"
    );
    assert!(log.contains("auth.test"), "{log}");
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
