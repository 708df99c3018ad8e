//! A service that authenticates with a signed JWT instead of a client secret
//! (`private_key_jwt`, RFC 7523 §2.2): the client keeps an ES256 key, the authorization server
//! knows only its public JWK, and every token request carries a new assertion.
//!
//! The authorization server runs in-process on 127.0.0.1. It verifies each assertion's
//! signature with the registered public key (aws-lc-rs), checks `iss`, `sub`, `aud` and `exp`,
//! and refuses a `jti` it has seen, as real servers do. The example replays one assertion by
//! hand to show that refusal, which the client itself never meets.
//!
//! ```text
//! cargo run --example private_key_jwt
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oauth_refresh::oauth::{ClientAuth, Es256Key, PrivateKeyJwt};
use oauth_refresh::{ClientCredentials, RefreshLayer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const CLIENT_ID: &str = "reporting";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the authorization server knows of the client, and the `jti`s it has seen.
struct Registration {
    token_url: String,
    /// The client's public key as an X9.62 point, from the JWK it registered.
    public_key: Vec<u8>,
    seen_jtis: HashSet<String>,
    /// The last form received, for the replay at the end.
    last_form: Option<Bytes>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The client's key. A deployed client loads its own (`Es256Key::from_pkcs8_pem`) and
    // registers `public_jwk()` with the server once.
    let key = Es256Key::generate()?.with_key_id("reporting-2026");
    let jwk: Value = serde_json::from_str(&key.public_jwk())?;
    println!("registered JWK: {jwk}");

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let token_url = format!("http://{}/token", listener.local_addr()?);
    let mut public_key = vec![4];
    for coordinate in ["x", "y"] {
        public_key.extend(BASE64URL.decode(jwk[coordinate].as_str().unwrap())?);
    }
    let server = Arc::new(Mutex::new(Registration {
        token_url: token_url.clone(),
        public_key,
        seen_jtis: HashSet::new(),
        last_form: None,
    }));
    let accept = tokio::spawn(serve(listener, server.clone()));

    // The client: no secret anywhere, only the key.
    let grant = ClientCredentials::with_client_auth(
        &token_url,
        CLIENT_ID,
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(key)),
    )
    .scope("reports:read");
    let layer = RefreshLayer::new(grant);
    for round in 1..=3 {
        layer.refresh().await?;
        println!("token request {round}: accepted");
    }
    let seen = server.lock().unwrap().seen_jtis.len();
    println!("the server saw {seen} assertions, each with its own jti");
    assert_eq!(seen, 3);

    // Someone who captured a token request sends it again: the server refuses it.
    let form = server.lock().unwrap().last_form.clone().unwrap();
    let replay = reqwest::Client::new()
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let status = replay.status();
    println!("a replayed assertion: {status} {}", replay.text().await?);
    assert_eq!(status, 401);
    accept.abort();
    Ok(())
}

async fn serve(listener: TcpListener, server: Arc<Mutex<Registration>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let server = server.clone();
        let service = service_fn(move |request| token(server.clone(), request));
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}

/// The token endpoint: client credentials for a client that authenticates by assertion.
async fn token(
    server: Arc<Mutex<Registration>>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let form = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let answer = match check(&mut server.lock().unwrap(), &form) {
        Ok(()) => (
            200,
            json!({"access_token": format!("at-{}", fastrand::u64(..)), "token_type": "Bearer", "expires_in": 300}),
        ),
        Err(reason) => (
            401,
            json!({"error": "invalid_client", "error_description": reason}),
        ),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(answer.1.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(answer.0).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// What an authorization server checks of a client assertion (RFC 7523 §3).
fn check(server: &mut Registration, form: &Bytes) -> Result<(), &'static str> {
    server.last_form = Some(form.clone());
    let param = |name: &str| {
        url::form_urlencoded::parse(form)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    };
    if param("client_assertion_type").as_deref() != Some(JWT_BEARER) {
        return Err("a jwt-bearer client assertion is required");
    }
    let assertion = param("client_assertion").ok_or("no client_assertion")?;
    let (signing_input, signature) = assertion.rsplit_once('.').ok_or("not a JWS")?;
    let signature = BASE64URL.decode(signature).map_err(|_| "bad signature")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &server.public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| "the signature does not verify")?;
    let claims = signing_input.split('.').nth(1).ok_or("not a JWS")?;
    let claims: Value = BASE64URL
        .decode(claims)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("unreadable claims")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims["iss"] != CLIENT_ID || claims["sub"] != CLIENT_ID {
        return Err("iss and sub must be the client id");
    }
    if claims["aud"] != server.token_url.as_str() {
        return Err("aud must be this token endpoint");
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp < now) {
        return Err("the assertion has expired");
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
    if !server.seen_jtis.insert(jti) {
        return Err("this assertion was used before");
    }
    Ok(())
}
