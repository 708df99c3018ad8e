//! The layer in a tower stack over hyper-util's HTTP client, sharing its token with a
//! reqwest-middleware client through clones of one `RefreshLayer` value.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`).
//!
//! 1. the tower stack's first request fetches the token;
//! 2. the reqwest client uses the same token, without a token request of its own;
//! 3. the server revokes the token: the tower stack's next request is rejected, refreshed
//!    and resent once (its `Full<Bytes>` body can be replayed), and the reqwest client uses
//!    the new token at once.
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
use oauth_refresh::{ClientCredentials, RefreshLayer, RetryStatus};
use reqwest_middleware::ClientBuilder;
use tower::{ServiceBuilder, ServiceExt};

use support::{SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, Server, Story};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
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
    // Another clone of the same layer: one token cell, one refresh, for both clients.
    let reqwest_client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    let request = http::Request::get(server.api_url("/reports")).body(Full::default())?;
    let response = service.clone().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    story.say(format!(
        "tower + hyper-util: GET /api/reports -> {status}: {}",
        String::from_utf8_lossy(&body)
    ));
    assert_eq!(status, 200);

    let response = reqwest_client.get(server.api_url("/usage")).send().await?;
    let status = response.status();
    story.say(format!(
        "reqwest-middleware: GET /api/usage -> {status}: {}",
        response.text().await?
    ));
    assert_eq!(status, 200);
    let token_requests = server.token_requests("client_credentials");
    story.say(format!("token requests for both clients: {token_requests}"));
    assert_eq!(token_requests, 1);

    story.say("the server revokes the access token");
    server.revoke_access_tokens();
    let request = http::Request::post(server.api_url("/reports"))
        .body(Full::new(Bytes::from_static(b"{\"quarter\":\"q4\"}")))?;
    // The refresh may wait a moment: refreshes start at least 1 s apart.
    let response = service.clone().oneshot(request).await?;
    let status = response.status();
    let retry = response.extensions().get::<RetryStatus>().copied();
    let body = response.into_body().collect().await?.to_bytes();
    story.say(format!(
        "tower + hyper-util: POST /api/reports -> {status}: {} (rejected, then resent once: {retry:?})",
        String::from_utf8_lossy(&body)
    ));
    assert_eq!(status, 200);
    assert_eq!(retry, Some(RetryStatus::Retried));

    let response = reqwest_client.get(server.api_url("/usage")).send().await?;
    let status = response.status();
    story.say(format!(
        "reqwest-middleware: GET /api/usage -> {status}: {} (the tower stack's refresh)",
        response.text().await?
    ));
    assert_eq!(status, 200);
    assert_eq!(server.token_requests("client_credentials"), 2);
    assert_eq!(server.api_rejections(), 1);
    assert_eq!(layer.stats().refreshes, 2);
    Ok(())
}
