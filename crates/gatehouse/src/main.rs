//! The `gatehouse` binary: parses the command line and calls into `gatehouse-app`. No logic here.
#![forbid(unsafe_code)]

/// jemalloc rather than glibc's malloc: a proxied request allocates and frees many small
/// buffers, some on another thread than the one that made them (audit records), where glibc
/// spent about a tenth of the gateway's CPU (bench/results/20261207T041351Z-profile.md).
/// Side by side on this 2-core machine, jemalloc cut CPU per forward-auth decision by about 15%
/// and per proxied request by 5-12% (noisy), at the same resident memory (about 30 MiB high-water
/// under load); mimalloc cut as much but doubled the resident memory (62 MiB against 24).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Gatehouse: an identity-aware gateway for self-hosted Git forges.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version = gatehouse_app::LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
    },
    /// Pre-flight: everything `serve` would refuse (config, policy with file:line:column, keys,
    /// secrets, TLS files, store and its migrations), and more: TLS certificates about to expire,
    /// issuers' discovery and keys, the upstream and the listen addresses. One line per finding
    /// (`ok`, `warn`, `FAIL`). Exits 0 when nothing failed (with `--strict`, nor warned), 1
    /// otherwise.
    Check {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
        /// Warn about a server certificate that expires within this many days.
        #[arg(long, default_value_t = 14)]
        tls_days: u64,
        /// Warnings fail too (exit 1): an issuer or the upstream not answering, a certificate
        /// about to expire, a listen address in use.
        #[arg(long)]
        strict: bool,
        /// How long to wait for each issuer, the upstream and the store (`5s`).
        #[arg(long, default_value = "5s", value_parser = gatehouse_app::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print the man page (roff) of `gatehouse` on stdout: `gatehouse man > gatehouse.1`.
    #[command(hide = true)]
    Man,
    /// Print a shell completion script on stdout:
    /// `gatehouse completions bash > /usr/share/bash-completion/completions/gatehouse`.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Create a complete local setup in DIR and run it (no external services needed).
    Quickstart {
        /// Directory for config, keys, policy, audit log and repositories.
        #[arg(long, default_value = "gatehouse-quickstart")]
        dir: PathBuf,
        /// Address of the gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the admin listener (health, readiness, metrics).
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: SocketAddr,
        /// Also open the SSH front door at this address (e.g. 127.0.0.1:2222).
        #[arg(long)]
        ssh_listen: Option<SocketAddr>,
    },
    /// Gatehouse's own tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Check and explain policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The store (`[store]`): schema migrations.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Ephemeral environments: tokens from a token exchange (and SSH certificates bought with
    /// them) bound to one die when it ends.
    Env {
        /// The configuration file (its `[store]` is used).
        #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        what: EnvCmd,
    },
    /// Revoke a token, session, SSH certificate, subject or service account on every node (within
    /// `store.revocation_poll`, at once on PostgreSQL), list revocations, or lift one.
    Revoke {
        /// The configuration file (its `[store]` is written to).
        #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        what: RevokeCmd,
    },
    /// End a CI job: every token of it (and what was bought with them) is refused on every node.
    Job {
        /// The configuration file (its `[store]` is written to).
        #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        what: JobCmd,
    },
    /// Secrets of the gateway's broker, over its HTTP API (each call decided by the policy and
    /// audited by the gateway).
    Secret {
        /// The gateway's URL, e.g. `https://git.example.com`.
        #[arg(long, env = "GATEHOUSE_SERVER", global = true)]
        server: Option<String>,
        /// A token (default: the sign-in saved by `gatehouse login`).
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        /// A file holding the token (a CI job's or pod's workload token).
        #[arg(
            long,
            env = "GATEHOUSE_TOKEN_FILE",
            global = true,
            conflicts_with = "token"
        )]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        what: SecretCmd,
    },
    /// The webhook relay's deliveries, over the gateway's API (`hook:read`, `hook:replay`).
    Hooks {
        /// The gateway's URL, e.g. `https://git.example.com`.
        #[arg(long, env = "GATEHOUSE_SERVER", global = true)]
        server: Option<String>,
        /// A token (default: the sign-in saved by `gatehouse login`).
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        what: HooksCmd,
    },
    /// Sign in to a gateway from this machine (OAuth2 device authorization grant).
    Login {
        /// The gateway's URL, e.g. `https://git.example.com`.
        #[arg(long)]
        server: String,
        /// The issuer (URL or name) when the gateway offers several.
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Forget the sign-in to a gateway (and revoke its refresh token).
    Logout {
        /// The gateway's URL (needed when signed in to several).
        #[arg(long)]
        server: Option<String>,
    },
    /// Get an SSH certificate for your key, for git over SSH through the gateway.
    SshCert {
        /// The gateway's URL, e.g. `https://git.example.com`.
        #[arg(long)]
        server: String,
        /// A token (default: the sign-in saved by `gatehouse login`).
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The public key to certify.
        #[arg(long, default_value = "~/.ssh/id_ed25519.pub")]
        key: String,
        /// Where to write the certificate (default: `<key>-cert.pub`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write an ssh_config snippet for the gateway to this file.
        #[arg(long)]
        ssh_config: Option<PathBuf>,
    },
    /// git's credential helper: `git config --global credential.https://HOST.helper gatehouse`.
    Credential {
        /// `get`, `store` or `erase` (git passes it).
        operation: String,
    },
}

