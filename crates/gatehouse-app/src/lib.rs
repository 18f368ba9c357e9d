//! The composition root: turns a config file into running parts (authenticator, policy engine
//! with hot reload, audit writer, upstream, listeners), runs them until SIGTERM, and drains.
//! It also implements the offline commands (`token issue`, `policy check|explain`, `audit verify`,
//! `keys generate`), `quickstart`, and the git CLI side (`login`, `token print`, `logout`, the
//! credential helper).
//!
//! Only this crate knows every other crate. It owns no protocol logic of its own.
#![forbid(unsafe_code)]

mod commands;
mod hooks_cli;
mod login;
mod quickstart;
mod secrets_cli;
mod serve;
mod sockets;
mod store;
mod webhooks;

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

/// Reads a duration as the config does (`90s`, `15m`, `12h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    gatehouse_config::ConfigDuration::parse(s).map(|d| d.0)
}
