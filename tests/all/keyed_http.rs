//! A keyed layer over real HTTP: client credentials keyed by token parameters against the
//! scripted token endpoint, through tower and through reqwest-middleware.

use std::time::Duration;

use oauth_refresh::ClientCredentials;
use oauth_refresh::keyed::{KeyError, KeyedRefreshLayer};
use oauth_refresh::oauth::TokenParams;
use reqwest_middleware::ClientBuilder;
use serde_json::json;
use tower::{Layer, ServiceExt};

use crate::api_server::ApiServer;
use crate::support::{Api, get, text};
use crate::token_endpoint::{Answer, TokenEndpoint};

/// Issues `tok-<scope>-<n>` tokens, `n` counting every token request, so that each token says
/// what it was asked for.
fn issue_tokens_naming_their_scope(endpoint: &TokenEndpoint) {
    let issued = std::sync::atomic::AtomicUsize::new(0);
    endpoint.respond_with(move |request| {
        let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let scope = request.param("scope").unwrap_or_default().replace(' ', "+");
        let audience = request.param("audience").unwrap_or_default();
        Answer::json(
            200,
            json!({
                "access_token": format!("tok-{scope}-{audience}-{n}"),
                "token_type": "Bearer",
                "expires_in": 3600,
            }),
        )
    });
}

#[tokio::test]
async fn two_requests_with_different_scopes_through_one_client_get_two_tokens_and_never_each_others()
 {
    let endpoint = TokenEndpoint::start().await;
    issue_tokens_naming_their_scope(&endpoint);
    let grant = ClientCredentials::new(endpoint.url(), "svc", "s3cr3t").scope("default");
    let layer = KeyedRefreshLayer::new(grant);
    let service = layer.layer(Api::open());

    let scopes = ["orders:read", "orders:write", "orders:read orders:write"];
    let requests = (0..60).map(|i| {
        let service = service.clone();
        let scope = scopes[i % 3];
        tokio::spawn(async move {
            let mut request = get();
            request
                .extensions_mut()
                .insert(TokenParams::new().scope(scope));
            let body = text(service.oneshot(request).await.unwrap()).await;
            (scope, body)
        })
    });
    let mut seen = std::collections::HashMap::new();
    for request in requests.collect::<Vec<_>>() {
        let (scope, body) = request.await.unwrap();
        let token = body.strip_prefix("hello ").unwrap().to_owned();
        // The token was obtained for exactly this request's scopes.
        let asked = match scope {
            "orders:read orders:write" => "orders:read+orders:write",
            one => one,
        };
        assert!(
            token.starts_with(&format!("tok-{asked}--")),
            "{scope}: {token}"
        );
        // And every request of a scope got the same one.
        assert_eq!(seen.entry(scope).or_insert_with(|| token.clone()), &token);
    }
    assert_eq!(endpoint.count(), 3, "one token request per set of scopes");
    let mut asked: Vec<_> = endpoint
        .requests()
        .iter()
        .map(|r| r.param("scope").unwrap())
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        ["orders:read", "orders:read orders:write", "orders:write"],
        "the request's scopes replace the grant's own"
    );
    assert_eq!(layer.cells(), 3);
}

#[tokio::test]
async fn audiences_through_reqwest_middleware_each_get_their_own_token() {
    let endpoint = TokenEndpoint::start().await;
    issue_tokens_naming_their_scope(&endpoint);
    let api = Api::open();
    let server = ApiServer::start(api.clone()).await;
    let layer = KeyedRefreshLayer::new(ClientCredentials::new(endpoint.url(), "svc", "s3cr3t"));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    for audience in [
        "https://orders.test",
        "https://billing.test",
        "https://orders.test",
    ] {
        let response = client
            .get(server.url("/items"))
            .with_extension(TokenParams::new().audience(audience))
            .send()
            .await
            .unwrap();
        let body = response.text().await.unwrap();
        assert!(
            body.starts_with(&format!("hello tok--{audience}-")),
            "{audience}: {body}"
        );
    }
    assert_eq!(endpoint.count(), 2);
    let audiences: Vec<_> = endpoint
        .requests()
        .iter()
        .map(|r| r.param("audience").unwrap())
        .collect();
    assert_eq!(audiences, ["https://orders.test", "https://billing.test"]);

    // No key: refused before anything is sent, reachable by downcast.
    let error = client.get(server.url("/items")).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("a middleware error: {error:?}");
    };
    assert!(error.downcast_ref::<KeyError>().unwrap().is_missing());
    assert_eq!(api.calls(), 3, "the keyless request never reached the API");
}

#[tokio::test(start_paused = true)]
async fn a_keyed_client_credentials_token_is_refreshed_per_key_at_expiry() {
    let endpoint = TokenEndpoint::start().await;
    let issued = std::sync::atomic::AtomicUsize::new(0);
    endpoint.respond_with(move |request| {
        let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let scope = request.param("scope").unwrap();
        Answer::json(
            200,
            json!({"access_token": format!("{scope}-{n}"), "token_type": "Bearer", "expires_in": 60}),
        )
    });
    let layer = KeyedRefreshLayer::new(ClientCredentials::new(endpoint.url(), "svc", "s3cr3t"));
    let api = Api::open();
    let service = layer.layer(api.clone());
    let send = |scope: &'static str| {
        let service = service.clone();
        async move {
            let mut request = get();
            request
                .extensions_mut()
                .insert(TokenParams::new().scope(scope));
            text(service.oneshot(request).await.unwrap()).await
        }
    };

    assert_eq!(send("a").await, "hello a-1");
    assert_eq!(send("b").await, "hello b-2");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(send("b").await, "hello b-3");
    assert_eq!(send("a").await, "hello a-4");
    assert_eq!(send("a").await, "hello a-4");
    assert_eq!(endpoint.count(), 4);
}

