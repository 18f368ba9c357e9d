//! The configuration schema. Every key is documented in `docs/configuration.md`; a test checks that
//! the two agree.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigDuration, IpNet, resolve};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public listener.
    pub server: ServerConfig,
    /// The admin listener (health, readiness, metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Where allowed requests go.
    pub upstream: UpstreamConfig,
    /// What kind of forge is upstream.
    #[serde(default)]
    pub forge: ForgeConfig,
    /// How much of a push Gatehouse reads before its pack, on both transports.
    #[serde(default)]
    pub git: GitConfig,
    /// How the caller's identity is passed to the upstream.
    #[serde(default)]
    pub identity_headers: IdentityHeadersConfig,
    /// Trusted OIDC issuers whose JWT access tokens are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Gatehouse's own token issuer (service accounts, agents) and signing key.
    pub tokens: TokensConfig,
    /// The authorization policy.
    pub policy: PolicyConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Browser sign-in sessions and the `/.gatehouse/` pages (needed when an issuer has `login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionConfig>,
    /// Git over SSH: the SSH front door, its certificates and the upstream SSH server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshConfig>,
    /// Diagnostic logs.
    #[serde(default)]
    pub log: LogConfig,
    /// Gatehouse as the authorizer of a front proxy (nginx `auth_request`, Caddy
    /// `forward_auth`, Traefik `forwardAuth`) at `/.gatehouse/auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Gatehouse as Envoy's (and Istio's) external authorizer: the gRPC
    /// `envoy.service.auth.v3.Authorization` service and the HTTP variant at
    /// `/.gatehouse/ext_authz/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<ExtAuthzConfig>,
    /// Durable state shared by every node: revocations (and, as they move onto it, sessions,
    /// environments, leases and webhook deliveries). SQLite in one file unless told otherwise.
    #[serde(default)]
    pub store: StoreConfig,
    /// The secrets broker (`/.gatehouse/secrets`): values sealed in the store under a master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsConfig>,
    /// Per-job tokens for Gitea Actions runners (`POST /.gatehouse/jobs:mint`), each checked
    /// against the forge's API (`[forge.api]`) before it is minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_tokens: Option<JobTokensConfig>,
    /// The webhook relay: forge deliveries verified at `/.gatehouse/hooks/{name}`, kept in the
    /// store, and relayed to the services behind Gatehouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksConfig>,
    /// Every HTTP request and front-door decision exported as an OpenTelemetry span (OTLP over
    /// HTTP); needs a binary built with the `otlp` feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<TracesConfig>,
    /// The `GATEHOUSE__*` environment variables applied over the file (names only).
    #[serde(skip)]
    pub env_overrides: Vec<String>,
}

/// `[traces]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`, used
    /// as it is (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is); a URL with no path at all gets
    /// `/v1/traces`.
    pub endpoint: String,
    /// The `service.name` of Gatehouse's spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of traces Gatehouse decides for that are exported, 0 to 1: new ones (no valid
    /// `traceparent`), and those of callers whose sampled flag is not followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Follow the sampled flag of every caller's `traceparent`; by default only a trusted
    /// proxy's (`server.trusted_proxies`, `forward_auth.trusted_proxies`,
    /// `ext_authz.trusted_proxies`) is, so that no client can have all its requests exported.
    #[serde(default)]
    pub trust_caller_sampling: bool,
    /// Headers sent with every export (a collector's or vendor's API key), each value read from
    /// a file or the environment.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, SecretSource>,
    /// How long one export may take.
    #[serde(default = "d10s")]
    pub timeout: ConfigDuration,
    /// Spans waiting for export at most; more are dropped (and counted) rather than delaying a
    /// request.
    #[serde(default = "default_traces_queue")]
    pub max_queue: usize,
}

fn default_service_name() -> String {
    "gatehouse".to_owned()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_traces_queue() -> usize {
    4096
}

impl TracesConfig {
    /// The traces URL spans are sent to (`/v1/traces` added to a URL without a path).
    pub fn traces_url(&self) -> String {
        let e = self.endpoint.trim();
        match url_path(e) {
            Some("") | Some("/") => format!("{}/v1/traces", e.trim_end_matches('/')),
            _ => e.to_owned(),
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("traces.{k}"), m));
        let e = self.endpoint.trim();
        let example = "e.g. http://otel-collector:4318/v1/traces";
        if e.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return bad(
                "endpoint",
                format!("a URL has no spaces or control characters ({example})"),
            );
        }
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return bad(
                "endpoint",
                format!("an http:// or https:// URL of an OTLP/HTTP collector ({example})"),
            );
        }
        if e.contains(['?', '#']) {
            return bad(
                "endpoint",
                "no query or fragment: a collector's key goes in traces.headers, read from a file or the environment".into(),
            );
        }
        let Some(path) = url_path(e) else {
            return bad(
                "endpoint",
                format!("a host, without user or password, is needed ({example})"),
            );
        };
        if path.contains("//") {
            return bad(
                "endpoint",
                format!("the path `{path}` has an empty segment"),
            );
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return bad(
                "sample_ratio",
                "a share from 0 to 1 (1: every new trace)".into(),
            );
        }
        if self.service_name.trim().is_empty() {
            return bad("service_name", "cannot be empty".into());
        }
        if !(1..=1_000_000).contains(&self.max_queue) {
            return bad("max_queue", "from 1 to 1000000".into());
        }
        if self.timeout.0.is_zero() || self.timeout.0 > std::time::Duration::from_secs(300) {
            return bad("timeout", "more than 0s and at most 5m".into());
        }
        for name in self.headers.keys() {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return bad("headers", format!("`{name}` is not a header name"));
            }
        }
        Ok(())
    }
}

/// The path of an `http(s)://host[:port]/path` URL: `Some("")` without one, `None` without a
/// host.
fn url_path(u: &str) -> Option<&str> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (!host.is_empty() && !host.contains(['?', '#', '@', ' ', '/'])).then_some(path)
}

/// `[webhooks]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// How long a delivery every target has taken (or given up on) stays in the store, for
    /// `gatehouse hooks status` and a replay.
    #[serde(default = "d7d")]
    pub retention: ConfigDuration,
    /// How often the hooks' secrets are read again (files, the environment, the broker).
    #[serde(default = "d1m")]
    pub secret_refresh: ConfigDuration,
    /// The hooks, each at `/.gatehouse/hooks/{name}`.
    #[serde(default)]
    pub hooks: Vec<HookConfig>,
}

/// Who signs a hook's deliveries, and so how they are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKindConfig {
    /// Gitea: `X-Gitea-Signature` (hex HMAC-SHA256 of the JSON), `X-Gitea-Delivery`.
    Gitea,
    /// Forgejo: `X-Forgejo-Signature`, `X-Forgejo-Delivery`.
    Forgejo,
    /// Gogs: `X-Gogs-Signature`, `X-Gogs-Delivery`.
    Gogs,
    /// GitHub (and GitHub Enterprise Server): `X-Hub-Signature-256`, `X-GitHub-Delivery`.
    Github,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard,
}

/// `[[webhooks.hooks]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Its name: the URL is `/.gatehouse/hooks/{name}`.
    pub name: String,
    /// Who sends it.
    pub kind: HookKindConfig,
    /// The shared secrets a delivery may be signed with (more than one during a rotation): from
    /// a file, the environment or the secrets broker, re-read every minute. A Standard Webhooks
    /// secret is `whsec_` and base64.
    pub secrets: Vec<HookSecret>,
    /// The largest body accepted.
    #[serde(default = "d5mib")]
    pub max_body: crate::ByteSize,
    /// A delivery id seen again within this window is a replay, and refused.
    #[serde(default = "d7d")]
    pub replay_window: ConfigDuration,
    /// Standard Webhooks only: how far `webhook-timestamp` may be from now.
    #[serde(default = "d5m")]
    pub tolerance: ConfigDuration,
    /// A completed `workflow_job` event ends that job in Gatehouse: its tokens and its secret
    /// leases are revoked.
    #[serde(default)]
    pub end_jobs: bool,
    /// The issuer of the job tokens `end_jobs` ends (the job id names it): by default
    /// `https://token.actions.githubusercontent.com` for GitHub, `[forge.api]`'s URL for Gitea
    /// (the runner tokens of `[job_tokens]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_issuer: Option<String>,
    /// Where its deliveries go.
    #[serde(default)]
    pub targets: Vec<HookTargetConfig>,
}

