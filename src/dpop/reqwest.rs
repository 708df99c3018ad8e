//! A DPoP request through the reqwest middleware: as through the tower service
//! ([`tower`](super::tower)), over reqwest's types.

use std::sync::Arc;

use http::{Extensions, Uri, header};
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Next};

use super::tower::Resent;
use super::{DPOP, Dpop, api_asks_for_nonce};
use crate::cell::{Token, TokenCell};
use crate::classify::Verdict;
use crate::error::ConfigurationError;
use crate::extension::{NoRetry, RetryStatus};
use crate::reqwest::{middleware_error, read_body};
use crate::resend::{drain, token_for_resend};
use crate::shared::Options;

/// Sends `request` with `cell`'s token and a proof; resends at most once for a nonce and
/// once for a rejected token, through [`Request::try_clone`] copies.
pub(crate) async fn send(
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
