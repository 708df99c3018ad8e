//! [`Shared`]: what the tower service and the reqwest middleware read per request.

use std::sync::Arc;

use crate::cell::TokenCell;
use crate::classify::ClassifyRejection;
use crate::replay::Replayers;

/// What a service needs per request: the shared cell and this layer value's options. One
/// `Arc`, so a request clones one pointer.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) cell: Arc<TokenCell>,
    pub(crate) classifier: Arc<dyn ClassifyRejection>,
    pub(crate) retry: bool,
    pub(crate) allow_insecure_http: bool,
    /// Body types this layer value was taught to replay.
    pub(crate) replayers: Replayers,
}