/// Where a hook's secret is read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "a hook secret: `{ file = \"/path/to/file\" }`, `{ env = \"VARIABLE\" }` or `{ secret = \"path/in/the/broker\" }` (never the secret itself)"
)]
pub enum HookSecret {
    /// `{ file = "path" }` or `{ env = "NAME" }`.
    Source(SecretSource),
    /// `{ secret = "path" }`: the newest version of a secret of the secrets broker (`[secrets]`).
    Broker {
        /// The secret's path.
        secret: String,
    },
}

/// `[[webhooks.hooks.targets]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HookTargetConfig {
    /// Its name, unique within the hook.
    pub name: String,
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// Only these events (`push`, `pull_request`, ...; the forge's event or event type); all
    /// when empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only these repositories (`owner/name`, `*` matches within a segment); all when empty.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// The Standard Webhooks secret (`whsec_` and base64 of 24 to 64 bytes) Gatehouse signs
    /// each relayed delivery with.
    pub signing_secret: SecretSource,
    /// At most this many deliveries in flight to it, per node.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// One repository's deliveries in the order they were accepted (each waits for the one
    /// before it to be delivered or given up).
    #[serde(default)]
    pub ordered: bool,
    /// How long one attempt may take.
    #[serde(default = "d10s")]
    pub timeout: ConfigDuration,
    /// Relaying gives up (the delivery goes to the dead letters) once a failure comes this long
    /// after it was accepted.
    #[serde(default = "d3d")]
    pub give_up_after: ConfigDuration,
    /// The delay before the first retry; each next one doubles (with jitter), up to
    /// `retry_max`.
    #[serde(default = "d5s")]
    pub retry_min: ConfigDuration,
    /// The longest delay between two attempts.
    #[serde(default = "d1h")]
    pub retry_max: ConfigDuration,
}

fn d5s() -> ConfigDuration {
    ConfigDuration::secs(5)
}

fn d7d() -> ConfigDuration {
    ConfigDuration::secs(7 * 86_400)
}

fn d3d() -> ConfigDuration {
    ConfigDuration::secs(3 * 86_400)
}

fn d5m() -> ConfigDuration {
    ConfigDuration::secs(300)
}

fn d1m() -> ConfigDuration {
    ConfigDuration::secs(60)
}

fn d5mib() -> crate::ByteSize {
    crate::ByteSize(5 << 20)
}

fn default_in_flight() -> usize {
    4
}

/// `[job_tokens]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobTokensConfig {
    /// The longest a minted token lives (set it to the runners' job timeout; Gitea's default
    /// is 3h). Never longer than `tokens.max_ttl`.
    #[serde(default = "d3h")]
    pub ttl: ConfigDuration,
    /// How long the forge's "still running" answer about a job is reused: a minted token stops
    /// reading secrets at most this long after its job ends.
    #[serde(default = "d30s_job")]
    pub recheck: ConfigDuration,
}

fn d3h() -> ConfigDuration {
    ConfigDuration::secs(3 * 3600)
}

fn d30s_job() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// `[secrets]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// The master key (32 bytes, base64 or 64 hex digits): `{ file = ".." }` or `{ env = ".." }`.
    /// It wraps every secret's data key and never reaches the store.
    pub master_key: SecretSource,
    /// Master keys rotated out, kept for opening until `gatehouse secret rewrap` has moved every
    /// data key to `master_key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_master_keys: Vec<SecretSource>,
    /// Versions kept of a secret that does not say.
    #[serde(default = "default_secret_versions")]
    pub max_versions: i64,
    /// How long a deleted secret stays recoverable before it is purged by itself.
    #[serde(default = "d30d")]
    pub retention: ConfigDuration,
    /// The longest a lease on a read lasts; shorter when the reader's credential or the
    /// version expires sooner.
    #[serde(default = "d1h")]
    pub lease_ttl: ConfigDuration,
    /// How long the push index keeps a push Gatehouse allowed (what a provenance check reads):
    /// a job running a commit pushed longer ago fails the check.
    #[serde(default = "d90d")]
    pub push_retention: ConfigDuration,
}

fn d1h() -> ConfigDuration {
    ConfigDuration::secs(3600)
}

fn d90d() -> ConfigDuration {
    ConfigDuration::secs(90 * 86_400)
}

fn default_secret_versions() -> i64 {
    10
}

fn d30d() -> ConfigDuration {
    ConfigDuration::secs(30 * 86_400)
}

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (the embedded default; a relative path is under the config file's
    /// directory) or `postgres://USER@HOST:PORT/DB?sslmode=verify-full` for several nodes. Either
    /// a string, which must not hold a password, or `{ file = ".." }` / `{ env = ".." }` holding
    /// the whole URL.
    #[serde(default = "default_store_url")]
    pub url: StoreUrl,
    /// The PostgreSQL password, when the URL does not carry one: `{ file = ".." }` or
    /// `{ env = ".." }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    /// `auto`: apply pending schema migrations at start. `manual`: refuse to start until
    /// `gatehouse store migrate` has run (for operators who migrate before rolling out nodes).
    #[serde(default)]
    pub migrate: MigrateMode,
    /// Most database connections per node.
    #[serde(default = "default_store_connections")]
    pub max_connections: u32,
    /// How long to wait for a connection (or SQLite's write lock) before an operation fails.
    #[serde(default = "d5s")]
    pub busy_timeout: ConfigDuration,
    /// How often a node reads the revocation log for what it has not been told of. PostgreSQL
    /// notifies nodes at once; this is the fallback when a notification is lost, and how a node
    /// on SQLite sees a `gatehouse revoke` run by another process. At most 1s.
    #[serde(default = "d500ms")]
    pub revocation_poll: ConfigDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            password: None,
            migrate: MigrateMode::default(),
            max_connections: default_store_connections(),
            busy_timeout: d5s(),
            revocation_poll: d500ms(),
        }
    }
}

/// `store.url`: the URL itself, or where to read it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "a store URL (`sqlite:///var/lib/gatehouse/gatehouse.db`, `postgres://user@host/db`) or where to read it: `{ file = \"/path\" }` or `{ env = \"VARIABLE\" }`"
)]
pub enum StoreUrl {
    /// The URL, in the config (no password in it).
    Plain(String),
    /// The whole URL from a file or an environment variable.
    Secret(SecretSource),
}

/// `store.migrate`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrateMode {
    /// Apply pending migrations at start.
    #[default]
    Auto,
    /// Refuse to start with pending migrations.
    Manual,
}

impl StoreConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("store.{k}"), m));
        if let StoreUrl::Plain(url) = &self.url {
            let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !postgres && !url.starts_with("sqlite://") {
                return bad("url", "must start with sqlite:// or postgres://".into());
            }
            if url == "sqlite://" {
                return bad(
                    "url",
                    "sqlite:// needs a file path (sqlite://gatehouse.db)".into(),
                );
            }
            if !postgres && url.contains('?') {
                return bad(
                    "url",
                    "sqlite:// takes no parameters: Gatehouse sets WAL and full sync itself".into(),
                );
            }
            let userinfo = url
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
                .and_then(|authority| authority.rsplit_once('@'))
                .map(|(userinfo, _)| userinfo);
            if userinfo.is_some_and(|u| u.contains(':')) || url.contains("password=") {
                return bad(
                    "url",
                    "holds a password: give it as store.password = { file = \"..\" } (or env), \
                     or the whole URL as store.url = { file = \"..\" }"
                        .into(),
                );
            }
            if self.password.is_some() && !postgres {
                return bad("password", "is for a postgres:// store only".into());
            }
        }
        if self.max_connections < 2 {
            return bad(
                "max_connections",
                "must be at least 2 (one listens for revocations)".into(),
            );
        }
        let poll = self.revocation_poll.0;
        if poll < std::time::Duration::from_millis(10) || poll > std::time::Duration::from_secs(1) {
            return bad(
                "revocation_poll",
                "must be between 10ms and 1s: a revocation must reach every node within a second"
                    .into(),
            );
        }
        Ok(())
    }
}

