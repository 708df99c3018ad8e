//! Token exchange (RFC 8693) and the JWT-bearer grant (RFC 7523 §2.1) over real HTTP, against
//! the scripted token endpoint on 127.0.0.1: the exact forms, the subject token taken afresh
//! from its source, the errors in their classes, and no presented credential ever printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oauth_refresh::oauth::{Assertion, JwtBearer, SecurityToken, TokenExchange, token_type};
use oauth_refresh::{
    AccessToken, ConfigurationError, RefreshError, RefreshErrorKind, RefreshLayer,
    RefreshTokenGrant, TokenSet, TransientKind, source_fn,
};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::{Api, get, text};
use crate::token_endpoint::{Answer, TokenEndpoint};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An exchange's answer: a bearer access token that lives `expires_in` seconds.
fn exchanged(access_token: &str, expires_in: u64) -> Answer {
    Answer::json(
        200,
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "issued_token_type": token_type::ACCESS_TOKEN,
        }),
    )
}

fn tokens(access_token: &str, refresh_token: Option<&str>) -> Answer {
    let mut body =
        json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600});
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    Answer::json(200, body)
}

/// A user's layer over a refresh token grant at `server`.
fn user_layer(server: &TokenEndpoint) -> RefreshLayer {
    RefreshLayer::new(RefreshTokenGrant::new(server.url(), "web", "rt-1"))
}

async fn call(layer: &RefreshLayer) -> Result<String, tower::BoxError> {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Api::open());
    Ok(text(service.oneshot(get()).await?).await)
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn token_exchange_posts_the_rfc_8693_form_with_the_subject_and_actor_tokens() {
    let idp = TokenEndpoint::start().await;
    idp.push(tokens("user-at-1", Some("rt-2")));
    let sts = TokenEndpoint::start().await;
    sts.push(exchanged("orders-at-1", 3600));
    let user = user_layer(&idp);
    let actor = SecurityToken::from_fn(token_type::JWT, || async {
        Ok::<_, std::io::Error>("actor-jwt".to_owned())
    });
    let exchange = TokenExchange::new(sts.url(), "gateway", SecurityToken::from_layer(&user))
        .client_secret("gw-secret")
        .actor(actor)
        .requested_token_type(token_type::ACCESS_TOKEN)
        .audience("orders")
        .audience("billing")
        .resource("https://orders.example.com")
        .resource("https://billing.example.com")
        .scope("orders:read")
        .scope("billing:read");
    let orders = RefreshLayer::new(exchange);

    assert_eq!(call(&orders).await.unwrap(), "hello orders-at-1");

    let [request] = sts.requests().try_into().expect("one exchange");
    assert_eq!(
        request.form(),
        pairs(&[
            ("grant_type", EXCHANGE),
            ("subject_token", "user-at-1"),
            ("subject_token_type", token_type::ACCESS_TOKEN),
            ("actor_token", "actor-jwt"),
            ("actor_token_type", token_type::JWT),
            ("requested_token_type", token_type::ACCESS_TOKEN),
            ("audience", "orders"),
            ("audience", "billing"),
            ("resource", "https://orders.example.com"),
            ("resource", "https://billing.example.com"),
            ("scope", "orders:read billing:read"),
        ]),
        "client credentials go in the Basic header"
    );
    assert_eq!(
        request.basic_credentials(),
        Some(("gateway".to_owned(), "gw-secret".to_owned()))
    );
    assert_eq!(user.stats().refreshes, 1, "the subject's own refresh");
}

