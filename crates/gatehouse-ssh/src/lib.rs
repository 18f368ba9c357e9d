//! Git over SSH through Gatehouse: the SSH front door (russh), the certificates people and bots
//! present there, and the bridge to the forge's SSH server (or the built-in upstream).
//!
//! The front door accepts only exec requests for `git-upload-pack`, `git-receive-pack` and
//! `git-upload-archive`; the repository path is normalized exactly like an HTTP path and the same
//! policy decides (`git:read`, `git:write`). Callers prove who they are with an SSH user
//! certificate from Gatehouse's user CA (`gatehouse ssh-cert`) or a public key registered to a
//! service account. Upstream, Gatehouse logs in as the caller's forge user with a certificate it
//! mints for that one connection from a second CA the forge trusts; the upstream host key is
//! pinned. Streams are copied both ways without buffering whole packs.
//!
//! This crate must not parse config files, read policies from disk or know about HTTP. It never
//! logs a private key. Time comes from the injected [`Clock`].
#![forbid(unsafe_code)]

mod bridge;
mod keys;
mod metrics;
mod server;

pub use keys::{
    CertError, CertIdentity, UserCa, fingerprint, load_or_generate, mint_upstream, parse_public_key,
};
pub use metrics::SshMetrics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::AuditSink;
use gatehouse_config::{GitBackendConfig, SshConfig};
use gatehouse_core::{Clock, Principal, PrincipalKind};
use gatehouse_decide::Decider;
use gatehouse_git::ForgeFlavor;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::public::KeyData;

/// A setup or key problem.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key or certificate could not be read, written or made.
    #[error("ssh key: {0}")]
    Key(String),
    /// The configuration cannot work.
    #[error("ssh config: {0}")]
    Config(String),
    /// The credential that asked for a certificate has ended (the caller's fault: sign in again).
    #[error("the credential asking for the certificate has expired")]
    CredentialExpired,
    /// The listener failed.
    #[error("ssh listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Where allowed sessions go.
#[derive(Debug)]
pub enum UpstreamTarget {
    /// The forge's SSH server.
    Ssh {
        /// `host:port`.
        address: String,
        /// The SSH user (Gitea: `git`).
        user: String,
        /// The pinned host key.
        host_key: KeyData,
        /// The CA the forge trusts.
        ca: Box<PrivateKey>,
        /// Validity of each per-connection certificate, seconds.
        cert_ttl: u64,
        /// Prepended to `/owner/repo.git`.
        repo_root: String,
        /// Connect and authenticate timeout.
        connect_timeout: Duration,
    },
    /// The built-in upstream: git's own `upload-pack`/`receive-pack` on a directory.
    Local {
        /// The `git` executable.
        git: PathBuf,
        /// `owner/repo.git` directories.
        repos_dir: PathBuf,
    },
}

/// Everything the SSH front door needs, derived once from the config.
#[derive(Debug)]
pub struct SshSettings {
    /// How repository names compare.
    pub flavor: ForgeFlavor,
    /// The host key.
    pub host_key: PrivateKey,
    /// The user CA.
    pub user_ca: UserCa,
    /// Validity of issued user certificates, seconds.
    pub cert_ttl: u64,
    /// Service accounts by key.
    pub service_accounts: HashMap<KeyData, Principal>,
    /// Where allowed sessions go.
    pub upstream: UpstreamTarget,
    /// The host name policies see as `context.host`, and `ssh://` URLs use.
    pub external_address: String,
    /// Idle connections are closed after this long.
    pub inactivity_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How much of a push's command list is read before it is refused.
    pub push_limits: gatehouse_git::PushLimits,
}

