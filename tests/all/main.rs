//! Integration tests: the layer in tower stacks, with in-memory token sources and APIs.
//! Time-dependent tests run on tokio's paused clock.

mod alloc;
// Device authorization and sign-out (issue 14): the grants over real HTTP.
#[cfg(feature = "reqwest")]
mod api_server;
#[cfg(all(feature = "reqwest", feature = "jwt-signing"))]
mod client_assertion;
#[cfg(feature = "reqwest")]
mod device;
#[cfg(feature = "jwt-signing")]
mod dpop;
#[cfg(feature = "reqwest")]
mod exchange;
#[cfg(feature = "reqwest")]
mod faults;
#[cfg(feature = "reqwest")]
mod interop_device;
// DPoP proofs made with the built-in ES256 key.
#[cfg(all(feature = "reqwest", feature = "jwt-signing"))]
mod interop_dpop;
#[cfg(feature = "reqwest")]
mod revocation;
// The grant tests use reqwest, the grants' default HTTP client.
#[cfg(feature = "reqwest")]
mod grants;
#[cfg(feature = "reqwest")]
mod hostile;
#[cfg(feature = "reqwest")]
mod interop;
#[cfg(feature = "reqwest")]
mod interop_exchange;
#[cfg(all(feature = "reqwest", feature = "jwt-signing"))]
mod interop_private_key_jwt;
mod keyed;
#[cfg(feature = "reqwest")]
mod keyed_http;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "reqwest")]
mod middleware;
mod oidc_provider;
mod outcomes;
mod persistence;
#[cfg(feature = "redis")]
mod redis_server;
mod refresh;
mod rejections;
#[cfg(all(feature = "redis", feature = "reqwest"))]
mod replicas;
mod request_path;
mod retry;
mod runtime;
mod secrets;
#[cfg(feature = "redis")]
mod shared_store;
#[cfg(feature = "reqwest")]
mod soak;
mod stack;
#[cfg(feature = "redis")]
mod store;
mod support;
mod token_endpoint;
