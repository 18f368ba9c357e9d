//! `gatehouse hooks ...`: the webhook relay's deliveries from the command line, over the
//! gateway's API (`/.gatehouse/deliveries`), so every call is decided by the policy
//! (`hook:read`, `hook:replay`) and audited.

use std::io::Write as _;

use anyhow::{Result, bail};

use crate::SecretClient;
use crate::login::{http, normalize_server, printable, runtime};

/// One `gatehouse hooks` command.
#[derive(Debug, Clone)]
pub enum HookCommand {
    /// The counts per hook, target and state, then the deliveries selected.
    Status {
        /// Of this hook.
        hook: Option<String>,
        /// To this target (of `hook`).
        target: Option<String>,
        /// In this state (`pending`, `delivered`, `dead`).
        state: Option<String>,
        /// This delivery.
        delivery: Option<String>,
        /// The API's JSON as it is.
        json: bool,
    },
    /// Sends the dead letters again.
    Retry {
        /// Of this hook.
        hook: Option<String>,
        /// To this target (of `hook`).
        target: Option<String>,
    },
    /// Sends one delivery again, even one delivered.
    Replay {
        /// Gatehouse's delivery id (`whd_…`).
        id: String,
        /// Only to this target.
        target: Option<String>,
    },
}

/// Runs one command; prints what it shows on stdout.
pub fn hooks(client: &SecretClient, cmd: HookCommand) -> Result<()> {
    let server = normalize_server(&client.server)?;
    runtime()?.block_on(async {
        let token = crate::secrets_cli::client_token(client, &server).await?;
        let c = http()?;
        let (method, url, body) = match &cmd {
            HookCommand::Status {
                hook,
                target,
                state,
                delivery,
                ..
            } => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in [
                    ("hook", hook),
                    ("target", target),
                    ("state", state),
                    ("delivery", delivery),
                ] {
                    if let Some(v) = v {
                        q.append_pair(k, v);
                    }
                }
                (
                    reqwest::Method::GET,
                    format!("{server}/.gatehouse/deliveries?{}", q.finish()),
                    None,
                )
            }
            HookCommand::Retry { hook, target } => (
                reqwest::Method::POST,
                format!("{server}/.gatehouse/deliveries:retry"),
                Some(serde_json::json!({ "hook": hook, "target": target })),
            ),
            HookCommand::Replay { id, target } => {
                if !id.starts_with("whd_") || !id[4..].bytes().all(|b| b.is_ascii_alphanumeric()) {
                    bail!("{id:?} is not a delivery id (whd_…; see `gatehouse hooks status`)");
                }
                (
                    reqwest::Method::POST,
                    format!("{server}/.gatehouse/deliveries/{id}:replay"),
                    Some(serde_json::json!({ "target": target })),
                )
            }
        };
        let doc = crate::secrets_cli::api_call(&c, &token, method, &url, body.as_ref()).await?;
        let doc: &serde_json::Value = &doc;
        let mut out = std::io::stdout().lock();
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => printable(s),
            serde_json::Value::Null => "-".to_owned(),
            v => printable(&v.to_string()),
        };
        match &cmd {
            HookCommand::Status { json: true, .. } => writeln!(out, "{doc:#}")?,
            HookCommand::Status { .. } => {
                for c in doc["counts"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "{}/{}\t{}\t{}",
                        text(&c["hook"]),
                        text(&c["target"]),
                        text(&c["state"]),
                        text(&c["count"])
                    )?;
                }
                let rows = doc["deliveries"].as_array().cloned().unwrap_or_default();
                if !rows.is_empty() {
                    writeln!(out)?;
                    writeln!(
                        out,
                        "DELIVERY\tHOOK\tEVENT\tREPOSITORY\tTARGET\tSTATE\tATTEMPTS\tLAST"
                    )?;
                }
                for d in rows {
                    let last = match (&d["last_status"], &d["last_error"]) {
                        (serde_json::Value::Null, serde_json::Value::Null) => "-".to_owned(),
                        (s, serde_json::Value::Null) => format!("HTTP {}", text(s)),
                        (_, e) => text(e),
                    };
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        text(&d["delivery"]),
                        text(&d["hook"]),
                        text(&d["event"]),
                        text(&d["repository"]),
                        text(&d["target"]),
                        text(&d["state"]),
                        text(&d["attempts"]),
                        last
                    )?;
                }
            }
            HookCommand::Retry { .. } | HookCommand::Replay { .. } => {
                writeln!(out, "{} sent again", text(&doc["requeued"]))?;
            }
        }
        Ok(())
    })
}
