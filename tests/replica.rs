//! One replica of a service, as an OS process of its own: `tests/all/replicas.rs` starts four
//! of these against one oidc-provider and one redis-server, and reads what each saw.
//!
//! Run alone (as `cargo test` does), it has nothing to do and says so. Started with
//! `REPLICA_STORE` set, it signs nothing in: it takes the refresh token it is given, shares
//! it through the store with the other replicas, sends requests for `REPLICA_SECS` seconds
//! from `REPLICA_TASKS` concurrent tasks, asks the server whether each request's token was
//! still active, and prints one JSON line of counts. With `REPLICA_SIGN_OUT_AFTER_MS` set, it
//! signs the user out that long after its start, telling the server nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oauth_refresh::BoxFuture;
use oauth_refresh::store::{Keyring, RedisStore, SharedSource, StoreKey};
use oauth_refresh::{BoxError, ReauthRequired, RefreshLayer, RefreshTokenGrant, Revoke};
use tower::{Layer, Service, ServiceExt};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    inactive: AtomicU64,
    errors: AtomicU64,
    /// From the start until the first token was there.
    first_token_ms: AtomicU64,
    /// Keyed: requests whose token the server issued for another user than theirs.
    wrong_user: AtomicU64,
    /// Requests refused with `ReauthRequired` `signed_out` (here or by another replica).
    signed_out: AtomicU64,
    /// From the start until the last request that got a token.
    last_sent_ms: AtomicU64,
}

fn lease() -> Duration {
    let ms = std::env::var("REPLICA_LEASE_MS").map_or(10_000, |ms| ms.parse().unwrap());
    Duration::from_millis(ms)
}

async fn hold_the_lease() {
    use oauth_refresh::store::{LeaseOwner, TokenStore};
    let store = RedisStore::connect(&env("REPLICA_STORE"), "replicas:")
        .await
        .unwrap();
    assert!(
        store
            .try_lease("alice", &LeaseOwner::random(), lease())
            .await
            .unwrap()
    );
    println!("leased");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

fn main() {
    if std::env::var_os("REPLICA_STORE").is_none() {
        println!("replica: started by tests/all/replicas.rs, nothing to do alone");
        return;
    }
    if std::env::var_os("REPLICA_HOLD_LEASE").is_some() {
        // A replica that took the lease to refresh, then is killed (SIGKILL) before it ends.
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(hold_the_lease());
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let counts = match std::env::var("REPLICA_USERS") {
        Ok(users) => runtime.block_on(run_keyed(users)),
        Err(_) => runtime.block_on(run()),
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": counts.requests.load(Ordering::Relaxed),
            "inactive": counts.inactive.load(Ordering::Relaxed),
            "errors": counts.errors.load(Ordering::Relaxed),
            "first_token_ms": counts.first_token_ms.load(Ordering::Relaxed),
            "wrong_user": counts.wrong_user.load(Ordering::Relaxed),
            "signed_out": counts.signed_out.load(Ordering::Relaxed),
            "last_sent_ms": counts.last_sent_ms.load(Ordering::Relaxed),
        })
    );
}

