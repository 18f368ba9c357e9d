//! The offline commands.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use gatehouse_authn::{Authenticator, Credential, TokenRequest, generate_signing_key_pem};
use gatehouse_config::{Config, ConfigDuration};
use gatehouse_core::{Clock, PrincipalKind, Redacted, Resource, SystemClock};
use gatehouse_git::classify;
use gatehouse_policy::{AuthzRequest, RequestFacts};

use crate::serve::{flavor, load_policy, own_issuer};

/// Arguments of `gatehouse token issue`.
#[derive(Debug, Clone)]
pub struct TokenIssueArgs {
    /// The config file.
    pub config: PathBuf,
    /// `sub`.
    pub subject: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Lifetime, e.g. `15m`.
    pub ttl: Option<String>,
    /// Forge user name (default: the subject).
    pub username: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// The principal is a person rather than a service account.
    pub user: bool,
    /// Bind the token to this environment (it must be live; the token ends with it at the
    /// latest, and ending it revokes the token).
    pub environment: Option<String>,
}

/// `gatehouse token issue`: prints a token on stdout, its expiry on stderr.
pub fn token_issue(args: &TokenIssueArgs) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    let own = own_issuer(&cfg)?;
    let ttl = args
        .ttl
        .as_deref()
        .map(ConfigDuration::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?
        .map(|d| d.0);
    let now = SystemClock.now().as_secs();
    let ttl = match &args.environment {
        None => ttl,
        Some(id) => {
            let env = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let store = crate::store::open(&cfg, None).await?;
                    let env = store.environments().get(id).await;
                    store.close().await;
                    anyhow::Ok(env?)
                })?
                .ok_or_else(|| anyhow::anyhow!("no environment {id}"))?;
            anyhow::ensure!(env.is_live(now), "environment {id} has ended");
            let left = std::time::Duration::from_secs((env.expires_at - now) as u64);
            Some(ttl.unwrap_or_else(|| own.default_ttl()).min(left))
        }
    };
    let (token, exp) = own.issue(
        &TokenRequest {
            subject: args.subject.clone(),
            username: args.username.clone(),
            groups: args.groups.clone(),
            ttl,
            name: args.name.clone(),
            email: args.email.clone(),
            kind: if args.user {
                PrincipalKind::User
            } else {
                PrincipalKind::Service
            },
            environment: args.environment.clone(),
            derived_from: Vec::new(),
            workload: None,
        },
        now,
    )?;
    println!("{}", token.expose());
    eprintln!(
        "token for {} (groups: {}) expires at {}",
        args.subject,
        if args.groups.is_empty() {
            "none".to_owned()
        } else {
            args.groups.join(", ")
        },
        gatehouse_core::UnixTime::from_secs(exp).to_rfc3339()
    );
    Ok(())
}

/// `gatehouse policy check`: validates the config and its policy file.
pub fn policy_check(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    let p = load_policy(&cfg)?;
    println!(
        "ok: {} policies in {} validate against the Gatehouse schema",
        p.len(),
        cfg.policy.file.display()
    );
    Ok(())
}

/// Arguments of `gatehouse policy explain`.
#[derive(Debug, Clone)]
pub struct ExplainArgs {
    /// The config file.
    pub config: PathBuf,
    /// The token to act as.
    pub token: Redacted<String>,
    /// The request method.
    pub method: String,
    /// The request URL.
    pub url: String,
    /// The client address (for `context.source_ip`).
    pub source_ip: std::net::IpAddr,
    /// The request body, for a route that names the refs it moves in its form or JSON fields.
    pub body: Option<String>,
    /// The body's `Content-Type` (default: JSON for API routes, a form for web routes).
    pub content_type: Option<String>,
}

