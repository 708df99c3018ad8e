//! What a keyed layer costs: a request whose key's token is FRESH, against the single-token
//! layer; the memory an idle key holds; and a stampede over many keys crossing expiry.
//!
//! Group `keyed`: the hot path's request (common::request), with a random key of 10,000 in an
//! extension (the same work for both variants), through:
//!
//! - `single_token`: `RefreshLayer` (retry on, the default), which ignores the key: the
//!   baseline;
//! - `keyed_one_key`: the same keyed layer, with the same key on every request: what the
//!   lookup itself costs when every line it reads is in the cache;
//! - `keyed_10000`: `KeyedRefreshLayer` holding 10,000 cells, all primed, choosing by the key;
//! - `map_floor_10000`: no token cell at all, a `HashMap` of 10,000 keys to their header
//!   values, whose value is copied into the request: the least that any keyed layer does
//!   (hash the key, read its bucket, copy its header), to tell the cost of the cells from the
//!   cost of a random key among many;
//! - `map_floor_one_key`: the same map, always the same key: with `map_floor_10000`, what the
//!   cache misses of a random key cost when nothing but a map lookup is done.
//!
//! Group `keyed_stampede`: 10,000 concurrent callers over 1,000 keys, all expired just before
//! (`expired`), against the same callers with every token valid (`fresh`). The sources take
//! 100 ms per token request on a paused clock. After measuring, the bench checks that each
//! expired iteration made exactly 1,000 token requests, one per key.
//!
//! Before measuring, the bench prints the memory each idle key holds: the bytes allocated by
//! priming 10,000 keys, less what priming one allocates, over 9,999 (the binary counts its
//! allocations).
//!
//! ```text
//! cargo bench --bench keyed
//! ```

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group};
use oauth_refresh::keyed::{KeyedRefreshLayer, SourceFactory};
use oauth_refresh::{
    AccessToken, BoxError, BoxFuture, RefreshError, RefreshLayer, TokenRequest, TokenSet,
    TokenSource,
};
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};

use common::{ACCESS_TOKEN, InMemory, api, request};

/// Counts the bytes the program holds: allocated and not yet freed.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: u64 = 10_000;

/// The key of a request: the bench's users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct User(u64);

/// Every key's source is [`InMemory`]: a token valid for an hour.
struct Users;

impl SourceFactory<User> for Users {
    fn source(&self, _: User) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        Box::pin(async { Ok(Some(Box::new(InMemory) as Box<dyn TokenSource>)) })
    }
}

/// A random user per call (xorshift: cheap, and the same in both variants).
struct RandomUser(u64);

impl RandomUser {
    fn next(&mut self) -> User {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        User(self.0 % KEYS)
    }
}

fn keyed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();

    let single = RefreshLayer::new(InMemory);
    rt.block_on(single.refresh()).expect("priming refresh");

    let layer = KeyedRefreshLayer::builder(Users)
        .max_cells(2 * KEYS as usize)
        .build();
    let before = ALLOCATED.load(Ordering::Relaxed);
    rt.block_on(layer.refresh(&User(0)))
        .expect("priming refresh");
    let one = ALLOCATED.load(Ordering::Relaxed) - before;
    rt.block_on(async {
        for user in 1..KEYS {
            layer.refresh(&User(user)).await.expect("priming refresh");
        }
    });
    let all = ALLOCATED.load(Ordering::Relaxed) - before;
    println!(
        "memory per idle key: {} bytes ({KEYS} keys held {all} bytes, the first {one})",
        (all - one) / (KEYS as usize - 1)
    );
    assert_eq!(layer.cells(), KEYS as usize);

    let mut group = c.benchmark_group("keyed");
    group.bench_function("single_token", |b| {
        let mut service = single.layer(api());
        let mut users = RandomUser(0x2545_F491_4F6C_DD1D);
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| black_box(send(&mut service, users.next(), &mut cx)));
    });
    // The same layer, always the same key: the lookup's own cost, every line it reads cached.
    group.bench_function("keyed_one_key", |b| {
        let mut service = layer.layer(api());
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| black_box(send(&mut service, User(7), &mut cx)));
    });
    group.bench_function("keyed_10000", |b| {
        let mut service = layer.layer(api());
        let mut users = RandomUser(0x2545_F491_4F6C_DD1D);
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| black_box(send(&mut service, users.next(), &mut cx)));
    });
    group.bench_function("map_floor_one_key", |b| {
        let mut service = MapFloor::layer(api());
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| black_box(send(&mut service, User(7), &mut cx)));
    });
    group.bench_function("map_floor_10000", |b| {
        let mut service = MapFloor::layer(api());
        let mut users = RandomUser(0x2545_F491_4F6C_DD1D);
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| black_box(send(&mut service, users.next(), &mut cx)));
    });
    group.finish();

    // Every measured request found its key's token FRESH: the priming was the only refresh.
    for user in [0, KEYS / 2, KEYS - 1] {
        assert_eq!(layer.stats(&User(user)).expect("a cell").refreshes, 1);
    }
    assert_eq!(layer.cells(), KEYS as usize, "no cell was made or dropped");
}

