//! A real third-party authorization server for interop tests: the npm package `oidc-provider`,
//! configured by `tests/interop/oidc-provider/server.mjs` (see the README there) and run on
//! 127.0.0.1, one Node process per [`OidcProvider`], killed when it drops. The same process
//! serves a DPoP resource server on a second port ([`OidcProvider::resource_server`]).
//!
//! Node.js 20+ and npm must be installed: the first start in a test process runs `npm ci` in
//! that folder when its `node_modules` lacks the pinned `oidc-provider`, and panics (never
//! skips) when npm or node are missing or fail.

// Support items some test files leave unused.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use serde_json::Value;

// The clients, as in tests/interop/oidc-provider/clients.json (a test below checks they agree).
// The secrets hold `: + / % & = ~` and spaces: with HTTP Basic they must be form-urlencoded
// before Base64 (RFC 6749 §2.3.1), or the server refuses them.

/// Client credentials grant only; `client_secret_basic`; scope `api:read api:write`.
pub const CC_BASIC_ID: &str = "cc-basic";
pub const CC_BASIC_SECRET: &str = "cc-basic s3cr:t+/%&=~ 0123456789abcdef";
/// Client credentials grant only; `client_secret_post`; scope `api:read api:write`.
pub const CC_POST_ID: &str = "cc-post";
pub const CC_POST_SECRET: &str = "cc-post s3cr:t+/%&=~ 0123456789abcdef";
/// Authorization code (PKCE S256 required) and refresh token; `client_secret_basic`;
/// scope `openid offline_access api:read api:write`; a refresh token with every code exchange.
pub const APP_ID: &str = "app";
pub const APP_SECRET: &str = "app s3cr:t+/%&=~ 0123456789abcdef";
/// Nothing listens there: [`authorize_headless`] stops before following it.
pub const APP_REDIRECT_URI: &str = "http://127.0.0.1/callback";

// The private_key_jwt clients (clients.json `pkjwt_es256`, `pkjwt_rs256`): client credentials,
// authorization code (PKCE S256 required) and refresh token, with `token_endpoint_auth_method`
// `private_key_jwt` pinned to one algorithm. The server registers the public halves of the
// test-only keys in tests/interop/oidc-provider/keys/; the tests sign with the private halves.

/// ES256 (P-256) `private_key_jwt` client.
pub const PKJWT_ES256_ID: &str = "pkjwt-es256";
/// The `kid` [`PKJWT_ES256_ID`]'s key is registered under.
pub const PKJWT_ES256_KID: &str = "es256-test-key";
/// RS256 (RSA 2048) `private_key_jwt` client.
pub const PKJWT_RS256_ID: &str = "pkjwt-rs256";
/// The `kid` [`PKJWT_RS256_ID`]'s key is registered under.
pub const PKJWT_RS256_KID: &str = "rs256-test-key";

/// The test-only private key of [`PKJWT_ES256_ID`], with its `kid`.
#[cfg(feature = "jwt-signing")]
pub fn pkjwt_es256_key() -> oauth_refresh::oauth::Es256Key {
    let pem = std::fs::read_to_string(server_dir().join("keys/es256.pem")).expect("keys/es256.pem");
    oauth_refresh::oauth::Es256Key::from_pkcs8_pem(&pem)
        .expect("a PKCS #8 P-256 key")
        .with_key_id(PKJWT_ES256_KID)
}

/// The test-only private key of [`PKJWT_RS256_ID`], with its `kid`.
#[cfg(feature = "jwt-signing")]
pub fn pkjwt_rs256_key() -> oauth_refresh::oauth::Rs256Key {
    let pem = std::fs::read_to_string(server_dir().join("keys/rs256.pem")).expect("keys/rs256.pem");
    oauth_refresh::oauth::Rs256Key::from_pkcs8_pem(&pem)
        .expect("a PKCS #8 RSA key")
        .with_key_id(PKJWT_RS256_KID)
}
// Token exchange and JWT bearer: grant types the test server registers itself (see the README).
/// Token exchange only; `client_secret_basic`; scope `api:read api:write`.
pub const EXCHANGE_ID: &str = "exchanger";
pub const EXCHANGE_SECRET: &str = "exchanger s3cr:t+/%&=~ 0123456789abcdef";
/// JWT bearer only; a public client (`none`): it holds no secret, its assertions vouch for it.
pub const WORKLOAD_ID: &str = "workload";
/// The device authorization grant (RFC 8628) and refresh token; `client_secret_basic`; scope
/// `openid offline_access api:read api:write`. The user's part: [`OidcProvider::approve_device`].
pub const DEVICE_ID: &str = "device";
pub const DEVICE_SECRET: &str = "device s3cr:t+/%&=~ 0123456789abcdef";
/// DPoP-bound access tokens only (`dpop_bound_access_tokens`): client credentials,
/// authorization code (PKCE S256 required, redirect URI [`APP_REDIRECT_URI`]) and refresh
/// token (rotated); `client_secret_basic`; scope `openid offline_access api:read api:write`.
/// Every token request needs a DPoP proof with the server's nonce (the first one is answered
/// `use_dpop_nonce`); one without a proof is `invalid_grant`.
pub const DPOP_APP_ID: &str = "dpop-app";
pub const DPOP_APP_SECRET: &str = "dpop-app s3cr:t+/%&=~ 0123456789abcdef";

