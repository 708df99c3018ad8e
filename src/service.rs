//! [`Refresh`]: the tower service that attaches the token and keeps the replay copy.

use std::fmt;
use std::future::Future;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Uri, header};
use http_body::Body;
use tower_service::Service;

use crate::BoxError;
use crate::body::RefreshBody;
use crate::cell::View;
use crate::error::{InsecureTransport, is_loopback};
use crate::extension::{NoRetry, SkipAuth};
use crate::future::{self, Exchange, Resend, ResponseFuture};
use crate::replay::Replay;
use crate::shared::{Options, Shared};

/// Attaches a fresh bearer token to each request and resends once on rejection. Built by
/// [`RefreshLayer`](crate::RefreshLayer).
///
/// # Clone
///
/// The inner service must be `Clone`: the resend goes through a clone of it, readied on its
/// own, as tower's "be careful when cloning inner services" advises. `call` keeps the service
/// that `poll_ready` readied and leaves a fresh clone behind.
///
/// # Cost
///
/// A request whose token is fresh costs a check of the token cell's snapshot (the service
/// keeps the one it last read and revalidates it with one plain load), a clock read, a clone
/// of the prebuilt header value and of one `Arc`, and one header-map insert. With the retry on
/// and a body that can be replayed, add the replay copy (method, URI, header list, extensions
/// and body, kept inline in the response future) and a clone of the inner service. Over a
/// trivial inner service and a request with three headers, `benches/hot_path.rs` measured
/// 1.18x the time of the same request through tower-http's static `SetRequestHeader` with the
/// retry off and 1.68x with it on (medians of three runs; `BENCHMARKS.md`); an empty request,
/// against tower-http's `AddAuthorization`, 1.34x and 1.58x, or 336 and 587 instructions more
/// (callgrind). About a third of the first difference is the clock read. Requests on
/// different threads write no shared cache line: two threads give 1.9x the throughput of one.
pub struct Refresh<S> {
    inner: S,
    shared: Arc<Shared>,
    view: View,
}

