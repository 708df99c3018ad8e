//! Many tokens in one layer: a server calling an API on behalf of each of its users, and a
//! service calling two APIs that each need their own audience, through one HTTP client each.
//!
//! The embedded authorization server and API (`examples/support`) run on 127.0.0.1; access
//! tokens live 2 seconds and refresh tokens rotate.
//!
//! 1. Three users sign in (authorization code with PKCE). The app stores each user's refresh
//!    token in its "database" (a map here). One `KeyedRefreshLayer`, keyed by user id, makes
//!    each user's grant from the database on first use, and its persistence hook stores every
//!    rotated refresh token back under the user's id.
//! 2. Requests for the three users, across their tokens' lifetimes: each gets a token of
//!    its own user (the API says whose), and each user's refresh token rotates in the
//!    database.
//! 3. A user the database does not know gets a `KeyError`, and nothing is sent.
//! 4. Client credentials keyed by `TokenParams`: the orders API and the billing API each
//!    accept only tokens for their own audience, and each gets its own.
//!
//! Every claim is asserted: the example exits with an error if one does not hold.
//!
//! ```text
//! cargo run --example keyed
//! ```

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::keyed::{KeyError, KeyedRefreshLayer, factory_fn};
use oauth_refresh::oauth::{AuthorizationCode, TokenParams};
use oauth_refresh::{ClientCredentials, RefreshTokenGrant, TokenSource, TokenUpdate};
use reqwest_middleware::ClientBuilder;

use support::{
    APP_CLIENT_ID, APP_REDIRECT_URI, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, Server, Story,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The app's users.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct UserId(String);

/// The app's database of refresh tokens, by user.
type Database = Arc<Mutex<HashMap<UserId, String>>>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = Server::start(Duration::from_secs(2)).await;
    let story = Story::begin();
    story.say("authorization server and API on 127.0.0.1; access tokens live 2 s");

    // 1. Three sign-ins; each user's refresh token goes to the database.
    let database = Database::default();
    for name in ["ada", "grace", "linus"] {
        let grant = sign_in(&server, name).await?;
        let refresh_token = grant.refresh_token().expect("a refresh token").secret();
        database
            .lock()
            .unwrap()
            .insert(UserId(name.to_owned()), refresh_token.to_owned());
        story.say(format!("1. {name} signed in; refresh token stored"));
    }
    let stored_at_sign_in = database.lock().unwrap().clone();

    let token_url = server.token_url();
    let db = database.clone();
    let users = KeyedRefreshLayer::new(factory_fn(move |user: UserId| {
        let (token_url, db) = (token_url.clone(), db.clone());
        async move {
            let Some(stored) = db.lock().unwrap().get(&user).cloned() else {
                return Ok(None);
            };
            let store = db.clone();
            let grant = RefreshTokenGrant::new(&token_url, APP_CLIENT_ID, stored).persist(
                move |update: TokenUpdate| {
                    let store = store.clone();
                    let user = user.clone();
                    async move {
                        if let Some(rotated) = update.refresh_token {
                            store
                                .lock()
                                .unwrap()
                                .insert(user, rotated.secret().to_owned());
                        }
                        Ok::<_, Error>(())
                    }
                },
            );
            Ok(Some(Box::new(grant) as Box<dyn TokenSource>))
        }
    }));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(users.clone())
        .build();

    // 2. Requests for each user across three token lifetimes.
    let api = server.api_url("/profile");
    for round in 1..=3 {
        for name in ["ada", "grace", "linus"] {
            let response = client
                .get(&api)
                .with_extension(UserId(name.to_owned()))
                .send()
                .await?;
            assert_eq!(response.status(), 200);
            let body = response.text().await?;
            assert!(
                body.starts_with(&format!("hello {name},")),
                "{name}: {body}"
            );
            story.say(format!(
                "2. round {round}, as {name}: GET /api/profile -> {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    let stored_now = database.lock().unwrap().clone();
    for (user, at_sign_in) in &stored_at_sign_in {
        assert_ne!(
            &stored_now[user], at_sign_in,
            "{user:?}'s refresh token rotated"
        );
        let refreshes = users.stats(user).expect("a cell").refreshes;
        assert!(refreshes >= 3, "{user:?}: {refreshes} refreshes");
    }
    story.say(format!(
        "2. each user's refresh token rotated and was stored under their id; {} cells, {} \
         refresh_token requests",
        users.cells(),
        server.token_requests("refresh_token"),
    ));

    // 3. Someone who never signed in.
    let error = client
        .get(&api)
        .with_extension(UserId("mallory".to_owned()))
        .send()
        .await
        .expect_err("an unknown user");
    let reqwest_middleware::Error::Middleware(error) = error else {
        return Err("a middleware error".into());
    };
    let key_error = error.downcast_ref::<KeyError>().expect("a KeyError");
    assert!(key_error.is_unknown());
    story.say(format!("3. as mallory: {key_error} (nothing was sent)"));

    // 4. One client credential, two audiences.
    let service = KeyedRefreshLayer::new(ClientCredentials::new(
        server.token_url(),
        SERVICE_CLIENT_ID,
        SERVICE_CLIENT_SECRET,
    ));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(service.clone())
        .build();
    for api_name in ["orders", "billing", "orders", "billing"] {
        let response = client
            .get(server.api_url(&format!("/{api_name}/summary")))
            .with_extension(TokenParams::new().audience(api_name))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "a token for {api_name}");
        let body = response.text().await?;
        story.say(format!("4. GET /api/{api_name}/summary -> {body}"));
    }
    assert_eq!(server.token_requests("client_credentials"), 2);
    assert_eq!(service.cells(), 2);
    story.say("4. two audiences, two tokens, one client_credentials request each");
    Ok(())
}

/// The authorization code grant with PKCE for `user` (the embedded server signs in whoever
/// `login_hint` names); the grant holds the first tokens.
async fn sign_in(server: &Server, user: &str) -> Result<RefreshTokenGrant, Error> {
    let pending = AuthorizationCode::new(
        server.authorization_url(),
        server.token_url(),
        APP_CLIENT_ID,
        APP_REDIRECT_URI,
    )
    .param("login_hint", user)
    .start()?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = browser.get(pending.url().as_str()).send().await?;
    let callback = redirect.headers()["location"].to_str()?.to_owned();
    Ok(pending.exchange(&callback).await?)
}
