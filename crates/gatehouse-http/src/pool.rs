//! The connection pool to an HTTP upstream: one upstream, so one pool with no per-host map.
//!
//! HTTP/1.1 connections are kept in a last-in-first-out stack of idle senders: a connection goes
//! back on the stack when its response body has been read to the end (or right away when the
//! response has none), so no task is spawned per request to wait for it to become free. An
//! `https` upstream that negotiates `h2` by ALPN gets one shared HTTP/2 connection instead.
//! A request that a reused connection could not start (the upstream closed it while it sat idle)
//! is sent again once on a new connection; one that was started is never repeated.
//!
//! It owns reuse, idle expiry and the upstream's connection tasks; it must not decide anything
//! about a request (the proxy has done that) and it never looks at the bodies' bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::Body;

/// Why the pool could not get a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be opened.
    #[error("connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection failed while the request was sent or the response head awaited.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// What opens connections: a TCP (and TLS) connector or a Unix-socket one.
pub(crate) trait Connect: Clone + Send + Sync + 'static {
    type Io: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static;
    fn connect(&self, target: Uri) -> impl Future<Output = Result<Self::Io, PoolError>> + Send;
}

impl<S> Connect for S
where
    S: tower_service::Service<Uri> + Clone + Send + Sync + 'static,
    S::Response: hyper::rt::Read + hyper::rt::Write + Connection + Send + Unpin + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
{
    type Io = S::Response;

    fn connect(&self, target: Uri) -> impl Future<Output = Result<Self::Io, PoolError>> + Send {
        let mut svc = self.clone();
        async move {
            let failed = |e: S::Error, target: &Uri| PoolError::Connect {
                target: target.to_string(),
                source: e.into(),
            };
            if let Err(e) = std::future::poll_fn(|cx| svc.poll_ready(cx)).await {
                return Err(failed(e, &target));
            }
            let call = svc.call(target.clone());
            call.await.map_err(|e| failed(e, &target))
        }
    }
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// The idle HTTP/1.1 connections, shared with the response bodies that put theirs back.
struct IdleStack {
    stack: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper_started: AtomicBool,
}

impl IdleStack {
    /// The most recently used connection that can take a request now. Closed and expired ones
    /// are dropped on the way; one still busy (its request body is still being sent after the
    /// response ended, say) stays for later rather than making this request wait behind it.
    fn take_ready(&self) -> Option<http1::SendRequest<Body>> {
        let mut stack = self.stack.lock().ok()?;
        let now = Instant::now();
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            let e = &stack[i];
            if e.tx.is_closed() || now.duration_since(e.since) >= self.idle_timeout {
                stack.remove(i);
            } else if e.tx.is_ready() {
                return Some(stack.remove(i).tx);
            }
        }
        None
    }

    /// Puts an HTTP/1.1 connection whose response has been read back on the stack.
    fn checkin(self: &Arc<Self>, tx: http1::SendRequest<Body>) {
        if tx.is_closed() || self.max_idle == 0 {
            return;
        }
        let Ok(mut stack) = self.stack.lock() else {
            return;
        };
        if stack.len() >= self.max_idle {
            return;
        }
        stack.push(Idle {
            tx,
            since: Instant::now(),
        });
        drop(stack);
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Closes connections that sat idle for `idle_timeout`, at the bottom of the stack too,
    /// where a busy pool's checkouts never look.
    fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(idle) = weak.upgrade() else { return };
                idle.reap(Instant::now());
            }
        });
    }

    fn reap(&self, now: Instant) {
        if let Ok(mut stack) = self.stack.lock() {
            stack.retain(|i| !i.tx.is_closed() && now.duration_since(i.since) < self.idle_timeout);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stack.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// A pool of connections to one upstream.
pub(crate) struct ConnPool<C> {
    connector: C,
    /// What the connector is called with (its scheme decides TLS; its authority, where to).
    target: Uri,
    idle: Arc<IdleStack>,
    /// The shared HTTP/2 connection, when the upstream negotiated `h2`.
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

impl<C> std::fmt::Debug for ConnPool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("target", &self.target)
            .field("max_idle", &self.idle.max_idle)
            .field("idle_timeout", &self.idle.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection taken for one request.
enum Taken {
    H1 {
        tx: http1::SendRequest<Body>,
        reused: bool,
    },
    H2 {
        tx: http2::SendRequest<Body>,
        reused: bool,
    },
}

impl<C: Connect> ConnPool<C> {
    pub(crate) fn new(connector: C, target: Uri, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            connector,
            target,
            idle: Arc::new(IdleStack {
                stack: Mutex::new(Vec::new()),
                max_idle,
                idle_timeout,
                reaper_started: AtomicBool::new(false),
            }),
            h2: Mutex::new(None),
        }
    }

    /// Sends `req`, whose URI is absolute (scheme and authority are the upstream's). For
    /// HTTP/1.1 it is sent in origin form with a `Host` header (the authority's, unless the
    /// request has one).
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let mut fresh_only = false;
        loop {
            // Connecting (TCP, TLS, the handshake) is a large future and the uncommon case:
            // boxed, it does not make every request's future as large.
            let taken = if fresh_only {
                Box::pin(self.connect()).await?
            } else {
                match self.checkout() {
                    Some(t) => t,
                    None => Box::pin(self.connect()).await?,
                }
            };
            match taken {
                Taken::H1 { mut tx, reused } => {
                    prepare_h1(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => {
                            // A 101 hands the connection to the upgrade: it never comes back.
                            let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                                .then(|| Back {
                                    idle: Arc::downgrade(&self.idle),
                                    tx,
                                });
                            return Ok(resp.map(|body| PooledBody::new(body, back)));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(r) if reused => {
                                tracing::debug!(error = %e.error(), "pooled upstream connection closed before the request started; retrying on a new one");
                                req = r;
                                restore_absolute(&mut req, &self.target);
                                fresh_only = true;
                            }
                            _ => return Err(e.into_error().into()),
                        },
                    }
                }
                Taken::H2 { mut tx, reused } => {
                    prepare_h2(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(resp.map(|body| PooledBody::new(body, None))),
                        Err(mut e) => match e.take_message() {
                            Some(r) if reused => {
                                tracing::debug!(error = %e.error(), "shared HTTP/2 upstream connection closed before the request started; retrying on a new one");
                                self.forget_h2(&tx);
                                req = r;
                                fresh_only = true;
                            }
                            _ => return Err(e.into_error().into()),
                        },
                    }
                }
            }
        }
    }

    /// A live connection from the pool, if there is one.
    fn checkout(&self) -> Option<Taken> {
        let h2 = self.h2.lock().ok().and_then(|g| g.clone());
        if let Some(tx) = h2 {
            if !tx.is_closed() {
                return Some(Taken::H2 { tx, reused: true });
            }
            self.forget_h2(&tx);
        }
        let tx = self.idle.take_ready()?;
        Some(Taken::H1 { tx, reused: true })
    }

    /// Forgets the shared HTTP/2 connection once it is closed.
    fn forget_h2(&self, tx: &http2::SendRequest<Body>) {
        if let Ok(mut g) = self.h2.lock()
            && g.as_ref()
                .is_some_and(|cur| cur.is_closed() || tx.is_closed())
        {
            *g = None;
        }
    }

    /// Opens a new connection: HTTP/2 when TLS negotiated `h2`, else HTTP/1.1.
    async fn connect(&self) -> Result<Taken, PoolError> {
        let io = self.connector.connect(self.target.clone()).await?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            if let Ok(mut g) = self.h2.lock() {
                *g = Some(tx.clone());
            }
            return Ok(Taken::H2 { tx, reused: false });
        }
        let (tx, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Taken::H1 { tx, reused: false })
    }

    /// How many connections sit idle (tests).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

/// HTTP/1.1 wants origin form and a `Host`.
fn prepare_h1(req: &mut Request<Body>) {
    let uri = req.uri();
    if uri.authority().is_none() {
        return;
    }
    if !req.headers().contains_key(http::header::HOST)
        && let Some(a) = uri.authority()
        && let Ok(v) = http::HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}

/// HTTP/2 carries the host in `:authority`, from the URI: a `Host` header (the client's, kept
/// by `upstream.preserve_host`) moves there rather than going out twice.
fn prepare_h2(req: &mut Request<Body>) {
    let Some(host) = req.headers_mut().remove(http::header::HOST) else {
        return;
    };
    let Ok(authority) = http::uri::Authority::try_from(host.as_bytes()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Undoes `prepare_h1`'s origin form before a retry (the new connection may be HTTP/2).
fn restore_absolute(req: &mut Request<Body>, target: &Uri) {
    let mut parts = http::uri::Parts::default();
    parts.scheme = target.scheme().cloned();
    parts.authority = target.authority().cloned();
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Where an HTTP/1.1 connection goes back once its response has been read.
struct Back {
    idle: Weak<IdleStack>,
    tx: http1::SendRequest<Body>,
}

/// A response body that puts its connection back in the pool when it has been read to the end.
/// Dropped before the end, the connection is dropped too (hyper closes it).
pub(crate) struct PooledBody {
    inner: Incoming,
    back: Option<Back>,
}

impl PooledBody {
    fn new(inner: Incoming, back: Option<Back>) -> Self {
        let mut b = Self { inner, back };
        // No body at all (HEAD, 204, 304, an empty 200): the connection is free now.
        if http_body::Body::is_end_stream(&b.inner) {
            b.release();
        }
        b
    }

    fn release(&mut self) {
        if let Some(back) = self.back.take()
            && let Some(idle) = back.idle.upgrade()
        {
            idle.checkin(back.tx);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if http_body::Body::is_end_stream(&this.inner) => {
                this.release();
            }
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(|e| Box::new(e) as crate::body::BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Connects over plain TCP to a test listener.
    #[derive(Clone)]
    struct Plain;

    impl tower_service::Service<Uri> for Plain {
        type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
        type Error = std::io::Error;
        type Future =
            Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send + 'static>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, uri: Uri) -> Self::Future {
            Box::pin(async move {
                let a = uri.authority().map(|a| a.to_string()).unwrap_or_default();
                let s = tokio::net::TcpStream::connect(a).await?;
                Ok(hyper_util::rt::TokioIo::new(s))
            })
        }
    }

    /// A real HTTP/1.1 server (hyper) that answers `ok` and counts its connections.
    async fn server(close_after_each: bool) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .map(|h| h.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let uri = req.uri().to_string();
                            let mut resp = Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(format!("{uri} {host}")),
                            ));
                            if close_after_each {
                                resp.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), conns)
    }

    fn get(target: &Uri, path: &str) -> Request<Body> {
        let uri = format!("{target}{}", path.trim_start_matches('/'));
        Request::get(uri)
            .body(crate::body::full(bytes::Bytes::new()))
            .unwrap()
    }

    async fn text(resp: Response<PooledBody>) -> String {
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reuses_one_connection_for_sequential_requests_in_origin_form_with_host() {
        let (target, conns) = server(false).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            8,
            Duration::from_secs(60),
        ));
        for i in 0..5 {
            let resp = pool
                .send(get(&target, &format!("/r{i}?q=1")))
                .await
                .unwrap();
            let t = text(resp).await;
            assert_eq!(t, format!("/r{i}?q=1 {}", target.authority().unwrap()));
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_return_its_connection() {
        let (target, conns) = server(false).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            8,
            Duration::from_secs(60),
        ));
        let resp = pool.send(get(&target, "/a")).await.unwrap();
        // Unread, the body is unfinished as far as hyper knows: that connection cannot carry
        // another request, so the next one opens a new connection.
        drop(resp);
        let t = text(pool.send(get(&target, "/b")).await.unwrap()).await;
        assert!(t.starts_with("/b "), "{t}");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_keep_at_most_max_idle() {
        let (target, conns) = server(false).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            2,
            Duration::from_secs(60),
        ));
        // Hold four responses unread at once: four connections.
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(pool.send(get(&target, &format!("/{i}"))).await.unwrap());
        }
        assert_eq!(conns.load(Ordering::SeqCst), 4);
        for r in held {
            text(r).await;
        }
        assert_eq!(pool.idle_len(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (target, conns) = server(true).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            8,
            Duration::from_secs(60),
        ));
        for i in 0..3 {
            let t = text(pool.send(get(&target, &format!("/{i}"))).await.unwrap()).await;
            assert!(t.starts_with(&format!("/{i} ")), "{t}");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn max_idle_zero_never_pools() {
        let (target, conns) = server(false).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            0,
            Duration::from_secs(60),
        ));
        for i in 0..3 {
            text(pool.send(get(&target, &format!("/{i}"))).await.unwrap()).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire() {
        let (target, conns) = server(false).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            8,
            Duration::from_secs(10),
        ));
        text(pool.send(get(&target, "/a")).await.unwrap()).await;
        assert_eq!(pool.idle_len(), 1);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(pool.idle_len(), 1, "not yet");
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(pool.idle_len(), 0, "the reaper closed it");
        text(pool.send(get(&target, "/b")).await.unwrap()).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    /// What the raw upstream of the fault-injection tests does once it has answered.
    enum AfterAnswer {
        /// Closes the connection, with no `Connection: close` said.
        Close,
        /// Reads on (and drops) whatever else the client sends.
        KeepReading,
    }

    /// Fault injection (named as such): a raw TCP upstream that answers `200 ok` (keep-alive) as
    /// soon as it has a request head, whatever the body, then does `after`. Counts connections.
    async fn raw_upstream(after: AfterAnswer) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = conns.clone();
        let close = matches!(after, AfterAnswer::Close);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    if close {
                        let _ = s.shutdown().await;
                    } else {
                        while s.read(&mut buf).await.unwrap_or(0) > 0 {}
                    }
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), conns)
    }

    /// The upstream (`raw_upstream`, fault injection) answers as soon as it has the request
    /// head, while the request body is still being sent (as a forge refusing a push
    /// early does). The response ends first, so its connection goes back on the stack busy; the
    /// next request must not wait behind the unfinished upload but take a new connection.
    #[tokio::test]
    async fn a_connection_still_sending_a_request_body_is_not_handed_out() {
        let (target, conns) = raw_upstream(AfterAnswer::KeepReading).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            8,
            Duration::from_secs(60),
        ));
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        let req = Request::post(format!("{target}push"))
            .body(crate::test_util::channel_body(rx))
            .unwrap();
        let resp = pool.send(req).await.unwrap();
        assert_eq!(text(resp).await, "ok");
        assert_eq!(pool.idle_len(), 1, "the connection went back, busy");
        let second = tokio::time::timeout(Duration::from_secs(5), pool.send(get(&target, "/x")))
            .await
            .expect("the second request waited behind the first one's upload")
            .unwrap();
        assert_eq!(text(second).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        drop(tx);
    }

    /// The upstream (`raw_upstream`, fault injection) answers the first request on a connection
    /// with keep-alive and then closes that connection without reading further, the race a real
    /// server's keep-alive timeout causes. The pooled connection is closed by the
    /// time of the next request; the request must go out on a new connection and succeed.
    #[tokio::test]
    async fn a_stale_pooled_connection_is_replaced_without_failing_the_request() {
        let (target, conns) = raw_upstream(AfterAnswer::Close).await;
        let pool = Arc::new(ConnPool::new(
            Plain,
            target.clone(),
            8,
            Duration::from_secs(60),
        ));
        for _ in 0..5 {
            let resp = pool.send(get(&target, "/x")).await.unwrap();
            assert_eq!(text(resp).await, "ok");
            // Let the connection task see the close, as it would between real requests.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }
}
