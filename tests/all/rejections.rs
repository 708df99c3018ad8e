//! A rejection costs the request that got it, not everyone (DESIGN, request path 6): an
//! endpoint that answers 401 to every token slows no other request, drives the token
//! endpoint at a trickle, and a token the server really revoked is still replaced.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshLayer, RetryStatus, TokenRequest, TokenSet,
    TokenSource,
};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::support::text;

const HOUR: Duration = Duration::from_secs(3600);
/// What the token endpoint takes to answer: long enough that a request waiting on it shows.
const LATENCY: Duration = Duration::from_millis(200);

/// Issues `at-1`, `at-2`, ..., each after [`LATENCY`], living an hour.
#[derive(Clone, Default)]
struct SlowIssuer(Arc<AtomicUsize>);

impl SlowIssuer {
    fn issued(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl TokenSource for SlowIssuer {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            tokio::time::sleep(LATENCY).await;
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            let mut tokens = TokenSet::new(AccessToken::new(format!("at-{n}")));
            tokens.expires_in = Some(HOUR);
            Ok(tokens)
        })
    }
}

/// `/admin` answers 401 without a challenge to every token (its own authorization failure,
/// badly reported); every other path accepts any token not revoked.
#[derive(Clone, Default)]
struct Api {
    revoked: Arc<Mutex<HashSet<String>>>,
}

impl Api {
    fn revoke(&self, token: &str) {
        self.revoked
            .lock()
            .unwrap()
            .insert(format!("Bearer {token}"));
    }

    fn service(
        &self,
    ) -> tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>
    {
        let revoked = self.revoked.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |request: Request<Full<Bytes>>| {
                let auth = request.headers()["authorization"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let rejected =
                    request.uri().path() == "/admin" || revoked.lock().unwrap().contains(&auth);
                let response = match rejected {
                    true => Response::builder().status(401).body(Full::default()),
                    false => Response::builder().body(Full::new(Bytes::from(auth))),
                };
                std::future::ready(Ok(response.unwrap()))
            },
        ))
    }
}

type Stack = oauth_refresh::Refresh<
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>,
>;

/// The issuer, the layer over it, the API, and the layer's service over the API.
fn stack() -> (SlowIssuer, RefreshLayer, Api, Stack) {
    let issuer = SlowIssuer::default();
    let layer = RefreshLayer::new(issuer.clone());
    let api = Api::default();
    let service = tower::Layer::layer(&layer, api.service());
    (issuer, layer, api, service)
}

fn to(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://api.test{path}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_rejecting_every_token_costs_only_its_own_requests() {
    let (issuer, layer, _api, service) = stack();
    // The first token, so that the hour below starts from a FRESH one.
    layer.refresh().await.unwrap();
    let start = Instant::now();

    let mut slowest_healthy = Duration::ZERO;
    let mut admin_resent = 0;
    while start.elapsed() < HOUR {
        let admin = service.clone().oneshot(to("/admin")).await.unwrap();
        assert_eq!(admin.status(), 401);
        if admin.extensions().get() == Some(&RetryStatus::Retried) {
            admin_resent += 1;
        }
        let sent = Instant::now();
        let healthy = service.clone().oneshot(to("/reports")).await.unwrap();
        slowest_healthy = slowest_healthy.max(sent.elapsed());
        assert_eq!(healthy.status(), 200, "at {:?}", start.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert_eq!(
        slowest_healthy,
        Duration::ZERO,
        "no healthy request waited for a refresh"
    );
    // The bound: refreshes for rejections at 0, 1, 3, 7, ..., 511 s, then every 5 min:
    // at most 20 in the first hour, besides the first token and the refresh its expiry
    // needs.
    let token_requests = issuer.issued() - 1;
    assert!(
        token_requests <= 20 + 1,
        "{token_requests} token requests in an hour"
    );
    assert!(
        token_requests >= 15,
        "backed off, not stopped: {token_requests}"
    );
    assert_eq!(admin_resent, token_requests.min(admin_resent));
    assert!(layer.stats().backed_off > 7000, "{:?}", layer.stats());
}

#[tokio::test(start_paused = true)]
async fn a_revoked_token_is_replaced_by_one_refresh_with_one_resend_per_request() {
    let (issuer, layer, api, service) = stack();
    layer.refresh().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.revoke("at-1");

    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(to("/reports"))))
        .collect();
    for request in requests {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
        assert_eq!(text(response).await, "Bearer at-2");
    }

    assert_eq!(issuer.issued(), 2, "one refresh for all of them");
    assert_eq!(layer.stats().retries, 10, "one resend each");
}

#[tokio::test(start_paused = true)]
async fn a_revocation_while_an_endpoint_keeps_rejecting_is_noticed_within_one_spacing() {
    let (issuer, layer, api, service) = stack();
    layer.refresh().await.unwrap();
    // Twenty minutes of `/admin` rejecting: the spacing has grown to its 5 min cap.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20 * 60) {
        service.clone().oneshot(to("/admin")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let current = format!("at-{}", issuer.issued());
    api.revoke(&current);

    let revoked_at = Instant::now();
    let recovered = loop {
        let response = service.clone().oneshot(to("/reports")).await.unwrap();
        if response.status() == 200 {
            break revoked_at.elapsed();
        }
        assert_eq!(response.extensions().get(), Some(&RetryStatus::BackedOff));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    assert!(
        recovered <= Duration::from_secs(5 * 60 + 1),
        "a new token within one spacing: {recovered:?}"
    );
}
