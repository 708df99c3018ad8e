//! [`SharedSource`]: replicas sharing one grant through a real `redis-server`. Each replica is
//! a layer of its own with its own store connection here; the proof with OS processes is in
//! `replicas.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth_refresh::store::{Keyring, LeaseOwner, RedisStore, SharedSource, StoreKey, TokenStore};
use oauth_refresh::{
    AccessToken, BoxFuture, ReauthRequired, RefreshError, RefreshLayer, RefreshToken, TokenRequest,
    TokenSet, TokenSource, TransientKind,
};
use tower::{Layer, ServiceExt};

use crate::redis_server::RedisServer;
use crate::support::{Api, get};

const LIFETIME: Duration = Duration::from_secs(3600);

fn keyring() -> Keyring {
    Keyring::new(StoreKey::new("test-key", &[5; 32]).unwrap())
}

/// An authorization server in memory that rotates refresh tokens and, like oidc-provider,
/// refuses a refresh token presented twice (and counts it).
#[derive(Clone, Default)]
struct Rotating(Arc<Mutex<Server>>);

#[derive(Default)]
struct Server {
    issued: u32,
    current: Option<String>,
    presented: HashSet<String>,
    requests: u32,
    reused: u32,
}

impl Rotating {
    fn new() -> Self {
        let server = Rotating::default();
        server.0.lock().unwrap().current = Some("rt-0".into());
        server
    }

    fn requests(&self) -> u32 {
        self.0.lock().unwrap().requests
    }

    fn reused(&self) -> u32 {
        self.0.lock().unwrap().reused
    }

    /// A replica's grant: starts from the refresh token every replica was configured with.
    fn grant(&self) -> RotatingGrant {
        RotatingGrant(self.clone())
    }
}

struct RotatingGrant(Rotating);

impl TokenSource for RotatingGrant {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            // A token request takes a while, so that replicas overlap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut server = self.0.0.lock().unwrap();
            server.requests += 1;
            let presented = request.refresh_token.map(|t| t.secret().to_owned());
            let Some(presented) = presented else {
                return Err(ReauthRequired::new("invalid_request").into());
            };
            if !server.presented.insert(presented.clone())
                || server.current.as_ref() != Some(&presented)
            {
                server.reused += 1;
                return Err(ReauthRequired::new("invalid_grant").into());
            }
            server.issued += 1;
            let n = server.issued;
            server.current = Some(format!("rt-{n}"));
            Ok(TokenSet::new(AccessToken::new(format!("at-{n}")))
                .with_refresh_token(format!("rt-{n}"))
                .with_expires_in(LIFETIME))
        })
    }

    fn grant(&self) -> &str {
        "refresh_token"
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        Some(RefreshToken::new("rt-0"))
    }
}

/// Client credentials in memory: counts its token requests.
#[derive(Clone, Default)]
struct Machine(Arc<Mutex<u32>>);

impl TokenSource for Machine {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let n = {
                let mut requests = self.0.lock().unwrap();
                *requests += 1;
                *requests
            };
            Ok(TokenSet::new(AccessToken::new(format!("cc-{n}"))).with_expires_in(LIFETIME))
        })
    }

    fn grant(&self) -> &str {
        "client_credentials"
    }
}

async fn replica(server: &RedisServer, source: impl TokenSource) -> RefreshLayer {
    RefreshLayer::new(shared(server, source).await)
}

async fn shared(server: &RedisServer, source: impl TokenSource) -> SharedSource {
    let store = RedisStore::connect_with_timeout(&server.url(), "t:", Duration::from_millis(500))
        .await
        .unwrap();
    SharedSource::new(source, store, keyring(), "svc").lease(Duration::from_secs(5))
}

/// Every replica's token rejected at once (a revocation): all refresh together.
async fn refresh_together(replicas: &[RefreshLayer]) {
    let refreshes: Vec<_> = replicas
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
        refresh.await.unwrap().unwrap();
    }
}

