//! The layer in a tower stack over hyper-util's HTTP client, sharing its token with a
//! reqwest-middleware client through one `RefreshLayer` value.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`).
//!
//! ```text
//! cargo run --example tower_hyper
//! ```

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oauth_refresh::{ClientCredentials, RefreshLayer};
use tower::{ServiceBuilder, ServiceExt};

use support::{SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, Server, Story};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::start(Duration::from_secs(60)).await;
    let story = Story::begin();

    let layer = RefreshLayer::new(
        ClientCredentials::new(server.token_url(), SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET)
            .scope("reports:read"),
    );
    // `Full<Bytes>` bodies can be replayed, so a rejected request can be resent once.
    let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client);

    let request = http::Request::get(server.api_url("/reports")).body(Full::default())?;
    let response = service.clone().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    story.say(format!(
        "tower + hyper-util: GET /api/reports -> {status} {}",
        String::from_utf8_lossy(&body)
    ));
    assert_eq!(status, 200);

    // Another clone of the same layer in a reqwest client: the same token, no new request.
    let reqwest_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();
    let response = reqwest_client
        .get(server.api_url("/reports"))
        .send()
        .await?;
    story.say(format!(
        "reqwest-middleware: GET /api/reports -> {}",
        response.status()
    ));
    assert_eq!(response.status(), 200);

    let token_requests = server.token_requests("client_credentials");
    story.say(format!("token requests for both stacks: {token_requests}"));
    assert_eq!(token_requests, 1);
    Ok(())
}