/// One request for `user`: built, readied, called, polled once.
fn send<S, ResBody>(service: &mut S, user: User, cx: &mut Context<'_>) -> http::Response<ResBody>
where
    S: Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<ResBody>,
        >,
    S::Error: std::fmt::Debug,
{
    let mut request = request();
    request.extensions_mut().insert(user);
    assert!(service.poll_ready(cx).is_ready());
    let mut future = std::pin::pin!(service.call(request));
    match future.as_mut().poll(cx) {
        std::task::Poll::Ready(Ok(response)) => response,
        other => panic!("not answered at once: {:?}", other.map(|r| r.map(drop))),
    }
}

/// The floor of a keyed request: each key's header value in a map, copied into the request.
/// Each value is its own allocation, as each cell's is.
struct MapFloor<S> {
    headers: Arc<std::collections::HashMap<User, http::HeaderValue>>,
    inner: S,
}

impl<S> MapFloor<S> {
    fn layer(inner: S) -> Self {
        let headers = (0..KEYS)
            .map(|user| {
                let mut value = http::HeaderValue::try_from(format!("Bearer {ACCESS_TOKEN}"))
                    .expect("a header value");
                value.set_sensitive(true);
                (User(user), value)
            })
            .collect();
        MapFloor {
            headers: Arc::new(headers),
            inner,
        }
    }
}

impl<S, B> Service<http::Request<B>> for MapFloor<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        let user = request.extensions().get::<User>().expect("a key");
        let value = self.headers.get(user).expect("a known key").clone();
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
        self.inner.call(request)
    }
}

/// How long one token request takes, and how long each token lives.
const REFRESH_LATENCY: Duration = Duration::from_millis(100);
const LIFETIME: Duration = Duration::from_secs(600);
const STAMPEDE_KEYS: u64 = 1_000;
const CALLERS: u64 = 10_000;

/// Every key's source takes [`REFRESH_LATENCY`]; all count their token requests here.
struct Slow(Arc<AtomicU64>);

impl SourceFactory<User> for Slow {
    fn source(&self, _: User) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        let source = SlowSource(self.0.clone());
        Box::pin(async { Ok(Some(Box::new(source) as Box<dyn TokenSource>)) })
    }
}

struct SlowSource(Arc<AtomicU64>);

impl TokenSource for SlowSource {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            tokio::time::sleep(REFRESH_LATENCY).await;
            Ok(TokenSet::new(AccessToken::new(ACCESS_TOKEN)).with_expires_in(LIFETIME))
        })
    }
}

