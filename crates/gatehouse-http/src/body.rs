//! Body types: one boxed body for everything, and a wrapper that counts bytes and runs a callback
//! exactly once when the body ends, fails or is dropped (how the audit record learns the size and
//! duration of a streamed response, and whether the client went away).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// Errors a body can fail with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used on both sides of the proxy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body from bytes.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How a counted body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte was read.
    Complete,
    /// The body errored or was dropped early (client or upstream went away).
    Aborted,
}

type OnEnd = Box<dyn FnOnce(u64, BodyEnd) + Send>;

/// Counts the bytes of a body and calls `on_end` once.
pub(crate) struct Counted {
    inner: Body,
    bytes: u64,
    shared: Option<Arc<AtomicU64>>,
    on_end: Option<OnEnd>,
}

impl Counted {
    pub(crate) fn new(inner: Body, shared: Option<Arc<AtomicU64>>, on_end: Option<OnEnd>) -> Self {
        Self {
            inner,
            bytes: 0,
            shared,
            on_end,
        }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, end);
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    this.bytes += n;
                    if let Some(s) = &this.shared {
                        s.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(BodyEnd::Aborted);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let end = if self.inner.is_end_stream() {
            BodyEnd::Complete
        } else {
            BodyEnd::Aborted
        };
        self.finish(end);
    }
}
