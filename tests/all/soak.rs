//! A soak test: 64 callers for about a minute, over real HTTP on 127.0.0.1, against a token
//! endpoint that rotates refresh tokens, issues 2-second access tokens and fails at random in
//! fault phases, and a protected API that checks every bearer token by the server's clock.
//!
//! Real clock on a multi-thread runtime: a paused clock would jump ahead while sockets wait.
//! The phases and the faults come from one seed, printed; `SOAK_SEED=<seed>` replays them. The
//! layer's own jitter and the scheduler are not seeded, so a replay is close, not exact.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oauth_refresh::{
    BoxError, ReauthRequired, RefreshLayer, RefreshToken, RefreshTokenGrant, TokenUpdate,
    TransientError, TransientKind,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt as _};

use crate::alloc::live_bytes;

/// Concurrent callers: half through a reqwest-middleware client, half through a tower stack,
/// both built from clones of one layer.
const CALLERS: usize = 64;
/// The `expires_in` of every token the endpoint issues. The refresh-ahead window is capped at
/// half of it, so a healthy run refreshes about once a second, the most the crate allows.
const LIFETIME: Duration = Duration::from_secs(2);
/// The run goes on until this many successful refreshes (and the final one makes one more).
const MIN_REFRESHES: usize = 50;
const MIN_FAULT_PHASES: usize = 3;
/// The first phase is healthy: callers open their connections, the first token is fetched.
const WARM_UP: Duration = Duration::from_secs(5);
/// The run ends in a healthy phase at least this old, so that recovery after the last fault
/// is part of what is checked.
const SETTLE: Duration = Duration::from_secs(2);
/// The run stops here whatever the counts; the assertions then say what fell short.
const HARD_LIMIT: Duration = Duration::from_secs(90);
/// The grant's timeout per token request. Every injected delay is well under it, so a delayed
/// answer is never abandoned while the server still processes it.
const GRANT_TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_FAULT_DELAY_MS: u64 = 600;
/// In a fault phase, the share of token requests that meet a fault.
const FAULT_SHARE: f64 = 0.8;
/// Tasks and memory are compared between these windows: early (after the warm-up's first
/// seconds) and the last seconds of the run.
const EARLY_WINDOW: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(9));
const LATE_WINDOW: Duration = Duration::from_secs(6);
/// Connections come and go with the callers' bursts: at rest, the minima of the two windows
/// were seen 18 apart on a loaded machine. A leak of one task per request would exceed this
/// within a second, one per refresh (50 in a run) within about 40 s.
const TASK_MARGIN: usize = 24;
/// Other tests of the binary allocate in parallel; the minimum of a window is what this run
/// holds at rest. A leak of 100 bytes per request (about 15 MB here) would exceed this; a
/// leak per refresh (50 of them) is too small to see.
const MEMORY_MARGIN: usize = 4 << 20;

const CLIENT_ID: &str = "soak-app";
/// When the caller issued the request, in microseconds since the run's start: the API files
/// each request under the phase it was issued in, and checks the token's expiry at that time.
const ISSUED: &str = "x-soak-issued-us";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Healthy = 0,
    Fault = 1,
}

/// Alternating phases, drawn from the seed: a healthy warm-up, then a fault phase of 1.5-2.5 s
/// and a healthy phase of 4-8 s, again and again.
struct Plan {
    /// Phase `i` ends at `ends[i].0`.
    ends: Vec<(Duration, Phase)>,
}

impl Plan {
    fn new(rng: &mut fastrand::Rng) -> Plan {
        let mut at = WARM_UP;
        let mut ends = vec![(at, Phase::Healthy)];
        while at < HARD_LIMIT + Duration::from_secs(30) {
            at += Duration::from_millis(rng.u64(1500..=2500));
            ends.push((at, Phase::Fault));
            at += Duration::from_millis(rng.u64(4000..=8000));
            ends.push((at, Phase::Healthy));
        }
        Plan { ends }
    }