fn keyed_stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let calls = Arc::new(AtomicU64::new(0));
    let layer = KeyedRefreshLayer::builder(Slow(calls.clone()))
        .idle_timeout(LIFETIME * 100)
        .build();
    rt.block_on(async {
        for user in 0..STAMPEDE_KEYS {
            layer.refresh(&User(user)).await.expect("priming refresh");
        }
    });
    let service = layer.layer(api());

    let mut expired_iterations = 0;
    let mut group = c.benchmark_group("keyed_stampede");
    group.sample_size(10);
    for expired in [false, true] {
        let name = if expired { "expired" } else { "fresh" };
        group.bench_function(BenchmarkId::new(name, CALLERS), |b| {
            b.iter_custom(|iterations| {
                let mut measured = Duration::ZERO;
                for _ in 0..iterations {
                    if expired {
                        rt.block_on(tokio::time::advance(LIFETIME));
                        expired_iterations += 1;
                    }
                    let began = std::time::Instant::now();
                    rt.block_on(send_all(&service));
                    measured += began.elapsed();
                }
                measured
            });
        });
    }
    group.finish();

    // The priming, then one token request per key per expiry, whatever the callers.
    assert_eq!(
        calls.load(Ordering::Relaxed),
        STAMPEDE_KEYS * (1 + expired_iterations),
        "one token request per key per expiry"
    );
}

/// [`CALLERS`] requests at once, spread over the keys in turn; waits for all.
async fn send_all<S, ResBody>(service: &S)
where
    S: Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<ResBody>,
        > + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
    ResBody: Send + 'static,
{
    let mut tasks = JoinSet::new();
    for caller in 0..CALLERS {
        let service = service.clone();
        tasks.spawn(async move {
            let mut request = request();
            request
                .extensions_mut()
                .insert(User(caller % STAMPEDE_KEYS));
            let response = service.oneshot(request).await.expect("request");
            assert!(response.status().is_success());
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("caller task");
    }
}

/// For callgrind with its cache simulator: `KEYED_INSTRUCTIONS=N` sends N requests through
/// each variant of `keyed`, in a function of its own per variant, instead of running
/// criterion. Instructions and last-level cache misses per request are then the counts inside
/// each `drive_*` divided by N (take two values of N and divide the difference):
///
/// ```text
/// KEYED_INSTRUCTIONS=100000 valgrind --tool=callgrind --cache-sim=yes \
///     --toggle-collect='*drive_keyed*' target/release/deps/keyed-<hash>
/// ```
mod instructions {
    use super::*;

    #[inline(never)]
    fn drive<S, ResBody>(mut service: S, n: u64, same_key: bool)
    where
        S: Service<
                http::Request<http_body_util::Full<bytes::Bytes>>,
                Response = http::Response<ResBody>,
            >,
        S::Error: std::fmt::Debug,
    {
        let mut users = RandomUser(0x2545_F491_4F6C_DD1D);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..n {
            let user = if same_key { User(7) } else { users.next() };
            black_box(send(&mut service, user, &mut cx));
        }
    }

    #[inline(never)]
    fn drive_single_token(layer: &RefreshLayer, n: u64) {
        drive(layer.layer(api()), n, false);
    }

    #[inline(never)]
    fn drive_keyed_one_key(layer: &KeyedRefreshLayer<User>, n: u64) {
        drive(layer.layer(api()), n, true);
    }

    #[inline(never)]
    fn drive_keyed_10000(layer: &KeyedRefreshLayer<User>, n: u64) {
        drive(layer.layer(api()), n, false);
    }

    #[inline(never)]
    fn drive_map_floor_10000(service: MapFloor<common::Api>, n: u64) {
        drive(service, n, false);
    }

    pub(super) fn run(n: u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let _entered = rt.enter();
        let single = RefreshLayer::new(InMemory);
        rt.block_on(single.refresh()).expect("priming refresh");
        let layer = KeyedRefreshLayer::builder(Users)
            .max_cells(2 * KEYS as usize)
            .build();
        rt.block_on(async {
            for user in 0..KEYS {
                layer.refresh(&User(user)).await.expect("priming refresh");
            }
        });
        drive_single_token(&single, n);
        drive_keyed_one_key(&layer, n);
        drive_keyed_10000(&layer, n);
        drive_map_floor_10000(MapFloor::layer(api()), n);
    }
}

criterion_group!(benches, keyed, keyed_stampede);

fn main() {
    if let Ok(n) = std::env::var("KEYED_INSTRUCTIONS") {
        instructions::run(n.parse().expect("a number of requests"));
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
