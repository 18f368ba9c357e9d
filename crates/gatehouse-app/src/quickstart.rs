//! `gatehouse quickstart`: a complete local setup in one directory, with the built-in
//! `git http-backend` upstream, so that Gatehouse can be tried with nothing else installed but git.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use gatehouse_authn::TokenRequest;
use gatehouse_config::Config;
use gatehouse_core::{Clock, PrincipalKind, SystemClock};

use crate::commands::write_new_key;
use crate::serve::{init_logging, own_issuer, run_blocking};
use crate::sockets::Inherited;

/// Arguments of `gatehouse quickstart`.
#[derive(Debug, Clone)]
pub struct QuickstartArgs {
    /// The directory to create (or reuse).
    pub dir: PathBuf,
    /// The gateway's address.
    pub listen: SocketAddr,
    /// The admin listener's address.
    pub admin_listen: SocketAddr,
    /// Also open the SSH front door here.
    pub ssh_listen: Option<SocketAddr>,
}

const POLICY: &str = r#"// Gatehouse quickstart policy (Cedar). Default deny: only what a permit allows passes.
// See docs/policy.md for the model.

// People in group "dev" may clone and push every repository owned by "demo".
@id("dev-read-write-demo")
permit (
  principal in Gatehouse::Group::"dev",
  action in [Gatehouse::Action::"git:read", Gatehouse::Action::"git:write",
             Gatehouse::Action::"lfs:read", Gatehouse::Action::"lfs:write"],
  resource in Gatehouse::Owner::"demo"
);

// Nobody but group "release" creates, moves or deletes main, whichever way: a push, or (with a
// forge upstream) the web editor, a merge, the contents API.
@id("main-is-protected")
@reason("main_is_protected")
forbid (
  principal,
  action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
             Gatehouse::Action::"ref:delete"],
  resource
) when { context.ref == "refs/heads/main" } unless { principal in Gatehouse::Group::"release" };

// Release tags (refs/tags/v*) may be created, moved or deleted only by group "release".
@id("release-tags")
@reason("tag_requires_release_group")
forbid (
  principal,
  action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
             Gatehouse::Action::"ref:delete"],
  resource
) when { context.ref like "refs/tags/v*" } unless { principal in Gatehouse::Group::"release" };

// CI in group "ci" may only clone and fetch.
@id("ci-read-demo")
permit (
  principal in Gatehouse::Group::"ci",
  action in [Gatehouse::Action::"git:read", Gatehouse::Action::"lfs:read"],
  resource in Gatehouse::Owner::"demo"
);
"#;

fn config_text(listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"# Gatehouse quickstart configuration. Every key is described in docs/configuration.md.
[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[upstream]
# The built-in upstream: bare repositories under repos/ served by `git http-backend`.
git_http_backend = {{ repos_dir = "repos" }}

[forge]
kind = "generic"

[tokens]
issuer = "urn:gatehouse:quickstart"
signing_key = {{ file = "keys/signing.pem" }}
max_ttl = "24h"

[policy]
file = "policy.cedar"

[audit]
file = "audit.log"

[log]
format = "text"
"#
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Gatehouse Quickstart")
        .env("GIT_AUTHOR_EMAIL", "quickstart@gatehouse.invalid")
        .env("GIT_COMMITTER_NAME", "Gatehouse Quickstart")
        .env("GIT_COMMITTER_EMAIL", "quickstart@gatehouse.invalid")
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn create_demo_repo(repos: &Path) -> Result<()> {
    let bare = repos.join("demo/hello.git");
    if bare.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(repos.join("demo"))?;
    let bare_s = bare.to_string_lossy().to_string();
    git(
        repos,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            &bare_s,
        ],
    )?;
    let work = repos.join(".seed");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "--quiet", "--initial-branch=main"])?;
    std::fs::write(
        work.join("README.md"),
        "# hello\n\nA demo repository served through Gatehouse.\n",
    )?;
    git(&work, &["add", "README.md"])?;
    git(&work, &["commit", "--quiet", "-m", "Initial commit"])?;
    git(&work, &["push", "--quiet", &bare_s, "main"])?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The admin address for a new quickstart: the one asked for, or, when something else listens
