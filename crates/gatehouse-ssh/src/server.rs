//! One SSH connection at the front door: who is calling (certificate or service-account key),
//! which requests are refused (shells, ptys, forwarding, subsystems, anything but git), and the
//! policy decision before an exec reaches the upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse_audit::{AuditPrincipal, AuditRecord};
use gatehouse_core::Principal;
use gatehouse_git::parse_ssh_command;
use gatehouse_policy::{AuthzRequest, RequestFacts};
use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use crate::SshGateway;
use crate::keys::fingerprint;

/// The caller, once authenticated.
struct Caller {
    principal: Arc<Principal>,
    /// How it proved it: `certificate serial N (key id ...)` or `key SHA256:...`.
    credential: String,
}

pub(crate) struct Conn {
    gw: Arc<SshGateway>,
    peer: SocketAddr,
    id: String,
    caller: Option<Caller>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    git_protocol: HashMap<ChannelId, String>,
}

/// Tells the client why, on stderr, and ends the channel with `code`.
fn refuse(session: &mut Session, id: ChannelId, msg: &str, code: u32) -> Result<(), russh::Error> {
    session.extended_data(id, 1, bytes::Bytes::from(format!("Gatehouse: {msg}\r\n")))?;
    session.exit_status_request(id, code)?;
    session.eof(id)?;
    session.close(id)?;
    Ok(())
}

impl Conn {
    pub(crate) fn new(gw: Arc<SshGateway>, peer: SocketAddr) -> Self {
        Self {
            gw,
            peer,
            id: format!("ssh-{:016x}", rand::random::<u64>()),
            caller: None,
            channels: HashMap::new(),
            git_protocol: HashMap::new(),
        }
    }

