//! The shared store on a real `redis-server`: versioned writes, the lease, notifications,
//! sealed entries, and an outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_refresh::store::{
    Entry, Keyring, LeaseOwner, OpenError, RedisStore, StoreKey, TokenStore, Written,
};

use crate::redis_server::RedisServer;

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), "test:").await.unwrap()
}

#[tokio::test]
async fn writes_are_compare_and_swap_on_the_version() {
    let server = RedisServer::start();
    let store = store(&server).await;
    assert_eq!(store.read("svc").await.unwrap(), None);
    assert_eq!(
        store.write("svc", None, b"one").await.unwrap(),
        Written::Version(1)
    );
    // A second first write, and a write over a version that is gone, both lose.
    assert_eq!(
        store.write("svc", None, b"late").await.unwrap(),
        Written::Conflict
    );
    assert_eq!(
        store.write("svc", Some(1), b"two").await.unwrap(),
        Written::Version(2)
    );
    assert_eq!(
        store.write("svc", Some(1), b"stale").await.unwrap(),
        Written::Conflict
    );
    assert_eq!(
        store.read("svc").await.unwrap(),
        Some(Entry {
            version: 2,
            value: b"two".to_vec()
        })
    );
    // Keys do not share entries, prefixes do not either.
    assert_eq!(store.read("other").await.unwrap(), None);
    let elsewhere = RedisStore::connect(&server.url(), "other-app:")
        .await
        .unwrap();
    assert_eq!(elsewhere.read("svc").await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_writers_of_one_version_make_exactly_one_winner() {
    let server = RedisServer::start();
    let store = Arc::new(store(&server).await);
    store.write("svc", None, b"v1").await.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write("svc", Some(1), format!("w{i}").as_bytes())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for writer in writers {
        if let Written::Version(v) = writer.await.unwrap().unwrap() {
            assert_eq!(v, 2);
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn a_lease_has_one_holder_and_only_it_extends_or_releases() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    assert_ne!(a, b);
    let lease = Duration::from_secs(30);
    assert!(store.try_lease("svc", &a, lease).await.unwrap());
    assert!(!store.try_lease("svc", &b, lease).await.unwrap());
    assert!(!store.extend_lease("svc", &b, lease).await.unwrap());
    assert!(!store.release_lease("svc", &b).await.unwrap());
    assert!(store.extend_lease("svc", &a, lease).await.unwrap());
    assert!(store.release_lease("svc", &a).await.unwrap());
    assert!(store.try_lease("svc", &b, lease).await.unwrap());
    // Another key's lease is another lease.
    assert!(store.try_lease("other", &a, lease).await.unwrap());
}

#[tokio::test]
async fn a_lease_whose_holder_vanished_runs_out_by_itself() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let (dead, next) = (LeaseOwner::random(), LeaseOwner::random());
    let lease = Duration::from_millis(300);
    assert!(store.try_lease("svc", &dead, lease).await.unwrap());
    let began = Instant::now();
    while !store.try_lease("svc", &next, lease).await.unwrap() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = began.elapsed();
    assert!(waited <= Duration::from_millis(600), "{waited:?}");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    // The dead holder's late release does not free the new holder's lease.
    assert!(!store.release_lease("svc", &dead).await.unwrap());
    assert!(!store.try_lease("svc", &dead, lease).await.unwrap());
}

#[tokio::test]
async fn a_waiter_hears_of_a_write_at_once() {
    let server = RedisServer::start();
    let store = Arc::new(store(&server).await);
    store.write("svc", None, b"v1").await.unwrap();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let entry = store.changed("svc", Some(1), Duration::from_secs(20)).await;
            (entry, began.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.write("svc", Some(1), b"v2").await.unwrap();
    let (entry, waited) = waiter.await.unwrap();
    assert_eq!(entry.unwrap().map(|e| e.version), Some(2));
    // Woken by the notification, long before the 20 s poll.
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // A version already newer than the one seen answers without waiting.
    let began = Instant::now();
    let entry = store
        .changed("svc", Some(1), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(entry.map(|e| e.version), Some(2));
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// Clients connected to `server` now, this question's own connection included.
async fn connected_clients(server: &RedisServer) -> u64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO clients names connected_clients")
}

/// Waiters of one store, each for its own entry, listen through one connection, and each
/// hears of its own entry's write at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_listen_through_one_connection() {
    const WAITERS: usize = 50;
    let server = RedisServer::start();
    let store = Arc::new(store(&server).await);
    for n in 0..WAITERS {
        store.write(&format!("k{n}"), None, b"v1").await.unwrap();
    }
    let waiters: Vec<_> = (0..WAITERS)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let entry = store
                    .changed(&format!("k{n}"), Some(1), Duration::from_secs(20))
                    .await;
                (entry, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The store's connection, its listener's and this question's.
    let clients = connected_clients(&server).await;
    assert!(clients <= 3, "{clients} connections for {WAITERS} waiters");

    let written = Instant::now();
    for n in 0..WAITERS {
        store.write(&format!("k{n}"), Some(1), b"v2").await.unwrap();
    }
    for waiter in waiters {
        let (entry, woken) = waiter.await.unwrap();
        assert_eq!(entry.unwrap().map(|e| e.version), Some(2));
        assert!(
            woken - written < Duration::from_secs(5),
            "not woken by the write"
        );
    }
    // Dropped with the store: no connection left behind.
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connected_clients(&server).await > 1 {
        assert!(Instant::now() < deadline, "a connection outlived its store");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listener's connection drops with Redis: the next waiter opens another, and hears of a
/// write at once again.
#[tokio::test]
async fn after_redis_restarts_a_waiter_hears_of_a_write_at_once_again() {
    let mut server = RedisServer::start();
    let store = Arc::new(
        RedisStore::connect_with_timeout(&server.url(), "test:", Duration::from_millis(500))
            .await
            .unwrap(),
    );
    // A first wait opens the listener's connection.
    let entry = store.changed("svc", None, Duration::from_millis(100)).await;
    assert_eq!(entry.unwrap(), None);
    server.stop();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.write("svc", None, b"v1").await.is_err() {
        assert!(Instant::now() < deadline, "no reconnection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.changed("svc", Some(1), Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = Instant::now();
    store.write("svc", Some(1), b"v2").await.unwrap();
    let entry = waiter.await.unwrap().unwrap();
    assert_eq!(entry.map(|e| e.version), Some(2));
    assert!(
        written.elapsed() < Duration::from_secs(5),
        "not woken by the write"
    );
}

#[tokio::test]
async fn without_a_notification_the_waiter_reads_again_at_its_timeout() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let began = Instant::now();
    let entry = store
        .changed("svc", None, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(entry, None);
    assert!(began.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_sealed_entry_moved_to_another_key_or_altered_in_redis_is_refused() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let keys = Keyring::new(StoreKey::new("k1", &[3; 32]).unwrap());
    store
        .write("user-1", None, &keys.seal("user-1", b"rt-of-user-1"))
        .await
        .unwrap();
    let stored = store.read("user-1").await.unwrap().unwrap();
    assert_eq!(keys.open("user-1", &stored.value).unwrap(), b"rt-of-user-1");
    // Copied as it is under another user's key: refused.
    store.write("user-2", None, &stored.value).await.unwrap();
    let copied = store.read("user-2").await.unwrap().unwrap();
    assert_eq!(keys.open("user-2", &copied.value), Err(OpenError::Refused));
    // One bit changed in Redis itself: refused.
    let mut altered = stored.value.clone();
    *altered.last_mut().unwrap() ^= 1;
    store.write("user-1", Some(1), &altered).await.unwrap();
    let read = store.read("user-1").await.unwrap().unwrap();
    assert_eq!(keys.open("user-1", &read.value), Err(OpenError::Refused));
    // And nothing readable is in Redis.
    assert!(!stored.value.windows(4).any(|w| w == b"rt-o"));
}

#[tokio::test]
async fn an_outage_fails_quickly_and_the_store_works_again_when_redis_is_back() {
    let mut server = RedisServer::start();
    let store =
        RedisStore::connect_with_timeout(&server.url(), "test:", Duration::from_millis(500))
            .await
            .unwrap();
    store.write("svc", None, b"v1").await.unwrap();
    server.stop();
    let began = Instant::now();
    let error = store.read("svc").await.expect_err("redis is down");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(error.to_string(), "the shared token store failed");
    server.restart();
    // The connection manager reconnects; the restarted server kept nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.read("svc").await {
            Ok(entry) => {
                assert_eq!(entry, None);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("no reconnection: {error:?}"),
        }
    }
}

#[tokio::test]
async fn debug_shows_where_the_store_points_but_no_password() {
    let server = RedisServer::start();
    let url = server.url().replace("redis://", "redis://:pw-s3cr3t@");
    let store = RedisStore::connect(&url, "test:").await.unwrap();
    let printed = format!("{store:?}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
    assert!(printed.contains("127.0.0.1"), "{printed}");
}
