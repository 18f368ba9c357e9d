//! WebSocket pass-through: an HTTP/1.1 `Upgrade: websocket` request that the policy allowed and
//! the upstream answered with `101 Switching Protocols` becomes a byte relay between the client's
//! connection and the upstream's, until either side closes or Gatehouse stops.
//!
//! Only `websocket` is relayed. Any other upgrade (above all `h2c`) is not forwarded: after an
//! `h2c` upgrade the client could send the upstream any request over the relay, each one unseen
//! by the policy. The relay is authorized once, by the handshake request; what flows through it
//! afterwards is not inspected.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::body::BodyEnd;

/// The one upgrade Gatehouse relays.
const WEBSOCKET: &str = "websocket";

/// The `Upgrade` value of an HTTP/1.1 request that asks to switch to WebSocket (`Connection`
/// names `upgrade` and `Upgrade` is `websocket`); `None` for anything else.
pub(crate) fn websocket_upgrade(version: http::Version, h: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let asks = h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    let mut values = h.get_all(header::UPGRADE).iter();
    let (Some(upgrade), None) = (values.next(), values.next()) else {
        return None;
    };
    (asks
        && upgrade
            .as_bytes()
            .eq_ignore_ascii_case(WEBSOCKET.as_bytes()))
    .then(|| upgrade.clone())
}

/// Whether an upstream's `Upgrade` answer names WebSocket.
pub(crate) fn switched_to_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(WEBSOCKET.as_bytes()))
}

/// The upstream's side of an upgraded connection, carried from the proxy phase to the handler in
/// the response's extensions (which want `Clone`: the handler takes it out once).
#[derive(Clone)]
pub(crate) struct UpstreamUpgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl UpstreamUpgrade {
    pub(crate) fn new(on: OnUpgrade) -> Self {
        Self(Arc::new(Mutex::new(Some(on))))
    }

    pub(crate) fn take(self) -> Option<OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// Relays bytes both ways once both sides have switched protocols. Returns the bytes the client
/// sent, the bytes the upstream sent, and how it ended: `Complete` when one side closed and the
/// rest was passed on, `IdleTimeout` when no byte went either way for `idle`, `Aborted` on an
/// error or when `stop` was cancelled.
pub(crate) async fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    stop: &CancellationToken,
) -> (u64, u64, BodyEnd) {
    let ios = tokio::select! {
        r = async { tokio::try_join!(client, upstream) } => r,
        () = stop.cancelled() => return (0, 0, BodyEnd::Aborted),
    };
    let (c, u) = match ios {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return (0, 0, BodyEnd::Aborted);
        }
    };
    pump(TokioIo::new(c), TokioIo::new(u), idle, stop).await
}

/// Copies both ways between two upgraded connections until one side closes (the other side's
/// writes are then shut down once the rest is passed on), no byte moves for `idle`, an error,
/// or `stop`. Dropping the connections on return closes them.
async fn pump<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    stop: &CancellationToken,
) -> (u64, u64, BodyEnd)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let from_client = AtomicU64::new(0);
    let from_upstream = AtomicU64::new(0);
    let mut c = Counting::new(client, &from_client);
    let mut u = Counting::new(upstream, &from_upstream);
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
            Ok(_) => BodyEnd::Complete,
            Err(e) => {
                tracing::debug!(error = %e, "relay ended with an error");
                BodyEnd::Aborted
            }
        },
        () = quiet_for(idle, &from_client, &from_upstream) => BodyEnd::IdleTimeout,
        () = stop.cancelled() => BodyEnd::Aborted,
    };
    (
        from_client.load(Ordering::Relaxed),
        from_upstream.load(Ordering::Relaxed),
        end,
    )
}

/// Returns once neither counter has moved for `idle`. It looks every
/// [`idle_check_interval`](crate::server::idle_check_interval), so a quiet relay ends between
/// `idle` and `idle` plus one look later: one timer per relay, not one per byte.
async fn quiet_for(idle: Duration, a: &AtomicU64, b: &AtomicU64) {
    let tick = crate::server::idle_check_interval(idle);
    let seen =
        |a: &AtomicU64, b: &AtomicU64| (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
    let mut last = seen(a, b);
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = seen(a, b);
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() >= idle {
            return;
        }
    }
}

