//! Interop with a real third-party authorization server: `oidc-provider` from npm, started on
//! 127.0.0.1 with access tokens that live a few seconds and refresh-token rotation with reuse
//! detection on. The protected API asks the server whether each token it sees is honoured.
//!
//! Real clock: the server counts real seconds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use oauth_refresh::oauth::{AuthorizationCode, ClientAuth, ServerMetadata};
use oauth_refresh::{BoxError, ClientCredentials, ReauthRequired, RefreshLayer, RefreshTokenGrant};
use tower::{BoxError as TowerBoxError, Layer, ServiceBuilder, ServiceExt};

use crate::oidc_provider::{
    APP_ID, APP_REDIRECT_URI, APP_SECRET, CC_BASIC_ID, CC_BASIC_SECRET, CC_POST_ID, CC_POST_SECRET,
    OidcProvider, authorize_headless,
};

/// A protected API that honours exactly the tokens the authorization server honours, and
/// answers 401 with a Bearer `invalid_token` challenge otherwise.
pub(crate) fn api(
    provider: Arc<OidcProvider>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = TowerBoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let provider = provider.clone();
        async move {
            let token = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let honoured = match &token {
                Some(token) => provider.token_active(token).await,
                None => false,
            };
            let response = if honoured {
                Response::new(Full::new(Bytes::from_static(b"ok")))
            } else {
                Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            };
            Ok::<_, TowerBoxError>(response)
        }
    })
}

pub(crate) async fn call(
    layer: &RefreshLayer,
    provider: &Arc<OidcProvider>,
) -> Result<StatusCode, BoxError> {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(api(provider.clone()));
    let request = Request::get("http://127.0.0.1/resource")
        .body(Full::new(Bytes::new()))
        .unwrap();
    Ok(service.oneshot(request).await?.status())
}

/// Signs `alice` in through the authorization code flow with PKCE, without a browser, using
/// the endpoints discovery finds.
pub(crate) async fn sign_in(provider: &OidcProvider) -> RefreshTokenGrant {
    let metadata = ServerMetadata::discover(&provider.issuer).await.unwrap();
    assert_eq!(metadata.token_endpoint, provider.token_url());
    assert!(
        metadata
            .code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    );
    let sign_in = AuthorizationCode::new(
        metadata.authorization_endpoint.unwrap(),
        &metadata.token_endpoint,
        APP_ID,
        APP_REDIRECT_URI,
    )
    .client_secret(APP_SECRET)
    .scope("openid")
    .scope("api:read");
    let pending = sign_in.start().unwrap();
    let callback = authorize_headless(pending.url().as_str()).await;
    pending.exchange(&callback).await.unwrap()
}

#[tokio::test]
async fn client_credentials_with_basic_and_post_authentication() {
    let provider = Arc::new(OidcProvider::start().await);
    let basic = RefreshLayer::new(
        ClientCredentials::new(provider.token_url(), CC_BASIC_ID, CC_BASIC_SECRET)
            .scope("api:read"),
    );
    let post = RefreshLayer::new(
        ClientCredentials::new(provider.token_url(), CC_POST_ID, CC_POST_SECRET)
            .client_auth(ClientAuth::Post)
            .scope("api:read"),
    );
    assert_eq!(call(&basic, &provider).await.unwrap(), StatusCode::OK);
    assert_eq!(call(&post, &provider).await.unwrap(), StatusCode::OK);

    let stats = provider.stats().await;
    assert_eq!(stats.client_credentials, 2);
    assert_eq!(
        (stats.client_secret_basic, stats.client_secret_post),
        (1, 1)
    );
    let lifetime = basic.stats().time_to_expiry.unwrap();
    assert!(
        lifetime <= Duration::from_secs(3),
        "expires_in is read: {lifetime:?}"
    );
}

#[tokio::test]
async fn authorization_code_with_pkce_gives_tokens_the_server_honours() {
    let provider = Arc::new(OidcProvider::start().await);
    let grant = sign_in(&provider).await;
    assert!(grant.refresh_token().is_some());
    let layer = RefreshLayer::new(grant);
    assert_eq!(call(&layer, &provider).await.unwrap(), StatusCode::OK);
    let stats = provider.stats().await;
    assert_eq!(stats.authorization_code, 1);
    assert_eq!(
        stats.refresh_token, 0,
        "the sign-in's own access token was used"
    );
}

#[tokio::test]
async fn three_waves_of_50_concurrent_requests_cause_one_refresh_per_expiry() {
    const TTL: u64 = 2;
    let provider = Arc::new(OidcProvider::start_with(TTL).await);
    let layer = RefreshLayer::new(sign_in(&provider).await);
    for wave in 1..=3u64 {
        // Past the lifetime: the wave finds the token EXPIRED and must share one refresh.
        tokio::time::sleep(Duration::from_millis(TTL * 1000 + 300)).await;
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let layer = layer.clone();
                let provider = provider.clone();
                tokio::spawn(async move { call(&layer, &provider).await.unwrap() })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), StatusCode::OK, "wave {wave}");
        }
        let stats = provider.stats().await;
        assert_eq!(
            stats.refresh_token, wave,
            "one refresh per expiry, after wave {wave}"
        );
    }
    let stats = provider.stats().await;
    assert_eq!(
        stats.refresh_token_reused, 0,
        "no refresh token presented twice"
    );
    assert_eq!(stats.invalid_grant, 0);
    assert_eq!(layer.stats().refreshes, 3);
    assert_eq!(
        layer.stats().retries,
        0,
        "no request was sent an expired token"
    );
}

