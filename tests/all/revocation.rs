//! Sign-out (RFC 7009) over real HTTP, against the scripted endpoint on 127.0.0.1: the
//! refresh token (and the access token where asked) revoked at the server, the cell cleared,
//! the persistence hook told to remove the stored tokens, and no token request afterwards.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::keyed::{KeyedRefreshLayer, SourceFactory};
use oauth_refresh::{
    AccessToken, BoxError, BoxFuture, ReauthRequired, RefreshError, RefreshLayer,
    RefreshTokenGrant, RevocationError, Revoke, TokenSet, TokenSource, TokenUpdate, TransientKind,
    source_fn,
};
use serde_json::json;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::support::{Api, get, text};
use crate::token_endpoint::{Answer, Recorded, TokenEndpoint};

fn tokens(access_token: &str, refresh_token: &str) -> Answer {
    Answer::json(
        200,
        json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh_token}),
    )
}

type Updates = Arc<Mutex<Vec<TokenUpdate>>>;

/// A confidential refresh grant at `server`, revoking at `/revoke`, whose hook records.
fn grant(server: &TokenEndpoint, updates: &Updates) -> RefreshTokenGrant {
    let hook = updates.clone();
    RefreshTokenGrant::new(server.url(), "app", "rt-1")
        .client_secret("cs-1")
        .revocation_url(format!("{}/revoke", server.base_url()))
        .persist(move |update: TokenUpdate| {
            hook.lock().unwrap().push(update);
            async { Ok::<_, std::io::Error>(()) }
        })
}

fn revocations(server: &TokenEndpoint) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/revoke")
        .collect()
}

/// The tokens revoked at `server`, in order.
fn revoked_tokens(server: &TokenEndpoint) -> Vec<String> {
    revocations(server)
        .iter()
        .map(|r| r.param("token").unwrap())
        .collect()
}

fn token_requests(server: &TokenEndpoint) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path == "/token")
        .count()
}

/// A request through `layer` fails with `ReauthRequired` `signed_out`.
async fn assert_signed_out(layer: &RefreshLayer) {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Api::open());
    let err = service.oneshot(get()).await.unwrap_err();
    let reauth = err
        .downcast_ref::<ReauthRequired>()
        .unwrap_or_else(|| panic!("ReauthRequired expected, got {err}"));
    assert_eq!(reauth.error(), "signed_out");
    assert_eq!(
        reauth.to_string(),
        "no token to use (signed_out: the application signed the user out); the user must \
         sign in again"
    );
}

#[tokio::test]
async fn sign_out_revokes_the_refresh_token_clears_the_cell_and_tells_the_hook() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", "rt-2"));
    server.route("/revoke", Answer::raw(200, None, ""));
    let updates = Updates::default();
    let layer = RefreshLayer::new(grant(&server, &updates));
    layer.refresh().await.unwrap();

    layer.sign_out(Revoke::RefreshToken).await.unwrap();

    let revoked = revocations(&server);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].param("token").as_deref(), Some("rt-2"));
    assert_eq!(
        revoked[0].param("token_type_hint").as_deref(),
        Some("refresh_token")
    );
    assert_eq!(
        revoked[0].basic_credentials(),
        Some(("app".into(), "cs-1".into())),
        "the client authenticates as at the token endpoint"
    );
    {
        let updates = updates.lock().unwrap();
        let removal = updates.last().unwrap();
        assert!(removal.is_removal(), "{removal:?}");
        assert_eq!(removal.refresh_token, None);
        assert_eq!(removal.access_token, None);
        assert_eq!(
            removal.previous_refresh_token.as_ref().unwrap().secret(),
            "rt-2"
        );
        assert!(updates[..updates.len() - 1].iter().all(|u| !u.is_removal()));
    }

    // Later requests, a manual refresh too, get ReauthRequired without a token request.
    let before = server.count();
    assert_signed_out(&layer).await;
    assert_signed_out(&layer.clone().retry(false)).await;
    let err = layer.refresh().await.unwrap_err();
    assert!(
        matches!(&err, RefreshError::Reauth(r) if r.error() == "signed_out"),
        "{err}"
    );
    assert_eq!(server.count(), before, "no request after the sign-out");
    assert_eq!(layer.stats().generation, 0, "no token left");
    assert_eq!(layer.stats().time_to_expiry, None);
}

