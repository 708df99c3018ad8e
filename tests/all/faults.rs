//! The fault matrix: refreshes against a token endpoint on 127.0.0.1 that fails in each way a
//! real one does, over real HTTP. Every row starts from a healthy token, breaks the endpoint
//! and checks that
//!
//! 1. the refresh ends in the expected class (kind and `Retry-After`, or the OAuth code), from
//!    `refresh()` and for callers once the token has expired, through tower and reqwest alike;
//! 2. while the token is valid, every request gets it at once: the background refresh that
//!    hits the fault makes no one wait, and its failure takes nothing away;
//! 3. nothing panics, spawned tasks included;
//! 4. each outcome arrives within the grant's timeout plus a margin;
//! 5. the client allocates far less than a huge answer holds.
//!
//! Rows run concurrently, each on its own thread driving a current-thread runtime, so that the
//! thread's allocation counter sees that client, its spawned refreshes included, and nothing
//! else; the endpoints are served by another runtime on another thread. The table shows with
//! `cargo test --all-features --test all faults -- --nocapture`.

use std::fmt;
use std::sync::{Mutex, Once};
use std::time::Duration;

use oauth_refresh::oauth::{SecurityToken, TokenExchange, token_type};
use oauth_refresh::{
    ConfigurationError, ReauthRequired, RefreshError, RefreshErrorKind, RefreshLayer,
    RefreshTokenGrant, TransientError, TransientKind,
};
use serde_json::json;
use tokio::time::Instant;
use tower::ServiceBuilder;

use crate::alloc::{allocated_bytes, live_bytes};
use crate::support::{Api, get, send, text};
use crate::token_endpoint::{Answer, TokenEndpoint};

/// The grant's timeout for one token request.
const TIMEOUT: Duration = Duration::from_secs(1);
/// What a loaded machine may add to it before an outcome counts as late.
const MARGIN: Duration = Duration::from_secs(1);
/// The healthy token's lifetime. The refresh-ahead window is capped at half of it, so the
/// background refresh starts after 2 s and has 2 s to fail while the token is still valid.
const LIFETIME_S: u64 = 4;
/// The pause between two requests to the API while the token is valid.
const TICK: Duration = Duration::from_millis(50);
/// Requests stop this long before the token expires, so that each one is sent with time to
/// spare.
const BEFORE_EXPIRY: Duration = Duration::from_millis(150);
/// A request slower than this waited for something; it should have been served at once.
const AT_ONCE: Duration = Duration::from_millis(250);
/// A huge answer: 40 times what the grants read of one (256 KiB).
const HUGE: usize = 10 << 20;
/// The most the client may allocate in one `refresh()`, that is one token request. Reading
/// the 256 KiB the grants read of an answer costs 1.3 to 1.8 MiB, counting every buffer at
/// each size it grows to, whatever the size of the answer.
const REFRESH_BYTES: usize = HUGE / 4;
/// The names of this test's threads: panics on them are counted.
const THREAD_PREFIX: &str = "fault-";

/// A good token answer, with an access token the API must never see: the faults that slow
/// it down or cut it short send it.
const NEXT_TOKENS: &str =
    r#"{"access_token":"at-2","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-3"}"#;

/// The first answer of every row.
fn healthy() -> Answer {
    Answer::json(
        200,
        json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": LIFETIME_S, "refresh_token": "rt-2"}),
    )
}

