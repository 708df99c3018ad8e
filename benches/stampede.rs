//! Many callers crossing expiry at once: one token request, and a wait of one refresh.
//!
//! One group, `stampede`, sends `n` concurrent requests (1 or 10,000 tasks) through clones of
//! one tower service and waits for all of them. In `fresh/n` the token is valid; in
//! `expired/n` it expired just before, so every caller needs the refresh and they all share
//! one. The token source takes 100 ms per request.
//!
//! The runtime's clock is paused (tokio's `start_paused`): between iterations the bench moves
//! it past the token's expiry, and the source's 100 ms pass as soon as every task waits. So
//! the wall time measured is what the callers cost the machine (spawning, waiting on the
//! shared outcome, sending), while the clock the callers see tells how long they waited.
//! After measuring, the bench checks that each `expired` iteration made exactly one token
//! request and that no caller waited longer than one refresh: 10,000 callers see one refresh,
//! not a queue of them.
//!
//! Compare `expired/10000` with `fresh/10000`: the difference is what waiting for the shared
//! refresh costs 10,000 callers.
//!
//! ```text
//! cargo bench --bench stampede
//! ```

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshLayer, TokenRequest, TokenSet, TokenSource,
};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use common::{ACCESS_TOKEN, api, request};

/// How long one token request takes.
const REFRESH_LATENCY: Duration = Duration::from_millis(100);
/// How long each token lives.
const LIFETIME: Duration = Duration::from_secs(600);

/// A token endpoint in memory that takes [`REFRESH_LATENCY`] and counts its calls.
#[derive(Default)]
struct SlowSource {
    calls: AtomicU64,
}

impl TokenSource for SlowSource {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            tokio::time::sleep(REFRESH_LATENCY).await;
            Ok(TokenSet::new(AccessToken::new(ACCESS_TOKEN)).with_expires_in(LIFETIME))
        })
    }
}

/// What the measured iterations saw, checked after measuring.
#[derive(Default)]
struct Seen {
    expired_iterations: u64,
    longest_wait: Duration,
}

fn stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let source = Arc::new(SlowSource::default());
    let layer = RefreshLayer::from_arc(source.clone());
    rt.block_on(layer.refresh()).expect("priming refresh");
    let api = api();
    let service = layer.layer(api);

    let mut seen = Seen::default();
    let mut group = c.benchmark_group("stampede");
    group.sample_size(20);
    for callers in [1, 10_000] {
        for expired in [false, true] {
            let name = if expired { "expired" } else { "fresh" };
            group.bench_with_input(BenchmarkId::new(name, callers), &callers, |b, &callers| {
                b.iter_custom(|iterations| {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iterations {
                        rt.block_on(async {
                            // Unmeasured: the token expires before the callers come.
                            if expired {
                                tokio::time::advance(LIFETIME).await;
                                seen.expired_iterations += 1;
                            }
                        });
                        let began = std::time::Instant::now();
                        let longest = rt.block_on(send_all(&service, callers));
                        measured += began.elapsed();
                        seen.longest_wait = seen.longest_wait.max(longest);
                    }
                    measured
                });
            });
        }
    }
    group.finish();

    // One token request to prime, then one per expiry, whatever the number of callers.
    assert_eq!(
        source.calls.load(Ordering::Relaxed),
        1 + seen.expired_iterations,
        "one token request per expiry"
    );
    assert!(
        seen.longest_wait <= REFRESH_LATENCY,
        "a caller waited {:?}, more than one refresh ({REFRESH_LATENCY:?})",
        seen.longest_wait
    );
}

/// Sends `callers` requests at once and waits for all of them; returns the longest time one
/// of them took by the runtime's clock.
async fn send_all<S, ResBody>(service: &S, callers: usize) -> Duration
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
    ResBody: Send + 'static,
{
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let service = service.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let response = service.oneshot(request()).await.expect("request");
            assert!(response.status().is_success());
            began.elapsed()
        });
    }
    let mut longest = Duration::ZERO;
    while let Some(waited) = tasks.join_next().await {
        longest = longest.max(waited.expect("caller task"));
    }
    longest
}

criterion_group!(benches, stampede);
criterion_main!(benches);