#[tokio::test]
async fn revoke_all_tokens_revokes_the_access_token_too() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", "rt-2"));
    server.route("/revoke", Answer::raw(200, None, ""));
    let layer = RefreshLayer::new(grant(&server, &Updates::default()));
    layer.refresh().await.unwrap();
    layer.sign_out(Revoke::AllTokens).await.unwrap();
    let revoked: Vec<_> = revocations(&server)
        .iter()
        .map(|r| {
            (
                r.param("token").unwrap(),
                r.param("token_type_hint").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revoked,
        [
            ("rt-2".to_owned(), "refresh_token".to_owned()),
            ("at-1".to_owned(), "access_token".to_owned()),
        ]
    );
    assert_signed_out(&layer).await;
}

#[tokio::test]
async fn a_failed_revocation_still_discards_the_tokens_and_reports_it() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", "rt-2"));
    server.route(
        "/revoke",
        Answer::raw(503, Some("text/html"), "<html>rt-2 down</html>").header("retry-after", "30"),
    );
    let updates = Updates::default();
    let layer = RefreshLayer::new(grant(&server, &updates));
    layer.refresh().await.unwrap();

    let err = layer.sign_out(Revoke::RefreshToken).await.unwrap_err();
    let RevocationError::Failed(RefreshError::Transient(transient)) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(transient.kind(), TransientKind::ServerError(503));
    assert_eq!(transient.retry_after(), Some(Duration::from_secs(30)));
    let message = err.to_string();
    assert!(message.contains("discarded locally"), "{message}");
    assert!(!format!("{message} {err:?}").contains("rt-2"), "{message}");

    assert!(updates.lock().unwrap().last().unwrap().is_removal());
    let before = server.count();
    assert_signed_out(&layer).await;
    assert_eq!(server.count(), before);
}

#[tokio::test]
async fn without_a_revocation_url_the_tokens_are_discarded_and_the_error_says_so() {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", "rt-2"));
    let layer = RefreshLayer::new(RefreshTokenGrant::new(server.url(), "app", "rt-1"));
    layer.refresh().await.unwrap();
    let err = layer.sign_out(Revoke::RefreshToken).await.unwrap_err();
    assert!(
        matches!(&err, RevocationError::Failed(RefreshError::Configuration(e)) if e.error() == "no_revocation_endpoint"),
        "{err:?}"
    );
    assert_eq!(server.count(), 1);
    assert_signed_out(&layer).await;
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn a_source_that_cannot_revoke_is_still_signed_out() {
    let fetched = Arc::new(Mutex::new(0));
    let counter = fetched.clone();
    let layer = RefreshLayer::new(source_fn(move |_| {
        *counter.lock().unwrap() += 1;
        async { Ok(TokenSet::new(AccessToken::new("at-1"))) }
    }));
    layer.refresh().await.unwrap();
    let err = layer.sign_out(Revoke::AllTokens).await.unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    assert_signed_out(&layer).await;
    assert_eq!(*fetched.lock().unwrap(), 1, "no fetch after the sign-out");

    // A new sign-in's tokens end the sign-out.
    layer
        .set_tokens(TokenSet::new(AccessToken::new("at-new")))
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Api::open());
    assert_eq!(
        text(service.oneshot(get()).await.unwrap()).await,
        "hello at-new"
    );
}

/// A sign-out racing a refresh: the layer's second refresh (answered after 2 s, rotating
/// `rt-2` to `rt-3`) is at the server.
struct Racing {
    server: TokenEndpoint,
    updates: Updates,
    layer: RefreshLayer,
    refreshing: tokio::task::JoinHandle<Result<(), RefreshError>>,
}

