//! Sender-constrained tokens (DPoP, RFC 9449): the client's key proves possession on every
//! request, so a stolen access token is worth nothing without it.
//!
//! One in-process server on 127.0.0.1 plays both parts. Its token endpoint wants a proof and
//! its nonce, and binds each token to the proof key's thumbprint. Its API wants
//! `Authorization: DPoP`, and checks each proof:
//! - the signature, against the key in the proof's header (aws-lc-rs);
//! - `htm`, `htu`, `ath` and the key's binding;
//! - a `jti` never seen before, and its own nonce, which it rotates once midway.
//!
//! The client only gives its grant a key: the layer does the rest.
//!
//! ```text
//! cargo run --example dpop
//! ```

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oauth_refresh::dpop::DpopKey;
use oauth_refresh::oauth::Es256Key;
use oauth_refresh::{ClientCredentials, RefreshLayer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// What the server keeps: the tokens it bound and to which key, the proofs it has seen, the
/// nonces it wants now.
#[derive(Default)]
struct Server {
    origin: String,
    bound: HashMap<String, String>,
    seen_jtis: HashSet<String>,
    token_nonce: String,
    api_nonce: String,
    token_requests: usize,
    api_ok: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let server = Arc::new(Mutex::new(Server {
        origin: origin.clone(),
        token_nonce: "as-nonce-1".into(),
        api_nonce: "api-nonce-1".into(),
        ..Server::default()
    }));
    let accept = tokio::spawn(serve(listener, server.clone()));

    // The client: a key, given to the grant. Every request through the layer is proved.
    let key = DpopKey::es256(Es256Key::generate()?);
    println!("the client's key: {key:?}");
    let grant =
        ClientCredentials::new(format!("{origin}/token"), "svc", "s3cr3t").dpop(key.clone());
    let layer = RefreshLayer::new(grant);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone())
        .build();

    for i in 1..=6 {
        if i == 4 {
            server.lock().unwrap().api_nonce = "api-nonce-2".into();
            println!("-- the API rotates its nonce");
        }
        let response = client
            .get(format!("{origin}/api/items/{i}?page=1"))
            .send()
            .await?;
        let status = response.status();
        println!("request {i}: {status} {}", response.text().await?);
        assert_eq!(status, 200);
    }

    let stats = layer.stats();
    let server = server.lock().unwrap();
    println!(
        "token requests: {} (one answered use_dpop_nonce, resent once); API requests verified: {}; \
         nonce resends at the API: {}",
        server.token_requests, server.api_ok, stats.nonce_resends
    );
    // The token endpoint: the first request learned its nonce. The API: its first nonce and
    // its rotation each cost one resend, and no refresh.
    assert_eq!(server.token_requests, 2);
    assert_eq!(server.api_ok, 6);
    assert_eq!(stats.nonce_resends, 2);
    assert_eq!(stats.refreshes, 1);
    assert!(server.bound.values().all(|jkt| jkt == key.thumbprint()));
    accept.abort();
    Ok(())
}

async fn serve(listener: TcpListener, server: Arc<Mutex<Server>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let server = server.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let answer = answer(&mut server.lock().unwrap(), &request);
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}

/// The token endpoint (`/token`) and the API (everything else).
fn answer<B>(server: &mut Server, request: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let htu = format!("{}{}", server.origin, request.uri().path());
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let (status, nonce, challenge, body) = if request.uri().path() == "/token" {
        server.token_requests += 1;
        let nonce = server.token_nonce.clone();
        match verify(server, header("dpop"), "POST", &htu, None, &nonce) {
            Ok(jkt) => {
                let token = format!("at-{}", fastrand::u64(..));
                server.bound.insert(token.clone(), jkt);
                (
                    200,
                    nonce,
                    None,
                    json!({"access_token": token, "token_type": "DPoP", "expires_in": 300}),
                )
            }
            Err(error) => (400, nonce, None, json!({"error": error})),
        }
    } else {
        let nonce = server.api_nonce.clone();
        let token = header("authorization").and_then(|v| v.strip_prefix("DPoP "));
        let checked = token.ok_or("invalid_token").and_then(|token| {
            let jkt = verify(
                server,
                header("dpop"),
                request.method().as_str(),
                &htu,
                Some(token),
                &nonce,
            )?;
            match server.bound.get(token) == Some(&jkt) {
                true => Ok(()),
                false => Err("invalid_token"),
            }
        });
        match checked {
            Ok(()) => {
                server.api_ok += 1;
                (200, nonce, None, json!({"items": []}))
            }
            Err(error) => (
                401,
                nonce,
                Some(format!(r#"DPoP error="{error}""#)),
                json!({}),
            ),
        }
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("dpop-nonce", nonce.parse().unwrap());
    if let Some(challenge) = challenge {
        headers.insert("www-authenticate", challenge.parse().unwrap());
    }
    response
}

/// Checks a proof (RFC 9449 §4.3) and returns its key's thumbprint, or the OAuth error code.
fn verify(
    server: &mut Server,
    proof: Option<&str>,
    htm: &str,
    htu: &str,
    token: Option<&str>,
    nonce: &str,
) -> Result<String, &'static str> {
    let proof = proof.ok_or("invalid_dpop_proof")?;
    let part = |i: usize| -> Option<Value> {
        let bytes = BASE64URL.decode(proof.split('.').nth(i)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (header, claims) = part(0).zip(part(1)).ok_or("invalid_dpop_proof")?;
    let jwk = &header["jwk"];
    if header["typ"] != "dpop+jwt" || header["alg"] != "ES256" || jwk["crv"] != "P-256" {
        return Err("invalid_dpop_proof");
    }
    let mut point = vec![4];
    for coordinate in ["x", "y"] {
        let value = jwk[coordinate].as_str().ok_or("invalid_dpop_proof")?;
        point.extend(BASE64URL.decode(value).map_err(|_| "invalid_dpop_proof")?);
    }
    let (signing_input, signature) = proof.rsplit_once('.').ok_or("invalid_dpop_proof")?;
    let signature = BASE64URL
        .decode(signature)
        .map_err(|_| "invalid_dpop_proof")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| "invalid_dpop_proof")?;
    let ath = token.map(|token| BASE64URL.encode(Sha256::digest(token)));
    if claims["htm"] != htm || claims["htu"] != htu || claims["ath"].as_str() != ath.as_deref() {
        return Err("invalid_dpop_proof");
    }
    if claims["nonce"] != nonce {
        return Err("use_dpop_nonce");
    }
    if !server
        .seen_jtis
        .insert(claims["jti"].as_str().unwrap_or_default().to_owned())
    {
        return Err("invalid_dpop_proof");
    }
    // RFC 7638: the required members in lexicographic order.
    let canonical = format!(
        r#"{{"crv":{},"kty":{},"x":{},"y":{}}}"#,
        jwk["crv"], jwk["kty"], jwk["x"], jwk["y"]
    );
    Ok(BASE64URL.encode(Sha256::digest(canonical)))
}
