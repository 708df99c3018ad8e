//! Sender-constrained tokens: DPoP (RFC 9449). A DPoP-bound access token works only beside a
//! proof, signed for each request by the key it was bound to, that names the request's method
//! and URL, the token, and the server's latest nonce.
//!
//! This module holds the proof and its key, [`DpopKey`], and the nonces each origin hands out,
//! [`Nonces`]. (Issue 15, in progress: the layers and grants do not carry proofs yet; a
//! proof made here goes on a request the application sends itself.)
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

pub use nonce::Nonces;
pub use proof::{DpopKey, ProofRequest};
