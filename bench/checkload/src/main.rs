//! A closed-loop load generator for the ext_authz gRPC service, as Envoy uses it: one HTTP/2
//! connection, `--concurrency` Checks in flight on it, each a `GET --path` with a Bearer token.
//! Prints one line of `key=value`: requests, rate (per second), p50_ms, p99_ms, errors.
//! Used by `bench/run.sh`; it builds on its own (not from the workspace), so a change to Gatehouse
//! does not rebuild it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, "--addr", "127.0.0.1:9191");
    let seconds: f64 = arg(&args, "--seconds", "10").parse().unwrap();
    let warmup: f64 = arg(&args, "--warmup-seconds", "1").parse().unwrap();
    let concurrency: usize = arg(&args, "--concurrency", "16").parse().unwrap();
    let token = arg(&args, "--token", "");
    let path = arg(&args, "--path", "/ping");
    let mut headers = std::collections::HashMap::new();
    headers.insert("authorization".to_owned(), format!("Bearer {token}"));
    headers.insert("x-forwarded-proto".to_owned(), "http".to_owned());
    headers.insert(":authority".to_owned(), "bench".to_owned());
    headers.insert(":path".to_owned(), path.clone());
    headers.insert(":method".to_owned(), "GET".to_owned());
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path,
                    host: "bench".into(),
                    headers,
                    protocol: "HTTP/1.1".into(),
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    };
    let client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let first = client.clone().check(req.clone()).await.expect("Check");
    let code = first.get_ref().status.as_ref().map_or(-1, |s| s.code);
    assert_eq!(code, 0, "the first Check was not OK: {:?}", first.get_ref());

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = client.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let ok = c
                    .check(req.clone())
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status.map(|s| s.code == 0))
                    .unwrap_or(false);
                if t >= measure_from {
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    println!(
        "requests={} rate={:.0} p50_ms={:.3} p99_ms={:.3} errors={}",
        all.len(),
        all.len() as f64 / seconds,
        pct(0.50),
        pct(0.99),
        errors
    );
}
