//! [`ResponseFuture`], and the slow paths it hands over to: waiting for a refresh, reading a
//! body prefix for the classifier, and the one resend (with the helpers the reqwest
//! middleware shares, in `resend.rs`).
//!
//! The fast path (token fresh, response accepted) is a named future with no allocation. The
//! slow paths are rare, so they are plain `async` code in a box, where the rules (resend once,
//! never loop) stay readable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower_service::Service;

use crate::BoxError;
use crate::body::RefreshBody;
use crate::classify::Verdict;
use crate::error::RefreshError;
use crate::extension::RetryStatus;
use crate::replay::Replay;
use crate::resend::{drain, read_prefix, token_for_resend};
use crate::shared::{Handle, Options, Shared};

type SlowFuture<ResBody> =
    Pin<Box<dyn Future<Output = Result<Response<RefreshBody<ResBody>>, BoxError>> + Send>>;

/// What to do if the server rejects the token the request was sent with.
pub(crate) enum Resend<S, B> {
    /// Resend this copy through this service (the one `call` readied, kept for the resend).
    /// The copy is kept inline: moving a larger future costs less than an allocation and a
    /// free per request (callgrind, empty request: 2,384 instructions boxed, 2,244 inline).
    Replay { service: S, replay: Replay<B> },
    /// Return the rejection marked with this status.
    Unavailable(RetryStatus),
}

impl<S, B> Resend<S, B> {
    pub(crate) fn replay(service: S, replay: Replay<B>) -> Self {
        Resend::Replay { service, replay }
    }

    /// No replay copy: say why, on the rejection.
    pub(crate) fn unavailable(retry: bool) -> Self {
        Resend::Unavailable(match retry {
            true => RetryStatus::BodyNotReplayable,
            false => RetryStatus::Disabled,
        })
    }
}

pin_project! {
    /// The response future of [`Refresh`](crate::Refresh).
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        #[pin]
        exchange: Exchange<S, ReqBody, ResBody, Arc<Shared>>,
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    pub(crate) fn new(exchange: Exchange<S, ReqBody, ResBody, Arc<Shared>>) -> Self {
        ResponseFuture { exchange }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
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

impl<S, ReqBody, ResBody> std::fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("state", &self.exchange.state())
            .finish()
    }
}

pin_project! {
    /// One request's way through a layer, whichever the layer: the state machine behind the
    /// response futures. `H` is what it keeps of the layer for the slow paths.
    #[project = ExchangeProj]
    pub(crate) enum Exchange<S, ReqBody, ResBody, H>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        // The request is with the inner service; the response is yet to be classified.
        Called {
            #[pin]
            future: S::Future,
            after: Option<After<S, ReqBody, H>>,
        },
        // The request carried its own credentials: the response is returned as it is.
        Passthrough {
            #[pin]
            future: S::Future,
        },
        // Waiting for a refresh (or a key's cell), reading a body, or resending.
        Slow { future: SlowFuture<ResBody> },
        // Refused before sending.
        Failed { error: Option<BoxError> },
    }
}

/// What the fast path keeps for a response that turns out to need the slow path.
pub(crate) struct After<S, B, H> {
    handle: H,
    generation: u64,
    resend: Resend<S, B>,
}

impl<S, ReqBody, ResBody, H> Exchange<S, ReqBody, ResBody, H>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    pub(crate) fn called(
        future: S::Future,
        handle: H,
        generation: u64,
        resend: Resend<S, ReqBody>,
    ) -> Self {
        let after = After {
            handle,
            generation,
            resend,
        };
        Exchange::Called {
            future,
            after: Some(after),
        }
    }

    pub(crate) fn passthrough(future: S::Future) -> Self {
        Exchange::Passthrough { future }
    }

    pub(crate) fn slow(
        future: impl Future<Output = Result<Response<RefreshBody<ResBody>>, BoxError>> + Send + 'static,
    ) -> Self {
        Exchange::Slow {
            future: Box::pin(future),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Exchange::Failed { error: Some(error) }
    }

    /// The state's name, for `Debug`.
    pub(crate) fn state(&self) -> &'static str {
        match self {
            Exchange::Called { .. } => "called",
            Exchange::Passthrough { .. } => "passthrough",
            Exchange::Slow { .. } => "slow",
            Exchange::Failed { .. } => "failed",
        }
    }
}