fn default_store_url() -> StoreUrl {
    StoreUrl::Plain("sqlite://gatehouse.db".into())
}

fn default_store_connections() -> u32 {
    8
}

fn d500ms() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(500))
}

/// `[ext_authz]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// The Envoy proxies (sidecars, gateways) that may ask, by the address Gatehouse sees them
    /// connect from; anyone else is refused.
    pub trusted_proxies: Vec<IpNet>,
    /// Where the gRPC service listens (plain HTTP/2; in a mesh the sidecar adds mTLS). Unset:
    /// only the HTTP variant on the public listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<SocketAddr>,
    /// What to do with a push, or a route that names its refs in its body, when Envoy forwards
    /// no body (`with_request_body` unset): as `forward_auth.ref_moves_in_body`.
    #[serde(default)]
    pub ref_moves_in_body: RefMovesInBody,
    /// Envoy's `with_request_body.max_request_bytes` (Istio's `maxRequestBytes`): a forwarded
    /// body this long may have been cut, even when Envoy says it was not.
    #[serde(default = "default_ext_authz_max_request_bytes")]
    pub max_request_bytes: crate::ByteSize,
    /// Mesh workloads named by the SPIFFE id of their mTLS certificate (Envoy's
    /// `source.principal`), for requests that carry no credential of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadConfig>,
}

fn default_ext_authz_max_request_bytes() -> crate::ByteSize {
    crate::ByteSize(1 << 20)
}

/// `[[ext_authz.workloads]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// The SPIFFE id, exactly (`spiffe://cluster.local/ns/ci/sa/deployer`).
    pub spiffe_id: String,
    /// The name the forge knows it by (`X-WEBAUTH-USER`).
    pub username: String,
    /// Its groups, for the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// `[forward_auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// The front proxies that may ask (their addresses as Gatehouse sees them); anyone else is
    /// refused, since the request it describes is whatever its headers say.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Front proxies that may ask, named by their TLS client certificate (a URI or DNS SAN,
    /// exactly), verified against `server.tls.client_ca_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxy_names: Vec<String>,
    /// Which headers describe the original request: `original` (`X-Original-URI`,
    /// `X-Original-Method`: nginx) or `forwarded` (`X-Forwarded-Uri`, `X-Forwarded-Method`:
    /// Caddy, Traefik). The other set, which a client could send through, is refused.
    #[serde(default)]
    pub request_headers: ForwardAuthHeaders,
    /// What to do with a push, or a web or API route that names the refs it moves in its
    /// body, which a front proxy never shows: `refuse` (per-ref rules cannot be applied), or
    /// `decide_without_ref_rules` (only `git:write` on the repository is asked).
    #[serde(default)]
    pub ref_moves_in_body: RefMovesInBody,
}

/// `forward_auth.request_headers`
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ForwardAuthHeaders {
    /// `X-Original-URI` and `X-Original-Method` (nginx `auth_request`).
    #[default]
    Original,
    /// `X-Forwarded-Uri` and `X-Forwarded-Method` (Caddy `forward_auth`, Traefik `forwardAuth`).
    Forwarded,
}

/// `forward_auth.ref_moves_in_body`
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RefMovesInBody {
    /// Refused: per-ref rules cannot be applied without the body.
    #[default]
    Refuse,
    /// Decided on `git:write` alone.
    DecideWithoutRefRules,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// TLS termination; plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Time allowed to receive a request's headers.
    #[serde(default = "d10s")]
    pub header_read_timeout: ConfigDuration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(default = "d60s")]
    pub idle_timeout: ConfigDuration,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(default = "d30s")]
    pub shutdown_grace: ConfigDuration,
    /// A request body the client sends nothing of for this long is refused or cut off.
    #[serde(default = "d60s")]
    pub body_idle_timeout: ConfigDuration,
    /// A relayed WebSocket with no bytes either way for this long is closed.
    #[serde(default = "d600s")]
    pub websocket_idle_timeout: ConfigDuration,
    /// Peers whose `X-Forwarded-For`/`-Proto`/`-Host` are trusted and extended; others' are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request head (request line and headers), in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Runtime worker threads; 0 means one per CPU.
    #[serde(default)]
    pub worker_threads: usize,
    /// How requests are spread over those threads: `work_stealing` (one runtime whose workers
    /// take each other's tasks) or `thread_per_core` (each thread its own runtime, accepting on
    /// the listener; a connection stays on the thread that accepted it).
    #[serde(default)]
    pub threading: Threading,
}

/// `server.threading`
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Threading {
    /// One multi-threaded, work-stealing runtime.
    WorkStealing,
    /// One single-threaded runtime per thread, each accepting connections: the default, since
    /// it holds the tail where work stealing does not (bench/results, 2026-12-07: p99 0.78 ms
    /// against 4.21 ms at 16 connections on 2 shared cores, and 22% less CPU per request).
    #[default]
    ThreadPerCore,
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are checked for changes (reloaded without a restart).
    #[serde(default = "d10s")]
    pub reload_interval: ConfigDuration,
    /// PEM CA certificates: clients are asked for a certificate (optionally) and one signed by
    /// these is verified, its names (URI and DNS SANs) then able to name a trusted front proxy
    /// (`forward_auth.trusted_proxy_names`). A certificate that does not verify ends the
    /// handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`). Keep it private.
    pub listen: SocketAddr,
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The forge's base URL (`http://` or `https://`), or its Unix socket (`unix:/path`).
    /// Exactly one of `url` and `git_http_backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Serve bare repositories from a directory through `git http-backend` instead of a forge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_http_backend: Option<GitBackendConfig>,
    /// Time allowed to open a connection to the upstream.
    #[serde(default = "d5s")]
    pub connect_timeout: ConfigDuration,
    /// Time allowed between sending a request and receiving the response's headers.
    #[serde(default = "d60s")]
    pub response_timeout: ConfigDuration,
    /// A response body that delivers no data for this long is cut off.
    #[serde(default = "d300s")]
    pub body_idle_timeout: ConfigDuration,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "d90s")]
    pub pool_idle_timeout: ConfigDuration,
    /// Most idle pooled connections kept.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// PEM CA bundle to verify an `https` upstream (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to the upstream (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Skip verification of the upstream's certificate. Never in production.
    #[serde(default)]
    pub danger_accept_invalid_certs: bool,
    /// Send the client's `Host` upstream (`true`) or the upstream URL's host (`false`).
    #[serde(default = "yes")]
    pub preserve_host: bool,
}

/// `[upstream.git_http_backend]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitBackendConfig {
    /// Directory holding `owner/repo.git` bare repositories.
    pub repos_dir: PathBuf,
    /// The `git` executable.
    #[serde(default = "default_git")]
    pub git: PathBuf,
}

/// Which forge sits upstream.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// Gitea (case-insensitive names).
    #[default]
    Gitea,
    /// Forgejo.
    Forgejo,
    /// Gogs.
    Gogs,
    /// A plain Git server with case-sensitive paths.
    Generic,
}

/// `[forge]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    /// `gitea`, `forgejo`, `gogs` or `generic`.
    #[serde(default)]
    pub kind: ForgeKind,
    /// The forge's name in policies (`Gatehouse::Forge::"<name>"`).
    #[serde(default = "default_forge_name")]
    pub name: String,
    /// Add the caller's organisations and teams on the forge to its groups (Gitea, Forgejo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<ForgeGroupsConfig>,
    /// The forge's API, asked which refs a web or API route moves when the request does not say
    /// (a pull request's branches, a release's tag, the default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ForgeApiConfig>,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        Self {
            kind: ForgeKind::default(),
            name: default_forge_name(),
            groups: None,
            api: None,
        }
    }
}

/// `[forge.api]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeApiConfig {
    /// The forge's base URL for API calls (default: `upstream.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A token that may read every repository's pull requests and releases (a site
    /// administrator's, or a read-only one of a user who sees every repository).
    pub token: SecretSource,
    /// An answer is reused for this long.
    #[serde(default = "d10s")]
    pub cache_ttl: ConfigDuration,
    /// Timeout of each API call.
    #[serde(default = "d5s")]
    pub timeout: ConfigDuration,
}

