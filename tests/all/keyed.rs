//! A keyed layer: a token cell per key, made by a factory on first use, never a token of
//! another key, idle cells evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::keyed::{KeyError, KeyedRefreshLayer, SourceFactory, factory_fn};
use oauth_refresh::{
    AccessToken, BoxError, BoxFuture, ReauthRequired, RefreshError, RefreshToken, Revoke, TokenSet,
    TokenSource, TokenUpdate, source_fn,
};
use tower::{Layer, ServiceExt};

use crate::support::{Api, Req, get, send, text};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct User(&'static str);

fn for_user(user: &'static str) -> Req {
    let mut request = get();
    request.extensions_mut().insert(User(user));
    request
}

/// Issues `<user>-<n>` tokens for each user; counts factory calls and fetches per user.
#[derive(Clone, Default)]
struct Users {
    made: Arc<Mutex<HashMap<&'static str, usize>>>,
    fetched: Arc<Mutex<HashMap<&'static str, usize>>>,
    /// Users the factory does not know.
    unknown: &'static [&'static str],
    /// Users whose grant the server refuses.
    refused: &'static [&'static str],
    lifetime: Option<Duration>,
}

impl Users {
    fn made(&self, user: &str) -> usize {
        self.made.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    fn fetched(&self, user: &str) -> usize {
        self.fetched.lock().unwrap().get(user).copied().unwrap_or(0)
    }
}

impl SourceFactory<User> for Users {
    fn source(&self, user: User) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        Box::pin(async move {
            // The factory is async: a database read, say.
            tokio::task::yield_now().await;
            *self.made.lock().unwrap().entry(user.0).or_default() += 1;
            if self.unknown.contains(&user.0) {
                return Ok(None);
            }
            let fetched = self.fetched.clone();
            let refused = self.refused.contains(&user.0);
            let lifetime = self.lifetime.unwrap_or(Duration::from_secs(3600));
            let source = source_fn(move |_request| {
                let n = {
                    let mut fetched = fetched.lock().unwrap();
                    let n = fetched.entry(user.0).or_default();
                    *n += 1;
                    *n
                };
                async move {
                    if refused {
                        return Err(ReauthRequired::new("invalid_grant").into());
                    }
                    Ok(TokenSet::new(AccessToken::new(format!("{}-{n}", user.0)))
                        .with_expires_in(lifetime))
                }
            });
            Ok(Some(Box::new(source) as Box<dyn TokenSource>))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn each_key_gets_its_own_token_and_never_anothers() {
    let users = Users::default();
    let layer = KeyedRefreshLayer::new(users.clone());
    let mut service = layer.layer(Api::open());

    for round in 0..3 {
        for user in ["alice", "bob", "carol"] {
            let response = send(&mut service, for_user(user)).await.unwrap();
            assert_eq!(
                text(response).await,
                format!("hello {user}-1"),
                "round {round}"
            );
        }
    }
    assert_eq!(layer.cells(), 3);
    for user in ["alice", "bob", "carol"] {
        assert_eq!(users.made(user), 1, "one cell per key");
        assert_eq!(users.fetched(user), 1, "one token per key");
        assert_eq!(layer.stats(&User(user)).unwrap().refreshes, 1);
    }
    assert!(layer.stats(&User("dave")).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_key_fails_and_is_not_sent() {
    let api = Api::open();
    let mut service = KeyedRefreshLayer::new(Users::default()).layer(api.clone());

    let error = send(&mut service, get()).await.unwrap_err();
    let error = error.downcast_ref::<KeyError>().expect("a KeyError");
    assert!(error.is_missing(), "{error:?}");
    assert_eq!(error.to_string(), "the request names no token key");
    assert_eq!(api.calls(), 0, "never sent, with or without a token");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_key_fails_and_is_not_sent_while_others_work() {
    let users = Users {
        unknown: &["mallory"],
        ..Users::default()
    };
    let api = Api::open();
    let mut service = KeyedRefreshLayer::new(users.clone()).layer(api.clone());

    let error = send(&mut service, for_user("mallory")).await.unwrap_err();
    assert!(error.downcast_ref::<KeyError>().unwrap().is_unknown());
    assert_eq!(api.calls(), 0);
    let response = send(&mut service, for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-1");
    // An unknown key is asked about again: it may have signed in since.
    send(&mut service, for_user("mallory")).await.unwrap_err();
    assert_eq!(users.made("mallory"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_factory_failure_is_that_requests_error_and_the_next_request_asks_again() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let layer = KeyedRefreshLayer::new(factory_fn(move |user: User| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if attempt == 1 {
                return Err(BoxError::from("database unavailable"));
            }
            let source = source_fn(move |_| async move {
                Ok(TokenSet::new(AccessToken::new(format!("{}-1", user.0))))
            });
            Ok(Some(Box::new(source) as Box<dyn TokenSource>))
        }
    }));
    let api = Api::open();
    let mut service = layer.layer(api.clone());

    let error = send(&mut service, for_user("alice")).await.unwrap_err();
    let key_error = error.downcast_ref::<KeyError>().unwrap();
    assert!(key_error.is_factory_failure());
    let source = std::error::Error::source(key_error).unwrap();
    assert_eq!(source.to_string(), "database unavailable");
    assert_eq!(api.calls(), 0);

    let response = send(&mut service, for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-1");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_of_a_key_share_one_factory_call_and_one_refresh() {
    let users = Users::default();
    let layer = KeyedRefreshLayer::new(users.clone());
    let service = layer.layer(Api::open());

    let requests = (0..100).map(|i| {
        let service = service.clone();
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        tokio::spawn(async move {
            let response = service.oneshot(for_user(user)).await.unwrap();
            (user, text(response).await)
        })
    });
    for request in requests.collect::<Vec<_>>() {
        let (user, body) = request.await.unwrap();
        assert_eq!(body, format!("hello {user}-1"));
    }
    assert_eq!((users.made("alice"), users.made("bob")), (1, 1));
    assert_eq!((users.fetched("alice"), users.fetched("bob")), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn reauth_required_for_one_key_leaves_the_others_working() {
    let users = Users {
        refused: &["bob"],
        ..Users::default()
    };
    let mut service = KeyedRefreshLayer::new(users).layer(Api::open());

    let error = send(&mut service, for_user("bob")).await.unwrap_err();
    let reauth = error
        .downcast_ref::<ReauthRequired>()
        .expect("ReauthRequired");
    assert_eq!(reauth.error(), "invalid_grant");
    let response = send(&mut service, for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-1");
}

#[tokio::test(start_paused = true)]
async fn each_keys_expiry_and_rejection_refresh_that_key_alone() {
    let users = Users {
        lifetime: Some(Duration::from_secs(60)),
        ..Users::default()
    };
    let api = Api::open();
    let mut service = KeyedRefreshLayer::new(users.clone()).layer(api.clone());

    for user in ["alice", "bob"] {
        send(&mut service, for_user(user)).await.unwrap();
    }
    // alice's token is revoked: the API rejects it, her request is resent with her next one.
    api.set_policy(|token| token != "alice-1");
    let response = send(&mut service, for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-2");
    let response = send(&mut service, for_user("bob")).await.unwrap();
    assert_eq!(
        text(response).await,
        "hello bob-1",
        "bob's token is untouched"
    );

    // Both expire: each is refreshed once, with its own token.
    tokio::time::sleep(Duration::from_secs(61)).await;
    for user in ["alice", "bob", "alice", "bob"] {
        send(&mut service, for_user(user)).await.unwrap();
    }
    assert_eq!((users.fetched("alice"), users.fetched("bob")), (3, 2));
    let seen = api.seen();
    assert_eq!(
        seen[seen.len() - 4..],
        [
            Some("Bearer alice-3".into()),
            Some("Bearer bob-2".into()),
            Some("Bearer alice-3".into()),
            Some("Bearer bob-2".into()),
        ]
    );
}

/// A factory whose users rotate refresh tokens, with a hook that records what it is handed
/// per key.
#[derive(Clone, Default)]
struct Rotating {
    stored: Arc<Mutex<Vec<Stored>>>,
}

/// A key and the refresh token its hook was handed.
type Stored = (User, Option<String>);

impl SourceFactory<User> for Rotating {
    fn source(&self, user: User) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        let n = Arc::new(AtomicUsize::new(0));
        let source = source_fn(move |request| {
            let n = n.fetch_add(1, Ordering::SeqCst) + 1;
            let presented = request.refresh_token.map(|t| t.secret().to_owned());
            async move {
                let expected = (n > 1).then(|| format!("rt-{}-{}", user.0, n - 1));
                assert_eq!(presented, expected, "the key's own newest refresh token");
                Ok(TokenSet::new(AccessToken::new(format!("{}-{n}", user.0)))
                    .with_refresh_token(RefreshToken::new(format!("rt-{}-{n}", user.0)))
                    .with_expires_in(Duration::from_secs(60)))
            }
        });
        Box::pin(async move { Ok(Some(Box::new(source) as Box<dyn TokenSource>)) })
    }

    fn persist(&self, user: &User, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        let refresh_token = update.refresh_token.as_ref().map(|t| t.secret().to_owned());
        self.stored
            .lock()
            .unwrap()
            .push((user.clone(), refresh_token));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn the_persistence_hook_gets_each_keys_rotated_refresh_token_with_the_key() {
    let rotating = Rotating::default();
    let layer = KeyedRefreshLayer::new(rotating.clone());
    let mut service = layer.layer(Api::open());

    for user in ["alice", "bob"] {
        send(&mut service, for_user(user)).await.unwrap();
    }
    layer.refresh(&User("alice")).await.unwrap();
    let stored = rotating.stored.lock().unwrap().clone();
    assert_eq!(
        stored,
        [
            (User("alice"), Some("rt-alice-1".into())),
            (User("bob"), Some("rt-bob-1".into())),
            (User("alice"), Some("rt-alice-2".into())),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_function_derives_the_key_from_the_request() {
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Tenant(String);

    let layer = KeyedRefreshLayer::new(factory_fn(|tenant: Tenant| async move {
        let source = source_fn(move |_| {
            let token = format!("token-of-{}", tenant.0);
            async move { Ok(TokenSet::new(AccessToken::new(token))) }
        });
        Ok(Some(Box::new(source) as Box<dyn TokenSource>))
    }))
    .key_fn(|request| {
        let tenant = request.host()?.strip_suffix(".api.test")?;
        Some(Tenant(tenant.to_owned()))
    });
    let api = Api::open();
    let mut service = layer.layer(api.clone());

    for host in ["acme", "globex"] {
        let request = http::Request::get(format!("https://{host}.api.test/items"))
            .body(Default::default())
            .unwrap();
        let response = send(&mut service, request).await.unwrap();
        assert_eq!(text(response).await, format!("hello token-of-{host}"));
    }
    let error = send(&mut service, get()).await.unwrap_err();
    assert!(error.downcast_ref::<KeyError>().unwrap().is_missing());
}

#[tokio::test(start_paused = true)]
async fn refresh_by_key_makes_the_cell_and_reports_a_key_error_for_an_unknown_key() {
    let users = Users {
        unknown: &["mallory"],
        ..Users::default()
    };
    let layer = KeyedRefreshLayer::new(users.clone());
    layer.refresh(&User("alice")).await.unwrap();
    assert_eq!(users.fetched("alice"), 1);
    let error = layer.refresh(&User("mallory")).await.unwrap_err();
    assert!(matches!(error, oauth_refresh::keyed::KeyedRefreshError::Key(ref e) if e.is_unknown()));
    let refused = KeyedRefreshLayer::new(Users {
        refused: &["bob"],
        ..Users::default()
    });
    let error = refused.refresh(&User("bob")).await.unwrap_err();
    assert!(matches!(
        error,
        oauth_refresh::keyed::KeyedRefreshError::Refresh(RefreshError::Reauth(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_idle_cell_is_evicted_and_its_users_next_request_rebuilds_it_from_the_factory() {
    let users = Users::default();
    let layer = KeyedRefreshLayer::builder(users.clone())
        .idle_timeout(Duration::from_secs(60))
        .build();
    let mut service = layer.layer(Api::open());

    send(&mut service, for_user("alice")).await.unwrap();
    send(&mut service, for_user("bob")).await.unwrap();
    // bob keeps using his; alice goes quiet.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(15)).await;
        send(&mut service, for_user("bob")).await.unwrap();
    }
    assert_eq!(layer.cells(), 1, "alice's cell went after 60 to 75 s idle");
    assert!(layer.stats(&User("alice")).is_none());
    assert_eq!(users.made("bob"), 1, "bob's cell stayed");

    let response = send(&mut service, for_user("alice")).await.unwrap();
    assert_eq!(
        text(response).await,
        "hello alice-2",
        "a new cell, a new token"
    );
    assert_eq!(users.made("alice"), 2, "rebuilt from the factory");
}

#[tokio::test(start_paused = true)]
async fn past_the_cap_the_least_recently_used_cells_go_first() {
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Id(u32);
    let layer = KeyedRefreshLayer::builder(factory_fn(|id: Id| async move {
        let source = source_fn(move |_| {
            let token = format!("id-{}", id.0);
            async move { Ok(TokenSet::new(AccessToken::new(token))) }
        });
        Ok(Some(Box::new(source) as Box<dyn TokenSource>))
    }))
    .idle_timeout(Duration::from_secs(60))
    .max_cells(8)
    .build();
    let mut service = layer.layer(Api::open());
    let request = |id: u32| {
        let mut request = get();
        request.extensions_mut().insert(Id(id));
        request
    };

    for id in 0..8 {
        send(&mut service, request(id)).await.unwrap();
    }
    // A sweep later (one every 15 s), 0 to 3 are used again; 4 to 7 are not.
    tokio::time::sleep(Duration::from_secs(16)).await;
    for id in 0..4 {
        send(&mut service, request(id)).await.unwrap();
    }
    send(&mut service, request(8)).await.unwrap();
    assert_eq!(layer.cells(), 7, "down to seven eighths of the cap");
    for id in (0..4).chain([8]) {
        assert!(layer.stats(&Id(id)).is_some(), "{id} was used last");
    }
    let kept = (4..8).filter(|id| layer.stats(&Id(*id)).is_some()).count();
    assert_eq!(kept, 2, "two of the least recently used went");
}

#[tokio::test(start_paused = true)]
async fn a_cell_with_a_refresh_in_flight_is_not_evicted() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let opened = gate.clone();
    let layer = KeyedRefreshLayer::builder(factory_fn(move |user: User| {
        let gate = opened.clone();
        async move {
            let source = source_fn(move |_| {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    Ok(TokenSet::new(AccessToken::new(format!("{}-1", user.0))))
                }
            });
            Ok(Some(Box::new(source) as Box<dyn TokenSource>))
        }
    }))
    .idle_timeout(Duration::from_secs(60))
    .refresh_timeout(Duration::from_secs(600))
    .build();

    let refresh = tokio::spawn({
        let layer = layer.clone();
        async move { layer.refresh(&User("alice")).await }
    });
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(layer.cells(), 1, "the refresh is running");
    assert!(!layer.remove(&User("alice")), "not even on request");

    gate.add_permits(1);
    refresh.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(layer.cells(), 0, "idle once the refresh ended");
}

/// Rotates refresh tokens; its hook fails while `store_down` is set.
#[derive(Clone, Default)]
struct FlakyStore {
    store_down: Arc<std::sync::atomic::AtomicBool>,
    stored: Arc<Mutex<Vec<String>>>,
}

impl SourceFactory<User> for FlakyStore {
    fn source(&self, user: User) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        let n = Arc::new(AtomicUsize::new(0));
        let source = source_fn(move |_| {
            let n = n.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok(TokenSet::new(AccessToken::new(format!("{}-{n}", user.0)))
                    .with_refresh_token(RefreshToken::new(format!("rt-{}-{n}", user.0))))
            }
        });
        Box::pin(async move { Ok(Some(Box::new(source) as Box<dyn TokenSource>)) })
    }

    fn persist(&self, _user: &User, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        let refresh_token = update.refresh_token.as_ref().unwrap().secret().to_owned();
        let down = self.store_down.load(Ordering::SeqCst);
        Box::pin(async move {
            if down {
                return Err(BoxError::from("store unavailable"));
            }
            self.stored.lock().unwrap().push(refresh_token);
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_cell_whose_newest_refresh_token_is_not_stored_is_not_evicted() {
    let store = FlakyStore::default();
    let layer = KeyedRefreshLayer::builder(store.clone())
        .idle_timeout(Duration::from_secs(60))
        .build();

    store.store_down.store(true, Ordering::SeqCst);
    layer.refresh(&User("alice")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(layer.cells(), 1, "rt-alice-1 lives only in this cell");
    assert!(!layer.remove(&User("alice")));

    // The store is back: the next change reaches it, and the cell may go.
    store.store_down.store(false, Ordering::SeqCst);
    layer.refresh(&User("alice")).await.unwrap();
    assert_eq!(*store.stored.lock().unwrap(), ["rt-alice-2"]);
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(layer.cells(), 0);
}

#[test]
fn memory_and_live_cells_stay_flat_while_100_000_keys_pass_through() {
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Id(u32);

    // A current-thread runtime: everything the layer allocates is allocated on this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = KeyedRefreshLayer::builder(factory_fn(|id: Id| async move {
            let source = source_fn(move |_| {
                let token = format!("id-{}", id.0);
                async move {
                    Ok(TokenSet::new(AccessToken::new(token))
                        .with_expires_in(Duration::from_secs(3600)))
                }
            });
            Ok(Some(Box::new(source) as Box<dyn TokenSource>))
        }))
        .max_cells(1_000)
        .build();
        // An API that keeps nothing of what it sees (the recording `Api` would grow).
        let echo = tower::service_fn(|request: Req| async move {
            let authorization = request.headers()[http::header::AUTHORIZATION].clone();
            let body = authorization.to_str().unwrap().replace("Bearer ", "hello ");
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
        });
        let mut service = layer.layer(echo);

        let mut live = Vec::new();
        for id in 0..100_000u32 {
            let mut request = get();
            request.extensions_mut().insert(Id(id));
            let response = send(&mut service, request).await.unwrap();
            assert_eq!(text(response).await, format!("hello id-{id}"));
            assert!(
                layer.cells() <= 1_000,
                "{} cells at key {id}",
                layer.cells()
            );
            if id % 10_000 == 9_999 {
                live.push((layer.cells(), crate::alloc::thread_live_bytes()));
            }
        }
        // Flat: the cells in use swing between seven eighths of the cap and the cap, and the
        // bytes in use with them. Per cell, they stay within a quarter of what they were after
        // 10,000 keys: the shards' tables (whose buckets hold each key's FRESH token, 128
        // bytes a bucket) grow a step before they have seen their largest size, and never
        // shrink. From 50,000 keys on, the tables have settled, and the bytes stay within a
        // tenth. A leak of four bytes a key breaks the first bound, of two the second.
        let per_cell = |(cells, bytes): (usize, isize)| bytes as f64 / cells as f64;
        let within = |readings: &[(usize, isize)], first: usize, share: f64| {
            let base = per_cell(readings[0]);
            for (i, reading) in readings.iter().enumerate() {
                let now = per_cell(*reading);
                assert!(
                    (now - base).abs() < base * share,
                    "{now:.0} bytes per cell after {} keys ({reading:?}), {base:.0} after {}",
                    (first + i) * 10_000,
                    first * 10_000,
                );
            }
        };
        within(&live, 1, 0.25);
        within(&live[4..], 5, 0.10);
    });
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_does_not_cancel_its_keys_refresh_and_a_stale_token_is_sent_at_once() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let fetched = Arc::new(AtomicUsize::new(0));
    let (opened, counter) = (gate.clone(), fetched.clone());
    let layer = KeyedRefreshLayer::builder(factory_fn(move |user: User| {
        let (gate, counter) = (opened.clone(), counter.clone());
        async move {
            let source = source_fn(move |_| {
                let (gate, counter) = (gate.clone(), counter.clone());
                async move {
                    gate.acquire().await.unwrap().forget();
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(TokenSet::new(AccessToken::new(format!("{}-{n}", user.0)))
                        .with_expires_in(Duration::from_secs(60)))
                }
            });
            Ok(Some(Box::new(source) as Box<dyn TokenSource>))
        }
    }))
    .refresh_ahead(Duration::from_secs(20))
    .build();
    let service = layer.layer(Api::open());

    // The first caller gives up while the key's first refresh runs; the refresh goes on.
    let caller = tokio::spawn(service.clone().oneshot(for_user("alice")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    caller.abort();
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fetched.load(Ordering::SeqCst), 1);
    let response = service.clone().oneshot(for_user("alice")).await.unwrap();
    assert_eq!(
        text(response).await,
        "hello alice-1",
        "the refresh the caller left"
    );

    // STALE (inside the window): sent at once with the current token, refreshed behind it.
    tokio::time::sleep(Duration::from_secs(50)).await;
    let response = service.clone().oneshot(for_user("alice")).await.unwrap();
    assert_eq!(
        text(response).await,
        "hello alice-1",
        "no wait for the refresh"
    );
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let response = service.clone().oneshot(for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-2");
    assert_eq!(layer.stats(&User("alice")).unwrap().refreshes, 2);
}

/// A request sent with a FRESH token holds no cell: its key's cell may be evicted and rebuilt
/// while it is out. Its rejection then names a token of the evicted cell, and must not
/// discard the rebuilt cell's own, which counts its generations from the same number.
#[tokio::test(start_paused = true)]
async fn a_token_rejected_after_its_cell_was_rebuilt_leaves_the_new_cells_token_alone() {
    let users = Users::default();
    let layer = KeyedRefreshLayer::builder(users.clone())
        .idle_timeout(Duration::from_secs(60))
        .build();
    let api = Api::open();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let inner = tower::service_fn({
        let api = api.clone();
        move |request: Req| {
            let (mut api, gate) = (api.clone(), held.clone());
            async move {
                // Held: the first sending, not the resend (which has another token).
                let first = request.headers()[http::header::AUTHORIZATION] == "Bearer alice-1";
                if first && request.headers().contains_key("x-hold") {
                    gate.acquire().await.unwrap().forget();
                }
                tower::Service::call(&mut api, request).await
            }
        }
    });
    let service = layer.layer(inner);

    let response = service.clone().oneshot(for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-1");
    let mut request = for_user("alice");
    request
        .headers_mut()
        .insert("x-hold", http::HeaderValue::from_static("1"));
    let out = tokio::spawn(service.clone().oneshot(request));

    // Idle past the idle time (the request out holds no cell): evicted, then rebuilt.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(layer.cells(), 0, "evicted under the request out");
    let response = service.clone().oneshot(for_user("alice")).await.unwrap();
    assert_eq!(text(response).await, "hello alice-2");
    assert_eq!(users.made("alice"), 2);

    // alice-1 is refused now: the request out is resent with the rebuilt cell's token as is.
    api.set_policy(|token| token != "alice-1");
    gate.add_permits(1);
    let response = out.await.unwrap().unwrap();
    assert_eq!(text(response).await, "hello alice-2");
    assert_eq!(
        users.fetched("alice"),
        2,
        "alice-2 was not taken for rejected"
    );
    let stats = layer.stats(&User("alice")).unwrap();
    assert_eq!((stats.refreshes, stats.generation), (1, 1));
}

/// A request that finds its key's token FRESH sends a copy the map keeps beside the key: each
/// change of the key's tokens must replace that copy before the next request reads it.
#[tokio::test(start_paused = true)]
async fn each_change_of_a_keys_token_reaches_its_next_request_at_once() {
    let users = Users::default();
    let layer = KeyedRefreshLayer::new(users.clone());
    let api = Api::open();
    let mut service = layer.layer(api.clone());
    let alice = User("alice");
    // Sends one request for alice: what it got, and how many calls the API saw for it.
    let next = async |service: &mut _| {
        let calls = api.calls();
        let answer = match send(service, for_user("alice")).await {
            Ok(response) => text(response).await,
            Err(err) => format!("error: {err}"),
        };
        (answer, api.calls() - calls)
    };

    assert_eq!(next(&mut service).await, ("hello alice-1".into(), 1));
    send(&mut service, for_user("bob")).await.unwrap();

    layer.refresh(&alice).await.unwrap();
    assert_eq!(
        next(&mut service).await,
        ("hello alice-2".into(), 1),
        "refreshed"
    );

    layer.invalidate(&alice);
    assert_eq!(
        next(&mut service).await,
        ("hello alice-3".into(), 1),
        "invalidated"
    );

    api.set_policy(|token| token != "alice-3");
    assert_eq!(
        next(&mut service).await,
        ("hello alice-4".into(), 2),
        "rejected"
    );
    assert_eq!(next(&mut service).await, ("hello alice-4".into(), 1));

    layer.sign_out(&alice, Revoke::RefreshToken).await.unwrap();
    let (answer, calls) = next(&mut service).await;
    assert!(answer.contains("signed_out"), "{answer}");
    assert_eq!(calls, 0, "signed out: nothing sent");

    let response = send(&mut service, for_user("bob")).await.unwrap();
    assert_eq!(text(response).await, "hello bob-1", "bob's token untouched");
    assert_eq!(users.fetched("alice"), 4);
}
