//! The composition root: turns a config file into running parts (authenticator, policy engine
//! with hot reload, audit writer, upstream, listeners), runs them until SIGTERM, and drains.
//! It also implements the offline commands (`token issue`, `policy check|explain`, `audit verify`,
//! `keys generate`), `quickstart`, and the git CLI side (`login`, `token print`, `logout`, the
//! credential helper).
//!
//! Only this crate knows every other crate. It owns no protocol logic of its own.
#![forbid(unsafe_code)]

mod check;
mod commands;
mod hooks_cli;
mod login;
mod quickstart;
mod secrets_cli;
mod serve;
mod sockets;
mod store;
mod traces;
mod webhooks;

pub use check::{CheckArgs, check};
pub use commands::{
    ExplainArgs, TokenIssueArgs, audit_search, audit_search_job, audit_verify, keys_generate,
    policy_check, policy_explain, token_issue,
};
pub use gatehouse_audit::SearchQuery;
pub use gatehouse_core::RevocationKind;
pub use hooks_cli::{HookCommand, hooks};
pub use login::{LoginArgs, SshCertArgs, credential, login, logout, ssh_cert, token_print};
pub use quickstart::{QuickstartArgs, quickstart};
pub use secrets_cli::{
    ExecArgs, ExecMap, SecretClient, SecretCommand, master_key_generate, secret, secret_exec,
};
pub use serve::{ServeArgs, serve};
pub use store::{
    EnvCommand, RevokeCommand, env, job_end, migrate as store_migrate, revoke,
    status as store_status,
};

/// What this binary is: its version, the commit it was built from and the day it was built.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo {
    /// The package version (`0.1.0`).
    pub version: &'static str,
    /// The commit (12 hex digits), or `unknown` for a build outside a git checkout.
    pub commit: &'static str,
    /// The build day, `YYYY-MM-DD` (UTC; `SOURCE_DATE_EPOCH` when set).
    pub date: &'static str,
}

/// This binary's [`BuildInfo`].
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("GATEHOUSE_BUILD_COMMIT"),
    date: env!("GATEHOUSE_BUILD_DATE"),
};

/// `0.1.0 (commit 0123456789ab, built 2026-12-07)`: what `--version` prints after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GATEHOUSE_BUILD_COMMIT"),
    ", built ",
    env!("GATEHOUSE_BUILD_DATE"),
    ")"
);

/// Reads a duration as the config does (`90s`, `15m`, `12h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    gatehouse_config::ConfigDuration::parse(s).map(|d| d.0)
}
