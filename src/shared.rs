//! [`Shared`] and [`Handle`]: what the tower service and the reqwest middleware read per
//! request.

use std::future::Future;
use std::sync::Arc;

use crate::BoxError;
use crate::cell::TokenCell;
use http::{HeaderMap, StatusCode};

use crate::classify::{ClassifyRejection, Verdict, default_verdict};
use crate::replay::Replayers;

/// A layer value's request-path options: set per value, copied into each service it builds.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) classifier: Classifier,
    pub(crate) retry: bool,
    pub(crate) allow_insecure_http: bool,
    /// Body types this layer value was taught to replay.
    pub(crate) replayers: Replayers,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            classifier: Classifier::Default,
            retry: true,
            allow_insecure_http: false,
            replayers: Replayers::default(),
        }
    }
}

/// What a single-token service needs per request: the shared cell and this layer value's
/// options. One `Arc`, so a request clones one pointer.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) cell: Arc<TokenCell>,
    pub(crate) options: Options,
    /// The cell's tokens are bound to a DPoP key: each request needs a proof of its own,
    /// signed asynchronously, so none takes the fast path.
    pub(crate) dpop: bool,
}

/// What a request keeps of its layer for the slow paths: the token cell it was sent with (or
/// how to find it) and the options of the layer value that sent it. The single-token layer
/// keeps both behind one `Arc`; a keyed layer pairs the key's cell, or the key, with its
/// options.
pub(crate) trait Handle: Send + Sync + 'static {
    fn options(&self) -> &Options;

    /// The cell whose token the request was sent with; `None` if it is gone (a keyed
    /// layer evicted it), and the token with it.
    fn sent_with(&self) -> Option<Arc<TokenCell>>;

    /// The cell to take a token from now: the one the request was sent with, or if that one
    /// is gone, the one that replaced it (which a keyed layer may have to make).
    fn cell(&self) -> impl Future<Output = Result<Arc<TokenCell>, BoxError>> + Send + '_;
}

impl Handle for Arc<Shared> {
    #[inline]
    fn options(&self) -> &Options {
        &self.options
    }

    fn sent_with(&self) -> Option<Arc<TokenCell>> {
        Some(self.cell.clone())
    }

    fn cell(&self) -> impl Future<Output = Result<Arc<TokenCell>, BoxError>> + Send + '_ {
        std::future::ready(Ok(self.cell.clone()))
    }
}

/// The rule that reads each response: the default one called directly, since a dynamic call
/// on every response costs more than the rule itself (a status compared with 401), or the
/// application's own.
#[derive(Clone)]
pub(crate) enum Classifier {
    Default,
    Custom(Arc<dyn ClassifyRejection>),
}

impl Classifier {
    #[inline]
    pub(crate) fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        match self {
            Classifier::Default => default_verdict(status, headers),
            Classifier::Custom(classifier) => classifier.classify(status, headers),
        }
    }

    /// Only a custom classifier asks to read a body ([`Verdict::ReadBody`]).
    pub(crate) fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        prefix: &[u8],
    ) -> bool {
        match self {
            Classifier::Default => false,
            Classifier::Custom(classifier) => classifier.classify_body(status, headers, prefix),
        }
    }
}