impl SshSettings {
    /// Loads (or generates) the keys named in `[ssh]` (`ssh`). The app hands over the other
    /// few settings the front door needs: the built-in upstream, if that is the upstream; the
    /// issuer service accounts are named under; how repository names compare; how much of a
    /// push is read.
    pub fn new(
        ssh: &SshConfig,
        builtin: Option<&GitBackendConfig>,
        issuer: &str,
        flavor: ForgeFlavor,
        push_limits: gatehouse_git::PushLimits,
    ) -> Result<Self, SshError> {
        let host_key = load_or_generate(&ssh.host_key)?;
        let user_ca = UserCa::new(
            load_or_generate(&ssh.user_ca_key)?,
            ssh.revoked_serials.iter().copied(),
        );
        let mut service_accounts = HashMap::new();
        for sa in &ssh.service_accounts {
            let key = parse_public_key(&sa.public_key).map_err(|e| {
                SshError::Config(format!("ssh.service_accounts `{}`: {e}", sa.name))
            })?;
            let mut p = Principal {
                kind: PrincipalKind::Service,
                issuer: issuer.to_owned(),
                subject: sa.name.clone(),
                username: sa.name.clone(),
                display_name: None,
                email: None,
                groups: sa.groups.clone(),
                token_id: Some(format!("ssh-key:{}", fingerprint(key.key_data()))),
                expires_at: None,
                environment: None,
                workload: None,
                derived_from: Vec::new(),
            };
            p.normalize_groups();
            service_accounts.insert(key.key_data().clone(), p);
        }
        let upstream = match (&ssh.upstream, builtin) {
            (Some(u), _) => UpstreamTarget::Ssh {
                address: u.address.clone(),
                user: u.user.clone(),
                host_key: parse_public_key(&u.host_key)
                    .map_err(|e| SshError::Config(format!("ssh.upstream.host_key: {e}")))?
                    .key_data()
                    .clone(),
                ca: Box::new(load_or_generate(&u.ca_key)?),
                cert_ttl: u.cert_ttl.0.as_secs(),
                repo_root: u.repo_root.clone(),
                connect_timeout: u.connect_timeout.0,
            },
            (None, Some(g)) => UpstreamTarget::Local {
                git: g.git.clone(),
                repos_dir: g.repos_dir.clone(),
            },
            (None, None) => {
                return Err(SshError::Config("no SSH upstream".into()));
            }
        };
        Ok(Self {
            flavor,
            host_key,
            user_ca,
            cert_ttl: ssh.cert_ttl.0.as_secs(),
            service_accounts,
            upstream,
            external_address: ssh
                .external_address
                .clone()
                .unwrap_or_else(|| ssh.listen.to_string()),
            inactivity_timeout: ssh.inactivity_timeout.0,
            max_connections: ssh.max_connections.max(1),
            push_limits,
        })
    }

    /// The host key's public line and fingerprint.
    pub fn host_key_line(&self) -> (String, String) {
        let public = self.host_key.public_key();
        (
            public.to_openssh().unwrap_or_default(),
            fingerprint(public.key_data()),
        )
    }
}

/// How long a certificate issued at `now` may live: `ssh.cert_ttl`, but never past the end of
/// the credential that asked for it (a token's `exp`, a browser session's end), so that a
/// short-lived credential cannot buy a longer-lived one. A credential without an end (an
/// introspected token whose answer had no `exp`) gets `ssh.cert_ttl`.
pub fn cert_lifetime(now: i64, cert_ttl: u64, expires_at: Option<i64>) -> Result<u64, SshError> {
    match expires_at {
        None => Ok(cert_ttl),
        Some(end) if end <= now => Err(SshError::CredentialExpired),
        Some(end) => Ok(cert_ttl.min(u64::try_from(end - now).unwrap_or(0))),
    }
}

/// A user certificate, as `gatehouse ssh-cert` receives it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// OpenSSH text (`ssh-ed25519-cert-v01@openssh.com AAAA...`).
    pub certificate: String,
    /// Its serial (what `ssh.revoked_serials` names).
    pub serial: u64,
    /// Its end, seconds since the epoch.
    pub valid_before: u64,
}