/// The token a request through `layer` carries.
async fn token_of(layer: &RefreshLayer) -> String {
    let api = Api::open();
    layer.layer(api.clone()).oneshot(get()).await.unwrap();
    let header = api.seen().pop().flatten().expect("a token");
    header
        .strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_owned()
}

#[tokio::test]
async fn a_second_replica_takes_the_first_ones_token_without_a_token_request() {
    let server = RedisServer::start();
    let machine = Machine::default();
    let a = replica(&server, machine.clone()).await;
    let b = replica(&server, machine.clone()).await;
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!(*machine.0.lock().unwrap(), 1, "one token request for both");
    assert_eq!(token_of(&a).await, token_of(&b).await);
}

#[tokio::test]
async fn replicas_refreshing_at_once_make_one_token_request_per_round() {
    let server = RedisServer::start();
    let machine = Machine::default();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(replica(&server, machine.clone()).await);
    }
    for round in 1..=5u32 {
        // Every replica's token rejected at once (a revocation): all refresh together.
        refresh_together(&replicas).await;
        assert_eq!(
            *machine.0.lock().unwrap(),
            round,
            "one token request in round {round}"
        );
        let mut tokens = HashSet::new();
        for layer in &replicas {
            tokens.insert(token_of(layer).await);
        }
        assert_eq!(
            tokens.len(),
            1,
            "every replica holds the one token: {tokens:?}"
        );
    }
}

#[tokio::test]
async fn replicas_never_present_a_rotated_refresh_token_twice() {
    let server = RedisServer::start();
    let rotating = Rotating::new();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(replica(&server, rotating.grant()).await);
    }
    for _ in 0..6 {
        refresh_together(&replicas).await;
    }
    assert_eq!(rotating.reused(), 0, "a refresh token was presented twice");
    assert_eq!(rotating.requests(), 6, "one refresh per round");
}

#[tokio::test]
async fn replicas_that_refresh_each_time_present_the_fleets_newest_refresh_token() {
    let server = RedisServer::start();
    let rotating = Rotating::new();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        // Never taking a stored token: each refresh is a token request, under the lease, and
        // each replica's own refresh token is older than the fleet's by then.
        let source = shared(&server, rotating.grant())
            .await
            .min_lifetime(2 * LIFETIME);
        replicas.push(RefreshLayer::new(source));
    }
    for _ in 0..3 {
        refresh_together(&replicas).await;
    }
    assert_eq!(rotating.requests(), 12);
    assert_eq!(
        rotating.reused(),
        0,
        "a replica presented its own, rotated-out token"
    );
}

#[tokio::test]
async fn without_redis_client_credentials_refresh_alone_and_a_rotating_grant_waits() {
    let mut server = RedisServer::start();
    let machine = Machine::default();
    let cc = replica(&server, machine.clone()).await;
    let rotating = Rotating::new();
    let user = replica(&server, rotating.grant()).await;
    cc.refresh().await.unwrap();
    user.refresh().await.unwrap();
    let user_token = token_of(&user).await;

    server.stop();
    // Client credentials: a token request of its own, and the new token in use.
    cc.invalidate();
    cc.refresh().await.unwrap();
    assert_eq!(*machine.0.lock().unwrap(), 2);
    assert_eq!(token_of(&cc).await, "cc-2");
    // The rotating grant presents nothing without the lease, and keeps serving its token.
    let requests = rotating.requests();
    let error = user
        .refresh()
        .await
        .expect_err("no refresh without the store");
    let RefreshError::Transient(transient) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(transient.kind(), TransientKind::StoreUnavailable);
    assert_eq!(rotating.requests(), requests, "nothing presented");
    assert_eq!(token_of(&user).await, user_token);

    // Redis is back (empty: no persistence in this test): the fleet carries on.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while user.refresh().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no refresh after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rotating.reused(), 0);
}

