//! An allowed exec, carried to the upstream: the forge's SSH server (logged in as the caller's
//! forge user with a one-connection certificate, host key pinned) or git run locally. Bytes are
//! copied both ways as they come; stderr and the exit status reach the git client; the audit
//! record is written when the session ends.

use std::sync::Arc;
use std::time::Instant;

use gatehouse_audit::{AuditRecord, AuditRef, AuditSlot};
use gatehouse_core::{Principal, Resource};
use gatehouse_git::{
    AnswerCapture, PushReader, PushRequest, SshCommand, SshService, refused_push_report,
};
use gatehouse_policy::{RefDecisions, RequestFacts};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::public::KeyData;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{SshGateway, UpstreamTarget};

pub(crate) struct Job {
    pub(crate) gw: Arc<SshGateway>,
    pub(crate) channel: Channel<Msg>,
    pub(crate) command: SshCommand,
    pub(crate) git_protocol: Option<String>,
    pub(crate) principal: Arc<Principal>,
    pub(crate) conn: String,
    pub(crate) peer: std::net::IpAddr,
    pub(crate) host: String,
    pub(crate) rec: AuditRecord,
    pub(crate) slot: AuditSlot,
    /// When the command arrived (for `gatehouse_ssh_command_duration_seconds`).
    pub(crate) arrived: Instant,
    /// Counts the command in flight until the job ends.
    pub(crate) in_flight: crate::metrics::InFlight,
}

/// What the per-ref check of a push decided.
#[derive(Default)]
struct Gated {
    refs: Option<Vec<AuditRef>>,
    /// The deciding policy and reason of the first refused ref.
    refused: Option<(Arc<str>, Arc<str>)>,
    /// The `seq` of the `forwarding` record that announced the refs.
    forwarding_seq: Option<u64>,
    /// The audit log could not record the push: an error, not a denial.
    audit_failed: bool,
    /// The push was forwarded and asked for a report: whether it comes in side-band.
    report: Option<bool>,
}

/// Reads and drops the rest of the client's input (the pack of a refused push), for at most five
/// minutes, so that git reads the answer rather than a broken pipe.
async fn drain(client_rd: &mut russh::ChannelReadHalf, n: &mut u64) {
    let drain = async {
        while let Some(m) = client_rd.wait().await {
            match m {
                ChannelMsg::Data { data } => *n += data.len() as u64,
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(300), drain).await;
}

/// Writes one message to the client's stderr (extended data 1), which git prints.
async fn tell_client(client_wr: &russh::ChannelWriteHalf<Msg>, msg: &[u8]) {
    let mut err = client_wr.make_writer_ext(Some(1));
    let _ = err.write_all(msg).await;
    let _ = err.flush().await;
}

/// The line an SSH client shows when a push cannot be recorded.
const AUDIT_UNAVAILABLE: &[u8] = b"Gatehouse: the audit log cannot record this push, so nothing was sent to the forge; try again later\r\n";

/// Decides a push ref by ref, as over HTTP: `ref:create|update|delete` with the ref in the
/// context; one refused ref refuses the push.
struct PushGate<'a> {
    gw: &'a SshGateway,
    /// The session's record so far: the `forwarding` record of an allowed push is made of it.
    rec: &'a AuditRecord,
    principal: &'a Principal,
    command: &'a SshCommand,
    peer: std::net::IpAddr,
    host: &'a str,
}

impl PushGate<'_> {
    fn decide(&self, push: &PushRequest) -> RefDecisions {
        self.gw.decider.push_refs(
            self.principal,
            &Resource::Repo(self.command.repo.clone()),
            RequestFacts {
                source_ip: self.peer,
                method: "SSH",
                host: self.host,
                wiki: self.command.wiki,
                via: gatehouse_core::Via::Git,
                git_ref: None,
            },
            push,
        )
    }
}

