//! Phase 5: the request the upstream gets. Hop-by-hop headers go (a WebSocket handshake keeps
//! its upgrade), so do every identity header a client sent, `Expect`, Gatehouse's own cookies
//! and (unless `identity.forward_authorization`) `Authorization`; the host that was classified
//! goes as `Host`; the identity headers, the request id, the trace context and `X-Forwarded-*`
//! are set. The path and query are the classified ones, chosen by the caller.

use http::Request;
use http::header::{self, HeaderName, HeaderValue};

use gatehouse_core::Principal;

use crate::body::Body;
use crate::forwarded::{TRACEPARENT, TRACESTATE, X_REQUEST_ID, set_forwarded, strip_hop_by_hop};
use crate::proxy::{Admitted, Gateway, forwarded_host};
use crate::respond::Refusal;

impl Gateway {
    /// The head of the request for the upstream, and its body, from the client's request.
    pub(crate) fn upstream_request(
        &self,
        req: Request<Body>,
        principal: &Principal,
        adm: &Admitted,
        tls: bool,
        trusted_peer: bool,
    ) -> Result<(http::request::Parts, Body), Refusal> {
        let (mut parts, body) = req.into_parts();
        // A WebSocket handshake keeps its `Connection: upgrade` and `Upgrade: websocket`, which
        // are hop-by-hop; any other upgrade is dropped here (see `tunnel`).
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        if let Some(upgrade) = &adm.websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, upgrade.clone());
        }
        // One pass over the request's few names finds the identity headers a client sent; a
        // hashed removal of every name on the list would cost more when (as usual) none is there.
        let sent: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.strip.drops(n))
            .cloned()
            .collect();
        for n in sent {
            headers.remove(n);
        }
        headers.remove(header::EXPECT);
        // Gatehouse's own cookies are not the upstream's business.
        if self.sessions.is_some() && headers.contains_key(header::COOKIE) {
            let kept: Vec<String> = crate::portal::cookie_headers(headers)
                .filter_map(gatehouse_session::without_own_cookies)
                .collect();
            headers.remove(header::COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
            {
                headers.insert(header::COOKIE, v);
            }
        }
        // HTTP/2 carries the host in :authority and an absolute-form HTTP/1.1 request names it in
        // the URI (which wins over Host, RFC 9112 §3.2.2): the upstream gets the host that was
        // classified, as a Host header.
        if let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        let headers = &mut parts.headers;
        if !self.settings.identity.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        self.set_identity(headers, principal)?;
        if let Ok(v) = HeaderValue::from_str(&adm.request_id) {
            headers.insert(X_REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&adm.trace.traceparent()) {
            headers.insert(TRACEPARENT, v);
        }
        // W3C Trace Context: `tracestate` belongs to the caller's `traceparent`; without a valid
        // one the trace starts here, and its state goes.
        if adm.trace.parent_span_id.is_none() {
            headers.remove(TRACESTATE);
        }
        set_forwarded(
            headers,
            &adm.peer_text,
            &adm.client_text,
            if tls { "https" } else { "http" },
            &forwarded_host(&adm.host, adm.port),
            trusted_peer,
        );
        Ok((parts, body))
    }
}
