//! [`SharedSource`]: replicas sharing one grant through a real `redis-server`. Each replica is
//! a layer of its own with its own store connection here; the proof with OS processes is in
//! `replicas.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth_refresh::store::{Keyring, LeaseOwner, RedisStore, SharedSource, StoreKey, TokenStore};
use oauth_refresh::{
    AccessToken, BoxFuture, ReauthRequired, RefreshError, RefreshLayer, RefreshToken,
    RevocationError, Revoke, TokenRequest, TokenSet, TokenSource, TransientKind,
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
    log: Vec<String>,
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
        self.grant_from("rt-0")
    }

    /// A grant that starts from `refresh_token` (a new sign-in's, as the application stored it).
    fn grant_from(&self, refresh_token: &str) -> RotatingGrant {
        RotatingGrant(self.clone(), refresh_token.to_owned())
    }

    /// The user signs in again (an authorization code redeemed elsewhere): a new grant, whose
    /// refresh token is now the only one that works.
    fn sign_in(&self) -> TokenSet {
        let mut server = self.0.lock().unwrap();
        server.issued += 1;
        let n = server.issued;
        server.current = Some(format!("rt-{n}"));
        TokenSet::new(AccessToken::new(format!("at-{n}")))
            .with_refresh_token(format!("rt-{n}"))
            .with_expires_in(LIFETIME)
    }

    /// Every refresh token presented, in order.
    fn presented(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }
}

struct RotatingGrant(Rotating, String);

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
            server.log.push(presented.clone());
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
        Some(RefreshToken::new(self.1.clone()))
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
    // One write per refresh: the cells' persistence of the tokens they took writes nothing.
    let raw = RedisStore::connect(&server.url(), "t:").await.unwrap();
    assert_eq!(raw.read("svc").await.unwrap().unwrap().version, 6);
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

/// Two replicas of `rotating`'s grant, both holding the tokens of its first refresh.
async fn two_replicas_refreshed(server: &RedisServer, rotating: &Rotating) -> [RefreshLayer; 2] {
    let a = replica(server, rotating.grant()).await;
    let b = replica(server, rotating.grant()).await;
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    [a, b]
}

/// A sign-out on one replica reaches the others through the entry: at their next refresh they
/// present nothing and are signed out too, even though the server was never told (this grant
/// has no revocation endpoint, so the refresh token would still work).
#[tokio::test]
async fn a_sign_out_on_one_replica_signs_the_others_out_at_their_next_refresh() {
    let server = RedisServer::start();
    let rotating = Rotating::new();
    let [a, b] = two_replicas_refreshed(&server, &rotating).await;
    assert_eq!(token_of(&b).await, "at-1", "taken from the store");

    let not_told = a.sign_out(Revoke::RefreshToken).await.unwrap_err();
    assert!(
        matches!(not_told, RevocationError::Unsupported),
        "{not_told:?}"
    );
    let requests = rotating.requests();
    b.invalidate();
    let error = b
        .refresh()
        .await
        .expect_err("signed out on another replica");
    let RefreshError::Reauth(reauth) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(reauth.error(), "signed_out");
    assert_eq!(
        rotating.requests(),
        requests,
        "the signed-out refresh token was presented"
    );
    // A replica started afresh, with the refresh token it was configured with, is out too.
    let c = replica(&server, rotating.grant_from("rt-1")).await;
    let error = c.refresh().await.expect_err("signed out");
    assert!(
        matches!(&error, RefreshError::Reauth(r) if r.error() == "signed_out"),
        "{error:?}"
    );
    assert_eq!(rotating.requests(), requests);
}

