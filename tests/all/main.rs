//! Integration tests: the layer in tower stacks, with in-memory token sources and APIs.
//! Time-dependent tests run on tokio's paused clock.

mod alloc;
#[cfg(feature = "reqwest")]
mod api_server;
#[cfg(feature = "reqwest")]
mod faults;
// The grant tests use reqwest, the grants' default HTTP client.
#[cfg(feature = "reqwest")]
mod grants;
#[cfg(feature = "reqwest")]
mod hostile;
#[cfg(feature = "reqwest")]
mod interop;
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
