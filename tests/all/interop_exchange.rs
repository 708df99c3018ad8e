//! Token exchange (RFC 8693) and JWT bearer (RFC 7523 §2.1) against oidc-provider on
//! loopback, through the two grant types its test configuration registers (`server.mjs`; the
//! README says which behaviour is the test's own). The protected API asks the server whether
//! each token is honoured.
//!
//! Real clock: the server counts real seconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use oauth_refresh::oauth::{Assertion, JwtBearer, SecurityToken, TokenExchange, token_type};
use oauth_refresh::{
    ClientCredentials, ConfigurationError, ReauthRequired, RefreshError, RefreshLayer,
};
use serde_json::{Value, json};

use crate::interop::{call, sign_in};
use crate::oidc_provider::{
    CC_BASIC_ID, CC_BASIC_SECRET, EXCHANGE_ID, EXCHANGE_SECRET, OidcProvider, WORKLOAD_ID,
};

const ORDERS: &str = "https://orders.test";

/// The exchange layer's current token, as the server sees it.
async fn info(layer: &RefreshLayer, provider: &OidcProvider) -> Value {
    let token = layer.access_token().await.unwrap();
    provider.token_info(token.secret()).await
}

#[tokio::test]
async fn a_layer_exchanging_another_layers_token_gets_tokens_the_server_honours() {
    let provider = Arc::new(OidcProvider::start().await);
    let user = RefreshLayer::new(sign_in(&provider).await);
    let service = RefreshLayer::new(
        ClientCredentials::new(provider.token_url(), CC_BASIC_ID, CC_BASIC_SECRET)
            .scope("api:read"),
    );
    let exchange = TokenExchange::new(
        provider.token_url(),
        EXCHANGE_ID,
        SecurityToken::from_layer(&user),
    )
    .client_secret(EXCHANGE_SECRET)
    .actor(SecurityToken::from_layer(&service))
    .requested_token_type(token_type::ACCESS_TOKEN)
    .audience(ORDERS)
    .scope("api:read");
    let orders = RefreshLayer::new(exchange);

    assert_eq!(call(&orders, &provider).await.unwrap(), StatusCode::OK);
    let issued = info(&orders, &provider).await;
    assert_eq!(issued["sub"], "alice", "{issued}");
    assert_eq!(issued["aud"], ORDERS, "{issued}");
    assert_eq!(issued["gty"], "token_exchange", "{issued}");
    assert_eq!(issued["act"]["sub"], CC_BASIC_ID, "{issued}");
    assert_eq!(issued["client_id"], EXCHANGE_ID, "{issued}");
    let lifetime = orders.stats().time_to_expiry.unwrap();
    assert!(lifetime <= Duration::from_secs(3), "{lifetime:?}");

    // Past every token's lifetime: the exchange runs again, with the user's refreshed token.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(call(&orders, &provider).await.unwrap(), StatusCode::OK);
    let stats = provider.stats().await;
    assert_eq!(stats.token_exchange, 2);
    assert_eq!(stats.refresh_token, 1, "the user's layer refreshed once");
    assert_eq!(orders.stats().refreshes, 2);
    assert_eq!(user.stats().refreshes, 1);
}

#[tokio::test]
async fn a_subject_whose_sign_in_was_revoked_makes_the_exchange_reauth_required() {
    let provider = Arc::new(OidcProvider::start().await);
    let user = RefreshLayer::new(sign_in(&provider).await);
    let orders = RefreshLayer::new(
        TokenExchange::new(
            provider.token_url(),
            EXCHANGE_ID,
            SecurityToken::from_layer(&user),
        )
        .client_secret(EXCHANGE_SECRET)
        .audience(ORDERS),
    );
    assert_eq!(call(&orders, &provider).await.unwrap(), StatusCode::OK);

    provider.revoke_all().await;
    // The API refuses the exchanged token; the exchange layer exchanges again. The server
    // refuses the user's token (revoked, though valid by the clock), the user's layer
    // refreshes once, and the server refuses that too: the user must sign in again.
    let err = call(&orders, &provider).await.unwrap_err();
    let reauth = err
        .downcast_ref::<ReauthRequired>()
        .unwrap_or_else(|| panic!("ReauthRequired expected, got {err}"));
    assert_eq!(reauth.error(), "invalid_grant");
    assert!(
        reauth
            .to_string()
            .contains("the subject token could not be obtained"),
        "{reauth}"
    );
    let stats = provider.stats().await;
    assert_eq!(
        (
            stats.token_exchange,
            stats.refresh_token,
            stats.invalid_grant
        ),
        (2, 1, 2)
    );
}

