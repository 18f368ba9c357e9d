//! The request phases, in order (see `docs/request-phases.md`):
//!
//! 1. **admit**: request id, trace context, client address; reserve an audit slot or refuse (503).
//! 2. **classify**: normalize the path; decide action and resource (400 on a bad path).
//! 3. **authenticate**: credential to principal (401 with an RFC 6750 challenge).
//! 4. **authorize**: the policy decides (403 with a reason code); LFS batch bodies are read first.
//! 5. **upstream_request**: header hygiene, identity headers, assertion, forwarded headers.
//! 6. **proxy**: send upstream (502/504 on failure) and stream the answer back.
//! 7. **log**: when the response body ends (or the client goes away), write the audit record.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_audit::{AuditRecord, AuditSink, SpanIds, SpanSink};
use gatehouse_authn::{Authenticator, AuthnError};
use gatehouse_config::{IdentityHeadersConfig, IpNet};
use gatehouse_core::{Action, Clock, Principal, Resource};
use gatehouse_decide::Decider;
use gatehouse_git::{Classified, ForgeFlavor, GitService, PushLimits, RequestKind, classify};
use gatehouse_session::Sessions;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;

use crate::body::{Body, BodyEnd, BodyIdleTimeout, Coalesced, Counted, IdleLimited};
use crate::forwarded::{
    ClientHeaderFilter, X_REQUEST_ID, client_ip, ip_text, request_id, trace_context,
};
use crate::metrics::{ActionLabel, KindLabel, Metrics, RequestLabels};
use crate::respond::{ClientKind, Refusal, typed_response};
use crate::tunnel::{UpstreamUpgrade, websocket_upgrade};
use crate::upstream::{CallerInfo, Upstream, UpstreamError};

/// Settings the phases need, derived once from the config.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// How repository names compare.
    pub flavor: ForgeFlavor,
    /// Peers whose forwarded headers are trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Identity header names and assertion settings.
    pub identity: IdentityHeadersConfig,
    /// The assertion's audience.
    pub assertion_audience: String,
    /// Repositories the who-am-I page checks besides those the policy names.
    pub portal_repositories: Vec<String>,
    /// Links the who-am-I page lists when the policy grants `web:access`.
    pub portal_links: Vec<String>,
    /// The built-in upstream's repositories directory (listed on the who-am-I page).
    pub builtin_repos_dir: Option<std::path::PathBuf>,
    /// A relayed WebSocket with no bytes either way for this long is closed.
    pub websocket_idle_timeout: std::time::Duration,
    /// A response body the upstream sends nothing of for this long is cut off.
    pub upstream_body_idle_timeout: std::time::Duration,
    /// A request body the client sends nothing of for this long is refused (`408`) or cut off.
    pub client_body_idle_timeout: std::time::Duration,
    /// How much of a push's command list is read before it is refused.
    pub push_limits: PushLimits,
    /// Forward auth (`/.gatehouse/auth`); `None`: it is off.
    pub forward_auth: Option<gatehouse_config::ForwardAuthConfig>,
    /// Envoy's ext_authz (`[ext_authz]`), if on.
    pub ext_authz: Option<gatehouse_config::ExtAuthzConfig>,
}

/// Everything a request needs; shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) settings: GatewaySettings,
    pub(crate) strip: ClientHeaderFilter,
    /// The identity header names, parsed once.
    names: IdentityNames,
    /// The decision core: the caller, the policy, the refs a route moves.
    pub(crate) decider: Arc<Decider>,
    audit: AuditSink,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sessions: Option<Arc<Sessions>>,
    pub(crate) ssh: Option<Arc<dyn crate::SshCertIssuer>>,
    /// Gatehouse's durable state: the state API, and environments token exchanges bind to.
    pub(crate) state: Option<Arc<dyn crate::StateStore>>,
    /// The secrets broker, when `[secrets]` is configured.
    pub(crate) secrets: Option<Arc<gatehouse_secrets::Broker>>,
    /// The webhook relay's hooks, when `[webhooks]` is configured.
    pub(crate) hooks: Option<Arc<gatehouse_hooks::Hooks>>,
    /// Per-job tokens for Gitea Actions runners, when `[job_tokens]` is configured.
    pub(crate) job_tokens: Option<crate::JobTokenSettings>,
    /// The jobs this gateway minted tokens for, watched until they end.
    pub(crate) minted_jobs: crate::job_tokens::MintedJobs,
    /// Cancelled when the server stops: relayed (upgraded) connections close then.
    tunnels: tokio_util::sync::CancellationToken,
    /// The relay tasks, so that the server can wait for their audit records at shutdown.
    relays: tokio_util::task::TaskTracker,
    /// Where finished requests go as spans (`[traces]`), and the share of new traces sampled.
    pub(crate) spans: Option<Arc<dyn SpanSink>>,
    pub(crate) sample_ratio: f64,
    /// Whether any caller's `traceparent` sampled flag is followed, not only a trusted proxy's.
    pub(crate) trust_caller_sampling: bool,
}

