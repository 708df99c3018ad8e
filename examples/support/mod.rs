//! An authorization server and a protected API, embedded on 127.0.0.1 for the examples.
//!
//! Small but real: HTTP/1.1 over loopback, RFC 6749 token responses, `client_secret_basic`,
//! refresh-token rotation (a refresh token is redeemed once), PKCE S256, and an API that honours
//! only live access tokens. Access tokens live a few seconds, so the examples show a whole
//! token lifetime in one run. Nothing here is fit for production: it keeps everything in memory
//! and signs nobody in.
#![allow(dead_code)] // each example uses part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// A confidential client that may use the client credentials grant.
pub const SERVICE_CLIENT_ID: &str = "reporting";
pub const SERVICE_CLIENT_SECRET: &str = "reporting-secret";
/// A public client (a native app): authorization code with PKCE, then refresh tokens.
pub const APP_CLIENT_ID: &str = "native-app";
pub const APP_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";

/// The embedded servers; they stop when this is dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

#[derive(Default)]
struct State {
    access_token_lifetime: Duration,
    /// Live access tokens and when they expire.
    access_tokens: HashMap<String, Instant>,
    /// Refresh tokens that may be redeemed, each once.
    refresh_tokens: HashMap<String, ()>,
    /// Authorization codes waiting for their exchange, with the PKCE challenge.
    codes: HashMap<String, String>,
    /// Token requests answered, by grant type.
    token_requests: HashMap<String, usize>,
}

impl Server {
    /// Starts both servers on 127.0.0.1 (a random port), issuing access tokens that live
    /// `access_token_lifetime` (whole seconds).
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

    /// A resource of the protected API.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}/api{path}", self.addr)
    }

    /// How many token requests of this grant type were answered with tokens.
    pub fn token_requests(&self, grant_type: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.token_requests.get(grant_type).copied().unwrap_or(0)
    }

    /// The API stops honouring every access token issued so far, expired or not, as after a
    /// key rotation or a revocation.
    pub fn revoke_access_tokens(&self) {
        self.state.lock().unwrap().access_tokens.clear();
    }

    /// Every refresh token issued so far stops working, as when the user signs the app out.
    pub fn revoke_refresh_tokens(&self) {
        self.state.lock().unwrap().refresh_tokens.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let service = service_fn(move |request| answer(state.clone(), request));
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut state = state.lock().unwrap();
    let response = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/token") => state.token(&parts.headers, &body),
        (&Method::GET, "/authorize") => state.authorize(parts.uri.query().unwrap_or("")),
        (_, path) if path.starts_with("/api/") => state.api(&parts.headers),
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(response)
}

impl State {
    /// The token endpoint (RFC 6749 §3.2).
    fn token(&mut self, headers: &http::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let param = |name: &str| form.get(name).map(String::as_str);
        let grant_type = param("grant_type").unwrap_or_default().to_owned();
        let outcome = match grant_type.as_str() {
            "client_credentials" => match basic_credentials(headers) {
                Some((id, secret))
                    if id == SERVICE_CLIENT_ID && secret == SERVICE_CLIENT_SECRET =>
                {
                    Ok(false)
                }
                _ => Err(("invalid_client", "unknown client or wrong secret")),
            },
            "refresh_token" => match param("refresh_token") {
                // Rotation: a refresh token is redeemed once, then it is gone.
                Some(token) if self.refresh_tokens.remove(token).is_some() => Ok(true),
                _ => Err((
                    "invalid_grant",
                    "the refresh token is revoked or was already used",
                )),
            },
            "authorization_code" => {
                let challenge = param("code").and_then(|code| self.codes.remove(code));
                match (challenge, param("code_verifier")) {
                    (Some(challenge), Some(verifier))
                        if BASE64URL.encode(Sha256::digest(verifier)) == challenge
                            && param("redirect_uri") == Some(APP_REDIRECT_URI) =>
                    {
                        Ok(true)
                    }
                    _ => Err((
                        "invalid_grant",
                        "unknown code, or the PKCE verifier does not match",
                    )),
                }
            }
            _ => Err(("unsupported_grant_type", "not supported here")),
        };
        match outcome {
            Ok(with_refresh_token) => {
                *self.token_requests.entry(grant_type).or_default() += 1;
                self.issue(with_refresh_token)
            }
            Err((error, description)) => {
                let status = match error {
                    "invalid_client" => StatusCode::UNAUTHORIZED,
                    _ => StatusCode::BAD_REQUEST,
                };
                json_response(
                    status,
                    json!({"error": error, "error_description": description}),
                )
            }
        }
    }

    fn issue(&mut self, with_refresh_token: bool) -> Response<Full<Bytes>> {
        let access_token = random_token("at");
        let lifetime = self.access_token_lifetime;
        self.access_tokens
            .insert(access_token.clone(), Instant::now() + lifetime);
        let mut body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
        });
        if with_refresh_token {
            let refresh_token = random_token("rt");
            self.refresh_tokens.insert(refresh_token.clone(), ());
            body["refresh_token"] = Value::from(refresh_token);
        }
        json_response(StatusCode::OK, body)
    }

    /// The authorization endpoint, approving at once: the examples have no one to sign in.
    fn authorize(&mut self, query: &str) -> Response<Full<Bytes>> {
        let query: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let param = |name: &str| query.get(name).map(String::as_str);
        let valid = param("response_type") == Some("code")
            && param("client_id") == Some(APP_CLIENT_ID)
            && param("redirect_uri") == Some(APP_REDIRECT_URI)
            && param("code_challenge_method") == Some("S256");
        let (Some(challenge), Some(state), true) = (param("code_challenge"), param("state"), valid)
        else {
            return plain(StatusCode::BAD_REQUEST, "invalid authorization request");
        };
        let code = random_token("code");
        self.codes.insert(code.clone(), challenge.to_owned());
        let location = url::Url::parse_with_params(
            APP_REDIRECT_URI,
            [("code", code.as_str()), ("state", state)],
        )
        .expect("the redirect URI is a URL");
        Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location.as_str())
            .body(Full::default())
            .expect("valid response")
    }

    /// The protected API: `200` for a live access token, else `401` with a Bearer challenge
    /// (RFC 6750 §3).
    fn api(&self, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let live = token
            .and_then(|token| self.access_tokens.get(token))
            .is_some_and(|expires_at| Instant::now() < *expires_at);
        if live {
            return json_response(StatusCode::OK, json!({"reports": ["q3", "q4"]}));
        }
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="api", error="invalid_token", error_description="expired or revoked""#,
            )
            .body(Full::default())
            .expect("valid response")
    }
}

/// The client id and secret of a `client_secret_basic` header: each form-urlencoded, then
/// Base64 (RFC 6749 §2.3.1).
fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let decoded = BASE64.decode(value.strip_prefix("Basic ")?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let form_decode = |part: &str| {
        url::form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
    };
    Some((form_decode(id)?, form_decode(secret)?))
}

fn random_token(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(text.as_bytes())))
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