fn rows() -> Vec<Row> {
    use TransientKind::*;
    let transient = |kind| Outcome::Transient(kind, None);
    vec![
        Row::new("connection refused", Fault::Refused, transient(Network)),
        Row::answer(
            "accepts, then never answers",
            Answer::hang(),
            transient(Timeout),
        ),
        Row::answer(
            "body dripped, 1 byte per 50 ms",
            Answer::drip(
                200,
                "application/json",
                NEXT_TOKENS,
                Duration::from_millis(50),
            ),
            transient(Timeout),
        ),
        Row::answer(
            "500",
            Answer::raw(500, Some("text/plain"), "internal error"),
            transient(ServerError(500)),
        ),
        Row::answer(
            "503, Retry-After: 2",
            Answer::raw(503, Some("text/html"), "<html>down for maintenance</html>")
                .header("retry-after", "2"),
            Outcome::Transient(ServerError(503), Some(Duration::from_secs(2))),
        ),
        Row::answer(
            "429, Retry-After: 5",
            Answer::json(429, json!({"error": "slow_down"})).header("retry-after", "5"),
            Outcome::Transient(RateLimited, Some(Duration::from_secs(5))),
        ),
        Row::answer(
            "200, garbage JSON",
            Answer::raw(200, Some("application/json"), r#"{"access_token":"at-2",,"#),
            transient(InvalidResponse),
        ),
        Row::answer(
            "truncated body, then close",
            Answer::truncated(
                200,
                "application/json",
                &NEXT_TOKENS[..40],
                NEXT_TOKENS.len(),
            ),
            transient(Network),
        ),
        Row::answer(
            "10 MiB body, Content-Length",
            Answer::huge(200, HUGE, false),
            transient(ResponseTooLarge),
        ),
        Row::answer(
            "10 MiB body, chunked",
            Answer::huge(200, HUGE, true),
            transient(ResponseTooLarge),
        ),
        Row::answer(
            "200, text/html sign-in page",
            Answer::raw(
                200,
                Some("text/html"),
                "<html><body>Please sign in</body></html>",
            ),
            transient(InvalidResponse),
        ),
        Row::answer(
            "200, error invalid_grant",
            Answer::json(200, json!({"error": "invalid_grant"})),
            Outcome::Reauth("invalid_grant".to_owned()),
        ),
        Row::answer(
            "200, error temporarily_unavailable",
            Answer::json(200, json!({"error": "temporarily_unavailable"})),
            transient(TemporarilyUnavailable),
        ),
        Row::answer(
            "401, error invalid_client",
            Answer::json(401, json!({"error": "invalid_client"})),
            Outcome::Configuration("invalid_client".to_owned()),
        ),
        // Token exchange (RFC 8693): the answers of its own, and the faults of any grant
        // for one that may be resent.
        Row::new(
            "exchange: connection refused",
            Fault::Refused,
            transient(Network),
        )
        .exchange(),
        Row::answer(
            "exchange: accepts, then never answers",
            Answer::hang(),
            transient(Timeout),
        )
        .exchange(),
        Row::answer(
            "exchange: 503, Retry-After: 2",
            Answer::raw(503, Some("text/html"), "<html>down for maintenance</html>")
                .header("retry-after", "2"),
            Outcome::Transient(ServerError(503), Some(Duration::from_secs(2))),
        )
        .exchange(),
        Row::answer(
            "exchange: 200 without issued_token_type",
            Answer::raw(200, Some("application/json"), NEXT_TOKENS),
            transient(InvalidResponse),
        )
        .exchange(),
        Row::answer(
            "exchange: 200, token_type N_A (an ID token)",
            Answer::json(
                200,
                json!({"access_token": "id-2", "token_type": "N_A", "expires_in": 3600,
                       "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"}),
            ),
            Outcome::Configuration("not_an_access_token".to_owned()),
        )
        .exchange(),
        Row::answer(
            "exchange: 200, issued a refresh token",
            Answer::json(
                200,
                json!({"access_token": "rt-9", "token_type": "N_A",
                       "issued_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}),
            ),
            Outcome::Configuration("not_an_access_token".to_owned()),
        )
        .exchange(),
        Row::answer(
            "exchange: 400, error invalid_grant",
            Answer::json(
                400,
                json!({"error": "invalid_grant", "error_description": "subject token expired"}),
            ),
            Outcome::Configuration("invalid_grant".to_owned()),
        )
        .exchange(),
        Row::answer(
            "exchange: 400, error invalid_target",
            Answer::json(400, json!({"error": "invalid_target"})),
            Outcome::Configuration("invalid_target".to_owned()),
        )
        .exchange(),
    ]
}

/// The subject token every exchange row presents.
const SUBJECT_TOKEN: &str = "st-1";

/// The healthy answer of an exchange row.
fn healthy_exchange() -> Answer {
    Answer::json(
        200,
        json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": LIFETIME_S,
               "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
    )
}

/// The layer of a row: a rotating refresh token, or an exchange, whose whole refresh is
/// cut to one request's timeout, so that its resends end within the same bound.
fn layer_for(grant: Grant, endpoint: &TokenEndpoint) -> RefreshLayer {
    match grant {
        Grant::RefreshToken => {
            endpoint.push(healthy());
            let grant = RefreshTokenGrant::new(endpoint.url(), "app", "rt-1").timeout(TIMEOUT);
            // The window is then capped at half the token's lifetime.
            RefreshLayer::builder(grant)
                .refresh_ahead(Duration::from_secs(3600))
                .build()
        }
        Grant::TokenExchange => {
            endpoint.push(healthy_exchange());
            let subject = SecurityToken::from_fn(token_type::JWT, || async {
                Ok::<_, std::io::Error>(SUBJECT_TOKEN.to_owned())
            });
            let grant = TokenExchange::new(endpoint.url(), "gateway", subject)
                .audience("https://api.test")
                .timeout(TIMEOUT);
            RefreshLayer::builder(grant)
                .refresh_ahead(Duration::from_secs(3600))
                .refresh_timeout(TIMEOUT)
                .build()
        }
    }
}

#[test]
fn token_endpoint_faults_end_in_their_error_class_while_the_valid_token_is_served() {
    record_panics();
    let started = std::time::Instant::now();
    let endpoints = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("{THREAD_PREFIX}endpoint"))
        .enable_all()
        .build()
        .unwrap();
    // For the reqwest-middleware callers; built here, so that no row pays for its TLS setup.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // First, and alone: it also builds the grants' default client, which the rows then share.
    let endpoint = endpoints.block_on(TokenEndpoint::start());
    let thread = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}dead-runtime"))
        .spawn(move || default_client_outlives_a_dropped_runtime(endpoint))
        .unwrap();
    let mut reports = vec![
        thread
            .join()
            .unwrap_or_else(|_| Report::panicked(DEAD_RUNTIME, Outcome::Refreshed)),
    ];

    // The process's bytes in use, now that the default client exists: what the matrix leaves
    // is compared with it.
    let live_before = live_bytes();
    let running: Vec<_> = rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let endpoint = endpoints.block_on(TokenEndpoint::start());
            let http = http.clone();
            let (fault, expected) = (row.fault_name, row.expected.to_string());
            std::thread::Builder::new()
                .name(format!("{THREAD_PREFIX}{i}"))
                .spawn(move || faulty_refresh(row, endpoint, http))
                .map(|thread| (fault, expected, thread))
                .unwrap()
        })
        .collect();
    for (fault, expected, thread) in running {
        reports.push(
            thread
                .join()
                .unwrap_or_else(|_| Report::panicked(fault, expected)),
        );
    }
    drop(endpoints);
    let left = live_bytes().saturating_sub(live_before);

    print_table(&reports);
    println!(
        "matrix: {:.1} s; the process holds {} KiB more than before it",
        started.elapsed().as_secs_f64(),
        left >> 10
    );
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(panics.is_empty(), "panics: {panics:#?}");
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("{}: {}", r.fault, r.problems.join("; ")))
        .collect();
    assert!(failed.is_empty(), "rows failed:\n{}", failed.join("\n"));
    // Other tests run meanwhile, so the margin is wide; a refresh that kept its answer, or a
    // task left hanging with its buffers, would take more.
    assert!(left < HUGE / 2, "{} KiB left behind", left >> 10);
}