/// `[git]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// The most bytes of a push's command list (with its certificate and push options).
    #[serde(default = "default_max_command_list")]
    pub max_command_list: crate::ByteSize,
    /// The most ref updates in one push.
    #[serde(default = "default_max_ref_updates")]
    pub max_ref_updates: usize,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            max_command_list: default_max_command_list(),
            max_ref_updates: default_max_ref_updates(),
        }
    }
}

fn default_max_command_list() -> crate::ByteSize {
    crate::ByteSize(4 << 20)
}

fn default_max_ref_updates() -> usize {
    100_000
}

/// What happens to a request when the forge cannot say which groups the caller is in.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnForgeError {
    /// Refuse it (503): a policy may rely on a team membership, including in a `forbid`.
    #[default]
    Refuse,
    /// Go on with the groups from the credential alone.
    Continue,
}

/// `[forge.groups]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeGroupsConfig {
    /// The forge's base URL for API calls (default: `upstream.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// A forge token of a site administrator (calls are made as the caller with `Sudo`).
    pub token: SecretSource,
    /// A caller's forge groups are reused for this long.
    #[serde(default = "d300s")]
    pub cache_ttl: ConfigDuration,
    /// Prepended to every forge group, e.g. `forge:acme` and `forge:acme/release`.
    #[serde(default = "default_forge_groups_prefix")]
    pub prefix: String,
    /// `refuse` or `continue` when the forge cannot be asked and nothing is cached.
    #[serde(default)]
    pub on_error: OnForgeError,
    /// Timeout of each API call.
    #[serde(default = "d5s")]
    pub timeout: ConfigDuration,
}

/// `[identity_headers]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersConfig {
    /// Header carrying the forge user name (Gitea `REVERSE_PROXY_AUTHENTICATION_USER`).
    #[serde(default = "default_user_header")]
    pub user: String,
    /// Header carrying the e-mail address (Gitea `REVERSE_PROXY_AUTHENTICATION_EMAIL`).
    #[serde(default = "default_email_header")]
    pub email: String,
    /// Header carrying the display name (Gitea `REVERSE_PROXY_AUTHENTICATION_FULL_NAME`).
    #[serde(default = "default_fullname_header")]
    pub full_name: String,
    /// Header carrying the comma-separated groups; not sent when empty.
    #[serde(default)]
    pub groups: String,
    /// Further inbound headers to strip (identity headers above are always stripped).
    #[serde(default)]
    pub strip: Vec<String>,
    /// Header carrying the signed assertion JWT; not sent when empty.
    #[serde(default = "default_assertion_header")]
    pub assertion: String,
    /// `aud` of the assertion (default: the upstream URL, or `gatehouse-upstream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion_audience: Option<String>,
    /// Lifetime of an assertion.
    #[serde(default = "d60s")]
    pub assertion_ttl: ConfigDuration,
    /// Forward the client's `Authorization` header upstream (off: the forge sees only Gatehouse's headers).
    #[serde(default)]
    pub forward_authorization: bool,
}

impl Default for IdentityHeadersConfig {
    fn default() -> Self {
        Self {
            user: default_user_header(),
            email: default_email_header(),
            full_name: default_fullname_header(),
            groups: String::new(),
            strip: Vec::new(),
            assertion: default_assertion_header(),
            assertion_audience: None,
            assertion_ttl: ConfigDuration::secs(60),
            forward_authorization: false,
        }
    }
}

/// Whether an issuer's tokens name people or machines.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKindConfig {
    /// People.
    #[default]
    User,
    /// Machines.
    Service,
}

/// `[[issuers]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier, exactly as in the tokens' `iss`.
    pub issuer: String,
    /// The JWKS URL; when absent it is found through OIDC discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. HMAC and `none` are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    #[serde(default = "d60s")]
    pub leeway: ConfigDuration,
    /// Claims a token must carry (besides `iss`, `aud`, `exp`).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// How claims become a principal.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// Whether the principals are people or machines.
    #[serde(default)]
    pub principal_kind: PrincipalKindConfig,
    /// Prepended to every group name from this issuer (e.g. `partner:`), so that groups of two
    /// issuers cannot be confused in a policy.
    #[serde(default)]
    pub groups_prefix: String,
    /// Keys are refetched after this long.
    #[serde(default = "d600s")]
    pub jwks_cache_ttl: ConfigDuration,
    /// An unknown `kid` triggers a refetch at most this often.
    #[serde(default = "d30s")]
    pub jwks_min_refetch_interval: ConfigDuration,
    /// Timeout of discovery, JWKS and introspection requests.
    #[serde(default = "d5s")]
    pub http_timeout: ConfigDuration,
    /// RFC 7662 introspection of opaque (non-JWT) access tokens from this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionConfig>,
    /// People sign in at this issuer: in a browser (authorization code flow with PKCE) and with
    /// `gatehouse login` (device authorization grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<LoginConfig>,
    /// This issuer vouches for CI jobs or pods: its tokens are workload identities whose claims
    /// (repository, ref, commit, workflow, job, run, environment, event, runner) the policy reads
    /// as `principal.workload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadPlatform>,
    /// Claims a token must carry with matching values, or it is refused: a claim name (or a
    /// dotted path into nested objects) to one pattern or a list. `*` matches any run of
    /// characters, `?` one, `\` escapes; a pattern starting with `!` must not match. A value
    /// must match one of the plain patterns (when there are any) and none of the negated ones;
    /// a token without the claim is refused.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bound_claims: std::collections::BTreeMap<String, OneOrMany>,
}

/// `issuers.workload`: whose workload tokens an issuer signs, which says where their claims are.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadPlatform {
    /// GitHub Actions (`https://token.actions.githubusercontent.com`), or GitHub Enterprise's.
    GithubActions,
    /// Forgejo Actions (`<instance>/api/actions`, Forgejo 15 and later).
    ForgejoActions,
    /// Kubernetes service-account tokens (the `kubernetes.io` claim).
    Kubernetes,
    /// Any other OIDC issuer of workload tokens: claims read by GitHub Actions' names.
    Oidc,
}

impl WorkloadPlatform {
    /// The name used in config and policy (`github-actions`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkloadPlatform::GithubActions => "github-actions",
            WorkloadPlatform::ForgejoActions => "forgejo-actions",
            WorkloadPlatform::Kubernetes => "kubernetes",
            WorkloadPlatform::Oidc => "oidc",
        }
    }
}

/// Whether a `bound_claims` pattern ends with a `\` that escapes nothing.
fn dangling_escape(p: &str) -> bool {
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next().is_none() {
            return true;
        }
    }
    false
}

/// One string, or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum OneOrMany {
    /// `"value"`
    One(String),
    /// `["a", "b"]`
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values.
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[issuers.login]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The OAuth2 client Gatehouse signs browsers in as.
    pub client_id: String,
    /// That client's secret (absent for a public client, which then relies on PKCE alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretSource>,
    /// The name on the sign-in chooser (default: the issuer's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Scopes asked for; `openid` is required, `offline_access` gets a refresh token.
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// Further authorization request parameters, e.g. `{ resource = "urn:gatehouse" }`.
    #[serde(default)]
    pub extra_params: std::collections::BTreeMap<String, String>,
    /// The public client `gatehouse login` uses (device authorization grant); no CLI login when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli_client_id: Option<String>,
}

/// `[ssh]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Address of the SSH listener, e.g. `0.0.0.0:2222`.
    pub listen: SocketAddr,
    /// Host name (and port) printed in `ssh://` URLs (default: the listen address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_address: Option<String>,
    /// The host key (OpenSSH format, Ed25519); generated on first start when missing.
    #[serde(default = "default_ssh_host_key")]
    pub host_key: PathBuf,
    /// The user CA key that signs `gatehouse ssh-cert` certificates; generated when missing.
    #[serde(default = "default_ssh_user_ca")]
    pub user_ca_key: PathBuf,
    /// Validity of the user certificates Gatehouse issues.
    #[serde(default = "d8h")]
    pub cert_ttl: ConfigDuration,
    /// Serial numbers of user certificates that are refused before they expire.
    #[serde(default)]
    pub revoked_serials: Vec<u64>,
    /// An idle SSH connection is closed after this long.
    #[serde(default = "d600s")]
    pub inactivity_timeout: ConfigDuration,
    /// Most SSH connections open at once; more are closed at once (before the handshake).
    #[serde(default = "default_ssh_max_connections")]
    pub max_connections: usize,
    /// Public keys of service accounts (bots, CI), accepted without a certificate.
    #[serde(default)]
    pub service_accounts: Vec<SshServiceAccount>,
    /// The forge's SSH server; absent: the built-in upstream runs git on
    /// `upstream.git_http_backend.repos_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<SshUpstreamConfig>,
}

