//! Body types: one boxed body for everything, and a wrapper that counts bytes and runs a callback
//! exactly once when the body ends, fails or is dropped (how the audit record learns the size and
//! duration of a streamed response, and whether the client went away).

use std::future::Future as _;
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

/// A size hint `extra` bytes larger. The upper bound moves first: `SizeHint` asserts that the
/// lower bound never exceeds the upper one.
fn grow_hint(h: SizeHint, extra: u64) -> SizeHint {
    let mut out = SizeHint::new();
    if let Some(u) = h.upper() {
        out.set_upper(u.saturating_add(extra));
    }
    out.set_lower(h.lower().saturating_add(extra));
    out
}

/// The largest frame [`Coalesced`] builds.
pub(crate) const COALESCE_MAX: usize = 256 * 1024;

/// Below this many gathered bytes, [`Coalesced`] waits for more (up to [`COALESCE_WAIT`]).
const COALESCE_LOW: usize = 64 * 1024;

/// How many data frames a body must have sent before [`Coalesced`] waits for more.
const COALESCE_STREAMING: u32 = 8;

/// The longest a gathered partial frame is held back waiting for more data.
const COALESCE_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Joins data frames into larger ones, up to [`COALESCE_MAX`] bytes. When the inner body is not
/// ready and less than [`COALESCE_LOW`] bytes are gathered, it waits at most [`COALESCE_WAIT`] for
/// more before passing them on; the end of the body is passed on at once. An upstream that relays
/// git's output in 4 KiB chunks (nginx with `fastcgi_buffering off`) would otherwise cost one
/// write, and a hand-off between tasks, per chunk.
pub(crate) struct Coalesced {
    inner: Body,
    buf: bytes::BytesMut,
    held: Option<Frame<Bytes>>,
    ended: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    frames: u32,
}

impl Coalesced {
    pub(crate) fn new(inner: Body) -> Self {
        Self {
            inner,
            buf: bytes::BytesMut::new(),
            held: None,
            ended: false,
            deadline: None,
            frames: 0,
        }
    }

    fn take_buf(&mut self) -> Frame<Bytes> {
        self.deadline = None;
        Frame::data(self.buf.split().freeze())
    }
}

impl http_body::Body for Coalesced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.buf.is_empty()
            && let Some(f) = this.held.take()
        {
            match f.into_data() {
                // A data frame held back for size starts the next gathered frame.
                Ok(data) => this.buf.extend_from_slice(&data),
                Err(other) => return Poll::Ready(Some(Ok(other))),
            }
        }
        while !this.ended && this.held.is_none() && this.buf.len() < COALESCE_MAX {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.frames = this.frames.saturating_add(1);
                        if this.buf.is_empty() && data.len() >= COALESCE_MAX {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if this.buf.len() + data.len() > COALESCE_MAX {
                            // Keep frames within the bound: this one starts the next.
                            this.held = Some(Frame::data(data));
                        } else {
                            this.buf.extend_from_slice(&data);
                        }
                    }
                    // Trailers (or another kind of frame) go out after the data gathered so far.
                    Err(other) => this.held = Some(other),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {
                    // Only a stream of many frames is worth waiting on: a short answer (a ref
                    // advertisement, an API response) is never held back.
                    if !this.buf.is_empty()
                        && this.buf.len() < COALESCE_LOW
                        && this.frames >= COALESCE_STREAMING
                        && !this.inner.is_end_stream()
                    {
                        // Wait a moment for more, but never longer than COALESCE_WAIT.
                        let deadline = this
                            .deadline
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(COALESCE_WAIT)));
                        if deadline.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    break;
                }
            }
        }
        if !this.buf.is_empty() {
            return Poll::Ready(Some(Ok(this.take_buf())));
        }
        if let Some(f) = this.held.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if this.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buf.is_empty() && self.held.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .held
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        grow_hint(self.inner.size_hint(), self.buf.len() as u64 + held)
    }
}

/// The error a body fails with when [`IdleLimited`] gave up on it.
#[derive(Debug, thiserror::Error)]
#[error("no data from the {from} for {idle:?}: body cut off")]
pub(crate) struct BodyIdleTimeout {
    /// Who stopped sending: `client` or `upstream`.
    pub(crate) from: &'static str,
    pub(crate) idle: std::time::Duration,
}

