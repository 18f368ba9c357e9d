//! The one place where a refusal becomes a response: RFC 6750 challenges, RFC 9457 problem
//! documents for API and browser clients, and one-line text that `git` prints as `remote: ...`.
//! A refused client learns that it was refused and a stable reason code; details stay in the audit
//! record. No credential ever appears in a response.

use std::sync::Arc;

use gatehouse_authn::AuthnError;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// A response with a body, its content type and a cache policy.
pub(crate) fn typed_response(
    status: StatusCode,
    body: impl Into<bytes::Bytes>,
    content_type: &'static str,
    cache_control: &'static str,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    r
}

/// Who is asking, which decides the shape of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A `git` client (smart or dumb HTTP, LFS).
    Git,
    /// An API client or anything else.
    Api,
}

/// Why a request was not forwarded.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The request itself is unacceptable (bad path, bad header).
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// Readable detail.
        detail: String,
    },
    /// No credential, or a credential that does not verify.
    Unauthenticated {
        /// Why.
        error: AuthnError,
        /// Whether a credential was presented at all.
        presented: bool,
    },
    /// The policy said no.
    Forbidden {
        /// Stable reason code.
        reason: Arc<str>,
        /// What was asked, e.g. `git:write on demo/hello`.
        what: String,
    },
    /// The audit log cannot take the record.
    AuditUnavailable,
    /// The upstream could not be reached or failed.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The request body is larger than Gatehouse reads for a decision.
    PayloadTooLarge,
    /// The client stopped sending its request body (`server.body_idle_timeout`).
    RequestTimeout,
    /// The forge cannot say which organisations and teams the caller is in.
    GroupsUnavailable,
    /// The forge's API could not answer a question Gatehouse must ask it (the text says which).
    ForgeUnavailable(String),
    /// A route moves refs Gatehouse cannot know before the forge acts (the text says why).
    Undecidable(&'static str),
    /// Gatehouse's store could not be read or written (the text says what).
    StoreUnavailable(String),
    /// A Gatehouse resource (an environment, a revocation) does not exist.
    NotFound(String),
    /// A Gatehouse resource is in a state that refuses the request (a deleted secret, a
    /// disabled or expired version).
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Readable detail.
        detail: String,
    },
    /// The method does not apply to the resource.
    MethodNotAllowed(String),
    /// A route moves refs the request does not name, and the forge could not say which.
    RefLookup {
        /// The forge has no such pull request, release or repository (else it could not be
        /// asked).
        not_found: bool,
        /// What was looked up, and what went wrong.
        detail: String,
    },
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated { error, .. } if error.is_server_error() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::GroupsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::ForgeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Undecidable(_) => StatusCode::FORBIDDEN,
            Refusal::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Conflict { .. } => StatusCode::CONFLICT,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::RefLookup {
                not_found: true, ..
            } => StatusCode::NOT_FOUND,
            Refusal::RefLookup { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code recorded in the audit log and sent to the client.
    pub fn code(&self) -> Arc<str> {
        match self {
            Refusal::BadRequest { code, .. } => (*code).into(),
            Refusal::Unauthenticated { error, .. } => error.code().into(),
            Refusal::Forbidden { reason, .. } => reason.clone(),
            Refusal::AuditUnavailable => "audit_unavailable".into(),
            Refusal::UpstreamUnavailable => "upstream_unavailable".into(),
            Refusal::UpstreamTimeout => "upstream_timeout".into(),
            Refusal::PayloadTooLarge => "payload_too_large".into(),
            Refusal::RequestTimeout => "request_body_timeout".into(),
            Refusal::GroupsUnavailable => "forge_groups_unavailable".into(),
            Refusal::ForgeUnavailable(_) => "forge_unavailable".into(),
            Refusal::Undecidable(_) => "ref_move_undecidable".into(),
            Refusal::StoreUnavailable(_) => "store_unavailable".into(),
            Refusal::NotFound(_) => "not_found".into(),
            Refusal::Conflict { code, .. } => (*code).into(),
            Refusal::MethodNotAllowed(_) => "method_not_allowed".into(),
            Refusal::RefLookup { .. } => "ref_lookup_failed".into(),
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Refusal::BadRequest { .. } => "Bad request",
            Refusal::Unauthenticated { error, .. } if error.is_server_error() => {
                "Authentication unavailable"
            }
            Refusal::Unauthenticated { .. } => "Authentication required",
            Refusal::Forbidden { .. } => "Forbidden",
            Refusal::AuditUnavailable => "Audit log unavailable",
            Refusal::UpstreamUnavailable => "Upstream unavailable",
            Refusal::UpstreamTimeout => "Upstream timed out",
            Refusal::PayloadTooLarge => "Request body too large",
            Refusal::RequestTimeout => "Request body timed out",
            Refusal::GroupsUnavailable => "Group membership unavailable",
            Refusal::ForgeUnavailable(_) => "Forge unavailable",
            Refusal::StoreUnavailable(_) => "Store unavailable",
            Refusal::NotFound(_) => "Not found",
            Refusal::Conflict { .. } => "Conflict",
            Refusal::MethodNotAllowed(_) => "Method not allowed",
            Refusal::Undecidable(_) | Refusal::RefLookup { .. } => {
                "Cannot tell which refs this moves"
            }
        }
    }

    fn detail(&self) -> String {
        match self {
            Refusal::BadRequest { detail, .. } => detail.clone(),
            Refusal::Unauthenticated { error, .. } => error.to_string(),
            Refusal::Forbidden { reason, what } => format!("{what} denied by policy ({reason})"),
            Refusal::AuditUnavailable => {
                "the audit log cannot record this request, so it is refused; try again later"
                    .to_owned()
            }
            Refusal::UpstreamUnavailable => "the upstream server could not be reached".to_owned(),
            Refusal::UpstreamTimeout => "the upstream server did not answer in time".to_owned(),
            Refusal::PayloadTooLarge => "the request body is too large".to_owned(),
            Refusal::RequestTimeout => {
                "the request body stopped arriving; nothing came for too long".to_owned()
            }
            Refusal::GroupsUnavailable => {
                "the forge cannot say which teams you are in right now; try again later".to_owned()
            }
            Refusal::ForgeUnavailable(what) => {
                format!("the forge could not answer ({what}); try again later")
            }
            Refusal::Undecidable(why) => format!("Gatehouse cannot decide this request: {why}"),
            Refusal::StoreUnavailable(what) => {
                format!("Gatehouse's store cannot be used right now ({what}); try again later")
            }
            Refusal::NotFound(what) => what.clone(),
            Refusal::Conflict { detail, .. } => detail.clone(),
            Refusal::MethodNotAllowed(what) => what.clone(),
            Refusal::RefLookup { detail, .. } => format!(
                "this request moves refs it does not name, and Gatehouse could not ask the forge which: {detail}"
            ),
        }
    }

    /// The response for this refusal.
    pub fn to_response(&self, kind: ClientKind, request_id: &str) -> Response<Body> {
        let status = self.status();
        let detail = self.detail();
        let mut resp = match kind {
            // git prints a text/plain error body line by line as "remote: ...".
            ClientKind::Git => typed_response(
                status,
                format!("Gatehouse: {detail} [request {request_id}]\n"),
                "text/plain; charset=utf-8",
                "no-store",
            ),
            ClientKind::Api => {
                let doc = serde_json::json!({
                    "type": format!("urn:gatehouse:problem:{}", self.code()),
                    "title": self.title(),
                    "status": status.as_u16(),
                    "detail": detail,
                    "code": self.code(),
                    "request_id": request_id,
                });
                typed_response(
                    status,
                    doc.to_string(),
                    "application/problem+json",
                    "no-store",
                )
            }
        };
        // The reason code, also as a header: a front proxy asking forward auth passes it on.
        if let Ok(v) = HeaderValue::from_str(&self.code()) {
            resp.headers_mut().insert("x-gatehouse-reason", v);
        }
        if let Refusal::Unauthenticated { error, presented } = self
            && status == StatusCode::UNAUTHORIZED
        {
            let h = resp.headers_mut();
            if kind == ClientKind::Git {
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Gatehouse\""),
                );
            }
            if *presented || kind == ClientKind::Api {
                h.append(
                    header::WWW_AUTHENTICATE,
                    bearer_challenge(error, *presented),
                );
            }
        }
        resp
    }
}