/// Counts the bytes read through it.
struct Counting<'a, T> {
    inner: T,
    read: &'a AtomicU64,
}

impl<'a, T> Counting<'a, T> {
    fn new(inner: T, read: &'a AtomicU64) -> Self {
        Self { inner, read }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn only_an_http11_websocket_upgrade_is_relayed() {
        let v11 = http::Version::HTTP_11;
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            websocket_upgrade(v11, &headers(&ws))
                .as_ref()
                .map(HeaderValue::as_bytes),
            Some(&b"WebSocket"[..])
        );
        assert!(websocket_upgrade(http::Version::HTTP_10, &headers(&ws)).is_none());
        assert!(websocket_upgrade(http::Version::HTTP_2, &headers(&ws)).is_none());
        for refused in [
            vec![
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ],
            vec![("upgrade", "websocket")],
            vec![("connection", "upgraded"), ("upgrade", "websocket")],
            vec![("connection", "upgrade"), ("upgrade", "websocket, h2c")],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
            ],
            vec![("connection", "upgrade")],
        ] {
            assert!(
                websocket_upgrade(v11, &headers(&refused)).is_none(),
                "{refused:?}"
            );
        }
        assert!(switched_to_websocket(&headers(&[("upgrade", "websocket")])));
        assert!(!switched_to_websocket(&headers(&[("upgrade", "h2c")])));
        assert!(!switched_to_websocket(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn counting_counts_what_is_read() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut a, b) = tokio::io::duplex(64);
        let read = AtomicU64::new(0);
        let mut b = Counting::new(b, &read);
        a.write_all(b"hello, relay").await.unwrap();
        drop(a);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(
            (out.as_slice(), read.into_inner()),
            (&b"hello, relay"[..], 12)
        );
    }

    /// Two relayed connections in memory: what the client and the upstream hold, and the relay.
    fn relayed(
        idle: Duration,
        stop: CancellationToken,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<(u64, u64, BodyEnd)>,
    ) {
        let (client, client_side) = tokio::io::duplex(1024);
        let (upstream, upstream_side) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { pump(client_side, upstream_side, idle, &stop).await });
        (client, upstream, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_relay_is_closed_after_the_idle_timeout() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let idle = Duration::from_secs(600);
        let (mut client, mut upstream, task) = relayed(idle, CancellationToken::new());
        let started = tokio::time::Instant::now();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        upstream.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        let (from_client, from_upstream, end) = task.await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            (from_client, from_upstream, end),
            (4, 5, BodyEnd::IdleTimeout)
        );
        assert!(
            took >= idle && took <= idle + idle / 4 + Duration::from_secs(5),
            "closed after {took:?}"
        );
        // Both connections were closed: each side reads the end.
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(upstream.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_a_relay_open() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let idle = Duration::from_secs(60);
        let (mut client, mut upstream, task) = relayed(idle, CancellationToken::new());
        let started = tokio::time::Instant::now();
        // Ten minutes of one byte every 40 s, alternating directions: each side on its own is
        // quiet for 80 s, longer than the timeout, but the relay never is.
        for i in 0..15 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            let mut b = [0u8; 1];
            if i % 2 == 0 {
                client.write_all(b"c").await.unwrap();
                upstream.read_exact(&mut b).await.unwrap();
            } else {
                upstream.write_all(b"u").await.unwrap();
                client.read_exact(&mut b).await.unwrap();
            }
        }
        assert!(!task.is_finished());
        // The client leaves; the relay passes that on and ends once the upstream closes too.
        drop(client);
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        drop(upstream);
        let (from_client, from_upstream, end) = task.await.unwrap();
        assert_eq!((from_client, from_upstream, end), (8, 7, BodyEnd::Complete));
        assert!(started.elapsed() >= Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_ends_as_aborted_when_gatehouse_stops() {
        let stop = CancellationToken::new();
        let (_client, _upstream, task) = relayed(Duration::from_secs(600), stop.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        assert_eq!(task.await.unwrap(), (0, 0, BodyEnd::Aborted));
    }
}
