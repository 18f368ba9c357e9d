//! The test harness: starts real components on 127.0.0.1 (the `oidc-provider` IdP, nginx +
//! fcgiwrap + `git http-backend`, the `gatehouse` binary itself) and drives real `git` clients.
//! Every process is stopped when its handle drops, including on a panic.
//!
//! Test-only code (`publish = false`); `unwrap`-style shortcuts are fine here only where a failure
//! is a broken test environment, and they say what broke.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations,
    unreachable_pub
)]

mod browser;
mod caddy;
mod forge;
mod gateway;
mod git;
mod idp;
mod nginx;
mod otlp;
mod postgres;
mod proc;
mod sshd;
mod ws;

pub use browser::browser_sign_in;
pub use caddy::{CaddyForwardAuth, caddyfile};
pub use forge::ForgeStandIn;
pub use gateway::{GatewayBuilder, TestGateway};
pub use git::{Git, GitOutput, make_repo};
pub use idp::Idp;
pub use nginx::{AuthRequestProxy, GitHttpServer};
pub use otlp::{OtlpCollectorStandIn, ReceivedSpan};
pub use postgres::Postgres;
pub use proc::{
    Child, RefusedPort, TempDir, hand_over, local_listener, raw_http, raw_http_with_body,
    try_raw_http, wait_for,
};
pub use sshd::{SSHD_USER, Sshd};
pub use ws::{HeldWebSocket, WsEcho, ws_exchange};