/// `Bearer realm="Gatehouse"` with, when a credential was presented, `error="invalid_token"` and the
/// stable description (RFC 6750 §3). The description is one of a fixed set of ASCII strings.
fn bearer_challenge(error: &AuthnError, presented: bool) -> HeaderValue {
    let v = if presented {
        let code = match error {
            AuthnError::UnsupportedScheme => "invalid_request",
            _ => "invalid_token",
        };
        format!("Bearer realm=\"Gatehouse\", error=\"{code}\", error_description=\"{error}\"")
    } else {
        "Bearer realm=\"Gatehouse\"".to_owned()
    };
    HeaderValue::from_str(&v)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"Gatehouse\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let r = Refusal::Unauthenticated {
            error: AuthnError::Expired,
            presented: true,
        };
        let resp = r.to_response(ClientKind::Api, "rid");
        assert_eq!(resp.status(), 401);
        let ch: Vec<_> = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(
            ch,
            vec![
                "Bearer realm=\"Gatehouse\", error=\"invalid_token\", error_description=\"token has expired\""
            ]
        );
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );

        let git = Refusal::Unauthenticated {
            error: AuthnError::Missing,
            presented: false,
        }
        .to_response(ClientKind::Git, "rid");
        let ch: Vec<_> = git
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(ch, vec!["Basic realm=\"Gatehouse\""]);
    }

    #[test]
    fn keys_unavailable_is_a_server_error() {
        let r = Refusal::Unauthenticated {
            error: AuthnError::KeysUnavailable,
            presented: true,
        };
        assert_eq!(r.status(), 503);
        assert!(
            r.to_response(ClientKind::Api, "x")
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .is_none()
        );
    }
}
