//! No refresh token lost or left unpersisted: the newest one the server gave is kept unless
//! the application's own tokens brought one, and the hook runs whenever the held one changes.
//! And the settings of the cell apply to every token, the source's initial ones included.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::{
    AccessToken, BoxError, BoxFuture, RefreshError, RefreshLayer, RefreshToken, TokenRequest,
    TokenSet, TokenSource, TokenUpdate, TransientError, TransientKind,
};
use tower::{Layer, ServiceExt};

use crate::support::{Api, Step, TestSource, get, send, text};

const HOUR: Duration = Duration::from_secs(3600);

/// A [`TestSource`] whose persistence hook records every update, and which may start from
/// initial tokens.
#[derive(Clone)]
struct Recorded {
    source: TestSource,
    updates: Arc<Mutex<Vec<TokenUpdate>>>,
    initial: Option<TokenSet>,
}

impl Recorded {
    fn new(source: TestSource) -> Self {
        Recorded {
            source,
            updates: Arc::default(),
            initial: None,
        }
    }

    /// `(refresh token to present next, the one it replaces, with an access token?)` of
    /// every update, in order.
    fn updates(&self) -> Vec<(Option<String>, Option<String>, bool)> {
        let secret = |t: &Option<RefreshToken>| t.as_ref().map(|t| t.secret().to_owned());
        self.updates
            .lock()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    secret(&u.refresh_token),
                    secret(&u.previous_refresh_token),
                    u.access_token.is_some(),
                )
            })
            .collect()
    }
}

impl TokenSource for Recorded {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        self.source.fetch(request)
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.source.initial_refresh_token()
    }

    fn initial_tokens(&self) -> Option<TokenSet> {
        self.initial.clone()
    }

    fn persist(&self, update: &TokenUpdate) -> BoxFuture<'_, Result<(), BoxError>> {
        self.updates.lock().unwrap().push(update.clone());
        Box::pin(async { Ok(()) })
    }
}

/// Lets spawned tasks (a refresh, the hook's flight) run as far as they can.
async fn settled() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Sets `tokens` by hand while a refresh of a rotating source (`rt-0` to `rt-1`) is at the
/// server, then lets the refresh end.
async fn set_by_hand_during_a_refresh(tokens: TokenSet) -> (TestSource, Recorded, RefreshLayer) {
    let source = TestSource::build(Some(HOUR), true, true, Some("rt-0"));
    let recorded = Recorded::new(source.clone());
    let layer = RefreshLayer::new(recorded.clone());
    let refresh = tokio::spawn({
        let layer = layer.clone();
        async move { layer.refresh().await }
    });
    settled().await;
    layer.set_tokens(tokens).unwrap();
    source.open(1);
    refresh.await.unwrap().unwrap();
    (source, recorded, layer)
}

fn presented(source: &TestSource) -> Vec<Option<String>> {
    source.requests().into_iter().map(|(_, rt, _)| rt).collect()
}

#[tokio::test]
async fn a_refresh_token_rotated_while_tokens_were_set_by_hand_is_kept_and_persisted() {
    // A sign-in's tokens arrive while the refresh is at the server; they bring no refresh
    // token of their own.
    let signed_in = TokenSet::new(AccessToken::new("at-signed-in")).with_expires_in(HOUR);
    let (source, recorded, layer) = set_by_hand_during_a_refresh(signed_in).await;

    // The server rotated rt-0 to rt-1 meanwhile: only rt-1 works now.
    let response = layer.layer(Api::open()).oneshot(get()).await.unwrap();
    assert_eq!(
        text(response).await,
        "hello at-signed-in",
        "the tokens set by hand win"
    );
    assert_eq!(
        recorded.updates().last().unwrap(),
        &(Some("rt-1".into()), Some("rt-0".into()), false),
        "{:?}",
        recorded.updates()
    );
    source.open(1);
    layer.refresh().await.unwrap();
    assert_eq!(
        presented(&source),
        [Some("rt-0".into()), Some("rt-1".into())]
    );
}