/// Prints a line; a closed pipe (`gatehouse policy explain ... | head -1`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `gatehouse policy explain`: what would happen to a request. Returns whether it is allowed.
pub fn policy_explain(args: &ExplainArgs) -> Result<bool> {
    let cfg = Config::load(&args.config)?;
    let policy = load_policy(&cfg)?;
    let own = own_issuer(&cfg)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // What is revoked, as the gateway knows it: a revoked caller is explained as refused.
    let revoked = rt.block_on(async {
        let store = crate::store::open(&cfg, None).await?;
        let (set, _feed) = crate::store::revocations(&store, &cfg, clock.clone()).await?;
        store.close().await;
        anyhow::Ok(set)
    })?;
    let authn =
        Arc::new(Authenticator::new(&cfg.issuers, own, clock.clone())?.with_revocations(revoked));
    // The gateway's own decision core: the same authentication, forge groups, policy and
    // ref lookups as a request through the gateway.
    let (forge_groups, forge_api) = crate::serve::forge_clients(&cfg, clock)?;
    let decider = gatehouse_decide::Decider::new(
        authn,
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        flavor(cfg.forge.kind),
    )
    .with_forge_groups(forge_groups)
    .with_forge_api(forge_api);
    let principal = rt
        .block_on(decider.caller(&Credential::Bearer(args.token.clone())))
        .map_err(|e| match e {
            gatehouse_decide::CallerError::Authn(e) => {
                anyhow::anyhow!("token refused ({}): {e}", e.code())
            }
            e => anyhow::anyhow!("the gateway would refuse this caller: {e}"),
        })?;
    let uri: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("--url {}", args.url))?;
    let host = uri.host().unwrap_or("localhost").to_ascii_lowercase();
    let method = args.method.to_ascii_uppercase();
    let c = classify(
        flavor(cfg.forge.kind),
        &method,
        &host,
        uri.path(),
        uri.query(),
    )
    .map_err(|e| anyhow::anyhow!("request refused before policy: {e}"))?;
    let ex = decider.explain(&AuthzRequest {
        principal: &principal,
        action: c.action,
        resource: &c.resource,
        facts: RequestFacts {
            source_ip: args.source_ip,
            method: &method,
            host: &host,
            wiki: c.wiki,
            via: c.via,
            git_ref: None,
        },
    });
    let resource = match &c.resource {
        Resource::Repo(r) => format!("Gatehouse::Repo::\"{r}\""),
        Resource::Owner(o) => format!("Gatehouse::Owner::\"{o}\""),
        Resource::Route(r) => format!(
            "Gatehouse::Route (host {}, path {}, method {})",
            r.host, r.path, r.method
        ),
    };
    // A route that moves refs is decided ref by ref, as the gateway decides it.
    let mut refs: Vec<String> = Vec::new();
    let mut refused: Option<String> = None;
    if let (Some(m), true) = (c.moves, ex.decision.allowed) {
        match explain_refs(&decider, &principal, &c, m, args, &method, &host, &rt) {
            Ok(decided) => {
                for (line, deny) in decided {
                    if let (Some(r), None) = (deny, &refused) {
                        refused = Some(r);
                    }
                    refs.push(line);
                }
            }
            Err(why) => refused = Some(why),
        }
    }
    let allowed = ex.decision.allowed && refused.is_none();
    out!("decision:  {}", if allowed { "ALLOW" } else { "DENY" });
    out!(
        "reason:    {}",
        refused.as_deref().unwrap_or(&ex.decision.reason)
    );
    out!(
        "principal: {} (issuer {}, groups: {})",
        principal.username,
        principal.issuer,
        principal.groups.join(", ")
    );
    out!("action:    Gatehouse::Action::\"{}\"", c.action);
    out!("resource:  {resource}");
    out!("via:       {}", c.via);
    if let Some(m) = c.moves {
        out!("moves:     refs ({})", m.as_str());
    }
    for line in &refs {
        out!("ref:       {line}");
    }
    out!("forwarded: {}", c.forward_path);
    if ex.deciding.is_empty() {
        out!("decided by: default deny (no permit matched)");
    }
    for (id, text) in &ex.deciding {
        out!("decided by policy `{id}`:\n{}", text.trim());
    }
    for e in &ex.errors {
        out!("evaluation error: {e}");
    }
    Ok(allowed)
}