/// What the scripted endpoint saw of one user's grant.
#[derive(Default)]
struct Grant {
    /// The refresh token the user holds now (the last one issued).
    current: u64,
    /// When each token request for the user arrived.
    refreshed_at: Vec<std::time::Instant>,
}

/// The security promise under real concurrency: 2,000 users, each with a rotating refresh
/// token of its own, requests with random users on eight threads across several token
/// lifetimes. The API checks every request's token against the user it was sent for.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn two_thousand_users_under_concurrency_never_get_each_others_tokens() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use oauth_refresh::keyed::factory_fn;
    use oauth_refresh::{RefreshTokenGrant, TokenSource};

    const USERS: u64 = 2_000;
    const LIFETIME: u64 = 2;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct User(u64);

    let endpoint = TokenEndpoint::start().await;
    let grants: Arc<Mutex<HashMap<u64, Grant>>> = Arc::default();
    let reused = Arc::new(AtomicUsize::new(0));
    {
        let grants = grants.clone();
        let reused = reused.clone();
        endpoint.respond_with(move |request| {
            // rt-<user>-<n>: the user's n-th refresh token.
            let presented = request.param("refresh_token").unwrap();
            let mut parts = presented.trim_start_matches("rt-").split('-');
            let user: u64 = parts.next().unwrap().parse().unwrap();
            let n: u64 = parts.next().unwrap().parse().unwrap();
            let mut grants = grants.lock().unwrap();
            let grant = grants.entry(user).or_default();
            grant.refreshed_at.push(std::time::Instant::now());
            if n != grant.current {
                reused.fetch_add(1, Ordering::SeqCst);
                return Answer::json(400, json!({"error": "invalid_grant"}));
            }
            grant.current = n + 1;
            Answer::json(
                200,
                json!({
                    "access_token": format!("at-{user}-{}", n + 1),
                    "refresh_token": format!("rt-{user}-{}", n + 1),
                    "token_type": "Bearer",
                    "expires_in": LIFETIME,
                }),
            )
        });
    }
    let url = endpoint.url();
    let layer = KeyedRefreshLayer::new(factory_fn(move |user: User| {
        let grant = RefreshTokenGrant::new(&url, "app", format!("rt-{}-0", user.0));
        async move { Ok(Some(Box::new(grant) as Box<dyn TokenSource>)) }
    }));

    // The API: the request still carries its key, so it can check the token against it.
    let wrong = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let api = {
        let (wrong, served) = (wrong.clone(), served.clone());
        tower::service_fn(
            move |request: http::Request<http_body_util::Full<bytes::Bytes>>| {
                let user = request.extensions().get::<User>().unwrap().0;
                let token = request.headers()[http::header::AUTHORIZATION]
                    .to_str()
                    .unwrap();
                if !token.starts_with(&format!("Bearer at-{user}-")) {
                    wrong.fetch_add(1, Ordering::SeqCst);
                }
                served.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                    http_body_util::Full::new(bytes::Bytes::new()),
                )))
            },
        )
    };
    let service = layer.layer(api);

    let started = std::time::Instant::now();
    let run_for = Duration::from_secs(3 * LIFETIME + 1);
    let callers = (0..64u64).map(|caller| {
        let service = service.clone();
        tokio::spawn(async move {
            // A small xorshift per caller: random users, reproducible per caller.
            let mut state = caller.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut sent = 0;
            while started.elapsed() < run_for {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut request = get();
                request.extensions_mut().insert(User(state % USERS));
                service.clone().oneshot(request).await.unwrap();
                sent += 1;
                if sent % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    });
    let mut sent = 0;
    for caller in callers.collect::<Vec<_>>() {
        sent += caller.await.unwrap();
    }

    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "a request carried another user's token"
    );
    assert_eq!(
        reused.load(Ordering::SeqCst),
        0,
        "a refresh token was presented twice"
    );
    assert_eq!(served.load(Ordering::SeqCst), sent);
    let grants = grants.lock().unwrap();
    assert!(
        grants.len() as u64 > USERS * 9 / 10,
        "{} users refreshed",
        grants.len()
    );
    // One refresh per token lifetime: no refresh token was presented twice (above), so no
    // token was refreshed twice; and no user's tokens were refreshed faster than their
    // refresh windows open (half the lifetime, less a fifth for jitter, each from the last
    // refresh).
    let most = run_for.as_millis() as usize / (LIFETIME as usize * 1000 * 2 / 5) + 1;
    let mut refreshes = 0;
    for (user, grant) in grants.iter() {
        refreshes += grant.refreshed_at.len();
        assert!(
            grant.refreshed_at.len() <= most,
            "user {user}: {} refreshes in {run_for:?}",
            grant.refreshed_at.len()
        );
    }
    // (How many requests fit in the run depends on the machine's load: not asserted.)
    eprintln!(
        "{sent} requests, {refreshes} token requests, {} users",
        grants.len()
    );
}
