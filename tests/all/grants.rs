//! The grants over real HTTP, against the scripted token endpoint on 127.0.0.1: what they send,
//! how every kind of answer is read, and which failures are resent.
//!
//! These tests run on the real clock: a paused clock would jump ahead while a socket waits.
//! Timeout tests pause it on purpose.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use oauth_refresh::oauth::{
    AuthorizationCode, AuthorizationError, ClientAuth, HttpClient, ResponseBody, ServerMetadata,
};
use oauth_refresh::{
    BoxFuture, ClientCredentials, ConfigurationError, ReauthRequired, RefreshError,
    RefreshErrorKind, RefreshLayer, RefreshTokenGrant, TokenUpdate, TransientError, TransientKind,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tower::{ServiceBuilder, ServiceExt};

use crate::support::{Api, get, text};
use crate::token_endpoint::{Answer, TokenEndpoint};

/// A client secret with every character RFC 6749 §2.3.1's encoding exists for.
const AWKWARD_SECRET: &str = "s3cr:t+/%&=~ x";

fn tokens(access_token: &str, refresh_token: Option<&str>) -> Answer {
    let mut body =
        json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600});
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    Answer::json(200, body)
}

/// Runs one refresh and returns its error.
async fn refresh_error(layer: &RefreshLayer) -> RefreshError {
    layer.refresh().await.expect_err("the refresh should fail")
}

/// Sends one request through `layer` to an API that echoes the token it saw.
async fn call(layer: &RefreshLayer) -> Result<String, tower::BoxError> {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Api::open());
    let response = service.oneshot(get()).await?;
    Ok(text(response).await)
}

#[tokio::test]
async fn client_credentials_post_a_form_with_basic_credentials_encoded_per_rfc_6749() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    let grant = ClientCredentials::new(server.url(), "my client", AWKWARD_SECRET)
        .scope("api:read")
        .scope("api:write")
        .audience("https://api.example.com")
        .resource("https://a.example.com")
        .resource("https://b.example.com")
        .param("tenant", "t&1");
    let layer = RefreshLayer::new(grant);

    assert_eq!(call(&layer).await.unwrap(), "hello at-1");

    let [request] = server.requests().try_into().expect("one token request");
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/token");
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(request.headers["accept"], "application/json");
    assert_eq!(
        request.basic_credentials(),
        Some(("my client".to_owned(), AWKWARD_SECRET.to_owned()))
    );
    let form = request.form();
    let expected = [
        ("grant_type", "client_credentials"),
        ("scope", "api:read api:write"),
        ("audience", "https://api.example.com"),
        ("resource", "https://a.example.com"),
        ("resource", "https://b.example.com"),
        ("tenant", "t&1"),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()));
    assert_eq!(
        form, expected,
        "no client credentials in the form with Basic"
    );
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    let grant = ClientCredentials::new(server.url(), "my client", AWKWARD_SECRET)
        .client_auth(ClientAuth::Post);
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();

    let request = &server.requests()[0];
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(request.param("client_id").as_deref(), Some("my client"));
    assert_eq!(
        request.param("client_secret").as_deref(),
        Some(AWKWARD_SECRET)
    );
}

#[tokio::test]
async fn client_credentials_without_a_refresh_token_is_no_error() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    server.push(tokens("at-2", None));
    let layer = RefreshLayer::new(ClientCredentials::new(server.url(), "svc", "pw"));
    layer.refresh().await.unwrap();
    layer.refresh().await.unwrap();
    assert_eq!(call(&layer).await.unwrap(), "hello at-2");
    assert_eq!(server.count(), 2);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.param("refresh_token").is_none())
    );
}

#[tokio::test]
async fn refresh_tokens_rotate_and_an_answer_without_one_keeps_the_last() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-2")));
    server.push(tokens("at-2", None));
    server.push(tokens("at-3", Some("rt-3")));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    for _ in 0..3 {
        layer.refresh().await.unwrap();
    }
    let presented: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.param("refresh_token").unwrap())
        .collect();
    assert_eq!(presented, ["rt-1", "rt-2", "rt-2"]);
    let request = &server.requests()[0];
    assert_eq!(
        request.param("grant_type").as_deref(),
        Some("refresh_token")
    );
    assert_eq!(
        request.param("client_id").as_deref(),
        Some("app"),
        "a public client names itself"
    );
    assert!(request.basic_credentials().is_none());
}