/// `[identity_headers]` names as header names; `None` when empty or not a valid name.
#[derive(Debug)]
struct IdentityNames {
    user: Option<HeaderName>,
    email: Option<HeaderName>,
    full_name: Option<HeaderName>,
    groups: Option<HeaderName>,
    assertion: Option<HeaderName>,
}

/// What the connection knows about a request.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The names (URI and DNS SANs) of the client certificate the peer presented and
    /// `server.tls.client_ca_file` verified, if any.
    pub(crate) peer_names: Option<Arc<[String]>>,
}

/// The request facts gathered in the first phase.
pub(crate) struct Admitted {
    /// Shared with the audit record, as are the addresses and the host.
    pub(crate) request_id: Arc<str>,
    /// This hop's trace context: the `traceparent` the upstream gets, and whether the caller's
    /// was valid (its `parent_span_id`), so that its `tracestate` goes on with it.
    pub(crate) trace: SpanIds,
    pub(crate) client: IpAddr,
    /// The connection's peer (a front proxy, when there is one).
    pub(crate) peer: IpAddr,
    /// `client` as text (formatted once per request).
    pub(crate) client_text: Arc<str>,
    /// The peer's address as text.
    pub(crate) peer_text: Arc<str>,
    pub(crate) host: Arc<str>,
    /// The port the request named with its host, if any (for `X-Forwarded-Host`).
    pub(crate) port: Option<u16>,
    /// The `Upgrade` value of a WebSocket handshake (see `tunnel`); `None` for anything else.
    pub(crate) websocket: Option<HeaderValue>,
    /// The names of the peer's verified client certificate (see [`ConnInfo`]).
    pub(crate) peer_names: Option<Arc<[String]>>,
}

/// What is left to do when a request ends: write its audit record and count it.
pub(crate) struct Done {
    slot: gatehouse_audit::AuditSlot,
    rec: AuditRecord,
    started: tokio::time::Instant,
    action: &'static str,
    decision: &'static str,
    status: u16,
    metrics: Arc<Metrics>,
    _in_flight: Option<crate::metrics::InFlight>,
    span: Option<(Arc<dyn SpanSink>, SpanIds)>,
}

impl Done {
    /// The upstream stopped sending the response body and it was cut off (`IdleLimited`).
    fn upstream_stalled(&self) {
        self.metrics
            .upstream_errors
            .get_or_create(&KindLabel { kind: "body_idle" })
            .inc();
        let request_id = self.rec.request_id.as_deref().unwrap_or("-");
        tracing::warn!(%request_id, "the upstream sent nothing of the response body for upstream.body_idle_timeout; cut off");
    }

    /// Who the relay of this request serves.
    fn principal(&self) -> Option<Arc<Principal>> {
        self.rec.principal.as_ref().map(|p| p.principal().clone())
    }

