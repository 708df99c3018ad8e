//! What every bench shares: the token, the request payload, and a source that hands out the
//! token without a network.
#![allow(dead_code)] // each bench uses part of it

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Empty, Full};
use oauth_refresh::{AccessToken, BoxFuture, RefreshError, TokenRequest, TokenSet, TokenSource};
use tower::Service;
use tower::util::ServiceFn;

pub const ACCESS_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
pub const BEARER: &str = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
pub const PAYLOAD: &[u8] = br#"{"name":"widget","quantity":3}"#;

/// Hands out the same token, valid for an hour, so every measured request is FRESH.
pub struct InMemory;

impl TokenSource for InMemory {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async {
            Ok(TokenSet::new(AccessToken::new(ACCESS_TOKEN))
                .with_expires_in(Duration::from_secs(3600)))
        })
    }
}

/// The lock-based design `RefreshLayer` is compared against: the header behind an `RwLock`,
/// read and cloned on every request.
#[derive(Clone)]
pub struct RwLockBearer<S> {
    pub inner: S,
    pub authorization: Arc<RwLock<HeaderValue>>,
}

impl<S, B> Service<Request<B>> for RwLockBearer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let authorization = self
            .authorization
            .read()
            .expect("token lock poisoned")
            .clone();
        request.headers_mut().insert(AUTHORIZATION, authorization);
        self.inner.call(request)
    }
}

/// The same request for every variant; building it is part of each iteration.
pub fn request() -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from_static(PAYLOAD)));
    *request.uri_mut() = Uri::from_static("https://api.example.com/v1/widgets");
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static("bench/0.1"));
    request
}

/// The token header as the token cell builds it: from a runtime string, marked sensitive.
pub fn sensitive_bearer() -> HeaderValue {
    let mut authorization = HeaderValue::try_from(format!("Bearer {ACCESS_TOKEN}"))
        .expect("token is a valid header value");
    authorization.set_sensitive(true);
    authorization
}

/// One request through `service`: build it, ready the service, call it, poll the response
/// future once. The inner services of the benches answer at once, so it must complete.
pub fn send_ready<S, ResBody>(service: &mut S, cx: &mut Context<'_>) -> Response<ResBody>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Debug,
{
    let request = request();
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {other:?}"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("request failed: {error:?}"),
        Poll::Pending => panic!("response not ready on the first poll"),
    }
}

/// The API every tower bench calls: it answers `200` at once. `Empty` rather than `()`: the
/// refresh layer's response body must implement `Body`.
pub type Api =
    ServiceFn<fn(Request<Full<Bytes>>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>>>;

pub fn api() -> Api {
    fn answer(_: Request<Full<Bytes>>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>> {
        ready(Ok(Response::new(Empty::new())))
    }
    tower::service_fn(answer as fn(_) -> _)
}

/// A current-thread runtime, entered by the caller if it needs one, and a layer whose token
/// has been fetched: every request after is FRESH until the bench ends.
pub fn primed_layer() -> (tokio::runtime::Runtime, oauth_refresh::RefreshLayer) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let layer = oauth_refresh::RefreshLayer::new(InMemory);
    rt.block_on(layer.refresh()).expect("priming refresh");
    (rt, layer)
}
