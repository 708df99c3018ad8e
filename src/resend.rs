//! What both stacks do before a resend: get the token to resend with, read a body prefix for
//! a classifier, drain the rejected body.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use crate::cell::{Token, TokenCell};
use crate::error::RefreshError;

/// Past this much, a rejected response's body is dropped rather than drained: the connection
/// is then not reused, which costs less than reading a large body nobody wants.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The token to resend a rejected request with: a newer one if another request already
/// replaced `generation`, else the one shared refresh's, which starts now. `None`: the
/// rejection goes back as it came (refreshes for rejections are spaced out). Counts the
/// resend, which the caller makes exactly once.
pub(crate) fn token_for_resend(
    cell: &Arc<TokenCell>,
    generation: u64,
) -> Option<impl Future<Output = Result<Token, RefreshError>> + Send + 'static> {
    let token = cell.after_rejection(generation)?;
    let cell = cell.clone();
    Some(async move {
        let token = token.await?;
        cell.count_retry();
        tracing::debug!(
            rejected_generation = generation,
            generation = token.generation,
            "token rejected; resending once"
        );
        Ok(token)
    })
}

/// Reads frames until `limit` bytes of data or the end, keeping them to hand back, and a
/// contiguous copy of at most `limit` bytes for the classifier.
pub(crate) async fn read_prefix<B: Body>(
    mut body: Pin<&mut B>,
    limit: usize,
) -> Result<(VecDeque<Frame<B::Data>>, Vec<u8>), B::Error> {
    let mut frames = VecDeque::new();
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        let Some(frame) = body.as_mut().frame().await else {
            break;
        };
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            // A `Buf` may hold several chunks; read them without consuming the frame.
            let mut slices = [std::io::IoSlice::new(&[]); 16];
            let count = data.chunks_vectored(&mut slices);
            for slice in &slices[..count] {
                let room = limit - prefix.len();
                prefix.extend_from_slice(&slice[..slice.len().min(room)]);
            }
        }
        frames.push_back(frame);
    }
    Ok((frames, prefix))
}

/// Reads and drops what is left of a rejected body, so the connection can be reused.
/// Outside a tokio runtime there is no timer to bound the read: the body is dropped.
pub(crate) async fn drain<B: Body>(body: B) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while read <= DRAIN_LIMIT {
            match body.as_mut().frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Buf::remaining),
                _ => break,
            }
        }
    })
    .await;
}
