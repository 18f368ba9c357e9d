use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::proc::{Child, TempDir, hand_over, local_listener, wait_for};

/// A real Git smart-HTTP server: nginx -> fcgiwrap -> `git http-backend`, on 127.0.0.1.
/// `/api/...` stands in for a forge's REST API (any method, `201` with `{}`), and every request
/// other than GET, HEAD and OPTIONS is logged with its `X-Request-Id` ([`Self::writes_log`]), so
/// tests can see what writes reached the upstream.
/// `GET /_echo` (also at `/explore/_echo`) answers with the identity headers it received, so tests can see exactly what
/// reached the upstream, and with nginx's connection number and protocol version (`upstream_conn`,
/// `upstream_http`), so tests can see connection reuse. `cookie` comes last: its value has `;`. Without TLS it also listens on a Unix socket ([`Self::unix_socket`]).
pub struct GitHttpServer {
    pub port: u16,
    unix_socket: PathBuf,
    writes_log: PathBuf,
    _nginx: Child,
    _fcgi: Child,
    _dir: TempDir,
}

fn git_backend() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-http-backend")
}

impl GitHttpServer {
    /// Serves the bare repositories under `repos` (push enabled for every repository).
    pub fn start(repos: &Path) -> Self {
        Self::start_inner(repos, None)
    }

    /// The same over HTTPS (HTTP/2 and HTTP/1.1 by ALPN), requiring a client certificate signed by
    /// `client_ca` (mTLS).
    pub fn start_tls(repos: &Path, cert: &Path, key: &Path, client_ca: &Path) -> Self {
        let tls = format!(
            "ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;",
            cert.display(),
            key.display(),
            client_ca.display()
        );
        Self::start_inner(repos, Some(tls))
    }