/// How the endpoint fails once the first token was issued.
enum Fault {
    /// The listener and its connections close: connecting is refused.
    Refused,
    /// Every token request gets this answer.
    Answer(Answer),
}

struct Row {
    fault_name: &'static str,
    fault: Fault,
    expected: Outcome,
    grant: Grant,
}

/// The grant a row refreshes with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// A rotating refresh token, never resent once it may have reached the server.
    RefreshToken,
    /// A token exchange (RFC 8693) of a subject token from a closure: resent while the
    /// refresh's time lasts, and its answer must name an `issued_token_type`.
    TokenExchange,
}

impl Row {
    fn new(fault_name: &'static str, fault: Fault, expected: Outcome) -> Row {
        Row {
            fault_name,
            fault,
            expected,
            grant: Grant::RefreshToken,
        }
    }

    fn answer(fault_name: &'static str, answer: Answer, expected: Outcome) -> Row {
        Row::new(fault_name, Fault::Answer(answer), expected)
    }

    /// A row of the token exchange's.
    fn exchange(mut self) -> Row {
        self.grant = Grant::TokenExchange;
        self
    }
}

/// How a refresh, or a request that waited for one, ended: what the table compares.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Refreshed,
    Transient(TransientKind, Option<Duration>),
    Reauth(String),
    Configuration(String),
    /// Something else: an error of another type, or a response where an error was due.
    Other(String),
}