#[tokio::test]
async fn each_exchange_presents_the_subjects_current_token() {
    let idp = TokenEndpoint::start().await;
    idp.push(tokens("user-at-1", Some("rt-2")));
    idp.push(tokens("user-at-2", Some("rt-3")));
    let sts = TokenEndpoint::start().await;
    sts.push(exchanged("x-1", 3600));
    sts.push(exchanged("x-2", 3600));
    let user = user_layer(&idp);
    let exchanged = RefreshLayer::new(TokenExchange::new(
        sts.url(),
        "gateway",
        SecurityToken::from_layer(&user),
    ));

    exchanged.refresh().await.unwrap();
    // The subject's layer refreshes on its own (a rotation, a sign-in, a timer)...
    user.refresh().await.unwrap();
    // ...and the next exchange presents its new token, with no refresh of its own.
    exchanged.refresh().await.unwrap();
    assert_eq!(call(&exchanged).await.unwrap(), "hello x-2");

    let presented: Vec<_> = sts
        .requests()
        .iter()
        .map(|r| r.param("subject_token"))
        .collect();
    assert_eq!(
        presented,
        [Some("user-at-1".to_owned()), Some("user-at-2".to_owned())]
    );
    assert_eq!(idp.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_exchange_is_run_again_at_expiry_never_with_the_refresh_token_it_brought() {
    let sts = TokenEndpoint::start().await;
    let with_refresh_token = |access_token: &str| {
        Answer::json(
            200,
            json!({
                "access_token": access_token, "token_type": "Bearer", "expires_in": 60,
                "issued_token_type": token_type::ACCESS_TOKEN, "refresh_token": "x-rt-1",
            }),
        )
    };
    sts.push(with_refresh_token("x-1"));
    sts.push(with_refresh_token("x-2"));
    let subjects = Arc::new(AtomicUsize::new(0));
    let counter = subjects.clone();
    let subject = SecurityToken::from_fn(token_type::JWT, move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, std::io::Error>(format!("st-{n}")) }
    });
    let layer = RefreshLayer::new(TokenExchange::new(sts.url(), "gateway", subject));

    assert_eq!(call(&layer).await.unwrap(), "hello x-1");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(call(&layer).await.unwrap(), "hello x-2");

    let requests = sts.requests();
    assert_eq!(requests.len(), 2);
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(request.param("grant_type").as_deref(), Some(EXCHANGE));
        assert_eq!(request.param("refresh_token"), None, "never presented");
        assert_eq!(
            request.param("subject_token"),
            Some(format!("st-{}", i + 1))
        );
    }
}

#[tokio::test]
async fn an_exchange_refused_with_invalid_grant_renews_the_layers_subject_token_once() {
    let idp = TokenEndpoint::start().await;
    idp.push(tokens("user-at-1", Some("rt-2")));
    idp.push(tokens("user-at-2", Some("rt-3")));
    let sts = TokenEndpoint::start().await;
    sts.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "subject token revoked"}),
    ));
    sts.push(exchanged("x-1", 3600));
    let user = user_layer(&idp);
    let layer = RefreshLayer::new(TokenExchange::new(
        sts.url(),
        "gateway",
        SecurityToken::from_layer(&user),
    ));

    assert_eq!(call(&layer).await.unwrap(), "hello x-1");
    let presented: Vec<_> = sts
        .requests()
        .iter()
        .map(|r| r.param("subject_token").unwrap())
        .collect();
    assert_eq!(presented, ["user-at-1", "user-at-2"]);
    assert_eq!(user.stats().refreshes, 2);
}

#[tokio::test]
async fn a_refusal_of_a_fresh_subject_token_is_a_configuration_error_not_a_sign_in() {
    let idp = TokenEndpoint::start().await;
    idp.push(tokens("user-at-1", Some("rt-2")));
    idp.push(tokens("user-at-2", Some("rt-3")));
    let sts = TokenEndpoint::start().await;
    let refusal = Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "audience not allowed"}),
    );
    sts.route("/token", refusal);
    let user = user_layer(&idp);
    let layer = RefreshLayer::new(TokenExchange::new(
        sts.url(),
        "gateway",
        SecurityToken::from_layer(&user),
    ));

    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Configuration(err) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(err.error(), "invalid_grant");
    assert!(err.to_string().contains("audience not allowed"), "{err}");
    assert_eq!(
        sts.count(),
        2,
        "sent once more with the renewed subject token"
    );
    assert_eq!(user.stats().refreshes, 2, "the subject was renewed once");
    // Through a tower stack, the same error, reached as users do.
    let err = call(&layer).await.unwrap_err();
    assert!(err.downcast_ref::<ConfigurationError>().is_some(), "{err}");

    // Without a layer to renew, the refusal stands at once.
    let sts = TokenEndpoint::start().await;
    sts.route(
        "/token",
        Answer::json(400, json!({"error": "invalid_grant"})),
    );
    let subject = SecurityToken::from_fn(token_type::JWT, || async {
        Ok::<_, std::io::Error>("st".to_owned())
    });
    let layer = RefreshLayer::new(TokenExchange::new(sts.url(), "gateway", subject));
    let err = layer.refresh().await.unwrap_err();
    assert_eq!(err.kind(), RefreshErrorKind::Configuration);
    assert_eq!(sts.count(), 1);
}

