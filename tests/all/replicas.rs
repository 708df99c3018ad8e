//! Replicas as OS processes (`tests/replica.rs`), four of them sharing one user's rotating
//! refresh token through a real redis-server, against oidc-provider with rotation and reuse
//! detection on.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::interop::sign_in;
use crate::oidc_provider::{APP_ID, APP_SECRET, OidcProvider};
use crate::redis_server::RedisServer;

const LIFETIME_SECS: u64 = 3;
const RUN_SECS: u64 = 16;

/// The replica binary cargo built beside this one.
fn replica_binary() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("replica-") && !name.contains('.')
        })
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
        .expect("the replica test binary (cargo test builds it with features redis and reqwest)")
}

/// A replica process of the app client at `provider`, sharing through `redis`, sending
/// requests for `secs` seconds from `tasks` tasks; its counts come on its stdout. Give it the
/// grant: `REPLICA_REFRESH_TOKEN`, or `REPLICA_USERS` for a keyed layer.
fn replica_command(redis: &RedisServer, provider: &OidcProvider, secs: u64, tasks: u32) -> Command {
    let mut command = Command::new(replica_binary());
    command
        .env("REPLICA_STORE", redis.url())
        .env("REPLICA_TOKEN_URL", provider.token_url())
        .env("REPLICA_ISSUER", &provider.issuer)
        .env("REPLICA_CLIENT_ID", APP_ID)
        .env("REPLICA_CLIENT_SECRET", APP_SECRET)
        .env("REPLICA_SECS", secs.to_string())
        .env("REPLICA_TASKS", tasks.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Waits for every child and reads the counts each printed.
async fn counts_of(children: Vec<std::process::Child>) -> Vec<Value> {
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    outputs
        .iter()
        .map(|output| {
            assert!(
                output.status.success(),
                "a replica failed: {:?}",
                output.status
            );
            serde_json::from_slice(&output.stdout).expect("the replica's counts")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replica_processes_share_one_rotating_grant_with_one_refresh_per_token() {
    let redis = RedisServer::start();
    let provider = OidcProvider::start_with(LIFETIME_SECS).await;
    let grant = sign_in(&provider).await;
    let refresh_token = grant.refresh_token().unwrap().secret().to_owned();
    provider.reset().await;

    let children: Vec<_> = (0..4)
        .map(|_| {
            replica_command(&redis, &provider, RUN_SECS, 4)
                .env("REPLICA_REFRESH_TOKEN", &refresh_token)
                .spawn()
                .expect("a replica process")
        })
        .collect();
    let mut requests = 0;
    for counts in counts_of(children).await {
        assert_eq!(counts["errors"], 0, "{counts}");
        assert_eq!(
            counts["inactive"], 0,
            "a request went with a dead token: {counts}"
        );
        requests += counts["requests"].as_u64().unwrap();
    }
    let stats = provider.stats().await;
    assert_eq!(stats.refresh_token_reused, 0, "{stats:?}");
    assert_eq!(stats.invalid_grant, 0, "{stats:?}");
    // One process alone refreshes each token once, when half its lifetime is left: about
    // every 1.5 s. Four sharing the grant must not do more.
    let refreshes = stats.refresh_token;
    let one_process = RUN_SECS * 2 / LIFETIME_SECS;
    eprintln!(
        "{requests} requests, {refreshes} refreshes in {RUN_SECS} s (one process: ~{one_process})"
    );
    assert!(refreshes >= RUN_SECS / LIFETIME_SECS, "{stats:?}");
    assert!(
        refreshes <= one_process + 2,
        "more than one refresh per token: {stats:?}"
    );
    assert!(
        requests > 4 * 4 * RUN_SECS,
        "under load: {requests} requests"
    );
}

/// A replica killed with SIGKILL while it holds the lease delays the next one by at most
/// the lease: the test measures the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_lease_delays_the_others_by_at_most_the_lease() {
    use std::io::BufRead;

    const LEASE_MS: u64 = 2000;
    let redis = RedisServer::start();
    let provider = OidcProvider::start_with(LIFETIME_SECS).await;
    let grant = sign_in(&provider).await;
    let refresh_token = grant.refresh_token().unwrap().secret().to_owned();
    provider.reset().await;
    let replica = |hold: bool| {
        let mut command = replica_command(&redis, &provider, 1, 2);
        command
            .env("REPLICA_REFRESH_TOKEN", &refresh_token)
            .env("REPLICA_LEASE_MS", LEASE_MS.to_string());
        if hold {
            command.env("REPLICA_HOLD_LEASE", "1");
        }
        command.spawn().expect("a replica process")
    };

    let mut holder = replica(true);
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "leased");
    let killed_at = std::time::Instant::now();
    holder.kill().unwrap(); // SIGKILL: no release, no cleanup.
    holder.wait().unwrap();

    let next = replica(false);
    let output = tokio::task::spawn_blocking(move || next.wait_with_output().unwrap())
        .await
        .unwrap();
    let since_kill = killed_at.elapsed();
    assert!(output.status.success(), "{:?}", output.status);
    let counts: Value = serde_json::from_slice(&output.stdout).unwrap();
    let delay = Duration::from_millis(counts["first_token_ms"].as_u64().unwrap());
    eprintln!("first token after {delay:?} (lease {LEASE_MS} ms), {since_kill:?} after the kill");
    let lease = Duration::from_millis(LEASE_MS);
    // It waited for the dead lease to run out, and not much longer.
    assert!(
        delay >= lease / 2,
        "it did not wait for the lease: {delay:?}"
    );
    assert!(delay <= lease + Duration::from_millis(1000), "{delay:?}");
    let stats = provider.stats().await;
    assert!(stats.refresh_token >= 1, "{stats:?}");
    assert_eq!(stats.refresh_token_reused, 0, "{stats:?}");
    assert_eq!(stats.invalid_grant, 0, "{stats:?}");
}

/// Keyed: 50 users, each signed in once, shared by four replica processes; every request
/// checked at the server against the user it was sent for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_keyed_replica_processes_share_fifty_users_with_one_refresh_per_token() {
    use oauth_refresh::oauth::{AuthorizationCode, ServerMetadata};

    use crate::oidc_provider::{APP_REDIRECT_URI, authorize_headless};

    const USERS: usize = 50;
    const KEYED_RUN_SECS: u64 = 12;
    let redis = RedisServer::start();
    let provider = OidcProvider::start_with(LIFETIME_SECS).await;
    let metadata = ServerMetadata::discover(&provider.issuer).await.unwrap();
    let mut users = String::new();
    for n in 0..USERS {
        let user = format!("user{n}");
        let pending = AuthorizationCode::new(
            metadata.authorization_endpoint.clone().unwrap(),
            &metadata.token_endpoint,
            APP_ID,
            APP_REDIRECT_URI,
        )
        .client_secret(APP_SECRET)
        .scope("openid")
        .scope("api:read")
        .param("login_hint", &user)
        .start()
        .unwrap();
        let callback = authorize_headless(pending.url().as_str()).await;
        let grant = pending.exchange(&callback).await.unwrap();
        users.push_str(&format!(
            "{user}={}\n",
            grant.refresh_token().unwrap().secret()
        ));
    }
    provider.reset().await;

    let children: Vec<_> = (0..4)
        .map(|_| {
            replica_command(&redis, &provider, KEYED_RUN_SECS, 2)
                .env("REPLICA_USERS", &users)
                .spawn()
                .expect("a replica process")
        })
        .collect();
    let mut requests = 0;
    for counts in counts_of(children).await {
        assert_eq!(counts["errors"], 0, "{counts}");
        assert_eq!(
            counts["inactive"], 0,
            "a request went with a dead token: {counts}"
        );
        assert_eq!(
            counts["wrong_user"], 0,
            "a request went with another user's token: {counts}"
        );
        requests += counts["requests"].as_u64().unwrap();
    }
    let stats = provider.stats().await;
    assert_eq!(stats.refresh_token_reused, 0, "{stats:?}");
    assert_eq!(stats.invalid_grant, 0, "{stats:?}");
    // One process alone refreshes each user's token once, half way through its lifetime.
    let per_user = KEYED_RUN_SECS * 2 / LIFETIME_SECS + 2;
    let refreshes = stats.refresh_token;
    eprintln!("{requests} requests, {refreshes} refreshes for {USERS} users in {KEYED_RUN_SECS} s");
    assert!(
        refreshes <= USERS as u64 * per_user,
        "more than one refresh per token: {stats:?}"
    );
}

/// One of four replica processes signs the user out mid-run without telling the server (the
/// refresh token stays good there). The others stop within a token lifetime, and from the
/// sign-out on no replica makes a token request: the store's entry signs them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_in_one_replica_process_signs_the_others_out_within_a_token_lifetime() {
    const SIGN_OUT_MS: u64 = 4000;
    const SECS: u64 = 10;
    let redis = RedisServer::start();
    let provider = OidcProvider::start_with(LIFETIME_SECS).await;
    let grant = sign_in(&provider).await;
    let refresh_token = grant.refresh_token().unwrap().secret().to_owned();
    provider.reset().await;

    let mut children = Vec::new();
    for replica in 0..4 {
        let mut command = replica_command(&redis, &provider, SECS, 2);
        command.env("REPLICA_REFRESH_TOKEN", &refresh_token);
        if replica == 0 {
            command.env("REPLICA_SIGN_OUT_AFTER_MS", SIGN_OUT_MS.to_string());
        }
        children.push(command.spawn().expect("a replica process"));
    }
    // Well after the sign-out, and after any refresh that was at the server then.
    tokio::time::sleep(Duration::from_millis(SIGN_OUT_MS + 2000)).await;
    let after_sign_out = provider.stats().await;
    let counts = counts_of(children).await;

    for (replica, counts) in counts.iter().enumerate() {
        eprintln!("replica {replica}: {counts}");
        assert_eq!(counts["errors"], 0, "replica {replica}: {counts}");
        assert_eq!(counts["inactive"], 0, "replica {replica}: {counts}");
        assert!(
            counts["signed_out"].as_u64().unwrap() > 0,
            "replica {replica} was never signed out: {counts}"
        );
        let last_sent = counts["last_sent_ms"].as_u64().unwrap();
        let within = match replica {
            0 => SIGN_OUT_MS + 200,
            _ => SIGN_OUT_MS + LIFETIME_SECS * 1000 + 1000,
        };
        assert!(
            (SIGN_OUT_MS - 1000..=within).contains(&last_sent),
            "replica {replica} sent its last request {last_sent} ms in: {counts}"
        );
    }
    let stats = provider.stats().await;
    assert!(after_sign_out.refresh_token >= 1, "{stats:?}");
    assert_eq!(
        stats.refresh_token, after_sign_out.refresh_token,
        "a replica refreshed the signed-out grant: {stats:?}"
    );
    assert_eq!(stats.refresh_token_reused, 0, "{stats:?}");
    assert_eq!(stats.invalid_grant, 0, "{stats:?}");
}
