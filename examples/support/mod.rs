//! An authorization server and a protected API, embedded on 127.0.0.1 for the examples.
//!
//! Small but real: HTTP/1.1 over loopback on a port the system picks, and
//!
//! - `POST /token`, the token endpoint ([`token_endpoint`]): `client_credentials`
//!   (`client_secret_basic` or `client_secret_post`), `refresh_token` with rotation (each
//!   refresh token is redeemed once), `authorization_code` with PKCE S256, and token exchange
//!   (RFC 8693) of a live access token for another audience, answered as RFC 6749 §5.1 and
//!   §5.2 say;
//! - `GET /authorize`: approves at once, as if the user had signed in and consented, and
//!   redirects to the app's redirect URI with `code` and `state`;
//! - `/api/...`, the protected API (any method): `200` for a live access token issued here,
//!   else `401` with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3).
//!
//! Access tokens live a few seconds, so the examples show whole lifetimes in one run, and the
//! token endpoint takes [`TOKEN_ENDPOINT_LATENCY`] to answer, as one across a network does, so
//! a request that waits for a refresh shows it. Tokens are random; the API names the one it
//! was sent by a number ("access token #3"), so nothing needs to print a secret. Nothing here
//! is fit for production: it keeps everything in memory and signs nobody in.
#![allow(dead_code)] // each example uses part of it

mod token_endpoint;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

/// A confidential client that may use the client credentials grant.
pub const SERVICE_CLIENT_ID: &str = "reporting";
/// Holds `:` and `+` on purpose: the token endpoint decodes `client_secret_basic` as
/// RFC 6749 §2.3.1 says (each part form-urlencoded, then Base64), so a client that skips the
/// form-encoding is refused.
pub const SERVICE_CLIENT_SECRET: &str = "s3cr3t:with+reserved/chars";
/// A public client (a native app, no secret): authorization code with PKCE, then refresh
/// tokens.
pub const APP_CLIENT_ID: &str = "native-app";
/// Where the app asks to be sent back after the sign-in. The examples read the redirect
/// instead of following it, so nothing needs to listen there.
pub const APP_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";
/// RFC 8693's grant type: the token endpoint exchanges a live access token issued here for
/// one of the same subject, for another audience.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// How long the token endpoint takes to answer.
pub const TOKEN_ENDPOINT_LATENCY: Duration = Duration::from_millis(150);

/// The embedded servers; they stop, open connections included, when this is dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