    /// The index and the kind of the phase at `elapsed` since the start.
    fn at(&self, elapsed: Duration) -> (usize, Phase) {
        let i = self
            .ends
            .partition_point(|(end, _)| *end <= elapsed)
            .min(self.ends.len() - 1);
        (i, self.ends[i].1)
    }

    fn start_of(&self, i: usize) -> Duration {
        i.checked_sub(1).map_or(Duration::ZERO, |j| self.ends[j].0)
    }
}

/// What the token endpoint does instead of answering at once. Always before the grant is
/// processed: the refresh token presented is neither consumed nor rotated, except after a
/// delay, which is followed by a normal answer.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// 503 with `Retry-After: 1`.
    Unavailable,
    /// 429, no hint.
    RateLimited,
    /// 500 `{"error":"server_error"}`.
    ServerError,
    /// The connection is closed after the request was read, without an answer.
    Closed,
    /// The answer comes after a pause well under the grant's timeout.
    Delayed(Duration),
}

impl Fault {
    const NAMES: [&str; 5] = ["503", "429", "500", "closed", "delayed"];

    fn index(self) -> usize {
        match self {
            Fault::Unavailable => 0,
            Fault::RateLimited => 1,
            Fault::ServerError => 2,
            Fault::Closed => 3,
            Fault::Delayed(_) => 4,
        }
    }
}

/// The token endpoint's books.
struct Books {
    rng: fastrand::Rng,
    /// Every refresh token issued, in order; the first is the one the test starts from.
    issued: Vec<String>,
    /// How often each refresh token was presented to a grant the server processed (faults
    /// come before processing, so they do not count).
    presented: HashMap<String, u32>,
    reused: u64,
    unknown: u64,
    bad_requests: u64,
    /// Every access token issued, and when it expires by the server's clock.
    access_tokens: HashMap<String, Instant>,
    /// When each access token was issued, and whether a delay fault held its grant back.
    issued_at: Vec<(Instant, bool)>,
    faults: [u64; 5],
    token_requests: u64,
}

impl Books {
    fn successes(&self) -> usize {
        self.issued.len() - 1
    }
}

/// Per phase, what the protected API saw.
#[derive(Default)]
struct ApiCounts {
    requests: AtomicU64,
    /// Sent with a token that had expired, by the server's clock, when the caller issued
    /// the request.
    expired_at_issue: AtomicU64,
    /// Valid when the request was issued, expired by the time it arrived.
    expired_in_transit: AtomicU64,
    /// A token the endpoint never issued, or none.
    unknown: AtomicU64,
}

/// The state both servers share: the plan, the clock, the books.
struct Soak {
    epoch: Instant,
    plan: Plan,
    /// Cleared when the callers stop, so that the final refresh meets a healthy endpoint.
    faults_on: AtomicBool,
    books: Mutex<Books>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    api: [ApiCounts; 2],
}

