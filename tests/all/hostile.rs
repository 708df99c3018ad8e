//! Numbers and answers no server should send, which some do: the cell survives every
//! lifetime, and a token endpoint that redirects is a configuration error, asked once.

use std::time::Duration;

use oauth_refresh::{AccessToken, ClientCredentials, RefreshError, RefreshLayer, TokenSet};
use proptest::prelude::*;
use serde_json::json;
use tower::{Layer, ServiceExt};

use crate::support::{Api, TestSource, get, text};
use crate::token_endpoint::{Answer, TokenEndpoint};

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[tokio::test]
async fn absurd_expires_in_from_a_token_endpoint_is_cut_to_a_year() {
    for expires_in in [json!(u64::MAX), json!(1e300), json!("99999999999999999999")] {
        let endpoint = TokenEndpoint::start().await;
        let answer = |token: &str| {
            Answer::json(
                200,
                json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in}),
            )
        };
        endpoint.push(answer("at-1"));
        endpoint.push(answer("at-2"));
        let layer = RefreshLayer::new(ClientCredentials::new(endpoint.url(), "svc", "s3cr3t"));

        layer
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("expires_in {expires_in}: {e}"));
        let left = layer.stats().time_to_expiry.expect("a known lifetime");
        assert!(
            left <= YEAR && left > YEAR - DAY,
            "expires_in {expires_in}: {left:?} left"
        );
        let response = layer.layer(Api::open()).oneshot(get()).await.unwrap();
        assert_eq!(text(response).await, "hello at-1");
        // Every later refresh survives it too, not only the first.
        layer.refresh().await.unwrap();
        assert_eq!(layer.stats().generation, 2, "expires_in {expires_in}");
    }
}

#[tokio::test]
async fn a_token_endpoint_that_redirects_is_a_configuration_error_asked_once() {
    // What a framework that adds trailing slashes (Starlette, Django's APPEND_SLASH) answers
    // to a token URL written without one.
    let endpoint = TokenEndpoint::start().await;
    let moved_to = format!("{}/", endpoint.url());
    endpoint.push(Answer::json(307, json!({})).header("location", &format!("{moved_to}?x=1")));
    let layer = RefreshLayer::new(ClientCredentials::new(endpoint.url(), "svc", "s3cr3t"));

    let error = layer.refresh().await.unwrap_err();

    let RefreshError::Configuration(error) = error else {
        panic!("a configuration error, got {error:?}");
    };
    assert_eq!(error.error(), "token_endpoint_redirect");
    let message = error.to_string();
    assert!(message.contains("redirect"), "{message}");
    assert!(
        message.contains(&moved_to),
        "names where it points: {message}"
    );
    assert!(!message.contains("x=1"), "never its query: {message}");
    assert_eq!(endpoint.count(), 1, "not resent: resending cannot help");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever lifetime a source reports and whatever window is configured, the cell
    /// installs the token, serves it, and refreshes it later without a panic.
    #[test]
    fn any_lifetime_from_a_source_is_survived(
        lifetime in any::<(u64, u32)>().prop_map(|(s, n)| Duration::new(s, n % 1_000_000_000)),
        window in any::<(u64, u32)>().prop_map(|(s, n)| Duration::new(s, n % 1_000_000_000)),
        later in 0..(2 * 365 * 24 * 60 * 60u64),
        by_hand in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let served = runtime.block_on(async {
            let source = TestSource::new(lifetime);
            let layer = RefreshLayer::builder(source.clone()).refresh_ahead(window).build();
            if by_hand {
                let mut tokens = TokenSet::new(AccessToken::new("at-0"));
                tokens.expires_in = Some(lifetime);
                layer.set_tokens(tokens).unwrap();
            } else {
                layer.refresh().await.unwrap();
            }
            let left = layer.stats().time_to_expiry.unwrap();
            assert!(left <= YEAR, "{left:?}");
            let service = layer.layer(Api::open());
            let first = text(service.clone().oneshot(get()).await.unwrap()).await;
            tokio::time::advance(Duration::from_secs(later)).await;
            let second = text(service.oneshot(get()).await.unwrap()).await;
            // Let a background refresh, if one started, finish before looking again.
            tokio::time::sleep(Duration::from_millis(1)).await;
            layer.refresh().await.unwrap();
            (first, second)
        });
        prop_assert!(served.0.starts_with("hello at-"), "{:?}", served);
        prop_assert!(served.1.starts_with("hello at-"), "{:?}", served);
    }
}
