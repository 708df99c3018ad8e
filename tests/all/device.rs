//! The device authorization grant (RFC 8628) over real HTTP, against the scripted endpoint on
//! 127.0.0.1, on tokio's paused clock: each poll's instant is exact, and so are `slow_down`,
//! the backoff after failures and the codes' expiry.
//!
//! The endpoint answers `/device` from a route and `/token` from a script that also notes
//! when each poll arrived.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_refresh::oauth::{DeviceAuthorization, DeviceAuthorizationError};
use oauth_refresh::{RefreshError, RefreshErrorKind, RefreshLayer, TokenUpdate, TransientKind};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::{Api, get, text};
use crate::token_endpoint::{Answer, TokenEndpoint};

const DEVICE_CODE: &str = "dc-s3cr3t-0123456789";

/// A device authorization answer with these `expires_in` and `interval` (omitted if null).
fn device_answer(expires_in: Value, interval: Value) -> Answer {
    let mut body = json!({
        "device_code": DEVICE_CODE,
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://login.example.com/device",
        "verification_uri_complete": "https://login.example.com/device?user_code=WDJB-MJHT",
        "expires_in": expires_in,
    });
    if !interval.is_null() {
        body["interval"] = interval;
    }
    Answer::json(200, body)
}

fn error(code: &str) -> Answer {
    Answer::json(400, json!({ "error": code }))
}

fn tokens(access_token: &str, refresh_token: &str) -> Answer {
    Answer::json(
        200,
        json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh_token}),
    )
}

/// The endpoint, with `/device` answering `device` and `/token` answering `polls` in turn,
/// and the instants (since `start`) at which each `/token` request arrived.
struct Device {
    server: TokenEndpoint,
    polled_at: Arc<Mutex<Vec<Duration>>>,
    start: Instant,
}

