//! Sender-constrained tokens: DPoP (RFC 9449). A DPoP-bound access token works only beside a
//! proof, signed for each request by the key it was bound to, that names the request's method
//! and URL, the token, and the server's latest nonce.
//!
//! Give a grant a key with `.dpop(key)` (every grant has the setter), and the layer over it
//! does the rest:
//!
//! - every token request carries a proof, and the answer must be a token of type `DPoP`;
//! - every API request carries `Authorization: DPoP <token>` and a proof of its own (method,
//!   URL without query, the token's hash, the origin's newest nonce);
//! - a nonce is learned from every answer that carries `DPoP-Nonce`, per origin, and an
//!   answer asking for it (`use_dpop_nonce`: a 400 from the token endpoint, a 401 with a
//!   `DPoP` challenge from an API) is resent once with it. That resend is separate from the
//!   resend after a rejected token: a request gets at most one of each, and never loops.
//!
//! A custom [`TokenSource`](crate::TokenSource) binds its tokens the same way, by returning
//! its key from [`dpop_key`](crate::TokenSource::dpop_key). Keyed layers prove each key's
//! requests with that key's source's key. Replicas sharing tokens through the `store` module
//! (feature `store`) must share the key too: a token works only with the key it was bound to.
//!
//! ```
//! # #[cfg(feature = "jwt-signing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use oauth_refresh::dpop::DpopKey;
//! use oauth_refresh::oauth::Es256Key;
//! use oauth_refresh::{ClientCredentials, RefreshLayer};
//! use tower::{Layer, ServiceExt};
//!
//! let key = DpopKey::es256(Es256Key::generate()?);
//! let grant = ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t")
//!     .dpop(key.clone());
//! let layer = RefreshLayer::new(grant);
//! # drop(layer); // No network here: a source like the grant, bound to the same key.
//! # let layer = RefreshLayer::new(Bound(key.clone()));
//! # struct Bound(DpopKey);
//! # impl oauth_refresh::TokenSource for Bound {
//! #     fn fetch(&self, _: oauth_refresh::TokenRequest) -> oauth_refresh::BoxFuture<'_, Result<oauth_refresh::TokenSet, oauth_refresh::RefreshError>> {
//! #         Box::pin(async { Ok(oauth_refresh::TokenSet::new(oauth_refresh::AccessToken::new("at-1"))) })
//! #     }
//! #     fn dpop_key(&self) -> Option<&DpopKey> { Some(&self.0) }
//! # }
//!
//! let api = tower::service_fn(|request: http::Request<String>| async move {
//!     assert_eq!(request.headers()["authorization"], "DPoP at-1");
//!     assert_eq!(request.headers()["dpop"].as_bytes().split(|b| *b == b'.').count(), 3);
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! });
//! let request = http::Request::get("https://api.example.com/items").body(String::new())?;
//! layer.layer(api).oneshot(request).await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "jwt-signing"))]
//! # fn main() {}
//! ```
//!
//! This module holds the proof and its key, [`DpopKey`], and the nonces each origin hands
//! out, [`Nonces`], for requests the application sends itself: a proof for any request.
//!
//! To bind the authorization code itself as well (RFC 9449 §10), add `dpop_jkt` to the
//! authorization request: `AuthorizationCode::param("dpop_jkt", key.thumbprint())`.
//!
//! ```
//! # #[cfg(feature = "jwt-signing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use oauth_refresh::dpop::{DpopKey, ProofRequest};
//! use oauth_refresh::oauth::Es256Key;
//!
//! let key = DpopKey::es256(Es256Key::generate().unwrap());
//! let uri = "https://api.example.com/items?page=2".parse().unwrap();
//! let proof = key
//!     .proof(ProofRequest::new(&http::Method::GET, &uri).access_token("at-1"))
//!     .await
//!     .unwrap();
//! assert_eq!(proof.split('.').count(), 3);
//! // The thumbprint the server binds the token to (`cnf.jkt`).
//! assert_eq!(key.thumbprint().len(), 43);
//! # }
//! # #[cfg(not(feature = "jwt-signing"))]
//! # fn main() {}
//! ```

