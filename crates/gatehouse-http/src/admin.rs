//! The admin listener: `/healthz` (the process runs), `/readyz` (issuers' keys loaded, policy
//! loaded, upstream reachable, audit log writable, store answering) and `/metrics` (Prometheus
//! text). Keep it on a private address: it is not authenticated.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::proxy::Gateway;
use crate::respond::typed_response;
use crate::upstream::Probe;

async fn upstream_reachable(gw: &Gateway) -> bool {
    let limit = Duration::from_secs(1);
    match gw.upstream().probe() {
        Some(Probe::Tcp(addr)) => matches!(
            tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
        Some(Probe::Unix(path)) => matches!(
            tokio::time::timeout(limit, tokio::net::UnixStream::connect(path)).await,
            Ok(Ok(_))
        ),
        None => gw.upstream().local_ready(),
    }
}

async fn route(gw: Arc<Gateway>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let text = |status: StatusCode, ct: &'static str, body: String| {
        typed_response(status, body, ct, "no-store")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let issuers: Vec<_> = gw.authn().issuers().map(|i| i.status()).collect();
            let keys_ok = issuers.iter().all(|s| s.loaded);
            let upstream_ok = upstream_reachable(&gw).await;
            let audit_ok = gw.audit().is_healthy();
            // Without its store a node serves no browser session and hears of no revocation.
            let store_ok = match gw.state() {
                Some(s) => matches!(
                    tokio::time::timeout(Duration::from_secs(1), s.ping()).await,
                    Ok(Ok(()))
                ),
                None => true,
            };
            let ready = keys_ok && upstream_ok && audit_ok && store_ok;
            let doc = json!({
                "ready": ready,
                "checks": {
                    "policy": true,
                    "issuer_keys": issuers.iter().map(|s| json!({"issuer": s.issuer, "loaded": s.loaded, "keys": s.keys})).collect::<Vec<_>>(),
                    "upstream": upstream_ok,
                    "audit": audit_ok,
                    "store": store_ok,
                }
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "application/json", doc.to_string())
        }
        "/metrics" => {
            let statuses: Vec<_> = gw.authn().issuers().map(|i| i.status()).collect();
            gw.metrics().sync_jwks(&statuses);
            gw.metrics().sync_revocations(gw.authn().revocations());
            if let Some(hooks) = &gw.hooks {
                // A store that does not answer leaves the last counts: the store's own health is
                // /readyz's to report.
                if let Ok(rows) = hooks.store().hooks().counts().await {
                    gw.metrics().sync_webhooks(&rows);
                }
            }
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                gw.metrics().encode(),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gw = gateway.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, std::convert::Infallible>(route(gw, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