    pub(crate) fn finish(mut self, bytes_in: u64, bytes_out: u64, end: BodyEnd) {
        let elapsed = self.started.elapsed();
        let rec = &mut self.rec;
        rec.bytes_in = bytes_in;
        rec.bytes_out = bytes_out;
        rec.duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        rec.outcome = Some(match end {
            BodyEnd::Complete => "complete",
            BodyEnd::Aborted => "aborted",
            BodyEnd::IdleTimeout => "idle_timeout",
        });
        if let Some((sink, ids)) = &self.span {
            sink.finished(&self.rec, ids);
        }
        self.slot.send(self.rec);
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                action: self.action,
                decision: self.decision,
                status: self.status,
            })
            .inc();
        self.metrics
            .duration
            .get_or_create(&ActionLabel {
                action: self.action,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// How often an open WebSocket relay checks that its caller's credential is still good.
pub(crate) const RELAY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The request's audit slot and record while its phases run. The handler's future can be dropped
/// before a response exists (an HTTP/1.1 client that disconnects while the upstream is still
/// answering, an HTTP/2 stream reset, the runtime stopping after the shutdown grace); the record
/// is then written on drop, as `aborted` with no status, so that a push the client gave up on
/// after uploading it is still on record. Taking its [`Done`] disarms it.
pub(crate) struct Pending {
    pub(crate) slot: Option<gatehouse_audit::AuditSlot>,
    pub(crate) rec: AuditRecord,
    /// The path as it came, for a record that classification did not reach.
    pub(crate) raw_uri: http::Uri,
    pub(crate) started: tokio::time::Instant,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) action: &'static str,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) in_flight: Option<crate::metrics::InFlight>,
    /// The span it is, when spans are exported and its trace is sampled.
    pub(crate) span: Option<(Arc<dyn SpanSink>, SpanIds)>,
}

impl Pending {
    /// The request's end, once: `None` when it was already taken.
    pub(crate) fn take(&mut self, status: u16) -> Option<Done> {
        let slot = self.slot.take()?;
        let mut rec = std::mem::take(&mut self.rec);
        if rec.path.is_none() {
            rec.path = Some(truncated(self.raw_uri.path(), 1024));
        }
        Some(Done {
            slot,
            decision: rec.decision.unwrap_or("error"),
            rec,
            started: self.started,
            action: self.action,
            status,
            metrics: self.metrics.clone(),
            _in_flight: self.in_flight.take(),
            span: self.span.take(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Counted as nginx logs it: the client closed the request before the response.
        let Some(done) = self.take(CLIENT_CLOSED_REQUEST) else {
            return;
        };
        tracing::info!(
            request_id = done.rec.request_id.as_deref().unwrap_or("-"),
            "request abandoned before its response (client gone or shutting down)"
        );
        done.finish(self.bytes_in.load(Ordering::Relaxed), 0, BodyEnd::Aborted);
    }
}

/// The status label of a request that ended before it had a response (nginx's 499). It is a
/// metrics label only: the audit record of such a request has no status.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// An open relay: counted in `gatehouse_tunnels_open`, and recorded as aborted if dropped unfinished.
struct RelayGuard {
    done: Option<Done>,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.open.dec();
        if let Some(done) = self.done.take() {
            done.finish(0, 0, BodyEnd::Aborted);
        }
    }
}

/// Shared text as bytes, to make a header value of it without a copy.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A method's name; the standard ones without an allocation.
fn method_text(m: &http::Method) -> Cow<'static, str> {
    const STANDARD: [(http::Method, &str); 9] = [
        (http::Method::GET, "GET"),
        (http::Method::POST, "POST"),
        (http::Method::PUT, "PUT"),
        (http::Method::DELETE, "DELETE"),
        (http::Method::HEAD, "HEAD"),
        (http::Method::OPTIONS, "OPTIONS"),
        (http::Method::PATCH, "PATCH"),
        (http::Method::CONNECT, "CONNECT"),
        (http::Method::TRACE, "TRACE"),
    ];
    match STANDARD.iter().find(|(k, _)| k == m) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(m.as_str().to_owned()),
    }
}

/// At most `max` characters of `s` (a path for the audit record).
fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        s.chars().take(max).collect()
    }
}

fn header_name(s: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(s.as_bytes()).ok()
}

/// The host the request names (HTTP/2 `:authority`, else `Host`), validated and lowercased, and
/// the port it names, if any.
fn request_host(req: &Request<Body>) -> Option<(Arc<str>, Option<u16>)> {
    let parsed: http::uri::Authority;
    let authority = match req.uri().authority() {
        Some(a) => a,
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            parsed = h.parse().ok()?;
            &parsed
        }
    };
    let (raw, port) = (authority.host(), authority.port_u16());
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    if !ok {
        return None;
    }
    let host = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        raw.to_ascii_lowercase().into()
    } else {
        raw.into()
    };
    Some((host, port))
}

/// `X-Forwarded-Host`: the host the client asked for, as [`request_host`] found it, with the
/// port it named (the `Host` header's value, as nginx and other proxies send it). Empty when the
/// request named no valid host.
pub(crate) fn forwarded_host(host: &str, port: Option<u16>) -> Cow<'_, str> {
    match port.filter(|_| !host.is_empty()) {
        Some(p) => Cow::Owned(format!("{host}:{p}")),
        None => Cow::Borrowed(host),
    }
}

/// The refusal of a path `classify` refuses.
pub(crate) fn path_refusal(e: gatehouse_git::PathError) -> Refusal {
    match e {
        // Well-formed, but Gatehouse cannot tell which repository it reaches.
        gatehouse_git::PathError::NumberedRepository => Refusal::Forbidden {
            reason: "repository_named_by_number".into(),
            what: "a route that names a repository only by number".into(),
        },
        e => Refusal::BadRequest {
            code: "bad_path",
            detail: e.to_string(),
        },
    }
}

