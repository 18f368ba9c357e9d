//! Git and forge knowledge: how a request path names a repository, which Git smart-HTTP, LFS and
//! Gitea/Gogs/Forgejo API routes exist, and what each of them does ([`classify`]).
//!
//! Everything here is pure parsing of attacker-controlled bytes: no I/O, no async, no allocation
//! beyond the result. Every public parser has a fuzz target under `fuzz/`. This crate must not know
//! about policies, tokens or HTTP libraries.
#![forbid(unsafe_code)]

mod classify;
mod lfs;
mod path;
mod pktline;
mod ssh;

pub use classify::{Classified, ForgeFlavor, GitService, RequestKind, classify};
pub use lfs::{LfsBatchError, LfsOperation, lfs_batch_operation};
pub use path::{MAX_PATH_LEN, NormalizedPath, PathError, normalize_path};
pub use pktline::{
    MAX_COMMAND_BYTES, MAX_COMMANDS, PKT_MAX, Pkt, PktError, PushParse, PushRequest, RefOp,
    RefUpdate, parse_push_request, read_pkt, refused_push_report, valid_ref_name,
};
pub use ssh::{SshCommand, SshCommandError, SshService, parse_ssh_command};