mod nonce;
mod proof;
pub(crate) mod tower;

pub use nonce::Nonces;
pub use proof::{DpopKey, ProofRequest};

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode, Uri};

use crate::classify::challenges;
use crate::error::{ConfigurationError, RefreshError};
use crate::extension::RetryStatus;

/// The `DPoP` request header, which carries the proof.
pub(crate) const DPOP: &str = "dpop";

/// The error an authorization server (400, in the body) or a resource server (401, in its
/// `DPoP` challenge) answers when a proof lacks the nonce it wants (RFC 9449 §8, §9).
pub(crate) const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// What a grant or a token cell with a DPoP key keeps: the key, and the newest nonce of each
/// origin its requests went to. Clones share the nonces.
#[derive(Clone, Debug)]
pub(crate) struct Dpop {
    pub(crate) key: DpopKey,
    pub(crate) nonces: Nonces,
}

impl Dpop {
    pub(crate) fn new(key: DpopKey) -> Self {
        Dpop {
            key,
            nonces: Nonces::default(),
        }
    }

    /// A proof for a request of `method` to `uri`, with the access token's hash if it carries
    /// one and the origin's newest nonce if it has one: the `DPoP` header's value (marked
    /// sensitive), and the nonce it holds, to tell later whether a `use_dpop_nonce` answer
    /// brought a new one.
    pub(crate) async fn proof(
        &self,
        method: &Method,
        uri: &Uri,
        access_token: Option<&str>,
    ) -> Result<(HeaderValue, Option<Arc<str>>), RefreshError> {
        let nonce = self.nonces.get(uri);
        let mut request = ProofRequest::new(method, uri);
        if let Some(token) = access_token {
            request = request.access_token(token);
        }
        if let Some(nonce) = &nonce {
            request = request.nonce(nonce);
        }
        let proof = self.key.proof(request).await?;
        // Base64url and dots: always a valid header value.
        let mut value = HeaderValue::try_from(proof).map_err(|_| {
            ConfigurationError::local("dpop_proof")
                .with_description("the proof is not a header value")
        })?;
        value.set_sensitive(true);
        Ok((value, nonce))
    }

    /// Learns the nonce an answer from `uri` carries, and says whether a request sent with
    /// nonce `sent` should go again with a new one: the server asked for it (`asked`), and
    /// the origin's nonce is now another than the one sent. Resending with the same nonce
    /// could only get the same answer.
    pub(crate) fn learn(
        &self,
        uri: &Uri,
        headers: &http::HeaderMap,
        sent: Option<&str>,
        asked: bool,
    ) -> bool {
        self.nonces.learn(uri, headers);
        asked
            && self
                .nonces
                .get(uri)
                .is_some_and(|newest| Some(&*newest) != sent)
    }
}

/// Whether a resource server's answer asks for a proof with its nonce: a 401 whose `DPoP`
/// challenge says `use_dpop_nonce` (RFC 9449 §9).
pub(crate) fn api_asks_for_nonce(status: StatusCode, headers: &http::HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED
        && challenges(headers).any(|challenge| {
            challenge.is_scheme("DPoP") && challenge.param("error") == Some(USE_DPOP_NONCE)
        })
}

/// Which resends a request has had: one of each kind at most.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Resent {
    pub(crate) nonce: bool,
    pub(crate) token: bool,
}

impl Resent {
    /// The mark on the answer returned: [`RetryStatus::Retried`] once the token was
    /// replaced, else why a resend that was needed could not be made.
    pub(crate) fn status(self, not_resent: Option<RetryStatus>) -> Option<RetryStatus> {
        match self.token {
            true => Some(RetryStatus::Retried),
            false => not_resent,
        }
    }
}