impl Outcome {
    fn of(result: &Result<(), RefreshError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Refreshed,
            Err(RefreshError::Transient(e)) => Outcome::of_error(e),
            Err(RefreshError::Reauth(e)) => Outcome::of_error(e),
            Err(RefreshError::Configuration(e)) => Outcome::of_error(e),
            Err(e) => Outcome::Other(format!("{e:?}")),
        }
    }

    /// The crate's error inside a caller's error, reached by `downcast_ref` as users do.
    fn of_error(error: &(dyn std::error::Error + 'static)) -> Outcome {
        if let Some(e) = error.downcast_ref::<TransientError>() {
            Outcome::Transient(e.kind(), e.retry_after())
        } else if let Some(e) = error.downcast_ref::<ReauthRequired>() {
            Outcome::Reauth(e.error().to_owned())
        } else if let Some(e) = error.downcast_ref::<ConfigurationError>() {
            Outcome::Configuration(e.error().to_owned())
        } else {
            Outcome::Other(error.to_string())
        }
    }

    fn of_tower<B>(result: Result<http::Response<B>, tower::BoxError>) -> Outcome {
        match result {
            Ok(response) => Outcome::Other(format!("a {} response", response.status())),
            Err(error) => Outcome::of_error(&*error),
        }
    }

    fn of_reqwest(result: reqwest_middleware::Result<reqwest::Response>) -> Outcome {
        match result {
            Ok(response) => Outcome::Other(format!("a {} response", response.status())),
            Err(reqwest_middleware::Error::Middleware(error)) => {
                Outcome::of_error(AsRef::<dyn std::error::Error>::as_ref(&error))
            }
            Err(error) => Outcome::Other(format!("reqwest: {error}")),
        }
    }

    /// The class the stats report for this outcome.
    fn kind(&self) -> Option<RefreshErrorKind> {
        match self {
            Outcome::Transient(..) => Some(RefreshErrorKind::Transient),
            Outcome::Reauth(_) => Some(RefreshErrorKind::Reauth),
            Outcome::Configuration(_) => Some(RefreshErrorKind::Configuration),
            Outcome::Refreshed | Outcome::Other(_) => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Refreshed => f.write_str("refreshed"),
            Outcome::Transient(kind, None) => write!(f, "Transient {kind:?}"),
            Outcome::Transient(kind, Some(after)) => {
                write!(f, "Transient {kind:?}, retry after {}s", after.as_secs())
            }
            Outcome::Reauth(code) => write!(f, "ReauthRequired {code}"),
            Outcome::Configuration(code) => write!(f, "ConfigurationError {code}"),
            Outcome::Other(what) => write!(f, "other: {what}"),
        }
    }
}

/// One line of the table, and what went wrong in that row.
struct Report {
    fault: &'static str,
    expected: String,
    observed: String,
    served: String,
    time: Option<Duration>,
    /// Allocated by the client during `refresh()`: one token request.
    refresh_bytes: Option<usize>,
    /// Allocated by the client during the whole row.
    client_bytes: Option<usize>,
    /// Refreshes the row ran.
    refreshes: u64,
    problems: Vec<String>,
}

impl Report {
    fn new(fault: &'static str, expected: impl ToString) -> Report {
        Report {
            fault,
            expected: expected.to_string(),
            observed: "-".to_owned(),
            served: "-".to_owned(),
            time: None,
            refresh_bytes: None,
            client_bytes: None,
            refreshes: 0,
            problems: Vec::new(),
        }
    }

    fn panicked(fault: &'static str, expected: impl ToString) -> Report {
        Report {
            observed: "PANIC".to_owned(),
            problems: vec!["the row's thread panicked".to_owned()],
            ..Report::new(fault, expected)
        }
    }

    fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// Records a problem unless `observed` is `expected`.
    fn compare(&mut self, what: &str, observed: &Outcome, expected: &Outcome) {
        if observed != expected {
            self.problem(format!("{what}: expected {expected}, observed {observed}"));
        }
    }

    fn within(&mut self, what: &str, took: Duration, bound: Duration) {
        if took > bound {
            self.problem(format!("{what} took {took:?}, more than {bound:?}"));
        }
    }
}

/// Runs `row` on this thread's own current-thread runtime and counts what it allocates.
fn faulty_refresh(row: Row, endpoint: TokenEndpoint, http: reqwest::Client) -> Report {
    let runtime = current_thread_runtime();
    let mut report = Report::new(row.fault_name, &row.expected);
    runtime.block_on(async {
        let before = allocated_bytes();
        run_row(row, endpoint, http, &mut report).await;
        report.client_bytes = Some(allocated_bytes() - before);
    });
    if report
        .refresh_bytes
        .is_some_and(|bytes| bytes > REFRESH_BYTES)
    {
        report.problem(format!(
            "refresh() allocated more than {} KiB",
            REFRESH_BYTES >> 10
        ));
    }
    // About 80 API requests cost less than one refresh; each refresh is bounded.
    let row_bytes = REFRESH_BYTES * (report.refreshes + 1) as usize;
    if report.client_bytes.is_some_and(|bytes| bytes > row_bytes) {
        report.problem(format!(
            "the row allocated more than {} KiB",
            row_bytes >> 10
        ));
    }
    report
}

