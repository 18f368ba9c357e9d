//! `gatehouse secret ...`: the secrets broker's HTTP API from the command line. The CLI holds no
//! key and touches no store: it authenticates like any API client (a token, or the sign-in of
//! `gatehouse login`), so every call is decided by the policy and audited by the gateway.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
use gatehouse_secrets::wipe::{WipedValue, WipingBuf};
use zeroize::Zeroizing;

use crate::login::{http, load, lock, normalize_server, printable, renew, runtime};

/// Where the gateway is, and who asks.
#[derive(Debug, Clone)]
pub struct SecretClient {
    /// The gateway's URL.
    pub server: String,
    /// A token (else the sign-in saved by `gatehouse login`).
    pub token: Option<String>,
}

/// One `gatehouse secret` command.
#[derive(Debug, Clone)]
pub enum SecretCommand {
    /// Writes a new version; the value comes from stdin (never from the command line, where
    /// other users of the machine could read it in the process list).
    Put {
        /// The path.
        path: String,
        /// Tags (`k=v`).
        tags: Vec<(String, String)>,
        /// Expires this long after now (`90d`).
        expires_in: Option<String>,
        /// Not readable before (seconds since the epoch).
        not_before: Option<i64>,
        /// Versions kept (a new secret).
        max_versions: Option<i64>,
    },
    /// Prints a value (the newest version, or `version`) on stdout, with no newline added.
    Get {
        /// The path.
        path: String,
        /// The version.
        version: Option<i64>,
    },
    /// Lists paths under a prefix.
    List {
        /// The prefix.
        prefix: String,
        /// Soft-deleted ones instead.
        deleted: bool,
    },
    /// Shows a secret's versions.
    Versions {
        /// The path.
        path: String,
    },
    /// Writes a generated value.
    Rotate {
        /// The path.
        path: String,
        /// Random bytes.
        bytes: usize,
    },
    /// Disables a version (the newest by default).
    Disable {
        /// The path.
        path: String,
        /// The version.
        version: Option<i64>,
    },
    /// Enables a version.
    Enable {
        /// The path.
        path: String,
        /// The version.
        version: Option<i64>,
    },
    /// Replaces the tags.
    Tag {
        /// The path.
        path: String,
        /// The tags.
        tags: Vec<(String, String)>,
    },
    /// Soft-deletes.
    Delete {
        /// The path.
        path: String,
    },
    /// Brings back a deleted secret.
    Recover {
        /// The path.
        path: String,
    },
    /// Erases a deleted secret for good.
    Purge {
        /// The path.
        path: String,
    },
    /// Rewraps every data key under the current master key.
    Rewrap,
    /// Lists the leases reads hold.
    Leases {
        /// Of this job.
        job: Option<String>,
        /// On secrets under this prefix.
        prefix: String,
        /// Only those neither revoked nor lapsed.
        live: bool,
    },
    /// Revokes a lease.
    RevokeLease {
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The caller's token: given, or the sign-in saved by `gatehouse login` (renewed if due).
pub(crate) async fn client_token(client: &SecretClient, server: &str) -> Result<Zeroizing<String>> {
    Ok(Zeroizing::new(match &client.token {
        Some(t) => t.trim().to_owned(),
        None => {
            let _guard = lock()?;
            let mut file = load()?;
            renew(&mut file, server).await?.0
        }
    }))
}

/// One call of the gateway's API as the holder of `token`: its JSON answer, or the gateway's
/// refusal (its RFC 9457 `detail`) as the error.
pub(crate) async fn api_call(
    c: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<WipedValue> {
    let mut req = c.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        // A put's document holds the value: encoded into a buffer zeroized once it is sent.
        let mut buf = WipingBuf::default();
        serde_json::to_writer(&mut buf, b).context("encoding the request")?;
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes::Bytes::from_owner(buf));
    }
    let r = req.send().await.with_context(|| url.to_owned())?;
    let status = r.status();
    // A get's answer holds the value: its bytes are zeroized once parsed, and the document
    // when the caller is done with it.
    let raw = r.bytes().await.unwrap_or_default();
    let doc = WipedValue(serde_json::from_slice(&raw).unwrap_or_default());
    wipe_bytes(raw);
    if !status.is_success() {
        bail!(
            "the gateway refused ({status}): {}",
            printable(doc["detail"].as_str().unwrap_or("no detail"))
        );
    }
    Ok(doc)
}

/// Zeroizes `b` when this is its only holder (an answer's body, once parsed).
fn wipe_bytes(b: bytes::Bytes) {
    if let Ok(mut m) = b.try_into_mut() {
        zeroize::Zeroize::zeroize(&mut m[..]);
    }
}

/// A secret path as a URL path (each segment percent-encoded).
fn url_of(server: &str, path: &str, verb: Option<&str>) -> String {
    let enc: Vec<String> = path
        .split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect();
    let mut u = format!("{server}/.gatehouse/secrets/{}", enc.join("/"));
    if let Some(v) = verb {
        u.push(':');
        u.push_str(v);
    }
    u
}

/// Runs one command; prints what it shows on stdout.
pub fn secret(client: &SecretClient, cmd: SecretCommand) -> Result<()> {
    let server = normalize_server(&client.server)?;
    runtime()?.block_on(async {
        let token = client_token(client, &server).await?;
        let c = http()?;
        let tags_doc = |tags: &[(String, String)]| -> serde_json::Value {
            serde_json::Value::Object(
                tags.iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        };
        let (method, url, body): (reqwest::Method, String, Option<WipedValue>) = match &cmd {
            SecretCommand::Put {
                path,
                tags,
                expires_in,
                not_before,
                max_versions,
            } => {
                // Read in chunks into a buffer that leaves no copy behind as it grows (a `Vec`
                // read to its end would free each outgrown allocation as it was).
                let mut raw = WipingBuf::default();
                let mut chunk = Zeroizing::new([0u8; 8192]);
                let mut stdin = std::io::stdin().lock();
                loop {
                    match std::io::Read::read(&mut stdin, &mut chunk[..]) {
                        Ok(0) => break,
                        Ok(n) => raw.extend(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e).context("reading the value from stdin"),
                    }
                }
                let raw = raw.as_slice();
                let mut doc = WipedValue(serde_json::json!({}));
                match std::str::from_utf8(raw) {
                    Ok(text) => doc["value"] = serde_json::Value::String(text.to_owned()),
                    Err(_) => {
                        use base64::Engine as _;
                        doc["value_base64"] = serde_json::Value::String(
                            base64::engine::general_purpose::STANDARD.encode(raw),
                        );
                    }
                }
                if !tags.is_empty() {
                    doc["tags"] = tags_doc(tags);
                }
                if let Some(e) = expires_in {
                    doc["expires_in"] = serde_json::Value::String(e.clone());
                }
                if let Some(nb) = not_before {
                    doc["not_before"] = (*nb).into();
                }
                if let Some(m) = max_versions {
                    doc["max_versions"] = (*m).into();
                }
                (reqwest::Method::PUT, url_of(&server, path, None), Some(doc))
            }
            SecretCommand::Get { path, version } => {
                let mut u = url_of(&server, path, None);
                if let Some(v) = version {
                    u.push_str(&format!("?version={v}"));
                }
                (reqwest::Method::GET, u, None)
            }
            SecretCommand::List { prefix, deleted } => {
                let q: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("prefix", prefix)
                    .append_pair("deleted", if *deleted { "true" } else { "false" })
                    .finish();
                (
                    reqwest::Method::GET,
                    format!("{server}/.gatehouse/secrets?{q}"),
                    None,
                )
            }
            SecretCommand::Versions { path } => (
                reqwest::Method::GET,
                url_of(&server, path, Some("versions")),
                None,
            ),
            SecretCommand::Rotate { path, bytes } => (
                reqwest::Method::POST,
                url_of(&server, path, Some("rotate")),
                Some(WipedValue(serde_json::json!({ "bytes": bytes }))),
            ),
            SecretCommand::Disable { path, version } | SecretCommand::Enable { path, version } => {
                let verb = if matches!(cmd, SecretCommand::Disable { .. }) {
                    "disable"
                } else {
                    "enable"
                };
                (
                    reqwest::Method::POST,
                    url_of(&server, path, Some(verb)),
                    Some(WipedValue(serde_json::json!({ "version": version }))),
                )
            }
            SecretCommand::Tag { path, tags } => (
                reqwest::Method::POST,
                url_of(&server, path, Some("tags")),
                Some(WipedValue(serde_json::json!({ "tags": tags_doc(tags) }))),
            ),
            SecretCommand::Delete { path } => {
                (reqwest::Method::DELETE, url_of(&server, path, None), None)
            }
            SecretCommand::Recover { path } => (
                reqwest::Method::POST,
                url_of(&server, path, Some("recover")),
                None,
            ),
            SecretCommand::Purge { path } => (
                reqwest::Method::POST,
                url_of(&server, path, Some("purge")),
                None,
            ),
            SecretCommand::Rewrap => (
                reqwest::Method::POST,
                format!("{server}/.gatehouse/secrets:rewrap"),
                None,
            ),
            SecretCommand::Leases { job, prefix, live } => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("prefix", prefix);
                if let Some(j) = job {
                    q.append_pair("job", j);
                }
                if *live {
                    q.append_pair("live", "true");
                }
                (
                    reqwest::Method::GET,
                    format!("{server}/.gatehouse/leases?{}", q.finish()),
                    None,
                )
            }
            SecretCommand::RevokeLease { id, reason } => (
                reqwest::Method::POST,
                lease_url(&server, id),
                Some(WipedValue(serde_json::json!({ "reason": reason }))),
            ),
        };
        let doc = api_call(&c, &token, method, &url, body.as_deref()).await?;
        let mut out = std::io::stdout().lock();
        match &cmd {
            SecretCommand::Get { .. } => {
                if let Some(v) = doc["value"].as_str() {
                    out.write_all(v.as_bytes())?;
                } else if let Some(b) = doc["value_base64"].as_str() {
                    use base64::Engine as _;
                    let raw = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .context("unexpected answer")?,
                    );
                    out.write_all(&raw)?;
                } else {
                    bail!("the gateway's answer carries no value");
                }
            }
            SecretCommand::List { .. } => {
                for s in doc["secrets"].as_array().into_iter().flatten() {
                    let tags: BTreeMap<String, String> =
                        serde_json::from_value(s["tags"].clone()).unwrap_or_default();
                    let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    writeln!(
                        out,
                        "{}\tv{}\t{}{}",
                        printable(s["path"].as_str().unwrap_or("")),
                        s["latest"],
                        printable(&tags.join(",")),
                        s["purge_at"]
                            .as_str()
                            .map(|p| format!("\tpurged at {}", printable(p)))
                            .unwrap_or_default()
                    )?;
                }
            }
            SecretCommand::Leases { .. } => {
                for l in doc["leases"].as_array().into_iter().flatten() {
                    let text = |k: &str| printable(l[k].as_str().unwrap_or(""));
                    writeln!(
                        out,
                        "{}\t{} v{}\t{}\t{}\t{}",
                        text("id"),
                        text("path"),
                        l["version"],
                        text("holder"),
                        l["job_id"].as_str().map(printable).unwrap_or_default(),
                        if l["live"].as_bool() == Some(true) {
                            format!("live until {}", text("expires_at"))
                        } else if l["revoked_at"].is_string() {
                            format!("revoked {} ({})", text("revoked_at"), text("reason"))
                        } else {
                            format!("lapsed {}", text("expires_at"))
                        }
                    )?;
                }
            }
            SecretCommand::Versions { .. } => {
                for v in doc["versions"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "v{}\t{}\tcreated {} by {}{}{}",
                        v["version"],
                        if v["enabled"].as_bool() == Some(true) {
                            "enabled"
                        } else {
                            "disabled"
                        },
                        printable(v["created_at"].as_str().unwrap_or("")),
                        printable(v["created_by"].as_str().unwrap_or("")),
                        v["not_before"]
                            .as_str()
                            .map(|t| format!("\tnot before {}", printable(t)))
                            .unwrap_or_default(),
                        v["expires_at"]
                            .as_str()
                            .map(|t| format!("\texpires {}", printable(t)))
                            .unwrap_or_default(),
                    )?;
                }
            }
            _ => writeln!(out, "{}", printable(&doc.to_string()))?,
        }
        Ok(())
    })
}

