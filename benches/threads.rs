//! How reading the token scales from one thread to two.
//!
//! One group, `threads`, runs the hot path's request (see `hot_path.rs`) through four tower
//! stacks, each on one thread and then on two threads at once. Each thread has its own clone
//! of the service, as the tasks of a server would; they share the token. Every variant's
//! iteration is one request on each thread, so with two threads an iteration does twice the
//! work:
//!
//! - `static_header`: tower-http's `SetRequestHeader`, which shares nothing between threads,
//!   the ideal;
//! - `rwlock_token`: the token behind an `RwLock`, the lock-based baseline;
//! - `refresh_layer_retry_off`: `RefreshLayer` reading the token through `ArcSwap`;
//! - `refresh_layer_retry_on`: the default `RefreshLayer`, with its replay copy.
//!
//! The throughput two threads give over one is `2 × time(1) / time(2)`: 2.0 is perfect
//! scaling. The machine this runs on is shared, so compare variants of one run.
//!
//! ```text
//! cargo bench --bench threads
//! ```

mod common;

use std::fmt::Debug;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::task::{Context, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_http::set_header::SetRequestHeaderLayer;

use common::{BEARER, RwLockBearer, api, primed_layer, send_ready, sensitive_bearer};

/// Runs `iterations` requests on each of `threads` threads at once, each through its own
/// service from `make`; returns the time the slowest thread took.
fn run<S, ResBody>(threads: usize, iterations: u64, make: &(impl Fn() -> S + Sync)) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Debug,
{
    let start = Barrier::new(threads);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    let mut service = make();
                    let mut cx = Context::from_waker(Waker::noop());
                    start.wait();
                    let began = Instant::now();
                    for _ in 0..iterations {
                        black_box(send_ready(&mut service, &mut cx));
                    }
                    began.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("bench thread panicked"))
            .max()
            .expect("at least one thread")
    })
}

fn threads(c: &mut Criterion) {
    let api = api();

    // The runtime only served the priming fetch: a FRESH request needs none.
    let (_rt, retry_on) = primed_layer();
    let retry_off = retry_on.clone().retry(false);
    let authorization = Arc::new(RwLock::new(sensitive_bearer()));
    let static_header =
        SetRequestHeaderLayer::overriding(AUTHORIZATION, HeaderValue::from_static(BEARER));

    let mut group = c.benchmark_group("threads");
    for n in [1, 2] {
        group.bench_with_input(BenchmarkId::new("static_header", n), &n, |b, &n| {
            b.iter_custom(|iterations| run(n, iterations, &|| static_header.layer(api)));
        });
        group.bench_with_input(BenchmarkId::new("rwlock_token", n), &n, |b, &n| {
            let make = || RwLockBearer {
                inner: api,
                authorization: authorization.clone(),
            };
            b.iter_custom(|iterations| run(n, iterations, &make));
        });
        group.bench_with_input(
            BenchmarkId::new("refresh_layer_retry_off", n),
            &n,
            |b, &n| {
                b.iter_custom(|iterations| run(n, iterations, &|| retry_off.layer(api)));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("refresh_layer_retry_on", n),
            &n,
            |b, &n| {
                b.iter_custom(|iterations| run(n, iterations, &|| retry_on.layer(api)));
            },
        );
    }
    group.finish();

    // Every measured request found the token FRESH: the priming fetch was the only one.
    assert_eq!(retry_on.stats().refreshes, 1, "{:?}", retry_on.stats());
}

criterion_group!(benches, threads);
criterion_main!(benches);
