//! Where allowed requests go: a pooled HTTP(S) client to the forge (optionally with a client
//! certificate), a pooled HTTP client over the forge's Unix socket, or the built-in
//! `git http-backend` over a directory of bare repositories.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gatehouse_config::UpstreamConfig;
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::body::Body;
use crate::cgi::GitCgi;
use crate::pool::ConnPool;

/// Why the upstream could not be set up or did not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// A configuration value is unusable.
    #[error("upstream configuration: {0}")]
    Config(String),
    /// The upstream could not be reached.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The client stopped sending the request body being forwarded.
    #[error("the client stopped sending its request body")]
    ClientBodyTimeout,
}

/// How an HTTP upstream is reached.
#[derive(Debug)]
enum Pool {
    /// TCP, with TLS for `https://`.
    Tcp(Arc<ConnPool<hyper_rustls::HttpsConnector<HttpConnector>>>),
    /// A Unix socket (`unix:/path`): plain HTTP/1.1 to a forge on the same host.
    Unix(Arc<ConnPool<UnixConnector>>),
}

/// The scheme that names a Unix-socket upstream in `upstream.url`.
pub(crate) const UNIX_SCHEME: &str = "unix:";

/// Opens connections to a Unix socket, whatever the request's URI says (it names the pool only).
#[derive(Debug, Clone)]
pub(crate) struct UnixConnector {
    path: Arc<Path>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = UnixConnection;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<UnixConnection>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.path.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, tokio::net::UnixStream::connect(&*path)).await {
                Ok(Ok(s)) => Ok(UnixConnection(TokioIo::new(s))),
                Ok(Err(e)) => Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                )),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: connect timed out", path.display()),
                )),
            }
        })
    }
}

/// A connection to a Unix-socket upstream.
#[derive(Debug)]
pub(crate) struct UnixConnection(TokioIo<tokio::net::UnixStream>);

impl Connection for UnixConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UnixConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UnixConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

/// Where readiness probes an HTTP upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `host:port`, by opening a TCP connection.
    Tcp(String),
    /// A Unix socket, by connecting to it.
    Unix(PathBuf),
}

/// The upstream, as requests see it.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A forge over HTTP(S).
    Http(Arc<HttpUpstream>),
    /// The built-in `git http-backend`.
    GitCgi(Arc<GitCgi>),
}

/// A forge over HTTP(S).
#[derive(Debug)]
pub struct HttpUpstream {
    client: Pool,
    /// The socket of a `unix:` upstream.
    unix: Option<PathBuf>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    prefix: String,
    response_timeout: Duration,
    preserve_host: bool,
}

/// What the built-in upstream needs to know about the caller.
#[derive(Debug, Clone)]
pub(crate) struct CallerInfo {
    pub(crate) remote_user: Option<String>,
    pub(crate) remote_addr: String,
    /// The decoded, normalized path (for `PATH_INFO`).
    pub(crate) decoded_path: String,
}

