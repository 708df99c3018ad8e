//! What the shared store costs and saves (`store::SharedSource` on a real `redis-server`,
//! which the bench starts on a free port of 127.0.0.1).
//!
//! Before measuring, token requests per token lifetime for N = 1, 2, 4 and 8 replicas, with
//! the store and without it: N layers, each with its own store connection, standing for N
//! processes (the proof with OS processes is `tests/all/replicas.rs`). Each lifetime, every
//! replica's token is rejected at once and all refresh together; the bench counts the token
//! requests the grant received and checks that with the store there is exactly one.
//!
//! Group `store_refresh`: one refresh of a client credentials grant whose token endpoint is
//! 10 ms away (a source that sleeps 10 ms), in process (`in_process`, the baseline) and
//! through the store (`through_store`: read, lease, read again, the token request, the
//! versioned write, the release; the stored token never taken, so each refresh asks).
//!
//! ```text
//! cargo bench --features redis --bench store
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use oauth_refresh::store::{Keyring, RedisStore, SharedSource, StoreKey};
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshLayer, TokenRequest, TokenSet, TokenSource,
};

const LATENCY: Duration = Duration::from_millis(10);

/// Client credentials 10 ms away: counts its token requests.
#[derive(Clone, Default)]
struct Remote(Arc<AtomicU64>);

impl TokenSource for Remote {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(async move {
            tokio::time::sleep(LATENCY).await;
            Ok(TokenSet::new(AccessToken::new(format!("at-{n}")))
                .with_expires_in(Duration::from_secs(3600)))
        })
    }
}

fn keyring() -> Keyring {
    Keyring::new(StoreKey::new("bench", &[1; 32]).expect("a key"))
}

/// A `redis-server` without persistence, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Token requests per lifetime for `replicas` replicas, with the store or without.
async fn requests_per_lifetime(redis: &Redis, replicas: usize, shared: bool) -> f64 {
    const LIFETIMES: u64 = 5;
    let remote = Remote::default();
    let prefix = format!("count-{replicas}-{shared}:");
    let mut layers = Vec::new();
    for _ in 0..replicas {
        let layer = if shared {
            let store = RedisStore::connect(&redis.url(), prefix.as_str())
                .await
                .expect("a store");
            RefreshLayer::new(SharedSource::new(remote.clone(), store, keyring(), "svc"))
        } else {
            RefreshLayer::new(remote.clone())
        };
        layers.push(layer);
    }
    for _ in 0..LIFETIMES {
        let refreshes: Vec<_> = layers
            .iter()
            .map(|layer| {
                let layer = layer.clone();
                tokio::spawn(async move {
                    layer.invalidate();
                    layer.refresh().await
                })
            })
            .collect();
        for refresh in refreshes {
            refresh.await.expect("a task").expect("a refresh");
        }
    }
    remote.0.load(Ordering::Relaxed) as f64 / LIFETIMES as f64
}

fn store(c: &mut Criterion) {
    let redis = Redis::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    println!("token requests per lifetime (N replicas refreshing together):");
    for replicas in [1, 2, 4, 8] {
        let alone = rt.block_on(requests_per_lifetime(&redis, replicas, false));
        let shared = rt.block_on(requests_per_lifetime(&redis, replicas, true));
        println!("  N = {replicas}: without the store {alone}, with it {shared}");
        assert_eq!(alone, replicas as f64, "each replica alone asks once");
        assert_eq!(shared, 1.0, "one token request per lifetime for the fleet");
    }

    let in_process = RefreshLayer::new(Remote::default());
    let through_store = rt.block_on(async {
        let store = RedisStore::connect(&redis.url(), "latency:")
            .await
            .expect("a store");
        // The stored token is never taken: each measured refresh goes to the token endpoint.
        let shared = SharedSource::new(Remote::default(), store, keyring(), "svc")
            .min_lifetime(Duration::from_secs(365 * 24 * 3600));
        RefreshLayer::new(shared)
    });
    let mut group = c.benchmark_group("store_refresh");
    group.sample_size(20);
    group.bench_function("in_process", |b| {
        b.iter(|| rt.block_on(in_process.refresh()).expect("a refresh"));
    });
    group.bench_function("through_store", |b| {
        b.iter(|| rt.block_on(through_store.refresh()).expect("a refresh"));
    });
    group.finish();
}

criterion_group!(benches, store);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
