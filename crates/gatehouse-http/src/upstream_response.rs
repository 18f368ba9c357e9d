//! Phase 6b: the upstream's answer as the client gets it. Hop-by-hop headers go; the upstream
//! may not set (or replace) Gatehouse's own cookies; a `101` is passed on only as the answer to
//! the WebSocket handshake the client made (the relay is then `tunnel`'s), else it is a `502`;
//! a response body the upstream stops sending is cut off after `upstream.body_idle_timeout`.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;

use crate::body::{Body, Coalesced, IdleLimited, full};
use crate::forwarded::strip_hop_by_hop;
use crate::proxy::{Admitted, Gateway};
use crate::tunnel::{UpstreamUpgrade, switched_to_websocket};

impl Gateway {
    /// The client's response from the upstream's.
    pub(crate) fn upstream_response(
        &self,
        mut resp: Response<Body>,
        adm: &Admitted,
    ) -> Response<Body> {
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && adm.websocket.is_some()
            && switched_to_websocket(resp.headers());
        let upstream_upgrade = switched.then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The upstream may not set (or replace) Gatehouse's own cookies.
        if parts.headers.contains_key(header::SET_COOKIE) {
            let kept: Vec<HeaderValue> = parts
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .filter(|v| {
                    !v.as_bytes()
                        .trim_ascii_start()
                        .starts_with(b"__Host-gatehouse-")
                })
                .cloned()
                .collect();
            parts.headers.remove(header::SET_COOKIE);
            for v in kept {
                parts.headers.append(header::SET_COOKIE, v);
            }
        }
        if let (Some(upgrade), Some(on)) = (adm.websocket.clone(), upstream_upgrade) {
            // The client's side switches once hyper has sent this head (see `handle`).
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, upgrade);
            parts.extensions.insert(UpstreamUpgrade::new(on));
            return Response::from_parts(parts, full(bytes::Bytes::new()));
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // Switching to something the client did not ask for.
            tracing::warn!(request_id = %adm.request_id, "upstream answered 101 without a WebSocket handshake to answer; refused");
            parts.status = StatusCode::BAD_GATEWAY;
        }
        // A stall is counted and logged when the body ends (`Done::upstream_stalled`).
        let body = IdleLimited::new(
            Coalesced::new(body),
            "upstream",
            self.settings.upstream_body_idle_timeout,
        );
        Response::from_parts(parts, body.boxed_unsync())
    }
}
