//! [`KeyedRefresh`]: the tower service of a keyed layer.

use std::fmt;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::key::{KeyError, KeyFrom};
use super::map::Cells;
use crate::BoxError;
use crate::body::RefreshBody;
use crate::cell::TokenCell;
use crate::future::{self, Exchange};
use crate::service::{Gate, gate, replay_copy, send_later, send_now};
use crate::shared::{Handle, Options};

/// Attaches the token of each request's key and resends once on rejection. Built by
/// [`KeyedRefreshLayer`](super::KeyedRefreshLayer).
///
/// # Clone
///
/// As [`Refresh`](crate::Refresh): the inner service must be `Clone`, for the resend.
///
/// # Cost
///
/// Beyond [`Refresh`](crate::Refresh)'s: the key read from the request (an extension lookup
/// and a clone of the key), a hash of it, a shard's read lock for the map lookup, and one more
/// `Arc` clone (the key's cell): 1.10x the single-token layer's time when every request
/// names the same key (`benches/keyed.rs`). Over many keys at random, add the cache misses of
/// reading a cell no recent request read: 1.83x over 10,000 keys. A key's first request, and
/// a request whose key's cell was evicted, wait for the factory.
pub struct KeyedRefresh<S, K> {
    inner: S,
    cells: Arc<Cells<K>>,
    keys: KeyFrom<K>,
    options: Arc<Options>,
}

impl<S, K> KeyedRefresh<S, K> {
    pub(super) fn new(
        inner: S,
        cells: Arc<Cells<K>>,
        keys: KeyFrom<K>,
        options: Arc<Options>,
    ) -> Self {
        KeyedRefresh {
            inner,
            cells,
            keys,
            options,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K> Clone for KeyedRefresh<S, K> {
    fn clone(&self) -> Self {
        KeyedRefresh {
            inner: self.inner.clone(),
            cells: self.cells.clone(),
            keys: self.keys.clone(),
            options: self.options.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for KeyedRefresh<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRefresh")
            .field("inner", &self.inner)
            .field("cells", &self.cells)
            .finish_non_exhaustive()
    }
}

/// What a keyed request's future keeps: its key's cell and the service's options.
pub(crate) struct KeyedHandle {
    cell: Arc<TokenCell>,
    options: Arc<Options>,
}

impl Handle for KeyedHandle {
    #[inline]
    fn cell(&self) -> &Arc<TokenCell> {
        &self.cell
    }

    #[inline]
    fn options(&self) -> &Options {
        &self.options
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for KeyedRefresh<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    K: Clone + Eq + Hash + Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<RefreshBody<ResBody>>;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S, ReqBody, ResBody>;

    /// Only the inner service's readiness, as [`Refresh`](crate::Refresh).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let retry = match gate(&self.options, &request) {
            Gate::Passthrough => {
                return KeyedResponseFuture::new(Exchange::passthrough(self.inner.call(request)));
            }
            Gate::Refused(error) => return KeyedResponseFuture::new(Exchange::failed(error)),
            Gate::Send { retry } => retry,
        };
        let Some(key) = self.keys.of(&request) else {
            return KeyedResponseFuture::new(Exchange::failed(KeyError::missing().into()));
        };
        let replay = replay_copy(&self.options, &request, retry);
        let options = self.options.clone();
        let exchange = match self.cells.get(&key) {
            Some(cell) => match cell.current() {
                Some((authorization, generation)) => send_now(
                    &mut self.inner,
                    request,
                    authorization,
                    (generation, KeyedHandle { cell, options }),
                    retry,
                    replay,
                ),
                None => send_later(&mut self.inner, retry, replay, move |service, resend| {
                    let handle = KeyedHandle { cell, options };
                    future::send_after_refresh(handle, service, request, resend)
                }),
            },
            // The key's first request (or its first since eviction): make its cell, then go
            // as a request that waits for a refresh.
            None => {
                let cells = self.cells.clone();
                send_later(
                    &mut self.inner,
                    retry,
                    replay,
                    move |service, resend| async move {
                        let cell = cells.resolve(&key).await?;
                        let handle = KeyedHandle { cell, options };
                        future::send_after_refresh(handle, service, request, resend).await
                    },
                )
            }
        };
        KeyedResponseFuture::new(exchange)
    }
}

pin_project! {
    /// The response future of [`KeyedRefresh`].
    pub struct KeyedResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        #[pin]
        exchange: Exchange<S, ReqBody, ResBody, KeyedHandle>,
    }
}

impl<S, ReqBody, ResBody> KeyedResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn new(exchange: Exchange<S, ReqBody, ResBody, KeyedHandle>) -> Self {
        KeyedResponseFuture { exchange }
    }
}

impl<S, ReqBody, ResBody> std::future::Future for KeyedResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<RefreshBody<ResBody>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().exchange.poll(cx)
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for KeyedResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedResponseFuture")
            .field("state", &self.exchange.state())
            .finish()
    }
}
