//! Device authorization (RFC 8628) and sign-out (RFC 7009) against oidc-provider on loopback:
//! the device flow completed headlessly (the test plays the user at `/device`), the tokens it
//! brings refreshed, and a sign-out that the server sees: the access token no longer active,
//! the refresh token refused.
//!
//! Real clock: the server counts real seconds (its polling interval is 1 s, `server.mjs`'s own
//! setting).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::oauth::{DeviceAuthorization, ServerMetadata};
use oauth_refresh::{RefreshErrorKind, RefreshLayer, RefreshTokenGrant, Revoke, TokenUpdate};

use crate::oidc_provider::{
    APP_ID, APP_REDIRECT_URI, APP_SECRET, DEVICE_ID, DEVICE_SECRET, OidcProvider,
    authorize_headless,
};

/// The access token a layer holds now: refreshed through a probe API that echoes it.
async fn access_token(layer: &RefreshLayer) -> String {
    use tower::{ServiceBuilder, ServiceExt};
    let api = tower::service_fn(|request: http::Request<String>| async move {
        let header = request.headers()[http::header::AUTHORIZATION]
            .to_str()
            .unwrap();
        let token = header.strip_prefix("Bearer ").unwrap().to_owned();
        Ok::<_, std::convert::Infallible>(http::Response::new(token))
    });
    let service = ServiceBuilder::new().layer(layer.clone()).service(api);
    let response = service
        .oneshot(http::Request::new(String::new()))
        .await
        .expect("a token");
    crate::support::text(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_flow_completes_headlessly_then_refresh_and_sign_out_work() {
    let provider = Arc::new(OidcProvider::start_with(60).await);
    let metadata = ServerMetadata::discover(&provider.issuer).await.unwrap();
    assert_eq!(
        metadata.device_authorization_endpoint.as_deref(),
        Some(provider.device_authorization_url().as_str())
    );
    let stored = Arc::new(Mutex::new(Vec::<TokenUpdate>::new()));
    let hook = stored.clone();
    let pending = DeviceAuthorization::from_metadata(&metadata, DEVICE_ID)
        .unwrap()
        .client_secret(DEVICE_SECRET)
        .scope("openid offline_access api:read")
        .persist(move |update: TokenUpdate| {
            hook.lock().unwrap().push(update);
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(pending.interval(), Duration::from_secs(1));
    assert!(pending.verification_uri().starts_with(&provider.issuer));
    assert!(
        pending
            .verification_uri_complete()
            .is_some_and(|uri| uri.contains("user_code="))
    );

    // The user signs in on "another device" once the device has polled at least once.
    let user = {
        let provider = provider.clone();
        let (uri, code) = (
            pending.verification_uri().to_owned(),
            pending.user_code().to_owned(),
        );
        tokio::spawn(async move {
            while provider.stats().await.device_code == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            provider.approve_device(&uri, &code).await;
        })
    };
    let grant = tokio::time::timeout(Duration::from_secs(30), pending.poll())
        .await
        .expect("the device sign-in completes")
        .unwrap();
    user.await.unwrap();
    let stats = provider.stats().await;
    assert!(
        stats.device_code >= 2,
        "authorization_pending, then tokens: {stats:?}"
    );
    let first = grant.refresh_token().expect("a refresh token").clone();
    assert_eq!(
        stored.lock().unwrap()[0].refresh_token.as_ref(),
        Some(&first),
        "the hook saw the first refresh token"
    );

    // The sign-in's token is honoured; a refresh rotates the refresh token.
    let layer = RefreshLayer::new(grant);
    let signed_in = access_token(&layer).await;
    assert!(provider.token_active(&signed_in).await);
    assert_eq!(
        provider.token_subject(&signed_in).await.as_deref(),
        Some("alice")
    );
    layer.refresh().await.unwrap();
    let refreshed = access_token(&layer).await;
    assert_ne!(refreshed, signed_in);
    assert!(provider.token_active(&refreshed).await);
    let stats = provider.stats().await;
    assert_eq!((stats.refresh_token, stats.invalid_grant), (1, 0));
    let rotated = {
        let stored = stored.lock().unwrap();
        stored.last().unwrap().refresh_token.clone().unwrap()
    };
    assert_ne!(rotated, first);

    // Sign-out: the server revokes the grant; the hook is told to remove it.
    layer.sign_out(Revoke::RefreshToken).await.unwrap();
    assert_eq!(provider.stats().await.revocation, 1);
    assert!(
        !provider.token_active(&refreshed).await,
        "the server no longer honours the access token"
    );
    assert!(stored.lock().unwrap().last().unwrap().is_removal());
    let replay = RefreshLayer::new(
        RefreshTokenGrant::new(provider.token_url(), DEVICE_ID, rotated)
            .client_secret(DEVICE_SECRET),
    );
    let err = replay.refresh().await.unwrap_err();
    assert_eq!(err.kind(), RefreshErrorKind::Reauth, "{err}");
    let stats = provider.stats().await;
    assert_eq!(
        (stats.refresh_token, stats.invalid_grant),
        (2, 1),
        "only the replay reached the token endpoint"
    );
}

#[tokio::test]
async fn a_user_who_aborts_the_device_sign_in_is_access_denied() {
    let provider = Arc::new(OidcProvider::start().await);
    let pending = DeviceAuthorization::new(
        provider.device_authorization_url(),
        provider.token_url(),
        DEVICE_ID,
    )
    .client_secret(DEVICE_SECRET)
    .scope("openid")
    .start()
    .await
    .unwrap();
    provider
        .deny_device(pending.verification_uri(), pending.user_code())
        .await;
    let err = tokio::time::timeout(Duration::from_secs(30), pending.poll())
        .await
        .expect("the poll ends")
        .unwrap_err();
    assert!(err.is_access_denied(), "{err}");
}

#[tokio::test]
async fn sign_out_after_a_code_sign_in_revokes_at_the_discovered_endpoint() {
    let provider = Arc::new(OidcProvider::start_with(60).await);
    let metadata = ServerMetadata::discover(&provider.issuer).await.unwrap();
    let pending = oauth_refresh::oauth::AuthorizationCode::new(
        metadata.authorization_endpoint.clone().unwrap(),
        &metadata.token_endpoint,
        APP_ID,
        APP_REDIRECT_URI,
    )
    .client_secret(APP_SECRET)
    .scope("openid")
    .scope("api:read")
    .start()
    .unwrap();
    let callback = authorize_headless(pending.url().as_str()).await;
    let grant = pending.exchange(&callback).await.unwrap();
    let refresh_token = grant.refresh_token().unwrap().clone();
    // What an application restarted after the sign-in builds from the stored refresh token.
    let layer = RefreshLayer::new(
        RefreshTokenGrant::from_metadata(&metadata, APP_ID, refresh_token)
            .client_secret(APP_SECRET),
    );
    let access = access_token(&layer).await;
    assert!(provider.token_active(&access).await);

    layer.sign_out(Revoke::AllTokens).await.unwrap();
    assert_eq!(
        provider.stats().await.revocation,
        2,
        "refresh and access token"
    );
    assert!(!provider.token_active(&access).await);
    let before = provider.stats().await.refresh_token;
    assert!(layer.refresh().await.is_err());
    assert_eq!(
        provider.stats().await.refresh_token,
        before,
        "no token request after sign-out"
    );
}