pub(crate) fn describe(action: Action, resource: &Resource) -> String {
    match resource {
        Resource::Repo(r) => format!("{action} on {r}"),
        Resource::Owner(o) => format!("{action} on {o}"),
        Resource::Route(r) => format!("{action} on {} {}", r.method, r.path),
    }
}

pub(crate) fn client_kind(classified: Option<&Classified>, h: &HeaderMap) -> ClientKind {
    let git_kind = classified.is_some_and(|c| {
        matches!(
            c.kind,
            RequestKind::GitAdvertise(_)
                | RequestKind::GitRpc(_)
                | RequestKind::GitDumb
                | RequestKind::Lfs
                | RequestKind::LfsBatch
        )
    });
    let git_agent = h
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("git/") || ua.starts_with("git-lfs/"));
    if git_kind || git_agent {
        ClientKind::Git
    } else {
        ClientKind::Api
    }
}

impl Gateway {
    /// Assembles the gateway.
    pub fn new(
        settings: GatewaySettings,
        decider: Arc<Decider>,
        audit: AuditSink,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        crate::forwarded::warm_up_rng();
        let id = &settings.identity;
        // An empty name (no groups header, no assertion) is not a header name: `None`.
        let names = IdentityNames {
            user: header_name(&id.user),
            email: header_name(&id.email),
            full_name: header_name(&id.full_name),
            groups: header_name(&id.groups),
            assertion: header_name(&id.assertion),
        };
        // What Gatehouse sets itself is never taken from the client either.
        let strip = ClientHeaderFilter::new(
            [
                &id.user,
                &id.email,
                &id.full_name,
                &id.groups,
                &id.assertion,
            ]
            .into_iter()
            .chain(&id.strip)
            .map(String::as_str),
        );
        Self {
            settings,
            strip,
            names,
            decider,
            audit,
            upstream,
            metrics,
            clock,
            sessions: None,
            ssh: None,
            state: None,
            secrets: None,
            hooks: None,
            job_tokens: None,
            minted_jobs: std::sync::Mutex::default(),
            tunnels: tokio_util::sync::CancellationToken::new(),
            relays: tokio_util::task::TaskTracker::new(),
            spans: None,
            sample_ratio: 1.0,
            trust_caller_sampling: false,
        }
    }

    /// Exports every finished request as a span (`[traces]`): new traces are sampled at
    /// `sample_ratio`; a trusted proxy's `traceparent` (any caller's with
    /// `trust_caller_sampling`) decides for its own trace.
    pub fn with_spans(
        mut self,
        spans: Option<Arc<dyn SpanSink>>,
        sample_ratio: f64,
        trust_caller_sampling: bool,
    ) -> Self {
        self.spans = spans;
        self.sample_ratio = sample_ratio;
        self.trust_caller_sampling = trust_caller_sampling;
        self
    }

    /// Whether the sampled flag of `peer`'s `traceparent` is followed: a proxy Gatehouse trusts
    /// (`server.trusted_proxies`, forward auth's and ext_authz's), or anyone with
    /// `traces.trust_caller_sampling`.
    pub(crate) fn follows_sampling_of(&self, peer: IpAddr) -> bool {
        let s = &self.settings;
        self.trust_caller_sampling
            || s.trusted_proxies.iter().any(|n| n.contains(peer))
            || s.forward_auth
                .as_ref()
                .is_some_and(|f| f.trusted_proxies.iter().any(|n| n.contains(peer)))
            || s.ext_authz
                .as_ref()
                .is_some_and(|e| e.trusted_proxies.iter().any(|n| n.contains(peer)))
    }

    /// The span of a request refused because the audit log could not take its record: it has
    /// no record, but it is a server error the traces must show. Its path is recorded as
    /// `Pending` records one classification did not reach: the path as it came, no query.
    pub(crate) fn unaudited_span(
        &self,
        mut rec: AuditRecord,
        path: &str,
        ids: SpanIds,
        started: tokio::time::Instant,
    ) {
        if let Some((sink, ids)) = self.span_for(ids) {
            rec.path = Some(truncated(path, 1024));
            rec.status = Some(503);
            rec.decision = Some("error");
            rec.reason = Some("audit_unavailable".into());
            rec.outcome = Some("complete");
            rec.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            sink.finished(&rec, &ids);
        }
    }

    /// The span this request is, to be handed to the sink when it ends (`None` without a sink,
    /// or when the trace is not sampled).
    pub(crate) fn span_for(&self, ids: SpanIds) -> Option<(Arc<dyn SpanSink>, SpanIds)> {
        let sink = self.spans.as_ref().filter(|_| ids.sampled)?;
        Some((sink.clone(), ids))
    }