/// there already (another quickstart, a Prometheus exporter on 8081), a free port on the same
/// address, said on stderr. A socket handed over for it is used as it is.
fn free_admin_address(asked: SocketAddr, inherited: &Inherited) -> SocketAddr {
    if asked.port() == 0 || inherited.has(asked) {
        return asked;
    }
    match std::net::TcpListener::bind(asked) {
        Ok(_) => asked,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            match std::net::TcpListener::bind(SocketAddr::new(asked.ip(), 0))
                .and_then(|l| l.local_addr())
            {
                Ok(free) => {
                    eprintln!(
                        "note: {asked} is in use; the admin listener (health, metrics) takes {free}"
                    );
                    free
                }
                Err(_) => asked,
            }
        }
        Err(_) => asked,
    }
}

/// How to run this binary in a printed command: `gatehouse` when that name on PATH is this very
/// file, else its full path (quoted for a POSIX shell when it needs to be).
fn self_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "gatehouse".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            d.join("gatehouse")
                .canonicalize()
                .is_ok_and(|found| found == me)
        })
    });
    if on_path {
        return "gatehouse".to_owned();
    }
    shell_word(&me.display().to_string())
}

/// `text` as one word for a POSIX shell: as it is when it needs no quoting, else single-quoted.
fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Creates (or reuses) the quickstart directory. Returns the config path.
pub(crate) fn prepare(args: &QuickstartArgs, inherited: &Inherited) -> Result<PathBuf> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("gatehouse.toml");
    if !config.exists() {
        let admin = free_admin_address(args.admin_listen, inherited);
        std::fs::write(&config, config_text(args.listen, admin))?;
    }
    if let Some(ssh) = args.ssh_listen {
        let text = std::fs::read_to_string(&config)?;
        if !text.contains("[ssh]") {
            std::fs::write(
                &config,
                format!(
                    "{text}\n[ssh]\n# The SSH front door; its upstream is the built-in one (git on repos/).\nlisten = \"{ssh}\"\nhost_key = \"ssh/host_ed25519\"\nuser_ca_key = \"ssh/user_ca\"\n"
                ),
            )?;
        }
    }
    let key = dir.join("keys/signing.pem");
    if !key.exists() {
        write_new_key(&key, false)?;
    }
    let policy = dir.join("policy.cedar");
    if !policy.exists() {
        std::fs::write(&policy, POLICY)?;
    }
    create_demo_repo(&dir.join("repos"))?;
    Ok(config)
}