/// `[[ssh.service_accounts]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshServiceAccount {
    /// The principal's name (and forge user name).
    pub name: String,
    /// Its public key, as in `authorized_keys` (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
    /// Its groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[ssh.upstream]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshUpstreamConfig {
    /// `host:port` of the forge's SSH server.
    pub address: String,
    /// The SSH user to log in as (Gitea: `git`).
    #[serde(default = "default_ssh_user")]
    pub user: String,
    /// The upstream's host key, pinned (`ssh-ed25519 AAAA...`, as in `known_hosts` without the host).
    pub host_key: String,
    /// The CA key whose per-connection certificates the forge trusts (Gitea
    /// `SSH_TRUSTED_USER_CA_KEYS`, OpenSSH `TrustedUserCAKeys`); generated when missing.
    #[serde(default = "default_ssh_upstream_ca")]
    pub ca_key: PathBuf,
    /// Validity of each per-connection certificate.
    #[serde(default = "d60s")]
    pub cert_ttl: ConfigDuration,
    /// Prepended to `/owner/repo.git` in the command run upstream (e.g. `/srv/git`).
    #[serde(default)]
    pub repo_root: String,
    /// Time allowed to connect and authenticate upstream.
    #[serde(default = "d10s")]
    pub connect_timeout: ConfigDuration,
}

/// `[session]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// The URL browsers reach Gatehouse at; the callback is `<external_url>/.gatehouse/callback`.
    pub external_url: String,
    /// Directory of the file-backed session store (sessions and pending sign-ins, encrypted).
    #[serde(default = "default_session_dir")]
    pub dir: PathBuf,
    /// Key that signs cookies and encrypts the store (at least 32 bytes). When absent, one is
    /// generated in `dir` on first start (give every node the same key when several share a store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
    /// A session ends this long after sign-in, whatever the IdP says.
    #[serde(default = "d12h")]
    pub max_lifetime: ConfigDuration,
    /// The access token is renewed with the refresh token this long before it expires.
    #[serde(default = "d60s")]
    pub refresh_before: ConfigDuration,
    /// A sign-in must come back from the IdP within this long.
    #[serde(default = "d600s")]
    pub login_timeout: ConfigDuration,
    /// Repositories (`owner/repo`) listed on `/.gatehouse/` when the policy lets the caller reach
    /// them, besides those named in the policy and those of the built-in upstream.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Links (`https://host/path`) listed on `/.gatehouse/` when the policy grants `web:access`.
    #[serde(default)]
    pub links: Vec<String>,
}

/// `[issuers.introspection]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint; when absent, `introspection_endpoint` from discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The client Gatehouse authenticates as (HTTP Basic).
    pub client_id: String,
    /// That client's secret.
    pub client_secret: SecretSource,
    /// An active result is reused for at most this long (and never past the token's `exp`).
    #[serde(default = "d60s")]
    pub cache_ttl: ConfigDuration,
}

/// `[issuers.claims]`: dotted paths into the token's claims.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    /// The subject.
    #[serde(default = "default_sub")]
    pub subject: String,
    /// The forge user name; falls back to the subject when the token lacks it.
    #[serde(default = "default_username")]
    pub username: String,
    /// The e-mail address.
    #[serde(default = "default_email")]
    pub email: String,
    /// The display name.
    #[serde(default = "default_name")]
    pub name: String,
    /// The groups: an array of strings, or one space- or comma-separated string.
    #[serde(default = "default_groups")]
    pub groups: String,
    /// The domain taken off the user name (one at most): with `["contoso.com"]`,
    /// `alice@contoso.com` (an Entra ID UPN, a Google or Okta e-mail) is the forge user `alice`.
    /// A user name in another domain, or without a domain, is refused: a forge user name cannot
    /// hold an `@`, and `alice@elsewhere.example` (or a bare `alice`) is not the same person.
    /// Compared without regard to case. Empty (the default): the claim is taken as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub username_domains: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: default_sub(),
            username: default_username(),
            email: default_email(),
            name: default_name(),
            groups: default_groups(),
            username_domains: Vec::new(),
        }
    }
}

/// Where a secret is read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "where to read a secret: `{ file = \"/path/to/file\" }` or `{ env = \"VARIABLE\" }` (a secret is never written in the config itself)"
)]
pub enum SecretSource {
    /// `{ file = "path" }`
    File {
        /// A file holding the secret.
        file: PathBuf,
    },
    /// `{ env = "NAME" }`
    Env {
        /// An environment variable holding the secret.
        env: String,
    },
}

/// `[tokens]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// The `iss` of Gatehouse's own tokens.
    #[serde(default = "default_own_issuer")]
    pub issuer: String,
    /// The `aud` of Gatehouse's own tokens.
    #[serde(default = "default_own_audience")]
    pub audience: String,
    /// The P-256 private key (PKCS#8 PEM) that signs tokens and assertions.
    pub signing_key: SecretSource,
    /// Earlier signing keys (PEM, private or public) whose tokens are still accepted.
    #[serde(default)]
    pub verification_keys: Vec<PathBuf>,
    /// Lifetime of `gatehouse token issue` tokens when `--ttl` is not given.
    #[serde(default = "d900s")]
    pub default_ttl: ConfigDuration,
    /// The longest lifetime a token may be issued for.
    #[serde(default = "d24h")]
    pub max_ttl: ConfigDuration,
    /// Clock skew allowed when checking Gatehouse's own tokens.
    #[serde(default = "d60s")]
    pub leeway: ConfigDuration,
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The Cedar policy file.
    pub file: PathBuf,
    /// How often the file is checked for changes (0s: never reload).
    #[serde(default = "d2s")]
    pub reload_interval: ConfigDuration,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit log (JSON lines, hash-chained, append-only).
    pub file: PathBuf,
    /// Records that may wait for the writer; when full, requests are refused with 503.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Most records per write and fsync.
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Least time between two batches: bounds fsyncs under load; responses never wait for it.
    #[serde(default = "d5ms")]
    pub flush_interval: ConfigDuration,
    /// Start a new file once the log reaches this size (none: never by size). The full file is
    /// renamed `<file>.<first seq>-<last seq>` and the chain continues into the new one.
    #[serde(default)]
    pub rotate_size: Option<crate::ByteSize>,
    /// Start a new file once the log has been written to for this long (none: never by age).
    #[serde(default)]
    pub rotate_age: Option<ConfigDuration>,
}

/// Log format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `gatehouse_http=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `json` or `text`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