    fn start_inner(repos: &Path, tls: Option<String>) -> Self {
        let dir = TempDir::new("nginx");
        let d = dir.path();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let sock = d.join("fcgi.sock");
        let mut fcgi_cmd = Command::new("fcgiwrap");
        fcgi_cmd.args(["-c", "4", "-s", &format!("unix:{}", sock.display())]);
        let fcgi = Child::spawn_group("fcgiwrap", &mut fcgi_cmd, &d.join("fcgiwrap.log"));
        wait_for("fcgiwrap socket", Duration::from_secs(10), || {
            sock.exists().then_some(())
        });

        // nginx takes its listening socket from us (`NGINX`, the variable its binary upgrade
        // uses), so the port is never released between being chosen and being served.
        let listener = local_listener();
        let port = listener.local_addr().unwrap().port();
        let unix_socket = d.join("http.sock");
        let conf = format!(
            r#"{head}
  map $request_method $write_method {{ GET 0; HEAD 0; OPTIONS 0; default 1; }}
  log_format writes '$http_x_request_id $request_method $uri';
  log_format lfs_bodies escape=json '$request_body';
  server {{
    listen 127.0.0.1:{port}{ssl};
    {unix_listen}
    {tls_lines}
    client_max_body_size 0;
    access_log {d}/writes.log writes if=$write_method;
    # Read `X_WEBAUTH_USER` as `X-WEBAUTH-USER`, as CGI, WSGI, PHP and Rack upstreams do.
    underscores_in_headers on;
    location = /_setcookie {{
      add_header Set-Cookie "__Host-gatehouse-session=planted; Path=/; Secure; HttpOnly";
      add_header Set-Cookie "theirs=1; Path=/";
      default_type text/plain;
      return 200 "ok\n";
    }}
    # LFS batch requests: the body is read (kept in memory), logged as it arrived
    # ([`GitHttpServer::lfs_bodies`]) and answered with an empty batch.
    location ~ /info/lfs/objects/batch$ {{
      client_body_buffer_size 1m;
      client_body_in_single_buffer on;
      access_log {d}/lfs-bodies.log lfs_bodies;
      rewrite ^ /_lfs_batch_answer break;
      proxy_pass http://127.0.0.1:{port};
    }}
    location = /_lfs_batch_answer {{
      access_log off;
      default_type application/vnd.git-lfs+json;
      return 200 '{{"transfer":"basic","objects":[]}}';
    }}
    location /api/ {{
      default_type application/json;
      return 201 "{{}}\n";
    }}
    # Also under /explore/: a forge's instance page (on Gitea, /_echo would be a user's).
    location ~ ^/(explore/)?_echo$ {{
      default_type text/plain;
      return 200 "user=$http_x_webauth_user;email=$http_x_webauth_email;fullname=$http_x_webauth_fullname;authorization=$http_authorization;assertion=$http_x_gatehouse_assertion;xff=$http_x_forwarded_for;proto=$http_x_forwarded_proto;request_id=$http_x_request_id;traceparent=$http_traceparent;remote_user=$http_remote_user;connection=$http_connection;client_dn=$ssl_client_s_dn;groups=$http_x_gatehouse_groups;xfh=$http_x_forwarded_host;login=$http_x_webauth_login;xfu=$http_x_forwarded_user;other=$http_x_gatehouse_other;custom=$http_x_custom_identity;upstream_conn=$connection;upstream_http=$server_protocol;host=$http_host;auth_request=$http_x_auth_request_user;authentik=$http_x_authentik_username;sudo=$http_sudo;original_url=$http_x_original_url;rewrite_url=$http_x_rewrite_url;xfat=$http_x_forwarded_access_token;xremote=$http_x_remote_user;remote_email=$http_remote_email;thing=$http_x_custom_thing;args=$args;cookie=$http_cookie\n";
    }}
    location / {{
      fastcgi_pass unix:{sock};
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param REMOTE_ADDR $remote_addr;
      fastcgi_param SERVER_PROTOCOL $server_protocol;
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {repos};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER $http_x_webauth_user;
      fastcgi_param GIT_CONFIG_COUNT 1;
      fastcgi_param GIT_CONFIG_KEY_0 http.receivepack;
      fastcgi_param GIT_CONFIG_VALUE_0 true;
      fastcgi_request_buffering off;
      fastcgi_buffering off;
      fastcgi_read_timeout 600s;
    }}
  }}
}}
"#,
            head = conf_head(d),
            d = d.display(),
            sock = sock.display(),
            backend = git_backend().display(),
            repos = repos.display(),
            ssl = if tls.is_some() { " ssl http2" } else { "" },
            tls_lines = tls.as_deref().unwrap_or(""),
            unix_listen = if tls.is_none() {
                format!("listen unix:{};", unix_socket.display())
            } else {
                String::new()
            },
        );
        let nginx = spawn_nginx(d, &conf, listener, "nginx");
        Self {
            port,
            unix_socket,
            writes_log: d.join("writes.log"),
            _nginx: nginx,
            _fcgi: fcgi,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One line per request other than GET, HEAD and OPTIONS that reached this server, written
    /// when it ended: `<X-Request-Id> <method> <path>`.
    pub fn writes(&self) -> Vec<String> {
        std::fs::read_to_string(&self.writes_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// [`Self::writes`] once the write with request id `request_id` is among them (10 s at most):
    /// a request sent after others, waited for so that the log is known to hold every earlier one.
    pub fn writes_through(&self, request_id: &str) -> Vec<String> {
        let prefix = format!("{request_id} ");
        wait_for(
            &format!("nginx to log the write {request_id}"),
            Duration::from_secs(10),
            || {
                let w = self.writes();
                w.iter().any(|l| l.starts_with(&prefix)).then_some(w)
            },
        )
    }

    /// The body of every LFS batch request that reached this server, in order, as it arrived
    /// (JSON-escaped by nginx: `"` is `\"`).
    pub fn lfs_bodies(&self) -> Vec<String> {
        std::fs::read_to_string(self.writes_log.with_file_name("lfs-bodies.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The Unix socket the same server listens on (plain HTTP; not with TLS).
    pub fn unix_socket(&self) -> &Path {
        &self.unix_socket
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A real nginx in front of an upstream that asks Gatehouse with `auth_request` before every
/// request (Gatehouse as a front proxy's authorizer: `/.gatehouse/auth`), copies the identity
/// headers Gatehouse answers with onto the upstream request (replacing whatever the client
/// sent), and passes Gatehouse's `WWW-Authenticate` and `X-Gatehouse-Reason` to the client. The
/// configuration is the one `docs/forward-auth.md` shows.
pub struct AuthRequestProxy {
    pub port: u16,
    _nginx: Child,
    _dir: TempDir,
}

impl AuthRequestProxy {
    /// Fronts `upstream_port`, asking the gateway on `gatehouse_port`.
    pub fn start(gatehouse_port: u16, upstream_port: u16) -> Self {
        Self::start_with(gatehouse_port, upstream_port, None)
    }

    /// The same, asking the gateway over TLS and presenting the client certificate
    /// `(cert, key)` (nginx's `proxy_ssl_certificate`): a front proxy trusted by its name.
    pub fn start_tls(
        gatehouse_port: u16,
        upstream_port: u16,
        client_cert: &Path,
        client_key: &Path,
    ) -> Self {
        Self::start_with(
            gatehouse_port,
            upstream_port,
            Some((client_cert, client_key)),
        )
    }

    fn start_with(gatehouse_port: u16, upstream_port: u16, client: Option<(&Path, &Path)>) -> Self {
        let dir = TempDir::new("nginx-auth");
        let d = dir.path();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let listener = local_listener();
        let port = listener.local_addr().unwrap().port();
        let conf = format!(
            r#"{head}
  map $http_accept $gatehouse_browser {{ default 0; ~text/html 1; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location /.gatehouse/ {{
      proxy_pass {scheme}://127.0.0.1:{gatehouse_port};{ssl}
    }}
    # Only nginx itself asks.
    location = /.gatehouse/auth {{
      return 404;
    }}
    location = /_gatehouse_auth {{
      internal;
      proxy_pass {scheme}://127.0.0.1:{gatehouse_port}/.gatehouse/auth;{ssl}
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location / {{
      auth_request /_gatehouse_auth;
      auth_request_set $gatehouse_user $upstream_http_x_webauth_user;
      auth_request_set $gatehouse_email $upstream_http_x_webauth_email;
      auth_request_set $gatehouse_challenge $upstream_http_www_authenticate;
      auth_request_set $gatehouse_reason $upstream_http_x_gatehouse_reason;
      error_page 401 = @gatehouse_401;
      error_page 403 = @gatehouse_403;
      proxy_set_header X-WEBAUTH-USER $gatehouse_user;
      proxy_set_header X-WEBAUTH-EMAIL $gatehouse_email;
      proxy_set_header Authorization "";
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_pass http://127.0.0.1:{upstream_port};
    }}
    location @gatehouse_401 {{
      if ($gatehouse_browser) {{
        return 302 /.gatehouse/login?return_to=$request_uri;
      }}
      add_header WWW-Authenticate $gatehouse_challenge always;
      add_header X-Gatehouse-Reason $gatehouse_reason always;
      return 401;
    }}
    location @gatehouse_403 {{
      add_header X-Gatehouse-Reason $gatehouse_reason always;
      default_type text/plain;
      return 403 "Gatehouse: denied ($gatehouse_reason)\n";
    }}
  }}
}}
"#,
            head = conf_head(d),
            scheme = if client.is_some() { "https" } else { "http" },
            ssl = client.map_or(String::new(), |(c, k)| format!(
                "\n      proxy_ssl_certificate {};\n      proxy_ssl_certificate_key {};\n      proxy_ssl_server_name on;\n      proxy_ssl_name gatehouse.test;",
                c.display(),
                k.display()
            )),
        );
        let nginx = spawn_nginx(d, &conf, listener, "nginx-auth");
        Self {
            port,
            _nginx: nginx,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The start of an nginx configuration kept under `d`: one worker in the foreground, its pid,
/// error log and temporary files there, and the `http` block opened (with no access log).
fn conf_head(d: &Path) -> String {
    let user = if is_root() { "user root root;" } else { "" };
    let d = d.display();
    format!(
        r#"{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  fastcgi_temp_path {d}/tmp/fastcgi;
  proxy_temp_path {d}/tmp/proxy;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;"#
    )
}

/// Starts nginx with `conf` (written to `d/nginx.conf`) on the socket `listener`, handed over
/// through `NGINX` (the variable nginx's own binary upgrade uses), so the port is never released
/// between being chosen and being served; returns once nginx has loaded its configuration.
fn spawn_nginx(d: &Path, conf: &str, listener: std::net::TcpListener, name: &str) -> Child {
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.args([
        "-c",
        &conf_path.to_string_lossy(),
        "-e",
        &d.join("error.log").to_string_lossy(),
    ]);
    hand_over(&mut cmd, &[&listener]);
    cmd.env("NGINX", "3;");
    let mut nginx = Child::spawn(name, &mut cmd, &d.join("nginx.out"));
    drop(listener); // nginx holds it now: when nginx ends, connections are refused
    // The master writes its pid file once its configuration is loaded and the sockets are
    // taken; from then on connections wait in the socket's queue for a worker.
    let pid_file = d.join("nginx.pid");
    wait_for(&format!("{name} to start"), Duration::from_secs(10), || {
        if !nginx.is_running() {
            panic!(
                "{name} exited: {}\n{}",
                nginx.log_text(),
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
        }
        pid_file.exists().then_some(())
    });
    nginx
}
