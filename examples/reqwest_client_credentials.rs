//! A service calling an API with its own credentials: the client credentials grant behind a
//! reqwest-middleware client.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`).
//!
//! ```text
//! cargo run --example reqwest_client_credentials
//! ```

mod support;

use std::time::Duration;

use oauth_refresh::{ClientCredentials, RefreshLayer};
use reqwest_middleware::ClientBuilder;

use support::{SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, Server, Story};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::start(Duration::from_secs(60)).await;
    let story = Story::begin();

    // The grant authenticates with client_secret_basic; the token endpoint here is plain
    // http, which the grant allows only because it is loopback.
    let grant =
        ClientCredentials::new(server.token_url(), SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET)
            .scope("reports:read");
    let layer = RefreshLayer::new(grant);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    for path in ["/reports", "/reports/q3", "/reports/q4"] {
        let response = client.get(server.api_url(path)).send().await?;
        story.say(format!("GET /api{path} -> {}", response.status()));
        assert_eq!(response.status(), 200);
    }
    let token_requests = server.token_requests("client_credentials");
    story.say(format!(
        "token requests: {token_requests} (the first request fetched the token; the others reused it)"
    ));
    assert_eq!(token_requests, 1);
    assert_eq!(layer.stats().refreshes, 1);
    Ok(())
}
