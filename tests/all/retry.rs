//! The once-only resend after a rejection, and the generation rule.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{Empty, Full};
use oauth_refresh::classify::{ClassifyRejection, Verdict, default_verdict};
use oauth_refresh::{NoRetry, RefreshLayer, RetryStatus};
use tower::{Layer, ServiceExt};

use crate::support::{Api, TestSource, get, send, text};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn rejected_request_is_resent_once_with_a_new_token() {
    let source = TestSource::new(HOUR);
    let api = Api::accepting(|token| token != "at-1");
    let layer = RefreshLayer::new(source.clone());

    let response = layer.layer(api.clone()).oneshot(get()).await.unwrap();

    assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
    assert_eq!(text(response).await, "hello at-2");
    assert_eq!(
        api.seen(),
        vec![Some("Bearer at-1".into()), Some("Bearer at-2".into())]
    );
    assert_eq!(layer.stats().retries, 1);
}

#[tokio::test(start_paused = true)]
async fn second_rejection_is_returned_as_it_is() {
    let source = TestSource::new(HOUR);
    let api = Api::accepting(|_| false);
    let layer = RefreshLayer::new(source.clone());

    let response = layer.layer(api.clone()).oneshot(get()).await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
    assert_eq!(text(response).await, "token rejected");
    assert_eq!(api.calls(), 2, "sent once, resent once, never a loop");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_server_rejecting_every_token_is_not_refreshed_for_again_at_once() {
    let source = TestSource::new(HOUR);
    let api = Api::accepting(|_| false);
    let layer = RefreshLayer::new(source.clone());
    let mut service = layer.layer(api.clone());

    let first = send(&mut service, get()).await.unwrap();
    assert_eq!(first.extensions().get(), Some(&RetryStatus::Retried));
    for _ in 0..19 {
        let response = send(&mut service, get()).await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.extensions().get(), Some(&RetryStatus::BackedOff));
    }

    // The token the refresh brought was rejected too: refreshing again at once would not
    // help, so the rest come back as they came.
    assert_eq!(api.calls(), 21);
    assert_eq!(source.calls(), 2);
    assert_eq!(layer.stats().backed_off, 19);
}

#[tokio::test(start_paused = true)]
async fn newer_generation_is_used_without_a_refresh() {
    let source = TestSource::new(HOUR);
    let layer = RefreshLayer::new(source.clone());
    layer.refresh().await.unwrap();

    // The API holds the first request while the token is replaced, then rejects it.
    let gate = Arc::new(tokio::sync::Notify::new());
    let api_gate = gate.clone();
    let api = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let gate = api_gate.clone();
        async move {
            let auth = request.headers()["authorization"]
                .to_str()
                .unwrap()
                .to_owned();
            if auth == "Bearer at-1" {
                gate.notified().await;
                return Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(401)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                );
            }
            Ok(Response::new(Full::new(Bytes::from(auth))))
        }
    });
    let call = tokio::spawn(layer.layer(api).oneshot(get()));
    tokio::task::yield_now().await;
    // Past the minimum interval between refreshes, so nothing but the generation rule
    // keeps the rejection from refreshing again.
    tokio::time::advance(Duration::from_secs(2)).await;
    layer.refresh().await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    gate.notify_one();

    let response = call.await.unwrap().unwrap();
    assert_eq!(text(response).await, "Bearer at-2");
    assert_eq!(
        source.calls(),
        2,
        "the rejection of at-1 did not refresh again"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_rejections_share_one_refresh() {
    let source = TestSource::new(HOUR);
    let api = Api::accepting(|token| token != "at-1");
    let layer = RefreshLayer::new(source.clone());
    layer.refresh().await.unwrap();
    let service = layer.layer(api.clone());

    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn in_memory_bodies_are_replayed() {
    async fn retried<B>(body: B) -> bool
    where
        B: Send + 'static,
    {
        let api = Api::accepting(|token| token != "at-1");
        let layer = RefreshLayer::new(TestSource::new(HOUR));
        let request = Request::post("https://api.test/items").body(body).unwrap();
        let response = layer.layer(api).oneshot(request).await.unwrap();
        response.status() == 200 && response.extensions().get() == Some(&RetryStatus::Retried)
    }
    assert!(retried(Full::new(Bytes::from_static(b"{}"))).await);
    assert!(retried(Empty::<Bytes>::new()).await);
    assert!(retried(String::from("{}")).await);
    assert!(retried(Bytes::from_static(b"{}")).await);
    assert!(retried(b"{}".to_vec()).await);
    assert!(retried(()).await);
}

#[tokio::test(start_paused = true)]
async fn a_layer_taught_a_body_type_replays_it() {
    /// A body of the application's own, which the crate cannot know how to copy.
    struct Upload(Bytes);

    async fn status<B: Send + 'static>(layer: RefreshLayer, body: B) -> Option<RetryStatus> {
        let api = Api::accepting(|token| token != "at-1");
        let request = Request::post("https://api.test/items").body(body).unwrap();
        let response = layer.layer(api).oneshot(request).await.unwrap();
        response.extensions().get().copied()
    }
    let layer = || RefreshLayer::new(TestSource::new(HOUR));
    let upload = || Upload(Bytes::from_static(b"{}"));
    let empty_box = || BoxBody::new(Empty::<Bytes>::new());

    assert_eq!(
        status(layer(), upload()).await,
        Some(RetryStatus::BodyNotReplayable)
    );
    let taught = layer().replay_body(|body: &Upload| Some(Upload(body.0.clone())));
    assert_eq!(status(taught, upload()).await, Some(RetryStatus::Retried));

    // A boxed body cannot be copied, but an empty one can be made again.
    assert_eq!(
        status(layer(), empty_box()).await,
        Some(RetryStatus::BodyNotReplayable)
    );
    // Each with a token cell of its own, whose first token is rejected.
    let taught = || {
        layer().replay_body(move |body: &BoxBody<Bytes, Infallible>| {
            (body.size_hint().exact() == Some(0)).then(empty_box)
        })
    };
    assert_eq!(
        status(taught(), empty_box()).await,
        Some(RetryStatus::Retried)
    );
    // The function may decline: a body with content is then sent once.
    let full = BoxBody::new(Full::new(Bytes::from_static(b"{}")));
    assert_eq!(
        status(taught(), full).await,
        Some(RetryStatus::BodyNotReplayable)
    );
}

#[tokio::test(start_paused = true)]
async fn unreplayable_body_is_sent_once_and_its_rejection_marked() {
    let source = TestSource::new(HOUR);
    let api = Api::accepting(|token| token != "at-1");
    let layer = RefreshLayer::new(source.clone());
    let request = Request::post("https://api.test/upload")
        .body(Tracked::new(b"data"))
        .unwrap();

    let response = layer.layer(api.clone()).oneshot(request).await.unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(
        response.extensions().get(),
        Some(&RetryStatus::BodyNotReplayable)
    );
    assert_eq!(api.calls(), 1);
    // The rejected token is not used again: the next request refreshes first.
    let response = layer.layer(api.clone()).oneshot(get()).await.unwrap();
    assert_eq!(text(response).await, "hello at-2");
}

#[tokio::test(start_paused = true)]
async fn no_retry_extension_and_setting_disable_the_resend() {
    let api = Api::accepting(|token| token != "at-1");
    let layer = RefreshLayer::new(TestSource::new(HOUR));
    let mut request = get();
    request.extensions_mut().insert(NoRetry);

    let response = layer.layer(api.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Disabled));
    assert_eq!(api.calls(), 1);

    let api = Api::accepting(|token| token != "at-1");
    let layer = RefreshLayer::new(TestSource::new(HOUR)).retry(false);
    let response = layer.layer(api.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Disabled));
    assert_eq!(api.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn insufficient_scope_is_not_a_rejection() {
    let source = TestSource::new(HOUR);
    let api = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .status(403)
                .header(
                    "www-authenticate",
                    r#"Bearer error="insufficient_scope", scope="admin""#,
                )
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    });
    let response = RefreshLayer::new(source.clone())
        .layer(api)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.extensions().get::<RetryStatus>().is_none());
    assert_eq!(source.calls(), 1);
}

