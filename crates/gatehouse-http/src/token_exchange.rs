//! `POST /.gatehouse/token`: OAuth 2.0 Token Exchange (RFC 8693). A caller presents a subject
//! token from a trusted issuer (a CI job's or a workload's OIDC token, a Kubernetes
//! service-account token, one of Gatehouse's own) and gets a short-lived Gatehouse access token
//! for the roles (`scope`) the policy grants it (`token:exchange` on `Role::"<role>"`), bound to
//! an environment when one is named (`environment`, an extension parameter) so that ending the
//! environment revokes it. The token never outlives the subject token or the environment.
//! Refusals are RFC 6749 §5.2 JSON errors (`invalid_request`, `invalid_grant`, `invalid_scope`,
//! `unsupported_grant_type`) and RFC 8693's `invalid_target`.
//!
//! This module reads the form and shapes the answer; the decision is the core's
//! ([`gatehouse_decide::Decider::decide_exchange`]) and the token is the own issuer's.

use gatehouse_audit::{AuditPrincipal, AuditRecord};
use gatehouse_authn::{Credential, TokenRequest};
use gatehouse_core::UnixTime;
use http::{Request, Response, StatusCode};

use crate::body::Body;
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal};

/// Largest form read.
const MAX_FORM: usize = 64 * 1024;
/// Most credentials a token may have been bought with (exchanges of exchanged tokens).
const MAX_CHAIN: usize = 8;

/// An RFC 6749 §5.2 error.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

fn oauth(code: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        code,
        description: description.into(),
    }
}