#[tokio::test]
async fn an_entry_that_does_not_open_is_refreshed_over() {
    let server = RedisServer::start();
    let machine = Machine::default();
    let a = replica(&server, machine.clone()).await;
    a.refresh().await.unwrap();
    // Altered in Redis (or sealed under a key this replica lacks).
    let raw = RedisStore::connect(&server.url(), "t:").await.unwrap();
    let entry = raw.read("svc").await.unwrap().unwrap();
    let mut altered = entry.value.clone();
    *altered.last_mut().unwrap() ^= 1;
    raw.write("svc", Some(entry.version), &altered)
        .await
        .unwrap();

    let b = replica(&server, machine.clone()).await;
    b.refresh().await.unwrap();
    assert_eq!(
        *machine.0.lock().unwrap(),
        2,
        "the altered entry was not taken"
    );
    assert_eq!(token_of(&b).await, "cc-2");
    // Written over: a third replica takes it.
    let c = replica(&server, machine.clone()).await;
    c.refresh().await.unwrap();
    assert_eq!(token_of(&c).await, "cc-2");
    assert_eq!(*machine.0.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_lease_left_by_a_dead_replica_delays_the_others_by_at_most_the_lease() {
    let server = RedisServer::start();
    let machine = Machine::default();
    let lease = Duration::from_millis(800);
    let store = RedisStore::connect(&server.url(), "t:").await.unwrap();
    // A replica took the lease and died (SIGKILL): nobody releases it.
    assert!(
        store
            .try_lease("svc", &LeaseOwner::random(), lease)
            .await
            .unwrap()
    );
    let began = Instant::now();
    let layer =
        RefreshLayer::new(SharedSource::new(machine.clone(), store, keyring(), "svc").lease(lease));
    layer.refresh().await.unwrap();
    let waited = began.elapsed();
    assert!(waited >= lease - Duration::from_millis(100), "{waited:?}");
    assert!(waited <= lease + Duration::from_millis(700), "{waited:?}");
    assert_eq!(*machine.0.lock().unwrap(), 1);
}

#[tokio::test]
async fn stored_entries_hold_no_token_in_clear() {
    let server = RedisServer::start();
    let rotating = Rotating::new();
    let a = replica(&server, rotating.grant()).await;
    a.refresh().await.unwrap();
    let raw = RedisStore::connect(&server.url(), "t:").await.unwrap();
    let entry = raw.read("svc").await.unwrap().unwrap();
    for secret in [&b"at-1"[..], b"rt-1"] {
        assert!(!entry.value.windows(secret.len()).any(|w| w == secret));
    }
    assert!(keyring().open("svc", &entry.value).is_ok());
}

/// Keyed replicas: each key its own entry and lease, shared by every replica.
#[tokio::test]
async fn keyed_replicas_share_one_refresh_per_key() {
    use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
    use oauth_refresh::store::SharedFactory;

    let server = RedisServer::start();
    let machines: Arc<Mutex<std::collections::HashMap<String, Machine>>> = Arc::default();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let machines = machines.clone();
        let users = factory_fn(move |user: String| {
            let machine = machines.lock().unwrap().entry(user).or_default().clone();
            async move { Ok(Some(Box::new(machine) as Box<dyn TokenSource>)) }
        });
        let store = RedisStore::connect(&server.url(), "keyed:").await.unwrap();
        let shared = SharedFactory::new(users, store, keyring(), |user: &String| {
            format!("user:{user}")
        });
        replicas.push(KeyedRefreshLayer::<String>::new(shared));
    }
    let users: Vec<String> = (0..10).map(|n| format!("u{n}")).collect();
    let refreshes: Vec<_> = replicas
        .iter()
        .flat_map(|layer| users.iter().map(move |user| (layer.clone(), user.clone())))
        .map(|(layer, user)| tokio::spawn(async move { layer.refresh(&user).await }))
        .collect();
    for refresh in refreshes {
        refresh.await.unwrap().unwrap();
    }
    let machines = machines.lock().unwrap();
    assert_eq!(machines.len(), 10);
    for (user, machine) in machines.iter() {
        assert_eq!(
            *machine.0.lock().unwrap(),
            1,
            "{user}: one token request for 3 replicas"
        );
    }
}