/// The URL that revokes the lease `id`.
fn lease_url(server: &str, id: &str) -> String {
    format!(
        "{server}/.gatehouse/leases/{}:revoke",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// One `--map NAME=PATH[@VERSION]` of `gatehouse secret exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMap {
    /// The environment variable.
    pub var: String,
    /// The secret's path.
    pub path: String,
    /// A version (the newest when absent).
    pub version: Option<i64>,
}

impl std::str::FromStr for ExecMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (var, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=PATH[@VERSION]"))?;
        let ok_var = var
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_var {
            return Err(format!(
                "{var:?} is not an environment variable name (letters, digits and _)"
            ));
        }
        let (path, version) = match rest.rsplit_once('@') {
            Some((p, v)) => (
                p,
                Some(
                    v.parse::<i64>()
                        .ok()
                        .filter(|v| *v > 0)
                        .ok_or_else(|| format!("{v:?} is not a version number"))?,
                ),
            ),
            None => (rest, None),
        };
        gatehouse_secrets::check_path(path).map_err(|e| e.to_string())?;
        Ok(ExecMap {
            var: var.to_owned(),
            path: path.to_owned(),
            version,
        })
    }
}

/// `gatehouse secret exec`: what to read and what to run.
#[derive(Debug, Clone)]
pub struct ExecArgs {
    /// Variables and the secrets they get.
    pub map: Vec<ExecMap>,
    /// The command and its arguments.
    pub command: Vec<std::ffi::OsString>,
    /// Pass `GATEHOUSE_TOKEN` on to the command (by default it does not get the caller's
    /// token).
    pub keep_token: bool,
}