fn json_response(status: StatusCode, doc: &serde_json::Value) -> Response<Body> {
    let mut r =
        crate::respond::typed_response(status, doc.to_string(), "application/json", "no-store");
    r.headers_mut().insert(
        http::header::PRAGMA,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

impl Gateway {
    /// Serves `POST /.gatehouse/token`.
    pub(crate) async fn token_exchange(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        rec.event = "token_exchange";
        rec.action = Some("token:exchange");
        let body = crate::proxy::read_limited(req.into_body(), MAX_FORM)
            .await
            .map_err(|r| (r, ClientKind::Api))?;
        match self.exchange(&body, adm, rec).await {
            Ok(doc) => {
                rec.decision = Some("allow");
                Ok(json_response(StatusCode::OK, &doc))
            }
            Err(e) => {
                rec.decision = Some("deny");
                if rec.reason.is_none() || rec.reason.as_deref() == Some("gatehouse_endpoint") {
                    rec.reason = Some(e.code.into());
                }
                rec.detail = Some(e.description.clone());
                Ok(json_response(
                    e.status,
                    &serde_json::json!({ "error": e.code, "error_description": e.description }),
                ))
            }
        }
    }

    async fn exchange(
        &self,
        body: &[u8],
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<serde_json::Value, OAuthError> {
        let f =
            gatehouse_authn::parse_exchange_form(body).map_err(|e| oauth(e.code, e.description))?;
        let own = self.decider.authn().own().clone();
        if f.targets.iter().any(|t| t != own.audience()) {
            return Err(oauth(
                "invalid_target",
                format!("tokens are issued for {} only", own.audience()),
            ));
        }
        let roles = f.roles;
        let subject = f.subject_token;

        // Who the subject token names, as any request's credential is checked (a revoked one
        // included).
        let principal = self
            .decider
            .caller(&Credential::Bearer(subject))
            .await
            .map_err(|e| {
                let (code, description) = match &e {
                    gatehouse_decide::CallerError::Authn(a) if a.is_server_error() => (
                        "temporarily_unavailable",
                        format!("the subject token cannot be checked now: {a}"),
                    ),
                    gatehouse_decide::CallerError::Authn(a) => {
                        rec.authn_error = Some(a.code());
                        ("invalid_grant", format!("subject_token: {a}"))
                    }
                    other => ("temporarily_unavailable", other.to_string()),
                };
                OAuthError {
                    status: if code == "invalid_grant" {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    code,
                    description,
                }
            })?;
        rec.principal = Some(AuditPrincipal::of(&principal));
        let now = self.clock.now().as_secs();

        // The environment: named here, or inherited from a subject token bound to one (an
        // exchange never unbinds).
        let environment = match (&principal.environment, f.environment) {
            (Some(bound), Some(asked)) if *bound != asked => {
                return Err(oauth(
                    "invalid_target",
                    "the subject token is bound to another environment",
                ));
            }
            (Some(bound), _) => Some(bound.clone()),
            (None, Some(asked)) => Some(asked),
            (None, None) => {
                return Err(oauth(
                    "invalid_request",
                    "environment is required: an exchanged token is bound to an environment \
                     (gatehouse env create, or POST /.gatehouse/envs)",
                ));
            }
        };
        let mut end = principal.expires_at.unwrap_or(i64::MAX);
        if let Some(env) = &environment {
            let Some(state) = &self.state else {
                return Err(oauth("invalid_target", "environments are not enabled here"));
            };
            let found = state.environment(env).await.map_err(|e| OAuthError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "temporarily_unavailable",
                description: {
                    tracing::error!(error = ?e, "environment lookup failed");
                    "the environment cannot be looked up now".into()
                },
            })?;
            match found {
                Some(s) if s.is_live(now) => end = end.min(s.expires_at),
                Some(_) => {
                    return Err(oauth(
                        "invalid_target",
                        format!("environment {env} has ended"),
                    ));
                }
                None => {
                    return Err(oauth("invalid_target", format!("no environment {env}")));
                }
            }
        }
        let lifetime = (own.default_ttl().as_secs() as i64).min(end.saturating_sub(now));
        if lifetime <= 0 {
            return Err(oauth("invalid_grant", "the subject token has expired"));
        }

        for role in &roles {
            let d = self
                .decider
                .decide_exchange(&gatehouse_policy::ExchangeRequest {
                    principal: &principal,
                    role,
                    source_ip: adm.client,
                    host: &adm.host,
                    environment: environment.as_deref(),
                    lifetime,
                });
            if !d.allowed {
                rec.policy = Some(d.deciding_policy());
                rec.reason = Some(d.reason.clone());
                return Err(OAuthError {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid_scope",
                    description: format!("role {role} is not granted ({})", d.reason),
                });
            }
            rec.policy = Some(d.deciding_policy());
        }

        // Bought with the subject token: revoking it (or what it was bought with) revokes this.
        let mut derived_from = principal.derived_from.clone();
        derived_from.extend(principal.token_id.clone());
        if derived_from.len() > MAX_CHAIN {
            return Err(oauth(
                "invalid_request",
                "the subject token was itself exchanged too many times",
            ));
        }
        let (token, exp) = own
            .issue(
                &TokenRequest {
                    subject: principal.subject.clone(),
                    username: Some(principal.username.clone()),
                    groups: roles.clone(),
                    ttl: Some(std::time::Duration::from_secs(lifetime as u64)),
                    name: principal.display_name.clone(),
                    email: principal.email.clone(),
                    kind: principal.kind,
                    environment: environment.clone(),
                    derived_from: derived_from.clone(),
                    workload: principal.workload.clone(),
                },
                now,
            )
            .map_err(|e| OAuthError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "server_error",
                description: format!("the token could not be issued: {e}"),
            })?;
        rec.reason = Some("token_exchanged".into());
        rec.detail = Some(format!(
            "roles {} environment {} from {} expires {}",
            roles.join(","),
            environment.as_deref().unwrap_or("-"),
            principal.issuer,
            UnixTime::from_secs(exp).to_rfc3339()
        ));
        Ok(serde_json::json!({
            "access_token": token.expose(),
            "issued_token_type": gatehouse_authn::ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": exp - now,
            "scope": roles.join(" "),
        }))
    }
}