/// Fails a body that delivers nothing for `idle`: an upstream that stopped mid-response without
/// closing (the client's connection or stream is then cut instead of waiting forever), or a
/// client that stopped sending its request body. Only a body that is waited on arms a timer; one
/// that is ready when asked costs a clock read per frame.
pub(crate) struct IdleLimited<B = Body> {
    inner: B,
    from: &'static str,
    idle: std::time::Duration,
    last: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleLimited<B> {
    /// `from` names the sender in the error. A wrapper around this body learns of the cut from
    /// the error ([`Counted`] ends as [`BodyEnd::IdleTimeout`]).
    pub(crate) fn new(inner: B, from: &'static str, idle: std::time::Duration) -> Self {
        Self {
            inner,
            from,
            idle,
            last: tokio::time::Instant::now(),
            timer: None,
        }
    }
}

impl<B> http_body::Body for IdleLimited<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.last = tokio::time::Instant::now();
            return Poll::Ready(r);
        }
        let deadline = this.last + this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(Box::new(BodyIdleTimeout {
            from: this.from,
            idle: this.idle,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first bytes were already read (to decide on them) followed by the rest.
pub(crate) struct Prefixed {
    prefix: Option<Bytes>,
    inner: Body,
}

impl Prefixed {
    pub(crate) fn new(prefix: Bytes, inner: Body) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        grow_hint(
            self.inner.size_hint(),
            self.prefix.as_ref().map_or(0, |p| p.len() as u64),
        )
    }
}

/// When the upstream last took a piece of the request body, shared between the body (which
/// notes it) and the wait for the response head (which reads it): the response must start within
/// `upstream.response_timeout` of the last progress, not of the request's start, so that a long
/// upload is never cut off while it moves. While the upstream waits for the client's next piece,
/// the clock is the client's (`server.body_idle_timeout`), not the upstream's.
#[derive(Clone)]
pub(crate) struct UploadProgress {
    epoch: tokio::time::Instant,
    shared: Arc<ProgressState>,
}

struct ProgressState {
    /// Milliseconds since `epoch` of the last frame taken.
    last_ms: AtomicU64,
    /// The upstream connection asked for more and the client has not sent it yet.
    client_owes: std::sync::atomic::AtomicBool,
}

impl UploadProgress {
    pub(crate) fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            shared: Arc::new(ProgressState {
                last_ms: AtomicU64::new(0),
                client_owes: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn note(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shared.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the upstream last made progress: now, while it waits for the client.
    pub(crate) fn last(&self) -> tokio::time::Instant {
        if self.shared.client_owes.load(Ordering::Relaxed) {
            return tokio::time::Instant::now();
        }
        let ms = self.shared.last_ms.load(Ordering::Relaxed);
        self.epoch + std::time::Duration::from_millis(ms)
    }

    /// Wraps a request body so that each frame the upstream connection takes counts as progress.
    pub(crate) fn watch(&self, inner: Body) -> Body {
        Progressing {
            inner,
            progress: self.clone(),
        }
        .boxed_unsync()
    }
}

struct Progressing {
    inner: Body,
    progress: UploadProgress,
}

impl http_body::Body for Progressing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let owes = r.is_pending();
        if !owes {
            self.progress.note();
        }
        self.progress
            .shared
            .client_owes
            .store(owes, Ordering::Relaxed);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a push's answer (`receive-pack`'s report-status) as it streams to the client, and hands
/// what it said to `on_end` once the report has been read (or the answer has ended); never when
/// it was cut off before.
pub(crate) struct ReportTap {
    inner: Body,
    reader: Option<gatehouse_git::ReportReader>,
    on_end: Option<Box<dyn FnOnce(gatehouse_git::PushReport) + Send>>,
}

impl ReportTap {
    pub(crate) fn new(
        inner: Body,
        sideband: bool,
        on_end: Box<dyn FnOnce(gatehouse_git::PushReport) + Send>,
    ) -> Self {
        Self {
            inner,
            reader: Some(gatehouse_git::ReportReader::new(sideband)),
            on_end: Some(on_end),
        }
    }
}

impl http_body::Body for ReportTap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(reader)) = (f.data_ref(), this.reader.as_mut()) {
                    reader.feed(d);
                    // Acted on as soon as the report is read: the forge's hooks (which start CI
                    // jobs) run after it, and the answer may end without a last poll.
                    if reader.report_read()
                        && let (Some(reader), Some(f)) = (this.reader.take(), this.on_end.take())
                    {
                        f(reader.finish());
                    }
                }
            }
            Poll::Ready(None) => {
                if let (Some(reader), Some(f)) = (this.reader.take(), this.on_end.take()) {
                    f(reader.finish());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.reader = None;
                this.on_end = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        // Polled to its end, so that the report is read whole.
        self.on_end.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a counted body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte was read.
    Complete,
    /// The body errored or was dropped early (client or upstream went away).
    Aborted,
    /// Cut off for lack of traffic: a relay through which nothing went either way, or a response
    /// body the upstream stopped sending (see [`IdleLimited`]).
    IdleTimeout,
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
                this.finish(if e.is::<BodyIdleTimeout>() {
                    BodyEnd::IdleTimeout
                } else {
                    BodyEnd::Aborted
                });
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

/// Whether a request's body is sent encoded (`Content-Encoding` other than `identity`): then
/// it cannot be read for the refs it moves.
pub(crate) fn is_encoded(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(Frame::data(Bytes::from(vec![i as u8; *n]))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn small_ready_frames_are_joined_and_nothing_is_lost() {
        let sizes: Vec<usize> = (0..200).map(|i| 1000 + i * 37).collect();
        let total: usize = sizes.iter().sum();
        let mut body = Coalesced::new(chunks(&sizes));
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(f) = body.frame().await {
            let d = f
                .unwrap_or_else(|e| panic!("{e}"))
                .into_data()
                .unwrap_or_default();
            assert!(d.len() <= COALESCE_MAX, "{} bytes", d.len());
            got.extend_from_slice(&d);
            frames += 1;
        }
        assert_eq!(got.len(), total);
        let expected: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| vec![i as u8; *n])
            .collect();
        assert_eq!(got, expected, "bytes reordered or changed");
        assert!(
            frames <= total / COALESCE_MAX + 2,
            "{frames} frames for {total} bytes"
        );
    }

    #[tokio::test]
    async fn a_partial_frame_is_not_held_back_for_long() {
        // A body that sends 10 bytes and then nothing for a long time (an SSE-like stream): the
        // 10 bytes must come out promptly, not wait for more.
        let (mut tx, rx) = futures_channel_like();
        let mut body = Coalesced::new(rx);
        tx.send(Bytes::from_static(b"0123456789"));
        let started = tokio::time::Instant::now();
        let f = tokio::time::timeout(std::time::Duration::from_secs(2), body.frame()).await;
        let data = f
            .ok()
            .flatten()
            .and_then(Result::ok)
            .and_then(|f| f.into_data().ok());
        assert_eq!(data.as_deref(), Some(&b"0123456789"[..]));
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        drop(tx);
    }

    /// A body fed by hand: data sent on the sender arrives as frames; the body never ends
    /// while the sender lives.
    fn futures_channel_like() -> (Feeder, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (
            Feeder(tx),
            http_body_util::StreamBody::new(stream).boxed_unsync(),
        )
    }

    struct Feeder(tokio::sync::mpsc::UnboundedSender<Bytes>);

    impl Feeder {
        fn send(&mut self, b: Bytes) {
            let _ = self.0.send(b);
        }
    }

    #[tokio::test]
    async fn a_prefixed_body_keeps_an_exact_length() {
        // Found by the push path: an exact inner hint grown by a prefix must not panic.
        let inner = crate::body::full(Bytes::from_static(b"pack-bytes"));
        let body = Prefixed::new(Bytes::from_static(b"commands;"), inner);
        assert_eq!(body.size_hint().exact(), Some(19));
        let coalesced = Coalesced::new(body.boxed_unsync());
        assert_eq!(coalesced.size_hint().exact(), Some(19));
        let all = coalesced
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        assert_eq!(all, Bytes::from_static(b"commands;pack-bytes"));
    }

    #[tokio::test]
    async fn trailers_follow_the_data() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let collected = Coalesced::new(body)
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            collected
                .trailers()
                .and_then(|t| t.get("x-t"))
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"abcd"));
    }

    /// A body fed by hand: frames sent on the returned sender; it ends when the sender is dropped.
    fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(stream).boxed_unsync())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_timeout_and_is_recorded_as_such() {
        let idle = std::time::Duration::from_secs(300);
        let (tx, inner) = fed();
        let limited = IdleLimited::new(inner, "upstream", idle);
        let ended = Arc::new(std::sync::Mutex::new(None));
        let e = ended.clone();
        let mut body = Counted::new(
            limited.boxed_unsync(),
            None,
            Some(Box::new(move |bytes, end| {
                *e.lock().unwrap() = Some((bytes, end));
            })),
        );
        let feeder = tokio::spawn(async move {
            tx.send(Bytes::from_static(b"first")).await.unwrap();
            // Just under the limit between two frames: not a stall.
            tokio::time::sleep(idle - std::time::Duration::from_secs(1)).await;
            tx.send(Bytes::from_static(b"second")).await.unwrap();
            // Then nothing, without ending the body.
            std::future::pending::<()>().await;
        });
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"first");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"second");
        let t = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyIdleTimeout>(), "{err}");
        assert_eq!(t.elapsed(), idle);
        assert_eq!(*ended.lock().unwrap(), Some((11, BodyEnd::IdleTimeout)));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_is_not_cut() {
        let (tx, inner) = fed();
        let mut body = IdleLimited::new(inner, "upstream", std::time::Duration::from_secs(5));
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(std::time::Duration::from_secs(4)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let mut n = 0;
        while let Some(f) = body.frame().await {
            n += f.unwrap().into_data().unwrap().len();
        }
        assert_eq!(n, 10);
    }
}
