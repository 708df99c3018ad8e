//! One endpoint answering 401 to every token costs only its own requests: a request to
//! another endpoint of the same client keeps the FRESH cost and never waits for a refresh.
//!
//! One group, `rejecting_endpoint`, times the hot path's request (see `hot_path.rs`) to a
//! healthy endpoint through two tower stacks over the same trivial API:
//!
//! - `fresh_beside_an_accepting_endpoint`: each timed request is sent right after a request
//!   to `/admin`, which this API accepts (the baseline);
//! - `fresh_beside_a_rejecting_endpoint`: the same, but `/admin` answers 401 without a
//!   challenge to every token.
//!
//! Only the healthy request is timed (`iter_custom`); the `/admin` one runs to its end first,
//! a refresh it started included.
//!
//! The token endpoint takes 200 ms to answer (on a paused clock), so a healthy request that
//! waited for a refresh could not complete on its first poll: `send_ready` would panic.
//! Equal figures mean the rejections cost the healthy endpoint nothing. After measuring, the
//! bench checks that the token requests the rejections caused stay within the stated bound
//! (at most 20 in any hour of the paused clock).
//!
//! ```text
//! cargo bench --bench rejecting_endpoint
//! ```

mod common;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshLayer, TokenRequest, TokenSet, TokenSource,
};
use tower::{Layer, ServiceExt};

use common::{ACCESS_TOKEN, send_ready};

const HOUR: Duration = Duration::from_secs(3600);

/// Answers each token request after 200 ms (of the paused clock), with a token for an hour.
#[derive(Default)]
struct SlowEndpoint {
    calls: AtomicU64,
}

impl TokenSource for SlowEndpoint {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut tokens = TokenSet::new(AccessToken::new(ACCESS_TOKEN));
            tokens.expires_in = Some(HOUR);
            Ok(tokens)
        })
    }
}

type Answer = Ready<Result<Response<Empty<Bytes>>, Infallible>>;
type Api = tower::util::ServiceFn<fn(Request<Full<Bytes>>) -> Answer>;

fn answer(status: StatusCode) -> Answer {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    ready(Ok(response))
}

/// Every path answers 200.
fn accepting(_: Request<Full<Bytes>>) -> Answer {
    answer(StatusCode::OK)
}

/// `/admin` answers 401 with no challenge; every other path, 200.
fn rejecting(request: Request<Full<Bytes>>) -> Answer {
    match request.uri().path() {
        "/admin" => answer(StatusCode::UNAUTHORIZED),
        _ => answer(StatusCode::OK),
    }
}

fn admin() -> Request<Full<Bytes>> {
    Request::get("https://api.example.com/admin")
        .body(Full::default())
        .expect("a valid request")
}

/// `iters` healthy requests, each after one to `/admin` that runs to its end; the time of
/// the healthy ones alone.
fn beside_admin(
    rt: &tokio::runtime::Runtime,
    layer: &RefreshLayer,
    api: Api,
    iters: u64,
) -> Duration {
    let mut healthy = layer.layer(api);
    let other = layer.layer(api);
    let mut cx = Context::from_waker(Waker::noop());
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        black_box(
            rt.block_on(other.clone().oneshot(admin()))
                .expect("an answer"),
        );
        let sent = std::time::Instant::now();
        black_box(send_ready(&mut healthy, &mut cx));
        timed += sent.elapsed();
    }
    timed
}

fn rejecting_endpoint(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();

    let baseline = RefreshLayer::new(SlowEndpoint::default());
    rt.block_on(baseline.refresh()).expect("priming refresh");
    let source = Arc::new(SlowEndpoint::default());
    let layer = RefreshLayer::from_arc(source.clone());
    rt.block_on(layer.refresh()).expect("priming refresh");
    let started = tokio::time::Instant::now();

    let mut group = c.benchmark_group("rejecting_endpoint");
    group.bench_function("fresh_beside_an_accepting_endpoint", |b| {
        b.iter_custom(|iters| beside_admin(&rt, &baseline, tower::service_fn(accepting), iters));
    });
    group.bench_function("fresh_beside_a_rejecting_endpoint", |b| {
        b.iter_custom(|iters| beside_admin(&rt, &layer, tower::service_fn(rejecting), iters));
    });
    group.finish();

    // The token requests the rejections caused stay within the bound: at most 20 in any
    // hour of the paused clock. None was spent on the accepting baseline.
    let hours = started.elapsed().as_secs() / HOUR.as_secs() + 1;
    let token_requests = source.calls.load(Ordering::Relaxed) - 1;
    assert!(
        token_requests <= 20 * hours,
        "{token_requests} token requests in {hours} h of the paused clock"
    );
    let stats = layer.stats();
    assert!(stats.retries + stats.backed_off > 0, "{stats:?}");
    assert_eq!(baseline.stats().refreshes, 1);
}

criterion_group!(benches, rejecting_endpoint);
criterion_main!(benches);