/// Scopes every client may ask for (besides `openid` and `offline_access` for [`APP_ID`]).
pub const API_SCOPES: &str = "api:read api:write";
/// Access token lifetime of [`OidcProvider::start`], in seconds (`expires_in` says the same).
pub const DEFAULT_ACCESS_TTL_SECS: u64 = 3;

/// How long a start may take before the server is killed and started once more (it takes
/// well under a second; a loaded machine has been seen to stall one for over a minute), and
/// how long the second try may take.
const READY_TIMEOUTS: [Duration; 2] = [Duration::from_secs(30), Duration::from_secs(90)];
const STDERR_TAIL_LINES: usize = 40;
const MAX_REDIRECTS: usize = 10;

/// Token requests the server received (`GET /__test/stats`), whatever their outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub client_credentials: u64,
    pub authorization_code: u64,
    /// Refresh requests, failed ones included.
    pub refresh_token: u64,
    /// Refresh requests presenting a refresh token value some earlier request presented.
    pub refresh_token_reused: u64,
    /// Token answers with error `invalid_grant`, any grant type.
    pub invalid_grant: u64,
    /// Token requests with an `Authorization` header.
    pub client_secret_basic: u64,
    /// Token requests with `client_secret` in the body.
    pub client_secret_post: u64,
    /// Token requests with a `client_assertion` of type jwt-bearer.
    pub private_key_jwt: u64,
    /// Client assertions that verified and named the issuer identifier as their `aud` (the
    /// others named the token endpoint URL; an `aud` other than one string is refused).
    pub private_key_jwt_aud_issuer: u64,
    /// Client assertions refused because their `jti` had been used before.
    pub client_assertion_replayed: u64,
    /// Token exchange requests (a grant type of the test server's own).
    pub token_exchange: u64,
    /// JWT-bearer requests (a grant type of the test server's own).
    pub jwt_bearer: u64,
    /// Device code polls (`grant_type=urn:ietf:params:oauth:grant-type:device_code`).
    pub device_code: u64,
    /// Requests to the revocation endpoint.
    pub revocation: u64,
    /// Token requests with a `DPoP` header.
    pub token_dpop: u64,
    /// Token answers `use_dpop_nonce` (400, with `DPoP-Nonce`).
    pub token_use_dpop_nonce: u64,
    /// Token answers `invalid_dpop_proof`.
    pub token_invalid_dpop_proof: u64,
    /// Token requests refused (`invalid_grant`) because their proof's `jti` had been used.
    pub token_dpop_replayed: u64,
    /// Requests the DPoP resource server ([`OidcProvider::resource_server`]) answered 200.
    pub resource_ok: u64,
    /// Its 401 `use_dpop_nonce` answers: a proof without its current nonce.
    pub resource_use_dpop_nonce: u64,
    /// Its 401 `invalid_dpop_proof` answers to a proof whose `jti` it had accepted before.
    pub resource_proof_replayed: u64,
    /// Its other 401 `invalid_dpop_proof` answers: no proof, a bad signature, `typ`, `alg`,
    /// `htm`, `htu`, `iat` (60 s either way), `jti` or `ath`.
    pub resource_invalid_dpop_proof: u64,
    /// Its 401 `invalid_token` answers to `Authorization: Bearer` (it takes the DPoP scheme only).
    pub resource_bearer_refused: u64,
    /// Its 401 `invalid_token` answers to a token it does not honour (unknown, expired,
    /// revoked, not DPoP-bound) or no `Authorization: DPoP`.
    pub resource_invalid_token: u64,
    /// Its 401 `invalid_token` answers to a proof signed by another key than the token's
    /// `cnf.jkt`.
    pub resource_jkt_mismatch: u64,
}

