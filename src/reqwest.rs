//! [`RefreshLayer`] as a [`reqwest_middleware::Middleware`] (feature `reqwest`).
//!
//! The same rules as the tower service, over reqwest's types: the token comes from the same
//! cell, a rejected request is resent once through [`reqwest::Request::try_clone`], and a
//! request whose body cannot be cloned (a stream) is sent once, its rejection returned as it
//! came with [`RetryStatus::BodyNotReplayable`] in the response's extensions.
//!
//! With a DPoP key, each request carries a proof of its own, and an API's `use_dpop_nonce`
//! gets one resend of its own (`send_proved`).
//!
//! Refresh failures are `reqwest_middleware::Error::Middleware`, holding the crate's own error
//! type; the crate docs' reqwest quick start shows the downcast.

use std::sync::Arc;

use http::{Extensions, Uri, header};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Error, Middleware, Next};

use crate::body::RefreshBody;
use crate::cell::{Token, TokenCell};
use crate::classify::Verdict;
use crate::dpop::{DPOP, Dpop, Resent, api_asks_for_nonce};
use crate::error::{ConfigurationError, InsecureTransport, RefreshError, is_loopback};
use crate::extension::{NoRetry, RetryStatus, SkipAuth};
use crate::layer::RefreshLayer;
use crate::resend::{drain, read_prefix, token_for_resend};
use crate::shared::Options;

#[async_trait::async_trait]
impl Middleware for RefreshLayer {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if passes_through(&request, extensions) {
            return next.run(request, extensions).await;
        }
        send(
            &self.shared.cell,
            &self.shared.options,
            request,
            extensions,
            next,
        )
        .await
    }
}

/// A request with credentials of its own, or that asked for none: it goes as it is.
pub(crate) fn passes_through(request: &Request, extensions: &Extensions) -> bool {
    extensions.get::<SkipAuth>().is_some() || request.headers().contains_key(header::AUTHORIZATION)
}

/// The request path, for a request that does not [pass through](passes_through). The fast
/// path (token FRESH or STALE, response accepted) stays in this small future; waiting for a
/// refresh, reading a body prefix and the resend are boxed, so that their state is not moved
/// with every request.
pub(crate) async fn send(
    cell: &Arc<TokenCell>,
    options: &Options,
    mut request: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    if !options.allow_insecure_http
        && let Some(host) = insecure_host(request.url())
    {
        return Err(Error::middleware(InsecureTransport::new(host)));
    }
    if let Some(dpop) = cell.dpop() {
        let dpop = dpop.clone();
        let proved = send_proved(cell, &dpop, options, request, extensions, next);
        return Box::pin(proved).await;
    }
    let (authorization, generation) = match cell.current() {
        Some(current) => current,
        None => {
            let acquire = Box::pin(cell.clone().acquire());
            let token = acquire.await.map_err(middleware_error)?;
            (token.header.get(), token.generation)
        }
    };
    let retry = options.retry && extensions.get::<NoRetry>().is_none();
    // `None` for a streaming body: such a request is sent once, never failed up front.
    let replay = if retry { request.try_clone() } else { None };
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, authorization);

    let response = next.clone().run(request, extensions).await?;
    let mut response = match options
        .classifier
        .classify(response.status(), response.headers())
    {
        Verdict::Accepted => return Ok(response),
        Verdict::TokenRejected => response,
        Verdict::ReadBody { limit } => match Box::pin(read_body(options, response, limit)).await? {
            (false, response) => return Ok(response),
            (true, response) => response,
        },
    };
    let Some(replay) = replay else {
        // No resend, but the refresh the rejection asks for still starts.
        cell.note_rejection(generation);
        response.extensions_mut().insert(match retry {
            true => RetryStatus::BodyNotReplayable,
            false => RetryStatus::Disabled,
        });
        return Ok(response);
    };
    Box::pin(resend(cell, response, generation, replay, extensions, next)).await
}

/// After a rejection: drains the rejected body, gets a newer token (the one shared refresh,
/// unless another request already replaced the rejected one) and resends once.
async fn resend(
    cell: &Arc<TokenCell>,
    mut rejected: Response,
    generation: u64,
    mut replay: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    let Some(token) = token_for_resend(cell, generation) else {
        rejected.extensions_mut().insert(RetryStatus::BackedOff);
        return Ok(rejected);
    };
    drain(http::Response::from(rejected).into_body()).await;
    let token = token.await.map_err(middleware_error)?;
    replay
        .headers_mut()
        .insert(header::AUTHORIZATION, token.header.get());
    // A second rejection is returned as it is: one resend, never a loop.
    let mut response = next.run(replay, extensions).await?;
    response.extensions_mut().insert(RetryStatus::Retried);
    Ok(response)
}

