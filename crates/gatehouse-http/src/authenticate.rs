//! Phase 3: who is calling. The credential (`Authorization`: a bearer token, or a token as
//! Basic's password, as git sends it) or, where sessions are allowed (web routes, Gatehouse's
//! own pages), the session cookie names the caller; the forge's organisations and teams are
//! added to its groups (`[forge.groups]`); the principal goes on the record. Every front door
//! (the gateway, forward auth, Envoy's checks) and Gatehouse's own endpoints call
//! [`Gateway::identify`]: there is no other way in.

use std::sync::Arc;

use base64::Engine as _;
use gatehouse_audit::{AuditPrincipal, AuditRecord};
use gatehouse_authn::{AuthnError, Credential};
use gatehouse_core::{Principal, Redacted};
use gatehouse_git::{Classified, RequestKind};
use gatehouse_session::ActiveSession;
use http::header::{self, HeaderMap};

use crate::metrics::KindLabel;
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal};

/// The request's credential: one `Authorization` header, Bearer or Basic (the token as the
/// password, or as the user when the password is empty). Two headers, or one that is not
/// text, is malformed.
pub(crate) fn credential(h: &HeaderMap) -> Result<Option<Credential>, AuthnError> {
    let mut all = h.get_all(header::AUTHORIZATION).iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(AuthnError::Malformed);
    }
    let s = v.to_str().map_err(|_| AuthnError::Malformed)?.trim();
    let (scheme, rest) = s.split_once(' ').ok_or(AuthnError::UnsupportedScheme)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(AuthnError::Malformed);
        }
        Ok(Some(Credential::Bearer(Redacted::new(rest.to_owned()))))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthnError::Malformed)?;
        let text = String::from_utf8(raw).map_err(|_| AuthnError::Malformed)?;
        let (user, pass) = text.split_once(':').ok_or(AuthnError::Malformed)?;
        // git sends the token as the password (https://x:TOKEN@host); some tools send it as the user.
        let token = if pass.is_empty() { user } else { pass };
        if token.is_empty() {
            return Err(AuthnError::Missing);
        }
        Ok(Some(Credential::BasicToken(Redacted::new(
            token.to_owned(),
        ))))
    } else {
        Err(AuthnError::UnsupportedScheme)
    }
}

impl Gateway {
    /// Phase 3 for every HTTP front door (the gateway, forward auth, Envoy's checks) and for
    /// Gatehouse's own endpoints: the caller named by its credential (`Authorization`) or, where
    /// `sessions` allows it, by its session cookie (returned too), with its forge groups, and
    /// put on the record. `None` when the request carries neither (`rec.authn_error` says so;
    /// the front door answers it).
    pub(crate) async fn identify(
        &self,
        h: &HeaderMap,
        adm: &Admitted,
        rec: &mut AuditRecord,
        kind: ClientKind,
        sessions: bool,
    ) -> Result<Option<(Arc<Principal>, Option<ActiveSession>)>, (Refusal, ClientKind)> {
        let cred = credential(h).map_err(|e| {
            self.metrics()
                .authn_failures
                .get_or_create(&KindLabel { kind: e.code() })
                .inc();
            rec.authn_error = Some(e.code());
            (
                Refusal::Unauthenticated {
                    error: e,
                    presented: true,
                },
                kind,
            )
        })?;
        let (principal, session) = match cred {
            Some(cred) => (self.authenticate(&cred, adm, rec, kind).await?, None),
            None => match sessions {
                // Boxed: a session's lookup and renewal is kilobytes of future that a request
                // with a token never needs.
                true => match Box::pin(self.session_of(h, &adm.request_id)).await? {
                    Some(s) => (Arc::new(s.principal.clone()), Some(s)),
                    None => {
                        rec.authn_error = Some(AuthnError::Missing.code());
                        return Ok(None);
                    }
                },
                false => {
                    rec.authn_error = Some(AuthnError::Missing.code());
                    return Ok(None);
                }
            },
        };
        let principal = self.enrich(principal, adm, kind).await?;
        rec.principal = Some(AuditPrincipal::of(&principal));
        Ok(Some((principal, session)))
    }

    /// [`Self::identify`] for a classified request: sessions are for browsers on web routes
    /// (git, LFS and API clients never carry cookies, so a cookie there could only come from a
    /// browser tricked into sending it).
    pub(crate) async fn request_caller(
        &self,
        h: &HeaderMap,
        c: &Classified,
        adm: &Admitted,
        rec: &mut AuditRecord,
        kind: ClientKind,
    ) -> Result<Option<Arc<Principal>>, (Refusal, ClientKind)> {
        Ok(self
            .identify(h, adm, rec, kind, c.kind == RequestKind::Web)
            .await?
            .map(|(p, _)| p))
    }

    /// The principal with its forge groups added (when configured).
    pub(crate) async fn enrich(
        &self,
        principal: Arc<Principal>,
        adm: &Admitted,
        kind: ClientKind,
    ) -> Result<Arc<Principal>, (Refusal, ClientKind)> {
        self.decider.enrich(principal).await.map_err(|e| {
            tracing::warn!(request_id = %adm.request_id, error = %e, "refusing request: forge groups unavailable");
            (Refusal::GroupsUnavailable, kind)
        })
    }

    pub(crate) async fn authenticate(
        &self,
        cred: &Credential,
        adm: &Admitted,
        rec: &mut AuditRecord,
        kind: ClientKind,
    ) -> Result<Arc<Principal>, (Refusal, ClientKind)> {
        self.decider.authenticate(cred).await.map_err(|e| {
            self.metrics().authn_failures.get_or_create(&KindLabel { kind: e.code() }).inc();
            rec.authn_error = Some(e.code());
            if let AuthnError::Internal(detail) = &e {
                tracing::error!(request_id = %adm.request_id, %detail, "authentication failed internally");
            }
            (
                Refusal::Unauthenticated {
                    error: e,
                    presented: true,
                },
                kind,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
        );
        m
    }

    fn token(c: Result<Option<Credential>, AuthnError>) -> Option<String> {
        match c {
            Ok(Some(Credential::Bearer(t) | Credential::BasicToken(t))) => Some(t.into_inner()),
            _ => None,
        }
    }

    #[test]
    fn credentials() {
        assert_eq!(
            token(credential(&h("Bearer abc.def.ghi"))).as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            token(credential(&h("bearer   abc"))).as_deref(),
            Some("abc")
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("x:tok.en.sig");
        assert_eq!(
            token(credential(&h(&format!("Basic {basic}")))).as_deref(),
            Some("tok.en.sig")
        );
        let user_only = base64::engine::general_purpose::STANDARD.encode("tok.en.sig:");
        assert_eq!(
            token(credential(&h(&format!("Basic {user_only}")))).as_deref(),
            Some("tok.en.sig")
        );
        assert_eq!(
            credential(&h("Digest x")).err(),
            Some(AuthnError::UnsupportedScheme)
        );
        assert_eq!(
            credential(&h("Basic !!!")).err(),
            Some(AuthnError::Malformed)
        );
        assert_eq!(
            credential(&h("Bearer ")).err(),
            Some(AuthnError::UnsupportedScheme)
        );
        assert!(matches!(credential(&HeaderMap::new()), Ok(None)));
        let mut two = h("Bearer a");
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(credential(&two).err(), Some(AuthnError::Malformed));
    }
}