async fn run_row(row: Row, endpoint: TokenEndpoint, http: reqwest::Client, report: &mut Report) {
    let Row {
        fault,
        expected,
        grant,
        ..
    } = row;
    let bound = TIMEOUT + MARGIN;
    let layer = layer_for(grant, &endpoint);
    if let Err(error) = layer.refresh().await {
        return report.problem(format!("the healthy refresh failed: {error}"));
    }
    let Some(time_to_expiry) = layer.stats().time_to_expiry else {
        return report.problem("the healthy token has no expiry");
    };
    let expires_at = Instant::now() + time_to_expiry;
    let api_url = format!("{}/api", endpoint.base_url());

    // The endpoint breaks.
    let endpoint = match fault {
        Fault::Refused => {
            endpoint.stop().await;
            None
        }
        Fault::Answer(answer) => {
            endpoint.route("/token", answer);
            Some(endpoint)
        }
    };

    // While the token is valid, it is served at once; from half its lifetime on, the first
    // request starts the background refresh that meets the fault.
    let api = Api::open();
    let mut service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(api.clone());
    let (mut sent, mut served, mut during, mut after) = (0, 0, 0, 0);
    let mut slowest = Duration::ZERO;
    // When the refresh running now was first seen, and the longest one seen from start to end
    // (each end seen up to a tick late or early).
    let (mut flight_seen, mut longest_flight) = (None, Duration::ZERO);
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        if Instant::now() + BEFORE_EXPIRY >= expires_at {
            break;
        }
        let stats = layer.stats();
        // The healthy refresh, plus one that started and has not failed yet.
        let in_flight = stats.refreshes > 1 + stats.failures;
        let failed = stats.failures > 0;
        match (in_flight, flight_seen) {
            (true, None) => flight_seen = Some(Instant::now()),
            (false, Some(seen)) => {
                longest_flight = longest_flight.max(seen.elapsed());
                flight_seen = None;
            }
            _ => {}
        }
        let started = Instant::now();
        let response = send(&mut service, get()).await;
        slowest = slowest.max(started.elapsed());
        sent += 1;
        match response {
            Ok(response) if response.status() == 200 => {
                text(response).await;
                served += 1;
                during += usize::from(in_flight);
                after += usize::from(failed);
            }
            Ok(response) => report.problem(format!(
                "request {sent} got {} while the token was valid",
                response.status()
            )),
            Err(error) => report.problem(format!(
                "request {sent} failed while the token was valid: {error}"
            )),
        }
    }
    report.served = format!(
        "{served}/{sent}: {during} in flight, {after} after; slowest {} ms",
        slowest.as_millis()
    );
    report.within("a request while the token was valid", slowest, AT_ONCE);
    report.within("a background refresh", longest_flight, bound + TICK);
    let healthy = Some("Bearer at-1".to_owned());
    if let Some(i) = api.seen().iter().position(|seen| *seen != healthy) {
        // Which token it was is not printed: tokens never are.
        report.problem(format!("request {} carried another token, or none", i + 1));
    }
    let stats = layer.stats();
    if stats.refreshes < 2 || stats.failures == 0 {
        report.problem("the background refresh had not failed while the token was valid");
    } else if stats.last_error != expected.kind() {
        report.problem(format!(
            "the background refresh ended in {:?}",
            stats.last_error
        ));
    }

    // A background refresh may still be running (the first failure's cooldown may have
    // passed): its outcome first, then the outcome of a whole refresh of `refresh()`'s own.
    layer.refresh().await.ok();
    let (started, before) = (Instant::now(), allocated_bytes());
    let observed = Outcome::of(&layer.refresh().await);
    let took = started.elapsed();
    report.refresh_bytes = Some(allocated_bytes() - before);
    report.time = Some(took);
    report.observed = observed.to_string();
    report.compare("refresh()", &observed, &expected);
    report.within("refresh()", took, bound);

    // Once the token has expired, callers get the error, through tower and reqwest alike.
    tokio::time::sleep_until(expires_at + Duration::from_millis(10)).await;
    if layer.stats().time_to_expiry != Some(Duration::ZERO) {
        report.problem("the token has not expired when it should have");
    }
    let started = Instant::now();
    let tower_caller = Outcome::of_tower(send(&mut service, get()).await);
    report.within("a tower caller after expiry", started.elapsed(), bound);
    report.compare("a tower caller after expiry", &tower_caller, &expected);
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(layer.clone())
        .build();
    let started = Instant::now();
    let reqwest_caller = Outcome::of_reqwest(client.get(&api_url).send().await);
    report.within("a reqwest caller after expiry", started.elapsed(), bound);
    report.compare("a reqwest caller after expiry", &reqwest_caller, &expected);
    report.refreshes = layer.stats().refreshes;

    // No failure cost the refresh token that the healthy answer rotated in.
    if let Some(endpoint) = endpoint {
        let requests = endpoint.requests();
        if requests.len() < 3 {
            report.problem(format!("only {} token requests", requests.len()));
        }
        let presented = requests[1..]
            .iter()
            .filter(|r| r.path == "/token")
            .all(|r| match grant {
                Grant::RefreshToken => r.param("refresh_token").as_deref() == Some("rt-2"),
                // The exchange presents its subject token, never a refresh token.
                Grant::TokenExchange => {
                    r.param("subject_token").as_deref() == Some(SUBJECT_TOKEN)
                        && r.param("refresh_token").is_none()
                }
            });
        if !presented {
            report.problem(match grant {
                Grant::RefreshToken => {
                    "a token request after the fault did not present the rotated token"
                }
                Grant::TokenExchange => {
                    "an exchange after the fault did not present the subject token"
                }
            });
        }
    }
}

