//! [`KeyedRefresh`]: the tower service of a keyed layer.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::key::{KeyError, KeyFrom};
use super::map::{Cells, Found};
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
/// and a clone of the key), one hash of it, and a shard's read lock for the lookup. A key
/// whose token is FRESH is answered from the map's bucket, where its cell copies each new
/// token, and nothing else of the key is read: 1.05x the single-token layer's time when every
/// request names the same key, 1.20x over 10,000 keys at random (`benches/keyed.rs`, medians
/// of ten runs; callgrind counts 2.7 cache lines missed per request, 3.1 for a bare
/// `HashMap` of headers). A token that is not FRESH costs a clone of the cell's `Arc` and the
/// single-token path. A key's first request, and a request whose key's cell was evicted, wait
/// for the factory.
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

/// What a keyed request's future keeps: its key's cell, or (for a request sent with the FRESH
/// token its key's bucket holds) the key and the map, so that the request touches nothing of
/// the cell unless the server rejects the token.
pub(crate) enum KeyedHandle<K> {
    Cell {
        cell: Arc<TokenCell>,
        options: Arc<Options>,
    },
    Key {
        key: K,
        cells: Arc<Cells<K>>,
        options: Arc<Options>,
    },
}

impl<K> Handle for KeyedHandle<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    #[inline]
    fn options(&self) -> &Options {
        match self {
            KeyedHandle::Cell { options, .. } | KeyedHandle::Key { options, .. } => options,
        }
    }

    fn sent_with(&self) -> Option<Arc<TokenCell>> {
        match self {
            KeyedHandle::Cell { cell, .. } => Some(cell.clone()),
            // Whichever cell the key has now: should it be one made after an eviction, the
            // generation the request was sent with is none of its own.
            KeyedHandle::Key { key, cells, .. } => cells.get(key),
        }
    }

    async fn cell(&self) -> Result<Arc<TokenCell>, BoxError> {
        match self {
            KeyedHandle::Cell { cell, .. } => Ok(cell.clone()),
            KeyedHandle::Key { key, cells, .. } => Ok(cells.resolve(key).await?),
        }
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
    type Future = KeyedResponseFuture<S, K, ReqBody, ResBody>;

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
        let exchange = match self.cells.find(&key) {
            Found::Fresh { header, generation } => {
                let cells = self.cells.clone();
                let handle = KeyedHandle::Key {
                    key,
                    cells,
                    options,
                };
                send_now(
                    &mut self.inner,
                    request,
                    header,
                    (generation, handle),
                    retry,
                    replay,
                )
            }
            // A DPoP cell's token is never in the bucket, and each of its requests needs a
            // proof of its own: none goes at once.
            Found::Cell(cell) if cell.dpop().is_some() => {
                send_later(&mut self.inner, retry, replay, move |service, resend| {
                    send_proved::<_, K, _, _>(cell, options, service, request, resend)
                })
            }
            Found::Cell(cell) => match cell.current() {
                Some((authorization, generation)) => send_now(
                    &mut self.inner,
                    request,
                    authorization,
                    (generation, KeyedHandle::Cell { cell, options }),
                    retry,
                    replay,
                ),
                None => send_later(&mut self.inner, retry, replay, move |service, resend| {
                    let handle = KeyedHandle::<K>::Cell { cell, options };
                    future::send_after_refresh(handle, service, request, resend)
                }),
            },
            // The key's first request (or its first since eviction): make its cell, then go
            // as a request that waits for a refresh.
            Found::Absent => {
                let cells = self.cells.clone();
                send_later(
                    &mut self.inner,
                    retry,
                    replay,
                    move |service, resend| async move {
                        let cell = cells.resolve(&key).await?;
                        if cell.dpop().is_some() {
                            let proved =
                                send_proved::<_, K, _, _>(cell, options, service, request, resend);
                            return proved.await;
                        }
                        let handle = KeyedHandle::<K>::Cell { cell, options };
                        future::send_after_refresh(handle, service, request, resend).await
                    },
                )
            }
        };
        KeyedResponseFuture::new(exchange)
    }
}

/// A request of a DPoP cell (see [`dpop::tower::send`](crate::dpop::tower::send)), boxed: the
/// bearer requests beside it keep a small future.
fn send_proved<S, K, ReqBody, ResBody>(
    cell: Arc<TokenCell>,
    options: Arc<Options>,
    service: S,
    request: Request<ReqBody>,
    resend: future::Resend<S, ReqBody>,
) -> crate::BoxFuture<'static, Result<Response<RefreshBody<ResBody>>, BoxError>>
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
    let handle = KeyedHandle::<K>::Cell {
        cell: cell.clone(),
        options,
    };
    Box::pin(crate::dpop::tower::send(
        handle, cell, service, request, resend,
    ))
}

pin_project! {
    /// The response future of [`KeyedRefresh`].
    pub struct KeyedResponseFuture<S, K, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        #[pin]
        exchange: Exchange<S, ReqBody, ResBody, KeyedHandle<K>>,
    }
}

impl<S, K, ReqBody, ResBody> KeyedResponseFuture<S, K, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn new(exchange: Exchange<S, ReqBody, ResBody, KeyedHandle<K>>) -> Self {
        KeyedResponseFuture { exchange }
    }
}

impl<S, K, ReqBody, ResBody> Future for KeyedResponseFuture<S, K, ReqBody, ResBody>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
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

impl<S, K, ReqBody, ResBody> fmt::Debug for KeyedResponseFuture<S, K, ReqBody, ResBody>
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
