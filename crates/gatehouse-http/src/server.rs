//! The public listener: accepts TCP (and TLS) connections, serves HTTP/1.1 and HTTP/2 on each,
//! closes connections idle for longer than the idle timeout, and on shutdown stops accepting and
//! drains in-flight requests for up to the grace period.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::body::Counted;
use crate::proxy::{ConnInfo, Gateway};

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Accepting connections failed persistently.
    #[error("accept failed: {0}")]
    Accept(#[from] io::Error),
}

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time allowed for the TLS handshake and for a request's headers.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    pub idle_timeout: Duration,
    /// In-flight requests get this long to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Threads that each run their own single-threaded runtime and accept on the same
    /// listener besides the caller's runtime (thread per core: a connection stays on the
    /// thread that accepted it). `0`: the caller's runtime alone.
    pub extra_accept_threads: usize,
}

/// When a connection last started or finished a request, and how many of its requests are
/// unanswered. Raw bytes do not count: HTTP/2 keep-alive pings must not keep an idle connection open.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One request in flight on a connection, from its head until its response body ends. Dropped
/// either way: at the body's end, or with the handler's future when the client goes first (an
/// HTTP/2 stream reset, an HTTP/1.1 disconnect), so that the connection's idle timeout still
/// comes when nothing is in flight.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains.
///
/// Connections are accepted by a task on the runtime's workers, not by the caller's thread
/// (under `block_on` that is the main thread): every accepted connection would otherwise cost a
/// cross-thread wake-up before its first byte is read.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gateway: Arc<Gateway>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let gateway_for_tunnels = gateway.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let listener = if opts.extra_accept_threads > 0 {
        let std_listener = listener.into_std()?;
        for i in 0..opts.extra_accept_threads {
            spawn_accept_thread(
                i,
                std_listener.try_clone()?,
                acceptor.clone(),
                gateway.clone(),
                opts,
                stop_rx.clone(),
                alive_tx.clone(),
            )?;
        }
        TcpListener::from_std(std_listener)?
    } else {
        listener
    };
    let mut accept = tokio::spawn(accept_loop(
        listener, acceptor, gateway, opts, stop_rx, alive_tx,
    ));
    tokio::pin!(shutdown);
    let ended = tokio::select! {
        () = &mut shutdown => None,
        r = &mut accept => Some(r),
    };
    tracing::info!(grace = ?opts.shutdown_grace, "shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    // Relays never end on their own, and their clients reconnect: they close now, and their
    // records are queued before the runtime (and with it any task still running) goes away.
    if tokio::time::timeout(opts.shutdown_grace, gateway_for_tunnels.close_tunnels())
        .await
        .is_err()
    {
        tracing::warn!("relays did not close within the shutdown grace period");
    }
    let result = match ended {
        Some(r) => r,
        None => accept.await,
    };
    let result = result.unwrap_or_else(|e| Err(ServeError::Accept(std::io::Error::other(e))));
    if tokio::time::timeout(opts.shutdown_grace, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    result
}

/// A thread with its own single-threaded runtime accepting on a clone of the listener: the
/// connections it accepts are served on it alone, with no hand-off between threads. It holds a
/// clone of `alive` until its own connections have ended (or the grace is over), so that
/// `serve`'s drain waits for them too.
fn spawn_accept_thread(
    i: usize,
    listener: std::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gateway: Arc<Gateway>,
    opts: ServeOptions,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("gatehouse-accept-{i}"))
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "an accept thread could not take the listener");
                        return;
                    }
                };
                let (local_tx, mut local_rx) = mpsc::channel::<()>(1);
                let mut stop_for_drain = stop.clone();
                if let Err(e) =
                    accept_loop(listener, acceptor, gateway.clone(), opts, stop, local_tx).await
                {
                    tracing::error!(error = %e, "an accept thread stopped accepting");
                }
                // Its connections, and the WebSocket relays they became, run on this runtime:
                // wait for them (the relays close once `serve` closes the tunnels), within the
                // grace, so that none is dropped unrecorded with the runtime.
                let _ = stop_for_drain.wait_for(|s| *s).await;
                let _ = tokio::time::timeout(opts.shutdown_grace, async {
                    let _ = local_rx.recv().await;
                    gateway.close_tunnels().await;
                })
                .await;
                drop(alive);
            });
        })?;
    Ok(())
}

/// Accepts connections until `stop` turns true; each connection holds a clone of `alive`, so
/// the channel closes once the last one ends.
async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gateway: Arc<Gateway>,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
    alive_tx: mpsc::Sender<()>,
) -> Result<(), ServeError> {
    let stop_rx = stop.clone();
    let mut accept_errors = 0u32;
    loop {
        let (stream, peer) = tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() { return Ok(()); }
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => { accept_errors = 0; x }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    accept_errors += 1;
                    tracing::warn!(error = %e, "accept failed");
                    if accept_errors > 1000 { return Err(ServeError::Accept(e)); }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let activity = Arc::new(Activity {
                epoch: Instant::now(),
                last_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
            });
            match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(opts.header_read_timeout, acc.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let peer_names = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|der| crate::tls::client_cert_names(der).into());
                            let io = tls;
                            serve_conn(
                                io,
                                ConnInfo {
                                    peer,
                                    tls: true,
                                    peer_names,
                                },
                                gateway,
                                opts,
                                activity,
                                stop,
                            )
                            .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    let io = stream;
                    serve_conn(
                        io,
                        ConnInfo {
                            peer,
                            tls: false,
                            peer_names: None,
                        },
                        gateway,
                        opts,
                        activity,
                        stop,
                    )
                    .await;
                }
            }
        });
    }
}

async fn serve_conn<T>(
    io: T,
    info: ConnInfo,
    gateway: Arc<Gateway>,
    opts: ServeOptions,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let act = activity.clone();
    let peer = info.peer;
    let svc = hyper::service::service_fn(move |req| {
        let gateway = gateway.clone();
        let in_flight = InFlight::start(&act);
        // Boxing erases the handler's future type, which keeps the compiler's higher-ranked
        // lifetime inference out of hyper's `Send` and `Into<BoxError>` bounds.
        let fut: Pin<Box<dyn Future<Output = http::Response<crate::body::Body>> + Send>> =
            Box::pin(gateway.handle(
                req.map(|b: hyper::body::Incoming| {
                    b.map_err(|e| Box::new(e) as crate::body::BoxError)
                        .boxed_unsync()
                }),
                info.clone(),
            ));
        async move {
            let resp = fut.await;
            Ok::<_, std::convert::Infallible>(resp.map(move |b| {
                Counted::new(b, None, Some(Box::new(move |_, _| drop(in_flight)))).boxed_unsync()
            }))
        }
    });
    // Upgrades: a WebSocket handshake the gateway answered with 101 hands the connection to a
    // relay (`tunnel`); everything else is served as usual.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let tick = idle_check_interval(opts.idle_timeout);
    let mut closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                if changed.is_err() || *stop.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(tick), if !closing => {
                if activity.in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= opts.idle_timeout {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// How often an idle timeout is checked: a quarter of it, between 50 ms and 5 s. Something idle
/// is closed between the timeout and one interval later, for one timer per connection or relay.
pub(crate) fn idle_check_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}