impl Server {
    /// Starts both servers on 127.0.0.1 (a random port), issuing access tokens that live
    /// `access_token_lifetime` (whole seconds, as `expires_in` counts them).
    pub async fn start(access_token_lifetime: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            access_token_lifetime,
            ..State::default()
        }));
        let accept = tokio::spawn(accept_loop(listener, state.clone())).abort_handle();
        Server {
            addr,
            state,
            accept,
        }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn authorization_url(&self) -> String {
        format!("http://{}/authorize", self.addr)
    }

    /// A resource of the protected API: `api_url("/reports")` is `http://127.0.0.1:PORT/api/reports`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}/api{path}", self.addr)
    }

    /// How many token requests of this grant type arrived, refused ones included.
    pub fn token_requests(&self, grant_type: &str) -> usize {
        let state = self.state();
        state.token_requests.get(grant_type).copied().unwrap_or(0)
    }

    /// How many token requests were answered with an error.
    pub fn refused_token_requests(&self) -> usize {
        self.state().refused_token_requests
    }

    /// How many API requests were answered 401.
    pub fn api_rejections(&self) -> usize {
        self.state().api_rejections
    }

    /// The API stops honouring every access token issued so far, before their expiry, as
    /// after a revocation or a key rotation on the server's side.
    pub fn revoke_access_tokens(&self) {
        for token in self.state().access_tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// Every refresh token issued so far stops working, as when the user signs the app out:
    /// the next refresh is answered `invalid_grant`. Access tokens live on until they expire.
    pub fn revoke_refresh_tokens(&self) {
        for token in self.state().refresh_tokens.values_mut() {
            token.status = RefreshTokenStatus::Revoked;
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Everything the servers know, behind one mutex that is never held across an await.
#[derive(Default)]
struct State {
    access_token_lifetime: Duration,
    /// Every access token issued, live or not, so the API can say why it refuses one.
    access_tokens: HashMap<String, IssuedAccessToken>,
    refresh_tokens: HashMap<String, IssuedRefreshToken>,
    /// Authorization codes waiting for their exchange.
    codes: HashMap<String, IssuedCode>,
    /// Token requests received, by grant type.
    token_requests: HashMap<String, usize>,
    refused_token_requests: usize,
    api_rejections: usize,
}

struct IssuedAccessToken {
    /// Names the token in the API's answers, in place of its value.
    number: usize,
    /// Whom it was issued for: the signed-in user, or the client itself.
    subject: String,
    /// The API it is for, if the client asked for one (`audience`).
    audience: Option<String>,
    expires_at: Instant,
    revoked: bool,
}

struct IssuedRefreshToken {
    client_id: String,
    subject: String,
    status: RefreshTokenStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefreshTokenStatus {
    Live,
    /// Redeemed once already: rotation replaced it.
    Used,
    Revoked,
}

/// What an authorization code stands for, checked when it is exchanged.
struct IssuedCode {
    client_id: String,
    subject: String,
    redirect_uri: String,
    code_challenge: String,
    expires_at: Instant,
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Dropped with this task when the server is dropped, closing every connection.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let service = service_fn(move |request| answer(state.clone(), request));
        connections.spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let response = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/token") => {
            tokio::time::sleep(TOKEN_ENDPOINT_LATENCY).await;
            state.lock().unwrap().token(&parts.headers, &body)
        }
        (&Method::GET, "/authorize") => state
            .lock()
            .unwrap()
            .authorize(parts.uri.query().unwrap_or("")),
        (_, path) if path.starts_with("/api/") => state.lock().unwrap().api(path, &parts.headers),
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(response)
}

impl State {
    /// The authorization endpoint (RFC 6749 §4.1.1), approving at once: the examples have no
    /// one to sign in.
    fn authorize(&mut self, query: &str) -> Response<Full<Bytes>> {
        let query = form(query.as_bytes());
        let param = |name: &str| query.get(name).map(String::as_str);
        // An unknown client or redirect URI gets no redirect: it could send the user anywhere.
        if param("client_id") != Some(APP_CLIENT_ID)
            || param("redirect_uri") != Some(APP_REDIRECT_URI)
        {
            return plain(StatusCode::BAD_REQUEST, "unknown client or redirect URI");
        }
        let answer = match (param("response_type"), param("code_challenge_method")) {
            (Some("code"), Some("S256")) => match param("code_challenge") {
                // `login_hint` stands for the user who signs in.
                Some(challenge) => (
                    "code",
                    self.issue_code(challenge, param("login_hint").unwrap_or("user")),
                ),
                None => ("error", "invalid_request".to_owned()),
            },
            (Some("code"), _) => ("error", "invalid_request".to_owned()), // PKCE S256 is required
            _ => ("error", "unsupported_response_type".to_owned()),
        };
        let mut location = url::Url::parse(APP_REDIRECT_URI).expect("a URL");
        location.query_pairs_mut().append_pair(answer.0, &answer.1);
        if let Some(state) = param("state") {
            location.query_pairs_mut().append_pair("state", state);
        }
        Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location.as_str())
            .body(Full::default())
            .expect("valid response")
    }

    fn issue_code(&mut self, code_challenge: &str, subject: &str) -> String {
        let code = random_token();
        let issued = IssuedCode {
            client_id: APP_CLIENT_ID.to_owned(),
            subject: subject.to_owned(),
            redirect_uri: APP_REDIRECT_URI.to_owned(),
            code_challenge: code_challenge.to_owned(),
            expires_at: Instant::now() + Duration::from_secs(60),
        };
        self.codes.insert(code.clone(), issued);
        code
    }

    /// The protected API: `200` for a live access token, else `401` with a Bearer challenge
    /// (RFC 6750 §3). A token issued for an audience is good only under `/api/<audience>/`.
    fn api(&mut self, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let api_name = path.trim_start_matches("/api/").split('/').next();
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let verdict = match token.and_then(|token| self.access_tokens.get(token)) {
            None => Err("unknown access token"),
            Some(token) if token.revoked => Err("the access token was revoked"),
            Some(token) if Instant::now() >= token.expires_at => Err("the access token expired"),
            Some(token) if token.audience.is_some() && token.audience.as_deref() != api_name => {
                Err("the access token is for another API")
            }
            Some(token) => Ok((token.number, token.subject.clone())),
        };
        match verdict {
            Ok((number, subject)) => plain(
                StatusCode::OK,
                &format!("hello {subject}, access token #{number}"),
            ),
            Err(reason) => {
                self.api_rejections += 1;
                let challenge = format!(
                    r#"Bearer realm="api", error="invalid_token", error_description="{reason}""#
                );
                Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, challenge)
                    .body(Full::default())
                    .expect("valid response")
            }
        }
    }
}

/// 32 random bytes from the system's source, Base64url: a token nobody can guess.
fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The pairs of a query string or form body, decoded.
fn form(input: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(input).into_owned().collect()
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_owned())))
        .expect("valid response")
}

/// Prints lines stamped with the time since the story began.
pub struct Story {
    start: Instant,
}

impl Story {
    pub fn begin() -> Story {
        Story {
            start: Instant::now(),
        }
    }

    pub fn say(&self, line: impl std::fmt::Display) {
        println!("[{:6.3}s] {line}", self.start.elapsed().as_secs_f64());
    }
}