#[tokio::test]
async fn a_confidential_refresh_grant_authenticates_with_basic() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-1").client_secret(AWKWARD_SECRET);
    RefreshLayer::new(grant).refresh().await.unwrap();
    let request = &server.requests()[0];
    assert_eq!(
        request.basic_credentials(),
        Some(("app".to_owned(), AWKWARD_SECRET.to_owned()))
    );
    assert_eq!(request.param("client_id"), None);
}

#[tokio::test]
async fn a_stored_access_token_is_used_until_its_wall_clock_expiry() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-2", Some("rt-2")));
    let expires_at = std::time::SystemTime::now() + Duration::from_secs(600);
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-1")
        .initial_access_token("at-stored", expires_at);
    let layer = RefreshLayer::new(grant);
    assert_eq!(call(&layer).await.unwrap(), "hello at-stored");
    assert_eq!(
        server.count(),
        0,
        "no token request while the stored token lives"
    );
    let left = layer.stats().time_to_expiry.unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );

    let expired = std::time::SystemTime::now() - Duration::from_secs(5);
    let grant =
        RefreshTokenGrant::new(server.url(), "app", "rt-1").initial_access_token("at-old", expired);
    let layer = RefreshLayer::new(grant);
    assert_eq!(
        call(&layer).await.unwrap(),
        "hello at-2",
        "an expired stored token is refreshed"
    );
    assert_eq!(
        server.requests()[0].param("refresh_token").as_deref(),
        Some("rt-1")
    );
}

type Stored = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn recording_hook(
    stored: &Stored,
) -> impl Fn(TokenUpdate) -> std::future::Ready<Result<(), std::io::Error>> + Send + Sync + 'static
{
    let stored = stored.clone();
    move |update: TokenUpdate| {
        stored.lock().unwrap().push((
            update.refresh_token.unwrap().secret().to_owned(),
            update.previous_refresh_token.map(|p| p.secret().to_owned()),
        ));
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn the_persistence_hook_gets_the_refresh_token_to_use_next_and_the_one_presented() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-2")));
    server.push(tokens("at-2", None));
    let stored = Stored::default();
    let grant =
        RefreshTokenGrant::new(server.url(), "app", "rt-1").persist(recording_hook(&stored));
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    layer.refresh().await.unwrap();
    assert_eq!(
        *stored.lock().unwrap(),
        [
            ("rt-2".to_owned(), Some("rt-1".to_owned())),
            // No new refresh token: the kept one is stored again, never a gap.
            ("rt-2".to_owned(), Some("rt-2".to_owned())),
        ]
    );
}

#[tokio::test]
async fn waiters_are_released_only_after_the_hook_has_run() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-2")));
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Mutex::new(Some(entered_tx));
    let release = Arc::new(tokio::sync::Notify::new());
    let stored = Stored::default();
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-1").persist({
        let release = release.clone();
        let stored = stored.clone();
        move |tokens: TokenUpdate| {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let release = release.clone();
            let stored = stored.clone();
            async move {
                release.notified().await;
                let rt = tokens.refresh_token.unwrap().secret().to_owned();
                stored.lock().unwrap().push((rt, None));
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let layer = RefreshLayer::new(grant);
    let request = tokio::spawn({
        let layer = layer.clone();
        async move { call(&layer).await.unwrap() }
    });
    entered_rx.await.unwrap();
    tokio::task::yield_now().await;
    assert!(
        !request.is_finished(),
        "the request waits while the hook runs"
    );
    release.notify_one();
    assert_eq!(request.await.unwrap(), "hello at-1");
    assert_eq!(
        stored.lock().unwrap().len(),
        1,
        "stored before the waiter went on"
    );
}

#[tokio::test]
async fn a_failing_hook_keeps_the_new_tokens_and_is_counted() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-2")));
    server.push(tokens("at-2", Some("rt-3")));
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-1")
        .persist(|_: TokenUpdate| async { Err::<(), _>(std::io::Error::other("disk full")) });
    let layer = RefreshLayer::new(grant);
    assert_eq!(call(&layer).await.unwrap(), "hello at-1");
    assert_eq!(layer.stats().persist_failures, 1);
    layer.refresh().await.unwrap();
    assert_eq!(
        server.requests()[1].param("refresh_token").as_deref(),
        Some("rt-2"),
        "the rotated token is used although it could not be stored"
    );
}

#[tokio::test]
async fn invalid_grant_is_reauth_required_with_the_servers_words() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "Token is revoked", "error_uri": "https://docs.example.com/e"}),
    ));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    let err = call(&layer).await.unwrap_err();
    let reauth = err
        .downcast_ref::<ReauthRequired>()
        .expect("ReauthRequired");
    assert_eq!(reauth.error(), "invalid_grant");
    assert_eq!(reauth.description(), Some("Token is revoked"));
    assert_eq!(reauth.uri(), Some("https://docs.example.com/e"));
    assert_eq!(reauth.host(), Some("127.0.0.1"));
    assert!(reauth.to_string().contains("sign in again"), "{reauth}");
}

