//! The crate doing its job, in about six seconds and with no setup.
//!
//! An authorization server and a protected API run in-process on 127.0.0.1
//! (`examples/support`). Access tokens live 2 seconds; refresh tokens rotate and are redeemed
//! once; the token endpoint takes 150 ms to answer. The app signs in with the authorization
//! code grant and PKCE, then calls the API through a reqwest-middleware client with a
//! `RefreshLayer` over the user's `RefreshTokenGrant`:
//!
//! 1. requests across a proactive refresh: the token is replaced in the background about
//!    half-way through its life, and no request waits for the token endpoint;
//! 2. a token the API rejects before its expiry: the layer refreshes and resends the request
//!    once, and the caller sees `200` with `RetryStatus::Retried`;
//! 3. 100 concurrent requests after the token expired: one refresh serves them all;
//! 4. the refresh tokens are revoked: the still-valid access token keeps being served, and
//!    once it has expired, requests fail with `ReauthRequired`, in plain words.
//!
//! 5. The metrics the run recorded (feature `metrics`, on for the examples), printed as the
//!    Prometheus text exposition an operator's dashboard would scrape.
//!
//! Every claim is asserted: the demo exits with an error if one does not hold.
//!
//! ```text
//! cargo run --example demo
//! ```

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use oauth_refresh::oauth::AuthorizationCode;
use oauth_refresh::{ReauthRequired, RefreshLayer, RefreshTokenGrant, RetryStatus};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

use support::{APP_CLIENT_ID, APP_REDIRECT_URI, Server, Story, TOKEN_ENDPOINT_LATENCY};

const LIFETIME: Duration = Duration::from_secs(2);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What every part of the story uses.
struct Demo {
    server: Server,
    story: Story,
    layer: RefreshLayer,
    client: ClientWithMiddleware,
    api: String,
}

/// The API's answer to one request, and how long the caller waited for it.
struct Answer {
    status: StatusCode,
    body: String,
    took: Duration,
    retry: Option<RetryStatus>,
}

