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

/// Collects what a tracing subscriber writes, from the threads of the tests that asked for
/// it ([`trace_log`]) only.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// Whether this thread's events are kept: the other tests' would grow the log by tens of
    /// megabytes over a run, which the memory tests (keyed, soak) would count as theirs.
    static CAPTURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if CAPTURING.with(std::cell::Cell::get) {
            self.0.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the calling thread traces from now on goes here (run the test on a current-thread
/// runtime, so that the refreshes it spawns run on its thread). A global subscriber, because
/// tracing caches each callsite's interest process-wide: a thread-local one races with the
/// other tests' threads.
pub(crate) fn trace_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    CAPTURING.with(|capturing| capturing.set(true));
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

#[test]
fn grants_debug_never_shows_secrets() {
    use oauth_refresh::oauth::AuthorizationCode;
    use oauth_refresh::{ClientCredentials, ClientSecret, RefreshTokenGrant};

    let client_credentials = ClientCredentials::new("https://login.test/token", "svc", "cs-s3cr3t")
        .scope("api:read")
        .param("client_assertion", "ca-s3cr3t");
    let refresh = RefreshTokenGrant::new("https://login.test/token", "app", "rt-s3cr3t")
        .client_secret("cs-s3cr3t")
        .initial_access_token("at-s3cr3t", std::time::SystemTime::now());
    let sign_in = AuthorizationCode::new(
        "https://login.test/authorize",
        "https://login.test/token",
        "app",
        "http://127.0.0.1/callback",
    )
    .client_secret("cs-s3cr3t");
    let pending = sign_in.start().unwrap();
    let printed = [
        format!("{client_credentials:?}"),
        format!("{client_credentials:#?}"),
        format!("{refresh:#?}"),
        format!("{sign_in:?}"),
        format!("{pending:?}"),
        format!(
            "{:?} {}",
            ClientSecret::new("cs-s3cr3t"),
            ClientSecret::new("cs-s3cr3t")
        ),
    ];
    for printed in printed {
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(!printed.contains(pending.state()), "{printed}");
    }
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn token_requests_on_the_wire_are_traced_without_secrets() {
    use crate::token_endpoint::{Answer, TokenEndpoint};
    use oauth_refresh::{RefreshTokenGrant, TokenUpdate};
    use serde_json::json;

    let log = trace_log();
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(
        200,
        json!({"access_token": "at-w1re", "refresh_token": "rt-w1re-2", "expires_in": 60}),
    ));
    server.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "revoked"}),
    ));
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-w1re-1")
        .client_secret("cs-w1re")
        .persist(|_: TokenUpdate| async {
            Err::<(), _>(std::io::Error::other("store unavailable"))
        });
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    let err = layer.refresh().await.unwrap_err();
    assert!(err.to_string().contains("revoked"));

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("store unavailable"),
        "the hook failure is reported: {log}"
    );
    assert!(log.contains("invalid_grant"), "{log}");
    assert!(!log.contains("w1re"), "{log}");
    assert!(!format!("{err} {err:?}").contains("w1re"));
}

/// Client assertions: neither the signed JWT nor the key shows in logs, errors or `Debug`.
#[cfg(all(feature = "reqwest", feature = "jwt-signing"))]
#[tokio::test]
async fn client_assertions_never_show_in_logs_or_errors() {
    use crate::token_endpoint::{Answer, TokenEndpoint};
    use oauth_refresh::ClientCredentials;
    use oauth_refresh::oauth::{ClientAuth, Es256Key, PrivateKeyJwt};
    use serde_json::json;

    let log = trace_log();
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(
        200,
        json!({"access_token": "at-assert", "expires_in": 60}),
    ));
    server.push(Answer::json(
        401,
        json!({"error": "invalid_client", "error_description": "assertion refused"}),
    ));
    let grant = ClientCredentials::with_client_auth(
        server.url(),
        "svc-asserting",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(Es256Key::generate().unwrap())),
    );
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    let err = layer.refresh().await.unwrap_err();
    assert!(err.to_string().contains("invalid_client"), "{err}");

    let assertions: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.param("client_assertion").expect("an assertion"))
        .collect();
    assert_eq!(assertions.len(), 2);
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let printed = format!("{err} {err:?} {layer:?} {log}");
    for assertion in &assertions {
        // Each part alone: header, claims and signature.
        for part in assertion.split('.') {
            assert!(!printed.contains(part), "{part} in {printed}");
        }
    }
}

/// The device authorization grant and sign-out: neither the device code nor a token shows in
/// the traces, `Debug` or error messages.
#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn device_sign_in_and_sign_out_are_traced_without_secrets() {
    use crate::token_endpoint::{Answer, TokenEndpoint};
    use oauth_refresh::oauth::DeviceAuthorization;
    use oauth_refresh::{Revoke, TokenUpdate};
    use serde_json::json;

    let log = trace_log();
    let server = TokenEndpoint::start().await;
    server.route(
        "/device",
        Answer::json(
            200,
            json!({"device_code": "dc-d3v1ce", "user_code": "UC-1", "verification_uri": "https://x/device", "expires_in": 60}),
        ),
    );
    server.push(Answer::json(400, json!({"error": "authorization_pending"})));
    server.push(Answer::raw(503, Some("text/plain"), "dc-d3v1ce at-d3v1ce"));
    server.push(Answer::json(
        200,
        json!({"access_token": "at-d3v1ce", "refresh_token": "rt-d3v1ce", "expires_in": 60}),
    ));
    server.route(
        "/revoke",
        Answer::json(
            400,
            json!({"error": "unsupported_token_type", "error_description": "no"}),
        ),
    );
    let pending =
        DeviceAuthorization::new(format!("{}/device", server.base_url()), server.url(), "tv")
            .client_secret("cs-d3v1ce")
            .revocation_url(format!("{}/revoke", server.base_url()))
            .persist(|_: TokenUpdate| async { Err::<(), _>(std::io::Error::other("store down")) })
            .start()
            .await
            .unwrap();
    let printed = format!("{pending:?}");
    let grant = pending.poll().await.unwrap();
    let printed = format!("{printed} {grant:?}");
    let layer = RefreshLayer::new(grant);
    let err = layer.sign_out(Revoke::AllTokens).await.unwrap_err();
    let printed = format!(
        "{printed} {err} {err:?} {:?}",
        std::error::Error::source(&err)
    );

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("store down"),
        "the hook failure is reported: {log}"
    );
    assert!(log.contains("unsupported_token_type"), "{log}");
    assert!(!log.contains("d3v1ce"), "{log}");
    assert!(!printed.contains("d3v1ce"), "{printed}");
}