#[tokio::test]
async fn an_error_inside_a_200_is_an_error() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(200, json!({"error": "invalid_grant"})));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    assert_eq!(refresh_error(&layer).await.kind(), RefreshErrorKind::Reauth);
}

#[tokio::test]
async fn client_errors_are_configuration_errors_not_reauth() {
    for code in ["invalid_client", "unauthorized_client", "invalid_scope"] {
        let server = TokenEndpoint::start().await;
        server.push(Answer::json(
            401,
            json!({"error": code, "error_description": "nope"}),
        ));
        let layer = RefreshLayer::new(ClientCredentials::new(server.url(), "svc", "pw"));
        let err = call(&layer).await.unwrap_err();
        let config = err
            .downcast_ref::<ConfigurationError>()
            .unwrap_or_else(|| panic!("{code}: {err}"));
        assert_eq!(config.error(), code);
        assert_eq!(server.count(), 1, "{code} is not resent");
    }
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_transient_and_carry_retry_after() {
    let cases = [
        Answer::raw(503, Some("text/html"), "<html>down</html>").header("retry-after", "7"),
        Answer::json(429, json!({"error": "slow_down"})).header("retry-after", "7"),
        Answer::json(200, json!({"error": "temporarily_unavailable"})).header("retry-after", "7"),
    ];
    let kinds = [
        TransientKind::ServerError(503),
        TransientKind::RateLimited,
        TransientKind::TemporarilyUnavailable,
    ];
    for (answer, kind) in cases.into_iter().zip(kinds) {
        let server = TokenEndpoint::start().await;
        server.push(answer);
        let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
        let RefreshError::Transient(err) = refresh_error(&layer).await else {
            panic!("{kind:?}: not transient")
        };
        assert_eq!(err.kind(), kind);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{kind:?}");
    }
}

#[tokio::test]
async fn a_refresh_token_grant_that_reached_the_server_is_never_resent() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::raw(502, None, ""));
    server.push(tokens("at-1", Some("rt-2")));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    let err = refresh_error(&layer).await;
    assert_eq!(err.kind(), RefreshErrorKind::Transient);
    assert_eq!(server.count(), 1, "a 502 after sending is not resent");

    let server = TokenEndpoint::start().await;
    server.push(Answer::close());
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    let RefreshError::Transient(err) = refresh_error(&layer).await else {
        panic!("not transient")
    };
    assert_eq!(err.kind(), TransientKind::Network);
    assert_eq!(
        server.count(),
        1,
        "a connection dropped after sending is not resent"
    );
}