/// The SSH front door: settings, the live policy, the audit log.
#[derive(Debug)]
pub struct SshGateway {
    settings: SshSettings,
    /// The decision core, shared with the HTTP front door.
    decider: Arc<Decider>,
    audit: AuditSink,
    clock: Arc<dyn Clock>,
    metrics: SshMetrics,
}

impl SshGateway {
    /// Assembles the front door.
    pub fn new(
        settings: SshSettings,
        decider: Arc<Decider>,
        audit: AuditSink,
        clock: Arc<dyn Clock>,
        metrics: SshMetrics,
    ) -> Self {
        Self {
            settings,
            decider,
            audit,
            clock,
            metrics,
        }
    }

    /// The settings (for the certificate endpoint and start-up messages).
    pub fn settings(&self) -> &SshSettings {
        &self.settings
    }

    /// Signs a user certificate for `key` (an `authorized_keys` line) naming `p`: the
    /// `gatehouse ssh-cert` endpoint.
    pub fn issue_user_cert(&self, key: &str, p: &Principal) -> Result<IssuedCert, SshError> {
        let key = parse_public_key(key)?;
        let now = self.clock.now().as_secs();
        let ttl = cert_lifetime(now, self.settings.cert_ttl, p.expires_at)?;
        let cert = self.settings.user_ca.issue(&key, p, now, ttl)?;
        Ok(IssuedCert {
            certificate: cert
                .to_openssh()
                .map_err(|e| SshError::Key(format!("certificate: {e}")))?,
            serial: cert.serial(),
            valid_before: cert.valid_before(),
        })
    }

    /// The `known_hosts` line for the front door (`[host]:port key` off port 22).
    pub fn known_hosts_line(&self) -> String {
        let (key, _) = self.settings.host_key_line();
        let addr = &self.settings.external_address;
        match addr.rsplit_once(':') {
            Some((host, "22")) => format!("{host} {key}"),
            Some((host, port)) => format!("[{}]:{port} {key}", host.trim_matches(['[', ']'])),
            None => format!("{addr} {key}"),
        }
    }

    /// Accepts connections on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let config = Arc::new(russh::server::Config {
            keys: vec![self.settings.host_key.clone()],
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(self.settings.inactivity_timeout),
            max_auth_attempts: 6,
            nodelay: true,
            ..Default::default()
        });
        tokio::pin!(shutdown);
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.max_connections));
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "ssh accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Beyond the cap a connection is closed before any work is spent on it.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(peer = %peer, max = self.settings.max_connections, "ssh: too many connections, refusing");
                drop(stream);
                continue;
            };
            let handler = server::Conn::new(self.clone(), peer);
            let config = config.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match russh::server::run_stream(config, stream, handler).await {
                    Ok(session) => {
                        if let Err(e) = session.await {
                            tracing::debug!(peer = %peer, error = ?e, "ssh session ended with an error");
                        }
                    }
                    Err(e) => tracing::debug!(peer = %peer, error = ?e, "ssh handshake failed"),
                }
            });
        }
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::*;

    #[test]
    fn a_certificate_never_outlives_the_credential_that_bought_it() {
        let now = 1_700_000_000;
        // A 5-minute token buys at most 5 minutes, whatever `ssh.cert_ttl` says.
        assert_eq!(
            cert_lifetime(now, 16 * 3600, Some(now + 300)).ok(),
            Some(300)
        );
        // A long session is cut to `ssh.cert_ttl`.
        assert_eq!(
            cert_lifetime(now, 3600, Some(now + 86_400)).ok(),
            Some(3600)
        );
        // No known end: `ssh.cert_ttl`.
        assert_eq!(cert_lifetime(now, 3600, None).ok(), Some(3600));
        // Ended (now or before): refused, not a zero-length certificate.
        assert!(matches!(
            cert_lifetime(now, 3600, Some(now)),
            Err(SshError::CredentialExpired)
        ));
        assert!(matches!(
            cert_lifetime(now, 3600, Some(now - 1)),
            Err(SshError::CredentialExpired)
        ));
    }
}