/// Sends `request` with `cell`'s token and a proof; resends at most once for a nonce and
/// once for a rejected token, through [`Request::try_clone`] copies.
async fn send_proved(
    cell: &Arc<TokenCell>,
    dpop: &Dpop,
    options: &Options,
    mut request: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    let uri: Uri = request.url().as_str().parse().map_err(|_| {
        Error::middleware(
            ConfigurationError::local("dpop_htu")
                .with_description("the request's URL cannot be named in a DPoP proof"),
        )
    })?;
    let retry = options.retry && extensions.get::<NoRetry>().is_none();
    let unavailable = match retry {
        true => RetryStatus::BodyNotReplayable,
        false => RetryStatus::Disabled,
    };
    // `None` for a streaming body: such a request is sent once, never failed up front.
    let mut copy = if retry { request.try_clone() } else { None };
    let mut token = cell.token().await.map_err(middleware_error)?;
    let mut resent = Resent::default();
    loop {
        let nonce = prove(dpop, &token, &uri, &mut request).await?;
        let response = next.clone().run(request, extensions).await?;
        let asked = api_asks_for_nonce(response.status(), response.headers());
        let new_nonce = dpop.learn(&uri, response.headers(), nonce.as_deref(), asked);
        if asked {
            // Not the token's fault: never a refresh.
            if !new_nonce || resent.nonce {
                return Ok(marked(response, resent.status(None)));
            }
            let Some(again) = next_copy(&mut copy, !resent.token) else {
                return Ok(marked(response, resent.status(Some(unavailable))));
            };
            tracing::debug!("the API asked for its DPoP nonce; resending once with it");
            resent.nonce = true;
            cell.count_nonce_resend();
            drain(http::Response::from(response).into_body()).await;
            request = again;
            continue;
        }
        let response = match options
            .classifier
            .classify(response.status(), response.headers())
        {
            Verdict::Accepted => return Ok(marked(response, resent.status(None))),
            Verdict::TokenRejected => response,
            Verdict::ReadBody { limit } => {
                match Box::pin(read_body(options, response, limit)).await? {
                    (false, response) => return Ok(marked(response, resent.status(None))),
                    (true, response) => response,
                }
            }
        };
        // A second rejection is returned as it is: one resend, never a loop.
        if resent.token {
            return Ok(marked(response, resent.status(None)));
        }
        let Some(again) = next_copy(&mut copy, !resent.nonce) else {
            // No resend, but the refresh the rejection asks for still starts.
            cell.note_rejection(token.generation);
            return Ok(marked(response, Some(unavailable)));
        };
        let Some(newer) = token_for_resend(cell, token.generation) else {
            return Ok(marked(response, Some(RetryStatus::BackedOff)));
        };
        drain(http::Response::from(response).into_body()).await;
        token = newer.await.map_err(middleware_error)?;
        resent.token = true;
        request = again;
    }
}

/// Puts `token` and a new proof for it on `request`; returns the nonce the proof holds.
async fn prove(
    dpop: &Dpop,
    token: &Token,
    uri: &Uri,
    request: &mut Request,
) -> reqwest_middleware::Result<Option<Arc<str>>> {
    let access_token = token.access_token();
    let (proof, nonce) = dpop
        .proof(request.method(), uri, Some(access_token.secret()))
        .await
        .map_err(middleware_error)?;
    let headers = request.headers_mut();
    headers.insert(header::AUTHORIZATION, token.header.get());
    headers.insert(DPOP, proof);
    Ok(nonce)
}

/// The request to resend now, keeping another copy if one more resend may follow.
fn next_copy(copy: &mut Option<Request>, another: bool) -> Option<Request> {
    let next = copy.take()?;
    if another {
        *copy = next.try_clone();
    }
    Some(next)
}

fn marked(mut response: Response, status: Option<RetryStatus>) -> Response {
    if let Some(status) = status {
        response.extensions_mut().insert(status);
    }
    response
}

/// Reads up to `limit` bytes of the body for the classifier's verdict, and gives the
/// response back whole.
async fn read_body(
    options: &Options,
    response: Response,
    limit: usize,
) -> reqwest_middleware::Result<(bool, Response)> {
    // reqwest keeps the URL beside the `http` response; put it back on the way out.
    let url = response.url().clone();
    let (parts, body) = http::Response::from(response).into_parts();
    let mut body = Box::pin(body);
    let (frames, prefix) = read_prefix(body.as_mut(), limit).await?;
    let rejected = options
        .classifier
        .classify_body(parts.status, &parts.headers, &prefix);
    let body = reqwest::Body::wrap(RefreshBody::with_read_frames(frames, body));
    let mut response = http::Response::from_parts(parts, body);
    let (with_url, ()) = http::Response::builder()
        .url(url)
        .body(())
        .expect("a response head with only an extension is valid")
        .into_parts();
    response.extensions_mut().extend(with_url.extensions);
    Ok((rejected, Response::from(response)))
}

/// The host of a plain `http://` URL that is not loopback: a bearer token sent there crosses
/// the network in clear text. (The tower service's twin reads an `http::Uri`.)
fn insecure_host(url: &reqwest::Url) -> Option<&str> {
    if url.scheme() != "http" {
        return None;
    }
    url.host_str().filter(|host| !is_loopback(host))
}

/// A refresh failure as the error reqwest-middleware carries, holding the crate's own type
/// ([`ReauthRequired`](crate::ReauthRequired), [`TransientError`](crate::TransientError) or
/// [`ConfigurationError`](crate::ConfigurationError)) for `downcast_ref`.
fn middleware_error(error: RefreshError) -> Error {
    match error {
        RefreshError::Reauth(e) => Error::middleware(e),
        RefreshError::Transient(e) => Error::middleware(e),
        RefreshError::Configuration(e) => Error::middleware(e),
    }
}