async fn run() -> Arc<Counts> {
    let store = RedisStore::connect(&env("REPLICA_STORE"), "replicas:")
        .await
        .unwrap();
    let keys = Keyring::new(StoreKey::new("replica-test", &[9; 32]).unwrap());
    let grant = RefreshTokenGrant::new(
        env("REPLICA_TOKEN_URL"),
        env("REPLICA_CLIENT_ID"),
        env("REPLICA_REFRESH_TOKEN"),
    )
    .client_secret(env("REPLICA_CLIENT_SECRET"));
    // A token taken from the store needs to be FRESH here: more than the refresh-ahead window
    // (half of a 3 s lifetime) left.
    let shared = SharedSource::new(grant, store, keys, "alice")
        .lease(lease())
        .min_lifetime(Duration::from_millis(1600));
    let layer = RefreshLayer::builder(shared)
        .refresh_timeout(Duration::from_secs(5))
        .build();

    let counts = Arc::new(Counts::default());
    let api = Api {
        http: reqwest::Client::new(),
        issuer: env("REPLICA_ISSUER"),
        counts: counts.clone(),
    };
    let began = Instant::now();
    if let Ok(after) = std::env::var("REPLICA_SIGN_OUT_AFTER_MS") {
        let (layer, after) = (layer.clone(), Duration::from_millis(after.parse().unwrap()));
        tokio::spawn(async move {
            tokio::time::sleep_until((began + after).into()).await;
            // No revocation URL: the server is not told, and the refresh token stays good
            // there. Only the store stops the other replicas.
            let not_told = layer.sign_out(Revoke::RefreshToken).await;
            eprintln!("replica: signed out ({not_told:?})");
        });
    }
    layer.refresh().await.expect("a first token");
    let first_token_ms = u64::try_from(began.elapsed().as_millis()).unwrap();
    counts
        .first_token_ms
        .store(first_token_ms, Ordering::Relaxed);
    let service = layer.layer(api);
    let secs: u64 = env("REPLICA_SECS").parse().unwrap();
    let tasks: usize = env("REPLICA_TASKS").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (service, counts) = (service.clone(), counts.clone());
        running.push(tokio::spawn(async move {
            while Instant::now() < until {
                match service
                    .clone()
                    .oneshot(http::Request::new(String::new()))
                    .await
                {
                    Ok(_) => {
                        let ms = u64::try_from(began.elapsed().as_millis()).unwrap();
                        counts.last_sent_ms.fetch_max(ms, Ordering::Relaxed);
                        counts.requests.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(error)
                        if error
                            .downcast_ref::<ReauthRequired>()
                            .is_some_and(|reauth| reauth.error() == "signed_out") =>
                    {
                        counts.signed_out.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(error) => {
                        eprintln!("replica: request failed: {error}");
                        counts.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for task in running {
        task.await.unwrap();
    }
    counts
}

/// Keyed: `users` is `user=refresh_token` pairs, one per line; every replica shares each
/// user's grant through the store, and requests go for users at random.
async fn run_keyed(users: String) -> Arc<Counts> {
    use std::collections::HashMap;

    use oauth_refresh::TokenSource;
    use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
    use oauth_refresh::store::SharedFactory;

    let users: HashMap<String, String> = users
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(user, token)| (user.to_owned(), token.to_owned()))
        .collect();
    let names: Vec<String> = users.keys().cloned().collect();
    let (token_url, client_id, secret) = (
        env("REPLICA_TOKEN_URL"),
        env("REPLICA_CLIENT_ID"),
        env("REPLICA_CLIENT_SECRET"),
    );
    let factory = factory_fn(move |user: String| {
        let grant = users.get(&user).map(|refresh_token| {
            RefreshTokenGrant::new(&token_url, &client_id, refresh_token.clone())
                .client_secret(secret.clone())
        });
        async move { Ok(grant.map(|grant| Box::new(grant) as Box<dyn TokenSource>)) }
    });
    let store = RedisStore::connect(&env("REPLICA_STORE"), "replicas:")
        .await
        .unwrap();
    let keys = Keyring::new(StoreKey::new("replica-test", &[9; 32]).unwrap());
    let shared = SharedFactory::new(factory, store, keys, |user: &String| format!("user:{user}"))
        .lease(lease())
        .min_lifetime(Duration::from_millis(1600));
    let layer = KeyedRefreshLayer::<String>::builder(shared)
        .refresh_timeout(Duration::from_secs(5))
        .build();
    let counts = Arc::new(Counts::default());
    let api = Api {
        http: reqwest::Client::new(),
        issuer: env("REPLICA_ISSUER"),
        counts: counts.clone(),
    };
    let service = layer.layer(api);
    let secs: u64 = env("REPLICA_SECS").parse().unwrap();
    let tasks: usize = env("REPLICA_TASKS").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut running = Vec::new();
    for task in 0..tasks {
        let (service, counts, names) = (service.clone(), counts.clone(), names.clone());
        running.push(tokio::spawn(async move {
            let mut next = task * 7 + std::process::id() as usize;
            while Instant::now() < until {
                next = next.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let user = names[(next >> 8) % names.len()].clone();
                let mut request = http::Request::new(String::new());
                request.extensions_mut().insert(user.clone());
                request.extensions_mut().insert(ExpectedUser(user));
                match service.clone().oneshot(request).await {
                    Ok(_) => counts.requests.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        eprintln!("replica: request failed: {error}");
                        counts.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for task in running {
        task.await.unwrap();
    }
    counts
}

/// The user a keyed request was sent for, for the API to check the token against.
#[derive(Clone)]
struct ExpectedUser(String);

/// The API: asks the server whether the token each request carries is still active. A named
/// service rather than `service_fn`, whose boxed-error future trips rustc's `Send` check once
/// spawned.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    issuer: String,
    counts: Arc<Counts>,
}

impl Service<http::Request<String>> for Api {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<String>) -> Self::Future {
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = header
            .strip_prefix("Bearer ")
            .unwrap_or_default()
            .to_owned();
        let expected = request
            .extensions()
            .get::<ExpectedUser>()
            .map(|u| u.0.clone());
        let (http, issuer, counts) = (self.http.clone(), self.issuer.clone(), self.counts.clone());
        Box::pin(async move {
            let mut url = url::Url::parse(&format!("{issuer}/__test/active"))?;
            url.query_pairs_mut().append_pair("token", &token);
            let body = http.get(url).send().await?.bytes().await?;
            let active: serde_json::Value = serde_json::from_slice(&body)?;
            if active["active"] != true {
                counts.inactive.fetch_add(1, Ordering::Relaxed);
            } else if let Some(expected) = expected
                && active["sub"] != expected.as_str()
            {
                counts.wrong_user.fetch_add(1, Ordering::Relaxed);
            }
            Ok(http::Response::new(String::new()))
        })
    }
}