impl<S, ReqBody, ResBody, H> Future for Exchange<S, ReqBody, ResBody, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
    H: Handle,
{
    type Output = Result<Response<RefreshBody<ResBody>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ExchangeProj::Called { future, after } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let verdict = after
                        .as_ref()
                        .expect("ResponseFuture polled after completion")
                        .handle
                        .options()
                        .classifier
                        .classify(response.status(), response.headers());
                    if verdict == Verdict::Accepted {
                        *after = None;
                        return Poll::Ready(Ok(response.map(RefreshBody::new)));
                    }
                    let after = after.take().expect("checked above");
                    let slow = finish(
                        after.handle,
                        response,
                        after.generation,
                        verdict,
                        after.resend,
                    );
                    self.set(Exchange::Slow {
                        future: Box::pin(slow),
                    });
                }
                ExchangeProj::Passthrough { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok(response.map(RefreshBody::new)));
                }
                ExchangeProj::Slow { future } => return future.as_mut().poll(cx),
                ExchangeProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

/// The EXPIRED path: waits for the shared refresh, then sends as the fast path would.
/// `service` is an unreadied clone: no permit is held while waiting.
pub(crate) async fn send_after_refresh<S, ReqBody, ResBody, H>(
    handle: H,
    service: S,
    mut request: Request<ReqBody>,
    resend: Resend<S, ReqBody>,
) -> Result<Response<RefreshBody<ResBody>>, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
    H: Handle,
{
    let token = handle
        .cell()
        .await?
        .acquire()
        .await
        .map_err(RefreshError::into_box)?;
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, token.header.get());
    let response = service.oneshot(request).await.map_err(Into::into)?;
    let verdict = handle
        .options()
        .classifier
        .classify(response.status(), response.headers());
    if verdict == Verdict::Accepted {
        return Ok(response.map(RefreshBody::new));
    }
    // Boxed: inline, the rare rest would make every request that waits for a refresh (all of
    // a stampede's callers) hold a future half as large again (1456 bytes rather than 976).
    Box::pin(finish(handle, response, token.generation, verdict, resend)).await
}

/// Whether a response that was not plainly accepted rejected the token: as `verdict` says,
/// or as the classifier says of the body's prefix, which is read for it and handed back.
pub(crate) async fn classified<ResBody>(
    options: &Options,
    response: Response<ResBody>,
    verdict: Verdict,
) -> Result<(bool, Response<RefreshBody<ResBody>>), BoxError>
where
    ResBody: Body + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let (rejected, body) = match verdict {
        Verdict::Accepted => (false, RefreshBody::new(body)),
        Verdict::TokenRejected => (true, RefreshBody::new(body)),
        Verdict::ReadBody { limit } => {
            let mut body = Box::pin(body);
            let (frames, prefix) = read_prefix(body.as_mut(), limit)
                .await
                .map_err(Into::into)?;
            let rejected = options
                .classifier
                .classify_body(parts.status, &parts.headers, &prefix);
            (rejected, RefreshBody::with_read_frames(frames, body))
        }
    };
    Ok((rejected, Response::from_parts(parts, body)))
}

/// Everything after a first response that was not plainly accepted: reads the body prefix if
/// the classifier asked, and on rejection resends once (or marks why not).
async fn finish<S, ReqBody, ResBody, H>(
    handle: H,
    response: Response<ResBody>,
    generation: u64,
    verdict: Verdict,
    resend: Resend<S, ReqBody>,
) -> Result<Response<RefreshBody<ResBody>>, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
    H: Handle,
{
    let (rejected, response) = classified(handle.options(), response, verdict).await?;
    if !rejected {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let (service, replay) = match resend {
        Resend::Replay { service, replay } => (service, replay),
        Resend::Unavailable(status) => {
            // No resend, but the refresh the rejection asks for still starts (unless the
            // cell is gone, and its token with it).
            if let Some(cell) = handle.sent_with() {
                cell.note_rejection(generation);
            }
            let mut response = Response::from_parts(parts, body);
            response.extensions_mut().insert(status);
            return Ok(response);
        }
    };
    let token = match handle.sent_with() {
        Some(cell) => {
            let Some(token) = token_for_resend(&cell, generation) else {
                let mut response = Response::from_parts(parts, body);
                response.extensions_mut().insert(RetryStatus::BackedOff);
                return Ok(response);
            };
            drain(body).await;
            token.await
        }
        // The cell was evicted since, and its token with it: the key's cell now has (or
        // gets) another one.
        None => {
            drain(body).await;
            let cell = handle.cell().await?;
            let token = cell.clone().acquire().await;
            if token.is_ok() {
                cell.count_retry();
            }
            token
        }
    }
    .map_err(RefreshError::into_box)?;
    let response = service
        .oneshot(replay.into_request(token.header.get()))
        .await
        .map_err(Into::into)?;
    // A second rejection is returned as it is: one resend, never a loop.
    let mut response = response.map(RefreshBody::new);
    response.extensions_mut().insert(RetryStatus::Retried);
    Ok(response)
}
