use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address as CoreAddress, HeaderMap as EnvoyHeaderMap, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};

use super::*;

fn request(http: HttpRequest, principal: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(CoreAddress {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: "10.1.2.3".into(),
                        ..SocketAddress::default()
                    })),
                }),
                principal: principal.into(),
                ..Peer::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(http),
            }),
            ..AttributeContext::default()
        }),
    }
}

fn http(headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: "/demo/hello.git/info/refs?service=git-upload-pack".into(),
        host: "git.example.com".into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        size: -1,
        ..HttpRequest::default()
    }
}

fn peer() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

#[test]
fn attributes_map_to_the_request() {
    let r = request(
        HttpRequest {
            id: "req-1".into(),
            ..http(&[
                (":authority", "git.example.com"),
                (":path", "/other"),
                ("authorization", "Bearer t"),
            ])
        },
        "spiffe://cluster.local/ns/ci/sa/deployer",
    );
    let i = check_input(&r, peer()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i.method, "GET");
    assert_eq!(i.path, "/demo/hello.git/info/refs?service=git-upload-pack");
    assert_eq!(i.host, "git.example.com");
    assert_eq!(i.client, Some(IpAddr::from([10, 1, 2, 3])));
    assert_eq!(i.peer, peer());
    assert_eq!(
        i.spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/ci/sa/deployer")
    );
    // Pseudo-headers are the fields beside them, never headers.
    assert_eq!(i.headers.len(), 1);
    assert_eq!(i.headers["authorization"], "Bearer t");
    // Size unknown and no body forwarded: the body is not known.
    assert!(i.body.is_none());
}

#[test]
fn a_principal_that_is_not_spiffe_names_no_workload() {
    let r = request(http(&[]), "CN=deployer,O=Example");
    let i = check_input(&r, peer()).unwrap_or_else(|e| panic!("{e}"));
    assert!(i.spiffe_id.is_none());
}

#[test]
fn raw_headers_keep_repeats() {
    let mut h = http(&[]);
    h.header_map = Some(EnvoyHeaderMap {
        headers: vec![
            HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: b"Bearer a".to_vec(),
            },
            HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: b"Bearer b".to_vec(),
            },
        ],
    });
    let i = check_input(&request(h, ""), peer()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i.headers.get_all("authorization").iter().count(), 2);
}

#[test]
fn bad_headers_and_missing_requests_are_refused() {
    let r = request(http(&[("bad name", "x")]), "");
    assert_eq!(check_input(&r, peer()).err(), Some(MapError::BadHeaderName));
    let r = request(http(&[("x-a", "line\nbreak")]), "");
    assert_eq!(
        check_input(&r, peer()).err(),
        Some(MapError::BadHeaderValue)
    );
    assert_eq!(
        check_input(&CheckRequest::default(), peer()).err(),
        Some(MapError::NoHttpRequest)
    );
}

#[test]
fn a_body_is_known_only_when_envoy_buffered_it() {
    let with = |raw: &[u8], text: &str, size: i64, mark: Option<&str>| {
        let mut h = http(&[]);
        if let Some(m) = mark {
            h.headers
                .insert("x-envoy-auth-partial-body".into(), m.into());
        }
        h.raw_body = raw.to_vec();
        h.body = text.into();
        h.size = size;
        check_input(&request(h, ""), peer())
            .unwrap_or_else(|e| panic!("{e}"))
            .body
    };
    assert_eq!(
        with(b"abc", "", 3, Some("false")),
        Some(bytes::Bytes::from("abc"))
    );
    // Envoy sent the check on the headers alone: size 0 says nothing of the body.
    assert_eq!(with(b"", "", 0, None), None);
    // Buffered and empty.
    assert_eq!(with(b"", "", 0, Some("false")), Some(bytes::Bytes::new()));
    // As text (pack_as_bytes off) the body may have been altered: not known.
    assert_eq!(with(b"", "abc", 3, Some("false")), None);
}

#[test]
fn the_request_id_is_the_clients_not_envoys_stream_id() {
    let r = request(
        HttpRequest {
            id: "12345".into(),
            ..http(&[("x-request-id", "abc-1")])
        },
        "",
    );
    let i = check_input(&r, peer()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i.request_id.as_deref(), Some("abc-1"));
}

#[test]
fn outcomes_map_to_responses() {
    let mut set = HeaderMap::new();
    set.insert("x-webauth-user", http::HeaderValue::from_static("alice"));
    let r = check_response(CheckOutcome::Allow {
        set,
        remove: vec![http::header::AUTHORIZATION],
    });
    assert_eq!(r.status.as_ref().map(|s| s.code), Some(OK));
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("not an OK response")
    };
    assert_eq!(ok.headers.len(), 1);
    let h = ok.headers[0].header.as_ref().unwrap_or_else(|| panic!());
    assert_eq!(
        (h.key.as_str(), h.value.as_str()),
        ("x-webauth-user", "alice")
    );
    assert_eq!(
        ok.headers[0].append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);

    let mut headers = HeaderMap::new();
    headers.insert(
        "x-gatehouse-reason",
        http::HeaderValue::from_static("no_matching_permit"),
    );
    let r = check_response(CheckOutcome::Deny {
        status: 403,
        headers,
        body: bytes::Bytes::from_static(b"{\"code\":\"no_matching_permit\"}"),
        unauthenticated: false,
    });
    let s = r.status.unwrap_or_default();
    assert_eq!(
        (s.code, s.message.as_str()),
        (PERMISSION_DENIED, "no_matching_permit")
    );
    let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("not a denial")
    };
    assert_eq!(d.status.map(|s| s.code), Some(403));
    assert!(d.body.contains("no_matching_permit"));
    let r = check_response(CheckOutcome::Deny {
        status: 401,
        headers: HeaderMap::new(),
        body: bytes::Bytes::new(),
        unauthenticated: true,
    });
    assert_eq!(r.status.map(|s| s.code), Some(UNAUTHENTICATED));
}
