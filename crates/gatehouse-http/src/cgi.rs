//! The built-in upstream: Gatehouse drives `git http-backend` as a CGI program, one process per
//! request, streaming the request body to its stdin and its stdout back to the client. Nothing is
//! buffered beyond a 64 KiB window, so a push or clone of any size runs in constant memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::TryStreamExt as _;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::body::{Body, BoxError};
use crate::upstream::{CallerInfo, UpstreamError};

const MAX_CGI_HEADER: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

/// `git http-backend` over a directory of bare repositories.
#[derive(Debug)]
pub struct GitCgi {
    root: PathBuf,
    git: PathBuf,
    path_env: String,
}

impl GitCgi {
    pub(crate) fn new(root: PathBuf, git: PathBuf) -> Self {
        Self {
            root,
            git,
            path_env: std::env::var("PATH")
                .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        }
    }

    pub(crate) fn repos_dir(&self) -> &Path {
        &self.root
    }

    pub(crate) async fn serve(
        &self,
        req: Request<Body>,
        caller: CallerInfo,
    ) -> Result<Response<Body>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let h = &parts.headers;
        let text = |n: HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut cmd = tokio::process::Command::new(&self.git);
        cmd.arg("http-backend")
            .env_clear()
            .env("PATH", &self.path_env)
            .env("HOME", &self.root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("SERVER_PROTOCOL", "HTTP/1.1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", &caller.decoded_path)
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env("REMOTE_ADDR", &caller.remote_addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ct) = text(header::CONTENT_TYPE) {
            cmd.env("CONTENT_TYPE", ct);
        }
        // Without CONTENT_LENGTH the backend reads the (de-chunked) body to EOF.
        if let Some(cl) = text(header::CONTENT_LENGTH) {
            cmd.env("CONTENT_LENGTH", cl);
        }
        if let Some(p) = text(HeaderName::from_static("git-protocol")) {
            cmd.env("HTTP_GIT_PROTOCOL", p);
        }
        if let Some(e) = text(header::CONTENT_ENCODING) {
            cmd.env("HTTP_CONTENT_ENCODING", e);
        }
        if let Some(u) = &caller.remote_user {
            // A non-empty REMOTE_USER also enables receive-pack in the backend; the policy
            // has already decided whether this caller may push.
            cmd.env("REMOTE_USER", u);
        }
        let mut child = cmd.spawn().map_err(|e| {
            UpstreamError::Unreachable(format!(
                "cannot run {} http-backend: {e}",
                self.git.display()
            ))
        })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(UpstreamError::Unreachable(
                "git http-backend pipes unavailable".into(),
            ));
        };

        tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data()
                            && stdin.write_all(&data).await.is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "request body ended early; closing git http-backend's input");
                        break;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(target: "gatehouse::git_http_backend", "{line}");
            }
        });
        tokio::spawn(async move {
            let _ = child.wait().await;
        });

        let mut out = BufReader::with_capacity(CHUNK, stdout);
        let mut status = StatusCode::OK;
        let mut headers = http::HeaderMap::new();
        let mut seen = 0usize;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = out.read_until(b'\n', &mut line).await.map_err(|e| {
                UpstreamError::Unreachable(format!("reading git http-backend: {e}"))
            })?;
            seen += n;
            if n == 0 || seen > MAX_CGI_HEADER {
                return Err(UpstreamError::Unreachable(
                    "git http-backend sent no complete header".into(),
                ));
            }
            let l = line.strip_suffix(b"\n").unwrap_or(&line);
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if l.is_empty() {
                break;
            }
            let Some(colon) = l.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&l[..colon], l[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"status") {
                let code = value.split(|&b| b == b' ').next().unwrap_or(b"500");
                status = std::str::from_utf8(code)
                    .ok()
                    .and_then(|c| c.parse::<u16>().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
            } else if let (Ok(n), Ok(v)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(n, v);
            }
        }
        let stream = tokio_util::io::ReaderStream::with_capacity(out, CHUNK)
            .map_ok(http_body::Frame::data)
            .map_err(|e| Box::new(e) as BoxError);
        let body: Body = http_body_util::StreamBody::new(stream).boxed_unsync();
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}
