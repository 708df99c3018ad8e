//! The response body: the inner service's own, with any prefix a classifier read put back.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that passed through [`Refresh`](crate::Refresh).
    ///
    /// It is the inner service's body unchanged, except when a
    /// [`ClassifyRejection`](crate::classify::ClassifyRejection) read a prefix of it to decide:
    /// then the frames it read come first, as they were, and the rest follows.
    pub struct RefreshBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[project_ref = InnerRef]
    enum Inner<B>
    where
        B: Body,
    {
        // The common case: the body as the service returned it, not moved since.
        Plain { #[pin] body: B },
        // A classifier read these frames first, so the body was polled before being handed
        // back, and lives in a box. Boxed again as a whole: this variant is rare, and inline
        // it would add 40 bytes to every response, which each move of a response pays for.
        Read { read: Box<ReadFrames<B>> },
    }
}

struct ReadFrames<B: Body> {
    frames: VecDeque<Frame<B::Data>>,
    body: Pin<Box<B>>,
}

impl<B: Body> RefreshBody<B> {
    pub(crate) fn new(body: B) -> Self {
        RefreshBody {
            inner: Inner::Plain { body },
        }
    }

    pub(crate) fn with_read_frames(frames: VecDeque<Frame<B::Data>>, body: Pin<Box<B>>) -> Self {
        RefreshBody {
            inner: Inner::Read {
                read: Box::new(ReadFrames { frames, body }),
            },
        }
    }
}

impl<B: Body> Body for RefreshBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Plain { body } => body.poll_frame(cx),
            InnerProj::Read { read } => match read.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => read.body.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain { body } => body.is_end_stream(),
            Inner::Read { read } => read.frames.is_empty() && read.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let (frames, body): (&VecDeque<_>, &B) = match &self.inner {
            Inner::Plain { body } => return body.size_hint(),
            Inner::Read { read } => (&read.frames, &read.body),
        };
        let read: u64 = frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(|data| data.remaining() as u64)
            .sum();
        let rest = body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

impl<B: Body> std::fmt::Debug for RefreshBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read_frames = match &self.inner {
            Inner::Plain { .. } => 0,
            Inner::Read { read } => read.frames.len(),
        };
        f.debug_struct("RefreshBody")
            .field("read_frames", &read_frames)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn read_frames_come_first_then_the_rest() {
        let read = VecDeque::from([Frame::data(Bytes::from_static(b"{\"err"))]);
        let rest = Box::pin(Full::new(Bytes::from_static(b"or\":1}")));
        let body = RefreshBody::with_read_frames(read, rest);
        assert_eq!(body.size_hint().exact(), Some(11));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"error\":1}");
    }
}
