//! A scripted token endpoint: a real HTTP/1.1 server on 127.0.0.1 (random port) that records
//! every request and answers from a queue of [`Answer`]s, plus fixed answers per path
//! ([`TokenEndpoint::route`], e.g. for discovery documents).
//!
//! Works on any tokio runtime (current-thread or multi-thread, paused clock or not): the server
//! itself uses no timers, so a paused clock only advances for [`Answer::delay`], the pauses of
//! [`Answer::drip`] and the client's own timeouts.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;

/// The server; it stops (its accept loop and every open connection) when dropped, or
/// when [`stop`](TokenEndpoint::stop) is awaited.
pub struct TokenEndpoint {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
    shutdown: Arc<Notify>,
}

/// Answers a request from what it asked: see [`TokenEndpoint::respond_with`].
type Responder = dyn Fn(&Recorded) -> Answer + Send + Sync;

#[derive(Default)]
struct State {
    queue: VecDeque<Answer>,
    routes: HashMap<String, Answer>,
    responder: Option<Arc<Responder>>,
    requests: Vec<Recorded>,
}

impl TokenEndpoint {
    /// Binds 127.0.0.1 on a random port and serves on the current tokio runtime.
    pub async fn start() -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let shutdown = Arc::new(Notify::new());
        let accept = tokio::spawn(accept_loop(listener, state.clone(), shutdown.clone()));
        TokenEndpoint {
            addr,
            state,
            accept,
            shutdown,
        }
    }

    /// Closes the listener and every open connection, and returns once they are closed: from
    /// then on, connecting to the port is refused. Works from any runtime.
    pub async fn stop(mut self) {
        self.shutdown.notify_one();
        (&mut self.accept)
            .await
            .expect("the accept loop ends by itself");
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the next answer. Queued answers are served in order to every request whose path
    /// has no [`route`](Self::route); when the queue is empty such a request gets
    /// 500 "script exhausted".
    pub fn push(&self, answer: Answer) {
        self.state().queue.push_back(answer);
    }

    /// Answers every request to `path` with `answer`, independent of the queue.
    pub fn route(&self, path: &str, answer: Answer) {
        self.state().routes.insert(path.to_owned(), answer);
    }

    /// Answers each request that has no route, once the queue is empty, with what `respond`
    /// makes of it (a token that names the scope or the user it was asked for, say), instead
    /// of 500 "script exhausted". It runs under the endpoint's lock: requests are answered
    /// one at a time, in the order they are recorded.
    pub fn respond_with(&self, respond: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) {
        self.state().responder = Some(Arc::new(respond));
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.state().requests.len()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): dropping it aborts them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, shutdown: Arc<Notify>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.notified() => break,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let close = Arc::new(Notify::new());
            let service = {
                let close = close.clone();
                service_fn(move |request| answer(state.clone(), close.clone(), request))
            };
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // `Answer::close` notifies: dropping the connection closes the socket, no response.
            tokio::select! {
                _ = connection => {}
                _ = close.notified() => {}
            }
        });
    }
    drop(listener);
    // Aborts every connection and waits until each task, and so its socket, is gone.
    connections.shutdown().await;
}

async fn answer(
    state: Arc<Mutex<State>>,
    close: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Out>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path().to_owned();
    let answer = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = Recorded {
            method: parts.method,
            path: path.clone(),
            headers: parts.headers,
            body,
        };
        let answer = match state.routes.get(&path) {
            Some(answer) => Some(answer.clone()),
            None => state.queue.pop_front(),
        };
        let answer = answer.or_else(|| state.responder.as_ref().map(|respond| respond(&recorded)));
        state.requests.push(recorded);
        answer
    };
    let answer = answer.unwrap_or_else(|| Answer::raw(500, Some("text/plain"), "script exhausted"));
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let body = match answer.body {
        Kind::Full(bytes) => Out::Full(Some(bytes)),
        Kind::Huge { len, chunked } => Out::Huge {
            remaining: len,
            chunked,
        },
        Kind::Drip { bytes, every } => Out::Drip {
            remaining: bytes,
            every,
            pause: None,
        },
        Kind::Truncated(bytes) => Out::Truncated(Some(bytes)),
        Kind::Hang => std::future::pending().await,
        Kind::Close => {
            close.notify_one();
            std::future::pending().await
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The body parsed as `application/x-www-form-urlencoded`, decoded, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    /// The first form parameter called `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The decoded HTTP Basic credentials: Base64-decoded, split at the first ':', then each half
    /// form-urlencoding-decoded (RFC 6749 §2.3.1). None without a Basic Authorization header.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let value = self.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some((
            form_decode(&decoded[..colon]),
            form_decode(&decoded[colon + 1..]),
        ))
    }
}