#[tokio::test]
async fn a_subject_that_must_sign_in_again_makes_the_exchange_reauth_required() {
    let idp = TokenEndpoint::start().await;
    idp.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "session ended"}),
    ));
    let sts = TokenEndpoint::start().await;
    let user = user_layer(&idp);
    let layer = RefreshLayer::new(TokenExchange::new(
        sts.url(),
        "gateway",
        SecurityToken::from_layer(&user),
    ));

    let err = call(&layer).await.unwrap_err();
    let reauth = err
        .downcast_ref::<oauth_refresh::ReauthRequired>()
        .unwrap_or_else(|| panic!("ReauthRequired expected, got {err}"));
    assert_eq!(reauth.error(), "invalid_grant");
    assert_eq!(
        reauth.description(),
        Some("the subject token could not be obtained: session ended")
    );
    assert_eq!(reauth.host(), Some("127.0.0.1"));
    assert_eq!(sts.count(), 0, "nothing to exchange, nothing sent");

    // Signed in again on the subject's layer, then a refresh of the exchange's.
    sts.push(exchanged("x-1", 3600));
    user.set_tokens(TokenSet::new(AccessToken::new("user-at-new")).with_refresh_token("rt-new"))
        .unwrap();
    layer.refresh().await.unwrap();
    assert_eq!(call(&layer).await.unwrap(), "hello x-1");
    assert_eq!(
        sts.requests()[0].param("subject_token").as_deref(),
        Some("user-at-new")
    );
}

#[tokio::test]
async fn a_subject_that_fails_for_now_makes_the_exchange_fail_for_now() {
    let idp = TokenEndpoint::start().await;
    idp.route(
        "/token",
        Answer::raw(503, Some("text/plain"), "down").header("retry-after", "3"),
    );
    let sts = TokenEndpoint::start().await;
    let user = user_layer(&idp);
    let layer = RefreshLayer::new(TokenExchange::new(
        sts.url(),
        "gateway",
        SecurityToken::from_layer(&user),
    ));
    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Transient(transient) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(transient.kind(), TransientKind::ServerError(503));
    assert_eq!(transient.retry_after(), Some(Duration::from_secs(3)));
    let source = std::error::Error::source(transient).unwrap();
    assert_eq!(
        source.to_string(),
        "the subject token could not be obtained"
    );
    assert_eq!(sts.count(), 0);
}

#[tokio::test]
async fn a_non_access_token_is_not_sent_unless_accepted() {
    let sts = TokenEndpoint::start().await;
    let id_token = Answer::json(
        200,
        json!({"access_token": "id-tok", "token_type": "N_A", "issued_token_type": token_type::ID_TOKEN}),
    );
    sts.route("/token", id_token);
    let subject = || {
        SecurityToken::from_fn(token_type::JWT, || async {
            Ok::<_, std::io::Error>("st".to_owned())
        })
    };
    let strict = RefreshLayer::new(TokenExchange::new(sts.url(), "gw", subject()));
    let err = call(&strict).await.unwrap_err();
    let err = err
        .downcast_ref::<ConfigurationError>()
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(err.error(), "not_an_access_token");

    let lenient = RefreshLayer::new(
        TokenExchange::new(sts.url(), "gw", subject())
            .requested_token_type(token_type::ID_TOKEN)
            .accept_not_access_token(true),
    );
    assert_eq!(call(&lenient).await.unwrap(), "hello id-tok");
}

/// On a current-thread runtime, so that the refreshes it spawns run on this thread, whose
/// events the log keeps.
#[tokio::test(flavor = "current_thread")]
async fn presented_tokens_never_show_in_errors_debug_or_logs() {
    let log = crate::secrets::trace_log();
    let idp = TokenEndpoint::start().await;
    idp.push(tokens("subj-l0g-at", Some("subj-l0g-rt")));
    let sts = TokenEndpoint::start().await;
    sts.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "no"}),
    ));
    sts.push(Answer::raw(500, Some("text/plain"), "oops"));
    let user = user_layer(&idp);
    let actor = SecurityToken::from_fn(token_type::JWT, || async {
        Ok::<_, std::io::Error>("actor-l0g".to_owned())
    });
    let exchange = TokenExchange::new(sts.url(), "gw", SecurityToken::from_layer(&user))
        .client_secret("cs-l0g")
        .actor(actor);
    let printed_grant = format!("{exchange:?} {exchange:#?}");
    let layer = RefreshLayer::new(exchange);
    let first = layer.refresh().await.unwrap_err();

    let bearer = JwtBearer::new(
        sts.url(),
        "job",
        Assertion::from_fn(|| async { Ok::<_, std::io::Error>("assert-l0g".to_owned()) }),
    );
    sts.push(Answer::json(400, json!({"error": "invalid_grant"})));
    let printed_bearer = format!("{bearer:?}");
    let bearer = RefreshLayer::new(bearer);
    let second = bearer.refresh().await.unwrap_err();

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let printed = format!(
        "{first} {first:?} {second} {second:?} {printed_grant} {printed_bearer} {layer:?} {bearer:?}"
    );
    assert!(log.contains("token_exchange"), "the exchange is traced");
    for (what, text) in [("log", &log), ("printed", &printed)] {
        assert!(!text.contains("l0g"), "{what}: {text}");
    }
}

