//! A request whose token is STALE while its refresh runs costs what a FRESH one does.
//!
//! One group, `refresh_ahead`, sends the hot path's request (see `hot_path.rs`) through three
//! tower stacks over the same trivial inner service:
//!
//! - `static_header`: tower-http's `SetRequestHeader`, for scale;
//! - `fresh`: `RefreshLayer` with a token far from expiry;
//! - `stale_refresh_running`: `RefreshLayer` with a token inside its refresh-ahead window and
//!   the background refresh it started still running (its token endpoint never answers).
//!
//! The runtime's clock is paused (tokio's `start_paused`) so that the bench can move one
//! layer's token into its window; both layers read that same clock, whose reads cost more
//! than an unpaused clock's, so the absolute figures here are above `hot_path`'s. Compare
//! `stale_refresh_running` with `fresh`: equal means no request waits for the refresh.
//!
//! ```text
//! cargo bench --bench refresh_ahead
//! ```

mod common;

use std::future::pending;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshLayer, RefreshLayerBuilder, TokenRequest,
    TokenSet, TokenSource,
};
use tower::Layer;
use tower_http::set_header::SetRequestHeaderLayer;

use common::{ACCESS_TOKEN, BEARER, api, send_ready};

const LIFETIME: Duration = Duration::from_secs(3600);

/// Answers the first token request at once; every later one never answers, so a refresh
/// started in the window stays running for the whole measurement.
#[derive(Default)]
struct FirstThenHang {
    calls: AtomicU64,
}

impl TokenSource for FirstThenHang {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        let first = self.calls.fetch_add(1, Ordering::Relaxed) == 0;
        Box::pin(async move {
            if !first {
                pending::<()>().await;
            }
            Ok(TokenSet::new(AccessToken::new(ACCESS_TOKEN)).with_expires_in(LIFETIME))
        })
    }
}

fn refresh_ahead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();
    let api = api();
    let window = Duration::from_secs(60);

    let stale_source = Arc::new(FirstThenHang::default());
    let stale = RefreshLayerBuilder::from_arc(stale_source.clone())
        .refresh_ahead(window)
        .build();
    rt.block_on(stale.refresh()).expect("priming refresh");
    // 30 s before expiry: inside the window (the last 48 to 60 s of the hour, jittered).
    rt.block_on(tokio::time::advance(LIFETIME - Duration::from_secs(30)));
    // Primed now, this one's token has its whole hour ahead.
    let fresh = RefreshLayer::builder(FirstThenHang::default())
        .refresh_ahead(window)
        .build();
    rt.block_on(fresh.refresh()).expect("priming refresh");

    let mut fresh_service = fresh.layer(api);
    let mut stale_service = stale.layer(api);
    let mut cx = Context::from_waker(Waker::noop());
    // The first STALE request starts the background refresh; let its task reach the token
    // endpoint, which never answers.
    black_box(send_ready(&mut stale_service, &mut cx));
    rt.block_on(tokio::task::yield_now());
    assert_eq!(
        stale_source.calls.load(Ordering::Relaxed),
        2,
        "refresh started"
    );

    let mut group = c.benchmark_group("refresh_ahead");
    group.bench_function("static_header", |b| {
        let mut service =
            SetRequestHeaderLayer::overriding(AUTHORIZATION, HeaderValue::from_static(BEARER))
                .layer(api);
        b.iter(|| black_box(send_ready(&mut service, &mut cx)));
    });
    group.bench_function("fresh", |b| {
        b.iter(|| black_box(send_ready(&mut fresh_service, &mut cx)));
    });
    group.bench_function("stale_refresh_running", |b| {
        b.iter(|| black_box(send_ready(&mut stale_service, &mut cx)));
    });
    group.finish();

    // The measured STALE requests joined the one running refresh rather than starting more,
    // and were sent with the old token, still valid: no request waited (each completed on its
    // first poll, or `send_ready` would have panicked).
    assert_eq!(stale_source.calls.load(Ordering::Relaxed), 2);
    let stats = stale.stats();
    assert_eq!((stats.refreshes, stats.generation), (2, 1), "{stats:?}");
    assert_eq!(fresh.stats().refreshes, 1, "{:?}", fresh.stats());
}

criterion_group!(benches, refresh_ahead);
criterion_main!(benches);
