//! WebSocket pass-through: an HTTP/1.1 `Upgrade: websocket` request that the policy allowed and
//! the upstream answered with `101 Switching Protocols` becomes a byte relay between the client's
//! connection and the upstream's, until either side closes or Gatehouse stops.
//!
//! Only `websocket` is relayed. Any other upgrade (above all `h2c`) is not forwarded: after an
//! `h2c` upgrade the client could send the upstream any request over the relay, each one unseen
//! by the policy. The relay is authorized once, by the handshake request; what flows through it
//! afterwards is not inspected.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
/// rest was passed on, `Aborted` on an error or when `stop` was cancelled.
pub(crate) async fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
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
    let mut c = Counting::new(TokioIo::new(c));
    let mut u = Counting::new(TokioIo::new(u));
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
            Ok(_) => BodyEnd::Complete,
            Err(e) => {
                tracing::debug!(error = %e, "relay ended with an error");
                BodyEnd::Aborted
            }
        },
        () = stop.cancelled() => BodyEnd::Aborted,
    };
    (c.read, u.read, end)
}

/// Counts the bytes read through it.
struct Counting<T> {
    inner: T,
    read: u64,
}

impl<T> Counting<T> {
    fn new(inner: T) -> Self {
        Self { inner, read: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read += n as u64;
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
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
        let mut b = Counting::new(b);
        a.write_all(b"hello, relay").await.unwrap();
        drop(a);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!((out.as_slice(), b.read), (&b"hello, relay"[..], 12));
    }
}
