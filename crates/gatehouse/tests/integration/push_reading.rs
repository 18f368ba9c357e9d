//! Pushes are read exactly as git reads them, on both transports (issue 15): a push certificate's
//! commands are decided ref by ref, a command list the client never finishes is refused and never
//! forwarded, the command-list limit holds, and a list sent a byte at a time is read in linear
//! time. Real `git receive-pack` behind the gateway (the built-in upstream over HTTP, local git
//! over SSH), crafted request bodies from `gatehouse_git::corpus`, and a russh client for SSH data
//! messages of one byte.

use std::io::{BufWriter, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gatehouse_git::corpus::{self, EMPTY_PACK, ZERO, pkt};
use gatehouse_testkit::{TempDir, TestGateway};

use crate::common::{POLICY, builder, denial, ref_of, repos};
use crate::refs::REF_RULES as RULES;

/// The issue's push: a certificate whose first command has no LF, then a lone LF packet.
fn issue_certificate(head: &str) -> Vec<u8> {
    corpus::cases(head)
        .into_iter()
        .find(|c| c.name.starts_with("the issue's certificate"))
        .expect("in the corpus")
        .body
}

/// A POST of `body` to the repository's receive-pack, with the token as the Basic password; in
/// chunks of `chunk` bytes (chunked transfer encoding) when given. Status line and body.
fn post_receive_pack(
    gw: &TestGateway,
    token: &str,
    body: &[u8],
    chunk: Option<usize>,
) -> (String, String) {
    let port = gw
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("port");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
    let framing = match chunk {
        Some(_) => "Transfer-Encoding: chunked".to_owned(),
        None => format!("Content-Length: {}", body.len()),
    };
    let mut w = BufWriter::with_capacity(1 << 16, s.try_clone().expect("clone"));
    write!(
        w,
        "POST /demo/hello.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Type: application/x-git-receive-pack-request\r\nConnection: close\r\n{framing}\r\n\r\n"
    )
    .expect("head");
    match chunk {
        Some(n) => {
            // A refused request may be answered before all of it is sent.
            for piece in body.chunks(n) {
                if write!(w, "{:x}\r\n", piece.len())
                    .and_then(|()| w.write_all(piece))
                    .and_then(|()| w.write_all(b"\r\n"))
                    .is_err()
                {
                    break;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
        }
        None => {
            let _ = w.write_all(body);
        }
    }
    let _ = w.flush();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// A command list of about `size` bytes: deletions of branches that do not exist, with long
/// names, then the deletion of `main`, which the policy refuses (so Gatehouse answers itself).
fn long_list(head: &str, size: usize) -> Vec<u8> {
    let mut body = pkt(format!("{head} {ZERO} refs/heads/x-0\0report-status\n"));
    let long = "n".repeat(3900);
    let mut i = 1;
    while body.len() < size {
        body.extend_from_slice(&pkt(format!("{head} {ZERO} refs/heads/{long}-{i}\n")));
        i += 1;
    }
    body.extend_from_slice(&pkt(format!("{head} {ZERO} refs/heads/main\n")));
    body.extend_from_slice(b"0000");
    body
}

/// The answer to [`long_list`]: the whole list was read and decided (main's deletion refused,
/// main unchanged) within seconds of `started`.
fn main_deletion_refused_in_time(report: &str, started: Instant, bare: &Path, head: &str) {
    let took = started.elapsed();
    assert!(
        report.contains("ng refs/heads/main denied by Gatehouse policy: main_cannot_be_deleted"),
        "{}",
        &report[..report.len().min(800)]
    );
    assert!(
        took < Duration::from_secs(60),
        "a list sent a byte at a time took {took:?}"
    );
    assert_eq!(ref_of(bare, "refs/heads/main"), head);
}

/// The entry of an audit record's `refs` for [`long_list`]'s refused deletion of main.
fn main_deletion_entry(head: &str) -> String {
    format!(
        r#"{{"name":"refs/heads/main","op":"delete","old":"{head}","new":"{ZERO}","decision":"deny","reason":"main_cannot_be_deleted"}}"#
    )
}

#[test]
fn a_push_certificate_is_decided_ref_by_ref_over_http() {
    let tmp = TempDir::new("push-cert-http");
    let (root, _) = repos(&tmp);
    let bare = root.join("demo/hello.git");
    let head = ref_of(&bare, "refs/heads/main");
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(&format!("{POLICY}\n{RULES}"))
        .start();
    let alice = gw.token("alice", &["dev"]);
    let rita = gw.token("rita", &["dev", "release"]);
    let body = issue_certificate(&head);

    // alice may not create release tags: the tag inside the certificate is decided and refused.
    let (status, report) = post_receive_pack(&gw, &alice, &body, None);
    assert!(status.contains("200"), "{status}");
    assert!(
        report
            .contains("ng refs/tags/v7.7.7 denied by Gatehouse policy: tag_requires_release_group"),
        "{report}"
    );
    assert!(
        report.contains("ng refs/heads/feature-cert push declined by Gatehouse"),
        "{report}"
    );
    assert_eq!(
        ref_of(&bare, "refs/tags/v7.7.7"),
        "",
        "the tag reached the upstream"
    );
    assert_eq!(ref_of(&bare, "refs/heads/feature-cert"), "");
    let audit = gw.audit_when("the refused certificate push", |a| {
        a.contains("refs/tags/v7.7.7")
    });
    let line = audit
        .lines()
        .find(|l| l.contains("refs/tags/v7.7.7"))
        .expect("a record naming the tag");
    assert!(
        line.contains("\"name\":\"refs/heads/feature-cert\""),
        "{line}"
    );
    assert!(line.contains("\"decision\":\"deny\""), "{line}");

    // The allowed twin: a release member's identical push reaches git, which moves both refs.
    let (status, report) = post_receive_pack(&gw, &rita, &body, None);
    assert!(status.contains("200"), "{status}");
    assert!(report.contains("ok refs/tags/v7.7.7"), "{report}");
    assert!(report.contains("ok refs/heads/feature-cert"), "{report}");
    assert_eq!(ref_of(&bare, "refs/tags/v7.7.7"), head);
    assert_eq!(ref_of(&bare, "refs/heads/feature-cert"), head);

    // A body that ends inside its command list is refused, not forwarded.
    let cut = &body[..body.len() - EMPTY_PACK.len() - 20];
    let (status, report) = post_receive_pack(&gw, &rita, cut, None);
    assert!(status.contains("400"), "{status}");
    assert!(
        report.contains("the push ended inside its command list"),
        "{report}"
    );
    // (Both refs already hold `head`, from the allowed push: the refs cannot show whether it was
    // forwarded; the record shows it was refused.)
    let record = denial(&gw, "the cut-off push", |l| {
        l.contains(r#""reason":"bad_push_commands""#) && l.contains(r#""subject":"rita""#)
    });
    assert!(record.contains(r#""status":400"#), "{record}");
}

#[test]
fn a_command_list_a_byte_at_a_time_and_the_size_limit_over_http() {
    let tmp = TempDir::new("push-bytes-http");
    let (root, _) = repos(&tmp);
    let bare = root.join("demo/hello.git");
    let head = ref_of(&bare, "refs/heads/main");
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(&format!("{POLICY}\n{RULES}"))
        .extra("[git]\nmax_command_list = \"2MiB\"\n")
        .start();
    let alice = gw.token("alice", &["dev"]);

    // 1 MiB in one-byte chunks: each arrives as its own body frame. Read in linear time, the
    // whole list is decided (main's deletion refused) within seconds; re-reading the buffer per
    // frame, as Gatehouse once did, took hours.
    let list = long_list(&head, 1 << 20);
    let started = Instant::now();
    let (status, report) = post_receive_pack(&gw, &alice, &list, Some(1));
    assert!(status.contains("200"), "{status}");
    main_deletion_refused_in_time(&report, started, &bare, &head);
    let entry = main_deletion_entry(&head);
    denial(&gw, "the refused deletion of main", |l| l.contains(&entry));

    // Over the configured limit: refused with a message, nothing forwarded.
    let (status, report) =
        post_receive_pack(&gw, &alice, &long_list(&head, 3 << 20), Some(1 << 16));
    assert!(status.contains("400"), "{status}");
    assert!(report.contains("push command list too large"), "{report}");
    assert_eq!(ref_of(&bare, "refs/heads/main"), head);
    let record = denial(&gw, "the push over the size limit", |l| {
        l.contains(r#""reason":"bad_push_commands""#)
    });
    assert!(record.contains(r#""status":400"#), "{record}");
}

fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_owned()
}

struct SshFront {
    gw: TestGateway,
    port: u16,
    pusher: std::path::PathBuf,
    releaser: std::path::PathBuf,
}

/// The SSH front door with two service-account keys (`pusher` in `dev`, `releaser` in `dev` and
/// `release`) and local git as the upstream.
fn ssh_front(tmp: &TempDir, root: &Path) -> SshFront {
    let dir = tmp.path().join("ssh");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let pusher = dir.join("pusher");
    let releaser = dir.join("releaser");
    let pusher_pub = keygen(&pusher);
    let releaser_pub = keygen(&releaser);
    let gw = builder()
        .with_builtin_upstream(root)
        .policy(&format!("{POLICY}\n{RULES}"))
        .extra(&format!(
            r#"[ssh]
listen = "127.0.0.1:0"
host_key = "{d}/host_ed25519"
user_ca_key = "{d}/user_ca"

[[ssh.service_accounts]]
name = "pusher"
public_key = "{pusher_pub}"
groups = ["dev"]

[[ssh.service_accounts]]
name = "releaser"
public_key = "{releaser_pub}"
groups = ["dev", "release"]
"#,
            d = dir.display(),
        ))
        .start();
    SshFront {
        port: gw.ssh_port(),
        gw,
        pusher,
        releaser,
    }
}

/// `ssh ... git-receive-pack '/demo/hello.git'` with `body` as its whole input: stdout, stderr.
fn ssh_receive_pack(key: &Path, port: u16, body: &[u8]) -> (String, String) {
    let mut child = Command::new("ssh")
        .args(["-i"])
        .arg(key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-p",
            &port.to_string(),
            "git@127.0.0.1",
            "git-receive-pack '/demo/hello.git'",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("ssh ends");
    let _ = writer.join();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn over_ssh_a_certificate_is_decided_and_an_unfinished_list_is_refused() {
    let tmp = TempDir::new("push-ssh");
    let (root, _) = repos(&tmp);
    let bare = root.join("demo/hello.git");
    let head = ref_of(&bare, "refs/heads/main");
    let front = ssh_front(&tmp, &root);

    // The issue's certificate: the release tag inside it is decided, and refused.
    let cert = issue_certificate(&head);
    let (out, _) = ssh_receive_pack(&front.pusher, front.port, &cert);
    assert!(
        out.contains("ng refs/tags/v7.7.7 denied by Gatehouse policy: tag_requires_release_group"),
        "{out}"
    );
    assert_eq!(ref_of(&bare, "refs/tags/v7.7.7"), "");
    assert_eq!(ref_of(&bare, "refs/heads/feature-cert"), "");
    let record = denial(&front.gw, "the refused certificate push over SSH", |l| {
        l.contains(r#""name":"refs/tags/v7.7.7","op":"create""#)
            && l.contains(r#""decision":"deny","reason":"tag_requires_release_group""#)
    });
    assert!(
        record.contains(r#""name":"refs/heads/feature-cert","op":"create""#),
        "{record}"
    );
    // Its allowed twin.
    let (out, err) = ssh_receive_pack(&front.releaser, front.port, &cert);
    assert!(out.contains("ok refs/tags/v7.7.7"), "{out}{err}");
    assert_eq!(ref_of(&bare, "refs/tags/v7.7.7"), head);
    assert_eq!(ref_of(&bare, "refs/heads/feature-cert"), head);

    // A list that asks for push options, then ends: git would delete the tag at once (it reads
    // no options it did not advertise), Gatehouse has not decided it and forwards nothing.
    let unfinished = [
        pkt(format!(
            "{head} {ZERO} refs/tags/v7.7.7\0report-status push-options\n"
        )),
        b"0000".to_vec(),
    ]
    .concat();
    let (out, err) = ssh_receive_pack(&front.pusher, front.port, &unfinished);
    assert!(
        err.contains("the push ended inside its command list; nothing was sent to the forge"),
        "{out}{err}"
    );
    assert_eq!(
        ref_of(&bare, "refs/tags/v7.7.7"),
        head,
        "the tag was deleted"
    );
    let record = denial(&front.gw, "the unfinished push", |l| {
        l.contains(r#""event":"ssh""#) && l.contains(r#""reason":"bad_push_commands""#)
    });
    assert!(record.contains("\"principal\""), "{record}");
    // Finished, the same deletion is decided and (tags may be deleted by dev) carried out.
    let finished = [unfinished.clone(), pkt("ci.skip\n"), b"0000".to_vec()].concat();
    let (out, err) = ssh_receive_pack(&front.pusher, front.port, &finished);
    assert!(out.contains("ok refs/tags/v7.7.7"), "{out}{err}");
    assert_eq!(ref_of(&bare, "refs/tags/v7.7.7"), "");
    // The git features are a C string: the issue's `\0report-status\0 push-options` asks for no
    // options, so the list is complete at its flush and decided.
    git_update_ref(&bare, "refs/tags/v7.7.7", &head);
    let nul = [
        pkt(format!(
            "{head} {ZERO} refs/tags/v7.7.7\0report-status\0 push-options\n"
        )),
        b"0000".to_vec(),
    ]
    .concat();
    let (out, err) = ssh_receive_pack(&front.pusher, front.port, &nul);
    assert!(out.contains("ok refs/tags/v7.7.7"), "{out}{err}");
    assert_eq!(ref_of(&bare, "refs/tags/v7.7.7"), "");
}

fn git_update_ref(bare: &Path, name: &str, id: &str) {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["update-ref", name, id])
        .output()
        .expect("git");
    assert!(out.status.success(), "{out:?}");
}

struct AcceptAny;

impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Sends `body` to `git-receive-pack` over SSH as one SSH data message per byte; what the client
/// gets back on stdout.
async fn one_byte_messages(key: &Path, port: u16, body: &[u8]) -> Vec<u8> {
    let key = russh::keys::load_secret_key(key, None).expect("key");
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, ("127.0.0.1", port), AcceptAny)
        .await
        .expect("connect");
    let auth = h
        .authenticate_publickey(
            "git",
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await
        .expect("auth");
    assert!(auth.success());
    let ch = h.channel_open_session().await.expect("session");
    ch.exec(true, "git-receive-pack '/demo/hello.git'")
        .await
        .expect("exec");
    let (mut rd, wr) = ch.split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(m) = rd.wait().await {
            match m {
                russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                russh::ChannelMsg::ExitStatus { .. } | russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        out
    });
    for b in body {
        if wr
            .data_bytes(bytes::Bytes::copy_from_slice(std::slice::from_ref(b)))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = wr.eof().await;
    reader.await.expect("reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ssh_a_command_list_a_byte_at_a_time_is_read_in_linear_time() {
    let tmp = TempDir::new("push-bytes-ssh");
    let (root, _) = repos(&tmp);
    let bare = root.join("demo/hello.git");
    let head = ref_of(&bare, "refs/heads/main");
    let front = tokio::task::block_in_place(|| ssh_front(&tmp, &root));
    let list = long_list(&head, 512 << 10);
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        one_byte_messages(&front.pusher, front.port, &list),
    )
    .await
    .expect("the push was answered");
    main_deletion_refused_in_time(&String::from_utf8_lossy(&out), started, &bare, &head);
    let entry = main_deletion_entry(&head);
    tokio::task::block_in_place(|| {
        denial(&front.gw, "the refused deletion of main over SSH", |l| {
            l.contains(&entry)
        })
    });
}
