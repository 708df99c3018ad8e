//! Test doubles: a scripted in-memory token source and a protected API service.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use oauth_refresh::{
    AccessToken, BoxFuture, RefreshError, RefreshToken, TokenRequest, TokenSet, TokenSource,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// What the next fetch does.
pub enum Step {
    /// Issue the next token (`at-N`, `rt-N` if rotating) with the source's lifetime.
    Issue,
    /// Return this token set.
    Tokens(TokenSet),
    Fail(RefreshError),
    /// Never answer.
    Hang,
}

struct Inner {
    calls: AtomicUsize,
    script: Mutex<VecDeque<Step>>,
    lifetime: Mutex<Option<Duration>>,
    rotate: bool,
    /// When set, each fetch takes a permit first: tests hold a refresh open with it.
    gate: Option<Semaphore>,
    requests: Mutex<Vec<(Instant, Option<String>, u32)>>,
    initial_refresh_token: Option<RefreshToken>,
    host: std::sync::OnceLock<String>,
}

/// A token source whose answers a test scripts; by default it issues `at-1`, `at-2`, ...
#[derive(Clone)]
pub struct TestSource(Arc<Inner>);

impl TestSource {
    pub fn new(lifetime: Duration) -> Self {
        Self::build(Some(lifetime), false, false, None)
    }

    pub fn build(
        lifetime: Option<Duration>,
        rotate: bool,
        gated: bool,
        initial_refresh_token: Option<&str>,
    ) -> Self {
        TestSource(Arc::new(Inner {
            calls: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            lifetime: Mutex::new(lifetime),
            rotate,
            gate: gated.then(|| Semaphore::new(0)),
            requests: Mutex::new(Vec::new()),
            initial_refresh_token: initial_refresh_token.map(RefreshToken::new),
            host: std::sync::OnceLock::new(),
        }))
    }

    /// Queues what the next fetches do, in order; after the script, `Issue`.
    pub fn then(&self, step: Step) -> &Self {
        self.0.script.lock().unwrap().push_back(step);
        self
    }

    /// Names the token endpoint's host (default `auth.test`), once.
    pub fn with_host(self, host: &str) -> Self {
        self.0.host.set(host.to_owned()).expect("host set once");
        self
    }

    /// Lets `n` gated fetches through.
    pub fn open(&self, n: usize) {
        self.0.gate.as_ref().expect("gated source").add_permits(n);
    }

    pub fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// (when, refresh token presented, attempt) of every fetch.
    pub fn requests(&self) -> Vec<(Instant, Option<String>, u32)> {
        self.0.requests.lock().unwrap().clone()
    }
}

impl TokenSource for TestSource {
    fn fetch(&self, request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async move {
            if let Some(gate) = &self.0.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            let n = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.requests.lock().unwrap().push((
                Instant::now(),
                request
                    .refresh_token
                    .as_ref()
                    .map(|t| t.secret().to_owned()),
                request.attempt,
            ));
            let step = self
                .0
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Step::Issue);
            match step {
                Step::Issue => {
                    let mut set = TokenSet::new(AccessToken::new(format!("at-{n}")));
                    set.expires_in = *self.0.lifetime.lock().unwrap();
                    if self.0.rotate {
                        set.refresh_token = Some(RefreshToken::new(format!("rt-{n}")));
                    }
                    Ok(set)
                }
                Step::Tokens(set) => Ok(set),
                Step::Fail(error) => Err(error),
                Step::Hang => std::future::pending().await,
            }
        })
    }

    fn grant(&self) -> &str {
        "test"
    }

    fn host(&self) -> Option<&str> {
        Some(self.0.host.get().map_or("auth.test", String::as_str))
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.0.initial_refresh_token.clone()
    }
}

type Policy = dyn Fn(&str) -> bool + Send + Sync;

/// A protected API: answers 200 with the `Authorization` it saw when `accepts` says yes, and
/// `401 Bearer error="invalid_token"` otherwise.
#[derive(Clone)]
pub struct Api {
    accepts: Arc<Mutex<Arc<Policy>>>,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Api {
    pub fn accepting(accepts: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Api {
            accepts: Arc::new(Mutex::new(Arc::new(accepts))),
            calls: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Accepts any bearer token.
    pub fn open() -> Self {
        Self::accepting(|_| true)
    }

    pub fn set_policy(&self, accepts: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.accepts.lock().unwrap() = Arc::new(accepts);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `Authorization` value of every call, in order.
    pub fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }

    fn answer(&self, authorization: Option<&str>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap()
            .push(authorization.map(str::to_owned));
        let policy = self.accepts.lock().unwrap().clone();
        match authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            Some(token) if policy(token) => {
                Response::new(Full::new(Bytes::from(format!("hello {token}"))))
            }
            _ => Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(
                    header::WWW_AUTHENTICATE,
                    r#"Bearer realm="api", error="invalid_token""#,
                )
                .body(Full::new(Bytes::from_static(b"token rejected")))
                .unwrap(),
        }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("calls", &self.calls()).finish()
    }
}

impl<B> tower::Service<Request<B>> for Api {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        ready(Ok(self.answer(authorization.as_deref())))
    }
}

/// The body of a response, as text.
pub async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A GET to the API with a replayable empty body.
pub fn get() -> Request<Full<Bytes>> {
    Request::get("https://api.test/items")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub type Req = Request<Full<Bytes>>;

/// Readies `service`, then calls it: the tower contract, step by step.
pub async fn send<S: tower::Service<Req>>(
    service: &mut S,
    request: Req,
) -> Result<S::Response, S::Error> {
    use tower::ServiceExt;
    service.ready().await?.call(request).await
}