    fn record(&self) -> AuditRecord {
        AuditRecord {
            time: self.gw.clock.now(),
            event: "ssh",
            request_id: Some(self.id.as_str().into()),
            source: Some(self.peer.ip().to_string().into()),
            method: Some("SSH".into()),
            host: Some(self.gw.settings.external_address.as_str().into()),
            ..AuditRecord::default()
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // The client proves it holds the key first; the key (or its certificate) is judged after.
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let data = key.public_key.key_data();
        match self.gw.settings.service_accounts.get(data) {
            Some(p) if let Some(r) = self.gw.decider.authn().revoked(p) => {
                tracing::info!(peer = %self.peer, key = %fingerprint(data), reason = r.reason(), "ssh: revoked service account refused");
                Ok(Auth::reject())
            }
            Some(p) => {
                self.caller = Some(Caller {
                    principal: Arc::new(p.clone()),
                    credential: format!("key {}", fingerprint(data)),
                });
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(peer = %self.peer, key = %fingerprint(data), "ssh: unregistered key refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let now = self.gw.clock.now().as_secs();
        match self.gw.settings.user_ca.verify(certificate, now) {
            Ok(id) if let Some(r) = self.gw.decider.authn().revoked(&id.principal) => {
                tracing::info!(peer = %self.peer, serial = id.serial, reason = r.reason(), "ssh: revoked certificate refused");
                Ok(Auth::reject())
            }
            Ok(id) => {
                self.caller = Some(Caller {
                    credential: format!("certificate serial {} ({})", id.serial, id.key_id),
                    principal: Arc::new(id.principal),
                });
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, serial = certificate.serial(), reason = %e, "ssh: certificate refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= 4 {
            drop(reply); // refused: too many open channels
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, %host, port, "ssh: port forwarding refused");
        Ok(()) // the dropped handle refuses the channel (administratively prohibited)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, %address, port = *port, "ssh: remote forwarding refused");
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, "ssh: agent forwarding refused");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = variable_name == "GIT_PROTOCOL"
            && variable_value.len() <= 128
            && variable_value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=:._-".contains(&b));
        if ok {
            self.git_protocol.insert(channel, variable_value.to_owned());
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        self.channels.remove(&channel);
        let who = self
            .caller
            .as_ref()
            .map_or("there", |c| c.principal.username.as_str());
        let msg = format!(
            "Hi {who}! You are signed in, but Gatehouse does not provide shell access. Use git: git clone ssh://{}/OWNER/REPO.git",
            self.gw.settings.external_address
        );
        refuse(session, channel, &msg, 1)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, subsystem = %name.chars().take(64).collect::<String>(), "ssh: subsystem refused");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let arrived = std::time::Instant::now();
        session.channel_success(channel)?;
        let Some(ch) = self.channels.remove(&channel) else {
            return refuse(session, channel, "one command per channel", 128);
        };
        let Some(caller) = &self.caller else {
            return refuse(session, channel, "not authenticated", 128);
        };
        let mut rec = self.record();
        rec.principal = Some(AuditPrincipal::of(&caller.principal));
        rec.detail = Some(caller.credential.clone());
        let command: String = String::from_utf8_lossy(data).chars().take(1024).collect();
        rec.path = Some(command.clone());
        let slot = match self.gw.audit.reserve() {
            Ok(s) => s,
            Err(_) => {
                return refuse(
                    session,
                    channel,
                    "the audit log cannot record this request, so it is refused; try again later",
                    128,
                );
            }
        };
        let cmd = match parse_ssh_command(self.gw.settings.flavor, &command) {
            Ok(c) => c,
            Err(e) => {
                rec.decision = Some("deny");
                rec.reason = Some("bad_command".into());
                self.gw
                    .metrics
                    .finished(rec.action, rec.decision, 128, arrived);
                slot.send(rec);
                return refuse(session, channel, &e.to_string(), 128);
            }
        };
        let action = cmd.service.action();
        rec.action = Some(action.as_str());
        rec.repo = Some(cmd.repo.path());
        let host = self
            .gw
            .settings
            .external_address
            .rsplit_once(':')
            .map_or(self.gw.settings.external_address.as_str(), |(h, _)| h)
            .to_ascii_lowercase();
        // The forge's teams, as over HTTP: a policy that names them decides SSH alike.
        let principal = match self.gw.decider.enrich(caller.principal.clone()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(conn = %self.id, error = %e, "ssh: refusing: forge groups unavailable");
                rec.decision = Some("deny");
                rec.reason = Some("forge_groups_unavailable".into());
                self.gw
                    .metrics
                    .finished(rec.action, rec.decision, 128, arrived);
                slot.send(rec);
                return refuse(
                    session,
                    channel,
                    "the forge cannot say which teams you are in right now; try again later",
                    128,
                );
            }
        };
        rec.principal = Some(AuditPrincipal::of(&principal));
        let decision = self.gw.decider.decide(&AuthzRequest {
            principal: &principal,
            action,
            resource: &gatehouse_core::Resource::Repo(cmd.repo.clone()),
            facts: RequestFacts {
                source_ip: self.peer.ip(),
                method: "SSH",
                host: &host,
                wiki: cmd.wiki,
                via: gatehouse_core::Via::Git,
                git_ref: None,
            },
        });
        rec.policy = Some(decision.deciding_policy());
        rec.reason = Some(decision.reason.clone());
        if !decision.allowed {
            rec.decision = Some("deny");
            self.gw
                .metrics
                .finished(rec.action, rec.decision, 128, arrived);
            slot.send(rec);
            let msg = format!(
                "{action} on {} denied by policy ({})",
                cmd.repo, decision.reason
            );
            return refuse(session, channel, &msg, 128);
        }
        rec.decision = Some("allow");
        tracing::info!(conn = %self.id, user = %principal.username, repo = %cmd.repo, %action, "ssh: allowed");
        let job = crate::bridge::Job {
            gw: self.gw.clone(),
            channel: ch,
            command: cmd,
            git_protocol: self.git_protocol.remove(&channel),
            principal,
            conn: self.id.clone(),
            peer: self.peer.ip(),
            host,
            rec,
            slot,
            arrived,
            in_flight: self.gw.metrics.in_flight(),
        };
        tokio::spawn(job.run());
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.git_protocol.remove(&channel);
        Ok(())
    }
}
