//! Gatehouse's integration tests: the real `gatehouse` binary between real `git` clients and
//! real upstreams (nginx + fcgiwrap + `git http-backend`, and the built-in one), with the real
//! `oidc-provider` IdP. One test binary; modules by area.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod audit;
mod bench_secrets;
mod bench_webhooks;
mod cli;
mod cli_login;
mod common;
mod crash;
mod deploy;
mod exchange;
mod ext_authz;
mod forge_groups;
mod forge_routes;
mod forward_auth;
mod git_http;
mod headers;
mod holes;
mod idp_guides;
mod large;
mod packaging;
mod paths;
mod preflight;
mod push_reading;
mod refs;
mod reload;
mod revocation;
mod route_refs;
mod secret_exec;
mod secrets;
mod sessions;
mod shutdown;
mod ssh;
mod state_api;
mod timeouts;
mod tls;
mod tokens;
mod traces;
mod webhooks;
mod websocket;
mod workload;