/// An API that says `400 {"error":"token_expired"}` when the token is old.
#[derive(Clone)]
struct TokenExpiredIn400;

impl ClassifyRejection for TokenExpiredIn400 {
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        if status == StatusCode::BAD_REQUEST {
            Verdict::ReadBody { limit: 256 }
        } else {
            default_verdict(status, headers)
        }
    }

    fn classify_body(&self, _: StatusCode, _: &HeaderMap, prefix: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(prefix)
            .is_ok_and(|body| body["error"] == "token_expired")
    }
}

#[tokio::test(start_paused = true)]
async fn body_classifier_counts_a_400_token_expired_as_a_rejection() {
    let source = TestSource::new(HOUR);
    let api = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let auth = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        let (status, body) = match auth.as_str() {
            "Bearer at-1" => (400, r#"{"error":"token_expired"}"#.to_owned()),
            _ if request.uri().path() == "/bad" => {
                (400, r#"{"error":"bad_input","field":"x"}"#.to_owned())
            }
            _ => (200, auth),
        };
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
    });
    let layer = RefreshLayer::new(source.clone()).classifier(TokenExpiredIn400);
    let service = layer.layer(api);

    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.extensions().get(), Some(&RetryStatus::Retried));
    assert_eq!(text(response).await, "Bearer at-2");

    // Another 400 is handed back with its body intact, though the classifier read it.
    let bad = Request::get("https://api.test/bad")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(bad).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(text(response).await, r#"{"error":"bad_input","field":"x"}"#);
}

/// A body that can be read only once, like a stream from a socket, and records whether it
/// was read to the end.
struct Tracked {
    data: Option<Bytes>,
    read_to_end: Arc<AtomicBool>,
}

impl Tracked {
    fn new(data: &'static [u8]) -> Self {
        Tracked {
            data: Some(Bytes::from_static(data)),
            read_to_end: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.data.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => {
                self.read_to_end.store(true, Ordering::SeqCst);
                Poll::Ready(None)
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rejected_body_is_drained_before_the_resend() {
    let drained = Arc::new(AtomicBool::new(false));
    let flag = drained.clone();
    let api = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let flag = flag.clone();
        async move {
            let first = request.headers()["authorization"] == "Bearer at-1";
            if !first {
                assert!(flag.load(Ordering::SeqCst), "drained before the resend");
            }
            let body = Tracked {
                data: Some(Bytes::from_static(b"rejected")),
                read_to_end: if first {
                    flag
                } else {
                    Arc::new(AtomicBool::new(false))
                },
            };
            let status = if first { 401 } else { 200 };
            Ok::<_, std::convert::Infallible>(
                Response::builder().status(status).body(body).unwrap(),
            )
        }
    });

    let response = RefreshLayer::new(TestSource::new(HOUR))
        .layer(api)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(drained.load(Ordering::SeqCst));
}