async fn a_refresh_at_the_server() -> Racing {
    let server = TokenEndpoint::start().await;
    server.push(tokens("at-1", "rt-2"));
    server.push(tokens("at-2", "rt-3").delay(Duration::from_secs(2)));
    server.route("/revoke", Answer::raw(200, None, ""));
    let updates = Updates::default();
    let layer = RefreshLayer::new(grant(&server, &updates));
    layer.refresh().await.unwrap();
    let refreshing = tokio::spawn({
        let layer = layer.clone();
        async move { layer.refresh().await }
    });
    while token_requests(&server) < 2 {
        tokio::task::yield_now().await;
    }
    Racing {
        server,
        updates,
        layer,
        refreshing,
    }
}

/// Starts a sign-out of `layer` and returns once it waits for the running refresh.
async fn sign_out_waiting(
    layer: &RefreshLayer,
) -> tokio::task::JoinHandle<Result<(), RevocationError>> {
    let signing_out = tokio::spawn({
        let layer = layer.clone();
        async move { layer.sign_out(Revoke::RefreshToken).await }
    });
    while layer.stats().last_error.is_none() {
        tokio::task::yield_now().await;
    }
    signing_out
}

#[tokio::test(start_paused = true)]
async fn a_refresh_in_flight_while_signing_out_does_not_resurrect_the_tokens() {
    let Racing {
        server,
        updates,
        layer,
        refreshing,
    } = a_refresh_at_the_server().await;
    layer.sign_out(Revoke::RefreshToken).await.unwrap();

    // The refresh ended without installing its tokens; the sign-out waited for it and
    // revoked the refresh token it rotated to.
    let refreshed = refreshing.await.unwrap().unwrap_err();
    assert!(
        matches!(&refreshed, RefreshError::Reauth(r) if r.error() == "signed_out"),
        "{refreshed}"
    );
    let revoked = revocations(&server);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].param("token").as_deref(), Some("rt-3"));
    let last = updates.lock().unwrap().last().cloned().unwrap();
    assert!(last.is_removal());
    assert_eq!(last.previous_refresh_token.unwrap().secret(), "rt-3");

    let before = server.count();
    assert_signed_out(&layer).await;
    assert_eq!(server.count(), before);
    assert_eq!(layer.stats().generation, 0);
}

/// The application signs the user in again while the sign-out still waits for a refresh:
/// the new sign-in's tokens stay, and the signed-out grant's refresh token (the one that
/// refresh rotated to) is revoked all the same, never the new one.
#[tokio::test]
async fn a_sign_in_before_the_sign_out_has_run_keeps_its_tokens_and_the_old_grant_is_revoked() {
    let Racing {
        server,
        updates,
        layer,
        refreshing,
    } = a_refresh_at_the_server().await;
    let signing_out = sign_out_waiting(&layer).await;
    // Signed in again (a new authorization code redeemed elsewhere).
    let signed_in = TokenSet::new(AccessToken::new("at-9")).with_refresh_token("rt-9");
    layer.set_tokens(signed_in).unwrap();

    signing_out.await.unwrap().unwrap();
    drop(refreshing.await.unwrap());
    let revoked = revoked_tokens(&server);
    assert_eq!(
        revoked,
        ["rt-3"],
        "the signed-out grant's newest refresh token, only"
    );
    assert!(updates.lock().unwrap().iter().all(|u| !u.is_removal()));
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Api::open());
    assert_eq!(
        text(service.oneshot(get()).await.unwrap()).await,
        "hello at-9"
    );
    // The next refresh presents the new sign-in's refresh token.
    server.push(tokens("at-10", "rt-10"));
    layer.refresh().await.unwrap();
    let last = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .last()
        .unwrap();
    assert_eq!(last.param("refresh_token").as_deref(), Some("rt-9"));
}

/// A sign-in that brings no refresh token, installed while the sign-out waits: the cell does
/// not present the signed-out grant's refresh token later, and that one is revoked.
#[tokio::test]
async fn a_sign_in_without_a_refresh_token_does_not_inherit_the_signed_out_one() {
    let Racing {
        server,
        layer,
        refreshing,
        ..
    } = a_refresh_at_the_server().await;
    let signing_out = sign_out_waiting(&layer).await;
    layer
        .set_tokens(TokenSet::new(AccessToken::new("at-9")))
        .unwrap();
    signing_out.await.unwrap().unwrap();
    drop(refreshing.await.unwrap());
    assert_eq!(revoked_tokens(&server), ["rt-3"]);

    let before = token_requests(&server);
    drop(layer.refresh().await);
    assert_eq!(
        token_requests(&server),
        before,
        "a signed-out refresh token was presented"
    );
}

