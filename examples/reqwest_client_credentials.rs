//! A service calling an API with its own credentials: the client credentials grant behind a
//! reqwest-middleware client.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`).
//! The first request fetches a token; the others reuse it. The client secret holds `:` and
//! `+`, which `client_secret_basic` form-encodes before Base64 (RFC 6749 §2.3.1); servers
//! that want the secret in the form body get `client_secret_post` instead.
//!
//! ```text
//! cargo run --example reqwest_client_credentials
//! ```

mod support;

use std::time::Duration;

use oauth_refresh::oauth::ClientAuth;
use oauth_refresh::{ClientCredentials, RefreshLayer};
use reqwest_middleware::ClientBuilder;

use support::{SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, Server, Story};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::start(Duration::from_secs(60)).await;
    let story = Story::begin();

    // The token endpoint here is plain http, which the grant allows only because it is
    // loopback; the same goes for the API and the layer.
    let grant =
        ClientCredentials::new(server.token_url(), SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET)
            .scope("reports:read");
    let layer = RefreshLayer::new(grant);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    for path in ["/reports", "/reports/q3", "/reports/q4"] {
        let response = client.get(server.api_url(path)).send().await?;
        let status = response.status();
        story.say(format!(
            "GET /api{path} -> {status}: {}",
            response.text().await?
        ));
        assert_eq!(status, 200);
    }
    let token_requests = server.token_requests("client_credentials");
    story.say(format!(
        "token requests: {token_requests} (the first request fetched the token; the others reused it)"
    ));
    assert_eq!(token_requests, 1);
    assert_eq!(layer.stats().refreshes, 1);

    // The same grant with the client's id and secret in the form body.
    let grant =
        ClientCredentials::new(server.token_url(), SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET)
            .client_auth(ClientAuth::Post);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RefreshLayer::new(grant))
        .build();
    let response = client.get(server.api_url("/reports")).send().await?;
    let status = response.status();
    story.say(format!(
        "with client_secret_post: GET /api/reports -> {status}: {}",
        response.text().await?
    ));
    assert_eq!(status, 200);
    assert_eq!(server.token_requests("client_credentials"), 2);
    assert_eq!(server.refused_token_requests(), 0);
    Ok(())
}