/// Copies the client's input to `sink` until the client's EOF. For a push, the command list is
/// read first and decided ref by ref: refused, nothing reaches the upstream, git gets a
/// report-status naming each ref and why, and the rest of its input (the pack) is read and
/// dropped so that it reads the answer rather than a broken pipe.
async fn client_input<W: tokio::io::AsyncWrite + Unpin>(
    client_rd: &mut russh::ChannelReadHalf,
    sink: &mut W,
    gate: Option<PushGate<'_>>,
    client_wr: &russh::ChannelWriteHalf<Msg>,
    gated: &mut Gated,
) -> u64 {
    let mut n = 0u64;
    if let Some(gate) = gate {
        // Every byte read is kept, to be forwarded once the refs are decided; the reader looks
        // at each once (the list is bounded by `push_limits`).
        let mut buf = bytes::BytesMut::new();
        let mut reader = PushReader::new(gate.gw.settings.push_limits);
        let mut unreadable = None;
        while !reader.is_done() {
            match client_rd.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    n += data.len() as u64;
                    buf.extend_from_slice(&data);
                    if let Err(e) = reader.feed(&data) {
                        unreadable = Some(e);
                        break;
                    }
                }
                // The client ended inside (or before) its command list: git would act on what
                // it got, Gatehouse has not decided it, so none of it goes on.
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        let request = match unreadable.map_or_else(|| reader.finish(), Err) {
            Ok(r) => r,
            Err(e) => {
                gated.refused = Some(("".into(), "bad_push_commands".into()));
                let msg = format!(
                    "Gatehouse: the push commands are not readable: {e}; nothing was sent to the forge\r\n"
                );
                tell_client(client_wr, msg.as_bytes()).await;
                return n;
            }
        };
        let decisions = gate.decide(&request);
        gated.refs = Some(
            request
                .updates
                .iter()
                .zip(&decisions.per_ref)
                .map(|(u, d)| AuditRef::decided(&u.name, u.op().as_str(), &u.old, &u.new, d))
                .collect(),
        );
        if let Some(d) = decisions.first_denial() {
            let refused = decisions.refused();
            gated.refused = Some((d.deciding_policy(), d.reason.clone()));
            if request.wants_report() {
                let mut out = client_wr.make_writer();
                let _ = out
                    .write_all(&refused_push_report(&request, &refused))
                    .await;
                let _ = out.flush().await;
            } else {
                let msg = format!("Gatehouse: push denied by policy ({})\r\n", d.reason);
                tell_client(client_wr, msg.as_bytes()).await;
            }
            drain(client_rd, &mut n).await;
            return n;
        }
        // The push is allowed: its decision is on record, synced, before the command list
        // reaches git (nothing before it can change a ref), so a crash cannot lose it.
        if !request.updates.is_empty() {
            let forwarding = AuditRecord {
                refs: gated.refs.clone(),
                ..gate.rec.forwarding()
            };
            match gate.gw.audit.commit(forwarding).await {
                Ok(seq) => {
                    gated.forwarding_seq = Some(seq);
                    gated.report = request
                        .wants_report()
                        .then_some(request.features.side_band_64k);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refusing a push: its audit record could not be made durable; nothing was sent to the forge");
                    gated.audit_failed = true;
                    tell_client(client_wr, AUDIT_UNAVAILABLE).await;
                    drain(client_rd, &mut n).await;
                    return n;
                }
            }
        }
        if sink.write_all(&buf).await.is_err() {
            return n;
        }
    }
    while let Some(m) = client_rd.wait().await {
        match m {
            ChannelMsg::Data { data } => {
                n += data.len() as u64;
                if sink.write_all(&data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = sink.flush().await;
    n
}

/// What a bridged session did.
#[derive(Default)]
struct Outcome {
    exit: Option<u32>,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
    /// A push's output as read on its way to the client (the forge's report in it).
    capture: Option<AnswerCapture>,
}

/// A capture of a push's output, when the push index wants the forge's report.
fn capture_for(gw: &SshGateway, command: &SshCommand) -> Option<AnswerCapture> {
    (command.service == SshService::ReceivePack && gw.audit.indexes_pushes())
        .then(AnswerCapture::new)
}

struct PinnedHost {
    pinned: KeyData,
}

impl russh::client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = server_public_key.public_key().key_data() == &self.pinned;
        if !ok {
            tracing::error!("ssh upstream: host key does not match ssh.upstream.host_key");
        }
        Ok(ok)
    }
}

/// The message and exit code for a failure before anything reached the client.
fn upstream_failed(what: &str) -> (String, u32) {
    (
        format!("Gatehouse: the upstream SSH server {what}\r\n"),
        128,
    )
}

impl Job {
    pub(crate) async fn run(self) {
        let started = Instant::now();
        let Job {
            gw,
            channel,
            command,
            git_protocol,
            principal,
            conn,
            peer,
            host,
            mut rec,
            slot,
            arrived,
            in_flight,
        } = self;
        let (client_rd, client_wr) = channel.split();
        // A push session is announced (synced) before anything reaches the upstream: a forge
        // may act on the exec alone (Gitea's push-to-create makes the repository there). Its
        // refs are announced again once the command list is decided, before git gets it.
        let mut gated = Gated::default();
        let opened = if command.service == SshService::ReceivePack {
            gw.audit.commit(rec.forwarding()).await.map(drop)
        } else {
            Ok(())
        };
        let mut result = if let Err(e) = opened {
            tracing::warn!(conn = %conn, error = %e, "refusing a push: its audit record could not be made durable; nothing was sent to the forge");
            gated.audit_failed = true;
            tell_client(&client_wr, AUDIT_UNAVAILABLE).await;
            Ok(Outcome {
                exit: Some(128),
                complete: true,
                ..Outcome::default()
            })
        } else {
            let gate = (command.service == SshService::ReceivePack).then(|| PushGate {
                gw: &gw,
                rec: &rec,
                principal: &principal,
                command: &command,
                peer,
                host: &host,
            });
            match &gw.settings.upstream {
                UpstreamTarget::Ssh { .. } => {
                    via_ssh(
                        &gw,
                        client_rd,
                        &client_wr,
                        &command,
                        git_protocol.as_deref(),
                        &principal,
                        &conn,
                        gate,
                        &mut gated,
                    )
                    .await
                }
                UpstreamTarget::Local { git, repos_dir } => {
                    via_local(
                        &gw,
                        git,
                        repos_dir,
                        client_rd,
                        &client_wr,
                        &command,
                        git_protocol.as_deref(),
                        gate,
                        &mut gated,
                    )
                    .await
                }
            }
        };
        // The forge's report on a forwarded push: the refs it says `ok` to are confirmed in the
        // push index (provenance).
        if let (Ok(o), Some(seq), Some(sideband)) =
            (&mut result, gated.forwarding_seq, gated.report)
            && let Some(capture) = o.capture.take()
        {
            let report = capture.finish(sideband);
            if report.complete {
                gw.audit.confirm_pushed(seq, report.ok);
            }
        }
        rec.refs = gated.refs;
        rec.forwarding_seq = gated.forwarding_seq;
        if gated.audit_failed {
            rec.decision = Some("error");
            rec.reason = Some("audit_unavailable".into());
        }
        if let Some((policy, reason)) = gated.refused {
            rec.decision = Some("deny");
            if !policy.is_empty() {
                rec.policy = Some(policy);
            }
            rec.reason = Some(reason);
        }
        let outcome = match result {
            Ok(o) => o,
            Err((msg, code)) => {
                tracing::warn!(conn = %conn, error = %msg.trim(), "ssh upstream failed");
                tell_client(&client_wr, msg.as_bytes()).await;
                Outcome {
                    exit: Some(code),
                    ..Outcome::default()
                }
            }
        };
        let code = outcome.exit.unwrap_or(255);
        let _ = client_wr.exit_status(code).await;
        let _ = client_wr.eof().await;
        let _ = client_wr.close().await;
        rec.status = u16::try_from(code).ok();
        rec.bytes_in = outcome.bytes_in;
        rec.bytes_out = outcome.bytes_out;
        rec.duration_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        rec.outcome = Some(if outcome.complete {
            "complete"
        } else {
            "aborted"
        });
        gw.metrics.finished(
            rec.action,
            rec.decision,
            u16::try_from(code).unwrap_or(255),
            arrived,
        );
        drop(in_flight);
        slot.send(rec);
    }
}

#[allow(clippy::too_many_arguments)]
async fn via_ssh(
    gw: &SshGateway,
    mut client_rd: russh::ChannelReadHalf,
    client_wr: &russh::ChannelWriteHalf<Msg>,
    command: &SshCommand,
    git_protocol: Option<&str>,
    principal: &Principal,
    conn: &str,
    gate: Option<PushGate<'_>>,
    gated: &mut Gated,
) -> Result<Outcome, (String, u32)> {
    let UpstreamTarget::Ssh {
        address,
        user,
        host_key,
        ca,
        cert_ttl,
        repo_root,
        connect_timeout,
    } = &gw.settings.upstream
    else {
        return Err(upstream_failed("is not configured"));
    };
    let now = gw.clock.now().as_secs();
    let (key, cert) = crate::keys::mint_upstream(ca, &principal.username, conn, now, *cert_ttl)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot mint the upstream certificate");
            upstream_failed("could not be signed in to")
        })?;
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(gw.settings.inactivity_timeout),
        nodelay: true,
        preferred: upstream_preferred(),
        ..Default::default()
    });
    let connect = async {
        let mut h = russh::client::connect(
            config,
            address.as_str(),
            PinnedHost {
                pinned: host_key.clone(),
            },
        )
        .await?;
        let auth = h
            .authenticate_openssh_cert(user.clone(), Arc::new(key), cert)
            .await?;
        Ok::<_, russh::Error>((h, auth.success()))
    };
    let (handle, authenticated) = tokio::time::timeout(*connect_timeout, connect)
        .await
        .map_err(|_| upstream_failed("did not answer in time"))?
        .map_err(|e| {
            tracing::warn!(error = %e, "ssh upstream connection failed");
            upstream_failed("could not be reached")
        })?;
    if !authenticated {
        return Err(upstream_failed(&format!(
            "refused Gatehouse's certificate for `{}`",
            principal.username
        )));
    }
    let up = handle
        .channel_open_session()
        .await
        .map_err(|_| upstream_failed("refused a session"))?;
    if let Some(v) = git_protocol {
        let _ = up.set_env(false, "GIT_PROTOCOL", v).await;
    }
    let name = if command.wiki {
        format!("{}.wiki", command.repo.name)
    } else {
        command.repo.name.clone()
    };
    let upstream_command = format!(
        "{} '{repo_root}/{}/{name}.git'",
        command.service.as_str(),
        command.repo.owner
    );
    up.exec(true, upstream_command)
        .await
        .map_err(|_| upstream_failed("refused the command"))?;
    let (mut up_rd, up_wr) = up.split();

    // Client to upstream: stdin (a push's commands decided first), then EOF.
    let to_upstream = async {
        let mut sink = up_wr.make_writer();
        let n = client_input(&mut client_rd, &mut sink, gate, client_wr, gated).await;
        let _ = up_wr.eof().await;
        n
    };
    // Upstream to client: stdout, stderr, exit status.
    let mut capture = capture_for(gw, command);
    let from_upstream = async {
        let mut out = client_wr.make_writer();
        let mut err = client_wr.make_writer_ext(Some(1));
        let mut o = Outcome::default();
        while let Some(m) = up_rd.wait().await {
            match m {
                ChannelMsg::Data { data } => {
                    o.bytes_out += data.len() as u64;
                    if let Some(c) = capture.as_mut() {
                        c.feed(&data);
                    }
                    if out.write_all(&data).await.is_err() {
                        return o;
                    }
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    let _ = err.write_all(&data).await;
                }
                ChannelMsg::ExitStatus { exit_status } => o.exit = Some(exit_status),
                ChannelMsg::Eof => {
                    let _ = out.flush().await;
                    let _ = err.flush().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = out.flush().await;
        let _ = err.flush().await;
        o.complete = o.exit.is_some();
        o.capture = capture.take();
        o
    };
    tokio::pin!(to_upstream);
    tokio::pin!(from_upstream);
    let mut bytes_in = None;
    let mut outcome = loop {
        tokio::select! {
            n = &mut to_upstream, if bytes_in.is_none() => bytes_in = Some(n),
            o = &mut from_upstream => break o,
        }
    };
    outcome.bytes_in = bytes_in.unwrap_or(0);
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn via_local(
    gw: &SshGateway,
    git: &std::path::Path,
    repos_dir: &std::path::Path,
    mut client_rd: russh::ChannelReadHalf,
    client_wr: &russh::ChannelWriteHalf<Msg>,
    command: &SshCommand,
    git_protocol: Option<&str>,
    gate: Option<PushGate<'_>>,
    gated: &mut Gated,
) -> Result<Outcome, (String, u32)> {
    let name = if command.wiki {
        format!("{}.wiki", command.repo.name)
    } else {
        command.repo.name.clone()
    };
    let dir = repos_dir
        .join(&command.repo.owner)
        .join(format!("{name}.git"));
    if !dir.is_dir() {
        return Err((
            format!("Gatehouse: repository {} not found\r\n", command.repo),
            128,
        ));
    }
    let sub = match command.service {
        SshService::UploadPack => "upload-pack",
        SshService::ReceivePack => "receive-pack",
        SshService::UploadArchive => "upload-archive",
    };
    let mut cmd = tokio::process::Command::new(git);
    cmd.arg(sub)
        .arg(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(v) = git_protocol {
        cmd.env("GIT_PROTOCOL", v);
    }
    let mut child = cmd.spawn().map_err(|e| {
        tracing::error!(error = %e, "cannot run git");
        (
            "Gatehouse: the built-in upstream could not run git\r\n".to_owned(),
            128,
        )
    })?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err((
            "Gatehouse: the built-in upstream could not run git\r\n".to_owned(),
            128,
        ));
    };
    let to_git = async {
        let n = client_input(&mut client_rd, &mut stdin, gate, client_wr, gated).await;
        drop(stdin);
        n
    };
    let from_git = async {
        let mut capture = capture_for(gw, command);
        let mut out = client_wr.make_writer();
        let mut buf = vec![0u8; 32 * 1024];
        let mut n = 0u64;
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k as u64;
                    if let Some(c) = capture.as_mut() {
                        c.feed(&buf[..k]);
                    }
                    if out.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out.flush().await;
        (n, capture)
    };
    let err_from_git = async {
        let mut err = client_wr.make_writer_ext(Some(1));
        let _ = tokio::io::copy(&mut stderr, &mut err).await;
        let _ = err.flush().await;
    };
    tokio::pin!(to_git);
    let mut bytes_in = None;
    let both = async { tokio::join!(from_git, err_from_git).0 };
    tokio::pin!(both);
    let (bytes_out, capture) = loop {
        tokio::select! {
            n = &mut to_git, if bytes_in.is_none() => bytes_in = Some(n),
            out = &mut both => break out,
        }
    };
    let status = child.wait().await.ok();
    Ok(Outcome {
        exit: status.map(|s| s.code().map_or(255, |c| u32::try_from(c).unwrap_or(255))),
        bytes_in: bytes_in.unwrap_or(0),
        bytes_out,
        complete: status.is_some(),
        capture,
    })
}

/// The algorithms offered to the upstream `sshd`: russh's defaults, with AES-256-GCM first when
/// the CPU does AES and carry-less multiplication in hardware. Gatehouse is the client on this
/// hop, so its order picks the cipher. Every byte of a clone is decrypted from the upstream and
/// encrypted again for the caller; with ChaCha20-Poly1305 on both hops the two ciphers took about
/// half of Gatehouse's CPU during a fetch (perf, on the benchmark machine). On a CPU without
/// AES instructions ChaCha20-Poly1305 is the faster of the two, and stays first.
fn upstream_preferred() -> russh::Preferred {
    let mut preferred = russh::Preferred::default();
    if aes_gcm_in_hardware() {
        preferred.cipher = aes_gcm_first(&preferred.cipher).into();
    }
    preferred
}

/// `names` with AES-256-GCM moved to the front (added when missing).
fn aes_gcm_first(names: &[russh::cipher::Name]) -> Vec<russh::cipher::Name> {
    let gcm = russh::cipher::AES_256_GCM;
    std::iter::once(gcm)
        .chain(names.iter().copied().filter(|n| *n != gcm))
        .collect()
}

fn aes_gcm_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_goes_first_and_nothing_else_moves_or_repeats() {
        let defaults = russh::Preferred::default().cipher;
        let ordered = aes_gcm_first(&defaults);
        assert_eq!(ordered[0], russh::cipher::AES_256_GCM);
        assert_eq!(ordered.len(), defaults.len());
        let rest: Vec<_> = defaults
            .iter()
            .copied()
            .filter(|n| *n != russh::cipher::AES_256_GCM)
            .collect();
        assert_eq!(ordered[1..], rest[..]);
        let added = aes_gcm_first(&[russh::cipher::CHACHA20_POLY1305]);
        assert_eq!(
            added,
            [russh::cipher::AES_256_GCM, russh::cipher::CHACHA20_POLY1305]
        );
    }
}