const DEAD_RUNTIME: &str = "default client, after its first runtime was dropped";

/// The grants' process-wide default client pools connections, whose tasks live on the runtime
/// that opened them. A refresh on a second runtime, after the first was dropped, must still
/// work: by a `refresh_token` grant, which never resends a request that may have been sent.
fn default_client_outlives_a_dropped_runtime(endpoint: TokenEndpoint) -> Report {
    let expected = Outcome::Refreshed;
    let mut report = Report::new(DEAD_RUNTIME, &expected);
    endpoint.push(healthy());
    endpoint.push(Answer::raw(200, Some("application/json"), NEXT_TOKENS));
    let grant = RefreshTokenGrant::new(endpoint.url(), "app", "rt-1").timeout(TIMEOUT);
    let layer = RefreshLayer::new(grant);

    let first = current_thread_runtime();
    if let Err(error) = first.block_on(layer.refresh()) {
        report.problem(format!("the first refresh failed: {error}"));
        return report;
    }
    // Its connection tasks, the pooled keep-alive connection's among them, go with it.
    drop(first);

    let second = current_thread_runtime();
    second.block_on(async {
        let before = allocated_bytes();
        let started = Instant::now();
        let observed = Outcome::of(&layer.refresh().await);
        let took = started.elapsed();
        report.refresh_bytes = Some(allocated_bytes() - before);
        report.refreshes = 1;
        report.time = Some(took);
        report.observed = observed.to_string();
        report.compare("refresh()", &observed, &expected);
        report.within("refresh()", took, TIMEOUT + MARGIN);
        let api = Api::open();
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            .service(api.clone());
        let served = match tower::ServiceExt::oneshot(service, get()).await {
            Ok(response) => text(response).await == "hello at-2",
            Err(_) => false,
        };
        report.served = format!("{}/1 (the new token)", usize::from(served));
        if !served {
            report.problem("the new token was not served");
        }
        report.client_bytes = Some(allocated_bytes() - before);
    });
    let presented = endpoint
        .requests()
        .get(1)
        .and_then(|r| r.param("refresh_token"));
    if presented.as_deref() != Some("rt-2") {
        report.problem("the second refresh did not present the rotated token");
    }
    report
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic on this test's threads. A current-thread runtime runs its spawned
/// tasks (the refreshes, the connections) on the thread that drives it, so their panics are
/// recorded too, although tokio catches them.
fn record_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name().filter(|n| n.starts_with(THREAD_PREFIX)) {
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{name}: {info}"));
            }
            previous(info);
        }));
    });
}

