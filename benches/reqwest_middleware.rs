//! What attaching the token costs per request through reqwest-middleware, with the token FRESH.
//!
//! One group, `reqwest_middleware`, sends the same request (a small body, three ordinary
//! headers) through three reqwest-middleware clients that differ only in the middleware in
//! front of the same terminal one, which answers `200` in place of the network:
//!
//! - `static_header`: a middleware that inserts a fixed `Authorization` value, the baseline;
//! - `refresh_layer_retry_off`: `RefreshLayer` without the retry;
//! - `refresh_layer_retry_on`: the default `RefreshLayer`, which also keeps a copy of each
//!   request made by `reqwest::Request::try_clone`.
//!
//! Each iteration builds the request, sends it and polls the future once with a no-op waker;
//! it completes at once. Compare the variants to each other, not to other machines.
//!
//! ```text
//! cargo bench --bench reqwest_middleware
//! ```

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{Extensions, HeaderValue};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};

use common::{BEARER, PAYLOAD, primed_layer};

/// The baseline: a fixed header, as a static-token middleware would insert it.
struct StaticHeader(HeaderValue);

#[async_trait::async_trait]
impl Middleware for StaticHeader {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        request.headers_mut().insert(AUTHORIZATION, self.0.clone());
        next.run(request, extensions).await
    }
}

/// Answers `200` in place of the network.
struct Answer;

#[async_trait::async_trait]
impl Middleware for Answer {
    async fn handle(
        &self,
        request: reqwest::Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        assert!(request.headers().contains_key(AUTHORIZATION));
        Ok(http::Response::new(bytes::Bytes::new()).into())
    }
}

fn client(middleware: impl Middleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .with(Answer)
        .build()
}

/// One request through `client`, polled once: it must complete.
fn send(client: &ClientWithMiddleware, cx: &mut Context<'_>) -> reqwest::Response {
    let sending = client
        .post("https://api.example.com/v1/widgets")
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "bench/0.1")
        .body(PAYLOAD)
        .send();
    match pin!(sending).poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("request failed: {error:?}"),
        Poll::Pending => panic!("response not ready on the first poll"),
    }
}

fn reqwest_middleware(c: &mut Criterion) {
    let (rt, retry_on) = primed_layer();
    let _entered = rt.enter();
    let retry_off = retry_on.clone().retry(false);
    let mut authorization = HeaderValue::from_static(BEARER);
    authorization.set_sensitive(true);

    let mut cx = Context::from_waker(Waker::noop());
    let mut group = c.benchmark_group("reqwest_middleware");
    for (name, client) in [
        ("static_header", client(StaticHeader(authorization))),
        ("refresh_layer_retry_off", client(retry_off)),
        ("refresh_layer_retry_on", client(retry_on.clone())),
    ] {
        group.bench_function(name, |b| b.iter(|| black_box(send(&client, &mut cx))));
    }
    group.finish();

    // Every measured request found the token FRESH: the priming fetch was the only one.
    assert_eq!(retry_on.stats().refreshes, 1, "{:?}", retry_on.stats());
}

criterion_group!(benches, reqwest_middleware);
criterion_main!(benches);
