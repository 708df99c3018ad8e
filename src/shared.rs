//! [`Shared`] and [`Handle`]: what the tower service and the reqwest middleware read per
//! request.

use std::sync::Arc;

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
}

/// What a request keeps of its layer for the slow paths: the token cell it was sent with and
/// the options of the layer value that sent it. The single-token layer keeps both behind one
/// `Arc`; a keyed layer pairs the key's cell with its options.
pub(crate) trait Handle: Send + Sync + 'static {
    fn cell(&self) -> &Arc<TokenCell>;
    fn options(&self) -> &Options;
}

impl Handle for Arc<Shared> {
    #[inline]
    fn cell(&self) -> &Arc<TokenCell> {
        &self.cell
    }

    #[inline]
    fn options(&self) -> &Options {
        &self.options
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
