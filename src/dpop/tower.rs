//! A DPoP request through a tower service: the token and a proof of its own, then at most
//! one resend for a nonce and one for a rejected token, in whichever order the answers ask.

use std::sync::Arc;

use http::{Request, Response, header};
use http_body::Body;
use tower::ServiceExt;
use tower_service::Service;

use super::{DPOP, Dpop, Resent, api_asks_for_nonce};
use crate::BoxError;
use crate::body::RefreshBody;
use crate::cell::{Token, TokenCell};
use crate::classify::Verdict;
use crate::error::RefreshError;
use crate::extension::RetryStatus;
use crate::future::{Resend, classified, send_after_refresh};
use crate::replay::{Replay, Replayers};
use crate::resend::{drain, token_for_resend};
use crate::shared::Handle;

/// Sends `request` with DPoP `cell`'s token (waiting for a refresh if it has none usable) and a
/// proof; resends once with the nonce if the API asks for one it now has, and once with a
/// newer token if the API rejects the token, each through a clone of `service`.
pub(crate) async fn send<S, ReqBody, ResBody, H>(
    handle: H,
    cell: Arc<TokenCell>,
    service: S,
    request: Request<ReqBody>,
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
    let Some(dpop) = cell.dpop().cloned() else {
        // A cell without a key (never asked for here): the bearer path.
        return Box::pin(send_after_refresh(handle, service, request, resend)).await;
    };
    let options = handle.options();
    let (mut copy, unavailable) = match resend {
        Resend::Replay { replay, .. } => (Some(replay), RetryStatus::BodyNotReplayable),
        Resend::Unavailable(status) => (None, status),
    };
    let uri = request.uri().clone();
    let mut token = cell.token().await.map_err(RefreshError::into_box)?;
    let mut request = request;
    let mut resent = Resent::default();
    loop {
        let nonce = prove(&dpop, &token, &mut request).await?;
        let response = service.clone().oneshot(request).await.map_err(Into::into)?;
        let asked = api_asks_for_nonce(response.status(), response.headers());
        let new_nonce = dpop.learn(&uri, response.headers(), nonce.as_deref(), asked);
        if asked {
            // Not the token's fault: never a refresh.
            if !new_nonce || resent.nonce {
                return Ok(marked(response.map(RefreshBody::new), resent.status(None)));
            }
            let Some(next) = next_copy(&mut copy, !resent.token, &options.replayers) else {
                let status = resent.status(Some(unavailable));
                return Ok(marked(response.map(RefreshBody::new), status));
            };
            tracing::debug!("the API asked for its DPoP nonce; resending once with it");
            resent.nonce = true;
            cell.count_nonce_resend();
            drain(response.into_body()).await;
            request = next.into_request(token.header.get());
            continue;
        }
        let verdict = options
            .classifier
            .classify(response.status(), response.headers());
        let (rejected, response) = match verdict {
            Verdict::Accepted => (false, response.map(RefreshBody::new)),
            verdict => classified(options, response, verdict).await?,
        };
        // A second rejection is returned as it is: one resend, never a loop.
        if !rejected || resent.token {
            return Ok(marked(response, resent.status(None)));
        }
        let Some(next) = next_copy(&mut copy, !resent.nonce, &options.replayers) else {
            // No resend, but the refresh the rejection asks for still starts.
            cell.note_rejection(token.generation);
            return Ok(marked(response, Some(unavailable)));
        };
        let Some(newer) = token_for_resend(&cell, token.generation) else {
            return Ok(marked(response, Some(RetryStatus::BackedOff)));
        };
        drain(response.into_body()).await;
        token = newer.await.map_err(RefreshError::into_box)?;
        resent.token = true;
        request = next.into_request(token.header.get());
    }
}

/// Puts `token` and a new proof for it on `request`; returns the nonce the proof holds.
async fn prove<B>(
    dpop: &Dpop,
    token: &Token,
    request: &mut Request<B>,
) -> Result<Option<Arc<str>>, BoxError> {
    let access_token = token.access_token();
    let (proof, nonce) = dpop
        .proof(request.method(), request.uri(), Some(access_token.secret()))
        .await
        .map_err(RefreshError::into_box)?;
    let headers = request.headers_mut();
    headers.insert(header::AUTHORIZATION, token.header.get());
    headers.insert(DPOP, proof);
    Ok(nonce)
}

/// The copy to resend now, keeping another in `copy` if one more resend may follow
/// (`another`). `None`: the body cannot be replayed, or the retry is off.
fn next_copy<B: 'static>(
    copy: &mut Option<Replay<B>>,
    another: bool,
    replayers: &Replayers,
) -> Option<Replay<B>> {
    let next = copy.take()?;
    if another {
        *copy = next.duplicate(replayers);
    }
    Some(next)
}

fn marked<B>(mut response: Response<B>, status: Option<RetryStatus>) -> Response<B> {
    if let Some(status) = status {
        response.extensions_mut().insert(status);
    }
    response
}
