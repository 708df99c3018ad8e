//! DPoP (RFC 9449) against a real authorization server, oidc-provider on 127.0.0.1 with nonces
//! required for [`DPOP_APP_ID`], and the DPoP resource server `server.mjs` runs beside it on a
//! port of its own (see `oidc_provider.rs` and the README there).
//!
//! The first tests make their proofs by hand with [`oauth_refresh::dpop`] and send them with
//! reqwest: they pin down what both servers do. The tests in [`layer`] send the same requests
//! through `RefreshLayer`, as an application would.
//!
//! Real clock: both servers check `iat` against real seconds.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use oauth_refresh::dpop::{DpopKey, Nonces, ProofRequest};
use oauth_refresh::oauth::Es256Key;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::oidc_provider::{
    APP_REDIRECT_URI, CC_BASIC_ID, CC_BASIC_SECRET, DEFAULT_ACCESS_TTL_SECS, DPOP_APP_ID,
    DPOP_APP_SECRET, OidcProvider, Stats, authorize_headless, query_param,
};

fn new_key() -> DpopKey {
    DpopKey::es256(Es256Key::generate().expect("an ES256 key"))
}

fn uri(url: &str) -> Uri {
    url.parse().expect("a URI")
}

/// RFC 6749 §2.3.1: form-urlencode id and secret, then Base64.
fn basic(id: &str, secret: &str) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id), encode(secret));
    format!("Basic {}", STANDARD.encode(pair))
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// One HTTP answer, its body read as JSON.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The `WWW-Authenticate` header, or `""`.
    fn challenge(&self) -> &str {
        self.headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `error` of a `DPoP` challenge.
    fn dpop_error(&self) -> Option<&str> {
        let challenge = self.challenge().strip_prefix("DPoP ")?;
        let start = challenge.find("error=\"")? + "error=\"".len();
        let end = challenge[start..].find('"')?;
        Some(&challenge[start..start + end])
    }

    fn nonce(&self) -> Option<&str> {
        self.headers.get("dpop-nonce").and_then(|v| v.to_str().ok())
    }
}

/// A client that makes its own proofs with one key, and keeps each origin's newest nonce.
struct HandClient {
    http: reqwest::Client,
    key: DpopKey,
    nonces: Nonces,
}

impl HandClient {
    fn new() -> Self {
        Self::with_key(new_key())
    }

    fn with_key(key: DpopKey) -> Self {
        HandClient {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest client"),
            key,
            nonces: Nonces::default(),
        }
    }

    /// A proof for `method url`, with the token's hash if given and the origin's nonce if
    /// one was learned.
    async fn proof(&self, method: &Method, url: &str, access_token: Option<&str>) -> String {
        let target = uri(url);
        let nonce = self.nonces.get(&target);
        let mut request = ProofRequest::new(method, &target);
        if let Some(token) = access_token {
            request = request.access_token(token);
        }
        if let Some(nonce) = &nonce {
            request = request.nonce(nonce);
        }
        self.key.proof(request).await.expect("a proof")
    }

