//! `gatehouse secret ...`: the secrets broker's HTTP API from the command line. The CLI holds no
//! key and touches no store: it authenticates like any API client (a token, or the sign-in of
//! `gatehouse login`), so every call is decided by the policy and audited by the gateway.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
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
        let token = Zeroizing::new(match &client.token {
            Some(t) => t.trim().to_owned(),
            None => {
                let _guard = lock()?;
                let mut file = load()?;
                renew(&mut file, &server).await?.0
            }
        });
        let c = http()?;
        let tags_doc = |tags: &[(String, String)]| -> serde_json::Value {
            serde_json::Value::Object(
                tags.iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        };
        let (method, url, body): (reqwest::Method, String, Option<serde_json::Value>) = match &cmd {
            SecretCommand::Put {
                path,
                tags,
                expires_in,
                not_before,
                max_versions,
            } => {
                let mut raw = Zeroizing::new(Vec::new());
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw)
                    .context("reading the value from stdin")?;
                let mut doc = serde_json::json!({});
                match std::str::from_utf8(&raw) {
                    Ok(text) => doc["value"] = serde_json::Value::String(text.to_owned()),
                    Err(_) => {
                        use base64::Engine as _;
                        doc["value_base64"] = serde_json::Value::String(
                            base64::engine::general_purpose::STANDARD.encode(&*raw),
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
                Some(serde_json::json!({ "bytes": bytes })),
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
                    Some(serde_json::json!({ "version": version })),
                )
            }
            SecretCommand::Tag { path, tags } => (
                reqwest::Method::POST,
                url_of(&server, path, Some("tags")),
                Some(serde_json::json!({ "tags": tags_doc(tags) })),
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
        };
        let mut req = c.request(method, &url).bearer_auth(&*token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await.with_context(|| url.clone())?;
        let status = r.status();
        let doc: serde_json::Value = r.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "the gateway refused ({status}): {}",
                printable(doc["detail"].as_str().unwrap_or("no detail"))
            );
        }
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

/// `gatehouse secret master-key generate`: a new master key on stdout.
pub fn master_key_generate() -> Result<()> {
    let text = gatehouse_secrets::MasterKey::generate_text()?;
    println!("{}", &*text);
    Ok(())
}