#[derive(Debug, Subcommand)]
enum JobCmd {
    /// End the job (its id as audit records show it: `principal.workload` and `job_id`).
    End {
        /// The job id, e.g. `github-actions/acme/api/run/4242/job/31337`.
        id: String,
        /// Why (for the record).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum HooksCmd {
    /// Counts per hook, target and state, and the deliveries selected (newest first).
    Status {
        /// Of this hook.
        #[arg(long)]
        hook: Option<String>,
        /// To this target (with --hook).
        #[arg(long, requires = "hook")]
        target: Option<String>,
        /// In this state.
        #[arg(long, value_parser = ["pending", "delivered", "dead"])]
        state: Option<String>,
        /// This delivery (`whd_...`).
        #[arg(long)]
        delivery: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send the dead letters (deliveries relaying gave up on) again.
    Retry {
        /// Of this hook.
        #[arg(long)]
        hook: Option<String>,
        /// To this target (with --hook).
        #[arg(long, requires = "hook")]
        target: Option<String>,
    },
    /// Send one delivery again, even one its targets took (under its same webhook-id).
    Replay {
        /// The delivery (`whd_...`, from `gatehouse hooks status`).
        id: String,
        /// Only to this target.
        #[arg(long)]
        target: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCmd {
    /// Write a new version; the value is read from stdin (never an argument).
    Put {
        /// The path, e.g. `prod/acme/api/db-password`.
        path: String,
        /// A tag, `name=value` (repeat; replaces the secret's tags).
        #[arg(long = "tag", value_parser = tag)]
        tags: Vec<(String, String)>,
        /// The version expires this long from now (`90d`).
        #[arg(long)]
        expires_in: Option<String>,
        /// Not readable before this time (seconds since the epoch).
        #[arg(long)]
        not_before: Option<i64>,
        /// Versions kept, for a new secret.
        #[arg(long)]
        max_versions: Option<i64>,
    },
    /// Print a value on stdout (the newest version unless `--version`).
    Get {
        /// The path.
        path: String,
        /// The version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// List paths under a prefix (never values).
    List {
        /// The prefix (`prod/`); all when absent.
        #[arg(default_value = "")]
        prefix: String,
        /// Soft-deleted secrets instead.
        #[arg(long)]
        deleted: bool,
    },
    /// Show a secret's versions and their state.
    Versions {
        /// The path.
        path: String,
    },
    /// Write a new version with a generated random value (not shown).
    Rotate {
        /// The path.
        path: String,
        /// Random bytes (base64url in the value).
        #[arg(long, default_value_t = 32)]
        bytes: usize,
    },
    /// Disable a version (the newest unless `--version`).
    Disable {
        /// The path.
        path: String,
        /// The version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Enable a version again.
    Enable {
        /// The path.
        path: String,
        /// The version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Replace a secret's tags.
    Tag {
        /// The path.
        path: String,
        /// A tag, `name=value` (repeat).
        #[arg(long = "tag", value_parser = tag)]
        tags: Vec<(String, String)>,
    },
    /// Soft-delete (recoverable for `secrets.retention`).
    Delete {
        /// The path.
        path: String,
    },
    /// Bring back a soft-deleted secret.
    Recover {
        /// The path.
        path: String,
    },
    /// Erase a soft-deleted secret for good.
    Purge {
        /// The path.
        path: String,
    },
    /// Rewrap every data key under the current master key (after a master key rotation).
    Rewrap,
    /// Run a command with secrets in its environment only; revoke their leases when it exits.
    ///
    /// `gatehouse secret exec --map DB_PASSWORD=prod/acme/api/db-password -- ./deploy.sh`
    Exec {
        /// `NAME=PATH` or `NAME=PATH@VERSION` (repeat).
        #[arg(long = "map", required = true)]
        map: Vec<gatehouse_app::ExecMap>,
        /// Let the command have GATEHOUSE_TOKEN (by default it is removed from its environment).
        #[arg(long)]
        keep_token: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// List the leases reads hold (never a value).
    Leases {
        /// Of this job (its id as `gatehouse job end` takes it).
        #[arg(long)]
        job: Option<String>,
        /// On secrets under this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only those neither revoked nor lapsed.
        #[arg(long)]
        live: bool,
    },
    /// Revoke a lease (its holder may; anyone else needs secret:admin on the secret).
    RevokeLease {
        /// The lease id (`lease_...`).
        id: String,
        /// Why (for the record).
        #[arg(long, default_value = "revoked")]
        reason: String,
    },
    /// Print a new random master key (for `secrets.master_key`).
    MasterKey {
        /// `generate`.
        #[arg(value_parser = ["generate"])]
        action: String,
    },
}

/// A job id as `gatehouse job end` takes it.
fn gatehouse_core_check_job(id: &str) -> anyhow::Result<()> {
    gatehouse_app::RevocationKind::Job
        .check_value(id)
        .map_err(|e| anyhow::anyhow!("job id: {e}"))
}

fn tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: a tag is name=value"))
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Issue a short-lived token signed by Gatehouse's key (printed on stdout).
    Issue {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
        /// The subject, e.g. `agent:reviewer`.
        #[arg(long)]
        subject: String,
        /// A group (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime, e.g. `15m` (default: tokens.default_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// The forge user name (default: the subject).
        #[arg(long)]
        username: Option<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// E-mail address.
        #[arg(long)]
        email: Option<String>,
        /// Issue for a person instead of a service account.
        #[arg(long)]
        user: bool,
        /// Bind the token to a live environment (`gatehouse env create`): it ends with it.
        #[arg(long, allow_hyphen_values = true)]
        environment: Option<String>,
    },
    /// Print a fresh access token for a gateway signed in to with `gatehouse login`.
    Print {
        /// The gateway's URL (needed when signed in to several).
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate the config and its policy file.
    Check {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
    },
    /// Show whether a request would be allowed, and which policy decides. Exits 0 when allowed,
    /// 3 when denied.
    Explain {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
        /// The token to act as.
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
        token: String,
        /// The request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request URL, e.g. `https://git.example.com/acme/api.git/info/refs?service=git-receive-pack`.
        #[arg(long)]
        url: String,
        /// The client address to assume.
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
        source_ip: IpAddr,
        /// The request body, for a web or API route that names the refs it moves in its form
        /// or JSON fields (e.g. `commit_choice=direct` or `{"branch":"main"}`).
        #[arg(long)]
        body: Option<String>,
        /// The body's Content-Type (default: application/json for API routes,
        /// application/x-www-form-urlencoded for web routes).
        #[arg(long)]
        content_type: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Verify the hash chain; exits non-zero and says where on any edit, deletion, reordering or
    /// truncation.
    Verify {
        /// The audit log.
        file: PathBuf,
    },
    /// Find ref updates: who pushed a commit, or what was pushed to a repository and ref.
    /// Exits 0 when something matched, 1 when nothing did.
    Search {
        /// The audit log.
        file: PathBuf,
        /// A commit id (or a prefix of at least 4 hex digits) a ref was moved to.
        #[arg(long)]
        commit: Option<String>,
        /// A repository, `owner/name`.
        #[arg(long)]
        repo: Option<String>,
        /// A ref: `refs/heads/main`, or `main`.
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// A CI job's id (`principal.workload.job_id`): every record of the job instead, what
        /// it read, cloned, pushed and was refused.
        #[arg(long, conflicts_with_all = ["commit", "repo", "git_ref"])]
        job: Option<String>,
        /// One JSON object per match.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EnvCmd {
    /// Create one; prints its id (alone on stdout).
    Create {
        /// A name for people (`review-42`, `alice-devbox`).
        #[arg(long)]
        name: String,
        /// How long it lives at most (e.g. `8h`).
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// End one now: every token, and SSH certificate, bound to it is refused on every node.
    End {
        /// Its id (`env-...`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// The environments not ended.
    List,
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Apply pending schema migrations (what `store.migrate = "auto"` does at start).
    Migrate {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
    },
    /// List the schema migrations and whether each is applied; exits 1 when any is pending.
    Status {
        /// The configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
    },
}

/// Options every revocation takes.
#[derive(Debug, clap::Args)]
struct RevokeOpts {
    /// Why (kept in the store's log).
    #[arg(long, default_value = "")]
    reason: String,
    /// Let the revocation lapse after this long (e.g. `12h`: when the credential expires anyway).
    #[arg(long = "for")]
    lapse_after: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RevokeCmd {
    /// One token, by its `jti` (as audit records show it; a jti may start with `-`).
    Token {
        /// The token's `jti`.
        #[arg(allow_hyphen_values = true)]
        jti: String,
        #[command(flatten)]
        opts: RevokeOpts,
    },
    /// One browser session, by its id (`session:<id>` in audit records: give `<id>`).
    Session {
        /// The session id.
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        opts: RevokeOpts,
    },
    /// One SSH certificate, by its serial number.
    SshCert {
        /// The serial (decimal, as audit records and `ssh-keygen -L` show it).
        #[arg(allow_hyphen_values = true)]
        serial: String,
        #[command(flatten)]
        opts: RevokeOpts,
    },
    /// Every credential of a subject (matched by subject and by user name), until lifted.
    Subject {
        /// The subject or user name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        #[command(flatten)]
        opts: RevokeOpts,
    },
    /// A service account (tokens, SSH keys, workloads of that name), until lifted.
    ServiceAccount {
        /// The service account's user name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        #[command(flatten)]
        opts: RevokeOpts,
    },
    /// Lift a revocation: `gatehouse revoke lift token JTI`.
    Lift {
        /// token, session, ssh-cert, subject or service-account.
        kind: String,
        /// What was revoked.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// The revocations in force.
    List,
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Write a new ES256 (P-256) signing key as PKCS#8 PEM, readable by its owner only.
    Generate {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Serve { config } => gatehouse_app::serve(&gatehouse_app::ServeArgs { config })?,
        Cmd::Quickstart {
            dir,
            listen,
            admin_listen,
            ssh_listen,
        } => gatehouse_app::quickstart(&gatehouse_app::QuickstartArgs {
            dir,
            listen,
            admin_listen,
            ssh_listen,
        })?,
        Cmd::Token(TokenCmd::Issue {
            config,
            subject,
            groups,
            ttl,
            username,
            name,
            email,
            user,
            environment,
        }) => gatehouse_app::token_issue(&gatehouse_app::TokenIssueArgs {
            config,
            subject,
            groups,
            ttl,
            username,
            name,
            email,
            user,
            environment,
        })?,
        Cmd::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            page.render(&mut std::io::stdout())?;
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "gatehouse", &mut std::io::stdout());
        }
        Cmd::Check {
            config,
            tls_days,
            strict,
            timeout,
        } => {
            let code = gatehouse_app::check(&gatehouse_app::CheckArgs {
                config,
                tls_days,
                strict,
                timeout,
            })?;
            return Ok(ExitCode::from(code));
        }
        Cmd::Policy(PolicyCmd::Check { config }) => gatehouse_app::policy_check(&config)?,
        Cmd::Policy(PolicyCmd::Explain {
            config,
            token,
            method,
            url,
            source_ip,
            body,
            content_type,
        }) => {
            let allowed = gatehouse_app::policy_explain(&gatehouse_app::ExplainArgs {
                config,
                token: token.into(),
                method,
                url,
                source_ip,
                body,
                content_type,
            })?;
            if !allowed {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Audit(AuditCmd::Verify { file }) => gatehouse_app::audit_verify(&file)?,
        Cmd::Audit(AuditCmd::Search {
            file,
            commit,
            repo,
            git_ref,
            job,
            json,
        }) => {
            if let Some(job) = job {
                if !gatehouse_app::audit_search_job(&file, &job, json)? {
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let query = gatehouse_app::SearchQuery {
                commit,
                repo,
                git_ref,
            };
            if !gatehouse_app::audit_search(&file, &query, json)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Keys(KeysCmd::Generate { out, force }) => gatehouse_app::keys_generate(&out, force)?,
        Cmd::Store(StoreCmd::Migrate { config }) => gatehouse_app::store_migrate(&config)?,
        Cmd::Store(StoreCmd::Status { config }) => {
            if !gatehouse_app::store_status(&config)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Env { config, what } => {
            let Some(config) = config else {
                anyhow::bail!(
                    "env needs --config (or GATEHOUSE_CONFIG): environments are in the store"
                );
            };
            let cmd = match what {
                EnvCmd::Create { name, ttl } => gatehouse_app::EnvCommand::Create {
                    name,
                    ttl: gatehouse_app::parse_duration(&ttl)
                        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?,
                },
                EnvCmd::End { id } => gatehouse_app::EnvCommand::End { id },
                EnvCmd::List => gatehouse_app::EnvCommand::List,
            };
            gatehouse_app::env(&config, cmd)?
        }
        Cmd::Job { config, what } => {
            let Some(config) = config else {
                anyhow::bail!("job needs --config (or GATEHOUSE_CONFIG): the store is written");
            };
            match what {
                JobCmd::End { id, reason } => {
                    gatehouse_core_check_job(&id)?;
                    gatehouse_app::job_end(&config, &id, &reason)?
                }
            }
        }
        Cmd::Hooks {
            server,
            token,
            what,
        } => {
            use gatehouse_app::HookCommand as C;
            let Some(server) = server else {
                anyhow::bail!("hooks needs --server (or GATEHOUSE_SERVER): the gateway's URL");
            };
            let cmd = match what {
                HooksCmd::Status {
                    hook,
                    target,
                    state,
                    delivery,
                    json,
                } => C::Status {
                    hook,
                    target,
                    state,
                    delivery,
                    json,
                },
                HooksCmd::Retry { hook, target } => C::Retry { hook, target },
                HooksCmd::Replay { id, target } => C::Replay { id, target },
            };
            gatehouse_app::hooks(&gatehouse_app::SecretClient { server, token }, cmd)?;
        }
        Cmd::Secret {
            server,
            token,
            token_file,
            what,
        } => {
            use gatehouse_app::SecretCommand as C;
            let token =
                match token_file {
                    Some(f) => Some(std::fs::read_to_string(&f).map_err(|e| {
                        anyhow::anyhow!("reading the token from {}: {e}", f.display())
                    })?),
                    None => token,
                };
            let client = |server: Option<String>| -> anyhow::Result<gatehouse_app::SecretClient> {
                let Some(server) = server else {
                    anyhow::bail!("secret needs --server (or GATEHOUSE_SERVER): the gateway's URL");
                };
                Ok(gatehouse_app::SecretClient {
                    server,
                    token: token.clone(),
                })
            };
            let cmd = match what {
                SecretCmd::MasterKey { .. } => {
                    gatehouse_app::master_key_generate()?;
                    return Ok(ExitCode::SUCCESS);
                }
                SecretCmd::Exec {
                    map,
                    keep_token,
                    command,
                } => {
                    let code = gatehouse_app::secret_exec(
                        &client(server)?,
                        gatehouse_app::ExecArgs {
                            map,
                            command,
                            keep_token,
                        },
                    )?;
                    return Ok(ExitCode::from(code));
                }
                SecretCmd::Leases { job, prefix, live } => C::Leases { job, prefix, live },
                SecretCmd::RevokeLease { id, reason } => C::RevokeLease { id, reason },
                SecretCmd::Put {
                    path,
                    tags,
                    expires_in,
                    not_before,
                    max_versions,
                } => C::Put {
                    path,
                    tags,
                    expires_in,
                    not_before,
                    max_versions,
                },
                SecretCmd::Get { path, version } => C::Get { path, version },
                SecretCmd::List { prefix, deleted } => C::List { prefix, deleted },
                SecretCmd::Versions { path } => C::Versions { path },
                SecretCmd::Rotate { path, bytes } => C::Rotate { path, bytes },
                SecretCmd::Disable { path, version } => C::Disable { path, version },
                SecretCmd::Enable { path, version } => C::Enable { path, version },
                SecretCmd::Tag { path, tags } => C::Tag { path, tags },
                SecretCmd::Delete { path } => C::Delete { path },
                SecretCmd::Recover { path } => C::Recover { path },
                SecretCmd::Purge { path } => C::Purge { path },
                SecretCmd::Rewrap => C::Rewrap,
            };
            gatehouse_app::secret(&client(server)?, cmd)?
        }
        Cmd::Revoke { config, what } => {
            let Some(config) = config else {
                anyhow::bail!("revoke needs --config (or GATEHOUSE_CONFIG): the store is written");
            };
            gatehouse_app::revoke(&config, revoke_command(what)?)?
        }
        Cmd::Token(TokenCmd::Print { server }) => gatehouse_app::token_print(server.as_deref())?,
        Cmd::Login { server, issuer } => {
            gatehouse_app::login(&gatehouse_app::LoginArgs { server, issuer })?
        }
        Cmd::Logout { server } => gatehouse_app::logout(server.as_deref())?,
        Cmd::Credential { operation } => gatehouse_app::credential(&operation)?,
        Cmd::SshCert {
            server,
            token,
            key,
            out,
            ssh_config,
        } => {
            let key = match key.strip_prefix("~/") {
                Some(rest) => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default()
                    .join(rest),
                None => PathBuf::from(key),
            };
            gatehouse_app::ssh_cert(&gatehouse_app::SshCertArgs {
                server,
                token,
                key,
                out,
                ssh_config,
            })?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke_command(what: RevokeCmd) -> anyhow::Result<gatehouse_app::RevokeCommand> {
    use gatehouse_app::{RevocationKind as K, RevokeCommand as R};
    let revoke = |kind, value, opts: RevokeOpts| -> anyhow::Result<R> {
        let lapse_after = match opts.lapse_after {
            Some(d) => {
                Some(gatehouse_app::parse_duration(&d).map_err(|e| anyhow::anyhow!("--for: {e}"))?)
            }
            None => None,
        };
        Ok(R::Revoke {
            kind,
            value,
            reason: opts.reason,
            lapse_after,
        })
    };
    match what {
        RevokeCmd::Token { jti, opts } => revoke(K::Token, jti, opts),
        RevokeCmd::Session { id, opts } => revoke(K::Session, id, opts),
        RevokeCmd::SshCert { serial, opts } => revoke(K::SshCert, serial, opts),
        RevokeCmd::Subject { name, opts } => revoke(K::Subject, name, opts),
        RevokeCmd::ServiceAccount { name, opts } => revoke(K::ServiceAccount, name, opts),
        RevokeCmd::Lift { kind, value } => Ok(R::Lift {
            kind: K::parse(&kind).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown kind {kind:?}: token, session, ssh-cert, subject or service-account"
                )
            })?,
            value,
        }),
        RevokeCmd::List => Ok(R::List),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}
