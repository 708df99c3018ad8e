//! Two replicas of a service, two OS processes, sharing one user's rotating refresh token
//! through Redis: one refresh per token lifetime for both, and neither revokes the other.
//!
//! The embedded authorization server and API (`examples/support`) run in this process on
//! 127.0.0.1 (access tokens live 2 seconds, refresh tokens rotate and are redeemed once), and
//! a `redis-server` it starts on a free port (Debian: `apt-get install redis-server`; CI
//! installs it). The example starts itself twice more as the replicas: each wraps the same
//! `RefreshTokenGrant` in a `store::SharedSource` and sends requests for 6 seconds.
//!
//! Without the store, the first replica's refresh would retire the refresh token that the
//! second then presents, and the server would refuse it: the user signed out everywhere.
//!
//! ```text
//! cargo run --features redis --example replicas
//! ```

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oauth_refresh::oauth::AuthorizationCode;
use oauth_refresh::store::{Keyring, RedisStore, SharedSource, StoreKey};
use oauth_refresh::{RefreshLayer, RefreshTokenGrant};
use reqwest_middleware::ClientBuilder;

use support::{APP_CLIENT_ID, APP_REDIRECT_URI, Server, Story};

type Error = Box<dyn std::error::Error + Send + Sync>;

const LIFETIME: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(6);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("replica") {
        return replica(&args[2..]).await;
    }

    let story = Story::begin();
    let server = Server::start(LIFETIME).await;
    let redis = Redis::start()?;
    story.say(format!(
        "authorization server and API on 127.0.0.1; redis-server on port {}",
        redis.port
    ));
    let grant = sign_in(&server).await?;
    let refresh_token = grant
        .refresh_token()
        .expect("a refresh token")
        .secret()
        .to_owned();
    story.say("the user signed in; both replicas start from the refresh token stored then");

    let me = std::env::current_exe()?;
    let replicas: Vec<Child> = (1..=2)
        .map(|n| {
            Command::new(&me)
                .args(["replica", &n.to_string(), &redis.url(), &server.token_url()])
                .arg(server.api_url("/api/orders/recent"))
                .arg(&refresh_token)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut replica in replicas {
        let status = tokio::task::spawn_blocking(move || replica.wait()).await??;
        assert!(status.success(), "a replica failed: {status}");
    }

    let refreshes = server.token_requests("refresh_token");
    let refused = server.refused_token_requests();
    story.say(format!(
        "the server saw {refreshes} refreshes for both replicas in {} s of {} s tokens, \
         {refused} refused",
        RUN.as_secs(),
        LIFETIME.as_secs()
    ));
    assert_eq!(
        refused, 0,
        "a replica presented a refresh token the other had used"
    );
    // One process alone refreshes each token once, when half its lifetime is left.
    let one_process = (RUN.as_secs() * 2 / LIFETIME.as_secs()) as usize;
    assert!(
        refreshes <= one_process + 2,
        "{refreshes} refreshes: more than one per token"
    );
    Ok(())
}

/// One replica: `n`, the store, the token endpoint, the API, the refresh token.
async fn replica(args: &[String]) -> Result<(), Error> {
    let [n, redis_url, token_url, api_url, refresh_token] = args else {
        return Err(
            "usage: replicas replica <n> <redis> <token url> <api url> <refresh token>".into(),
        );
    };
    let store = RedisStore::connect(redis_url, "replicas-example:").await?;
    // The application's key for the entries at rest, with an id for rotating it. A real one
    // comes from a secret manager, 32 random bytes.
    let keys = Keyring::new(StoreKey::new("example-key", &[42; 32])?);
    let grant = RefreshTokenGrant::new(token_url, APP_CLIENT_ID, refresh_token.as_str());
    // Taken from the store only with more left than the refresh-ahead window (half of 2 s).
    let shared =
        SharedSource::new(grant, store, keys, "user:ada").min_lifetime(Duration::from_millis(1100));
    let layer = RefreshLayer::new(shared);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    let story = Story::begin();
    let until = Instant::now() + RUN;
    let mut last = String::new();
    while Instant::now() < until {
        let response = client.get(api_url).send().await?;
        let status = response.status();
        let text = response.text().await?;
        assert!(status.is_success(), "replica {n}: {status} {text}");
        // One line per new token, not per request.
        if text != last {
            story.say(format!("replica {n}: {status}: {text}"));
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = layer.stats();
    story.say(format!(
        "replica {n}: {} refreshes of its cell (tokens taken from the store count too), {} failed",
        stats.refreshes, stats.failures
    ));
    Ok(())
}

async fn sign_in(server: &Server) -> Result<RefreshTokenGrant, Error> {
    let pending = AuthorizationCode::new(
        server.authorization_url(),
        server.token_url(),
        APP_CLIENT_ID,
        APP_REDIRECT_URI,
    )
    .param("login_hint", "ada")
    .start()?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = browser.get(pending.url().as_str()).send().await?;
    let callback = redirect.headers()["location"].to_str()?.to_owned();
    Ok(pending.exchange(&callback).await?)
}

/// A `redis-server` on a free port of 127.0.0.1, without persistence, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Result<Redis, Error> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| {
                format!("redis-server could not be started ({error}): install it, e.g. apt-get install redis-server")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { port, child })
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