#[tokio::test]
async fn a_refresh_token_set_by_hand_wins_over_one_rotated_meanwhile() {
    let signed_in =
        TokenSet::new(AccessToken::new("at-signed-in")).with_refresh_token("rt-signed-in");
    let (source, recorded, layer) = set_by_hand_during_a_refresh(signed_in).await;

    source.open(1);
    layer.refresh().await.unwrap();
    assert_eq!(
        presented(&source),
        [Some("rt-0".into()), Some("rt-signed-in".into())]
    );
    // The hook saw the hand-set token replace rt-0 (after the refresh that was running).
    assert!(
        recorded
            .updates()
            .contains(&(Some("rt-signed-in".into()), Some("rt-0".into()), true)),
        "{:?}",
        recorded.updates()
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_in_a_failed_answer_is_persisted_and_not_in_the_error() {
    let source = TestSource::build(Some(HOUR), true, false, Some("rt-0"));
    source.then(Step::Fail(
        TransientError::new(TransientKind::InvalidResponse)
            .with_resend_safe(false)
            .with_refresh_token(RefreshToken::new("rt-rotated"))
            .into(),
    ));
    let recorded = Recorded::new(source.clone());
    let layer = RefreshLayer::new(recorded.clone());

    let error = layer.refresh().await.unwrap_err();

    let printed = format!("{error:?}");
    assert!(printed.contains("refresh_token: None"), "{printed}");
    assert_eq!(
        recorded.updates(),
        [(Some("rt-rotated".into()), Some("rt-0".into()), false)]
    );
    layer.refresh().await.unwrap();
    assert_eq!(
        presented(&source),
        [Some("rt-0".into()), Some("rt-rotated".into())]
    );
}

#[tokio::test]
async fn a_refresh_token_beside_an_access_token_unfit_for_a_header_is_persisted() {
    let source = TestSource::build(Some(HOUR), true, false, Some("rt-0"));
    let unfit =
        TokenSet::new(AccessToken::new("at\nwith a newline")).with_refresh_token("rt-rotated");
    source.then(Step::Tokens(unfit));
    let recorded = Recorded::new(source.clone());
    let layer = RefreshLayer::new(recorded.clone());

    let error = layer.refresh().await.unwrap_err();

    assert!(matches!(error, RefreshError::Transient(_)), "{error:?}");
    assert_eq!(
        recorded.updates(),
        [(Some("rt-rotated".into()), Some("rt-0".into()), false)]
    );
    layer.refresh().await.unwrap();
    assert_eq!(presented(&source)[1].as_deref(), Some("rt-rotated"));
}

#[tokio::test]
async fn tokens_set_by_hand_reach_the_hook() {
    let source = TestSource::build(Some(HOUR), true, false, Some("rt-0"));
    let recorded = Recorded::new(source.clone());
    let layer = RefreshLayer::new(recorded.clone());
    let signed_in =
        TokenSet::new(AccessToken::new("at-signed-in")).with_refresh_token("rt-signed-in");

    layer.set_tokens(signed_in).unwrap();
    settled().await;

    assert_eq!(
        recorded.updates(),
        [(Some("rt-signed-in".into()), Some("rt-0".into()), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_window_applies_to_the_sources_initial_tokens() {
    let source = TestSource::new(HOUR);
    let initial = TokenSet::new(AccessToken::new("at-stored")).with_expires_in(HOUR);
    let mut recorded = Recorded::new(source.clone());
    recorded.initial = Some(initial);
    let layer = RefreshLayer::builder(recorded)
        .refresh_ahead(Duration::from_secs(5 * 60))
        .build();
    let mut service = layer.layer(Api::open());

    // With the default 30 s window, nothing would start before 59.5 min.
    tokio::time::advance(Duration::from_secs(54 * 60)).await;
    assert_eq!(
        text(send(&mut service, get()).await.unwrap()).await,
        "hello at-stored"
    );
    tokio::task::yield_now().await;
    assert_eq!(source.calls(), 0, "FRESH at 54 min");
    tokio::time::advance(Duration::from_secs(2 * 60)).await;
    assert_eq!(
        text(send(&mut service, get()).await.unwrap()).await,
        "hello at-stored"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        source.calls(),
        1,
        "STALE at 56 min: the 5 min window applies"
    );
}