impl Device {
    async fn start(device: Answer, polls: Vec<Answer>) -> Device {
        let server = TokenEndpoint::start().await;
        server.route("/device", device);
        let start = Instant::now();
        let polled_at = Arc::new(Mutex::new(Vec::new()));
        let polls = Mutex::new(VecDeque::from(polls));
        let noted = polled_at.clone();
        server.respond_with(move |_request| {
            noted.lock().unwrap().push(start.elapsed());
            polls
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Answer::raw(500, Some("text/plain"), "script exhausted"))
        });
        Device {
            server,
            polled_at,
            start,
        }
    }

    fn sign_in(&self) -> DeviceAuthorization {
        DeviceAuthorization::new(
            format!("{}/device", self.server.base_url()),
            self.server.url(),
            "tv-app",
        )
        .scope("openid offline_access")
    }

    /// When each poll arrived, in whole seconds since the start.
    fn polled_at(&self) -> Vec<u64> {
        self.polled_at
            .lock()
            .unwrap()
            .iter()
            .map(|at| at.as_secs())
            .collect()
    }

    fn token_requests(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn polls_at_the_servers_interval_until_the_user_signs_in_then_seeds_a_refresh_grant() {
    let device = Device::start(
        device_answer(json!(1800), json!(7)),
        vec![
            error("authorization_pending"),
            error("authorization_pending"),
            tokens("at-1", "rt-1"),
            tokens("at-2", "rt-2"),
        ],
    )
    .await;
    let updates = Arc::new(Mutex::new(Vec::<TokenUpdate>::new()));
    let hook = updates.clone();
    let pending = device
        .sign_in()
        .client_secret("cs-1")
        .persist(move |update: TokenUpdate| {
            hook.lock().unwrap().push(update);
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(pending.user_code(), "WDJB-MJHT");
    assert_eq!(
        pending.verification_uri(),
        "https://login.example.com/device"
    );
    assert_eq!(
        pending.verification_uri_complete(),
        Some("https://login.example.com/device?user_code=WDJB-MJHT")
    );
    assert_eq!(pending.interval(), secs(7));
    assert_eq!(pending.expires_in(), secs(1800));
    assert_eq!(pending.expires_at() - device.start, secs(1800));

    let grant = pending.poll().await.unwrap();
    assert_eq!(device.polled_at(), [7, 14, 21]);
    assert_eq!(grant.refresh_token().unwrap().secret(), "rt-1");

    let requests = device.server.requests();
    let start = &requests[0];
    assert_eq!(start.path, "/device");
    assert_eq!(
        start.param("scope").as_deref(),
        Some("openid offline_access")
    );
    assert_eq!(
        start.basic_credentials(),
        Some(("tv-app".into(), "cs-1".into())),
        "the client authenticates as at the token endpoint"
    );
    for poll in &requests[1..] {
        assert_eq!(
            poll.param("grant_type").as_deref(),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(poll.param("device_code").as_deref(), Some(DEVICE_CODE));
        assert_eq!(
            poll.basic_credentials(),
            Some(("tv-app".into(), "cs-1".into()))
        );
    }

    // The hook saw the first tokens before `poll` returned.
    {
        let updates = updates.lock().unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].refresh_token.as_ref().unwrap().secret(), "rt-1");
        assert_eq!(updates[0].previous_refresh_token, None);
        assert_eq!(updates[0].access_token.as_ref().unwrap().secret(), "at-1");
        assert!(updates[0].expires_at.is_some());
    }

    // The sign-in's token is used at once; the refresh token serves the next refresh, whose
    // rotation reaches the same hook.
    let layer = RefreshLayer::new(grant);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Api::open());
    assert_eq!(
        text(service.oneshot(get()).await.unwrap()).await,
        "hello at-1"
    );
    assert_eq!(device.token_requests(), 3);
    layer.refresh().await.unwrap();
    let requests = device.server.requests();
    let refresh = requests.last().unwrap();
    assert_eq!(
        refresh.param("grant_type").as_deref(),
        Some("refresh_token")
    );
    assert_eq!(refresh.param("refresh_token").as_deref(), Some("rt-1"));
    let updates = updates.lock().unwrap();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].refresh_token.as_ref().unwrap().secret(), "rt-2");
    assert_eq!(
        updates[1].previous_refresh_token.as_ref().unwrap().secret(),
        "rt-1"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_down_adds_5_s_to_every_later_poll() {
    let device = Device::start(
        device_answer(json!(600), json!(5)),
        vec![
            error("authorization_pending"),
            error("slow_down"),
            error("authorization_pending"),
            error("slow_down"),
            error("authorization_pending"),
            tokens("at-1", "rt-1"),
        ],
    )
    .await;
    device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap();
    // Waits: 5, 5, then 10 after the first slow_down, 15 after the second.
    assert_eq!(device.polled_at(), [5, 10, 20, 30, 45, 60]);
}

#[tokio::test(start_paused = true)]
async fn without_an_interval_the_wait_is_5_s() {
    let device = Device::start(
        device_answer(json!(600), Value::Null),
        vec![error("authorization_pending"), tokens("at-1", "rt-1")],
    )
    .await;
    let pending = device.sign_in().start().await.unwrap();
    assert_eq!(pending.interval(), secs(5));
    pending.poll().await.unwrap();
    assert_eq!(device.polled_at(), [5, 10]);
}

#[tokio::test(start_paused = true)]
async fn the_codes_expiry_ends_polling_without_another_request() {
    let device = Device::start(
        device_answer(json!(12), json!(5)),
        vec![error("authorization_pending"); 10],
    )
    .await;
    let err = device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert!(err.is_expired(), "{err}");
    assert!(
        matches!(
            err,
            DeviceAuthorizationError::Expired { last_failure: None }
        ),
        "{err:?}"
    );
    // Polls at 5 and 10; the next would be at 15, past the expiry at 12, when polling ends.
    assert_eq!(device.polled_at(), [5, 10]);
    assert_eq!(device.start.elapsed(), secs(12));
    assert_eq!(device.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn expired_token_and_access_denied_end_with_their_own_errors() {
    let device = Device::start(
        device_answer(json!(600), json!(5)),
        vec![error("authorization_pending"), error("expired_token")],
    )
    .await;
    let err = device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert!(err.is_expired() && !err.is_access_denied(), "{err}");
    assert_eq!(device.polled_at(), [5, 10]);

    let device = Device::start(
        device_answer(json!(600), json!(5)),
        vec![Answer::json(
            400,
            json!({"error": "access_denied", "error_description": "the user said no"}),
        )],
    )
    .await;
    let err = device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert!(err.is_access_denied() && !err.is_expired(), "{err}");
    match &err {
        DeviceAuthorizationError::AccessDenied { description } => {
            assert_eq!(description.as_deref(), Some("the user said no"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "the device sign-in was refused (access_denied: the user said no)"
    );
    assert_eq!(device.token_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_for_now_are_polled_through_with_backoff() {
    let device = Device::start(
        device_answer(json!(600), json!(5)),
        vec![
            Answer::raw(503, Some("text/html"), "<html>down</html>"),
            Answer::close(),
            Answer::json(429, json!({})).header("retry-after", "60"),
            error("authorization_pending"),
            tokens("at-1", "rt-1"),
        ],
    )
    .await;
    device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap();
    // 5; then 10, 20 (doubling), 60 (Retry-After, over the 40 of doubling); then 5 again.
    assert_eq!(device.polled_at(), [5, 15, 35, 95, 100]);
}

#[tokio::test(start_paused = true)]
async fn failures_until_the_expiry_end_with_the_expired_error_and_the_last_failure() {
    let device = Device::start(
        device_answer(json!(30), json!(5)),
        vec![Answer::raw(500, Some("text/plain"), "internal error"); 10],
    )
    .await;
    let err = device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    // 5, 15 (after 10), then 35 would pass the expiry at 30.
    assert_eq!(device.polled_at(), [5, 15]);
    assert_eq!(device.start.elapsed(), secs(30));
    let DeviceAuthorizationError::Expired {
        last_failure: Some(last),
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        matches!(&**last, RefreshError::Transient(t) if t.kind() == TransientKind::ServerError(500)),
        "{last:?}"
    );
    let source = std::error::Error::source(&err).unwrap();
    assert!(source.downcast_ref::<RefreshError>().is_some(), "{source}");
}

#[tokio::test(start_paused = true)]
async fn hostile_numbers_are_cut_to_sane_bounds() {
    // A zero interval polls once a second, not in a loop; an endless expiry is an hour.
    let device = Device::start(
        device_answer(json!(u64::MAX), json!(0)),
        vec![
            error("authorization_pending"),
            error("authorization_pending"),
            tokens("at-1", "rt-1"),
        ],
    )
    .await;
    let pending = device.sign_in().start().await.unwrap();
    assert_eq!(pending.interval(), secs(1));
    assert_eq!(pending.expires_in(), secs(3600));
    pending.poll().await.unwrap();
    assert_eq!(device.polled_at(), [1, 2, 3]);

    // A huge interval is 5 minutes; slow_down never takes it past them.
    let device = Device::start(
        device_answer(json!("99999999999999999999999"), json!(1e300)),
        vec![error("slow_down"), tokens("at-1", "rt-1")],
    )
    .await;
    let pending = device.sign_in().start().await.unwrap();
    assert_eq!(pending.interval(), secs(300));
    pending.poll().await.unwrap();
    assert_eq!(device.polled_at(), [300, 600]);

    // An expiry of 0: over at once, without a poll.
    let device = Device::start(device_answer(json!(0), json!(5)), vec![]).await;
    let err = device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert!(err.is_expired());
    assert_eq!(device.token_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_client_or_grant_ends_the_sign_in() {
    let device = Device::start(
        Answer::json(
            401,
            json!({"error": "invalid_client", "error_description": "unknown client"}),
        ),
        vec![],
    )
    .await;
    let err = device.sign_in().start().await.unwrap_err();
    match &err {
        DeviceAuthorizationError::Request(RefreshError::Configuration(e)) => {
            assert_eq!(e.error(), "invalid_client");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(device.token_requests(), 0);

    let device = Device::start(
        device_answer(json!(600), json!(5)),
        vec![
            error("authorization_pending"),
            Answer::json(400, json!({"error": "invalid_grant"})),
        ],
    )
    .await;
    let err = device
        .sign_in()
        .start()
        .await
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeviceAuthorizationError::Request(e) if e.kind() == RefreshErrorKind::Reauth),
        "{err:?}"
    );
    assert_eq!(device.polled_at(), [5, 10]);
}

#[tokio::test(start_paused = true)]
async fn an_unusable_start_answer_is_a_clear_error_that_quotes_nothing() {
    for answer in [
        Answer::json(
            200,
            json!({"user_code": "WDJB-MJHT", "device_code": DEVICE_CODE}),
        ),
        Answer::raw(200, Some("text/html"), "<html>sign in</html>"),
        Answer::raw(503, Some("text/plain"), "down"),
    ] {
        let device = Device::start(answer, vec![]).await;
        let err = device.sign_in().start().await.unwrap_err();
        let DeviceAuthorizationError::Request(RefreshError::Transient(transient)) = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(
                transient.kind(),
                TransientKind::InvalidResponse | TransientKind::ServerError(503)
            ),
            "{transient:?}"
        );
        let printed = format!(
            "{err} {err:?} {:?}",
            std::error::Error::source(&err).map(ToString::to_string)
        );
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }
}

#[tokio::test]
async fn urls_are_checked_before_any_request() {
    let err = DeviceAuthorization::new(
        "http://login.example.com/device",
        "https://login.example.com/token",
        "tv",
    )
    .start()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, DeviceAuthorizationError::Request(RefreshError::Configuration(e)) if e.error() == "insecure_endpoint"),
        "{err:?}"
    );
    let err = DeviceAuthorization::new("not a url", "https://login.example.com/token", "tv")
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid_device_authorization_url"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_device_code_in_debug_or_errors() {
    let device = Device::start(
        device_answer(json!(600), json!(5)),
        vec![Answer::json(400, json!({"error": "invalid_request"}))],
    )
    .await;
    let pending = device.sign_in().start().await.unwrap();
    let printed = format!("{pending:?} {pending:#?}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
    assert!(
        printed.contains("WDJB-MJHT"),
        "the user code is shown: {printed}"
    );
    let err = pending.poll().await.unwrap_err();
    let printed = format!("{err} {err:?}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
}
