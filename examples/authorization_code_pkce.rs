//! The first tokens of a user: the authorization code grant with PKCE, then a rotating
//! refresh token stored through the persistence hook.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`). A
//! real app opens the authorization URL in the user's browser and receives the redirect on
//! its redirect URI; here the embedded server approves at once, and the example follows its
//! redirect itself.
//!
//! ```text
//! cargo run --example authorization_code_pkce
//! ```

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::oauth::AuthorizationCode;
use oauth_refresh::{RefreshLayer, RefreshToken, TokenSet};

use support::{APP_CLIENT_ID, APP_REDIRECT_URI, Server, Story};

/// Stands in for the app's database: the refresh token to present next, and how many times it
/// was written.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<(Option<RefreshToken>, usize)>>);

impl Store {
    /// Replaces the stored refresh token if it is still the one the refresh presented (a
    /// compare-and-swap, so an older refresh can never overwrite a newer token).
    async fn save(&self, tokens: TokenSet, presented: Option<RefreshToken>) -> Result<(), String> {
        let mut row = self.0.lock().unwrap();
        let stored = row.0.as_ref().map(RefreshToken::secret);
        if stored != presented.as_ref().map(RefreshToken::secret) {
            return Err("the stored refresh token changed meanwhile".into());
        }
        row.0 = tokens.refresh_token;
        row.1 += 1;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::start(Duration::from_secs(60)).await;
    let story = Story::begin();

    let sign_in = AuthorizationCode::new(
        server.authorization_url(),
        server.token_url(),
        APP_CLIENT_ID,
        APP_REDIRECT_URI,
    )
    .scope("reports:read")
    .scope("offline_access");
    let pending = sign_in.start()?;
    story.say(format!("open this URL in a browser:\n  {}", pending.url()));

    // The browser's part: the server approves and redirects to the redirect URI.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = browser.get(pending.url().as_str()).send().await?;
    let callback = redirect.headers()["location"].to_str()?.to_owned();
    story.say("the browser came back to the redirect URI with a code and the state");

    // The exchange checks the state, sends the PKCE verifier, and consumes `pending`.
    let store = Store::default();
    let grant = pending.exchange(&callback).await?;
    let first = grant
        .refresh_token()
        .cloned()
        .ok_or("the server sent no refresh token")?;
    store.0.lock().unwrap().0 = Some(first.clone());
    story.say("code exchanged: access and refresh tokens received; refresh token stored");

    let hook_store = store.clone();
    let grant = grant.persist(move |tokens, presented| {
        let store = hook_store.clone();
        async move { store.save(tokens, presented).await }
    });
    let layer = RefreshLayer::new(grant);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    let response = client.get(server.api_url("/reports")).send().await?;
    story.say(format!(
        "GET /api/reports -> {} with the sign-in's token",
        response.status()
    ));
    assert_eq!(response.status(), 200);

    // A refresh rotates the refresh token; the hook stores the new one before any request
    // waiting for the refresh goes on.
    layer.refresh().await?;
    let (stored, writes) = store.0.lock().unwrap().clone();
    let stored = stored.ok_or("no refresh token stored")?;
    story.say(format!(
        "refreshed: the server rotated the refresh token; the hook stored the new one ({writes} write)"
    ));
    assert_eq!(writes, 1);
    assert_ne!(
        stored.secret(),
        first.secret(),
        "the stored token was rotated"
    );
    assert_eq!(server.token_requests("refresh_token"), 1);
    assert_eq!(layer.stats().persist_failures, 0);

    let response = client.get(server.api_url("/reports")).send().await?;
    story.say(format!(
        "GET /api/reports -> {} with the refreshed token",
        response.status()
    ));
    assert_eq!(response.status(), 200);
    Ok(())
}