#[tokio::test]
async fn jwt_bearer_posts_a_fresh_assertion_for_each_request() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", Some("rt-kept")));
    server.push(tokens("at-2", None));
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let assertion = Assertion::from_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, std::io::Error>(format!("eyJ.assertion-{n}.sig")) }
    });
    let grant = JwtBearer::new(server.url(), "job", assertion)
        .scope("invoices:write")
        .scope("invoices:read")
        .param("audience", "billing");
    let layer = RefreshLayer::new(grant);
    layer.refresh().await.unwrap();
    layer.refresh().await.unwrap();
    assert_eq!(call(&layer).await.unwrap(), "hello at-2");

    let requests = server.requests();
    assert_eq!(
        requests[0].form(),
        pairs(&[
            ("grant_type", JWT_BEARER),
            ("assertion", "eyJ.assertion-1.sig"),
            ("scope", "invoices:write invoices:read"),
            ("audience", "billing"),
            ("client_id", "job"),
        ])
    );
    assert_eq!(
        requests[1].param("assertion").as_deref(),
        Some("eyJ.assertion-2.sig")
    );
    assert!(
        requests.iter().all(|r| r.param("refresh_token").is_none()),
        "the refresh token that came back is never presented"
    );
}

#[tokio::test]
async fn jwt_bearer_rereads_its_assertion_file_and_a_refusal_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(format!("oauth-refresh-jwt-bearer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("identity-token");
    std::fs::write(&path, "eyJ.first.sig\n").unwrap();
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", None));
    server.push(Answer::json(
        400,
        json!({"error": "invalid_grant", "error_description": "assertion expired"}),
    ));
    let layer = RefreshLayer::new(JwtBearer::new(
        server.url(),
        "job",
        Assertion::from_file(&path),
    ));
    layer.refresh().await.unwrap();
    std::fs::write(&path, "eyJ.second.sig").unwrap();
    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Configuration(err) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(err.error(), "invalid_grant");
    assert!(
        err.to_string()
            .contains("the assertion was refused: assertion expired"),
        "{err}"
    );
    let presented: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.param("assertion").unwrap())
        .collect();
    assert_eq!(presented, ["eyJ.first.sig", "eyJ.second.sig"]);

    // A file gone (a rotation under way) is transient, naming it; nothing is sent.
    std::fs::remove_file(&path).unwrap();
    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Transient(err) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(err.kind(), TransientKind::Credential);
    let reason = std::error::Error::source(err).unwrap().to_string();
    assert!(reason.contains("identity-token"), "{reason}");
    assert_eq!(server.count(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_source_fn_subject_keeps_its_error_class() {
    let sts = TokenEndpoint::start().await;
    let subject = SecurityToken::from_fn(token_type::JWT, || async {
        Err::<String, _>(oauth_refresh::TransientError::new(TransientKind::Timeout))
    });
    let layer = RefreshLayer::new(TokenExchange::new(sts.url(), "gw", subject));
    let err = layer.refresh().await.unwrap_err();
    let RefreshError::Transient(err) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.kind(), TransientKind::Timeout);
    assert_eq!(sts.count(), 0);
    // A source_fn works as a subject's layer too.
    let inner = RefreshLayer::new(source_fn(|_| async {
        Ok(TokenSet::new(AccessToken::new("inner-at")).with_expires_in(Duration::from_secs(60)))
    }));
    sts.push(exchanged("x", 60));
    let outer = RefreshLayer::new(TokenExchange::new(
        sts.url(),
        "gw",
        SecurityToken::from_layer(&inner),
    ));
    outer.refresh().await.unwrap();
    assert_eq!(
        sts.requests()[0].param("subject_token").as_deref(),
        Some("inner-at")
    );
}