#[tokio::test]
async fn client_credentials_are_resent_after_a_server_error() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::raw(502, None, ""));
    server.push(Answer::close());
    server.push(tokens("at-1", None));
    let layer = RefreshLayer::new(ClientCredentials::new(server.url(), "svc", "pw"));
    assert_eq!(call(&layer).await.unwrap(), "hello at-1");
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn a_refresh_that_never_reached_the_server_is_resent() {
    // A port nothing listens on: the connection is refused before anything is sent.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let client = Counting::default();
    let grant = RefreshTokenGrant::new(&url, "app", "rt-1").http_client(client.clone());
    let layer = RefreshLayer::new(grant);
    let RefreshError::Transient(err) = refresh_error(&layer).await else {
        panic!("not transient")
    };
    assert_eq!(err.kind(), TransientKind::Network);
    assert!(
        err.is_resend_safe(),
        "a refused connection proves nothing was sent"
    );
    assert_eq!(client.sent(), 3, "resent up to the attempt limit");
}

/// A reqwest client that counts the requests it is asked to send.
#[derive(Clone, Default)]
struct Counting {
    client: reqwest::Client,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Counting {
    fn sent(&self) -> usize {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl HttpClient for Counting {
    fn send(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.client.send(request)
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_token_endpoint_times_out() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::hang());
    let grant = RefreshTokenGrant::new(server.url(), "app", "rt-1").timeout(Duration::from_secs(2));
    let layer = RefreshLayer::new(grant);
    let RefreshError::Transient(err) = refresh_error(&layer).await else {
        panic!("not transient")
    };
    assert_eq!(err.kind(), TransientKind::Timeout);
    assert!(!err.is_resend_safe());
    assert_eq!(
        server.count(),
        1,
        "a refresh that may have arrived is not resent"
    );
}

#[tokio::test]
async fn malformed_answers_are_clear_transient_errors_that_quote_nothing() {
    let page = "<html><body>Sorry! s3cr3t-in-page</body></html>";
    let cases = [
        ("HTML error page", Answer::raw(200, Some("text/html"), page)),
        ("empty body", Answer::raw(200, Some("application/json"), "")),
        ("HTML 400", Answer::raw(400, Some("text/html"), page)),
        (
            "JSON without a token",
            Answer::json(200, json!({"token": "s3cr3t"})),
        ),
    ];
    for (what, answer) in cases {
        let server = TokenEndpoint::start().await;
        server.push(answer);
        let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
        let err = refresh_error(&layer).await;
        let RefreshError::Transient(transient) = &err else {
            panic!("{what}: {err:?}")
        };
        assert_eq!(transient.kind(), TransientKind::InvalidResponse, "{what}");
        let source = std::error::Error::source(transient)
            .expect("a reason")
            .to_string();
        assert!(
            source.starts_with("200 OK with ") || source.starts_with("400 Bad Request with "),
            "{what}: {source}"
        );
        let printed = format!("{err} {err:?} {source}");
        assert!(!printed.contains("s3cr3t"), "{what}: {printed}");
    }
}

#[tokio::test]
async fn a_10_mib_answer_is_refused_without_reading_it_all() {
    for chunked in [false, true] {
        let server = TokenEndpoint::start().await;
        server.push(Answer::huge(200, 10 * 1024 * 1024, chunked));
        let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
        let err = call(&layer).await.unwrap_err();
        let transient = err.downcast_ref::<TransientError>().expect("transient");
        assert_eq!(
            transient.kind(),
            TransientKind::ResponseTooLarge,
            "chunked: {chunked}"
        );
        let reason = std::error::Error::source(transient).unwrap().to_string();
        assert!(reason.contains("256 KiB"), "{reason}");
    }
}

#[tokio::test]
async fn json_under_the_wrong_content_type_is_read() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::raw(
        200,
        Some("text/plain"),
        r#"{"access_token":"at-1","token_type":"bearer","expires_in":60}"#,
    ));
    let layer = RefreshLayer::new(ClientCredentials::new(server.url(), "svc", "pw"));
    assert_eq!(call(&layer).await.unwrap(), "hello at-1");
}

#[tokio::test]
async fn expires_in_is_read_as_a_number_a_string_zero_or_not_at_all() {
    let server = TokenEndpoint::start().await;
    let layer = RefreshLayer::new(ClientCredentials::new(server.url(), "svc", "pw"));
    let lifetime = |layer: &RefreshLayer| layer.stats().time_to_expiry;

    server.push(Answer::json(
        200,
        json!({"access_token": "at-1", "expires_in": "3600"}),
    ));
    layer.refresh().await.unwrap();
    let left = lifetime(&layer).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));

    server.push(Answer::json(
        200,
        json!({"access_token": "at-2", "expires_in": 0}),
    ));
    layer.refresh().await.unwrap();
    assert_eq!(
        lifetime(&layer),
        Some(Duration::ZERO),
        "0 means already expired"
    );

    server.push(Answer::json(
        200,
        json!({"access_token": "at-3", "token_type": "Bearer"}),
    ));
    layer.refresh().await.unwrap();
    assert_eq!(lifetime(&layer), None, "unknown, never the old expiry");
    assert_eq!(call(&layer).await.unwrap(), "hello at-3");
}