/// A new sign-in installed on one replica (`set_tokens`) is the fleet's: the others take its
/// tokens, and every later refresh presents its refresh token, never the signed-out one.
#[tokio::test]
async fn a_sign_in_after_a_sign_out_is_shared_and_its_refresh_token_presented() {
    let server = RedisServer::start();
    let rotating = Rotating::new();
    let [a, b] = two_replicas_refreshed(&server, &rotating).await;
    drop(a.sign_out(Revoke::RefreshToken).await);

    let signed_in = rotating.sign_in();
    a.set_tokens(signed_in).unwrap();
    // The write to the store is the persistence that set_tokens starts: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let b_token = loop {
        b.invalidate();
        if let Ok(()) = b.refresh().await {
            break token_of(&b).await;
        }
        assert!(Instant::now() < deadline, "the sign-in never reached b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(b_token, "at-2", "b took the new sign-in's token");
    for _ in 0..3 {
        refresh_together(&[a.clone(), b.clone()]).await;
    }
    assert_eq!(rotating.reused(), 0, "{:?}", rotating.presented());
    assert_eq!(
        rotating.presented(),
        ["rt-0", "rt-2", "rt-3", "rt-4"],
        "one refresh per round, from the new sign-in's refresh token"
    );
}

/// A keyed layer: after a sign-out, the user signs in again and the application's factory
/// gives the key's next cell the new refresh token. The store's entry no longer holds the
/// signed-out one, so that new token is presented, not the old one.
#[tokio::test]
async fn after_a_sign_out_a_keys_next_cell_presents_the_new_sign_ins_refresh_token() {
    use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};
    use oauth_refresh::store::SharedFactory;

    let server = RedisServer::start();
    let rotating = Rotating::new();
    // The application's database: the user's refresh token, as the last sign-in stored it.
    let stored = Arc::new(Mutex::new("rt-0".to_owned()));
    let users = {
        let (rotating, stored) = (rotating.clone(), stored.clone());
        factory_fn(move |_user: String| {
            let grant = rotating.grant_from(&stored.lock().unwrap());
            async move { Ok(Some(Box::new(grant) as Box<dyn TokenSource>)) }
        })
    };
    let store = RedisStore::connect(&server.url(), "keyed:").await.unwrap();
    let shared = SharedFactory::new(users, store, keyring(), |user: &String| {
        format!("user:{user}")
    });
    let layer = KeyedRefreshLayer::<String>::new(shared);
    let alice = "alice".to_owned();
    layer.refresh(&alice).await.unwrap();
    drop(layer.sign_out(&alice, Revoke::RefreshToken).await);
    assert!(layer.remove(&alice), "the signed-out cell is settled");

    let signed_in = rotating.sign_in();
    *stored.lock().unwrap() = signed_in.refresh_token.unwrap().secret().to_owned();
    layer.refresh(&alice).await.unwrap();
    assert_eq!(rotating.presented(), ["rt-0", "rt-2"]);
    assert_eq!(rotating.reused(), 0);
}

/// A grant whose token requests wait at a gate, once they have started.
struct Gated {
    grant: RotatingGrant,
    started: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl TokenSource for Gated {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            self.started.notify_one();
            self.gate.acquire().await.unwrap().forget();
            self.grant.fetch(request).await
        })
    }

    fn grant(&self) -> &str {
        "refresh_token"
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.grant.initial_refresh_token()
    }
}

/// A replica's refresh is at the server when another replica signs the user out: the
/// refresh's write finds the sign-out, so it is signed out too, and the refresh token it
/// received is named signed out with the others.
#[tokio::test]
async fn a_refresh_under_the_lease_during_a_sign_out_is_signed_out_with_it() {
    let server = RedisServer::start();
    let rotating = Rotating::new();
    let a = replica(&server, rotating.grant()).await;
    a.refresh().await.unwrap();
    let (started, gate) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let gated = Gated {
        grant: rotating.grant(),
        started: started.clone(),
        gate: gate.clone(),
    };
    let b = RefreshLayer::new(shared(&server, gated).await.min_lifetime(2 * LIFETIME));
    let refresh = tokio::spawn({
        let b = b.clone();
        async move { b.refresh().await }
    });
    started.notified().await;

    drop(a.sign_out(Revoke::RefreshToken).await);
    gate.add_permits(1);
    let error = refresh.await.unwrap().expect_err("signed out meanwhile");
    assert!(
        matches!(&error, RefreshError::Reauth(r) if r.error() == "signed_out"),
        "{error:?}"
    );
    assert_eq!(rotating.presented(), ["rt-0", "rt-1"]);
    // The token that refresh received is refused as well.
    let c = replica(&server, rotating.grant_from("rt-2")).await;
    let error = c.refresh().await.expect_err("signed out");
    assert!(
        matches!(&error, RefreshError::Reauth(r) if r.error() == "signed_out"),
        "{error:?}"
    );
    assert_eq!(rotating.presented(), ["rt-0", "rt-1"]);
}