/// Revokes `leases`, saying on stderr which could not be (they lapse by themselves at their
/// expiry). Returns whether all were.
async fn revoke_leases(
    c: &reqwest::Client,
    server: &str,
    token: &str,
    leases: &[String],
    reason: &str,
) -> bool {
    let mut all = true;
    for id in leases {
        let r = c
            .post(lease_url(server, id))
            .bearer_auth(token)
            .json(&serde_json::json!({ "reason": reason }))
            .send()
            .await;
        let failed = match r {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the gateway answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            all = false;
            eprintln!(
                "gatehouse: lease {id} was not revoked ({}); it lapses at its expiry",
                printable(&why)
            );
        }
    }
    all
}

/// `gatehouse secret exec --map NAME=PATH ... -- COMMAND ...`: reads each secret (each read
/// holds a lease), runs the command with the values in its environment only (never in this
/// process's environment, never in a file), passes SIGTERM and SIGHUP on to it, and revokes the
/// leases once it has exited, however it exited. A signal during the reads stops the run before
/// the command starts, its leases revoked. Returns the command's exit code (128 + the signal's
/// number when a signal ended it).
pub fn secret_exec(client: &SecretClient, args: ExecArgs) -> Result<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::process::ExitStatusExt as _;

    let Some((program, rest)) = args.command.split_first() else {
        bail!("secret exec needs a command after --");
    };
    let mut seen = std::collections::HashSet::new();
    for m in &args.map {
        if !seen.insert(m.var.as_str()) {
            bail!("{} is mapped twice", m.var);
        }
    }
    let server = normalize_server(&client.server)?;
    runtime()?.block_on(async {
        // From here on a signal never ends this process before the leases it holds are revoked.
        let mut signals = Signals::new()?;
        let token = client_token(client, &server).await?;
        let c = http()?;
        let mut leases: Vec<String> = Vec::new();
        let mut values: Vec<(String, Zeroizing<Vec<u8>>)> = Vec::new();
        let mut failure = None;
        for m in &args.map {
            let mut u = url_of(&server, &m.path, None);
            if let Some(v) = m.version {
                u.push_str(&format!("?version={v}"));
            }
            if let Some(sig) = signals.pending() {
                failure = Some(anyhow::anyhow!(
                    "stopped by {sig} before the command ran; nothing was run"
                ));
                break;
            }
            let got: Result<(Zeroizing<Vec<u8>>, String)> = async {
                let r = c
                    .get(&u)
                    .bearer_auth(&*token)
                    .send()
                    .await
                    .with_context(|| u.clone())?;
                let status = r.status();
                let raw = r.bytes().await?;
                let doc = WipedValue(serde_json::from_slice(&raw).unwrap_or_default());
                wipe_bytes(raw);
                if !status.is_success() {
                    bail!(
                        "reading {}: the gateway refused ({status}): {}",
                        m.path,
                        printable(doc["detail"].as_str().unwrap_or("no detail"))
                    );
                }
                let lease = doc["lease"]["id"].as_str().unwrap_or("").to_owned();
                let value = if let Some(v) = doc["value"].as_str() {
                    Zeroizing::new(v.as_bytes().to_vec())
                } else if let Some(b) = doc["value_base64"].as_str() {
                    use base64::Engine as _;
                    Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .context("unexpected answer")?,
                    )
                } else {
                    bail!("reading {}: the gateway's answer carries no value", m.path);
                };
                Ok((value, lease))
            }
            .await;
            match got {
                Ok((value, lease)) => {
                    if !lease.is_empty() {
                        leases.push(lease);
                    }
                    if value.contains(&0) {
                        failure = Some(anyhow::anyhow!(
                            "{} holds a NUL byte: it cannot be an environment variable",
                            m.path
                        ));
                        break;
                    }
                    values.push((m.var.clone(), value));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            revoke_leases(&c, &server, &token, &leases, "exec_failed").await;
            return Err(e);
        }
        // A signal during the last read, or while the token was read, stops the run too.
        if let Some(sig) = signals.pending() {
            revoke_leases(&c, &server, &token, &leases, "exec_failed").await;
            bail!("stopped by {sig} before the command ran; nothing was run");
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest);
        if !args.keep_token {
            cmd.env_remove("GATEHOUSE_TOKEN");
            cmd.env_remove("GATEHOUSE_TOKEN_FILE");
        }
        for (var, value) in &values {
            cmd.env(var, std::ffi::OsStr::from_bytes(value));
        }
        let spawned = cmd.spawn();
        // The command's copy of the environment is freed; ours are zeroed.
        drop(cmd);
        drop(values);
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                revoke_leases(&c, &server, &token, &leases, "exec_failed").await;
                bail!("running {}: {e}", program.to_string_lossy());
            }
        };
        let status = signals.wait_forwarding(&mut child).await;
        revoke_leases(&c, &server, &token, &leases, "exec_ended").await;
        let status = status.context("waiting for the command")?;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
            (None, Some(sig)) => u8::try_from(128 + (sig & 0x7f)).unwrap_or(1),
            (None, None) => 1,
        })
    })
}