fn print_table(reports: &[Report]) {
    let header = [
        "fault",
        "expected",
        "observed",
        "token served",
        "time",
        "client bytes: refresh(); whole row",
    ];
    let lines: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            [
                r.fault.to_owned(),
                r.expected.clone(),
                if r.problems.is_empty() {
                    r.observed.clone()
                } else {
                    format!("{} (FAILED)", r.observed)
                },
                r.served.clone(),
                r.time
                    .map_or("-".to_owned(), |t| format!("{} ms", t.as_millis())),
                match (r.refresh_bytes, r.client_bytes) {
                    (Some(refresh), Some(row)) => format!(
                        "{} KiB; {} KiB in {} refresh{}",
                        refresh >> 10,
                        row >> 10,
                        r.refreshes,
                        if r.refreshes == 1 { "" } else { "es" }
                    ),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|line| line[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let row = |cells: &[&str]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    println!();
    row(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for line in &lines {
        row(&line.each_ref().map(String::as_str));
    }
    println!(
        "grant timeout {} ms; every outcome within {} ms; client bytes at most {} KiB per \
         refresh, in refresh() and over the row",
        TIMEOUT.as_millis(),
        (TIMEOUT + MARGIN).as_millis(),
        REFRESH_BYTES >> 10,
    );
}

// ---------------------------------------------------------------------------------------------
// The device authorization grant (RFC 8628): the same faults at the device authorization
// endpoint, and at the token endpoint while the device polls. On the paused clock, row after
// row: timeouts, drips and backoff take virtual time, and the poll rows end exactly at the
// device code's expiry.

mod device {
    use std::time::Duration;

    use oauth_refresh::RefreshError;
    use oauth_refresh::oauth::{DeviceAuthorization, DeviceAuthorizationError};
    use serde_json::json;
    use tokio::time::Instant;

    use super::{HUGE, NEXT_TOKENS, Outcome, TIMEOUT};
    use crate::token_endpoint::{Answer, TokenEndpoint};

    const DEVICE_CODE: &str = "dc-s3cr3t-fault";
    /// The device code's lifetime in the poll rows, and the server's interval.
    const EXPIRES_IN: u64 = 20;
    const INTERVAL: u64 = 5;

    fn healthy() -> Answer {
        Answer::json(
            200,
            json!({"device_code": DEVICE_CODE, "user_code": "FAUL-TYYY",
                "verification_uri": "https://login.example.com/device",
                "expires_in": EXPIRES_IN, "interval": INTERVAL}),
        )
    }

    /// How a device sign-in ended, as the table shows it.
    #[derive(Debug, PartialEq)]
    enum Ended {
        /// `start()` or a poll failed with this.
        Request(Outcome),
        /// The codes expired; the polls had been failing with this, if anything.
        Expired(Option<Outcome>),
        Denied,
        SignedIn,
    }

    impl Ended {
        fn of(result: Result<(), DeviceAuthorizationError>) -> Ended {
            let outcome = |error: RefreshError| Outcome::of(&Err(error));
            match result {
                Ok(()) => Ended::SignedIn,
                Err(DeviceAuthorizationError::Request(error)) => Ended::Request(outcome(error)),
                Err(DeviceAuthorizationError::Expired { last_failure }) => {
                    Ended::Expired(last_failure.map(|error| outcome(*error)))
                }
                Err(DeviceAuthorizationError::AccessDenied { .. }) => Ended::Denied,
                Err(other) => Ended::Request(Outcome::Other(other.to_string())),
            }
        }
    }

    /// The faults of the main matrix, with their class, and a few of the device answer's own.
    fn faults() -> Vec<(&'static str, Option<Answer>, Outcome)> {
        use oauth_refresh::TransientKind::*;
        let transient = |kind| Outcome::Transient(kind, None);
        vec![
            ("connection refused", None, transient(Network)),
            ("never answers", Some(Answer::hang()), transient(Timeout)),
            (
                "body dripped",
                Some(Answer::drip(
                    200,
                    "application/json",
                    NEXT_TOKENS,
                    Duration::from_millis(50),
                )),
                transient(Timeout),
            ),
            (
                "500",
                Some(Answer::raw(500, Some("text/plain"), "oops")),
                transient(ServerError(500)),
            ),
            (
                "503, Retry-After: 2",
                Some(Answer::raw(503, None, "").header("retry-after", "2")),
                Outcome::Transient(ServerError(503), Some(Duration::from_secs(2))),
            ),
            (
                "429",
                Some(Answer::json(429, json!({}))),
                transient(RateLimited),
            ),
            (
                "garbage JSON",
                Some(Answer::raw(
                    200,
                    Some("application/json"),
                    r#"{"device_code":"dc",,"#,
                )),
                transient(InvalidResponse),
            ),
            (
                "truncated",
                Some(Answer::truncated(
                    200,
                    "application/json",
                    &NEXT_TOKENS[..30],
                    NEXT_TOKENS.len(),
                )),
                transient(Network),
            ),
            (
                "10 MiB",
                Some(Answer::huge(200, HUGE, true)),
                transient(ResponseTooLarge),
            ),
            (
                "HTML sign-in page",
                Some(Answer::raw(200, Some("text/html"), "<html>sign in</html>")),
                transient(InvalidResponse),
            ),
            (
                "401 invalid_client",
                Some(Answer::json(401, json!({"error": "invalid_client"}))),
                Outcome::Configuration("invalid_client".into()),
            ),
            (
                "200 error invalid_scope",
                Some(Answer::json(200, json!({"error": "invalid_scope"}))),
                Outcome::Configuration("invalid_scope".into()),
            ),
        ]
    }

    async fn endpoint(device: Option<Answer>, token: Option<Answer>) -> (TokenEndpoint, bool) {
        let server = TokenEndpoint::start().await;
        let refused = device.is_none() || token.is_none();
        if let Some(answer) = device {
            server.route("/device", answer);
        }
        if let Some(answer) = token {
            server.route("/token", answer);
        }
        (server, refused)
    }

    fn sign_in(base_url: &str) -> DeviceAuthorization {
        DeviceAuthorization::new(
            format!("{base_url}/device"),
            format!("{base_url}/token"),
            "tv",
        )
        .timeout(TIMEOUT)
    }

    #[tokio::test(start_paused = true)]
    async fn device_authorization_faults_end_in_their_error_class() {
        let mut table = Vec::new();
        let mut failed = Vec::new();
        let mut rows = faults();
        rows.extend([
            (
                "200 without a device_code",
                Some(Answer::json(
                    200,
                    json!({"user_code": "U", "verification_uri": "https://x/d", "expires_in": 9}),
                )),
                Outcome::Transient(oauth_refresh::TransientKind::InvalidResponse, None),
            ),
            (
                "200 user code with an escape",
                Some(Answer::json(
                    200,
                    json!({"device_code": DEVICE_CODE, "user_code": "\u{1b}[2J",
                    "verification_uri": "https://x/d", "expires_in": 9}),
                )),
                Outcome::Transient(oauth_refresh::TransientKind::InvalidResponse, None),
            ),
        ]);

        // At the device authorization endpoint: start() fails in its class within its timeout.
        for (fault, answer, expected) in rows {
            let (server, refused) = endpoint(answer, Some(healthy())).await;
            let base_url = server.base_url();
            if refused {
                server.stop().await;
            }
            let started = Instant::now();
            let ended = Ended::of(sign_in(&base_url).start().await.map(drop));
            let took = started.elapsed();
            let expected = Ended::Request(expected);
            if ended != expected || took > TIMEOUT {
                failed.push(format!(
                    "start, {fault}: expected {expected:?}, got {ended:?} in {took:?}"
                ));
            }
            table.push(format!(
                "| start | {fault} | {ended:?} | {} ms |",
                took.as_millis()
            ));
        }

        // At the token endpoint while polling: failures for now are polled through with
        // backoff until the codes expire, and end as expired with the last failure; the
        // others end the sign-in at once.
        for (fault, answer, outcome) in faults() {
            let (server, refused) = endpoint(Some(healthy()), answer).await;
            let pending = sign_in(&server.base_url()).start().await.unwrap();
            if refused {
                server.stop().await;
            }
            let started = Instant::now();
            let ended = Ended::of(pending.poll().await.map(drop));
            let took = started.elapsed();
            let (expected, bound) = match outcome {
                Outcome::Transient(..) => (
                    Ended::Expired(Some(outcome)),
                    Duration::from_secs(EXPIRES_IN),
                ),
                other => (
                    Ended::Request(other),
                    Duration::from_secs(INTERVAL) + TIMEOUT,
                ),
            };
            let in_time = match expected {
                Ended::Expired(_) => took == bound,
                _ => took <= bound,
            };
            if ended != expected || !in_time {
                failed.push(format!(
                    "poll, {fault}: expected {expected:?} by {bound:?}, got {ended:?} in {took:?}"
                ));
            }
            table.push(format!(
                "| poll | {fault} | {ended:?} | {} ms |",
                took.as_millis()
            ));
        }
        println!(
            "| phase | fault | ended | virtual time |\n|---|---|---|---|\n{}",
            table.join("\n")
        );
        assert!(failed.is_empty(), "rows failed:\n{}", failed.join("\n"));
        assert!(
            !table.join("").contains("s3cr3t"),
            "no device code in an outcome"
        );
    }
}
