//! Git and forge knowledge: how a request path names a repository, which Git smart-HTTP, LFS and
//! Gitea/Gogs/Forgejo API routes exist, and what each of them does ([`classify`]).
//!
//! Everything here is pure parsing of attacker-controlled bytes: no I/O, no async, no allocation
//! beyond the result. Every public parser has a fuzz target under `fuzz/`. This crate must not know
//! about policies, tokens or HTTP libraries.
#![forbid(unsafe_code)]

mod classify;
mod forge;
mod form;
mod json_body;
mod lfs;
mod multipart;
mod path;
mod pktline;
mod push;
mod query;
mod refplan;
mod report;
mod ssh;

pub use classify::{Classified, ForgeFlavor, GitService, RequestKind, classify};
pub use forge::{RefMove, RouteClass, RuleError, Target, Verdict, api_route, rules_ok, web_route};
pub use form::{Form, FormError};
pub use json_body::{JsonBodyError, JsonFields, JsonKind, JsonValue, read_json_fields};
pub use lfs::{LfsBatchError, LfsOperation, lfs_batch_operation};
pub use path::{MAX_PATH_LEN, NormalizedPath, PathError, normalize_path};
pub use pktline::{BadPktLength, PKT_MAX, Pkt, PktLength, pkt_length, read_pkt};
pub use push::{
    Feed, MAX_COMMAND_BYTES, MAX_COMMANDS, ObjectFormat, PushError, PushFeatures, PushLimits,
    PushReader, PushRequest, RefOp, RefUpdate, corpus, model, parse_push_request,
    refused_push_report, valid_ref_name,
};
pub use query::without_forge_credentials;
pub use refplan::{
    Fields, PlanError, PlannedMove, RefSource, RouteFields, body_fields, plan_moves,
    read_route_fields, route_rest,
};
pub use report::{AnswerCapture, MAX_REPORTED, PushReport, ReportReader};
pub use ssh::{SshCommand, SshCommandError, SshService, parse_ssh_command};