impl Soak {
    fn new(plan: Plan, rng: fastrand::Rng, initial_refresh_token: String) -> Soak {
        Soak {
            epoch: Instant::now(),
            plan,
            faults_on: AtomicBool::new(true),
            books: Mutex::new(Books {
                rng,
                issued: vec![initial_refresh_token],
                presented: HashMap::new(),
                reused: 0,
                unknown: 0,
                bad_requests: 0,
                access_tokens: HashMap::new(),
                issued_at: Vec::new(),
                faults: [0; 5],
                token_requests: 0,
            }),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            api: Default::default(),
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap()
    }

    fn phase_at(&self, at: Instant) -> Phase {
        self.plan.at(at.saturating_duration_since(self.epoch)).1
    }

    /// Draws this token request's fault, if the endpoint is in a fault phase.
    fn fault(&self) -> Option<Fault> {
        let phase = self.phase_at(Instant::now());
        let mut books = self.books();
        books.token_requests += 1;
        if !self.faults_on.load(Ordering::SeqCst)
            || phase != Phase::Fault
            || books.rng.f64() >= FAULT_SHARE
        {
            return None;
        }
        let fault = match books.rng.usize(..5) {
            0 => Fault::Unavailable,
            1 => Fault::RateLimited,
            2 => Fault::ServerError,
            3 => Fault::Closed,
            _ => Fault::Delayed(Duration::from_millis(
                books.rng.u64(100..=MAX_FAULT_DELAY_MS),
            )),
        };
        books.faults[fault.index()] += 1;
        Some(fault)
    }

    /// Processes a `refresh_token` grant with rotation and reuse detection.
    fn grant(&self, body: &[u8], delayed: bool) -> Response<Full<Bytes>> {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let now = Instant::now();
        let mut books = self.books();
        let field = |name: &str| form.get(name).map(String::as_str);
        let (Some("refresh_token"), Some(CLIENT_ID), Some(presented)) = (
            field("grant_type"),
            field("client_id"),
            field("refresh_token"),
        ) else {
            books.bad_requests += 1;
            return json_answer(400, json!({"error": "invalid_request"}));
        };
        let times = books.presented.entry(presented.to_owned()).or_default();
        *times += 1;
        let times = *times;
        if !books.issued.iter().any(|issued| issued == presented) {
            books.unknown += 1;
            return json_answer(400, json!({"error": "invalid_grant"}));
        }
        if times > 1 {
            // A real server would revoke the whole sign-in here.
            books.reused += 1;
            return json_answer(
                400,
                json!({"error": "invalid_grant", "error_description": "refresh token reused"}),
            );
        }
        let n = books.issued.len();
        let access_token = format!("at-{n}-{:016x}", books.rng.u64(..));
        let refresh_token = format!("rt-{n}-{:016x}", books.rng.u64(..));
        books.issued_at.push((now, delayed));
        books
            .access_tokens
            .insert(access_token.clone(), now + LIFETIME);
        books.issued.push(refresh_token.clone());
        json_answer(
            200,
            json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": LIFETIME.as_secs(),
                "refresh_token": refresh_token,
            }),
        )
    }

    /// Checks the bearer token of an API request, and files the request under the phase it
    /// was issued in.
    fn check(&self, request: &Request<Incoming>) -> bool {
        let arrived = Instant::now();
        let issued_at = request
            .headers()
            .get(ISSUED)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(|us| self.epoch + Duration::from_micros(us))
            .expect("every caller stamps its requests");
        let counts = &self.api[self.phase_at(issued_at) as usize];
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
        let expires_at = token.and_then(|t| self.books().access_tokens.get(t).copied());
        let count = match expires_at {
            None => &counts.unknown,
            Some(at) if at <= issued_at => &counts.expired_at_issue,
            Some(at) if at <= arrived => &counts.expired_in_transit,
            Some(_) => return true,
        };
        count.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// Counts the token requests the endpoint is working on, from the moment a request arrives
/// until its grant is processed or its connection is closed.
struct InFlight(Arc<Soak>);

impl InFlight {
    fn enter(soak: &Arc<Soak>) -> Self {
        let now = soak.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        soak.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(soak.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_answer(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn text_answer(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

type Answer = Result<Response<Full<Bytes>>, hyper::Error>;

async fn token_endpoint(soak: Arc<Soak>, close: Arc<Notify>, request: Request<Incoming>) -> Answer {
    let in_flight = InFlight::enter(&soak);
    let body = request.into_body().collect().await?.to_bytes();
    let fault = soak.fault();
    let delay = match fault {
        Some(Fault::Unavailable) => {
            let mut answer = text_answer(503, "down for maintenance");
            let retry_after = header::HeaderValue::from_static("1");
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
            return Ok(answer);
        }
        Some(Fault::RateLimited) => return Ok(text_answer(429, "slow down")),
        Some(Fault::ServerError) => {
            return Ok(json_answer(500, json!({"error": "server_error"})));
        }
        Some(Fault::Closed) => {
            drop(in_flight);
            close.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Delayed(delay)) => Some(delay),
        None => None,
    };
    // Like a real server, finish a grant once started, even if the client hangs up meanwhile
    // (hyper would drop this handler): the refresh token is then rotated all the same.
    let grant = tokio::spawn(async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let answer = soak.grant(&body, delay.is_some());
        drop(in_flight);
        answer
    });
    Ok(grant.await.expect("a grant does not panic"))
}

async fn api(soak: Arc<Soak>, request: Request<Incoming>) -> Answer {
    if soak.check(&request) {
        return Ok(text_answer(200, "ok"));
    }
    let mut answer = text_answer(401, "token rejected");
    answer.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
    );
    Ok(answer)
}

/// An HTTP/1.1 server on 127.0.0.1 (random port); it stops, with its connections, when
/// dropped. The handler may close its connection without an answer through the `Notify`.
struct Server {
    addr: SocketAddr,
    accept: AbortHandle,
}

impl Server {
    async fn start<H, F>(handler: H) -> Server
    where
        H: Fn(Arc<Notify>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                connections.spawn(async move {
                    let close = Arc::new(Notify::new());
                    let service = {
                        let close = close.clone();
                        service_fn(move |request| handler(close.clone(), request))
                    };
                    let connection =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = close.notified() => {}
                    }
                });
            }
        })
        .abort_handle();
        Server { addr, accept }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What a caller got back.
enum Outcome {
    Ok,
    Transient(TransientKind),
    Reauth,
    /// Any other status or error: never expected.
    Unexpected(String),
}

fn outcome_of_status(status: StatusCode) -> Outcome {
    match status {
        StatusCode::OK => Outcome::Ok,
        status => Outcome::Unexpected(format!("status {status}")),
    }
}

fn outcome_of_error(error: &(dyn std::error::Error + 'static)) -> Outcome {
    if let Some(transient) = error.downcast_ref::<TransientError>() {
        Outcome::Transient(transient.kind())
    } else if error.downcast_ref::<ReauthRequired>().is_some() {
        Outcome::Reauth
    } else {
        Outcome::Unexpected(error.to_string())
    }
}

/// What the callers saw, filed under the phase each request was issued in.
#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 2],
    transient: [AtomicU64; 2],
    transient_kinds: Mutex<HashMap<String, u64>>,
    reauth: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, phase: Phase, outcome: Outcome) {
        let phase = phase as usize;
        match outcome {
            Outcome::Ok => {
                self.ok[phase].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Transient(kind) => {
                self.transient[phase].fetch_add(1, Ordering::Relaxed);
                let mut kinds = self.transient_kinds.lock().unwrap();
                *kinds.entry(format!("{kind:?}")).or_default() += 1;
            }
            Outcome::Reauth => {
                self.reauth.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unexpected(what) => self.unexpected.lock().unwrap().push(what),
        }
    }
}

/// One caller: sends, files the outcome, pauses 5-25 ms, until told to stop.
async fn caller<F, Fut>(
    soak: Arc<Soak>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    mut pace: fastrand::Rng,
    send: F,
) where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Outcome>,
{
    while !stop.load(Ordering::Relaxed) {
        let issued_at = Instant::now();
        let outcome = send((issued_at - soak.epoch).as_micros() as u64).await;
        tally.record(soak.phase_at(issued_at), outcome);
        tokio::time::sleep(Duration::from_millis(pace.u64(5..=25))).await;
    }
}

/// A tower stack's HTTP client: a plain reqwest client, no middleware.
fn plain_http() -> impl tower::Service<
    Request<Bytes>,
    Response = Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    tower::service_fn(move |request: Request<Bytes>| {
        let client = client.clone();
        async move {
            let response = client.execute(reqwest::Request::try_from(request)?).await?;
            Ok::<_, BoxError>(Response::from(response))
        }
    })
}

/// Starts the callers: even ones through a reqwest-middleware client, odd ones through a
/// tower stack, each with a clone of `layer`.
fn spawn_callers(
    layer: &RefreshLayer,
    items: &str,
    seed: u64,
    soak: &Arc<Soak>,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> JoinSet<()> {
    let reqwest_client = reqwest_middleware::ClientBuilder::new(
        reqwest::Client::builder().no_proxy().build().unwrap(),
    )
    .with(layer.clone())
    .build();
    let tower_stack = ServiceBuilder::new()
        .layer(layer.clone())
        .service(plain_http());
    let mut callers = JoinSet::new();
    for i in 0..CALLERS {
        let pace = fastrand::Rng::with_seed(seed.wrapping_add(i as u64 + 1));
        let (soak, stop, tally, items) =
            (soak.clone(), stop.clone(), tally.clone(), items.to_owned());
        if i % 2 == 0 {
            let client = reqwest_client.clone();
            let send = move |issued: u64| {
                let request = client.get(&items).header(ISSUED, issued).send();
                async move {
                    match request.await {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.bytes().await;
                            outcome_of_status(status)
                        }
                        Err(reqwest_middleware::Error::Middleware(error)) => {
                            outcome_of_error(error.as_ref())
                        }
                        Err(reqwest_middleware::Error::Reqwest(error)) => {
                            Outcome::Unexpected(error.to_string())
                        }
                    }
                }
            };
            callers.spawn(caller(soak, stop, tally, pace, send));
        } else {
            let stack = tower_stack.clone();
            let send = move |issued: u64| {
                let request = Request::get(&items)
                    .header(ISSUED, issued)
                    .body(Bytes::new())
                    .unwrap();
                let call = stack.clone().oneshot(request);
                async move {
                    match call.await {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.into_body().collect().await;
                            outcome_of_status(status)
                        }
                        Err(error) => outcome_of_error(error.as_ref()),
                    }
                }
            };
            callers.spawn(caller(soak, stop, tally, pace, send));
        }
    }

    callers
}

/// Samples the runtime's live tasks and the process's bytes in use every 100 ms.
fn spawn_sampler(
    soak: &Arc<Soak>,
    stop: &Arc<AtomicBool>,
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> tokio::task::JoinHandle<()> {
    let (soak, stop, samples) = (soak.clone(), stop.clone(), samples.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let tasks = runtime.metrics().num_alive_tasks();
            samples
                .lock()
                .unwrap()
                .push((soak.epoch.elapsed(), tasks, live_bytes()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// What the persistence hook was given, as a compare-and-swap store would keep it.
struct Persisted {
    stored: String,
    calls: usize,
    /// Calls whose `previous` was not the refresh token stored last.
    swaps_missed: usize,
}

/// (time since the start, live tasks, bytes in use)
type Sample = (Duration, usize, usize);

fn min_in<T: Copy + Ord>(
    samples: &[Sample],
    from: Duration,
    to: Duration,
    pick: impl Fn(&Sample) -> T,
) -> Option<T> {
    samples
        .iter()
        .filter(|s| s.0 >= from && s.0 <= to)
        .map(pick)
        .min()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

#[test]
fn a_minute_of_token_endpoint_faults_loses_no_refresh_token_and_sends_no_expired_token() {
    // The secrets tests install a global subscriber that keeps every DEBUG line in memory for
    // as long as the binary runs: a minute of soak would grow it by tens of megabytes, which
    // is not the crate's memory. The soak's threads trace to nothing.
    let mute = || tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || std::mem::forget(mute()))
        .build()
        .unwrap();
    let _muted = mute();
    runtime.block_on(soak());
}

async fn soak() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("soak: seed {seed} (SOAK_SEED={seed} replays its phases and faults)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let plan = Plan::new(&mut rng);
    let initial = format!("rt-0-{:016x}", rng.u64(..));
    let soak = Arc::new(Soak::new(plan, rng.fork(), initial.clone()));

    let token_server = {
        let soak = soak.clone();
        Server::start(move |close, request| token_endpoint(soak.clone(), close, request)).await
    };
    let api_server = {
        let soak = soak.clone();
        Server::start(move |_, request| api(soak.clone(), request)).await
    };

    let persisted = Arc::new(Mutex::new(Persisted {
        stored: initial.clone(),
        calls: 0,
        swaps_missed: 0,
    }));
    let hook = {
        let persisted = persisted.clone();
        move |update: TokenUpdate| {
            let (tokens, previous) = (&update, update.previous_refresh_token.as_ref());
            let mut persisted = persisted.lock().unwrap();
            if previous.map(RefreshToken::secret) != Some(persisted.stored.as_str()) {
                persisted.swaps_missed += 1;
            }
            persisted.stored = tokens
                .refresh_token
                .as_ref()
                .map_or_else(String::new, |t| t.secret().to_owned());
            persisted.calls += 1;
            std::future::ready(Ok::<(), std::io::Error>(()))
        }
    };
    let grant = RefreshTokenGrant::new(token_server.url("/token"), CLIENT_ID, initial.as_str())
        .timeout(GRANT_TIMEOUT)
        .persist(hook);
    // A window wider than the lifetime: the cap at half the lifetime decides, so each token
    // is refreshed about 1 s after it was requested and lives 1 s more as a reserve.
    let layer = RefreshLayer::builder(grant)
        .refresh_ahead(Duration::from_secs(5))
        .refresh_timeout(Duration::from_secs(5))
        .build();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut callers = spawn_callers(
        &layer,
        &api_server.url("/items"),
        seed,
        &soak,
        &stop,
        &tally,
    );
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = spawn_sampler(&soak, &stop, &samples);

    // Run until enough lifetimes and fault phases have passed, and the endpoint has been
    // healthy again for a while.
    let ran_for = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = soak.epoch.elapsed();
        let (i, phase) = soak.plan.at(elapsed);
        let settled = phase == Phase::Healthy
            && i / 2 >= MIN_FAULT_PHASES
            && elapsed - soak.plan.start_of(i) >= SETTLE;
        if elapsed >= HARD_LIMIT || (settled && soak.books().successes() >= MIN_REFRESHES) {
            break elapsed;
        }
    };
    stop.store(true, Ordering::SeqCst);
    let mut panics = 0;
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(joined) = callers.join_next().await {
            if joined.is_err() {
                panics += 1;
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "every caller stopped");
    sampler.await.unwrap();
    soak.faults_on.store(false, Ordering::SeqCst);
    // The last refresh joins one still running, or starts one: after it no refresh runs, and
    // its token set has been persisted.
    let refreshed_by_callers = soak.books().successes();
    let final_refresh = layer.refresh().await;

    let books = soak.books();
    let persisted = persisted.lock().unwrap();
    let stats = layer.stats();
    let samples = samples.lock().unwrap();
    let early = |pick: fn(&Sample) -> usize| {
        min_in(&samples, EARLY_WINDOW.0, EARLY_WINDOW.1, pick).expect("early samples")
    };
    let late = |pick: fn(&Sample) -> usize| {
        min_in(&samples, ran_for - LATE_WINDOW, ran_for, pick).expect("late samples")
    };
    let (tasks_early, tasks_late) = (early(|s| s.1), late(|s| s.1));
    let (bytes_early, bytes_late) = (early(|s| s.2), late(|s| s.2));
    let fault_phases = soak.plan.at(ran_for).0 / 2;
    let fault_time: Duration = (1..=2 * fault_phases)
        .step_by(2)
        .map(|i| soak.plan.ends[i].0 - soak.plan.start_of(i))
        .sum();
    // How old each token was when its successor was issued; for tokens whose own grant was
    // held back by a delay fault the refresh comes sooner, since lifetimes count from sending.
    // The final, manual refresh is left out: it does not wait for the minimum interval.
    let mut ages: Vec<(u128, bool)> = books.issued_at[..refreshed_by_callers]
        .windows(2)
        .map(|w| ((w[1].0 - w[0].0).as_millis(), w[0].1))
        .collect();
    ages.sort_unstable();
    let undelayed_min = ages.iter().find(|(_, delayed)| !delayed).map(|a| a.0);
    let outlived = ages
        .iter()
        .filter(|(age, _)| *age >= LIFETIME.as_millis())
        .count();
    // From the end of each fault phase to the next token issued.
    let recoveries: Vec<u128> = (1..2 * fault_phases)
        .step_by(2)
        .map(|i| {
            let end = soak.epoch + soak.plan.ends[i].0;
            let next = books.issued_at.iter().find(|(at, _)| *at >= end);
            next.map_or(u128::MAX, |(at, _)| (*at - end).as_millis())
        })
        .collect();
    let api = |phase: Phase, pick: fn(&ApiCounts) -> &AtomicU64| {
        pick(&soak.api[phase as usize]).load(Ordering::Relaxed)
    };
    let faults: Vec<String> = Fault::NAMES
        .iter()
        .zip(books.faults)
        .map(|(name, n)| format!("{name} x{n}"))
        .collect();
    let callers_saw = |phase: Phase| {
        (
            tally.ok[phase as usize].load(Ordering::Relaxed),
            tally.transient[phase as usize].load(Ordering::Relaxed),
        )
    };
    let transient_kinds = tally.transient_kinds.lock().unwrap();
    let unexpected = tally.unexpected.lock().unwrap();
    println!(
        "soak: ran {:.1} s, {fault_phases} fault phases ({:.1} s of faults), {CALLERS} callers",
        ran_for.as_secs_f64(),
        fault_time.as_secs_f64()
    );
    println!(
        "soak: {refreshed_by_callers} lifetimes of {} s: {refreshed_by_callers} successful \
         refreshes (+{} at the end) of {} token requests, max {} in flight",
        LIFETIME.as_secs(),
        books.successes() - refreshed_by_callers,
        books.token_requests,
        soak.max_in_flight.load(Ordering::SeqCst),
    );
    println!(
        "soak: token age at its successor: min {} ms ({} ms without a delay fault), median {} ms, \
         max {} ms; {outlived} tokens expired before their successor came",
        ages[0].0,
        undelayed_min.unwrap_or_default(),
        ages[ages.len() / 2].0,
        ages[ages.len() - 1].0,
    );
    println!("soak: from the end of each fault phase to the next token: {recoveries:?} ms");
    println!(
        "soak: refresh tokens: {} issued, {} grants reused one, {} presented an unknown one; \
         the store holds the last: {}, {} missed swaps",
        books.issued.len(),
        books.reused,
        books.unknown,
        persisted.stored == *books.issued.last().unwrap(),
        persisted.swaps_missed,
    );
    println!("soak: faults injected: {}", faults.join(", "));
    for phase in [Phase::Healthy, Phase::Fault] {
        let (ok, transient) = callers_saw(phase);
        println!(
            "soak: {phase:?}: {} requests at the API, {ok} callers ok, {transient} transient errors; \
             expired at issue {}, expired in transit {}, unknown {}",
            api(phase, |c| &c.requests),
            api(phase, |c| &c.expired_at_issue),
            api(phase, |c| &c.expired_in_transit),
            api(phase, |c| &c.unknown),
        );
    }
    println!("soak: transient errors by kind: {transient_kinds:?}");
    println!(
        "soak: layer stats: {} refreshes, {} failures, {} retries",
        stats.refreshes, stats.failures, stats.retries
    );
    println!(
        "soak: live tasks {tasks_early} early, {tasks_late} late; memory {:.2} MiB early, {:.2} MiB late (window minima)",
        mib(bytes_early),
        mib(bytes_late)
    );

    if let Err(error) = final_refresh {
        panic!("the final refresh, from a healthy endpoint, failed: {error:?}");
    }

    // No request is sent with an expired token while the endpoint is healthy. "Sent with an
    // expired token" means: the token had expired, by the server's clock, at the moment the
    // caller issued the request (the layer reads the token after that moment, and counts its
    // lifetime from when it sent the token request, before the server issued it, so a
    // correct layer cannot do this). "While healthy" means: the request was issued in a
    // healthy phase. A request issued during a fault phase is the fault phase's, even if it
    // arrives after the phase ended. A token that expires while a request is on its way is
    // counted apart ("expired in transit") and is not a failure.
    assert_eq!(
        api(Phase::Healthy, |c| &c.expired_at_issue),
        0,
        "expired tokens sent while healthy"
    );
    assert_eq!(
        api(Phase::Healthy, |c| &c.unknown) + api(Phase::Fault, |c| &c.unknown),
        0,
        "tokens never issued"
    );

    // Callers see a success or a typed transient error, nothing else.
    assert_eq!(panics, 0, "no caller panicked");
    assert_eq!(
        tally.reauth.load(Ordering::Relaxed),
        0,
        "never ReauthRequired"
    );
    assert!(
        unexpected.is_empty(),
        "{} unexpected outcomes, first: {:?}",
        unexpected.len(),
        unexpected.first()
    );
    assert_eq!(
        transient_kinds.get("Aborted"),
        None,
        "no refresh task ended without an outcome"
    );
    assert!(callers_saw(Phase::Healthy).0 > 0 && callers_saw(Phase::Fault).0 > 0);

    // One refresh per lifetime: enough lifetimes, never two token requests at once, and each
    // token replaced by exactly one successful refresh (checked below, through the refresh
    // token that came with it, and against the layer's own count).
    assert!(
        refreshed_by_callers >= MIN_REFRESHES,
        "{refreshed_by_callers} successful refreshes in {ran_for:?}"
    );
    assert_eq!(
        soak.max_in_flight.load(Ordering::SeqCst),
        1,
        "never two refreshes in flight"
    );
    // With rotation, no refresh token is lost or reused.
    assert_eq!(
        (books.reused, books.unknown, books.bad_requests),
        (0, 0, 0),
        "(reused, unknown, malformed) grants"
    );
    let (last, consumed) = books.issued.split_last().unwrap();
    for refresh_token in consumed {
        assert_eq!(
            books.presented.get(refresh_token),
            Some(&1),
            "each refresh token but the last is presented once"
        );
    }
    assert_eq!(
        books.presented.get(last),
        None,
        "the last refresh token is still unused"
    );
    assert!(
        persisted.stored == *last,
        "the persistence hook holds the last refresh token issued"
    );
    assert_eq!(
        persisted.calls,
        books.successes(),
        "one stored token set per refresh"
    );
    assert_eq!(
        persisted.swaps_missed, 0,
        "each store replaced the refresh token stored before"
    );
    assert_eq!(
        (stats.refreshes - stats.failures) as usize,
        books.successes(),
        "every refresh the layer counts as a success is one the server processed"
    );

    // Neither tasks nor memory grow.
    assert!(
        tasks_late <= tasks_early + TASK_MARGIN,
        "live tasks grew from {tasks_early} to {tasks_late}"
    );
    assert!(
        bytes_late <= bytes_early + MEMORY_MARGIN,
        "memory grew from {bytes_early} to {bytes_late} bytes"
    );
    assert!(
        faults.len() == 5 && books.faults[..4].iter().sum::<u64>() >= MIN_FAULT_PHASES as u64,
        "faults were injected"
    );

    drop((token_server, api_server));
}
