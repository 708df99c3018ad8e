//! The first tokens of a user: the authorization code grant with PKCE, then a rotating
//! refresh token kept in a store through the persistence hook.
//!
//! The authorization server and the API run in-process on 127.0.0.1 (`examples/support`). A
//! real app opens the authorization URL in the user's browser and receives the redirect on
//! its redirect URI; here the embedded server approves at once, and the example reads its
//! redirect itself.
//!
//! The server rotates refresh tokens: each one is redeemed once. The example ends with what
//! a restart would find: the refresh token from the sign-in is used up, and only the one the
//! hook stored still works. Token values are never printed, only their length.
//!
//! ```text
//! cargo run --example authorization_code_pkce
//! ```

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::oauth::AuthorizationCode;
use oauth_refresh::{RefreshError, RefreshLayer, RefreshToken, RefreshTokenGrant, TokenUpdate};

use support::{APP_CLIENT_ID, APP_REDIRECT_URI, Server, Story};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Stands in for the app's database row: the refresh token to present next.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<Row>>);

#[derive(Clone, Default)]
struct Row {
    refresh_token: Option<RefreshToken>,
    /// The refresh token the last save was told it replaces, kept to show what the hook gets.
    replaced: Option<RefreshToken>,
    writes: usize,
}

impl Store {
    /// Stores the refresh token from the sign-in.
    fn insert(&self, refresh_token: RefreshToken) {
        self.0.lock().unwrap().refresh_token = Some(refresh_token);
    }

    /// The persistence hook: replaces the stored refresh token only if it is still the one
    /// the refresh presented (a compare-and-swap, so an older refresh can never overwrite a
    /// newer token).
    async fn save(&self, update: TokenUpdate) -> Result<(), Error> {
        let mut row = self.0.lock().unwrap();
        if row.refresh_token != update.previous_refresh_token {
            return Err("the stored refresh token changed meanwhile".into());
        }
        row.refresh_token = update.refresh_token;
        row.replaced = update.previous_refresh_token;
        row.writes += 1;
        Ok(())
    }

    fn row(&self) -> Row {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
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
    // The pending sign-in owns the PKCE verifier and the state; only the challenge (the
    // verifier's SHA-256) is in the URL.
    let pending = sign_in.start()?;
    story.say(format!("open this URL in a browser:\n  {}", pending.url()));

    // The browser's part: the server approves and redirects to the redirect URI.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = browser.get(pending.url().as_str()).send().await?;
    assert_eq!(redirect.status(), 302);
    let callback = redirect.headers()["location"].to_str()?.to_owned();
    story.say(format!(
        "the browser came back to {APP_REDIRECT_URI} with a code and the state"
    ));

    // The exchange checks the state, sends the code with the PKCE verifier, and consumes
    // `pending`: the code cannot be redeemed twice.
    let grant = pending.exchange(&callback).await?;
    let first = grant
        .refresh_token()
        .cloned()
        .ok_or("the server sent no refresh token")?;
    // The hook sees the refreshes to come; the sign-in's refresh token is stored here.
    let store = Store::default();
    store.insert(first.clone());
    story.say(format!(
        "code exchanged: access token and refresh token ({} chars) received; refresh token stored",
        first.secret().len()
    ));

    let hook_store = store.clone();
    let grant = grant.persist(move |update| {
        let store = hook_store.clone();
        async move { store.save(update).await }
    });
    let layer = RefreshLayer::new(grant);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    let response = client.get(server.api_url("/reports")).send().await?;
    let status = response.status();
    story.say(format!(
        "GET /api/reports -> {status}: {} (the sign-in's token)",
        response.text().await?
    ));
    assert_eq!(status, 200);

    // A refresh rotates the refresh token; the hook stores the new one before any request
    // waiting for the refresh goes on.
    layer.refresh().await?;
    let row = store.row();
    let stored = row.refresh_token.ok_or("no refresh token stored")?;
    let replaced = row
        .replaced
        .ok_or("the hook was not told what it replaced")?;
    story.say(format!(
        "refreshed: the hook received the new refresh token ({} chars) and the one it \
         replaces, the sign-in's; {} write",
        stored.secret().len(),
        row.writes,
    ));
    assert_eq!(row.writes, 1);
    assert_eq!(replaced.secret(), first.secret());
    assert_ne!(
        stored.secret(),
        first.secret(),
        "the refresh token was rotated"
    );
    assert_eq!(server.token_requests("refresh_token"), 1);
    assert_eq!(layer.stats().persist_failures, 0);

    let response = client.get(server.api_url("/reports")).send().await?;
    let status = response.status();
    story.say(format!(
        "GET /api/reports -> {status}: {} (the refreshed token)",
        response.text().await?
    ));
    assert_eq!(status, 200);

    // What a restart would find.
    let restart = |refresh_token: &RefreshToken| {
        RefreshLayer::new(RefreshTokenGrant::new(
            server.token_url(),
            APP_CLIENT_ID,
            refresh_token.clone(),
        ))
    };
    match restart(&first).refresh().await {
        Err(RefreshError::Reauth(reauth)) => {
            story.say(format!(
                "a restart with the sign-in's refresh token: {reauth}"
            ));
            assert_eq!(reauth.error(), "invalid_grant");
        }
        other => return Err(format!("expected ReauthRequired, got {other:?}").into()),
    }
    restart(&stored).refresh().await?;
    story.say("a restart with the stored refresh token: refreshed");
    Ok(())
}