#[tokio::test]
async fn the_servers_reuse_detection_is_on() {
    // What the waves test relies on: presenting a rotated-away refresh token is caught.
    let provider = Arc::new(OidcProvider::start().await);
    let grant = sign_in(&provider).await;
    let first = grant.refresh_token().unwrap().clone();
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();

    let replay = RefreshLayer::new(
        RefreshTokenGrant::new(provider.token_url(), APP_ID, first).client_secret(APP_SECRET),
    );
    let err = replay.refresh().await.unwrap_err();
    assert_eq!(err.kind(), oauth_refresh::RefreshErrorKind::Reauth, "{err}");
    assert_eq!(provider.stats().await.refresh_token_reused, 1);
}

#[tokio::test]
async fn a_revoked_refresh_token_gives_reauth_required_invalid_grant() {
    let provider = Arc::new(OidcProvider::start().await);
    let layer = RefreshLayer::new(sign_in(&provider).await);
    assert_eq!(call(&layer, &provider).await.unwrap(), StatusCode::OK);

    provider.revoke_all().await;
    // The API now refuses the token; the layer refreshes once, and the server refuses that.
    let err = call(&layer, &provider).await.unwrap_err();
    let reauth = err
        .downcast_ref::<ReauthRequired>()
        .unwrap_or_else(|| panic!("ReauthRequired expected, got {err}"));
    assert_eq!(reauth.error(), "invalid_grant");
    assert_eq!(reauth.host(), Some("127.0.0.1"));
    assert!(reauth.to_string().contains("sign in again"));
    let stats = provider.stats().await;
    assert_eq!((stats.refresh_token, stats.invalid_grant), (1, 1));
}

/// Several real users, each signed in with the authorization code and PKCE, share one keyed
/// layer: under concurrent requests with random users across several token lifetimes, the
/// API (asking the server whose each token is) never sees a user's request carry another's
/// token, and the server sees no refresh token presented twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_users_through_one_keyed_layer_never_get_each_others_tokens() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use oauth_refresh::TokenSource;
    use oauth_refresh::keyed::{KeyedRefreshLayer, factory_fn};

    const TTL: u64 = 2;
    const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

    let provider = Arc::new(OidcProvider::start_with(TTL).await);
    let metadata = ServerMetadata::discover(&provider.issuer).await.unwrap();
    let mut grants = HashMap::new();
    for (index, user) in USERS.into_iter().enumerate() {
        let pending = AuthorizationCode::new(
            metadata.authorization_endpoint.clone().unwrap(),
            &metadata.token_endpoint,
            APP_ID,
            APP_REDIRECT_URI,
        )
        .client_secret(APP_SECRET)
        .scope("openid")
        .scope("api:read")
        .param("login_hint", user)
        .start()
        .unwrap();
        let callback = authorize_headless(pending.url().as_str()).await;
        grants.insert(UserIndex(index), pending.exchange(&callback).await.unwrap());
    }
    // Each user's grant, with the tokens of its sign-in, is handed to the layer once.
    let grants = Arc::new(Mutex::new(grants));
    let layer = KeyedRefreshLayer::new(factory_fn(move |user: UserIndex| {
        let grant = grants.lock().unwrap().remove(&user);
        async move { Ok(grant.map(|grant| Box::new(grant) as Box<dyn TokenSource>)) }
    }));

    let wrong = Arc::new(AtomicUsize::new(0));
    let api = SubjectApi {
        provider: provider.clone(),
        users: &USERS,
        wrong: wrong.clone(),
    };
    let service = layer.layer(api);

    let started = std::time::Instant::now();
    let run_for = Duration::from_secs(3 * TTL + 1);
    let callers = (0..16usize).map(|caller| {
        let service = service.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while started.elapsed() < run_for {
                let mut request = Request::get("http://127.0.0.1/resource")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                request
                    .extensions_mut()
                    .insert(UserIndex((caller * 7 + sent * 3) % USERS.len()));
                service.clone().oneshot(request).await.unwrap();
                sent += 1;
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
    let stats = provider.stats().await;
    assert_eq!(
        stats.refresh_token_reused, 0,
        "no refresh token presented twice"
    );
    assert_eq!(stats.invalid_grant, 0);
    for (index, user) in USERS.into_iter().enumerate() {
        let refreshes = layer.stats(&UserIndex(index)).unwrap().refreshes;
        // One refresh per lifetime at most (the window opens at half of it), and at least one
        // for each lifetime that ended during the run.
        assert!(
            (2..=8).contains(&refreshes),
            "{user}: {refreshes} refreshes in {run_for:?}"
        );
    }
    assert!(sent > 100, "{sent} requests");
}

/// An index into a test's list of users: the key of a keyed layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct UserIndex(usize);

/// A protected API that asks the server whose each token is, and counts the requests whose
/// token is not of the user the request was sent for (its [`UserIndex`] extension).
#[derive(Clone)]
struct SubjectApi {
    provider: Arc<OidcProvider>,
    users: &'static [&'static str],
    wrong: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<Request<Full<Bytes>>> for SubjectApi {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let user = self.users[request.extensions().get::<UserIndex>().unwrap().0];
        let header = request.headers()[header::AUTHORIZATION].to_str().unwrap();
        let token = header.strip_prefix("Bearer ").unwrap().to_owned();
        let (provider, wrong) = (self.provider.clone(), self.wrong.clone());
        Box::pin(async move {
            if provider.token_subject(&token).await.as_deref() != Some(user) {
                wrong.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(Response::new(Full::new(Bytes::new())))
        })
    }
}