impl Demo {
    async fn get(&self) -> Result<Answer, Error> {
        let sent = Instant::now();
        let response = self.client.get(&self.api).send().await?;
        let took = sent.elapsed();
        let status = response.status();
        let retry = response.extensions().get::<RetryStatus>().copied();
        let body = response.text().await?;
        Ok(Answer {
            status,
            body,
            took,
            retry,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // What the layer records (feature `metrics`), kept for the end of the story.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    oauth_refresh::metrics::describe();
    let server = Server::start(LIFETIME).await;
    let story = Story::begin();
    story.say(format!(
        "authorization server and API on 127.0.0.1; access tokens live {} s",
        LIFETIME.as_secs()
    ));

    let layer = RefreshLayer::new(sign_in(&server, &story).await?);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();
    let api = server.api_url("/reports");
    let demo = Demo {
        server,
        story,
        layer,
        client,
        api,
    };

    refresh_ahead(&demo).await?;
    rejected_token(&demo).await?;
    concurrent_after_expiry(&demo).await?;
    refresh_token_revoked(&demo).await?;

    let stats = demo.layer.stats();
    demo.story.say(format!(
        "done: {} refreshes ({} refused), {} resend; {} token requests after the sign-in",
        stats.refreshes,
        stats.reauths,
        stats.retries,
        demo.server.token_requests("refresh_token"),
    ));
    assert_eq!((stats.refreshes, stats.reauths, stats.retries), (4, 1, 1));
    assert_eq!(demo.server.token_requests("refresh_token"), 4);

    // What an operator's dashboard would scrape: the Prometheus text exposition of the run.
    let exposition = metrics.render();
    demo.story
        .say("what the run recorded (feature `metrics`), as Prometheus scrapes it:");
    for line in exposition.lines().filter(|line| !line.is_empty()) {
        println!("    {line}");
    }
    for (name, outcome) in [
        ("oauth_refresh_token_requests_total", "success"),
        ("oauth_refresh_token_requests_total", "reauth"),
    ] {
        assert!(
            exposition
                .lines()
                .any(|line| line.starts_with(name)
                    && line.contains(&format!("outcome=\"{outcome}\""))),
            "{name} with outcome {outcome} in:\n{exposition}"
        );
    }
    assert!(exposition.contains("oauth_refresh_reauth_required_total"));
    assert!(exposition.contains("oauth_refresh_resends_total"));
    assert!(exposition.contains("# HELP oauth_refresh_reauth_required_total "));
    Ok(())
}

/// The authorization code grant with PKCE: the URL a browser would open, the server's redirect
/// back, and the exchange, which gives a refresh-token grant holding the first tokens.
/// `authorization_code_pkce.rs` shows it step by step.
async fn sign_in(server: &Server, story: &Story) -> Result<RefreshTokenGrant, Error> {
    let pending = AuthorizationCode::new(
        server.authorization_url(),
        server.token_url(),
        APP_CLIENT_ID,
        APP_REDIRECT_URI,
    )
    .start()?;
    story.say(format!(
        "sign-in: a browser would open {}?response_type=code&…&code_challenge_method=S256",
        server.authorization_url()
    ));
    // The embedded server approves at once; read its redirect as the browser would.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = browser.get(pending.url().as_str()).send().await?;
    let callback = redirect.headers()["location"].to_str()?.to_owned();
    let grant = pending.exchange(&callback).await?;
    story.say("sign-in: code exchanged with its PKCE verifier; first tokens received");
    assert_eq!(server.token_requests("authorization_code"), 1);
    Ok(grant)
}

/// 1. STALE tokens are sent at once while one background refresh replaces them.
async fn refresh_ahead(demo: &Demo) -> Result<(), Error> {
    demo.story
        .say("1. requests every 200 ms across the refresh-ahead window (half the token's life)");
    let generation = demo.layer.stats().generation;
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let answer = demo.get().await?;
        demo.story.say(format!(
            "   GET /api/reports -> {} in {:>4.1} ms: {}",
            answer.status,
            millis(answer.took),
            answer.body
        ));
        assert_eq!(answer.status, 200);
        slowest = slowest.max(answer.took);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    demo.story.say(format!(
        "   the token changed once, with {} token request; the slowest request took {:.1} ms, \
         less than the {} ms the token endpoint takes: none waited for it",
        demo.server.token_requests("refresh_token"),
        millis(slowest),
        TOKEN_ENDPOINT_LATENCY.as_millis(),
    ));
    assert_eq!(demo.server.token_requests("refresh_token"), 1);
    assert_eq!(demo.layer.stats().generation, generation + 1);
    assert!(slowest < TOKEN_ENDPOINT_LATENCY, "a request waited");
    Ok(())
}

/// 2. A rejected token: one refresh, one resend, and the caller sees only the answer to it.
async fn rejected_token(demo: &Demo) -> Result<(), Error> {
    demo.story
        .say("2. the server revokes the access token before its expiry; the next request:");
    demo.server.revoke_access_tokens();
    let rejections = demo.server.api_rejections();
    // The refresh may start a little later than the 401: refreshes start at least 1 s apart.
    let answer = demo.get().await?;
    demo.story.say(format!(
        "   GET /api/reports -> {} in {:.0} ms: {} (after a 401, a refresh and one resend: \
         RetryStatus::{:?})",
        answer.status,
        millis(answer.took),
        answer.body,
        answer.retry.expect("the response says what the retry did"),
    ));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.retry, Some(RetryStatus::Retried));
    assert_eq!(demo.server.api_rejections() - rejections, 1);
    assert_eq!(demo.server.token_requests("refresh_token"), 2);
    assert_eq!(demo.layer.stats().retries, 1);
    Ok(())
}

/// 3. EXPIRED: every request waits for the one shared refresh.
async fn concurrent_after_expiry(demo: &Demo) -> Result<(), Error> {
    let idle = demo
        .layer
        .stats()
        .time_to_expiry
        .expect("the server sent expires_in")
        + Duration::from_millis(50);
    demo.story.say(format!(
        "3. no requests for {:.2} s, until the token has expired; then 100 at once",
        idle.as_secs_f64()
    ));
    tokio::time::sleep(idle).await;
    let (refreshes, token_requests) = (
        demo.layer.stats().refreshes,
        demo.server.token_requests("refresh_token"),
    );
    let slowest = concurrent_requests(&demo.client, &demo.api, 100).await?;
    let token_requests = demo.server.token_requests("refresh_token") - token_requests;
    demo.story.say(format!(
        "   100 x 200 OK after {token_requests} shared refresh; each waited for it, the slowest {:.0} ms",
        millis(slowest)
    ));
    assert_eq!(token_requests, 1, "one refresh shared by 100 callers");
    assert_eq!(demo.layer.stats().refreshes - refreshes, 1);
    Ok(())
}

/// 4. The refresh is refused: the valid token is served to the end, then `ReauthRequired`.
async fn refresh_token_revoked(demo: &Demo) -> Result<(), Error> {
    demo.story
        .say("4. the user signs the app out: the server revokes every refresh token");
    demo.server.revoke_refresh_tokens();
    let refused = demo.server.refused_token_requests();
    let deadline = Instant::now() + LIFETIME + Duration::from_secs(1);
    let mut served_after_refusal = 0;
    let reauth = loop {
        assert!(
            Instant::now() < deadline,
            "the token should have expired by now"
        );
        match demo.client.get(&demo.api).send().await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                let refresh_refused = demo.layer.stats().reauths > 0;
                served_after_refusal += usize::from(refresh_refused);
                demo.story.say(format!(
                    "   GET /api/reports -> {}: {}{}",
                    response.status(),
                    response.text().await?,
                    match refresh_refused {
                        true => " (its refresh was refused, but it is still valid)",
                        false => "",
                    }
                ));
            }
            Err(reqwest_middleware::Error::Middleware(e)) => {
                match e.downcast_ref::<ReauthRequired>() {
                    Some(reauth) => break reauth.clone(),
                    None => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    demo.story
        .say("   the token expired; the next request fails:");
    demo.story.say(format!("   ReauthRequired: {reauth}"));
    demo.story
        .say(format!("   reauth.error(): {}", reauth.error()));
    assert_eq!(reauth.error(), "invalid_grant");
    assert!(served_after_refusal > 0);
    // One refused refresh, neither resent nor repeated by later requests.
    assert_eq!(demo.server.refused_token_requests() - refused, 1);
    Ok(())
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

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