/// Signed out, in again and out again before the first sign-out's flight ran: both grants
/// are revoked, the older first, and the cell is signed out.
#[tokio::test]
async fn out_in_and_out_again_while_a_refresh_runs_revokes_both_grants() {
    let Racing {
        server,
        updates,
        layer,
        refreshing,
    } = a_refresh_at_the_server().await;
    let first = sign_out_waiting(&layer).await;
    let signed_in = TokenSet::new(AccessToken::new("at-9")).with_refresh_token("rt-9");
    layer.set_tokens(signed_in).unwrap();
    let second = tokio::spawn({
        let layer = layer.clone();
        async move { layer.sign_out(Revoke::RefreshToken).await }
    });

    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    drop(refreshing.await.unwrap());
    let revoked = revoked_tokens(&server);
    assert_eq!(revoked, ["rt-3", "rt-9"]);
    assert!(updates.lock().unwrap().last().unwrap().is_removal());
    assert_signed_out(&layer).await;
}

/// Each user's grant at `server`, with the key's own revocation hook recorded.
struct Users {
    server_url: String,
    base_url: String,
    removed: Arc<Mutex<Vec<(String, TokenUpdate)>>>,
}

impl SourceFactory<String> for Users {
    fn source(
        &self,
        user: String,
    ) -> BoxFuture<'_, Result<Option<Box<dyn TokenSource>>, BoxError>> {
        let grant = RefreshTokenGrant::new(&self.server_url, "app", format!("rt-of-{user}"))
            .revocation_url(format!("{}/revoke", self.base_url));
        Box::pin(async move { Ok(Some(Box::new(grant) as Box<dyn TokenSource>)) })
    }

    fn persist(&self, user: &String, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        self.removed
            .lock()
            .unwrap()
            .push((user.clone(), update.clone()));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn signing_out_one_key_revokes_its_tokens_only() {
    let server = TokenEndpoint::start().await;
    server.respond_with(|request| {
        let user = request
            .param("refresh_token")
            .unwrap()
            .replace("rt-of-", "");
        tokens(&format!("at-of-{user}"), &format!("rt-of-{user}"))
    });
    server.route("/revoke", Answer::raw(200, None, ""));
    let removed = Arc::new(Mutex::new(Vec::new()));
    let layer = KeyedRefreshLayer::new(Users {
        server_url: server.url(),
        base_url: server.base_url(),
        removed: removed.clone(),
    });
    let service = layer.layer(Api::open());
    let call = |user: &str| {
        let mut request = get();
        request.extensions_mut().insert(user.to_owned());
        service.clone().oneshot(request)
    };
    assert_eq!(
        text(call("alice").await.unwrap()).await,
        "hello at-of-alice"
    );
    assert_eq!(text(call("bob").await.unwrap()).await, "hello at-of-bob");

    layer
        .sign_out(&"alice".to_owned(), Revoke::RefreshToken)
        .await
        .unwrap();
    let revoked = revocations(&server);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].param("token").as_deref(), Some("rt-of-alice"));
    {
        let removed = removed.lock().unwrap();
        let (user, removal) = removed.last().unwrap();
        assert_eq!(user, "alice");
        assert!(removal.is_removal());
    }

    let before = server.count();
    let err = call("alice").await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ReauthRequired>()
            .map(ReauthRequired::error),
        Some("signed_out"),
        "{err}"
    );
    assert_eq!(server.count(), before);
    assert_eq!(text(call("bob").await.unwrap()).await, "hello at-of-bob");

    // A key that has no cell yet gets one from the factory, so its stored token is revoked.
    layer
        .sign_out(&"carol".to_owned(), Revoke::RefreshToken)
        .await
        .unwrap();
    let revoked = revocations(&server);
    assert_eq!(
        revoked.last().unwrap().param("token").as_deref(),
        Some("rt-of-carol")
    );
}
