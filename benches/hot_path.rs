//! What attaching the token costs per request when the token is FRESH.
//!
//! One group, `hot_path`, calls four tower stacks over the same trivial inner service (it
//! answers `200` at once) with the same request (a small `Full<Bytes>` body, a URI and three
//! ordinary headers). Only the middleware differs:
//!
//! - `static_header`: tower-http's `SetRequestHeader` with a fixed value, the baseline.
//! - `rwlock_token`: the lock-based design, reading the header from an `RwLock` per request.
//! - `refresh_layer_retry_off`: `RefreshLayer` without the retry: the `ArcSwap` load, the
//!   clock read and the header clone.
//! - `refresh_layer_retry_on`: the default `RefreshLayer`, which also keeps a replay copy of
//!   each request (method, URI, headers, extensions, body) and a clone of the inner service.
//!
//! A second group, `hot_path_empty`, shows the layer's own overhead undiluted: an empty
//! request (`Request<()>`) to an inner service answering `Response<Empty<Bytes>>`, through
//! tower-http's `AddAuthorization` with a static bearer value (the baseline) and through
//! `RefreshLayer` with the retry off and on.
//!
//! Each iteration builds the request, readies the service, calls it and polls the response
//! future once with a no-op waker; it completes at once. The token cell is primed before
//! measuring, so no refresh runs. Compare the variants to each other, not to other machines.
//!
//! ```text
//! cargo bench --bench hot_path
//! cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Bencher, Criterion, criterion_group};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Empty, Full};
use tower::util::ServiceFn;
use tower::{Layer, Service};
use tower_http::auth::AddAuthorizationLayer;
use tower_http::set_header::SetRequestHeaderLayer;

use common::{ACCESS_TOKEN, BEARER, RwLockBearer, api, primed_layer, send_ready, sensitive_bearer};

/// One request through `service` per iteration.
fn bench_service<S, ResBody>(b: &mut Bencher<'_>, mut service: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    b.iter(|| black_box(send_ready(&mut service, &mut cx)));
}

fn hot_path(c: &mut Criterion) {
    let api = api();

    let (rt, retry_on) = primed_layer();
    let _entered = rt.enter();
    let retry_off = retry_on.clone().retry(false);

    let authorization = Arc::new(RwLock::new(sensitive_bearer()));

    let mut group = c.benchmark_group("hot_path");
    group.bench_function("static_header", |b| {
        let layer =
            SetRequestHeaderLayer::overriding(AUTHORIZATION, HeaderValue::from_static(BEARER));
        bench_service(b, layer.layer(api));
    });
    group.bench_function("rwlock_token", |b| {
        let service = RwLockBearer {
            inner: api,
            authorization: authorization.clone(),
        };
        bench_service(b, service);
    });
    group.bench_function("refresh_layer_retry_off", |b| {
        bench_service(b, retry_off.layer(api));
    });
    group.bench_function("refresh_layer_retry_on", |b| {
        bench_service(b, retry_on.layer(api));
    });
    group.finish();

    let mut group = c.benchmark_group("hot_path_empty");
    group.bench_function("add_authorization", |b| {
        let layer = AddAuthorizationLayer::bearer(ACCESS_TOKEN);
        bench_empty(b, layer.layer(empty_api()));
    });
    group.bench_function("refresh_layer_retry_off", |b| {
        bench_empty(b, retry_off.layer(empty_api()));
    });
    group.bench_function("refresh_layer_retry_on", |b| {
        bench_empty(b, retry_on.layer(empty_api()));
    });
    group.finish();

    // Every measured request found the token FRESH: the priming fetch was the only one.
    assert_eq!(retry_on.stats().refreshes, 1, "{:?}", retry_on.stats());
}

