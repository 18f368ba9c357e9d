//! Real Caddy (Debian's package) in front of an upstream, asking Gatehouse with `forward_auth`
//! before each request: the site `docs/forward-auth.md` documents, on loopback and plain HTTP.

use std::path::Path;
use std::process::Command;

use crate::proc::{Child, TempDir, local_listener};

/// Caddy with `forward_auth` to a gateway, in front of an upstream.
pub struct CaddyForwardAuth {
    pub port: u16,
    _caddy: Child,
    _dir: TempDir,
}

/// The Caddyfile of the documented site, for Caddy on `port`.
pub fn caddyfile(d: &Path, port: u16, gatehouse_port: u16, upstream_port: u16) -> String {
    format!(
        r#"{{
  admin off
  auto_https off
  storage file_system {{
    root {data}
  }}
}}

http://127.0.0.1:{port} {{
  # The forward-auth endpoint is Caddy's own: never reachable from outside.
  handle /.gatehouse/auth {{
    respond 404
  }}
  # Gatehouse's own pages: sign-in, who am I, the SSH certificate endpoint.
  handle /.gatehouse/* {{
    reverse_proxy 127.0.0.1:{gatehouse_port}
  }}
  handle {{
    forward_auth 127.0.0.1:{gatehouse_port} {{
      uri /.gatehouse/auth
      copy_headers X-WEBAUTH-USER X-WEBAUTH-EMAIL
    }}
    # Runs after forward_auth (Caddy's directive order): the forge never sees the credential.
    request_header -Authorization
    reverse_proxy 127.0.0.1:{upstream_port} {{
      flush_interval -1
    }}
  }}
}}
"#,
        data = d.join("data").display(),
    )
}

impl CaddyForwardAuth {
    /// Fronts `upstream_port`, asking the gateway on `gatehouse_port`.
    pub fn start(gatehouse_port: u16, upstream_port: u16) -> Self {
        let dir = TempDir::new("caddy-fa");
        let d = dir.path();
        // Caddy 2.6 cannot be handed a socket: a free port is picked and released, and the
        // start is retried should another process take it in between.
        for attempt in 0..3 {
            let port = local_listener().local_addr().unwrap().port();
            let file = d.join("Caddyfile");
            std::fs::write(&file, caddyfile(d, port, gatehouse_port, upstream_port)).unwrap();
            let mut cmd = Command::new("caddy");
            cmd.args([
                "run",
                "--adapter",
                "caddyfile",
                "--config",
                &file.to_string_lossy(),
            ])
            .env("HOME", d)
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_CONFIG_HOME", d.join("config"));
            let mut caddy =
                Child::spawn("caddy", &mut cmd, &d.join(format!("caddy.{attempt}.log")));
            let up = crate::proc::wait_for(
                "caddy to listen",
                std::time::Duration::from_secs(20),
                || {
                    if !caddy.is_running() {
                        return Some(false);
                    }
                    std::net::TcpStream::connect(("127.0.0.1", port))
                        .ok()
                        .map(|_| true)
                },
            );
            if up {
                return Self {
                    port,
                    _caddy: caddy,
                    _dir: dir,
                };
            }
            eprintln!(
                "caddy did not start (attempt {attempt}):\n{}",
                caddy.log_text()
            );
        }
        panic!("caddy did not start three times; see {}", d.display());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