/// `application/x-www-form-urlencoded` decoding of one component: '+' is a space, `%XX` a byte.
fn form_decode(input: &[u8]) -> String {
    let spaced: Vec<u8> = input
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Kind,
    delay: Option<Duration>,
}

#[derive(Clone, Debug)]
enum Kind {
    Full(Bytes),
    Huge { len: usize, chunked: bool },
    Drip { bytes: Bytes, every: Duration },
    Truncated(Bytes),
    Hang,
    Close,
}

impl Answer {
    /// `status` with a JSON body, `Content-Type: application/json`.
    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer::raw(status, Some("application/json"), body.to_string())
    }

    /// `status` with `body` as it is, and a Content-Type if given.
    pub fn raw(status: u16, content_type: Option<&str>, body: impl Into<Bytes>) -> Answer {
        let answer = Answer {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            headers: Vec::new(),
            body: Kind::Full(body.into()),
            delay: None,
        };
        match content_type {
            Some(content_type) => answer.header(CONTENT_TYPE.as_str(), content_type),
            None => answer,
        }
    }

    /// Adds a response header (appended: the same name twice gives two headers).
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.push((name, value));
        self
    }

    /// Waits `d` (tokio::time::sleep, so a paused clock skips it) before answering.
    pub fn delay(mut self, d: Duration) -> Answer {
        self.delay = Some(d);
        self
    }

    /// Never answers; the connection stays open until the client gives up or the server drops.
    pub fn hang() -> Answer {
        Answer {
            body: Kind::Hang,
            ..Answer::raw(200, None, Bytes::new())
        }
    }

    /// Closes the connection without any response (after reading the whole request).
    pub fn close() -> Answer {
        Answer {
            body: Kind::Close,
            ..Answer::raw(200, None, Bytes::new())
        }
    }

    /// `status` with a JSON content type and a body of `len` bytes of `a`, streamed in 64 KiB
    /// chunks and never built whole. With `chunked`, no Content-Length (chunked transfer coding);
    /// otherwise Content-Length: `len`.
    pub fn huge(status: u16, len: usize, chunked: bool) -> Answer {
        let answer = Answer {
            body: Kind::Huge { len, chunked },
            ..Answer::raw(status, Some("application/json"), Bytes::new())
        };
        if chunked {
            answer
        } else {
            answer.header(CONTENT_LENGTH.as_str(), &len.to_string())
        }
    }

    /// `status` with `body` sent one byte at a time, a pause of `every` before each byte, and
    /// Content-Length: the whole length. A client with a shorter timeout never sees the end.
    pub fn drip(
        status: u16,
        content_type: &str,
        body: impl Into<Bytes>,
        every: Duration,
    ) -> Answer {
        let body = body.into();
        let answer = Answer {
            body: Kind::Drip {
                bytes: body.clone(),
                every,
            },
            ..Answer::raw(status, Some(content_type), Bytes::new())
        };
        answer.header(CONTENT_LENGTH.as_str(), &body.len().to_string())
    }

    /// `status` with Content-Length: `declared`, but only `body` (shorter) sent; then the
    /// connection closes, as when a server dies mid-answer.
    pub fn truncated(
        status: u16,
        content_type: &str,
        body: impl Into<Bytes>,
        declared: usize,
    ) -> Answer {
        let body = body.into();
        assert!(
            body.len() < declared,
            "a truncated body is shorter than declared"
        );
        let answer = Answer {
            body: Kind::Truncated(body),
            ..Answer::raw(status, Some(content_type), Bytes::new())
        };
        answer.header(CONTENT_LENGTH.as_str(), &declared.to_string())
    }
}