fn read_pem_error(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Config(format!("{what} {}: {e}", path.display()))
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Config(e.to_string()))?;
    let builder = if cfg.danger_accept_invalid_certs {
        tracing::warn!(
            "upstream.danger_accept_invalid_certs is on: the upstream's certificate is not verified"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| read_pem_error("ca_file", path, e))?
                {
                    let cert = cert.map_err(|e| read_pem_error("ca_file", path, e))?;
                    roots
                        .add(cert)
                        .map_err(|e| read_pem_error("ca_file", path, e))?;
                }
            }
            None => {
                let native = rustls_native_roots();
                for cert in native {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    // hyper-rustls sets ALPN (h2, http/1.1) itself.
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| read_pem_error("client_cert_file", cert, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| read_pem_error("client_cert_file", cert, e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| read_pem_error("client_key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| UpstreamError::Config(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn rustls_native_roots() -> Vec<CertificateDer<'static>> {
    // SSL_CERT_FILE, then the usual bundle locations of Debian/Ubuntu, Fedora/RHEL, Alpine/macOS.
    let candidates = std::env::var("SSL_CERT_FILE").into_iter().chain(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(str::to_owned),
    );
    for path in candidates {
        let certs: Vec<_> = CertificateDer::pem_file_iter(std::path::Path::new(&path))
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if !certs.is_empty() {
            return certs;
        }
    }
    tracing::warn!("no system CA bundle found: set upstream.ca_file to verify an https upstream");
    Vec::new()
}

impl Upstream {
    /// Builds the upstream from the config.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        if let Some(g) = &cfg.git_http_backend {
            return Ok(Upstream::GitCgi(Arc::new(GitCgi::new(
                g.repos_dir.clone(),
                g.git.clone(),
            ))));
        }
        let url = cfg
            .url
            .as_deref()
            .ok_or_else(|| UpstreamError::Config("no upstream url".into()))?;
        if let Some(path) = url.strip_prefix(UNIX_SCHEME) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(UpstreamError::Config(format!(
                    "upstream.url {url:?}: a Unix socket is named by an absolute path, unix:/run/forge.sock"
                )));
            }
            let connector = UnixConnector {
                path: path.clone().into(),
                connect_timeout: cfg.connect_timeout.0,
            };
            let pool = ConnPool::new(
                connector,
                Uri::from_static("http://localhost"),
                cfg.pool_max_idle,
                cfg.pool_idle_timeout.0,
            );
            return Ok(Upstream::Http(Arc::new(HttpUpstream {
                client: Pool::Unix(Arc::new(pool)),
                unix: Some(path),
                // Names the pool; with `preserve_host = false` it is also the Host sent.
                scheme: http::uri::Scheme::HTTP,
                authority: http::uri::Authority::from_static("localhost"),
                prefix: String::new(),
                response_timeout: cfg.response_timeout.0,
                preserve_host: cfg.preserve_host,
            })));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| UpstreamError::Config(format!("upstream.url: {e}")))?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Config("upstream.url has no host".into()))?;
        let prefix = uri.path().trim_end_matches('/').to_owned();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout.0));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls_client_config(cfg)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Config(format!("upstream.url: {e}")))?;
        let pool = ConnPool::new(
            connector,
            target,
            cfg.pool_max_idle,
            cfg.pool_idle_timeout.0,
        );
        Ok(Upstream::Http(Arc::new(HttpUpstream {
            client: Pool::Tcp(Arc::new(pool)),
            unix: None,
            scheme,
            authority,
            prefix,
            response_timeout: cfg.response_timeout.0,
            preserve_host: cfg.preserve_host,
        })))
    }

    /// Where to probe an HTTP upstream for readiness.
    pub fn probe(&self) -> Option<Probe> {
        match self {
            Upstream::Http(h) => {
                if let Some(path) = &h.unix {
                    return Some(Probe::Unix(path.clone()));
                }
                let port =
                    h.authority
                        .port_u16()
                        .unwrap_or(if h.scheme == http::uri::Scheme::HTTPS {
                            443
                        } else {
                            80
                        });
                Some(Probe::Tcp(format!("{}:{port}", h.authority.host())))
            }
            Upstream::GitCgi(_) => None,
        }
    }

    /// Whether the built-in upstream's directory exists (readiness).
    pub fn local_ready(&self) -> bool {
        match self {
            Upstream::Http(_) => true,
            Upstream::GitCgi(c) => c.repos_dir().is_dir(),
        }
    }

    /// Sends a request whose path and query are already normalized.
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
        path_and_query: &str,
        caller: impl FnOnce() -> CallerInfo,
    ) -> Result<Response<Body>, UpstreamError> {
        match self {
            Upstream::Http(h) => {
                let pq = format!("{}{}", h.prefix, path_and_query);
                let uri = Uri::builder()
                    .scheme(h.scheme.clone())
                    .authority(h.authority.clone())
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| UpstreamError::Unreachable(format!("bad upstream uri: {e}")))?;
                *req.uri_mut() = uri;
                if !h.preserve_host {
                    // The pool sends the upstream's authority as `Host` (HTTP/1.1) or
                    // `:authority` (HTTP/2).
                    req.headers_mut().remove(http::header::HOST);
                }
                // The pool picks HTTP/1.1 or HTTP/2 from ALPN; the inbound version does not carry over.
                *req.version_mut() = http::Version::HTTP_11;
                // Without a body the response is due `response_timeout` after sending; with one,
                // that long after the upstream last took a piece of it.
                let progress = (!http_body::Body::is_end_stream(req.body())).then(|| {
                    let p = crate::body::UploadProgress::new();
                    let req_body = std::mem::take(req.body_mut());
                    *req.body_mut() = p.watch(req_body);
                    p
                });
                let fut = async {
                    match &h.client {
                        Pool::Tcp(c) => c.send(req).await,
                        Pool::Unix(c) => c.send(req).await,
                    }
                };
                let answer = match progress {
                    None => tokio::time::timeout(h.response_timeout, fut).await.ok(),
                    Some(p) => tokio::select! {
                        r = fut => Some(r),
                        () = response_overdue(h.response_timeout, &p) => None,
                    },
                };
                match answer {
                    Some(Ok(resp)) => Ok(resp.map(|b| {
                        use http_body_util::BodyExt as _;
                        b.boxed_unsync()
                    })),
                    Some(Err(e)) if caused_by_client_stall(&e) => {
                        Err(UpstreamError::ClientBodyTimeout)
                    }
                    Some(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
                    None => Err(UpstreamError::Timeout),
                }
            }
            Upstream::GitCgi(c) => {
                if let Ok(uri) = path_and_query.parse() {
                    *req.uri_mut() = uri;
                }
                c.serve(req, caller()).await
            }
        }
    }
}

