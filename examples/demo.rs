//! The crate doing its job, in a few seconds and with no setup.
//!
//! An authorization server and a protected API run in-process on 127.0.0.1
//! (`examples/support`). Access tokens live 2 seconds; refresh tokens rotate and are redeemed
//! once. The app signs in with the authorization code grant and PKCE, then calls the API
//! through a reqwest-middleware client with a `RefreshLayer`:
//!
//! 1. requests across a proactive (refresh-ahead) refresh: none waits for it;
//! 2. a token the API rejects before its expiry: the request is resent once, with a new token;
//! 3. 100 concurrent requests after the token expired: one refresh serves them all;
//! 4. a revoked refresh token: `ReauthRequired`, in plain words.
//!
//! Every claim is checked: the demo exits with an error if one does not hold.
//!
//! ```text
//! cargo run --example demo
//! ```

mod support;

use std::time::{Duration, Instant};

use oauth_refresh::oauth::AuthorizationCode;
use oauth_refresh::{ReauthRequired, RefreshLayer, RetryStatus};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

use support::{APP_CLIENT_ID, APP_REDIRECT_URI, Server, Story};

const LIFETIME: Duration = Duration::from_secs(2);

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = Server::start(LIFETIME).await;
    let story = Story::begin();
    story.say(format!(
        "authorization server and API on 127.0.0.1; access tokens live {}s",
        LIFETIME.as_secs()
    ));

    let layer = RefreshLayer::new(sign_in(&server, &story).await?);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();
    let api = server.api_url("/reports");

    story.say("1. requests every 200 ms across the refresh-ahead window");
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let sent = Instant::now();
        let response = client.get(&api).send().await?;
        let took = sent.elapsed();
        slowest = slowest.max(took);
        story.say(format!(
            "   GET /api/reports -> {} in {:>5.1} ms   (refreshes so far: {})",
            response.status(),
            took.as_secs_f64() * 1000.0,
            server.token_requests("refresh_token"),
        ));
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        server.token_requests("refresh_token"),
        1,
        "one background refresh"
    );
    story.say(format!(
        "   one refresh ran in the background, about half-way through the token's life; \
         the slowest request took {:.1} ms",
        slowest.as_secs_f64() * 1000.0
    ));

    story.say("2. the API revokes the access token before its expiry");
    server.revoke_access_tokens();
    let response = client.get(&api).send().await?;
    let retried = response.extensions().get::<RetryStatus>().copied();
    story.say(format!(
        "   GET /api/reports -> {} (401 first; resent once with a new token: {retried:?})",
        response.status()
    ));
    assert_eq!(response.status(), 200);
    assert_eq!(retried, Some(RetryStatus::Retried));
    assert_eq!(server.token_requests("refresh_token"), 2);

    story.say("3. no requests until the token has expired, then 100 at once");
    tokio::time::sleep(LIFETIME + Duration::from_millis(200)).await;
    let before = server.token_requests("refresh_token");
    let slowest = concurrent_requests(&client, &api, 100).await?;
    let refreshes = server.token_requests("refresh_token") - before;
    story.say(format!(
        "   100 responses 200; refreshes for all of them: {refreshes}; the slowest waited {:.1} ms",
        slowest.as_secs_f64() * 1000.0
    ));
    assert_eq!(refreshes, 1, "one refresh shared by 100 callers");

    story.say("4. the user signs the app out: every refresh token is revoked");
    server.revoke_refresh_tokens();
    server.revoke_access_tokens();
    match client.get(&api).send().await {
        Err(reqwest_middleware::Error::Middleware(e)) => {
            let reauth = e
                .downcast_ref::<ReauthRequired>()
                .ok_or("expected ReauthRequired")?;
            story.say(format!("   ReauthRequired ({}): {reauth}", reauth.error()));
            assert_eq!(reauth.error(), "invalid_grant");
        }
        other => return Err(format!("expected ReauthRequired, got {other:?}").into()),
    }

    let stats = layer.stats();
    story.say(format!(
        "done: {} refreshes, {} resend, {} reauth",
        stats.refreshes, stats.retries, stats.reauths
    ));
    Ok(())
}

/// The authorization code grant with PKCE: the URL a browser would open, the server's redirect
/// back, and the exchange, which gives a refresh-token grant holding the first tokens.
async fn sign_in(
    server: &Server,
    story: &Story,
) -> Result<oauth_refresh::RefreshTokenGrant, Error> {
    let pending = AuthorizationCode::new(
        server.authorization_url(),
        server.token_url(),
        APP_CLIENT_ID,
        APP_REDIRECT_URI,
    )
    .start()?;
    story.say(format!(
        "sign-in: a browser would open {}…",
        &pending.url().as_str()[..60]
    ));
    // The embedded server approves at once; follow its redirect as the browser would.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = browser.get(pending.url().as_str()).send().await?;
    let callback = redirect.headers()["location"].to_str()?.to_owned();
    let grant = pending.exchange(&callback).await?;
    story.say("sign-in: code exchanged with its PKCE verifier; first tokens received");
    Ok(grant)
}

/// Sends `count` requests at once and returns the longest any of them took.
async fn concurrent_requests(
    client: &ClientWithMiddleware,
    url: &str,
    count: usize,
) -> Result<Duration, Error> {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (client, url) = (client.clone(), url.to_owned());
        requests.spawn(async move {
            let sent = Instant::now();
            let status = client.get(url).send().await?.status();
            Ok::<_, Error>((status, sent.elapsed()))
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(answer) = requests.join_next().await {
        let (status, took) = answer??;
        assert_eq!(status, 200);
        slowest = slowest.max(took);
    }
    Ok(slowest)
}
