//! What the shared store costs and saves (`store::SharedSource` on a real `redis-server`,
//! which the bench starts on a free port of 127.0.0.1).
//!
//! Before measuring, token requests per token lifetime for N = 1, 2, 4 and 8 replica
//! processes, with the store and without it: the bench starts itself N times as replicas
//! (`STORE_BENCH_REPLICA`), each sending requests for 4 s through a layer whose token lives
//! 1 s (a client credentials grant 10 ms away, refreshed ahead at half its lifetime), and adds
//! up the token requests they made. It checks that the fleet with the store asks no more
//! than one process does, and that without it each process asks for itself.
//!
//! Then the same count for N layers in one process, every replica's token rejected at once
//! each lifetime: exactly one token request per lifetime with the store (checked).
//!
//! Group `store_refresh`: one refresh of a client credentials grant whose token endpoint is
//! 10 ms away (a source that sleeps 10 ms), in process (`in_process`, the baseline) and
//! through the store (`through_store`: read, lease, read again, the token request, the
//! versioned write, the release; the stored token never taken, so each refresh asks).
//!
//! ```text
//! cargo bench --features redis --bench store
//! ```

mod common;

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
#[derive(Clone)]
struct Remote(Arc<AtomicU64>, Duration);

impl Default for Remote {
    fn default() -> Self {
        Remote(Arc::default(), Duration::from_secs(3600))
    }
}

impl TokenSource for Remote {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        let lifetime = self.1;
        Box::pin(async move {
            tokio::time::sleep(LATENCY).await;
            Ok(TokenSet::new(AccessToken::new(format!("at-{n}"))).with_expires_in(lifetime))
        })
    }
}

/// How long a replica process runs, and how long its tokens live.
const REPLICA_RUN: Duration = Duration::from_secs(4);
const REPLICA_LIFETIME: Duration = Duration::from_secs(1);

/// A replica process: requests for [`REPLICA_RUN`], then prints its token requests.
fn replica(redis_url: &str, shared: bool) {
    use tower::{Layer, ServiceExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let remote = Remote(Arc::default(), REPLICA_LIFETIME);
    let requests = remote.0.clone();
    rt.block_on(async {
        let layer = if shared {
            let store = RedisStore::connect(redis_url, "processes:")
                .await
                .expect("a store");
            let source = SharedSource::new(remote, store, keyring(), "svc")
                .min_lifetime(REPLICA_LIFETIME * 11 / 20);
            RefreshLayer::new(source)
        } else {
            RefreshLayer::new(remote)
        };
        let service = layer.layer(common::api());
        let until = Instant::now() + REPLICA_RUN;
        while Instant::now() < until {
            service
                .clone()
                .oneshot(common::request())
                .await
                .expect("a request");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    println!("{}", requests.load(Ordering::Relaxed));
}

/// Token requests per lifetime of `processes` replica processes together.
fn processes_per_lifetime(redis: &Redis, processes: usize, shared: bool) -> f64 {
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .output();
    let me = std::env::current_exe().expect("this bench");
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&me)
                .env("STORE_BENCH_REPLICA", redis.url())
                .env("STORE_BENCH_SHARED", if shared { "1" } else { "0" })
                .stdout(Stdio::piped())
                .spawn()
                .expect("a replica process")
        })
        .collect();
    let total: u64 = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("a replica");
            assert!(output.status.success());
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<u64>()
                .expect("a count")
        })
        .sum();
    total as f64 / (REPLICA_RUN.as_secs_f64() / REPLICA_LIFETIME.as_secs_f64())
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

    println!("token requests per token lifetime, N replica processes for 4 s of 1 s tokens:");
    let one = processes_per_lifetime(&redis, 1, false);
    for processes in [1, 2, 4, 8] {
        let alone = processes_per_lifetime(&redis, processes, false);
        let shared = processes_per_lifetime(&redis, processes, true);
        println!("  N = {processes}: without the store {alone:.2}, with it {shared:.2}");
        // Each process alone refreshes like one process; the fleet with the store, like one.
        assert!(
            alone >= 0.8 * one * processes as f64,
            "{alone} for {processes}"
        );
        assert!(
            shared <= one + 0.5,
            "the fleet asks more than one process: {shared}"
        );
    }

    println!("token requests per lifetime (N layers refreshing together):");
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
    if let Ok(redis_url) = std::env::var("STORE_BENCH_REPLICA") {
        replica(
            &redis_url,
            std::env::var("STORE_BENCH_SHARED").as_deref() == Ok("1"),
        );
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
