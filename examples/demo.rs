//! The crate doing its job, in a few seconds and with no setup.
//!
//! An in-process authorization server hands out access tokens that live 3 seconds, with
//! rotating refresh tokens; an in-process API accepts only live tokens. A `RefreshLayer`
//! stands between a client and the API:
//!
//! 1. requests across a proactive (refresh-ahead) refresh: none waits;
//! 2. a token the API rejects: the request is resent once, with a new token;
//! 3. 100 concurrent requests on an expired token: one refresh serves them all;
//! 4. a revoked refresh token: `ReauthRequired`, in plain words.
//!
//! Run it with `cargo run --example demo`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use oauth_refresh::{
    AccessToken, BoxFuture, ReauthRequired, RefreshError, RefreshLayer, RefreshToken, RetryStatus,
    TokenRequest, TokenSet, TokenSource,
};
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt};

const LIFETIME: Duration = Duration::from_secs(3);

/// The authorization server: issues access tokens and rotates refresh tokens.
#[derive(Default)]
struct AuthServer {
    issued: AtomicUsize,
    /// access token → expiry
    live: Mutex<HashMap<String, Instant>>,
    /// the one refresh token that may be redeemed next
    current_refresh_token: Mutex<Option<String>>,
}

impl AuthServer {
    fn token_endpoint(&self, presented: Option<&str>) -> Result<TokenSet, RefreshError> {
        let mut current = self.current_refresh_token.lock().unwrap();
        if presented != current.as_deref() {
            return Err(ReauthRequired::new("invalid_grant")
                .description("refresh token revoked or already used")
                .host("auth.demo")
                .into());
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let access = format!("access-{n}");
        let refresh = format!("refresh-{n}");
        self.live
            .lock()
            .unwrap()
            .insert(access.clone(), Instant::now() + LIFETIME);
        *current = Some(refresh.clone());
        let mut tokens = TokenSet::new(AccessToken::new(access));
        tokens.expires_in = Some(LIFETIME);
        tokens.refresh_token = Some(RefreshToken::new(refresh));
        Ok(tokens)
    }

    fn accepts(&self, access_token: &str) -> bool {
        let live = self.live.lock().unwrap();
        live.get(access_token)
            .is_some_and(|expiry| Instant::now() < *expiry)
    }

    fn revoke_everything(&self) {
        self.live.lock().unwrap().clear();
        *self.current_refresh_token.lock().unwrap() = None;
    }
}

/// How the client reaches the server's token endpoint: a refresh-token grant.
struct Grant(Arc<AuthServer>);

impl TokenSource for Grant {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(150)).await; // a network round trip
            let presented = request.refresh_token.as_ref().map(RefreshToken::secret);
            self.0.token_endpoint(presented)
        })
    }

    fn grant(&self) -> &str {
        "refresh_token"
    }

    fn host(&self) -> Option<&str> {
        Some("auth.demo")
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        Some(RefreshToken::new("refresh-0"))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    let say = move |line: String| println!("[{:>5.2}s] {line}", started.elapsed().as_secs_f64());

    let server = Arc::new(AuthServer::default());
    *server.current_refresh_token.lock().unwrap() = Some("refresh-0".into());
    let api_calls = Arc::new(AtomicUsize::new(0));
    let api = {
        let server = server.clone();
        let calls = api_calls.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let server = server.clone();
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let token = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_owned();
                let response = if server.accepts(&token) {
                    Response::new(Full::new(Bytes::from(format!("200 OK for {token}"))))
                } else {
                    Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
                        .body(Full::new(Bytes::new()))?
                };
                Ok::<_, http::Error>(response)
            }
        })
    };

    let layer = RefreshLayer::new(Grant(server.clone())).refresh_ahead(Duration::from_secs(1));
    let client = layer.layer(api);
    let get = || Request::get("https://api.demo/items").body(Full::new(Bytes::new()));

    say("1. requests across a proactive refresh (tokens live 3 s, refreshed 1 s ahead)".into());
    for _ in 0..6 {
        let sent = Instant::now();
        let response = client.clone().oneshot(get()?).await?;
        let waited = sent.elapsed();
        let body = response.into_body().collect().await?.to_bytes();
        say(format!(
            "   {} (waited {:>3} ms, generation {})",
            String::from_utf8_lossy(&body),
            waited.as_millis(),
            layer.stats().generation
        ));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    say("2. the API stops accepting the current token".into());
    server.live.lock().unwrap().clear();
    let response = client.clone().oneshot(get()?).await?;
    let retried = response.extensions().get::<RetryStatus>().copied();
    let body = response.into_body().collect().await?.to_bytes();
    say(format!(
        "   rejected, resent once: {} ({retried:?}, {} retries so far)",
        String::from_utf8_lossy(&body),
        layer.stats().retries
    ));

    say("3. 100 concurrent requests after the token expired".into());
    tokio::time::sleep(LIFETIME).await;
    let before = layer.stats().refreshes;
    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(client.clone().oneshot(get().expect("request"))))
        .collect();
    let mut ok = 0;
    for call in calls {
        if call.await??.status() == StatusCode::OK {
            ok += 1;
        }
    }
    say(format!(
        "   {ok}/100 answered 200 after {} shared refresh",
        layer.stats().refreshes - before
    ));

    say("4. the authorization server revokes the refresh token".into());
    server.revoke_everything();
    layer.invalidate();
    match client.clone().oneshot(get()?).await {
        Err(err) => match err.downcast_ref::<ReauthRequired>() {
            Some(reauth) => say(format!("   ReauthRequired: {reauth}")),
            None => say(format!("   unexpected error: {err}")),
        },
        Ok(response) => say(format!("   unexpected answer: {}", response.status())),
    }

    let stats = layer.stats();
    say(format!(
        "done: {} refreshes, {} failures, {} reauths, {} retries, {} API calls",
        stats.refreshes,
        stats.failures,
        stats.reauths,
        stats.retries,
        api_calls.load(Ordering::SeqCst)
    ));
    Ok(())
}