    /// Closes every upgraded connection (at shutdown: they do not end on their own, and their
    /// clients reconnect) and waits until each has queued its audit record, as aborted.
    pub async fn close_tunnels(&self) {
        self.tunnels.cancel();
        self.relays.close();
        self.relays.wait().await;
    }

    /// Enables `/.gatehouse/ssh/cert` (SSH user certificates for authenticated callers).
    pub fn with_ssh(mut self, ssh: Option<Arc<dyn crate::SshCertIssuer>>) -> Self {
        self.ssh = ssh;
        self
    }

    /// Sets the identity headers that tell the forge who the caller is (`[identity_headers]`:
    /// user, e-mail, full name, groups, the signed assertion): on the request sent upstream, or
    /// on a forward-auth answer for the front proxy to copy.
    pub(crate) fn set_identity(
        &self,
        headers: &mut HeaderMap,
        principal: &Principal,
    ) -> Result<(), Refusal> {
        let id = &self.settings.identity;
        let names = &self.names;
        let set = |headers: &mut HeaderMap, name: &Option<HeaderName>, value: &str| {
            if let (Some(n), Ok(v)) = (name, HeaderValue::from_bytes(value.as_bytes())) {
                headers.insert(n.clone(), v);
            }
        };
        set(headers, &names.user, &principal.username);
        if let Some(e) = &principal.email {
            set(headers, &names.email, e);
        }
        if let Some(n) = &principal.display_name {
            set(headers, &names.full_name, n);
        }
        if names.groups.is_some() && !principal.groups.is_empty() {
            set(headers, &names.groups, &principal.groups.join(","));
        }
        if let Some(n) = &names.assertion {
            let now = self.clock.now().as_secs();
            match self.decider.authn().own().assertion(
                principal,
                &self.settings.assertion_audience,
                id.assertion_ttl.0,
                now,
            ) {
                Ok(a) => {
                    // Shared with the cache, not copied: an assertion is most of a request's headers.
                    if let Ok(v) =
                        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(SharedText(a)))
                    {
                        headers.insert(n.clone(), v);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign the upstream assertion");
                    return Err(Refusal::Unauthenticated {
                        error: AuthnError::Internal("assertion".into()),
                        presented: true,
                    });
                }
            }
        }
        Ok(())
    }

    /// Enables browser sign-in sessions.
    pub fn with_sessions(mut self, sessions: Option<Arc<Sessions>>) -> Self {
        self.sessions = sessions;
        self
    }

    /// The authenticator (for readiness and metrics).
    pub fn authn(&self) -> &Arc<Authenticator> {
        self.decider.authn()
    }

    /// The decision core.
    pub fn decider(&self) -> &Arc<Decider> {
        &self.decider
    }