#[tokio::test]
async fn a_jwt_without_expires_in_is_scheduled_by_its_exp_claim() {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 120;
    let jwt = format!(
        "{}.{}.signature",
        engine.encode(r#"{"alg":"RS256","typ":"at+jwt"}"#),
        engine.encode(json!({"sub": "svc", "exp": exp}).to_string())
    );
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(
        200,
        json!({"access_token": jwt, "token_type": "Bearer"}),
    ));
    let layer = RefreshLayer::new(ClientCredentials::new(server.url(), "svc", "pw"));
    layer.refresh().await.unwrap();
    let left = layer.stats().time_to_expiry.expect("a lifetime from exp");
    assert!(
        left > Duration::from_secs(110) && left <= Duration::from_secs(120),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_bad_access_token_never_costs_the_refresh_token_beside_it() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(
        200,
        json!({"access_token": 42, "refresh_token": "rt-2", "expires_in": "soon"}),
    ));
    server.push(tokens("at-2", None));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    assert_eq!(
        refresh_error(&layer).await.kind(),
        RefreshErrorKind::Transient
    );
    layer.refresh().await.unwrap();
    assert_eq!(
        server.requests()[1].param("refresh_token").as_deref(),
        Some("rt-2"),
        "the refresh token of the unusable answer is presented next"
    );
}

#[tokio::test]
async fn credentials_never_go_to_a_plain_http_host_that_is_not_loopback() {
    let grant = ClientCredentials::new("http://login.example.com/token", "svc", AWKWARD_SECRET);
    let layer = RefreshLayer::new(grant);
    let err = call(&layer).await.unwrap_err();
    let config = err
        .downcast_ref::<ConfigurationError>()
        .expect("configuration error");
    assert_eq!(config.error(), "insecure_endpoint");
    assert!(!err.to_string().contains(AWKWARD_SECRET));
}

#[tokio::test]
async fn a_users_own_reqwest_client_can_be_injected() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    let client = reqwest::Client::builder()
        .user_agent("injected/1.0")
        .build()
        .unwrap();
    let grant = ClientCredentials::new(server.url(), "svc", "pw").http_client(client);
    RefreshLayer::new(grant).refresh().await.unwrap();
    assert_eq!(server.requests()[0].headers["user-agent"], "injected/1.0");
}

fn sign_in(server: &TokenEndpoint) -> AuthorizationCode {
    AuthorizationCode::new(
        format!("{}/authorize", server.base_url()),
        server.url(),
        "app",
        "http://127.0.0.1:8765/callback",
    )
    .scope("openid")
}