/// A running oidc-provider on `issuer` (`http://127.0.0.1:<port>`), with its own state.
pub struct OidcProvider {
    pub issuer: String,
    /// The DPoP resource server of the same process (`http://127.0.0.1:<another port>`): any
    /// method on `/dpop/...` answers 200 JSON (`client_id`, `sub`, `scope`, `jkt`, `method`,
    /// `path`, `body_bytes`) to `Authorization: DPoP <token>` with a valid proof carrying its
    /// current nonce, else 401 with a `DPoP` challenge; every answer carries `DPoP-Nonce`.
    /// See the README; its counters are in [`Stats`].
    pub resource_server: String,
    child: Child,
    /// Held open: the server exits when it closes, so it never outlives this test process.
    _stdin: ChildStdin,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts a server whose access tokens live [`DEFAULT_ACCESS_TTL_SECS`] seconds.
    pub async fn start() -> OidcProvider {
        Self::start_with(DEFAULT_ACCESS_TTL_SECS).await
    }

    /// Starts a server whose access tokens (every grant) live `access_ttl_secs` seconds;
    /// refresh tokens live a day.
    pub async fn start_with(access_ttl_secs: u64) -> OidcProvider {
        match tokio::task::spawn_blocking(move || Self::start_blocking(access_ttl_secs)).await {
            Ok(server) => server,
            Err(err) => match err.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(err) => panic!("oidc-provider: start task failed: {err}"),
            },
        }
    }

    fn start_blocking(access_ttl_secs: u64) -> OidcProvider {
        ensure_installed();
        for timeout in READY_TIMEOUTS {
            match Self::start_once(access_ttl_secs, timeout) {
                Some(server) => return server,
                None => eprintln!("oidc-provider: no ready line within {timeout:?}; killed"),
            }
        }
        panic!(
            "oidc-provider: no ready line in {} tries",
            READY_TIMEOUTS.len()
        )
    }

    /// One start: the server, or `None` if it printed no ready line within `timeout` (it is
    /// killed then). Any other failure panics with the server's stderr.
    fn start_once(access_ttl_secs: u64, timeout: Duration) -> Option<OidcProvider> {
        let dir = server_dir();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("ACCESS_TTL", access_ttl_secs.to_string())
            .env("EXIT_WITH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "oidc-provider: cannot run `node server.mjs` in {}: {err}; the interop tests need Node.js 20+",
                    dir.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        // Drain both pipes for the server's whole life, so that it never blocks on a write.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_reader = {
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            for _ in lines {}
        });

        let fail = |mut child: Child, reader: JoinHandle<()>, what: String| -> ! {
            let _ = child.kill();
            let status = match child.wait() {
                Ok(status) => status.to_string(),
                Err(err) => format!("unknown: {err}"),
            };
            let _ = reader.join();
            let tail = stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
            let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
            panic!(
                "oidc-provider: {what} ({status}); stderr tail:\n{}",
                tail.join("\n")
            )
        };

        let line = match ready_rx.recv_timeout(timeout) {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(err))) => fail(child, stderr_reader, format!("reading stdout: {err}")),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => fail(
                child,
                stderr_reader,
                "exited before printing its ready line".into(),
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = stderr_reader.join();
                let tail = stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
                let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
                eprintln!("oidc-provider: stderr tail:\n{}", tail.join("\n"));
                return None;
            }
        };
        let ready = serde_json::from_str::<Value>(&line).unwrap_or_default();
        let loopback = |name: &str| {
            ready[name]
                .as_str()
                .filter(|url| url.starts_with("http://127.0.0.1:"))
                .map(str::to_owned)
        };
        let (Some(issuer), Some(resource_server)) =
            (loopback("issuer"), loopback("resource_server"))
        else {
            fail(
                child,
                stderr_reader,
                format!("unexpected ready line {line:?}"),
            )
        };

        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        Some(OidcProvider {
            issuer,
            resource_server,
            child,
            _stdin: stdin,
            stderr_tail,
            http,
        })
    }

    /// `{issuer}/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `{issuer}/auth`.
    pub fn authorization_url(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    /// `{issuer}/token/revocation` (RFC 7009).
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// `{issuer}/device/auth` (RFC 8628 device authorization).
    pub fn device_authorization_url(&self) -> String {
        format!("{}/device/auth", self.issuer)
    }

    /// Plays the user of a device sign-in, without a browser: opens `verification_uri` with a
    /// fresh cookie jar, submits `user_code` in the server's form, confirms it, and follows
    /// the redirects through the headless login (which signs in `alice` and grants what was
    /// asked) to the success page. Panics if a step answers otherwise.
    pub async fn approve_device(&self, verification_uri: &str, user_code: &str) {
        self.device_user(verification_uri, user_code, false).await;
    }

    /// Like [`approve_device`](Self::approve_device), but the user aborts at the
    /// confirmation: the device's next poll gets `access_denied`.
    pub async fn deny_device(&self, verification_uri: &str, user_code: &str) {
        self.device_user(verification_uri, user_code, true).await;
    }

    async fn device_user(&self, verification_uri: &str, user_code: &str, abort: bool) {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("reqwest client");
        let page = |response: reqwest::Response| async move {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, StatusCode::OK, "device sign-in page: {body}");
            body
        };
        let input = page(
            browser
                .get(verification_uri)
                .send()
                .await
                .expect("GET /device"),
        )
        .await;
        let form = |body: &str| {
            let xsrf = hidden_value(body, "xsrf")
                .unwrap_or_else(|| panic!("device sign-in: no xsrf field in {body}"));
            let mut pairs = vec![
                ("xsrf".to_owned(), xsrf),
                ("user_code".to_owned(), user_code.to_owned()),
            ];
            if body.contains(r#"name="confirm""#) {
                pairs.push(("confirm".to_owned(), "yes".to_owned()));
            }
            pairs
        };
        let confirm = page(
            browser
                .post(verification_uri)
                .header(header::CONTENT_TYPE, FORM_TYPE)
                .body(form_body(&form(&input)))
                .send()
                .await
                .expect("POST /device with the user code"),
        )
        .await;
        assert!(
            confirm.contains(r#"name="confirm""#),
            "device sign-in: no confirmation in {confirm}"
        );
        let mut pairs = form(&confirm);
        if abort {
            pairs.retain(|(name, _)| name != "confirm");
            pairs.push(("abort".to_owned(), "yes".to_owned()));
            let aborted = browser
                .post(verification_uri)
                .header(header::CONTENT_TYPE, FORM_TYPE)
                .body(form_body(&pairs))
                .send()
                .await
                .expect("abort");
            // The form again, saying the sign-in was interrupted.
            assert_eq!(aborted.status(), StatusCode::OK);
            return;
        }
        let mut response = browser
            .post(verification_uri)
            .header(header::CONTENT_TYPE, FORM_TYPE)
            .body(form_body(&pairs))
            .send()
            .await
            .expect("POST /device with the confirmation");
        for _ in 0..MAX_REDIRECTS {
            if !response.status().is_redirection() {
                break;
            }
            let location = response.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned();
            let url = Url::parse(verification_uri)
                .unwrap()
                .join(&location)
                .unwrap();
            response = browser
                .get(url)
                .send()
                .await
                .expect("device sign-in redirect");
        }
        let done = page(response).await;
        assert!(
            done.contains("signed in"),
            "device sign-in did not succeed: {done}"
        );
    }

    /// A full authorization request for [`APP_ID`]: response type `code`, PKCE S256.
    pub fn app_authorization_request(
        &self,
        scope: &str,
        state: &str,
        code_challenge: &str,
    ) -> String {
        self.authorization_request(APP_ID, scope, state, code_challenge)
    }

    /// A full authorization request for `client_id` ([`APP_ID`], [`DPOP_APP_ID`], ...), whose
    /// redirect URI is [`APP_REDIRECT_URI`]: response type `code`, PKCE S256.
    pub fn authorization_request(
        &self,
        client_id: &str,
        scope: &str,
        state: &str,
        code_challenge: &str,
    ) -> String {
        let mut url = Url::parse(&self.authorization_url()).expect("authorization URL");
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", APP_REDIRECT_URI)
            .append_pair("response_type", "code")
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// The discovery document (`/.well-known/openid-configuration`).
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// Token requests received so far (since the start or the last [`reset`](Self::reset)).
    pub async fn stats(&self) -> Stats {
        let stats = self.get_json("/__test/stats").await;
        let count = |name: &str| {
            stats[name]
                .as_u64()
                .unwrap_or_else(|| panic!("oidc-provider: stats lack {name}: {stats}"))
        };
        Stats {
            client_credentials: count("client_credentials"),
            authorization_code: count("authorization_code"),
            refresh_token: count("refresh_token"),
            refresh_token_reused: count("refresh_token_reused"),
            invalid_grant: count("invalid_grant"),
            client_secret_basic: count("client_secret_basic"),
            client_secret_post: count("client_secret_post"),
            private_key_jwt: count("private_key_jwt"),
            private_key_jwt_aud_issuer: count("private_key_jwt_aud_issuer"),
            client_assertion_replayed: count("client_assertion_replayed"),
            token_exchange: count("token_exchange"),
            jwt_bearer: count("jwt_bearer"),
            device_code: count("device_code"),
            revocation: count("revocation"),
            token_dpop: count("token_dpop"),
            token_use_dpop_nonce: count("token_use_dpop_nonce"),
            token_invalid_dpop_proof: count("token_invalid_dpop_proof"),
            token_dpop_replayed: count("token_dpop_replayed"),
            resource_ok: count("resource_ok"),
            resource_use_dpop_nonce: count("resource_use_dpop_nonce"),
            resource_proof_replayed: count("resource_proof_replayed"),
            resource_invalid_dpop_proof: count("resource_invalid_dpop_proof"),
            resource_bearer_refused: count("resource_bearer_refused"),
            resource_invalid_token: count("resource_invalid_token"),
            resource_jkt_mismatch: count("resource_jkt_mismatch"),
        }
    }

    /// `{resource_server}/dpop{path}`: a URL the DPoP resource server protects (`path`
    /// starts with `/`).
    pub fn dpop_resource_url(&self, path: &str) -> String {
        format!("{}/dpop{path}", self.resource_server)
    }

    /// Gives the DPoP resource server a new nonce and returns it: from now on a proof with
    /// the old one is answered 401 `use_dpop_nonce` (with the new one in `DPoP-Nonce`).
    pub async fn rotate_resource_nonce(&self) -> String {
        let answer = self.post_admin("/__test/rotate_resource_nonce").await;
        answer["nonce"]
            .as_str()
            .unwrap_or_else(|| panic!("oidc-provider: unexpected rotate answer {answer}"))
            .to_owned()
    }

    /// Destroys every grant, refresh token, code and access token held: the next refresh
    /// answers `invalid_grant`.
    pub async fn revoke_all(&self) {
        self.post_admin("/__test/revoke_all").await;
    }

    /// Zeroes the counters and forgets which refresh tokens were presented.
    pub async fn reset(&self) {
        self.post_admin("/__test/reset").await;
    }

    /// Whether `access_token` is one this server issued and still honours (not expired, not
    /// revoked).
    pub async fn token_active(&self, access_token: &str) -> bool {
        let mut url = Url::parse(&format!("{}/__test/active", self.issuer)).expect("URL");
        url.query_pairs_mut().append_pair("token", access_token);
        let answer = self.get_json(url.as_str()).await;
        answer["active"]
            .as_bool()
            .unwrap_or_else(|| panic!("oidc-provider: unexpected /__test/active answer {answer}"))
    }

    /// The user an access token was issued for, if the server honours it: `None` for a token
    /// it does not honour (and for a client's own token, which names no user).
    pub async fn token_subject(&self, access_token: &str) -> Option<String> {
        let mut url = Url::parse(&format!("{}/__test/active", self.issuer)).expect("URL");
        url.query_pairs_mut().append_pair("token", access_token);
        let answer = self.get_json(url.as_str()).await;
        answer["sub"].as_str().map(str::to_owned)
    }

    /// Posts `form` (already form-urlencoded) to the token endpoint as it is, with no client
    /// authentication of its own, and returns the status and the JSON answer: for replaying
    /// a request a client sent.
    pub async fn raw_token_request(&self, form: &[u8]) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.token_url())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_vec())
            .send()
            .await
            .unwrap_or_else(|err| panic!("oidc-provider: raw token request failed: {err}"));
        let status = response.status();
        let body = response.bytes().await.expect("token answer body");
        let json = serde_json::from_slice(&body).unwrap_or_else(|err| {
            panic!(
                "oidc-provider: token answer not JSON ({err}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    /// What the server holds of an access token it honours (`/__test/active`): `active`,
    /// `client_id`, `sub`, `scope`, `exp`, `aud`, `gty` (`"token_exchange"`, `"jwt_bearer"`),
    /// `act` (an exchange's actor) and `jkt` (a DPoP-bound token's key thumbprint, else null).
    pub async fn token_info(&self, access_token: &str) -> Value {
        let mut url = Url::parse(&format!("{}/__test/active", self.issuer)).expect("URL");
        url.query_pairs_mut().append_pair("token", access_token);
        self.get_json(url.as_str()).await
    }

    /// Trusts JWT-bearer assertions whose `iss` is `iss`, signed (ES256) by the P-256 key whose
    /// public point has the coordinates `x` and `y` (base64url).
    pub async fn trust_assertion_issuer(&self, iss: &str, x: &str, y: &str) {
        let mut url = Url::parse(&format!("{}/__test/assertion_issuer", self.issuer)).expect("URL");
        url.query_pairs_mut()
            .append_pair("iss", iss)
            .append_pair("x", x)
            .append_pair("y", y);
        let response = self.http.post(url.as_str()).send().await;
        self.json_answer("POST", url.as_str(), response).await;
    }

    /// The last lines the server wrote to stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn get_json(&self, path_or_url: &str) -> Value {
        let url = if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.issuer)
        } else {
            path_or_url.to_owned()
        };
        let response = self.http.get(&url).send().await;
        self.json_answer("GET", &url, response).await
    }

    async fn post_admin(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.issuer);
        let response = self.http.post(&url).send().await;
        self.json_answer("POST", &url, response).await
    }

    async fn json_answer(
        &self,
        method: &str,
        url: &str,
        response: reqwest::Result<reqwest::Response>,
    ) -> Value {
        let response = response.unwrap_or_else(|err| {
            panic!(
                "oidc-provider: {method} {url} failed: {err}; stderr tail:\n{}",
                self.stderr_tail()
            )
        });
        let status = response.status();
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|err| panic!("oidc-provider: {method} {url}: reading body: {err}"));
        if status != StatusCode::OK {
            panic!(
                "oidc-provider: {method} {url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body).unwrap_or_else(|err| {
            panic!(
                "oidc-provider: {method} {url}: not JSON ({err}): {}",
                String::from_utf8_lossy(&body)
            )
        })
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a full authorization request (client_id, redirect_uri, response_type=code, scope,
/// state, code_challenge, code_challenge_method=S256) without a browser: follows the server's
/// redirects with a fresh cookie jar (the server signs in the user `login_hint` names, `alice`
/// without one, and grants what was asked) and returns the redirect to [`APP_REDIRECT_URI`], e.g.
/// `http://127.0.0.1/callback?code=...&state=...&iss=...`, without following it.
///
/// Panics unless that redirect carries a `code` (an `error` instead is in the message); see
/// [`authorize_headless_any`] for error redirects.
pub async fn authorize_headless(authorization_url: &str) -> String {
    let callback = authorize_headless_any(authorization_url).await;
    if query_param(&callback, "code").is_none() {
        panic!(
            "headless authorization: callback without code: error {:?}, error_description {:?}",
            query_param(&callback, "error"),
            query_param(&callback, "error_description"),
        );
    }
    callback
}

/// Like [`authorize_headless`], but returns the redirect to [`APP_REDIRECT_URI`] whatever it
/// carries, a `code` or an `error` (with `error_description`, `state`, `iss`).
pub async fn authorize_headless_any(authorization_url: &str) -> String {
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client");
    let mut url = Url::parse(authorization_url).unwrap_or_else(|err| {
        panic!("headless authorization: bad URL {authorization_url:?}: {err}")
    });
    for _ in 0..MAX_REDIRECTS {
        let response = client.get(url.clone()).send().await.unwrap_or_else(|err| {
            panic!("headless authorization: GET {} failed: {err}", url.path())
        });
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|location| location.to_str().ok())
            .map(str::to_owned);
        let location = match location {
            Some(location) if status.is_redirection() => location,
            _ => {
                let body = response.text().await.unwrap_or_default();
                let body: String = body.chars().take(500).collect();
                panic!(
                    "headless authorization: GET {} answered {status} with Location {location:?}, \
                     not a redirect; body: {body}",
                    url.path()
                );
            }
        };
        if location.starts_with(APP_REDIRECT_URI) {
            return location;
        }
        url = url.join(&location).unwrap_or_else(|err| {
            panic!("headless authorization: bad Location {location:?}: {err}")
        });
    }
    panic!(
        "headless authorization: no redirect to {APP_REDIRECT_URI} within {MAX_REDIRECTS} hops (last {url})"
    );
}