/// `gatehouse quickstart`.
pub fn quickstart(args: &QuickstartArgs) -> Result<()> {
    // First, while the process has one thread: it changes the environment.
    let inherited = Inherited::from_env()?;
    let config_path = prepare(args, &inherited)?;
    let config_path = config_path.canonicalize().unwrap_or(config_path);
    let cfg = Config::load(&config_path)?;
    // A directory from an earlier run keeps its configuration; say so rather than listen
    // somewhere other than asked without a word.
    let admin = cfg.admin.as_ref().map(|a| a.listen);
    if cfg.server.listen != args.listen || admin.is_some_and(|a| a != args.admin_listen) {
        eprintln!(
            "note: {} already exists and is used as it is: listening on {} (admin {}); \
             edit it, or remove the directory to start afresh",
            config_path.display(),
            cfg.server.listen,
            admin.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        );
    }
    init_logging(&cfg);
    let exe = self_command();
    let admin_url = admin.map(|a| format!("http://{a}"));
    let own = own_issuer(&cfg)?;
    let now = SystemClock.now().as_secs();
    let issue = |sub: &str, groups: &[&str], kind: PrincipalKind| {
        own.issue(
            &TokenRequest {
                subject: sub.to_owned(),
                username: None,
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ttl: Some(Duration::from_secs(12 * 3600)),
                name: None,
                email: Some(format!("{sub}@example.test")),
                kind,
                environment: None,
                derived_from: Vec::new(),
                workload: None,
            },
            now,
        )
    };
    let (alice, _) = issue("alice", &["dev", "release"], PrincipalKind::User)?;
    let (bob, _) = issue("bob", &["dev"], PrincipalKind::User)?;
    let (ci, _) = issue("ci-bot", &["ci"], PrincipalKind::Service)?;
    let cfg_display = config_path.display().to_string();
    let alice = alice.expose().clone();
    let bob = bob.expose().clone();
    let ci = ci.expose().clone();
    // The SSH front door's host key now, so that its fingerprint and a known_hosts file can be
    // printed before the first connection.
    let ssh_banner = match &cfg.ssh {
        Some(ssh) => {
            let key = gatehouse_ssh::load_or_generate(&ssh.host_key)?;
            let public = key.public_key();
            let line = public.to_openssh().unwrap_or_default();
            let fp = gatehouse_ssh::fingerprint(public.key_data());
            let addr = ssh.listen;
            let known = config_path.with_file_name("ssh").join("known_hosts");
            std::fs::write(&known, format!("[{}]:{} {line}\n", addr.ip(), addr.port()))?;
            let key_path = config_path.with_file_name("alice_ed25519");
            Some(format!(
                r#"
Git over SSH at ssh://git@{addr}/ (host key {fp}):
  ssh-keygen -q -t ed25519 -N '' -f {key} <<< y >/dev/null
  gatehouse ssh-cert --server URL --token "$ALICE_TOKEN" --key {key}.pub
  GIT_SSH_COMMAND="ssh -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known}" git clone ssh://git@{addr}/demo/hello.git hello-ssh
"#,
                key = key_path.display(),
                known = known.display(),
            ))
        }
        None => None,
    };
    run_blocking(cfg, &config_path, inherited, move |addr| {
        let url = format!("http://{addr}");
        let quoted_cfg = shell_word(&cfg_display);
        let reissue = |var: &str, subject: &str, kind: &str, groups: &[&str]| {
            let groups: String = groups.iter().map(|g| format!(" --group {g}")).collect();
            format!(
                "  export {var}=$({exe} token issue --config {quoted_cfg} --subject {subject}{kind}{groups} --email {subject}@example.test --ttl 12h)"
            )
        };
        let admin_lines = admin_url.as_ref().map_or_else(
            || "  admin:    off (no [admin] in the config)".to_owned(),
            |a| format!("  health:   {a}/readyz\n  metrics:  {a}/metrics"),
        );
        println!(
            r#"
Gatehouse quickstart is running at {url}
  config:   {cfg_display}
  who am I: curl -H "Authorization: Bearer $ALICE_TOKEN" {url}/.gatehouse/
{admin_lines}
  audit:    {exe} audit verify {audit}

Tokens (12 hours):
  export ALICE_TOKEN={alice}   # alice, groups dev and release: read and write demo/*, main and v* tags included
  export BOB_TOKEN={bob}   # bob, group dev: read and write demo/*, but not main nor v* tags
  export CI_TOKEN={ci}   # ci-bot (a service account), group ci: read only

Re-issue them later (the same subjects, kinds and groups):
{reissue_alice}
{reissue_bob}
{reissue_ci}

Clone and push as alice:
  git -c http.extraHeader="Authorization: Bearer $ALICE_TOKEN" clone {url}/demo/hello.git
  cd hello && echo "hello from alice" >> README.md && git -c user.name=alice -c user.email=alice@example.com commit -qam "Say hello"
  git -c http.extraHeader="Authorization: Bearer $ALICE_TOKEN" push

See a push denied (ci-bot may only read):
  git -c http.extraHeader="Authorization: Bearer $CI_TOKEN" push

See main protected (only group release moves it; bob pushes a branch instead):
  git -c user.name=bob -c user.email=bob@example.com commit -q --allow-empty -m "Bob's change" && git -c http.extraHeader="Authorization: Bearer $BOB_TOKEN" push
  git -c http.extraHeader="Authorization: Bearer $BOB_TOKEN" push origin HEAD:refs/heads/bob/change

See a release tag refused for bob, then pushed by alice (v* tags are group release's):
  git tag v1.0 && git -c http.extraHeader="Authorization: Bearer $BOB_TOKEN" push origin v1.0
  git -c http.extraHeader="Authorization: Bearer $ALICE_TOKEN" push origin v1.0
{ssh}
Press Ctrl-C to stop.
"#,
            reissue_alice = reissue("ALICE_TOKEN", "alice", " --user", &["dev", "release"]),
            reissue_bob = reissue("BOB_TOKEN", "bob", " --user", &["dev"]),
            reissue_ci = reissue("CI_TOKEN", "ci-bot", "", &["ci"]),
            ssh = ssh_banner
                .as_deref()
                .map(|b| b
                    .replace("--server URL", &format!("--server {url}"))
                    .replace("  gatehouse ssh-cert", &format!("  {exe} ssh-cert")))
                .unwrap_or_default(),
            audit = Path::new(&cfg_display)
                .with_file_name("audit.log")
                .display(),
        );
    })
}
