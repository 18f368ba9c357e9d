//! The HTTP data plane: listeners (plain and TLS with certificate reload), the request phases
//! (classify, authenticate, authorize, forward, audit), header hygiene, the pooled upstream client,
//! the built-in `git http-backend` upstream, and the admin listener.
//!
//! The phases are documented in `docs/request-phases.md`. Every error becomes a response in one
//! place ([`respond`]). This crate must not parse configuration files, read policies from disk or
//! decide anything itself: the policy engine decides, the authenticator authenticates.
#![forbid(unsafe_code)]

mod admin;
mod authenticate;
mod authorize;
mod body;
mod cgi;
mod check;
mod described;
mod ext_authz_http;
mod forward_auth;
mod forwarded;
mod hooks_api;
mod job_tokens;
mod metrics;
mod pages;
#[cfg(test)]
mod phase_tests;
mod pool;
mod portal;
mod proxy;
mod push_refs;
pub mod respond;
mod route_refs;
mod secrets_api;
mod server;
mod ssh_cert;
mod state_api;
mod tls;
mod token_exchange;
mod tunnel;
mod upstream;
mod upstream_request;
mod upstream_response;

pub use admin::serve_admin;
pub use body::Body;
pub use check::{CheckInput, CheckOutcome};
pub use job_tokens::{GITEA_ACTIONS, JobTokenSettings};
pub use metrics::Metrics;
pub use proxy::{Gateway, GatewaySettings};
pub use server::{ServeError, ServeOptions, serve};
pub use ssh_cert::{SshCert, SshCertError, SshCertIssuer};
pub use state_api::{EnvironmentView, RevocationView, StateError, StateStore};
pub use tls::{TlsError, TlsReloader};
pub use upstream::{Probe, Upstream, UpstreamError};

#[cfg(test)]
mod test_util {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from name-value pairs, repeats kept.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    /// A request body made of what arrives on `rx`; it ends when the sender is dropped.
    pub(crate) fn channel_body(
        mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> crate::body::Body {
        use futures_util::StreamExt as _;
        use http_body_util::BodyExt as _;
        let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|b| Ok::<_, crate::body::BoxError>(http_body::Frame::data(b)));
        http_body_util::StreamBody::new(frames).boxed_unsync()
    }
}
