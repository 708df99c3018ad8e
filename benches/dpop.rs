//! What a DPoP proof costs beyond its signature (issue 15, point 5).
//!
//! One group, `dpop_proof`:
//!
//! - `sign_es256`: the bare signing operation of the crypto crate the built-in key uses
//!   (aws-lc-rs, ECDSA P-256 SHA-256, fixed r||s) over a signing input as long as a proof's
//!   (the baseline);
//! - `proof_es256`: `DpopKey::proof` with the built-in `Es256Key` for an API request (a fresh
//!   `jti`, `htm`, `htu`, `iat`, `ath` of a 43-character token, a nonce): the claims, their
//!   encoding and the same signature.
//!
//! - `bearer_request`: a request through a `RefreshLayer` whose token is FRESH, over an inner
//!   service that answers at once (the baseline of the second ratio);
//! - `dpop_request`: the same request through the same kind of layer over a source whose
//!   tokens are bound to the built-in key: the proof, its headers and the DPoP path.
//!
//! Targets: the proof within 1.15x of the signature; the DPoP request costs the proof and
//! little more. After measuring, the bench checks that the proofs it made verify with the key
//! in their header, and that the DPoP requests carried one.
//!
//! ```text
//! cargo bench --bench dpop
//! ```
//!
//! For callgrind, `DPOP_INSTRUCTIONS=N` makes N signatures and N proofs, each in a function of
//! its own, instead of running criterion; take two values of N and divide the difference:
//!
//! ```text
//! DPOP_INSTRUCTIONS=1000 valgrind --tool=callgrind --toggle-collect='*drive_proof*' \
//!     target/release/deps/dpop-<hash>
//! ```
//!
//! (and `*drive_bearer_request*`, `*drive_dpop_request*` for the requests).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::Full;
use oauth_refresh::dpop::{DpopKey, ProofRequest};
use oauth_refresh::oauth::Es256Key;
use oauth_refresh::{
    AccessToken, BoxFuture, Refresh, RefreshError, RefreshLayer, TokenRequest, TokenSet,
    TokenSource,
};
use tower::{Layer, Service, ServiceExt};

const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
const NONCE: &str = "eyJ7S_zG.eyJH0-Z.HX4w-7v";

/// The built-in key's signer answers at once: one poll, no runtime.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the built-in key signs without waiting"),
    }
}

/// A token for an hour, bound to `key` if there is one.
struct Source {
    key: Option<DpopKey>,
}

impl TokenSource for Source {
    fn fetch(&self, _request: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        let set = TokenSet::new(AccessToken::new(TOKEN)).with_expires_in(Duration::from_secs(3600));
        Box::pin(std::future::ready(Ok(set)))
    }

    fn dpop_key(&self) -> Option<&DpopKey> {
        self.key.as_ref()
    }
}

type Body = Full<Bytes>;
type Inner = tower::util::BoxCloneService<http::Request<Body>, http::Response<Body>, Infallible>;

/// The API: answers at once; notes whether the last request carried a proof.
fn api(proved: Arc<AtomicBool>) -> Inner {
    tower::util::BoxCloneService::new(tower::service_fn(move |request: http::Request<Body>| {
        proved.store(request.headers().contains_key("dpop"), Ordering::Relaxed);
        std::future::ready(Ok(http::Response::new(Body::default())))
    }))
}

/// A layer whose token is in already, over [`api`].
fn service(
    runtime: &tokio::runtime::Runtime,
    key: Option<DpopKey>,
    proved: Arc<AtomicBool>,
) -> Refresh<Inner> {
    let layer = RefreshLayer::new(Source { key });
    runtime.block_on(layer.refresh()).expect("a token");
    layer.layer(api(proved))
}

fn api_request() -> http::Request<Body> {
    http::Request::get("https://api.example.com/v1/items?page=2")
        .body(Body::default())
        .expect("a request")
}

/// One request, readied and called, to its response.
async fn send(service: &mut Refresh<Inner>) {
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(api_request())
        .await
        .expect("a response");
    black_box(response);
}

fn main() {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("a P-256 key");
    let bare = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .expect("the key");
    let key = DpopKey::es256(Es256Key::from_pkcs8_der(pkcs8.as_ref()).expect("the key"));
    let method = http::Method::GET;
    let uri: http::Uri = "https://api.example.com/v1/items?page=2".parse().unwrap();
    let request = || {
        ProofRequest::new(&method, &uri)
            .access_token(TOKEN)
            .nonce(NONCE)
    };
    // A signing input as long as a proof's.
    let sample = now(key.proof(request())).expect("a proof");
    let signing_input = sample.as_bytes()[..sample.rfind('.').unwrap()].to_vec();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let bearer_proved = Arc::new(AtomicBool::new(false));
    let dpop_proved = Arc::new(AtomicBool::new(false));
    let mut bearer = service(&runtime, None, bearer_proved.clone());
    let mut dpop = service(&runtime, Some(key.clone()), dpop_proved.clone());

    if let Ok(n) = std::env::var("DPOP_INSTRUCTIONS") {
        let n = n.parse().expect("a number of operations");
        drive_sign(&bare, &signing_input, n);
        drive_proof(&key, request, n);
        drive_bearer_request(&runtime, &mut bearer, n);
        drive_dpop_request(&runtime, &mut dpop, n);
        return;
    }

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("dpop_proof");
    group.bench_function("sign_es256", |b| {
        b.iter(|| {
            bare.sign(&SystemRandom::new(), black_box(&signing_input))
                .expect("a signature")
        })
    });
    let mut last = String::new();
    group.bench_function("proof_es256", |b| {
        b.iter(|| {
            last = now(key.proof(black_box(request()))).expect("a proof");
        })
    });
    group.bench_function("bearer_request", |b| {
        b.iter(|| runtime.block_on(send(&mut bearer)))
    });
    group.bench_function("dpop_request", |b| {
        b.iter(|| runtime.block_on(send(&mut dpop)))
    });
    group.finish();
    criterion.final_summary();

    // What was timed: bearer requests without a proof, DPoP requests with one.
    runtime.block_on(send(&mut bearer));
    runtime.block_on(send(&mut dpop));
    assert!(
        !bearer_proved.load(Ordering::Relaxed),
        "a bearer request carries no proof"
    );
    assert!(
        dpop_proved.load(Ordering::Relaxed),
        "a DPoP request carries a proof"
    );

    // What was timed is a proof: it verifies with the bench's own public key.
    let proof = if last.is_empty() { sample } else { last };
    let (input, signature) = proof.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, bare.public_key().as_ref())
        .verify(input.as_bytes(), &BASE64URL.decode(signature).unwrap())
        .expect("the proof verifies");
}

#[inline(never)]
fn drive_sign(key: &EcdsaKeyPair, signing_input: &[u8], n: u64) {
    for _ in 0..n {
        black_box(key.sign(&SystemRandom::new(), black_box(signing_input))).expect("signed");
    }
}

#[inline(never)]
fn drive_proof<'a>(key: &DpopKey, request: impl Fn() -> ProofRequest<'a>, n: u64) {
    for _ in 0..n {
        black_box(now(key.proof(black_box(request())))).expect("a proof");
    }
}

#[inline(never)]
fn drive_bearer_request(runtime: &tokio::runtime::Runtime, service: &mut Refresh<Inner>, n: u64) {
    for _ in 0..n {
        runtime.block_on(send(service));
    }
}

#[inline(never)]
fn drive_dpop_request(runtime: &tokio::runtime::Runtime, service: &mut Refresh<Inner>, n: u64) {
    for _ in 0..n {
        runtime.block_on(send(service));
    }
}