const FORM_TYPE: &str = "application/x-www-form-urlencoded";

fn form_body(pairs: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The `value` of the hidden input `name` in an HTML form.
fn hidden_value(html: &str, name: &str) -> Option<String> {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// The first value of query parameter `name` in `url`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oidc-provider")
}

/// Installs the pinned oidc-provider once per test process when it is missing.
fn ensure_installed() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(err) = INSTALLED.get_or_init(install) {
        panic!("{err}");
    }
}

fn install() -> Result<(), String> {
    let dir = server_dir();
    let pinned = pinned_version(&dir)?;
    if installed_version(&dir).as_deref() == Some(pinned.as_str()) {
        return Ok(());
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| {
            format!(
                "oidc-provider interop tests: cannot run `npm ci` in {} ({err}); they need Node.js 20+ and npm",
                dir.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "oidc-provider interop tests: `npm ci --no-audit --no-fund` in {} failed ({}):\n{}\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        ));
    }
    match installed_version(&dir) {
        Some(version) if version == pinned => Ok(()),
        other => Err(format!(
            "oidc-provider interop tests: after `npm ci` in {}, oidc-provider is {other:?}, not {pinned}",
            dir.display()
        )),
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn pinned_version(dir: &Path) -> Result<String, String> {
    read_json(&dir.join("package.json"))
        .and_then(|package| {
            package["dependencies"]["oidc-provider"]
                .as_str()
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            format!(
                "no oidc-provider dependency in {}/package.json",
                dir.display()
            )
        })
}

fn installed_version(dir: &Path) -> Option<String> {
    read_json(&dir.join("node_modules/oidc-provider/package.json"))
        .and_then(|package| package["version"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    //! The harness itself, quickly: the constants match the server's clients, the server
    //! starts, and a full authorization-code flow runs headless through it.

    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn constants_match_clients_json() {
        let clients = read_json(&server_dir().join("clients.json")).expect("clients.json");
        assert_eq!(clients["cc_basic"]["client_id"], CC_BASIC_ID);
        assert_eq!(clients["cc_basic"]["client_secret"], CC_BASIC_SECRET);
        assert_eq!(clients["cc_post"]["client_id"], CC_POST_ID);
        assert_eq!(clients["cc_post"]["client_secret"], CC_POST_SECRET);
        assert_eq!(clients["app"]["client_id"], APP_ID);
        assert_eq!(clients["app"]["client_secret"], APP_SECRET);
        assert_eq!(clients["app"]["redirect_uri"], APP_REDIRECT_URI);
        assert_eq!(clients["exchange"]["client_id"], EXCHANGE_ID);
        assert_eq!(clients["exchange"]["client_secret"], EXCHANGE_SECRET);
        assert_eq!(clients["jwt_bearer"]["client_id"], WORKLOAD_ID);
        assert_eq!(clients["device"]["client_id"], DEVICE_ID);
        assert_eq!(clients["device"]["client_secret"], DEVICE_SECRET);
        assert_eq!(clients["dpop"]["client_id"], DPOP_APP_ID);
        assert_eq!(clients["dpop"]["client_secret"], DPOP_APP_SECRET);
        assert_eq!(clients["dpop"]["redirect_uri"], APP_REDIRECT_URI);
        for secret in [CC_BASIC_SECRET, CC_POST_SECRET, APP_SECRET, DPOP_APP_SECRET] {
            for special in [':', '+', '/', '%', '&', '=', '~', ' '] {
                assert!(
                    secret.contains(special),
                    "{special:?} missing from a secret"
                );
            }
        }
    }

    #[test]
    fn private_key_jwt_constants_match_clients_json() {
        let clients = read_json(&server_dir().join("clients.json")).expect("clients.json");
        for (name, id, kid, alg, key) in [
            (
                "pkjwt_es256",
                PKJWT_ES256_ID,
                PKJWT_ES256_KID,
                "ES256",
                "keys/es256.pem",
            ),
            (
                "pkjwt_rs256",
                PKJWT_RS256_ID,
                PKJWT_RS256_KID,
                "RS256",
                "keys/rs256.pem",
            ),
        ] {
            let client = &clients[name];
            assert_eq!(client["client_id"], id);
            assert_eq!(client["kid"], kid);
            assert_eq!(client["alg"], alg);
            assert_eq!(client["key"], key);
            assert_eq!(client["redirect_uri"], APP_REDIRECT_URI);
            assert!(
                client.get("client_secret").is_none(),
                "{name} has no secret"
            );
        }
    }

    #[tokio::test]
    async fn server_starts_and_answers_discovery() {
        let server = OidcProvider::start().await;
        let discovery = server.discovery().await;
        assert_eq!(discovery["issuer"], server.issuer.as_str());
        assert_eq!(discovery["token_endpoint"], server.token_url().as_str());
        assert_eq!(
            discovery["authorization_endpoint"],
            server.authorization_url().as_str()
        );
        assert_eq!(
            discovery["revocation_endpoint"],
            server.revocation_url().as_str()
        );
        assert_eq!(
            discovery["device_authorization_endpoint"],
            server.device_authorization_url().as_str()
        );
        assert_eq!(server.stats().await, Stats::default());
    }

    fn form(pairs: &[(&str, &str)]) -> String {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in pairs {
            body.append_pair(key, value);
        }
        body.finish()
    }

    /// RFC 6749 §2.3.1: form-urlencode id and secret, then Base64.
    fn basic(id: &str, secret: &str) -> String {
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        )
    }

    /// A token request with this `Authorization` header, if any.
    async fn token_request(
        server: &OidcProvider,
        auth: Option<&str>,
        pairs: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = server
            .http
            .post(server.token_url())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(pairs));
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let response = request.send().await.expect("token request");
        let status = response.status();
        let body = response.bytes().await.expect("token body");
        (
            status,
            serde_json::from_slice(&body).expect("token answer is JSON"),
        )
    }

    #[tokio::test]
    async fn headless_code_flow_rotation_reuse_and_revoke_all() {
        let server = OidcProvider::start().await;
        let app = basic(APP_ID, APP_SECRET);
        let app = Some(app.as_str());

        let verifier = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let request = server.app_authorization_request(API_SCOPES, "state-1", &challenge);
        let callback = authorize_headless(&request).await;
        assert!(callback.starts_with(APP_REDIRECT_URI), "{callback}");
        assert_eq!(query_param(&callback, "state").as_deref(), Some("state-1"));
        let code = query_param(&callback, "code").expect("code");

        let (status, tokens) = token_request(
            &server,
            app,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_REDIRECT_URI),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(tokens["expires_in"], DEFAULT_ACCESS_TTL_SECS);
        let first = tokens["refresh_token"]
            .as_str()
            .expect("refresh token")
            .to_owned();
        assert!(
            server
                .token_active(tokens["access_token"].as_str().unwrap())
                .await
        );

        let refresh = |token: String| {
            let server = &server;
            async move {
                token_request(
                    server,
                    app,
                    &[("grant_type", "refresh_token"), ("refresh_token", &token)],
                )
                .await
            }
        };
        let (status, rotated) = refresh(first.clone()).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        let second = rotated["refresh_token"]
            .as_str()
            .expect("rotated refresh token")
            .to_owned();
        assert_ne!(first, second);

        // Reuse of a consumed refresh token: invalid_grant, and the grant is gone.
        let (status, reused) = refresh(first).await;
        assert_eq!(
            (status, &reused["error"]),
            (StatusCode::BAD_REQUEST, &Value::from("invalid_grant"))
        );
        let (_, after) = refresh(second).await;
        assert_eq!(after["error"], "invalid_grant");

        let stats = server.stats().await;
        assert_eq!(
            stats,
            Stats {
                authorization_code: 1,
                refresh_token: 3,
                refresh_token_reused: 1,
                invalid_grant: 2,
                client_secret_basic: 4,
                ..Stats::default()
            }
        );

        // revoke_all: a fresh grant's refresh token stops working.
        server.reset().await;
        let callback = authorize_headless(
            &server.app_authorization_request(API_SCOPES, "state-2", &challenge),
        )
        .await;
        let code = query_param(&callback, "code").expect("code");
        let (_, tokens) = token_request(
            &server,
            app,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_REDIRECT_URI),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        let fresh = tokens["refresh_token"]
            .as_str()
            .expect("refresh token")
            .to_owned();
        server.revoke_all().await;
        let (_, after) = refresh(fresh).await;
        assert_eq!(after["error"], "invalid_grant");
        assert_eq!(server.stats().await.invalid_grant, 1);
    }

    #[tokio::test]
    async fn client_credentials_basic_needs_form_urlencoding_and_post_works() {
        let server = OidcProvider::start().await;
        let grant = [("grant_type", "client_credentials"), ("scope", "api:read")];
        let encoded = basic(CC_BASIC_ID, CC_BASIC_SECRET);
        let (status, tokens) = token_request(&server, Some(&encoded), &grant).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(tokens["scope"], "api:read");
        assert_eq!(tokens["expires_in"], DEFAULT_ACCESS_TTL_SECS);

        let raw = format!(
            "Basic {}",
            STANDARD.encode(format!("{CC_BASIC_ID}:{CC_BASIC_SECRET}"))
        );
        let (status, refused) = token_request(&server, Some(&raw), &grant).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");

        let post = [
            ("grant_type", "client_credentials"),
            ("client_id", CC_POST_ID),
            ("client_secret", CC_POST_SECRET),
        ];
        let (status, tokens) = token_request(&server, None, &post).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert!(
            server
                .token_active(tokens["access_token"].as_str().unwrap())
                .await
        );

        let stats = server.stats().await;
        assert_eq!(
            (
                stats.client_credentials,
                stats.client_secret_basic,
                stats.client_secret_post
            ),
            (3, 2, 1)
        );
    }
}