impl<S> Refresh<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Refresh {
            inner,
            shared,
            view: View::default(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably. A change reaches the requests called afterwards: a
    /// request already in flight holds its own clone, for its resend.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the wrapped service.
    ///
    /// ```
    /// use oauth_refresh::{ClientCredentials, RefreshLayer};
    /// use tower::Layer;
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct Api {
    ///     base: &'static str,
    /// }
    ///
    /// let layer = RefreshLayer::new(ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t"));
    /// let mut service = layer.layer(Api { base: "https://api.example.com" });
    /// assert_eq!(service.get_ref().base, "https://api.example.com");
    /// service.get_mut().base = "https://eu.api.example.com";
    /// assert_eq!(service.into_inner(), Api { base: "https://eu.api.example.com" });
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Refresh<S> {
    fn clone(&self) -> Self {
        // A clone starts without a cached snapshot: see `View`.
        Refresh {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            view: View::default(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Refresh<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresh")
            .field("inner", &self.inner)
            .field("cell", &self.shared.cell)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Refresh<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<RefreshBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    /// Only the inner service's readiness: a refresh never makes the service unready, and a
    /// refresh error belongs to the requests that needed it.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let options = &self.shared.options;
        let retry = match gate(options, &request) {
            Gate::Passthrough => {
                return ResponseFuture::new(Exchange::passthrough(self.inner.call(request)));
            }
            Gate::Refused(error) => return ResponseFuture::new(Exchange::failed(error)),
            Gate::Send { retry } => retry,
        };
        let replay = replay_copy(options, &request, retry);
        if self.shared.dpop {
            return self.send_proved(request, retry, replay);
        }
        let Some((authorization, generation)) = self.shared.cell.current_in_view(&mut self.view)
        else {
            // EXPIRED: wait for the refresh.
            let shared = self.shared.clone();
            return ResponseFuture::new(send_later(
                &mut self.inner,
                retry,
                replay,
                move |service, resend| future::send_after_refresh(shared, service, request, resend),
            ));
        };
        // The rest of `send_now`, written out: through the function, the request's moves cost
        // this path 30 instructions more (callgrind).
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);

        let (response, resend) = match replay {
            Some(replay) => {
                // Keep the service `poll_ready` readied for this call and its resend; leave a
                // fresh clone for the next `poll_ready`.
                let fresh = self.inner.clone();
                let mut readied = mem::replace(&mut self.inner, fresh);
                let response = readied.call(request);
                (response, Resend::replay(readied, replay))
            }
            None => (self.inner.call(request), Resend::unavailable(retry)),
        };
        ResponseFuture::new(Exchange::called(
            response,
            self.shared.clone(),
            generation,
            resend,
        ))
    }
}

impl<S> Refresh<S> {
    /// A request of a DPoP-bound token: a proof per request, signed asynchronously, so never
    /// the fast path. Out of line, so that the bearer path's code stays as it was.
    #[cold]
    #[inline(never)]
    fn send_proved<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        retry: bool,
        replay: Option<Replay<ReqBody>>,
    ) -> ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqBody: Send + 'static,
        ResBody: Body + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Into<BoxError>,
    {
        let shared = self.shared.clone();
        ResponseFuture::new(send_later(
            &mut self.inner,
            retry,
            replay,
            move |service, resend| {
                let cell = shared.cell.clone();
                crate::dpop::tower::send(shared, cell, service, request, resend)
            },
        ))
    }
}

/// The request path's first step, before the token: shared by the single-token and the keyed
/// service.
pub(crate) enum Gate {
    /// The request carries credentials of its own, or asked for none: it goes as it is.
    Passthrough,
    /// Refused before sending.
    Refused(BoxError),
    /// To be sent with a token, resent once on rejection if `retry`.
    Send { retry: bool },
}

#[inline]
pub(crate) fn gate<B>(options: &Options, request: &Request<B>) -> Gate {
    // `contains_key` then `insert` rather than the `entry` API: for a standard header, both
    // are a few instructions where `entry` costs nearly two hundred. An empty map is not even
    // hashed into.
    let headers = request.headers();
    if request.extensions().get::<SkipAuth>().is_some()
        || (!headers.is_empty() && headers.contains_key(header::AUTHORIZATION))
    {
        return Gate::Passthrough;
    }
    if !options.allow_insecure_http
        && let Some(host) = insecure_host(request.uri())
    {
        return Gate::Refused(InsecureTransport::new(host).into());
    }
    Gate::Send {
        retry: options.retry && request.extensions().get::<NoRetry>().is_none(),
    }
}

/// The copy for a resend, taken before the token goes in: `None` if the retry is off or the
/// body cannot be copied.
#[inline]
pub(crate) fn replay_copy<B: 'static>(
    options: &Options,
    request: &Request<B>,
    retry: bool,
) -> Option<Replay<B>> {
    if retry {
        Replay::capture(request, &options.replayers)
    } else {
        None
    }
}

/// The fast path: sends `request` with `authorization` at once. `sent_with` is the token's
/// generation and what the response future keeps of the layer.
#[inline(always)]
pub(crate) fn send_now<S, ReqBody, ResBody, H>(
    inner: &mut S,
    mut request: Request<ReqBody>,
    authorization: HeaderValue,
    sent_with: (u64, H),
    retry: bool,
    replay: Option<Replay<ReqBody>>,
) -> Exchange<S, ReqBody, ResBody, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body,
{
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, authorization);
    let (response, resend) = match replay {
        Some(replay) => {
            // Keep the service `poll_ready` readied for this call and its resend; leave a
            // fresh clone for the next `poll_ready`.
            let fresh = inner.clone();
            let mut readied = mem::replace(inner, fresh);
            let response = readied.call(request);
            (response, Resend::replay(readied, replay))
        }
        None => (inner.call(request), Resend::unavailable(retry)),
    };
    let (generation, handle) = sent_with;
    Exchange::called(response, handle, generation, resend)
}

/// The request must wait (for a refresh, or for its key's cell): `wait` gets an unreadied
/// clone of the service and the resend, and sends when it can. The readied service is let go
/// meanwhile: it may hold a permit (a buffer slot, a concurrency limit) that others need.
pub(crate) fn send_later<S, ReqBody, ResBody, H, F, Fut>(
    inner: &mut S,
    retry: bool,
    replay: Option<Replay<ReqBody>>,
    wait: F,
) -> Exchange<S, ReqBody, ResBody, H>
where
    S: Service<Request<ReqBody>> + Clone,
    ResBody: Body,
    F: FnOnce(S, Resend<S, ReqBody>) -> Fut,
    Fut: Future<Output = Result<Response<RefreshBody<ResBody>>, BoxError>> + Send + 'static,
{
    let later = inner.clone();
    drop(mem::replace(inner, later.clone()));
    let resend = match replay {
        Some(replay) => Resend::replay(later.clone(), replay),
        None => Resend::unavailable(retry),
    };
    Exchange::slow(wait(later, resend))
}

/// The host of a plain `http://` URI that is not loopback: a bearer token sent there crosses
/// the network in clear text.
#[inline]
fn insecure_host(uri: &Uri) -> Option<&str> {
    // `scheme_str` rather than comparing `Scheme`s, whose `eq` is a call on every request.
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    (!is_loopback(host)).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        let host = |uri: &str| insecure_host(&uri.parse().unwrap()).map(str::to_owned);
        assert_eq!(
            host("http://api.example.com/x"),
            Some("api.example.com".into())
        );
        assert_eq!(host("http://10.0.0.1/"), Some("10.0.0.1".into()));
        assert_eq!(host("https://api.example.com/x"), None);
        assert_eq!(host("http://127.0.0.1:8080/"), None);
        assert_eq!(host("http://127.3.4.5/"), None);
        assert_eq!(host("http://localhost:3000/"), None);
        assert_eq!(host("http://[::1]:3000/"), None);
        assert_eq!(host("/relative"), None);
    }
}