type EmptyApi = ServiceFn<fn(Request<()>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>>>;

/// The empty request's API: answers `200` with an empty body at once.
fn empty_api() -> EmptyApi {
    fn answer(_: Request<()>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>> {
        ready(Ok(Response::new(Empty::new())))
    }
    tower::service_fn(answer as fn(_) -> _)
}

/// One empty request through `service` per iteration.
fn bench_empty<S, ResBody>(b: &mut Bencher<'_>, mut service: S)
where
    S: Service<Request<()>, Response = Response<ResBody>>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    b.iter(|| black_box(send_empty(&mut service, &mut cx)));
}

/// One empty request: built, readied, called, its response future polled once.
fn send_empty<S, ResBody>(service: &mut S, cx: &mut Context<'_>) -> Response<ResBody>
where
    S: Service<Request<()>, Response = Response<ResBody>>,
    S::Error: Debug,
{
    let mut request = Request::new(());
    *request.uri_mut() = Uri::from_static("https://api.example.com/v1/widgets");
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {other:?}"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("request failed: {error:?}"),
        Poll::Pending => panic!("response not ready on the first poll"),
    }
}

/// For callgrind: `HOT_PATH_INSTRUCTIONS=N` sends N requests through each variant of both
/// groups, in a function of its own per variant, instead of running criterion. Instructions
/// per request are then the cost inside each `drive_*` divided by N (run it for two values of
/// N and divide the difference, so that setup cancels out):
///
/// ```text
/// HOT_PATH_INSTRUCTIONS=100000 valgrind --tool=callgrind --toggle-collect='*drive_retry_off*' \
///     target/release/deps/hot_path-<hash>
/// ```
///
/// The empty request's variants are `drive_add_authorization`, `drive_retry_off` and
/// `drive_retry_on`; the request with headers and a body has `drive_headered_static_header`,
/// `drive_headered_retry_off` and `drive_headered_retry_on`.
mod instructions {
    use super::*;

    #[inline(never)]
    fn drive<S, ResBody>(mut service: S, n: u64)
    where
        S: Service<Request<()>, Response = Response<ResBody>>,
        S::Error: Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..n {
            black_box(send_empty(&mut service, &mut cx));
        }
    }

    #[inline(never)]
    fn drive_add_authorization(n: u64) {
        drive(
            AddAuthorizationLayer::bearer(ACCESS_TOKEN).layer(empty_api()),
            n,
        );
    }

    #[inline(never)]
    fn drive_retry_off(layer: &oauth_refresh::RefreshLayer, n: u64) {
        drive(layer.clone().retry(false).layer(empty_api()), n);
    }

    #[inline(never)]
    fn drive_retry_on(layer: &oauth_refresh::RefreshLayer, n: u64) {
        drive(layer.layer(empty_api()), n);
    }

    #[inline(never)]
    fn drive_headered<S, ResBody>(mut service: S, n: u64)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
        S::Error: Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..n {
            black_box(send_ready(&mut service, &mut cx));
        }
    }

    #[inline(never)]
    fn drive_headered_static_header(n: u64) {
        let layer =
            SetRequestHeaderLayer::overriding(AUTHORIZATION, HeaderValue::from_static(BEARER));
        drive_headered(layer.layer(api()), n);
    }

    #[inline(never)]
    fn drive_headered_retry_off(layer: &oauth_refresh::RefreshLayer, n: u64) {
        drive_headered(layer.clone().retry(false).layer(api()), n);
    }

    #[inline(never)]
    fn drive_headered_retry_on(layer: &oauth_refresh::RefreshLayer, n: u64) {
        drive_headered(layer.layer(api()), n);
    }

    pub(super) fn run(n: u64) {
        let (rt, layer) = primed_layer();
        let _entered = rt.enter();
        drive_add_authorization(n);
        drive_retry_off(&layer, n);
        drive_retry_on(&layer, n);
        drive_headered_static_header(n);
        drive_headered_retry_off(&layer, n);
        drive_headered_retry_on(&layer, n);
        assert_eq!(layer.stats().refreshes, 1);
    }
}

criterion_group!(benches, hot_path);

fn main() {
    if let Ok(n) = std::env::var("HOT_PATH_INSTRUCTIONS") {
        instructions::run(n.parse().expect("a number of requests"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