fn query(url: &url::Url, name: &str) -> String {
    url.query_pairs()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

#[tokio::test]
async fn pkce_exchange_sends_the_verifier_of_the_challenge_and_seeds_a_refresh_grant() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-1")));
    server.push(tokens("at-2", Some("rt-2")));
    let pending = sign_in(&server).start().unwrap();
    let challenge = query(pending.url(), "code_challenge");
    let callback = format!(
        "http://127.0.0.1:8765/callback?code=c0de&state={}",
        pending.state()
    );
    let grant = pending.exchange(&callback).await.unwrap();
    assert_eq!(grant.refresh_token().unwrap().secret(), "rt-1");

    let exchange = &server.requests()[0];
    assert_eq!(
        exchange.param("grant_type").as_deref(),
        Some("authorization_code")
    );
    assert_eq!(exchange.param("code").as_deref(), Some("c0de"));
    assert_eq!(
        exchange.param("redirect_uri").as_deref(),
        Some("http://127.0.0.1:8765/callback")
    );
    let verifier = exchange.param("code_verifier").unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(
        engine.encode(Sha256::digest(verifier.as_bytes())),
        challenge
    );

    // The tokens of the sign-in are used at once; the refresh token serves the next refresh.
    let layer = RefreshLayer::new(grant);
    assert_eq!(call(&layer).await.unwrap(), "hello at-1");
    assert_eq!(server.count(), 1);
    layer.refresh().await.unwrap();
    assert_eq!(
        server.requests()[1].param("refresh_token").as_deref(),
        Some("rt-1")
    );
}

#[tokio::test]
async fn a_state_mismatch_fails_before_any_network_call() {
    let server = TokenEndpoint::start().await;
    let pending = sign_in(&server).start().unwrap();
    let err = pending
        .exchange("http://127.0.0.1:8765/callback?code=c0de&state=forged")
        .await
        .unwrap_err();
    assert!(matches!(err, AuthorizationError::StateMismatch), "{err}");
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn a_refused_code_is_reauth() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::json(400, json!({"error": "invalid_grant"})));
    let pending = sign_in(&server).start().unwrap();
    let callback = format!(
        "http://127.0.0.1:8765/callback?code=used&state={}",
        pending.state()
    );
    let err = pending.exchange(&callback).await.unwrap_err();
    assert!(
        matches!(&err, AuthorizationError::Token(RefreshError::Reauth(r)) if r.error() == "invalid_grant"),
        "{err}"
    );
}

fn metadata(issuer: &str) -> Answer {
    Answer::json(
        200,
        json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/token"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "code_challenge_methods_supported": ["S256"],
        }),
    )
}

#[tokio::test]
async fn discovery_reads_rfc_8414_metadata() {
    let server = TokenEndpoint::start().await;
    let issuer = server.base_url();
    server.route("/.well-known/oauth-authorization-server", metadata(&issuer));
    let found = ServerMetadata::discover(&issuer).await.unwrap();
    assert_eq!(found.token_endpoint, format!("{issuer}/token"));
    assert_eq!(
        found.authorization_endpoint,
        Some(format!("{issuer}/authorize"))
    );
    assert_eq!(found.code_challenge_methods_supported, ["S256"]);
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration_and_checks_the_issuer() {
    let server = TokenEndpoint::start().await;
    let issuer = format!("{}/tenant", server.base_url());
    server.route(
        "/.well-known/oauth-authorization-server/tenant",
        Answer::raw(404, None, ""),
    );
    server.route(
        "/tenant/.well-known/openid-configuration",
        metadata(&issuer),
    );
    let found = ServerMetadata::discover(&issuer).await.unwrap();
    assert_eq!(found.issuer, issuer);

    let other = TokenEndpoint::start().await;
    other.route(
        "/.well-known/oauth-authorization-server",
        metadata("https://evil.example.com"),
    );
    let err = ServerMetadata::discover(&other.base_url())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RefreshErrorKind::Configuration, "{err}");
}

#[tokio::test(start_paused = true)]
async fn discovery_of_a_server_that_never_answers_times_out() {
    let server = TokenEndpoint::start().await;
    server.push(Answer::hang());
    let err = ServerMetadata::discover(&server.base_url())
        .await
        .unwrap_err();
    let RefreshError::Transient(err) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.kind(), TransientKind::Timeout);
}