/// Returns once `timeout` has passed since the upload last made progress: one timer at a time,
/// re-armed from the last progress when it fires early.
async fn response_overdue(timeout: Duration, progress: &crate::body::UploadProgress) {
    loop {
        let due = progress.last() + timeout;
        if tokio::time::Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// Whether a failed request failed because the client's body stalled (see `IdleLimited`).
fn caused_by_client_stall(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<crate::body::BodyIdleTimeout>() {
            return true;
        }
        cur = c.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::channel_body;
    use http_body_util::BodyExt as _;

    /// A real HTTP/1.1 server (hyper) that reads each request's whole body, then answers with its
    /// length, or (`answer = false`) never answers.
    async fn reading_server(answer: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| async move {
                            let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                            if !answer {
                                std::future::pending::<()>().await;
                            }
                            let text = format!("{}", n.unwrap_or(0));
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(text)),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn upstream(url: &str, response_timeout: &str) -> Upstream {
        let cfg: UpstreamConfig = serde_json::from_value(serde_json::json!({
            "url": url,
            "response_timeout": response_timeout,
        }))
        .unwrap();
        Upstream::new(&cfg).unwrap()
    }

    /// A request body of `chunks` pieces of 1 KiB, one every `every`.
    fn slow_body(chunks: usize, every: Duration) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        tokio::spawn(async move {
            for _ in 0..chunks {
                tokio::time::sleep(every).await;
                if tx.send(bytes::Bytes::from(vec![b'x'; 1024])).await.is_err() {
                    return;
                }
            }
        });
        channel_body(rx)
    }

    fn post(body: Body) -> Request<Body> {
        Request::post("/upload").body(body).unwrap()
    }

    fn caller() -> CallerInfo {
        CallerInfo {
            remote_user: None,
            remote_addr: "127.0.0.1".into(),
            decoded_path: "/upload".into(),
        }
    }

    #[tokio::test]
    async fn an_upload_longer_than_the_response_timeout_is_not_cut_off_while_it_moves() {
        let url = reading_server(true).await;
        let up = upstream(&url, "300ms");
        // Eight pieces, 150 ms apart: 1.2 s of upload against a 300 ms response timeout.
        let start = tokio::time::Instant::now();
        let resp = up
            .send(
                post(slow_body(8, Duration::from_millis(150))),
                "/upload",
                caller,
            )
            .await
            .expect("the upload was cut off by the response timeout");
        assert!(start.elapsed() >= Duration::from_millis(1100));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"8192");
    }

    #[tokio::test]
    async fn the_response_is_due_within_the_timeout_of_the_uploads_end() {
        let url = reading_server(false).await;
        let up = upstream(&url, "300ms");
        let start = tokio::time::Instant::now();
        let r = up
            .send(
                post(slow_body(4, Duration::from_millis(150))),
                "/upload",
                caller,
            )
            .await;
        let took = start.elapsed();
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
        // The upload took ~600 ms; the timeout counts from its end, not from the start.
        assert!(
            took >= Duration::from_millis(850) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Without a body the timeout counts from sending.
        let start = tokio::time::Instant::now();
        let r = up
            .send(
                Request::get("/x").body(crate::body::full("")).unwrap(),
                "/x",
                caller,
            )
            .await;
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_client_that_stalls_its_upload_is_not_the_upstreams_timeout() {
        let url = reading_server(true).await;
        let up = upstream(&url, "200ms");
        // One piece, then nothing: the upstream waits for the client, which owes the rest.
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
        let sending = up.send(post(channel_body(rx)), "/upload", caller);
        // Well past the response timeout the request is still waiting on the client (whose own
        // timeout, `server.body_idle_timeout`, is the proxy's business), not failed with 504.
        let r = tokio::time::timeout(Duration::from_millis(1000), sending).await;
        assert!(r.is_err(), "{:?}", r.map(|x| x.map(|_| ())));
        drop(tx);
    }
}