/// An assertion issuer of the test's own: an ES256 key made here, which the server trusts.
struct Issuer {
    iss: &'static str,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Issuer {
    fn new(iss: &'static str) -> Issuer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Issuer { iss, key, rng }
    }

    /// The public point's coordinates, base64url.
    fn public_xy(&self) -> (String, String) {
        let point = self.key.public_key().as_ref();
        assert_eq!(
            (point.len(), point[0]),
            (65, 4),
            "an uncompressed P-256 point"
        );
        (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        )
    }

    /// A compact JWS (ES256) of an assertion for `sub` to `aud`, expiring `exp_in` seconds
    /// from now (negative: already expired), with a fresh `jti`.
    fn sign(&self, sub: &str, aud: &str, exp_in: i64) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::SecureRandom::fill(&self.rng, &mut jti).unwrap();
        let header = json!({"alg": "ES256", "typ": "JWT"});
        let claims = json!({
            "iss": self.iss, "sub": sub, "aud": aud,
            "iat": now, "exp": now + exp_in, "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(&self.rng, signing_input.as_bytes()).unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// A JWT-bearer layer whose assertions `issuer` signs afresh for each request.
fn jwt_bearer(provider: &OidcProvider, issuer: &Arc<Issuer>, exp_in: i64) -> RefreshLayer {
    let (issuer, aud) = (issuer.clone(), provider.token_url());
    let assertion = Assertion::from_fn(move || {
        let signed = issuer.sign("billing-job", &aud, exp_in);
        async move { Ok::<_, std::io::Error>(signed) }
    });
    RefreshLayer::new(
        JwtBearer::new(provider.token_url(), WORKLOAD_ID, assertion).scope("api:read"),
    )
}

#[tokio::test]
async fn a_jwt_bearer_assertion_signed_by_a_trusted_issuer_is_accepted_and_others_refused() {
    let provider = Arc::new(OidcProvider::start().await);
    let trusted = Arc::new(Issuer::new("https://workload.test"));
    let (x, y) = trusted.public_xy();
    provider.trust_assertion_issuer(trusted.iss, &x, &y).await;

    let layer = jwt_bearer(&provider, &trusted, 60);
    assert_eq!(call(&layer, &provider).await.unwrap(), StatusCode::OK);
    let issued = info(&layer, &provider).await;
    assert_eq!(issued["sub"], "billing-job", "{issued}");
    assert_eq!(issued["gty"], "jwt_bearer", "{issued}");
    assert_eq!(issued["scope"], "api:read", "{issued}");
    // Each request carries a fresh assertion (its own jti): a second one is accepted too.
    layer.refresh().await.unwrap();
    assert_eq!(provider.stats().await.jwt_bearer, 2);

    // Expired, and signed by a key the server does not trust for this issuer: both refused,
    // as a configuration error (no sign-in fixes an assertion).
    let expired = jwt_bearer(&provider, &trusted, -60);
    let foreign = jwt_bearer(
        &provider,
        &Arc::new(Issuer::new("https://workload.test")),
        60,
    );
    for layer in [expired, foreign] {
        let err = layer.refresh().await.unwrap_err();
        let RefreshError::Configuration(refused) = &err else {
            panic!("ConfigurationError expected, got {err:?}")
        };
        assert_eq!(refused.error(), "invalid_grant");
        assert!(
            refused.to_string().contains("the assertion was refused"),
            "{refused}"
        );
        let err = call(&layer, &provider).await.unwrap_err();
        assert!(err.downcast_ref::<ConfigurationError>().is_some(), "{err}");
    }
    let stats = provider.stats().await;
    assert_eq!((stats.jwt_bearer, stats.invalid_grant), (4, 2));
}