    /// Sends one request as given, and learns the nonce the answer carries.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Answer {
        let mut request = self.http.request(method.clone(), url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {url}: {err}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("answer body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!(
                "{method} {url}: not JSON ({err}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        self.nonces.learn(&uri(url), &headers);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// One token request for [`DPOP_APP_ID`] with a fresh proof (no resend).
    async fn token_request(&self, server: &OidcProvider, pairs: &[(&str, &str)]) -> Answer {
        let url = server.token_url();
        let proof = self.proof(&Method::POST, &url, None).await;
        let auth = basic(DPOP_APP_ID, DPOP_APP_SECRET);
        let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
        self.send(Method::POST, &url, &headers, Some(form(pairs)))
            .await
    }

    /// A token request that must succeed, resent once with the nonce if the server asks.
    async fn tokens(&self, server: &OidcProvider, pairs: &[(&str, &str)]) -> Value {
        let mut answer = self.token_request(server, pairs).await;
        if answer.body["error"] == "use_dpop_nonce" {
            answer = self.token_request(server, pairs).await;
        }
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.body["token_type"], "DPoP", "{answer:?}");
        answer.body
    }

    /// A DPoP-bound client credentials token.
    async fn client_credentials(&self, server: &OidcProvider) -> String {
        let tokens = self
            .tokens(
                server,
                &[("grant_type", "client_credentials"), ("scope", "api:read")],
            )
            .await;
        tokens["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// A request to the resource server with `Authorization: DPoP <token>` and `proof`.
    async fn resource_request(
        &self,
        method: Method,
        url: &str,
        access_token: &str,
        proof: &str,
    ) -> Answer {
        let auth = format!("DPoP {access_token}");
        let headers = [("authorization", auth.as_str()), ("dpop", proof)];
        self.send(method, url, &headers, None).await
    }

    /// A request with a fresh proof, resent once with the nonce if the server asks.
    async fn resource(&self, method: Method, url: &str, access_token: &str) -> Answer {
        for _ in 0..2 {
            let proof = self.proof(&method, url, Some(access_token)).await;
            let answer = self
                .resource_request(method.clone(), url, access_token, &proof)
                .await;
            if answer.dpop_error() != Some("use_dpop_nonce") {
                return answer;
            }
        }
        panic!("{method} {url}: use_dpop_nonce twice");
    }
}

#[tokio::test]
async fn token_endpoint_asks_for_its_nonce_then_binds_the_token_to_the_proofs_key() {
    let server = OidcProvider::start().await;
    let client = HandClient::new();
    let grant = [("grant_type", "client_credentials"), ("scope", "api:read")];

    // The client requires DPoP-bound tokens: no proof, no token (and, oddly, invalid_grant).
    let auth = basic(DPOP_APP_ID, DPOP_APP_SECRET);
    let bare = client
        .send(
            Method::POST,
            &server.token_url(),
            &[("authorization", auth.as_str())],
            Some(form(&grant)),
        )
        .await;
    assert_eq!(
        (bare.status, bare.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{bare:?}"
    );

    // The first proof has no nonce: 400 use_dpop_nonce, with the nonce to use.
    let first = client.token_request(&server, &grant).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST, "{first:?}");
    assert_eq!(first.body["error"], "use_dpop_nonce", "{first:?}");
    let nonce = first
        .nonce()
        .expect("DPoP-Nonce with use_dpop_nonce")
        .to_owned();
    assert_eq!(
        client.nonces.get(&uri(&server.token_url())).as_deref(),
        Some(nonce.as_str())
    );

    // With it: a token of type DPoP, bound to the key's thumbprint (cnf.jkt).
    let url = server.token_url();
    let proof = client.proof(&Method::POST, &url, None).await;
    let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
    let issued = client
        .send(Method::POST, &url, &headers, Some(form(&grant)))
        .await;
    assert_eq!(issued.status, StatusCode::OK, "{issued:?}");
    assert_eq!(issued.body["token_type"], "DPoP");
    assert_eq!(issued.body["expires_in"], DEFAULT_ACCESS_TTL_SECS);
    let access_token = issued.body["access_token"].as_str().unwrap();
    let info = server.token_info(access_token).await;
    assert_eq!(info["jkt"], client.key.thumbprint(), "{info}");
    assert_eq!(info["client_id"], DPOP_APP_ID);

    // The very same proof again: oidc-provider's replay detection, answered invalid_grant.
    let replayed = client
        .send(Method::POST, &url, &headers, Some(form(&grant)))
        .await;
    assert_eq!(replayed.body["error"], "invalid_grant", "{replayed:?}");

    let stats = server.stats().await;
    assert_eq!(
        stats,
        Stats {
            client_credentials: 4,
            invalid_grant: 2,
            client_secret_basic: 4,
            token_dpop: 3,
            token_use_dpop_nonce: 1,
            token_dpop_replayed: 1,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn resource_server_takes_a_bound_token_with_a_proof_carrying_its_nonce() {
    let server = OidcProvider::start_with(60).await;
    let client = HandClient::new();
    let access_token = client.client_credentials(&server).await;
    server.reset().await;

    // No nonce from this origin yet (the token endpoint's is another origin's).
    let url = server.dpop_resource_url("/items?page=2");
    let proof = client.proof(&Method::GET, &url, Some(&access_token)).await;
    let asked = client
        .resource_request(Method::GET, &url, &access_token, &proof)
        .await;
    assert_eq!(asked.status, StatusCode::UNAUTHORIZED, "{asked:?}");
    assert_eq!(asked.dpop_error(), Some("use_dpop_nonce"), "{asked:?}");
    let nonce = asked.nonce().expect("DPoP-Nonce").to_owned();

    // With it: 200, for the key the token is bound to; htu leaves out the query.
    let ok = client.resource(Method::GET, &url, &access_token).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body["jkt"], client.key.thumbprint());
    assert_eq!(ok.body["client_id"], DPOP_APP_ID);
    assert_eq!(ok.body["path"], "/dpop/items");
    assert_eq!(
        ok.nonce(),
        Some(nonce.as_str()),
        "every answer names the nonce"
    );

    // Another method and path, and a body.
    let url = server.dpop_resource_url("/items");
    let proof = client.proof(&Method::POST, &url, Some(&access_token)).await;
    let auth = format!("DPoP {access_token}");
    let posted = client
        .send(
            Method::POST,
            &url,
            &[("authorization", auth.as_str()), ("dpop", proof.as_str())],
            Some("a=1".into()),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{posted:?}");
    assert_eq!(posted.body["method"], "POST");
    assert_eq!(posted.body["body_bytes"], 3);

    let stats = server.stats().await;
    assert_eq!(
        (stats.resource_ok, stats.resource_use_dpop_nonce),
        (2, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn the_same_proof_twice_is_refused_as_a_replay() {
    let server = OidcProvider::start_with(60).await;
    let client = HandClient::new();
    let access_token = client.client_credentials(&server).await;
    let url = server.dpop_resource_url("/items");
    // Learn the nonce first.
    assert_eq!(
        client
            .resource(Method::GET, &url, &access_token)
            .await
            .status,
        StatusCode::OK
    );
    server.reset().await;

    let proof = client.proof(&Method::GET, &url, Some(&access_token)).await;
    let once = client
        .resource_request(Method::GET, &url, &access_token, &proof)
        .await;
    assert_eq!(once.status, StatusCode::OK, "{once:?}");
    let twice = client
        .resource_request(Method::GET, &url, &access_token, &proof)
        .await;
    assert_eq!(twice.status, StatusCode::UNAUTHORIZED, "{twice:?}");
    assert_eq!(twice.dpop_error(), Some("invalid_dpop_proof"), "{twice:?}");

    let stats = server.stats().await;
    assert_eq!(
        (stats.resource_ok, stats.resource_proof_replayed),
        (1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn after_a_nonce_rotation_the_old_nonce_is_answered_use_dpop_nonce() {
    let server = OidcProvider::start_with(60).await;
    let client = HandClient::new();
    let access_token = client.client_credentials(&server).await;
    let url = server.dpop_resource_url("/items");
    assert_eq!(
        client
            .resource(Method::GET, &url, &access_token)
            .await
            .status,
        StatusCode::OK
    );
    let old = client.nonces.get(&uri(&url)).expect("the nonce learned");
    server.reset().await;

    let rotated = server.rotate_resource_nonce().await;
    assert_ne!(*old, *rotated);
    // A fresh proof, but with the old nonce.
    let proof = client.proof(&Method::GET, &url, Some(&access_token)).await;
    let stale = client
        .resource_request(Method::GET, &url, &access_token, &proof)
        .await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED, "{stale:?}");
    assert_eq!(stale.dpop_error(), Some("use_dpop_nonce"), "{stale:?}");
    assert_eq!(stale.nonce(), Some(rotated.as_str()));
    assert_eq!(
        client.nonces.get(&uri(&url)).as_deref(),
        Some(rotated.as_str())
    );

    // A new proof with the new nonce goes through.
    let proof = client.proof(&Method::GET, &url, Some(&access_token)).await;
    let ok = client
        .resource_request(Method::GET, &url, &access_token, &proof)
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");

    let stats = server.stats().await;
    assert_eq!(
        (stats.resource_ok, stats.resource_use_dpop_nonce),
        (1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn bearer_scheme_another_key_and_wrong_claims_are_refused() {
    let server = OidcProvider::start_with(60).await;
    let client = HandClient::new();
    let access_token = client.client_credentials(&server).await;
    let url = server.dpop_resource_url("/items");
    assert_eq!(
        client
            .resource(Method::GET, &url, &access_token)
            .await
            .status,
        StatusCode::OK
    );
    server.reset().await;

    // The bound token as a bearer token, with or without a proof.
    for with_proof in [false, true] {
        let proof = client.proof(&Method::GET, &url, Some(&access_token)).await;
        let auth = format!("Bearer {access_token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if with_proof {
            headers.push(("dpop", proof.as_str()));
        }
        let bearer = client.send(Method::GET, &url, &headers, None).await;
        assert_eq!(bearer.status, StatusCode::UNAUTHORIZED, "{bearer:?}");
        assert_eq!(bearer.dpop_error(), Some("invalid_token"), "{bearer:?}");
    }

    // A valid proof, made with another key than the one the token is bound to (after one
    // use_dpop_nonce: the thief has no nonce yet).
    let thief = HandClient::new();
    let stolen = thief.resource(Method::GET, &url, &access_token).await;
    assert_eq!(stolen.status, StatusCode::UNAUTHORIZED, "{stolen:?}");
    assert_eq!(stolen.dpop_error(), Some("invalid_token"), "{stolen:?}");

    // Proofs for another method, another URL, another token; none at all; a garbled one.
    let other_path = server.dpop_resource_url("/other");
    let wrong = [
        client.proof(&Method::POST, &url, Some(&access_token)).await,
        client
            .proof(&Method::GET, &other_path, Some(&access_token))
            .await,
        client
            .proof(&Method::GET, &url, Some("another-token"))
            .await,
        client.proof(&Method::GET, &url, None).await,
        "a.b.c".to_owned(),
    ];
    for proof in &wrong {
        let answer = client
            .resource_request(Method::GET, &url, &access_token, proof)
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert_eq!(
            answer.dpop_error(),
            Some("invalid_dpop_proof"),
            "{answer:?}"
        );
    }
    let auth = format!("DPoP {access_token}");
    let no_proof = client
        .send(Method::GET, &url, &[("authorization", auth.as_str())], None)
        .await;
    assert_eq!(
        no_proof.dpop_error(),
        Some("invalid_dpop_proof"),
        "{no_proof:?}"
    );

    let stats = server.stats().await;
    assert_eq!(
        stats,
        Stats {
            resource_bearer_refused: 2,
            resource_use_dpop_nonce: 1,
            resource_jkt_mismatch: 1,
            resource_invalid_dpop_proof: 6,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn an_expired_or_unbound_token_is_invalid_token() {
    const TTL: u64 = 1;
    let server = OidcProvider::start_with(TTL).await;
    let client = HandClient::new();
    let access_token = client.client_credentials(&server).await;
    let url = server.dpop_resource_url("/items");
    assert_eq!(
        client
            .resource(Method::GET, &url, &access_token)
            .await
            .status,
        StatusCode::OK
    );

    tokio::time::sleep(std::time::Duration::from_millis(TTL * 1000 + 1100)).await;
    let expired = client.resource(Method::GET, &url, &access_token).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{expired:?}");
    assert_eq!(expired.dpop_error(), Some("invalid_token"), "{expired:?}");

    // A Bearer token of another client, presented under the DPoP scheme with a proof.
    let auth = basic(CC_BASIC_ID, CC_BASIC_SECRET);
    let bearer = client
        .send(
            Method::POST,
            &server.token_url(),
            &[("authorization", auth.as_str())],
            Some(form(&[("grant_type", "client_credentials")])),
        )
        .await;
    assert_eq!(bearer.body["token_type"], "Bearer", "{bearer:?}");
    let unbound = bearer.body["access_token"].as_str().unwrap();
    let answer = client.resource(Method::GET, &url, unbound).await;
    assert_eq!(answer.dpop_error(), Some("invalid_token"), "{answer:?}");

    let stats = server.stats().await;
    assert_eq!(
        (stats.resource_ok, stats.resource_invalid_token),
        (1, 2),
        "{stats:?}"
    );
}

/// Signs `alice` in as [`DPOP_APP_ID`] (the code flow with PKCE, headless), redeeming the code
/// with a proof of `client`'s key: the DPoP-bound access token and the refresh token.
async fn sign_in(server: &OidcProvider, client: &HandClient) -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode([9u8; 32]);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let request = server.authorization_request(DPOP_APP_ID, "openid api:read", "s-1", &challenge);
    let callback = authorize_headless(&request).await;
    let code = query_param(&callback, "code").expect("code");
    let tokens = client
        .tokens(
            server,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_REDIRECT_URI),
                ("code_verifier", &verifier),
            ],
        )
        .await;
    let token = |name: &str| tokens[name].as_str().expect(name).to_owned();
    (token("access_token"), token("refresh_token"))
}

#[tokio::test]
async fn refresh_with_a_proof_rotates_and_binds_the_new_token_to_the_proofs_key() {
    let server = OidcProvider::start_with(60).await;
    let client = HandClient::new();
    let (access_token, first) = sign_in(&server, &client).await;
    assert_eq!(
        server.token_info(&access_token).await["jkt"],
        client.key.thumbprint()
    );

    // Without a proof: refused, and the refresh token is not consumed by it.
    let auth = basic(DPOP_APP_ID, DPOP_APP_SECRET);
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", first.as_str()),
    ];
    let bare = client
        .send(
            Method::POST,
            &server.token_url(),
            &[("authorization", auth.as_str())],
            Some(form(&refresh)),
        )
        .await;
    assert_eq!(bare.body["error"], "invalid_grant", "{bare:?}");

    let rotated = client.tokens(&server, &refresh).await;
    let second = rotated["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_ne!(first, second);
    let access_token = rotated["access_token"].as_str().unwrap();
    assert_eq!(
        server.token_info(access_token).await["jkt"],
        client.key.thumbprint()
    );
    let url = server.dpop_resource_url("/me");
    let ok = client.resource(Method::GET, &url, access_token).await;
    assert_eq!(ok.body["sub"], "alice", "{ok:?}");

    // oidc-provider binds the refresh tokens of a confidential client to no key (only a
    // public client's, lib/helpers/set_rt_bindings.js): a proof of another key refreshes,
    // and the new access token is bound to that key.
    let other = HandClient::new();
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", second.as_str()),
    ];
    let moved = other.tokens(&server, &refresh).await;
    let access_token = moved["access_token"].as_str().unwrap();
    assert_eq!(
        server.token_info(access_token).await["jkt"],
        other.key.thumbprint()
    );

    // oidc-provider checks the proof (and its nonce) before it looks at the refresh token: a
    // use_dpop_nonce answer leaves the refresh token unconsumed, safe to present again.
    let stats = server.stats().await;
    assert_eq!(
        (
            stats.refresh_token,
            stats.invalid_grant,
            stats.token_use_dpop_nonce
        ),
        // Bare, rotated, and `other`'s two (its first had no nonce); the code exchange's
        // first request was the other use_dpop_nonce.
        (4, 1, 2),
        "{stats:?}"
    );
}

/// The same flows through `RefreshLayer`: the grant's `.dpop(key)`, and nothing else.
mod layer {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use oauth_refresh::{ClientCredentials, RefreshLayer, RefreshTokenGrant, TokenUpdate};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    fn reqwest_client(layer: &RefreshLayer) -> reqwest_middleware::ClientWithMiddleware {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        reqwest_middleware::ClientBuilder::new(http)
            .with(layer.clone())
            .build()
    }

    /// `GET url` through the reqwest middleware: the status and the JSON answer.
    async fn get(
        client: &reqwest_middleware::ClientWithMiddleware,
        url: &str,
    ) -> (StatusCode, Value) {
        let response = client.get(url).send().await.expect("GET through the layer");
        let status = response.status();
        let body = response.bytes().await.expect("answer body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    fn client_credentials(server: &OidcProvider, key: &DpopKey) -> RefreshLayer {
        RefreshLayer::new(
            ClientCredentials::new(server.token_url(), DPOP_APP_ID, DPOP_APP_SECRET)
                .scope("api:read")
                .dpop(key.clone()),
        )
    }

    #[tokio::test]
    async fn layer_client_credentials_through_reqwest_sends_bound_tokens_the_resource_server_verifies()
     {
        // ClientCredentials::dpop through the reqwest middleware.
        let server = OidcProvider::start_with(60).await;
        let key = new_key();
        let layer = client_credentials(&server, &key);
        let client = reqwest_client(&layer);
        for i in 0..5 {
            let (status, body) =
                get(&client, &server.dpop_resource_url(&format!("/items/{i}"))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["jkt"], key.thumbprint());
        }
        let stats = server.stats().await;
        // The first token request and the first API request each learn their nonce.
        assert_eq!(
            (
                stats.client_credentials,
                stats.token_use_dpop_nonce,
                stats.token_dpop
            ),
            (2, 1, 2),
            "{stats:?}"
        );
        assert_eq!(
            (
                stats.resource_ok,
                stats.resource_use_dpop_nonce,
                stats.resource_invalid_dpop_proof
            ),
            (5, 1, 0),
            "{stats:?}"
        );
        assert_eq!(
            layer.stats().nonce_resends,
            1,
            "the API's; the token endpoint's is the grant's"
        );
        assert_eq!(layer.stats().refreshes, 1);
    }

    #[tokio::test]
    async fn layer_client_credentials_through_tower_sends_bound_tokens_the_resource_server_verifies()
     {
        // ClientCredentials::dpop in a tower stack over hyper-util's client.
        let server = OidcProvider::start_with(60).await;
        let key = new_key();
        let layer = client_credentials(&server, &key);
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let service = ServiceBuilder::new().layer(layer.clone()).service(http);
        for (i, method) in [Method::GET, Method::POST, Method::PUT]
            .into_iter()
            .enumerate()
        {
            let request = http::Request::builder()
                .method(method.clone())
                .uri(server.dpop_resource_url(&format!("/items/{i}?q=1")))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            let response = service
                .clone()
                .oneshot(request)
                .await
                .expect("through the layer");
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["method"], method.as_str());
            assert_eq!(
                body["body_bytes"], 2,
                "the replayed body, after the nonce resend too"
            );
            assert_eq!(body["jkt"], key.thumbprint());
        }
        let stats = server.stats().await;
        assert_eq!(
            (
                stats.resource_ok,
                stats.resource_use_dpop_nonce,
                stats.resource_proof_replayed
            ),
            (3, 1, 0),
            "{stats:?}"
        );
        assert_eq!(layer.stats().nonce_resends, 1);
    }

    #[tokio::test]
    async fn layer_refresh_grant_rotates_with_dpop_and_keeps_the_tokens_bound_to_the_key() {
        // RefreshTokenGrant::dpop, rotation on every refresh.
        const TTL: u64 = 2;
        let server = OidcProvider::start_with(TTL).await;
        let key = new_key();
        let (_, first) = sign_in(&server, &HandClient::with_key(key.clone())).await;
        server.reset().await;

        let presented: Arc<Mutex<Vec<String>>> = Arc::default();
        let grant = RefreshTokenGrant::new(server.token_url(), DPOP_APP_ID, first.clone())
            .client_secret(DPOP_APP_SECRET)
            .dpop(key.clone())
            .persist({
                let presented = presented.clone();
                move |update: TokenUpdate| {
                    let presented = presented.clone();
                    async move {
                        if let Some(token) = update.refresh_token {
                            presented.lock().unwrap().push(token.secret().to_owned());
                        }
                        Ok::<_, std::io::Error>(())
                    }
                }
            });
        let layer = RefreshLayer::new(grant);
        let client = reqwest_client(&layer);
        let url = server.dpop_resource_url("/me");
        for round in 0..3 {
            if round > 0 {
                // Past the lifetime: the next request refreshes.
                tokio::time::sleep(Duration::from_millis(TTL * 1000 + 300)).await;
            }
            let (status, body) = get(&client, &url).await;
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
            assert_eq!(body["jkt"], key.thumbprint());
            assert_eq!(body["sub"], "alice");
        }
        let stats = server.stats().await;
        assert_eq!(
            (
                stats.refresh_token,
                stats.refresh_token_reused,
                stats.invalid_grant
            ),
            // Three refreshes, the first also resent once for the token endpoint's nonce
            // (the same refresh token: oidc-provider checks the nonce before the token).
            (4, 1, 0),
            "{stats:?}"
        );
        assert_eq!(stats.token_use_dpop_nonce, 1, "{stats:?}");
        let presented = presented.lock().unwrap();
        assert_eq!(presented.len(), 3, "{presented:?}");
        assert!(!presented.contains(&first), "rotated every time");
        let distinct: std::collections::HashSet<_> = presented.iter().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[tokio::test]
    async fn layer_nonce_rotation_mid_run_costs_exactly_one_resend() {
        // the API's use_dpop_nonce resent once, never a refresh.
        let server = OidcProvider::start_with(60).await;
        let key = new_key();
        let layer = client_credentials(&server, &key);
        let client = reqwest_client(&layer);
        let url = server.dpop_resource_url("/items");
        assert_eq!(get(&client, &url).await.0, StatusCode::OK);
        let before = layer.stats();
        server.reset().await;

        for i in 0..10 {
            if i == 5 {
                server.rotate_resource_nonce().await;
            }
            let (status, body) = get(&client, &url).await;
            assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        }
        let stats = server.stats().await;
        assert_eq!(
            stats,
            Stats {
                resource_ok: 10,
                resource_use_dpop_nonce: 1,
                ..Stats::default()
            },
            "no token request, one nonce challenge"
        );
        let after = layer.stats();
        assert_eq!(after.nonce_resends - before.nonce_resends, 1);
        assert_eq!(
            after.refreshes, before.refreshes,
            "a nonce is not the token's fault"
        );
        assert_eq!(after.retries, before.retries);
    }

    #[tokio::test]
    async fn layer_tokens_are_bound_to_the_keys_thumbprint() {
        // what the layer's grant brings is bound to its key, and only to it.
        let server = OidcProvider::start_with(60).await;
        let key = new_key();
        let other = new_key();
        assert_ne!(key.thumbprint(), other.thumbprint());
        let layer = client_credentials(&server, &key);
        let (status, body) = get(&reqwest_client(&layer), &server.dpop_resource_url("/a")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["jkt"], key.thumbprint());
        assert_eq!(body["client_id"], DPOP_APP_ID);
        let stats = server.stats().await;
        assert_eq!(
            (stats.resource_jkt_mismatch, stats.resource_bearer_refused),
            (0, 0)
        );
    }
}