const ALLOWED_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Config {
    pub(crate) fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(tls) = &mut self.server.tls {
            resolve(base, &mut tls.cert_file);
            resolve(base, &mut tls.key_file);
            if let Some(ca) = &mut tls.client_ca_file {
                resolve(base, ca);
            }
        }
        if let Some(g) = &mut self.upstream.git_http_backend {
            resolve(base, &mut g.repos_dir);
        }
        for p in [
            &mut self.upstream.ca_file,
            &mut self.upstream.client_cert_file,
            &mut self.upstream.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(base, p);
        }
        if let SecretSource::File { file } = &mut self.tokens.signing_key {
            resolve(base, file);
        }
        for iss in &mut self.issuers {
            if let Some(SecretSource::File { file }) =
                iss.introspection.as_mut().map(|i| &mut i.client_secret)
            {
                resolve(base, file);
            }
            if let Some(SecretSource::File { file }) =
                iss.login.as_mut().and_then(|l| l.client_secret.as_mut())
            {
                resolve(base, file);
            }
        }
        if let Some(SecretSource::File { file }) = self.forge.groups.as_mut().map(|g| &mut g.token)
        {
            resolve(base, file);
        }
        if let Some(SecretSource::File { file }) = self.forge.api.as_mut().map(|a| &mut a.token) {
            resolve(base, file);
        }
        if let Some(ssh) = &mut self.ssh {
            resolve(base, &mut ssh.host_key);
            resolve(base, &mut ssh.user_ca_key);
            if let Some(u) = &mut ssh.upstream {
                resolve(base, &mut u.ca_key);
            }
        }
        if let Some(s) = &mut self.session {
            resolve(base, &mut s.dir);
            if let Some(SecretSource::File { file }) = &mut s.secret {
                resolve(base, file);
            }
        }
        for p in &mut self.tokens.verification_keys {
            resolve(base, p);
        }
        resolve(base, &mut self.policy.file);
        resolve(base, &mut self.audit.file);
        match &mut self.store.url {
            StoreUrl::Plain(url) => {
                if let Some(path) = url.strip_prefix("sqlite://")
                    && !path.is_empty()
                    && std::path::Path::new(path).is_relative()
                {
                    *url = format!("sqlite://{}", base.join(path).display());
                }
            }
            StoreUrl::Secret(SecretSource::File { file }) => resolve(base, file),
            StoreUrl::Secret(SecretSource::Env { .. }) => {}
        }
        if let Some(SecretSource::File { file }) = &mut self.store.password {
            resolve(base, file);
        }
        for src in self.traces.iter_mut().flat_map(|t| t.headers.values_mut()) {
            if let SecretSource::File { file } = src {
                resolve(base, file);
            }
        }
        for h in self.webhooks.iter_mut().flat_map(|w| w.hooks.iter_mut()) {
            for src in &mut h.secrets {
                if let HookSecret::Source(SecretSource::File { file }) = src {
                    resolve(base, file);
                }
            }
            for t in &mut h.targets {
                if let SecretSource::File { file } = &mut t.signing_secret {
                    resolve(base, file);
                }
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        self.store.validate()?;
        match (&self.upstream.url, &self.upstream.git_http_backend) {
            (Some(_), Some(_)) | (None, None) => {
                return bad(
                    "upstream",
                    "set exactly one of `url` and `git_http_backend`",
                );
            }
            (Some(url), None) => {
                if let Some(path) = url.strip_prefix("unix:") {
                    if !path.starts_with('/') {
                        return bad(
                            "upstream.url",
                            "a Unix socket is named by an absolute path: unix:/run/forge.sock",
                        );
                    }
                    let tls = &self.upstream;
                    if tls.ca_file.is_some()
                        || tls.client_cert_file.is_some()
                        || tls.danger_accept_invalid_certs
                    {
                        return bad(
                            "upstream.url",
                            "a unix: upstream is plain HTTP: ca_file, client_cert_file and danger_accept_invalid_certs do not apply",
                        );
                    }
                } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return bad("upstream.url", "must start with http://, https:// or unix:");
                }
            }
            (None, Some(_)) => {}
        }
        if self.upstream.client_cert_file.is_some() != self.upstream.client_key_file.is_some() {
            return bad(
                "upstream.client_cert_file",
                "client_cert_file and client_key_file go together",
            );
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            let k = |f: &str| format!("issuers[{i}].{f}");
            if iss.issuer.is_empty() {
                return bad(&k("issuer"), "must not be empty");
            }
            if iss.audiences.is_empty() {
                return bad(&k("audiences"), "name at least one accepted audience");
            }
            if iss.algorithms.is_empty() {
                return bad(&k("algorithms"), "name at least one algorithm");
            }
            if iss
                .claims
                .username_domains
                .iter()
                .any(|d| d.is_empty() || d.contains('@') || d.chars().any(char::is_whitespace))
            {
                return bad(
                    &k("claims.username_domains"),
                    "a domain, without `@` (`contoso.com`)",
                );
            }
            if iss.claims.username_domains.len() > 1 {
                return bad(
                    &k("claims.username_domains"),
                    "one domain at most: `alice@` of two domains can be two people, and both \
                     would be the forge user `alice`",
                );
            }
            for a in &iss.algorithms {
                if a.starts_with("HS") || a.eq_ignore_ascii_case("none") {
                    return Err((
                        k("algorithms"),
                        format!(
                            "`{a}` is never accepted: HMAC and unsigned tokens cannot be verified with an issuer's public keys"
                        ),
                    ));
                }
                if !ALLOWED_ALGS.contains(&a.as_str()) {
                    return Err((
                        k("algorithms"),
                        format!(
                            "unknown algorithm `{a}` (one of {})",
                            ALLOWED_ALGS.join(", ")
                        ),
                    ));
                }
            }
            if iss.issuer == self.tokens.issuer {
                return bad(&k("issuer"), "must differ from tokens.issuer");
            }
            for (claim, patterns) in &iss.bound_claims {
                let kc = k(&format!("bound_claims.{claim}"));
                if claim.is_empty() {
                    return bad(&k("bound_claims"), "a claim name must not be empty");
                }
                if patterns.values().is_empty() {
                    return bad(&kc, "name at least one pattern");
                }
                for p in patterns.values() {
                    if p.is_empty() || p == "!" {
                        return bad(&kc, "a pattern must not be empty");
                    }
                    if p.len() > 1024 {
                        return bad(&kc, "a pattern must be at most 1024 bytes");
                    }
                    if dangling_escape(p) {
                        return Err((
                            kc,
                            format!("`{p}` ends with an escape (`\\`) that escapes nothing"),
                        ));
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            if !seen.insert(iss.issuer.as_str()) {
                return Err((
                    format!("issuers[{i}].issuer"),
                    "issuer listed twice".to_owned(),
                ));
            }
        }
        if let Some(w) = &self.webhooks {
            w.validate(self.secrets.as_ref())?;
        }
        if let Some(t) = &self.traces {
            t.validate()?;
        }
        if let Some(jt) = &self.job_tokens {
            if self.forge.api.is_none() {
                return bad(
                    "job_tokens",
                    "needs [forge.api]: each job is checked on the forge before a token is minted",
                );
            }
            if jt.ttl.0 < std::time::Duration::from_secs(60) || jt.ttl.0 > self.tokens.max_ttl.0 {
                return bad("job_tokens.ttl", "between 1m and tokens.max_ttl");
            }
            if jt.recheck.0 > std::time::Duration::from_secs(300) {
                return bad("job_tokens.recheck", "at most 5m");
            }
        }
        if let Some(sec) = &self.secrets {
            if !(1..=1000).contains(&sec.max_versions) {
                return bad("secrets.max_versions", "keep between 1 and 1000 versions");
            }
            if sec.retention.0 < std::time::Duration::from_secs(3600) {
                return bad(
                    "secrets.retention",
                    "at least 1h: a deleted secret must stay recoverable for a while",
                );
            }
            let lease = sec.lease_ttl.0.as_secs();
            if !(10..=7 * 86_400).contains(&lease) {
                return bad("secrets.lease_ttl", "between 10s and 7d");
            }
            if sec.push_retention.0 < std::time::Duration::from_secs(86_400) {
                return bad(
                    "secrets.push_retention",
                    "at least 1d: a job starts after its push",
                );
            }
        }
        if self.tokens.default_ttl > self.tokens.max_ttl {
            return bad("tokens.default_ttl", "must not exceed tokens.max_ttl");
        }
        let positive = [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.body_idle_timeout", self.server.body_idle_timeout),
            (
                "server.websocket_idle_timeout",
                self.server.websocket_idle_timeout,
            ),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            (
                "upstream.body_idle_timeout",
                self.upstream.body_idle_timeout,
            ),
            ("tokens.default_ttl", self.tokens.default_ttl),
        ];
        for (k, d) in positive {
            if d.0.is_zero() {
                return bad(k, "must be greater than zero");
            }
        }
        self.validate_login()?;
        if let Some(ssh) = &self.ssh {
            if ssh.upstream.is_none() && self.upstream.git_http_backend.is_none() {
                return bad(
                    "ssh.upstream",
                    "set [ssh.upstream] (the forge's SSH server), or use the built-in upstream (upstream.git_http_backend)",
                );
            }
            if ssh.cert_ttl.0 < std::time::Duration::from_secs(60) {
                return bad("ssh.cert_ttl", "must be at least 60s");
            }
            if let Some(u) = &ssh.upstream {
                if u.cert_ttl.0 < std::time::Duration::from_secs(10) {
                    return bad("ssh.upstream.cert_ttl", "must be at least 10s");
                }
                if u.host_key.split_whitespace().count() < 2 {
                    return bad(
                        "ssh.upstream.host_key",
                        "must be a public key line: `ssh-ed25519 AAAA...`",
                    );
                }
                if u.repo_root.contains('\'') || u.repo_root.ends_with('/') {
                    return bad(
                        "ssh.upstream.repo_root",
                        "must not contain `'` or end with `/`",
                    );
                }
            }
            let mut names = std::collections::HashSet::new();
            for (i, sa) in ssh.service_accounts.iter().enumerate() {
                if sa.name.is_empty() || !names.insert(sa.name.as_str()) {
                    return Err((
                        format!("ssh.service_accounts[{i}].name"),
                        "must be set and unique".to_owned(),
                    ));
                }
            }
        }
        if let Some(g) = &self.forge.groups {
            if !matches!(self.forge.kind, ForgeKind::Gitea | ForgeKind::Forgejo) {
                return bad(
                    "forge.groups",
                    "forge groups are read from the Gitea/Forgejo API: forge.kind must be gitea or forgejo",
                );
            }
            match g.api_url.as_deref().or(self.upstream.url.as_deref()) {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                Some(_) if g.api_url.is_none() => {
                    return bad(
                        "forge.groups.api_url",
                        "set it: the forge API is read over http:// or https://, not the upstream's Unix socket",
                    );
                }
                Some(_) => {
                    return bad(
                        "forge.groups.api_url",
                        "must start with http:// or https://",
                    );
                }
                None => {
                    return bad(
                        "forge.groups.api_url",
                        "set it: the upstream is not a forge URL",
                    );
                }
            }
            if g.timeout.0.is_zero() {
                return bad("forge.groups.timeout", "must be greater than zero");
            }
        }
        if let Some(f) = &self.forward_auth {
            if f.trusted_proxies.is_empty() && f.trusted_proxy_names.is_empty() {
                return bad(
                    "forward_auth.trusted_proxies",
                    "name the front proxies that may ask (their addresses or ranges, or their certificates' names in trusted_proxy_names)",
                );
            }
            let client_ca = self
                .server
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some());
            if !f.trusted_proxy_names.is_empty() && !client_ca {
                return bad(
                    "forward_auth.trusted_proxy_names",
                    "set server.tls.client_ca_file: names come from client certificates it verifies",
                );
            }
            if f.trusted_proxy_names.iter().any(|n| n.trim().is_empty()) {
                return bad("forward_auth.trusted_proxy_names", "a name cannot be empty");
            }
        }
        if let Some(e) = &self.ext_authz {
            if e.trusted_proxies.is_empty() {
                return bad(
                    "ext_authz.trusted_proxies",
                    "name the Envoy proxies that may ask (their addresses or ranges)",
                );
            }
            if e.max_request_bytes.0 == 0 || e.max_request_bytes.0 > 1 << 20 {
                return bad(
                    "ext_authz.max_request_bytes",
                    "between 1 byte and 1 MiB (Gatehouse reads no more of a forwarded body)",
                );
            }
            let mut seen = std::collections::HashSet::new();
            for w in &e.workloads {
                if let Err(why) = crate::check_spiffe_id(&w.spiffe_id) {
                    return bad("ext_authz.workloads.spiffe_id", why);
                }
                if !seen.insert(w.spiffe_id.as_str()) {
                    return bad(
                        "ext_authz.workloads.spiffe_id",
                        "each SPIFFE id once: it names one workload",
                    );
                }
                if w.username.trim().is_empty() || w.username.trim() != w.username {
                    return bad(
                        "ext_authz.workloads.username",
                        "a forge user name, without surrounding spaces",
                    );
                }
            }
        }
        if let Some(a) = &self.forge.api {
            if self.forge.kind == ForgeKind::Generic {
                return bad(
                    "forge.api",
                    "a generic upstream has no forge API: forge.kind must be gitea, forgejo or gogs",
                );
            }
            match a.url.as_deref().or(self.upstream.url.as_deref()) {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                _ => {
                    return bad(
                        "forge.api.url",
                        "set it to the forge's http:// or https:// URL (the upstream is not one)",
                    );
                }
            }
            if a.timeout.0.is_zero() {
                return bad("forge.api.timeout", "must be greater than zero");
            }
        }
        if let Some(tls) = &self.server.tls
            && tls.reload_interval.0 < std::time::Duration::from_millis(100)
        {
            return bad("server.tls.reload_interval", "must be at least 100ms");
        }
        if self.identity_headers.assertion_ttl.0 < std::time::Duration::from_secs(2) {
            return bad("identity_headers.assertion_ttl", "must be at least 2s");
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            if iss.jwks_cache_ttl.0 < std::time::Duration::from_secs(1) {
                return Err((
                    format!("issuers[{i}].jwks_cache_ttl"),
                    "must be at least 1s".to_owned(),
                ));
            }
            if iss.http_timeout.0.is_zero() {
                return Err((
                    format!("issuers[{i}].http_timeout"),
                    "must be greater than zero".to_owned(),
                ));
            }
        }
        let id = &self.identity_headers;
        let names = [
            ("identity_headers.user", &id.user),
            ("identity_headers.email", &id.email),
            ("identity_headers.full_name", &id.full_name),
            ("identity_headers.groups", &id.groups),
            ("identity_headers.assertion", &id.assertion),
        ];
        for (k, name) in names
            .into_iter()
            .chain(id.strip.iter().map(|s| ("identity_headers.strip", s)))
        {
            let optional = matches!(k, "identity_headers.groups" | "identity_headers.assertion");
            if name.is_empty() && optional {
                continue;
            }
            if !is_header_name(name) {
                return Err((
                    k.to_owned(),
                    format!("`{name}` is not a valid HTTP header name"),
                ));
            }
        }
        let assertion_aud = id
            .assertion_audience
            .as_deref()
            .or(self.upstream.url.as_deref())
            .unwrap_or("gatehouse-upstream");
        if assertion_aud == self.tokens.audience {
            return bad(
                "identity_headers.assertion_audience",
                "must differ from tokens.audience, or an assertion sent upstream could be replayed as a Gatehouse token",
            );
        }
        if self.audit.queue_capacity < 2 || self.audit.batch_max == 0 {
            // A write holds its own place and needs a second one for its `forwarding` record.
            return bad(
                "audit",
                "queue_capacity must be at least 2 and batch_max at least 1",
            );
        }
        if self.git.max_command_list.0 < 4096 {
            return bad(
                "git.max_command_list",
                "must be at least 4KiB: a real push's first command line alone can take 200 bytes",
            );
        }
        if self.git.max_ref_updates == 0 {
            return bad("git.max_ref_updates", "must be at least 1");
        }
        if self.audit.rotate_size.is_some_and(|s| s.0 < 4096) {
            return bad(
                "audit.rotate_size",
                "must be at least 4KiB: a new file per batch would bury the log in files",
            );
        }
        if self
            .audit
            .rotate_age
            .is_some_and(|a| a.0 < std::time::Duration::from_secs(1))
        {
            return bad("audit.rotate_age", "must be at least 1s");
        }
        for h in [
            &self.identity_headers.user,
            &self.identity_headers.email,
            &self.identity_headers.full_name,
        ] {
            if h.is_empty() {
                return bad(
                    "identity_headers",
                    "user, email and full_name header names must not be empty",
                );
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_login(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        let mut any_login = false;
        for (i, iss) in self.issuers.iter().enumerate() {
            let Some(l) = &iss.login else { continue };
            any_login = true;
            let k = |f: &str| format!("issuers[{i}].login.{f}");
            if l.client_id.is_empty() {
                return bad(&k("client_id"), "must not be empty");
            }
            if !l.scopes.iter().any(|s| s == "openid") {
                return bad(&k("scopes"), "must include `openid`");
            }
            for key in l.extra_params.keys() {
                const RESERVED: [&str; 11] = [
                    "response_type",
                    "response_mode",
                    "client_id",
                    "redirect_uri",
                    "scope",
                    "state",
                    "nonce",
                    "code_challenge",
                    "code_challenge_method",
                    "client_secret",
                    "code_verifier",
                ];
                if RESERVED.contains(&key.as_str()) {
                    return Err((
                        k("extra_params"),
                        format!("`{key}` is set by Gatehouse and cannot be overridden"),
                    ));
                }
            }
        }
        let Some(s) = &self.session else {
            if any_login {
                return bad(
                    "session",
                    "an issuer has `login`: add a [session] table with `external_url`",
                );
            }
            return Ok(());
        };
        let url = s.external_url.trim_end_matches('/');
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or("");
        let host_only = host.split(':').next().unwrap_or("");
        let local = matches!(host_only, "127.0.0.1" | "localhost" | "[::1]");
        if host.is_empty() || host.contains('/') || host.contains('?') || host.contains('#') {
            return bad(
                "session.external_url",
                "must be a scheme and host (and port), e.g. `https://git.example.com`",
            );
        }
        if url.starts_with("http://") && !local {
            return bad(
                "session.external_url",
                "must be https:// (session cookies are Secure); http:// only for 127.0.0.1 or localhost",
            );
        }
        if s.max_lifetime.0 < std::time::Duration::from_secs(60) {
            return bad("session.max_lifetime", "must be at least 60s");
        }
        if s.login_timeout.0 < std::time::Duration::from_secs(30) {
            return bad("session.login_timeout", "must be at least 30s");
        }
        for r in &s.repositories {
            let mut parts = r.split('/');
            let ok = matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(n), None) if !o.is_empty() && !n.is_empty());
            if !ok {
                return Err((
                    "session.repositories".to_owned(),
                    format!("`{r}` is not `owner/repo`"),
                ));
            }
        }
        for l in &s.links {
            if !(l.starts_with("https://") || l.starts_with("http://")) {
                return Err((
                    "session.links".to_owned(),
                    format!("`{l}` is not an http(s) URL"),
                ));
            }
        }
        Ok(())
    }
}

/// An RFC 9110 token: what a header name may be.
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn d5ms() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(5))
}
fn d2s() -> ConfigDuration {
    ConfigDuration::secs(2)
}

fn d10s() -> ConfigDuration {
    ConfigDuration::secs(10)
}
fn d30s() -> ConfigDuration {
    ConfigDuration::secs(30)
}
fn d60s() -> ConfigDuration {
    ConfigDuration::secs(60)
}
fn d90s() -> ConfigDuration {
    ConfigDuration::secs(90)
}
fn d600s() -> ConfigDuration {
    ConfigDuration::secs(600)
}
fn d900s() -> ConfigDuration {
    ConfigDuration::secs(900)
}
fn d8h() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(8 * 3600))
}
fn default_ssh_host_key() -> PathBuf {
    PathBuf::from("ssh/host_ed25519")
}
fn default_ssh_user_ca() -> PathBuf {
    PathBuf::from("ssh/user_ca")
}
fn default_ssh_upstream_ca() -> PathBuf {
    PathBuf::from("ssh/upstream_ca")
}
fn default_ssh_max_connections() -> usize {
    512
}
fn default_ssh_user() -> String {
    "git".to_owned()
}
fn d300s() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(300))
}
fn default_forge_groups_prefix() -> String {
    "forge:".to_owned()
}
fn d12h() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(12 * 3600))
}
fn default_session_dir() -> PathBuf {
    PathBuf::from("sessions")
}
fn default_login_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn d24h() -> ConfigDuration {
    ConfigDuration::secs(86_400)
}
fn yes() -> bool {
    true
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_pool_max_idle() -> usize {
    64
}
fn default_git() -> PathBuf {
    PathBuf::from("git")
}
fn default_forge_name() -> String {
    "default".to_owned()
}
fn default_user_header() -> String {
    "X-WEBAUTH-USER".to_owned()
}
fn default_email_header() -> String {
    "X-WEBAUTH-EMAIL".to_owned()
}
fn default_fullname_header() -> String {
    "X-WEBAUTH-FULLNAME".to_owned()
}
fn default_assertion_header() -> String {
    "X-Gatehouse-Assertion".to_owned()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned(), "ES256".to_owned()]
}
fn default_sub() -> String {
    "sub".to_owned()
}
fn default_username() -> String {
    "preferred_username".to_owned()
}
fn default_email() -> String {
    "email".to_owned()
}
fn default_name() -> String {
    "name".to_owned()
}
fn default_groups() -> String {
    "groups".to_owned()
}
fn default_own_issuer() -> String {
    "urn:gatehouse".to_owned()
}
fn default_own_audience() -> String {
    "gatehouse".to_owned()
}
fn default_queue() -> usize {
    65_536
}
fn default_batch() -> usize {
    512
}
fn default_log_level() -> String {
    "info".to_owned()
}