/// The signals that would end `gatehouse secret exec`, caught from before its first read.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// A signal that arrived while the secrets were being read (which then stops the run).
    fn pending(&mut self) -> Option<&'static str> {
        use std::task::{Context, Poll};
        let mut cx = Context::from_waker(std::task::Waker::noop());
        [
            (&mut self.term, "SIGTERM"),
            (&mut self.hup, "SIGHUP"),
            (&mut self.int, "SIGINT"),
            (&mut self.quit, "SIGQUIT"),
        ]
        .into_iter()
        .find_map(|(s, name)| matches!(s.poll_recv(&mut cx), Poll::Ready(Some(()))).then_some(name))
    }

    /// Waits for `child`. SIGTERM and SIGHUP are passed on to it. SIGINT and SIGQUIT are not:
    /// a terminal, or a CI runner stopping a job, sends them to the whole process group, the
    /// child included, and passing them on would deliver them twice. This process outlives the
    /// child for as long as it runs, to revoke its leases.
    async fn wait_forwarding(
        &mut self,
        child: &mut tokio::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        use nix::sys::signal::Signal;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw);
        loop {
            let sig = tokio::select! {
                status = child.wait() => return status,
                _ = self.term.recv() => Some(Signal::SIGTERM),
                _ = self.hup.recv() => Some(Signal::SIGHUP),
                _ = self.int.recv() => None,
                _ = self.quit.recv() => None,
            };
            if let (Some(pid), Some(sig)) = (pid, sig) {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
    }
}

/// `gatehouse secret master-key generate`: a new master key on stdout.
pub fn master_key_generate() -> Result<()> {
    let text = gatehouse_secrets::MasterKey::generate_text()?;
    println!("{}", &*text);
    Ok(())
}
