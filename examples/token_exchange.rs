//! A gateway calling the orders API with a token for that API alone: token exchange
//! (RFC 8693) of the service's own token, which another layer keeps fresh.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`);
//! the API honours a token issued for an audience only under `/api/<audience>/`. Each
//! exchange presents the service layer's current token, so when that one is refreshed the
//! next exchange presents the new one; the exchanged token is obtained again when it expires,
//! as a client credentials token would be.
//!
//! ```text
//! cargo run --example token_exchange
//! ```

mod support;

use std::time::Duration;

use oauth_refresh::oauth::{SecurityToken, TokenExchange, token_type};
use oauth_refresh::{ClientCredentials, RefreshLayer};
use reqwest_middleware::ClientBuilder;

use support::{SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, Server, Story, TOKEN_EXCHANGE};

const LIFETIME: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::start(LIFETIME).await;
    let story = Story::begin();

    // The service's own token, for every API...
    let service = RefreshLayer::new(ClientCredentials::new(
        server.token_url(),
        SERVICE_CLIENT_ID,
        SERVICE_CLIENT_SECRET,
    ));
    // ...exchanged for one that only the orders API takes.
    let exchange = TokenExchange::new(
        server.token_url(),
        SERVICE_CLIENT_ID,
        SecurityToken::from_layer(&service),
    )
    .client_secret(SERVICE_CLIENT_SECRET)
    .audience("orders")
    .requested_token_type(token_type::ACCESS_TOKEN);
    let orders = RefreshLayer::new(exchange);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(orders.clone())
        .build();

    for round in 1..=2 {
        let response = client.get(server.api_url("/orders/recent")).send().await?;
        let status = response.status();
        story.say(format!(
            "GET /api/orders/recent -> {status}: {}",
            response.text().await?
        ));
        assert_eq!(status, 200);
        // The exchanged token is for the orders API only. (Sent by hand: through the layer, a
        // 401 would count as a rejected token, and cost an exchange and a resend.)
        let token = orders.access_token().await?;
        let elsewhere = reqwest::Client::new()
            .get(server.api_url("/reports/q3"))
            .bearer_auth(token.secret())
            .send()
            .await?;
        story.say(format!(
            "GET /api/reports/q3 with it -> {}",
            elsewhere.status()
        ));
        assert_eq!(elsewhere.status(), 401);
        if round == 1 {
            story.say(format!(
                "waiting {} s: both tokens expire",
                LIFETIME.as_secs() + 1
            ));
            tokio::time::sleep(LIFETIME + Duration::from_secs(1)).await;
        }
    }

    let exchanges = server.token_requests(TOKEN_EXCHANGE);
    let service_tokens = server.token_requests("client_credentials");
    story.say(format!(
        "token requests: {exchanges} exchanges, {service_tokens} client credentials (one of each per lifetime)"
    ));
    assert_eq!((exchanges, service_tokens), (2, 2));
    assert_eq!(server.refused_token_requests(), 0);
    Ok(())
}
