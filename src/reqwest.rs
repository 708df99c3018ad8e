//! [`RefreshLayer`] as a [`reqwest_middleware::Middleware`] (feature `reqwest`).
//!
//! The same rules as the tower service, over reqwest's types: the token comes from the same
//! cell, a rejected request is resent once through [`reqwest::Request::try_clone`], and a
//! request whose body cannot be cloned (a stream) is sent once, its rejection returned as it
//! came with [`RetryStatus::BodyNotReplayable`] in the response's extensions.
//!
//! Refresh failures are `reqwest_middleware::Error::Middleware`, holding the crate's own error
//! type; see [`RefreshLayer`]'s `# reqwest` section for the downcast.

use std::sync::Arc;

use http::{Extensions, header};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Error, Middleware, Next};

use crate::body::RefreshBody;
use crate::classify::Verdict;
use crate::error::{self, InsecureTransport, RefreshError};
use crate::extension::{NoRetry, RetryStatus, SkipAuth};
use crate::future::{drain, read_prefix, token_for_resend};
use crate::layer::{RefreshLayer, Shared};

#[async_trait::async_trait]
impl Middleware for RefreshLayer {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        send(&self.shared, request, extensions, next).await
    }
}

async fn send(
    shared: &Arc<Shared>,
    mut request: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    if extensions.get::<SkipAuth>().is_some()
        || request.headers().contains_key(header::AUTHORIZATION)
    {
        return next.run(request, extensions).await;
    }
    if !shared.allow_insecure_http {
        let url = request.url();
        if let Some(host) = error::insecure_host(Some(url.scheme()), url.host_str()) {
            return Err(Error::middleware(InsecureTransport::new(host)));
        }
    }
    let (authorization, generation) = match shared.cell.current() {
        Some(current) => current,
        None => {
            let token = shared
                .cell
                .clone()
                .acquire(None)
                .await
                .map_err(middleware_error)?;
            (token.header, token.generation)
        }
    };
    let retry = shared.retry && extensions.get::<NoRetry>().is_none();
    // `None` for a streaming body: such a request is sent once, never failed up front.
    let mut replay = if retry { request.try_clone() } else { None };
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, authorization);

    let response = next.clone().run(request, extensions).await?;
    let (rejected, mut response) = classify(shared, response).await?;
    if !rejected {
        return Ok(response);
    }
    let Some(resend) = replay.as_mut() else {
        // No resend, but no other request should send this token again either.
        shared.cell.invalidate_generation(generation);
        let status = match retry {
            true => RetryStatus::BodyNotReplayable,
            false => RetryStatus::Disabled,
        };
        response.extensions_mut().insert(status);
        return Ok(response);
    };
    drain(http::Response::from(response).into_body()).await;
    let token = token_for_resend(shared, generation)
        .await
        .map_err(middleware_error)?;
    resend
        .headers_mut()
        .insert(header::AUTHORIZATION, token.header);
    let resend = replay.take().expect("checked above");
    // A second rejection is returned as it is: one resend, never a loop.
    let mut response = next.run(resend, extensions).await?;
    response.extensions_mut().insert(RetryStatus::Retried);
    Ok(response)
}

/// Whether the server rejected the token, reading a body prefix first if the classifier
/// asks; the response comes back whole either way.
async fn classify(
    shared: &Shared,
    response: Response,
) -> reqwest_middleware::Result<(bool, Response)> {
    let limit = match shared
        .classifier
        .classify(response.status(), response.headers())
    {
        Verdict::Accepted => return Ok((false, response)),
        Verdict::TokenRejected => return Ok((true, response)),
        Verdict::ReadBody { limit } => limit,
    };
    // reqwest keeps the URL beside the `http` response; put it back on the way out.
    let url = response.url().clone();
    let (parts, body) = http::Response::from(response).into_parts();
    let mut body = Box::pin(body);
    let (frames, prefix) = read_prefix(body.as_mut(), limit).await?;
    let rejected = shared
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