impl WebhooksConfig {
    fn validate(&self, secrets_broker: Option<&SecretsConfig>) -> Result<(), (String, String)> {
        let bad = |k: String, m: &str| Err((k, m.to_owned()));
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if self.retention.0 < std::time::Duration::from_secs(3600) {
            return bad("webhooks.retention".into(), "at least 1h");
        }
        if self.secret_refresh.0 < std::time::Duration::from_secs(1) {
            return bad("webhooks.secret_refresh".into(), "at least 1s");
        }
        let mut hooks = std::collections::HashSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            let k = |f: &str| format!("webhooks.hooks[{i}].{f}");
            if !name_ok(&h.name) {
                return bad(
                    k("name"),
                    "1 to 64 letters, digits, `-` or `_` (it is a URL path segment)",
                );
            }
            if !hooks.insert(h.name.as_str()) {
                return bad(k("name"), "two hooks have this name");
            }
            if h.secrets.is_empty() {
                return bad(
                    k("secrets"),
                    "at least one: an unsigned delivery is never accepted",
                );
            }
            if secrets_broker.is_none()
                && h.secrets
                    .iter()
                    .any(|s| matches!(s, HookSecret::Broker { .. }))
            {
                return bad(
                    k("secrets"),
                    "{ secret = \"path\" } needs the secrets broker ([secrets])",
                );
            }
            if h.max_body.0 == 0 || h.max_body.0 > 64 << 20 {
                return bad(k("max_body"), "between 1 byte and 64 MiB");
            }
            if h.replay_window.0 < std::time::Duration::from_secs(60) {
                return bad(k("replay_window"), "at least 1m");
            }
            if h.kind == HookKindConfig::Standard
                && (h.tolerance.0 < std::time::Duration::from_secs(1)
                    || h.tolerance.0 > std::time::Duration::from_secs(3600))
            {
                return bad(k("tolerance"), "between 1s and 1h");
            }
            if h.kind == HookKindConfig::Standard && h.replay_window.0 < h.tolerance.0 * 2 {
                return bad(
                    k("replay_window"),
                    "at least twice `tolerance`: a replayed delivery must be remembered for as long as its timestamp is accepted",
                );
            }
            let mut targets = std::collections::HashSet::new();
            for (j, t) in h.targets.iter().enumerate() {
                let k = |f: &str| format!("webhooks.hooks[{i}].targets[{j}].{f}");
                if !name_ok(&t.name) {
                    return bad(k("name"), "1 to 64 letters, digits, `-` or `_`");
                }
                if !targets.insert(t.name.as_str()) {
                    return bad(k("name"), "two targets of this hook have this name");
                }
                if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                    return bad(k("url"), "must start with http:// or https://");
                }
                if !(1..=256).contains(&t.max_in_flight) {
                    return bad(k("max_in_flight"), "between 1 and 256");
                }
                if t.timeout.0 < std::time::Duration::from_secs(1)
                    || t.timeout.0 > std::time::Duration::from_secs(300)
                {
                    return bad(k("timeout"), "between 1s and 5m");
                }
                if t.retry_min.0 < std::time::Duration::from_millis(100)
                    || t.retry_max.0 < t.retry_min.0
                {
                    return bad(k("retry_min"), "at least 100ms, and at most retry_max");
                }
                if t.give_up_after.0 < std::time::Duration::from_secs(60) {
                    return bad(k("give_up_after"), "at least 1m");
                }
                if t.give_up_after.0 > self.retention.0 {
                    return bad(
                        k("give_up_after"),
                        "at most webhooks.retention: a delivery is kept until it is given up",
                    );
                }
                for r in &t.repositories {
                    if r.split('/').count() != 2 || r.split('/').any(str::is_empty) {
                        return bad(
                            k("repositories"),
                            "each is owner/name (`*` within a segment)",
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