const CHUNK_LEN: usize = 64 * 1024;
static CHUNK: [u8; CHUNK_LEN] = [b'a'; CHUNK_LEN];

/// A response body: whole, streamed from a counter, dripped, or cut short.
enum Out {
    Full(Option<Bytes>),
    Huge {
        remaining: usize,
        chunked: bool,
    },
    Drip {
        remaining: Bytes,
        every: Duration,
        pause: Option<Pin<Box<Sleep>>>,
    },
    /// Ends before its Content-Length: hyper then closes the connection.
    Truncated(Option<Bytes>),
}

impl Body for Out {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Out::Full(bytes) | Out::Truncated(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Out::Huge { remaining, .. } if *remaining == 0 => Poll::Ready(None),
            Out::Huge { remaining, .. } => {
                let n = (*remaining).min(CHUNK_LEN);
                *remaining -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            Out::Drip { remaining, .. } if remaining.is_empty() => Poll::Ready(None),
            Out::Drip {
                remaining,
                every,
                pause,
            } => {
                let sleep = pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(*every)));
                std::task::ready!(sleep.as_mut().poll(cx));
                *pause = None;
                Poll::Ready(Some(Ok(Frame::data(remaining.split_to(1)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Out::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Out::Huge { remaining, .. } => *remaining == 0,
            Out::Drip { remaining, .. } => remaining.is_empty(),
            Out::Truncated(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Out::Huge { chunked: true, .. } => SizeHint::default(),
            Out::Huge { remaining, .. } => SizeHint::with_exact(*remaining as u64),
            Out::Drip { remaining, .. } => SizeHint::with_exact(remaining.len() as u64),
            // Unknown, so that hyper goes by the (larger) Content-Length header.
            Out::Truncated(_) => SizeHint::default(),
        }
    }
}

mod tests {
    use super::*;
    use serde_json::json;

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn form_encode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_in_order_and_requests_recorded() {
        let server = TokenEndpoint::start().await;
        server.push(Answer::json(200, json!({"access_token": "one"})));
        server.push(
            Answer::raw(429, Some("text/plain"), "slow down")
                .header("Retry-After", "7")
                .delay(Duration::from_secs(3)),
        );
        let (id, secret) = ("my client", "s:+/%&=~ x");
        let credentials = format!("{}:{}", form_encode(id), form_encode(secret));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        let client = client();
        let post = |body: &'static str| {
            client
                .post(server.url())
                .header("authorization", &basic)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
        };

        let first = post("grant_type=refresh_token&refresh_token=r%2Bt+1")
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["content-type"], "application/json");
        assert_eq!(first.text().await.unwrap(), r#"{"access_token":"one"}"#);

        let started = tokio::time::Instant::now();
        let second = post("grant_type=client_credentials&scope=a+b")
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(second.status(), 429);
        assert_eq!(second.headers()["retry-after"], "7");
        assert_eq!(second.text().await.unwrap(), "slow down");

        let third = post("").await.unwrap();
        assert_eq!(third.status(), 500);
        assert_eq!(third.text().await.unwrap(), "script exhausted");

        assert_eq!(server.count(), 3);
        let requests = server.requests();
        let first = &requests[0];
        assert_eq!(first.method, Method::POST);
        assert_eq!(first.path, "/token");
        assert_eq!(
            first.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            first.form(),
            [
                ("grant_type".to_owned(), "refresh_token".to_owned()),
                ("refresh_token".to_owned(), "r+t 1".to_owned()),
            ]
        );
        assert_eq!(first.param("refresh_token").as_deref(), Some("r+t 1"));
        assert_eq!(first.param("scope"), None);
        assert_eq!(
            first.basic_credentials(),
            Some((id.to_owned(), secret.to_owned()))
        );
        assert_eq!(requests[1].param("scope").as_deref(), Some("a b"));
        assert_eq!(requests[2].body, Bytes::new());
    }

    #[test]
    fn basic_credentials_edge_cases() {
        let with = |value: &str| Recorded {
            method: Method::POST,
            path: "/token".into(),
            headers: HeaderMap::from_iter([(AUTHORIZATION, HeaderValue::from_str(value).unwrap())]),
            body: Bytes::new(),
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            with(&format!("basic {}", b64("a%3Ab:c:d%2"))).basic_credentials(),
            Some(("a:b".into(), "c:d%2".into()))
        );
        assert_eq!(with("Bearer abc").basic_credentials(), None);
        assert_eq!(
            with(&format!("Basic {}", b64("nocolon"))).basic_credentials(),
            None
        );
        let none = Recorded {
            headers: HeaderMap::new(),
            ..with("Basic x")
        };
        assert_eq!(none.basic_credentials(), None);
    }

    /// Reads at most `cap` bytes (rounded up to a chunk), then drops the response.
    async fn capped(response: &mut reqwest::Response, cap: usize) -> usize {
        let mut read = 0;
        while read < cap {
            match response.chunk().await.unwrap() {
                Some(chunk) => read += chunk.len(),
                None => break,
            }
        }
        read
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_bodies_stream_and_a_capped_reader_stops_early() {
        let server = TokenEndpoint::start().await;
        let len = 10 << 20;
        let client = client();
        let run = async {
            for chunked in [false, true] {
                server.push(Answer::huge(200, len, chunked));
                let mut response = client.post(server.url()).send().await.unwrap();
                assert_eq!(response.headers()["content-type"], "application/json");
                if chunked {
                    assert!(response.headers().get("content-length").is_none());
                    assert_eq!(response.headers()["transfer-encoding"], "chunked");
                } else {
                    assert_eq!(response.content_length(), Some(len as u64));
                }
                let read = capped(&mut response, 1 << 20).await;
                assert!((1 << 20..len).contains(&read), "read {read}");
                drop(response);
            }
            // A whole (small) huge body arrives complete.
            server.push(Answer::huge(200, 100_000, true));
            let body = client
                .post(server.url())
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.len(), 100_000);
            assert!(body.iter().all(|&b| b == b'a'));
            // The server still answers afterwards.
            server.push(Answer::json(200, json!({})));
            let response = client.post(server.url()).send().await.unwrap();
            assert_eq!(response.status(), 200);
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap();
        assert_eq!(server.count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn close_gives_a_connection_error() {
        let server = TokenEndpoint::start().await;
        server.push(Answer::json(200, json!({"n": 1})));
        server.push(Answer::close());
        server.push(Answer::json(200, json!({"n": 3})));
        let client = client();
        // The first answer opens a keep-alive connection; the close drops exactly that one.
        let first = client.post(server.url()).body("a=1").send().await.unwrap();
        assert_eq!(first.text().await.unwrap(), r#"{"n":1}"#);
        let error = client
            .post(server.url())
            .body("a=2")
            .send()
            .await
            .unwrap_err();
        assert!(error.is_request() && error.status().is_none(), "{error:?}");
        let third = client.post(server.url()).body("a=3").send().await.unwrap();
        assert_eq!(third.text().await.unwrap(), r#"{"n":3}"#);
        let params: Vec<_> = server.requests().iter().map(|r| r.param("a")).collect();
        assert_eq!(
            params,
            [Some("1".into()), Some("2".into()), Some("3".into())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hang_until_the_client_times_out() {
        let server = TokenEndpoint::start().await;
        server.push(Answer::hang());
        server.push(Answer::json(200, json!({})));
        let client = client();
        let started = tokio::time::Instant::now();
        let error = client
            .post(server.url())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        assert!(started.elapsed() >= Duration::from_secs(30));
        assert_eq!(server.count(), 1);
        let next = client.post(server.url()).send().await.unwrap();
        assert_eq!(next.status(), 200);
    }

    #[tokio::test]
    async fn drip_sends_one_byte_per_pause() {
        let server = TokenEndpoint::start().await;
        let every = Duration::from_millis(20);
        server.push(Answer::drip(200, "application/json", "{\"a\":1}", every));
        let started = tokio::time::Instant::now();
        let mut response = client().post(server.url()).send().await.unwrap();
        assert_eq!(response.content_length(), Some(7));
        let mut chunks = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            chunks.push(chunk);
        }
        assert_eq!(chunks.len(), 7, "one byte per frame");
        assert!(chunks.iter().all(|c| c.len() == 1));
        assert_eq!(chunks.concat(), b"{\"a\":1}");
        assert!(started.elapsed() >= every * 7);
    }

    #[tokio::test]
    async fn truncated_declares_more_than_it_sends_then_closes() {
        let server = TokenEndpoint::start().await;
        server.push(Answer::truncated(200, "application/json", "{\"access", 100));
        server.push(Answer::json(200, json!({"n": 2})));
        let client = client();
        let mut response = client.post(server.url()).send().await.unwrap();
        assert_eq!(response.content_length(), Some(100));
        let mut read = Vec::new();
        let error = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => read.extend_from_slice(&chunk),
                Ok(None) => panic!("the body ended cleanly after {} bytes", read.len()),
                Err(error) => break error,
            }
        };
        assert!(error.is_body() || error.is_decode(), "{error:?}");
        assert_eq!(read, b"{\"access");
        // The server goes on answering on a new connection.
        let next = client.post(server.url()).send().await.unwrap();
        assert_eq!(next.text().await.unwrap(), r#"{"n":2}"#);
    }

    #[tokio::test]
    async fn stop_closes_the_port_and_open_connections() {
        let server = TokenEndpoint::start().await;
        server.push(Answer::json(200, json!({})));
        server.push(Answer::hang());
        let addr = server.addr;
        let client = client();
        // One idle keep-alive connection and one waiting for an answer.
        client.post(server.url()).send().await.unwrap();
        let hanging = tokio::spawn(client.post(server.url()).send());
        while server.count() < 2 {
            tokio::task::yield_now().await;
        }
        server.stop().await;
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let error = tokio::time::timeout(Duration::from_secs(10), hanging)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(error.is_request(), "{error:?}");
    }

    #[tokio::test]
    async fn dropping_the_server_ends_hanging_connections() {
        let server = TokenEndpoint::start().await;
        server.push(Answer::hang());
        let request = tokio::spawn(client().post(server.url()).send());
        while server.count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(server);
        let result = tokio::time::timeout(Duration::from_secs(10), request).await;
        assert!(result.unwrap().unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn route_answers_every_time_beside_the_queue() {
        let server = TokenEndpoint::start().await;
        let discovery = "/.well-known/openid-configuration";
        let document = json!({"issuer": server.base_url(), "token_endpoint": server.url()});
        server.route(discovery, Answer::json(200, document.clone()));
        server.push(Answer::json(200, json!({"access_token": "t"})));
        let client = client();
        for _ in 0..3 {
            let response = client
                .get(format!("{}{discovery}", server.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value =
                serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(body, document);
        }
        let token = client.post(server.url()).send().await.unwrap();
        assert_eq!(token.text().await.unwrap(), r#"{"access_token":"t"}"#);
        let requests = server.requests();
        assert_eq!(requests.len(), 4);
        assert!(
            requests[..3]
                .iter()
                .all(|r| r.method == Method::GET && r.path == discovery)
        );
        assert_eq!(requests[3].path, "/token");
    }
}