/// The refs a ref-moving route moves, each with its decision (the decision core's
/// `route_refs`, as the gateway asks it): a line per ref, and the reason when refused. `Err`
/// when the refs cannot be told (the gateway refuses the request then).
#[allow(clippy::too_many_arguments)]
fn explain_refs(
    decider: &gatehouse_decide::Decider,
    principal: &gatehouse_core::Principal,
    c: &gatehouse_git::Classified,
    moves: gatehouse_git::RefMove,
    args: &ExplainArgs,
    method: &str,
    host: &str,
    rt: &tokio::runtime::Runtime,
) -> std::result::Result<Vec<(String, Option<String>)>, String> {
    let default_ct = if c.via == gatehouse_core::Via::Api {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let ct = args.content_type.as_deref().unwrap_or(default_ct);
    let body = args.body.as_deref().unwrap_or_default();
    let verdict = rt
        .block_on(decider.route_refs(
            principal,
            c,
            moves,
            gatehouse_decide::RouteRequest {
                method,
                content_type: Some(ct),
                body: body.as_bytes(),
            },
            RequestFacts {
                source_ip: args.source_ip,
                method,
                host,
                wiki: c.wiki,
                via: c.via,
                git_ref: None,
            },
        ))
        .map_err(|e| match e {
            gatehouse_decide::RouteRefsError::Lookup(e) => format!("ref_lookup_failed: {e}"),
            gatehouse_decide::RouteRefsError::Plan(
                e @ (gatehouse_git::PlanError::Form(_)
                | gatehouse_git::PlanError::Json(_)
                | gatehouse_git::PlanError::NotJson),
            ) => format!("the body cannot be read: {e}"),
            e => format!("cannot tell which refs move: {e}"),
        })?;
    Ok(verdict
        .refs
        .iter()
        .map(|r| {
            let d = &r.decision;
            let verdict = if d.allowed { "ALLOW" } else { "DENY " };
            let line = format!(
                "{verdict} {} {} on {} ({}, policy {})",
                r.op.action(),
                r.name,
                r.repo,
                d.reason,
                d.deciding_policy()
            );
            (line, (!d.allowed).then(|| d.reason.to_string()))
        })
        .collect())
}

/// `gatehouse audit verify FILE`.
pub fn audit_verify(file: &Path) -> Result<()> {
    match gatehouse_audit::verify(file) {
        Ok(r) => {
            let files = match r.rotated.len() {
                0 => String::new(),
                1 => " across 2 files (1 rotated out)".to_owned(),
                n => format!(" across {} files ({n} rotated out)", n + 1),
            };
            let from = if r.first_seq > 1 {
                format!(
                    " from record {} (the files before it were removed)",
                    r.first_seq
                )
            } else {
                String::new()
            };
            println!(
                "ok: {} records{from}{files}, hash chain intact{}",
                r.records,
                if r.head_checked {
                    ", head matches"
                } else {
                    " (no .head file to check truncation against)"
                }
            );
            Ok(())
        }
        Err(e) => bail!("audit log {} failed verification: {e}", file.display()),
    }
}

/// `gatehouse audit search FILE`: which identity pushed a commit, or to a repository and ref.
/// Returns whether anything matched.
pub fn audit_search(file: &Path, query: &gatehouse_audit::SearchQuery, json: bool) -> Result<bool> {
    let found = gatehouse_audit::search(file, query)?;
    for m in &found {
        if json {
            out!(
                "{}",
                serde_json::json!({
                    "time": m.time, "request_id": m.request_id, "username": m.username,
                    "subject": m.subject, "issuer": m.issuer, "repo": m.repo, "ref": m.name,
                    "op": m.op, "old": m.old, "new": m.new, "decision": m.decision,
                    "reason": m.reason, "status": m.status, "finished": m.finished,
                    "file": m.file, "line": m.line,
                })
            );
        } else {
            let short = |id: &str| id.chars().take(12).collect::<String>();
            out!(
                "{}  {} ({}, {})  {}  {}  {} {}..{}  {} ({})  request {}  {}:{}{}",
                m.time,
                m.username,
                m.subject,
                m.issuer,
                m.repo,
                m.name,
                m.op,
                short(&m.old),
                short(&m.new),
                m.decision,
                m.reason,
                m.request_id,
                m.file.display(),
                m.line,
                if m.finished {
                    ""
                } else {
                    "  (forwarded; its end was never recorded)"
                }
            );
        }
    }
    if found.is_empty() && !json {
        eprintln!("no matching ref update in {}", file.display());
    }
    Ok(!found.is_empty())
}

/// `gatehouse audit search --job ID`: every record of a CI job. Returns whether there was one.
pub fn audit_search_job(file: &Path, job: &str, json: bool) -> Result<bool> {
    let found = gatehouse_audit::search_job(file, job)?;
    for r in &found {
        if json {
            out!(
                "{}",
                serde_json::json!({
                    "time": r.time, "request_id": r.request_id, "event": r.event,
                    "action": r.action, "decision": r.decision, "reason": r.reason,
                    "repo": r.repo, "detail": r.detail, "commit": r.commit,
                    "secret": r.secret, "file": r.file, "line": r.line,
                })
            );
        } else {
            out!(
                "{}  {}  {} {}  {}{}{}{}  request {}  {}:{}",
                r.time,
                if r.action.is_empty() {
                    &r.event
                } else {
                    &r.action
                },
                r.decision,
                r.reason,
                r.repo,
                if r.repo.is_empty() || r.detail.is_empty() {
                    ""
                } else {
                    "  "
                },
                r.detail,
                r.secret
                    .as_ref()
                    .and_then(|s| s.lease.as_deref())
                    .map(|l| format!("  {l}"))
                    .unwrap_or_default(),
                r.request_id,
                r.file.display(),
                r.line
            );
        }
    }
    if found.is_empty() && !json {
        eprintln!("no record of job {job} in {}", file.display());
    }
    Ok(!found.is_empty())
}

/// `gatehouse keys generate --out FILE`: a new P-256 signing key, readable by its owner only.
pub fn keys_generate(out: &Path, force: bool) -> Result<()> {
    write_new_key(out, force)?;
    eprintln!("wrote a new ES256 signing key to {}", out.display());
    Ok(())
}

pub(crate) fn write_new_key(out: &Path, force: bool) -> Result<()> {
    let pem = generate_signing_key_pem()?;
    if let Some(dir) = out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .create_new(!force)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot write {} (use --force to replace an existing key)",
                out.display()
            )
        })?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
