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
//! Each iteration builds the request, readies the service, calls it and polls the response
//! future once with a no-op waker; it completes at once. The token cell is primed before
//! measuring, so no refresh runs. Compare the variants to each other, not to other machines.
//!
//! ```text
//! cargo bench --bench hot_path
//! cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::fmt::Debug;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::task::{Context, Waker};

use bytes::Bytes;
use criterion::{Bencher, Criterion, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_http::set_header::SetRequestHeaderLayer;

use common::{BEARER, RwLockBearer, api, primed_layer, send_ready, sensitive_bearer};

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

    // Every measured request found the token FRESH: the priming fetch was the only one.
    assert_eq!(retry_on.stats().refreshes, 1, "{:?}", retry_on.stats());
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