    /// The upstream (for readiness).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The audit sink (for readiness).
    pub fn audit(&self) -> &AuditSink {
        &self.audit
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves one request through every phase.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Body>,
        conn: ConnInfo,
    ) -> Response<Body> {
        let started = tokio::time::Instant::now();
        // A WebSocket handshake: the client's side of the connection, once hyper has sent a 101.
        let websocket = websocket_upgrade(req.version(), req.headers());
        let client_upgrade = websocket.is_some().then(|| hyper::upgrade::on(&mut req));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let client_idle = self.settings.client_body_idle_timeout;
        let req = req.map(|b| {
            Counted::new(
                IdleLimited::new(b, "client", client_idle).boxed_unsync(),
                Some(bytes_in.clone()),
                None,
            )
            .boxed_unsync()
        });

        // Phase 1: admit.
        let h = req.headers();
        let request_id = request_id(h);
        let trace = trace_context(h, self.sample_ratio, || {
            self.follows_sampling_of(conn.peer.ip())
        });
        let trusted_peer = self
            .settings
            .trusted_proxies
            .iter()
            .any(|n| n.contains(conn.peer.ip()));
        let peer = conn.peer.ip();
        let client = client_ip(peer, h, &self.settings.trusted_proxies);
        let client_text: Arc<str> = ip_text(client).into();
        let peer_text = if peer == client {
            client_text.clone()
        } else {
            ip_text(peer).into()
        };
        let (host, port) = request_host(&req).map_or((None, None), |(h, p)| (Some(h), p));
        // The path is recorded normalized once the request is classified, else as it came.
        let raw_uri = req.uri().clone();
        let rec = AuditRecord {
            time: self.clock.now(),
            event: "request",
            request_id: Some(request_id.clone()),
            trace_id: Some(trace.trace_id_hex()),
            source: Some(client_text.clone()),
            method: Some(method_text(req.method())),
            host: host.clone(),
            ..AuditRecord::default()
        };
        let slot = match self.audit.reserve() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, request_id = %request_id, "refusing request: audit log unavailable");
                self.unaudited_span(rec, raw_uri.path(), trace, started);
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        action: "none",
                        decision: "error",
                        status: 503,
                    })
                    .inc();
                let mut resp = Refusal::AuditUnavailable
                    .to_response(client_kind(None, req.headers()), &request_id);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return resp;
            }
        };
        let admitted = Admitted {
            request_id: request_id.clone(),
            trace,
            client,
            peer,
            client_text,
            peer_text,
            host: host.clone().unwrap_or_else(|| "".into()),
            port,
            websocket,
            peer_names: conn.peer_names.clone(),
        };

        let mut pending = Pending {
            slot: Some(slot),
            rec,
            raw_uri,
            started,
            bytes_in: bytes_in.clone(),
            action: "none",
            in_flight: Some(self.metrics.in_flight()),
            metrics: self.metrics.clone(),
            span: self.span_for(trace),
        };
        let outcome = self
            .phases(
                req,
                &admitted,
                conn,
                trusted_peer,
                host.is_some(),
                &mut pending.rec,
                &mut pending.action,
            )
            .await;
        let rec = &mut pending.rec;
        let mut resp = match outcome {
            Ok(resp) => resp,
            Err((refusal, kind)) => {
                // The policy's own denial is already recorded; anything else that stopped the
                // request (bad request, credentials, upstream failure after an allow) says so.
                if !matches!(refusal, Refusal::Forbidden { .. }) {
                    rec.decision = Some(match refusal {
                        Refusal::BadRequest { .. }
                        | Refusal::Unauthenticated { .. }
                        | Refusal::PayloadTooLarge
                        | Refusal::NotFound(_)
                        | Refusal::Conflict { .. }
                        | Refusal::MethodNotAllowed(_) => "deny",
                        _ => "error",
                    });
                    rec.reason = Some(refusal.code());
                } else if rec.reason.is_none() {
                    // Refused before the policy was asked (a cross-site write, a repository
                    // named by number): the refusal's own reason.
                    rec.decision = Some("deny");
                    rec.reason = Some(refusal.code());
                }
                refusal.to_response(kind, &request_id)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        let status = resp.status().as_u16();
        rec.status = Some(status);
        let Some(done) = pending.take(status) else {
            unreachable!("the slot is taken only here and on drop")
        };
        if let Some(upstream) = resp
            .extensions_mut()
            .remove::<UpstreamUpgrade>()
            .and_then(UpstreamUpgrade::take)
        {
            if let Some(client) = client_upgrade {
                self.spawn_relay(client, upstream, done);
                return resp;
            }
            // Not reached: only a WebSocket handshake is answered with the upstream's 101.
            done.finish(0, 0, BodyEnd::Aborted);
            return Refusal::UpstreamUnavailable.to_response(ClientKind::Api, &request_id);
        }
        resp.map(move |body| {
            Counted::new(
                body,
                None,
                Some(Box::new(move |bytes_out, end| {
                    let bytes_in = bytes_in.load(Ordering::Relaxed);
                    if end == BodyEnd::IdleTimeout {
                        done.upstream_stalled();
                    }
                    done.finish(bytes_in, bytes_out, end);
                })),
            )
            .boxed_unsync()
        })
    }

    /// Writes the `forwarding` record of a request that can change the forge (the decision as it
    /// stands, refs included) and waits until it is durable.
    pub(crate) async fn commit_forwarding(
        &self,
        rec: &mut AuditRecord,
        adm: &Admitted,
    ) -> Result<(), Refusal> {
        let started = std::time::Instant::now();
        let result = self.audit.commit(rec.forwarding()).await;
        self.metrics
            .audit_commit
            .observe(started.elapsed().as_secs_f64());
        result.map(|seq| rec.forwarding_seq = Some(seq)).map_err(|e| {
            tracing::warn!(error = %e, request_id = %adm.request_id, "refusing a write: its audit record could not be made durable; nothing was forwarded");
            Refusal::AuditUnavailable
        })
    }

    /// Relays an upgraded connection in its own task; its audit record is written when it ends.
    /// The relay lives no longer than its caller's right to it: it is closed within
    /// [`RELAY_RECHECK`] of the credential being revoked (or its job, environment or subject),
    /// or of a token's expiry (a browser session's end is its revocation at sign-out: sessions
    /// renew, so their first expiry is not the relay's).
    fn spawn_relay(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        done: Done,
    ) {
        let stop = self.tunnels.child_token();
        let idle = self.settings.websocket_idle_timeout;
        let open = self.metrics.tunnels_open.clone();
        open.inc();
        let principal = done.principal();
        let authn = self.decider.authn().clone();
        let clock = self.clock.clone();
        // Records the relay as aborted should the task be dropped before it ends (the runtime
        // going away after the shutdown grace ran out); `finish` disarms it.
        let mut guard = RelayGuard {
            done: Some(done),
            open,
        };
        self.relays.spawn(async move {
            let ended = std::sync::OnceLock::new();
            let watch = async {
                let Some(p) = principal else {
                    return std::future::pending::<()>().await;
                };
                let session = p
                    .token_id
                    .as_deref()
                    .is_some_and(|t| t.starts_with("session:"));
                let mut tick = tokio::time::interval(RELAY_RECHECK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let why = match authn.revoked(&p) {
                        Some(r) => Some(r.reason()),
                        None if !session
                            && p.expires_at.is_some_and(|e| clock.now().as_secs() >= e) =>
                        {
                            Some("credential_expired")
                        }
                        None => None,
                    };
                    if let Some(why) = why {
                        let _ = ended.set(why);
                        stop.cancel();
                        return std::future::pending::<()>().await;
                    }
                }
            };
            let (bytes_in, bytes_out, end) = tokio::select! {
                r = crate::tunnel::relay(client, upstream, idle, &stop) => r,
                () = watch => (0, 0, BodyEnd::Aborted),
            };
            if let Some(mut done) = guard.done.take() {
                if let Some(why) = ended.get() {
                    done.rec.detail = Some(format!("relay closed: {why}"));
                }
                done.finish(bytes_in, bytes_out, end);
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn phases(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        conn: ConnInfo,
        trusted_peer: bool,
        has_host: bool,
        rec: &mut AuditRecord,
        action_label: &mut &'static str,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let early_kind = client_kind(None, req.headers());
        if !has_host {
            return Err((
                Refusal::BadRequest {
                    code: "bad_host",
                    detail: "the request has no valid Host".into(),
                },
                early_kind,
            ));
        }

        // Gatehouse's own public endpoints.
        if req.uri().path() == "/.well-known/jwks.json" && req.method() == http::Method::GET {
            rec.decision = Some("allow");
            rec.reason = Some("public_endpoint".into());
            let r = typed_response(
                StatusCode::OK,
                self.decider.authn().own().jwks().to_string(),
                "application/jwk-set+json",
                "public, max-age=300",
            );
            return Ok(r);
        }

        // Gatehouse's own pages and sign-in endpoints.
        let p = req.uri().path();
        if p == "/.gatehouse" || p.starts_with("/.gatehouse/") {
            // Boxed, as the rarer branches below are: a request's future is moved whole when it
            // starts, so it is kept to what a proxied request needs (see `portal`).
            return Box::pin(self.portal(req, adm, rec)).await;
        }

        // Phase 2: classify.
        let method = req.method().as_str().to_ascii_uppercase();
        let c = classify(
            self.settings.flavor,
            &method,
            &adm.host,
            req.uri().path(),
            req.uri().query(),
        )
        .map_err(|e| (path_refusal(e), early_kind))?;
        let kind = client_kind(Some(&c), req.headers());
        *action_label = c.action.as_str();
        rec.path = Some(c.decoded_path.clone());
        rec.action = Some(c.action.as_str());
        rec.repo = c.resource.repo().map(|r| r.path());

        // A browser sends what it holds for this site (a session cookie, Basic credentials it
        // cached, a client certificate) with a request another site made it send. So a
        // state-changing request that a browser says came from another site is refused whatever
        // it carries, before any credential is looked at. Git, LFS and API clients send neither
        // `Sec-Fetch-Site` nor `Origin`.
        if let Some(refusal) =
            crate::portal::cross_site_write(req.headers(), &adm.host, &method, &method)
        {
            rec.decision = Some("deny");
            return Err((refusal, kind));
        }

        // Phase 3: authenticate.
        let Some(principal) = self
            .request_caller(req.headers(), &c, adm, rec, kind)
            .await?
        else {
            // A browser opening a web route is sent to sign in, then back here.
            if let Some(sessions) = &self.sessions
                && c.kind == RequestKind::Web
                && (method == "GET" || method == "HEAD")
                && crate::portal::wants_html(req.headers())
            {
                rec.decision = Some("deny");
                rec.reason = Some("login_required".into());
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_owned();
                return Ok(crate::portal::login_redirect(sessions, &pq));
            }
            return Err((
                Refusal::Unauthenticated {
                    error: AuthnError::Missing,
                    presented: false,
                },
                kind,
            ));
        };

        // Phase 4: authorize (`authorize.rs`).
        let (req, action) = self
            .authorize(req, &principal, &c, adm, &method, rec, kind, action_label)
            .await?;

        // Phase 4b: a push is decided ref by ref, from the command list before the pack.
        let mut report_sideband = None;
        let req = if c.kind == RequestKind::GitRpc(GitService::ReceivePack) {
            match self
                .authorize_refs(req, &principal, &c, adm, &method, rec, kind)
                .await?
            {
                crate::push_refs::RefCheck::Forward(req, report) => {
                    report_sideband = report;
                    req
                }
                crate::push_refs::RefCheck::Refused(resp) => return Ok(resp),
            }
        } else {
            req
        };

        // Phase 4c: a web or API route that moves refs is decided ref by ref too.
        let req = match c.moves {
            Some(m) => {
                Box::pin(self.authorize_route_refs(req, m, &principal, &c, adm, &method, rec, kind))
                    .await?
            }
            None => req,
        };

        // Phase 5: upstream request (`upstream_request.rs`).
        let (parts, body) = self
            .upstream_request(req, &principal, adm, conn.tls, trusted_peer)
            .map_err(|r| (r, kind))?;
        let pq: Cow<'_, str> = match &c.forward_query {
            Some(q) => Cow::Owned(format!("{}?{q}", c.forward_path)),
            None => Cow::Borrowed(&c.forward_path),
        };
        let up_req = Request::from_parts(parts, Coalesced::new(body).boxed_unsync());

        // Phase 5b: a request that can change the forge is on record, synced, before its first
        // byte goes upstream; a crash after this point cannot lose it. Its completion record (the
        // ordinary one, with the same request id) follows when it ends.
        if action.may_change_forge(&method) {
            self.commit_forwarding(rec, adm)
                .await
                .map_err(|r| (r, kind))?;
        }

        // Phase 6: proxy.
        let caller = || CallerInfo {
            remote_user: Some(principal.username.clone()),
            remote_addr: adm.client_text.to_string(),
            decoded_path: c.decoded_path.clone(),
        };
        let resp = self.upstream.send(up_req, &pq, caller).await.map_err(|e| {
            let (refusal, k) = match &e {
                // The client's fault, not the upstream's: not counted as an upstream error.
                UpstreamError::ClientBodyTimeout => {
                    tracing::info!(request_id = %adm.request_id, "the client stopped sending its request body");
                    return (Refusal::RequestTimeout, kind);
                }
                UpstreamError::Timeout => (Refusal::UpstreamTimeout, "timeout"),
                _ => (Refusal::UpstreamUnavailable, "unreachable"),
            };
            self.metrics
                .upstream_errors
                .get_or_create(&KindLabel { kind: k })
                .inc();
            tracing::warn!(request_id = %adm.request_id, error = %e, "upstream request failed");
            (refusal, kind)
        })?;
        // Phase 6b: the upstream's answer, as the client gets it (`upstream_response.rs`).
        let resp = self.upstream_response(resp, adm);
        // A push's answer is read on its way to git: the refs the forge's report says `ok` to
        // are confirmed in the push index (provenance).
        Ok(match (report_sideband, rec.forwarding_seq) {
            (Some(sideband), Some(seq))
                if resp.status() == StatusCode::OK && self.audit.indexes_pushes() =>
            {
                let audit = self.audit.clone();
                resp.map(|body| {
                    crate::body::ReportTap::new(
                        body,
                        sideband,
                        Box::new(move |report| {
                            if report.complete {
                                audit.confirm_pushed(seq, report.ok);
                            }
                        }),
                    )
                    .boxed_unsync()
                })
            }
            _ => resp,
        })
    }
}

/// Reads a whole body of at most `limit` bytes.
pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, Refusal> {
    let mut buf = bytes::BytesMut::new();
    read_body_into(body, limit, |d| buf.extend_from_slice(d)).await?;
    Ok(buf.freeze())
}

/// Hands each piece of a body of at most `limit` bytes to `sink`, in order.
pub(crate) async fn read_body_into(
    mut body: Body,
    limit: usize,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), Refusal> {
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<BodyIdleTimeout>() {
                Refusal::RequestTimeout
            } else {
                Refusal::BadRequest {
                    code: "body_read_failed",
                    detail: "the request body could not be read".into(),
                }
            }
        })?;
        if let Some(d) = frame.data_ref() {
            if read + d.len() > limit {
                return Err(Refusal::PayloadTooLarge);
            }
            read += d.len();
            sink(d);
        }
    }
    Ok(())
}
