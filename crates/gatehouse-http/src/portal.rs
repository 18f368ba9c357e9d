//! Gatehouse's own endpoints under `/.gatehouse/`: browser sign-in (chooser, callback),
//! sign-out, the who-am-I page, and the settings `gatehouse login` reads. The flows themselves
//! live in gatehouse-session; this module turns them into HTTP.

use std::sync::Arc;

use gatehouse_audit::AuditRecord;
use gatehouse_authn::AuthnError;
use gatehouse_core::{Action, Principal, RepoRef, Resource, Route, UnixTime, Via};
use gatehouse_git::ForgeFlavor;
use gatehouse_policy::{AuthzRequest, RequestFacts};
use gatehouse_session::{
    ActiveSession, EnvironmentBinding, SessionError, Sessions, safe_return_to,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::pages::{self, Access, ChooserEntry, SessionView, WebAccess, WhoAmI};
use gatehouse_audit::AuditPrincipal;

use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal, typed_response};

/// The longest form body read (the sign-out form).
const MAX_FORM: usize = 4096;
/// Most repositories checked for the who-am-I page.
const MAX_LISTED_REPOS: usize = 500;

/// Whether a request looks like a browser navigating (it wants HTML).
pub(crate) fn wants_html(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Whether a state-changing request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none` (what browsers send), or, without it, an `Origin` naming another
/// host. Requests with neither are not from a browser's cross-site context.
pub(crate) fn cross_site(h: &HeaderMap, host: &str) -> bool {
    if let Some(site) = h.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => url::Url::parse(origin)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .is_none_or(|o| o != host),
    }
}

/// The refusal of a state-changing request (not `GET`, `HEAD` or `OPTIONS`) that a browser says
/// another site made it send ([`cross_site`]), whatever credential it carries: a browser sends a
/// session cookie, cached Basic credentials and client certificates alike. `what` names the
/// request in the refusal.
pub(crate) fn cross_site_write(
    h: &HeaderMap,
    host: &str,
    method: &str,
    what: &str,
) -> Option<Refusal> {
    (!matches!(method, "GET" | "HEAD" | "OPTIONS") && cross_site(h, host)).then(|| {
        Refusal::Forbidden {
            reason: "cross_site_request".into(),
            what: format!("{what} from another site"),
        }
    })
}

pub(crate) fn cookie_headers(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// No credential was presented.
pub(crate) fn missing(kind: ClientKind) -> (Refusal, ClientKind) {
    (
        Refusal::Unauthenticated {
            error: AuthnError::Missing,
            presented: false,
        },
        kind,
    )
}

/// The response sending a browser to sign in, then back to `return_to`.
pub(crate) fn login_redirect(sessions: &Sessions, return_to: &str) -> Response<Body> {
    let location = format!(
        "{}/.gatehouse/login?return_to={}",
        sessions.external_url(),
        pages::query_value(&safe_return_to(return_to))
    );
    redirect(StatusCode::FOUND, &location)
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = typed_response(status, "", "text/plain; charset=utf-8", "no-store");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn add_cookie(r: &mut Response<Body>, c: &str) {
    if let Ok(v) = HeaderValue::from_str(c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

impl Gateway {
    /// Content-Security-Policy of Gatehouse's pages: nothing but inline style; forms post only to
    /// Gatehouse and (after a redirect) the sign-in providers.
    fn html(&self, status: StatusCode, body: String) -> Response<Body> {
        let mut r = typed_response(status, body, "text/html; charset=utf-8", "no-store");
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'{}; frame-ancestors 'none'; base-uri 'none'",
            self.portal_form_targets()
        )) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        r
    }

    fn portal_form_targets(&self) -> String {
        let Some(s) = &self.sessions else {
            return String::new();
        };
        let mut out = String::new();
        for p in s.providers() {
            if let Ok(u) = url::Url::parse(p.issuer()) {
                let origin = u.origin().ascii_serialization();
                if !out.contains(&origin) {
                    out.push(' ');
                    out.push_str(&origin);
                }
            }
        }
        out
    }

    /// The session named by the request's cookie, if any (renewed when due).
    pub(crate) async fn session_of(
        &self,
        h: &HeaderMap,
        request_id: &str,
    ) -> Result<Option<ActiveSession>, (Refusal, ClientKind)> {
        let Some(sessions) = &self.sessions else {
            return Ok(None);
        };
        if cookie_headers(h).next().is_none() {
            return Ok(None);
        }
        let session = sessions.resolve(cookie_headers(h)).await.map_err(|e| {
            tracing::error!(request_id = %request_id, error = %e, "session lookup failed");
            (
                Refusal::Unauthenticated {
                    error: AuthnError::Internal("session store".into()),
                    presented: true,
                },
                ClientKind::Api,
            )
        })?;
        // A revoked session (or one of a revoked subject) is no session: the browser is sent to
        // sign in again, which a revoked subject cannot.
        Ok(session.filter(|s| {
            let revoked = self.decider.authn().revoked(&s.principal);
            if let Some(r) = revoked {
                tracing::info!(request_id = %request_id, reason = r.reason(), "revoked session refused");
            }
            revoked.is_none()
        }))
    }

    /// Serves `/.gatehouse/...`.
    pub(crate) async fn portal(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        rec.action = Some("gatehouse");
        rec.decision = Some("allow");
        rec.reason = Some("gatehouse_endpoint".into());
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let not_found = || {
            (
                Refusal::BadRequest {
                    code: "not_found",
                    detail: "no such Gatehouse endpoint".into(),
                },
                ClientKind::Api,
            )
        };
        // The endpoints a gateway answers often (forward auth, Envoy's HTTP ext_authz) are
        // awaited in place; the others are boxed, so that their futures (a store transaction is
        // kilobytes of state) do not make this one that large: it is moved whole when it is
        // boxed, and a request's future of 19 KB cost a proxied request 6% of its CPU.
        match (path.as_str(), get) {
            ("/.gatehouse" | "/.gatehouse/", true) => {
                Box::pin(self.whoami(req.headers(), adm, rec)).await
            }
            ("/.gatehouse/login", true) => Box::pin(self.login(query.as_deref(), rec)).await,
            ("/.gatehouse/callback", true) => {
                Box::pin(self.callback(req.headers(), query.as_deref(), rec)).await
            }
            ("/.gatehouse/logout", _) => Box::pin(self.logout(req, adm, rec)).await,
            ("/.gatehouse/signed-out", true) => Ok(self.html(
                StatusCode::OK,
                pages::message(
                    "Signed out",
                    "You are signed out of Gatehouse.",
                    Some(("/.gatehouse/login", "Sign in again")),
                    false,
                ),
            )),
            ("/.gatehouse/cli", true) => Ok(self.cli_settings()),
            ("/.gatehouse/auth", _) => self.forward_auth(req, adm, rec).await,
            (p, _)
                if p.starts_with(crate::ext_authz_http::PREFIX)
                    && p[crate::ext_authz_http::PREFIX.len()..].starts_with('/') =>
            {
                self.ext_authz_http(req, adm, rec)
                    .await
                    .map_err(crate::ext_authz_http::no_server_errors)
            }
            ("/.gatehouse/ssh/cert", false) if req.method() == Method::POST => {
                Box::pin(self.ssh_cert(req, adm, rec)).await
            }
            ("/.gatehouse/token", false) if req.method() == Method::POST => {
                Box::pin(self.token_exchange(req, adm, rec)).await
            }
            (p, _)
                if p == "/.gatehouse/secrets"
                    || p.starts_with("/.gatehouse/secrets/")
                    || p.starts_with("/.gatehouse/secrets:") =>
            {
                Box::pin(self.secrets_api(req, adm, rec)).await
            }
            ("/.gatehouse/jobs:mint", _) => Box::pin(self.mint_job_token(req, adm, rec)).await,
            (p, _)
                if p.len() > crate::hooks_api::HOOKS_PREFIX.len()
                    && p.starts_with(crate::hooks_api::HOOKS_PREFIX) =>
            {
                Box::pin(self.hook_delivery(req, rec)).await
            }
            (p, _)
                if p == "/.gatehouse/deliveries"
                    || p.starts_with("/.gatehouse/deliveries/")
                    || p.starts_with("/.gatehouse/deliveries:") =>
            {
                Box::pin(self.deliveries_api(req, adm, rec)).await
            }
            (p, _) if p == "/.gatehouse/leases" || p.starts_with("/.gatehouse/leases/") => {
                Box::pin(self.leases_api(req, adm, rec)).await
            }
            (p, _)
                if [
                    "/.gatehouse/envs",
                    "/.gatehouse/revocations",
                    "/.gatehouse/jobs",
                ]
                .iter()
                .any(|base| {
                    p == *base || p.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
                }) =>
            {
                Box::pin(self.state_api(req, adm, rec)).await
            }
            _ => Err(not_found()),
        }
    }

    fn sessions(&self) -> Result<&Arc<Sessions>, (Refusal, ClientKind)> {
        self.sessions.as_ref().ok_or((
            Refusal::BadRequest {
                code: "sign_in_not_configured",
                detail: "browser sign-in is not configured on this gateway".into(),
            },
            ClientKind::Api,
        ))
    }

    async fn login(
        &self,
        query: Option<&str>,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let sessions = self.sessions()?;
        let mut return_to = "/".to_owned();
        let mut provider = None;
        let mut environment = None;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "return_to" => return_to = safe_return_to(&v),
                "provider" => provider = v.parse::<usize>().ok(),
                "environment" if !v.is_empty() => environment = Some(v.into_owned()),
                _ => {}
            }
        }
        // A sign-in for an environment makes a session bound to it: it ends with the
        // environment. Binding only narrows a session, so any live environment may be named.
        let binding = match &environment {
            None => None,
            Some(id) => match self.environment_binding(id).await {
                Ok(b) => Some(b),
                Err(why) => {
                    rec.decision = Some("deny");
                    rec.reason = Some("environment_not_live".into());
                    return Ok(self.html(
                        StatusCode::BAD_REQUEST,
                        pages::message("Sign-in failed", &why, None, true),
                    ));
                }
            },
        };
        let env_param = environment
            .as_deref()
            .map(|e| format!("&environment={}", pages::query_value(e)))
            .unwrap_or_default();
        let n = match (provider, sessions.providers().len()) {
            (_, 0) => {
                return Err(self.sessions().err().unwrap_or((
                    Refusal::BadRequest {
                        code: "sign_in_not_configured",
                        detail: "no issuer has `login` configured".into(),
                    },
                    ClientKind::Api,
                )));
            }
            (Some(n), _) => n,
            (None, 1) => 0,
            (None, _) => {
                let entries: Vec<ChooserEntry> = sessions
                    .providers()
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ChooserEntry {
                        name: p.display_name().to_owned(),
                        href: format!(
                            "/.gatehouse/login?provider={i}&return_to={}{env_param}",
                            pages::query_value(&return_to)
                        ),
                    })
                    .collect();
                return Ok(self.html(StatusCode::OK, pages::chooser(&entries)));
            }
        };
        match sessions.begin(n, &return_to, binding).await {
            Ok(start) => {
                let mut r = redirect(StatusCode::FOUND, &start.location);
                add_cookie(&mut r, &start.set_cookie);
                Ok(r)
            }
            Err(e) => Ok(self.sign_in_error(&e, rec)),
        }
    }

    /// The binding of a sign-in to the live environment `id`, or why there is none (safe to
    /// show).
    async fn environment_binding(&self, id: &str) -> Result<EnvironmentBinding, String> {
        let Some(state) = &self.state else {
            return Err("Environments are not enabled on this gateway.".into());
        };
        let now = self.clock.now().as_secs();
        match state.environment(id).await {
            Ok(Some(e)) if e.is_live(now) => Ok(EnvironmentBinding {
                id: e.id,
                expires_at: e.expires_at,
            }),
            Ok(Some(_)) => Err(format!("Environment {id} has ended.")),
            Ok(None) => Err(format!("There is no environment {id}.")),
            Err(e) => {
                tracing::error!(error = ?e, "environment lookup failed");
                Err("The environment cannot be looked up now; try again shortly.".into())
            }
        }
    }

    fn sign_in_error(&self, e: &SessionError, rec: &mut AuditRecord) -> Response<Body> {
        rec.decision = Some(if e.is_server_error() { "error" } else { "deny" });
        rec.reason = Some(e.code().into());
        if e.is_server_error() {
            tracing::warn!(error = ?e, "sign-in failed");
        } else {
            tracing::info!(reason = e.code(), "sign-in refused");
        }
        let status = if e.is_server_error() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        self.html(
            status,
            pages::message(
                "Sign-in failed",
                &format!("{e}."),
                Some(("/.gatehouse/login", "Start again")),
                true,
            ),
        )
    }

    async fn callback(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let sessions = self.sessions()?;
        match sessions.finish(query, cookie_headers(headers)).await {
            Ok(done) => {
                rec.principal = Some(AuditPrincipal::from(done.principal.clone()));
                rec.reason = Some("signed_in".into());
                tracing::info!(user = %done.principal.username, issuer = %done.principal.issuer, "signed in");
                let mut r = redirect(StatusCode::FOUND, &done.location);
                for c in &done.set_cookies {
                    add_cookie(&mut r, c);
                }
                Ok(r)
            }
            Err(e) => {
                let mut r = self.sign_in_error(&e, rec);
                // A failed sign-in leaves no sign-in cookie behind.
                add_cookie(
                    &mut r,
                    &gatehouse_session::set_cookie(gatehouse_session::LOGIN_COOKIE, "", 0),
                );
                Ok(r)
            }
        }
    }

    async fn logout(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let sessions = self.sessions()?.clone();
        let session = self.session_of(req.headers(), &adm.request_id).await?;
        let Some(session) = session else {
            return Ok(redirect(StatusCode::SEE_OTHER, &sessions.signed_out_url()));
        };
        rec.principal = Some(AuditPrincipal::from(session.principal.clone()));
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return Ok(self.html(
                StatusCode::OK,
                pages::logout_confirm(&sessions.csrf_token(&session)),
            ));
        }
        if req.method() != Method::POST {
            return Err((
                Refusal::BadRequest {
                    code: "method_not_allowed",
                    detail: "sign out with POST".into(),
                },
                ClientKind::Api,
            ));
        }
        let body = crate::proxy::read_limited(req.into_body(), MAX_FORM)
            .await
            .map_err(|r| (r, ClientKind::Api))?;
        let csrf = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !sessions.csrf_ok(&session, &csrf) {
            rec.decision = Some("deny");
            rec.reason = Some("csrf_mismatch".into());
            return Ok(self.html(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Sign-out refused",
                    "The sign-out form did not come from this session.",
                    Some(("/.gatehouse/logout", "Sign out")),
                    true,
                ),
            ));
        }
        match sessions.logout(&session).await {
            Ok(out) => {
                rec.reason = Some("signed_out".into());
                let mut r = redirect(StatusCode::SEE_OTHER, &out.location);
                add_cookie(&mut r, &out.set_cookie);
                Ok(r)
            }
            Err(e) => Ok(self.sign_in_error(&e, rec)),
        }
    }

    /// Signs an SSH user certificate for the caller's public key (`gatehouse ssh-cert`). The
    /// caller authenticates like any API client (bearer token, or a browser session).
    async fn ssh_cert(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        let Some(ssh) = self.ssh.clone() else {
            return Err((
                Refusal::BadRequest {
                    code: "ssh_not_configured",
                    detail: "this gateway has no SSH front door".into(),
                },
                kind,
            ));
        };
        // A browser session may ask too, but nothing may from another site (this is a POST, and
        // a browser replays cached Basic credentials as readily as cookies).
        if let Some(refusal) = cross_site_write(
            req.headers(),
            &adm.host,
            "POST",
            "POST /.gatehouse/ssh/cert",
        ) {
            rec.decision = Some("deny");
            return Err((refusal, kind));
        }
        let principal = match self.identify(req.headers(), adm, rec, kind, true).await? {
            Some((p, _)) => p,
            None => return Err(missing(kind)),
        };
        let body = crate::proxy::read_limited(req.into_body(), 16 * 1024)
            .await
            .map_err(|r| (r, kind))?;
        let text = String::from_utf8_lossy(&body);
        let key_line = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => v["public_key"].as_str().unwrap_or("").to_owned(),
            Err(_) => text.trim().to_owned(),
        };
        let issued = ssh.issue(&key_line, &principal).map_err(|e| match e {
            crate::SshCertError::CredentialExpired => (
                Refusal::Unauthenticated {
                    error: AuthnError::Expired,
                    presented: true,
                },
                kind,
            ),
            crate::SshCertError::BadKey(e) => (
                Refusal::BadRequest {
                    code: "bad_public_key",
                    detail: format!("send an OpenSSH public key line: {e}"),
                },
                kind,
            ),
        })?;
        rec.reason = Some("ssh_cert_issued".into());
        rec.detail = Some(format!("certificate serial {}", issued.serial));
        let doc = serde_json::json!({
            "certificate": issued.certificate,
            "serial": issued.serial,
            "valid_before": UnixTime::from_secs(i64::try_from(issued.valid_before).unwrap_or(i64::MAX)).to_rfc3339(),
            "principal": principal.username,
            "ssh_address": issued.ssh_address,
            "known_hosts": issued.known_hosts,
            "host_key_fingerprint": issued.host_key_fingerprint,
        });
        Ok(typed_response(
            StatusCode::OK,
            doc.to_string(),
            "application/json",
            "no-store",
        ))
    }

    /// What `gatehouse login` needs to sign in at this gateway's issuers.
    fn cli_settings(&self) -> Response<Body> {
        let issuers: Vec<serde_json::Value> = self
            .sessions
            .iter()
            .flat_map(|s| s.providers())
            .filter_map(|p| {
                let cli = p.login().cli_client_id.as_ref()?;
                Some(serde_json::json!({
                    "issuer": p.issuer(),
                    "name": p.display_name(),
                    "client_id": cli,
                    "scopes": p.login().scopes,
                    "extra_params": p.login().extra_params,
                }))
            })
            .collect();
        typed_response(
            StatusCode::OK,
            serde_json::json!({ "issuers": issuers }).to_string(),
            "application/json",
            "public, max-age=300",
        )
    }

    async fn whoami(
        &self,
        headers: &HeaderMap,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let html = wants_html(headers);
        let kind = ClientKind::Api;
        let Some((principal, session)) = self.identify(headers, adm, rec, kind, true).await? else {
            if html && let Some(sessions) = &self.sessions {
                rec.decision = Some("deny");
                rec.reason = Some("login_required".into());
                return Ok(login_redirect(sessions, "/.gatehouse/"));
            }
            return Err(missing(kind));
        };
        let repos = self.reachable_repos(&principal, adm).await;
        let links = self.reachable_links(&principal, adm);
        let now = self.clock.now().as_secs();
        if !html {
            let doc = serde_json::json!({
                "kind": principal.kind.as_str(),
                "issuer": principal.issuer,
                "subject": principal.subject,
                "username": principal.username,
                "name": principal.display_name,
                "email": principal.email,
                "groups": principal.groups,
                "environment": principal.environment,
                "session": session.as_ref().map(|s| serde_json::json!({
                    "started_at": UnixTime::from_secs(s.created_at).to_rfc3339(),
                    "expires_at": UnixTime::from_secs(s.expires_at).to_rfc3339(),
                    "renews": s.renews,
                    "refreshes": s.refreshes,
                })),
                "repositories": repos.iter().map(|r| {
                    let mut v = serde_json::json!({
                        "repo": r.name, "read": r.read, "write": r.write,
                    });
                    if let Some(w) = r.web {
                        v["web"] = serde_json::json!({
                            "view": w.view, "work": w.work, "administer": w.administer,
                        });
                    }
                    v
                }).collect::<Vec<_>>(),
                "links": links,
            });
            return Ok(typed_response(
                StatusCode::OK,
                doc.to_string(),
                "application/json",
                "no-store",
            ));
        }
        let view = WhoAmI {
            principal: &principal,
            via: match &session {
                Some(s) => format!("browser session at {}", s.provider_name),
                None => "bearer token".to_owned(),
            },
            session: match (&session, &self.sessions) {
                (Some(s), Some(sessions)) => Some(SessionView {
                    started: UnixTime::from_secs(s.created_at).to_rfc3339(),
                    ends: UnixTime::from_secs(s.expires_at).to_rfc3339(),
                    ends_in: pages::human_duration(s.expires_at - now),
                    renews: s.renews,
                    refreshes: s.refreshes,
                    csrf: sessions.csrf_token(s),
                }),
                _ => None,
            },
            repos,
            links,
        };
        Ok(self.html(StatusCode::OK, pages::whoami(&view)))
    }

    fn facts<'a>(adm: &'a Admitted, method: &'a str, host: &'a str, via: Via) -> RequestFacts<'a> {
        RequestFacts {
            source_ip: adm.client,
            method,
            host,
            wiki: false,
            via,
            git_ref: None,
        }
    }

    /// The candidate repositories (config, policy, built-in upstream) the principal can read,
    /// with whether it can also write.
    async fn reachable_repos(&self, principal: &Principal, adm: &Admitted) -> Vec<Access> {
        let policy = self.decider.policy();
        let mut names: Vec<String> = self.settings.portal_repositories.clone();
        names.extend(policy.named_repositories());
        if let Some(dir) = &self.settings.builtin_repos_dir {
            names.extend(list_bare_repos(dir).await);
        }
        names.sort();
        names.dedup();
        names.truncate(MAX_LISTED_REPOS);
        let mut out = Vec::new();
        for name in names {
            let Some((owner, repo)) = name.split_once('/') else {
                continue;
            };
            let resource = Resource::Repo(RepoRef {
                owner: owner.to_owned(),
                name: repo.to_owned(),
            });
            let ask = |action: Action, method: &str, via: Via| {
                policy
                    .evaluate(&AuthzRequest {
                        principal,
                        action,
                        resource: &resource,
                        facts: Self::facts(adm, method, &adm.host, via),
                    })
                    .allowed
            };
            let read = ask(Action::GitRead, "GET", Via::Git);
            let write = ask(Action::GitWrite, "POST", Via::Git);
            // In a forge's web UI (asked with `via` "web": a policy may let the API do otherwise).
            let web = (self.settings.flavor != ForgeFlavor::Generic).then(|| WebAccess {
                view: ask(Action::RepoRead, "GET", Via::Web),
                work: ask(Action::RepoWrite, "POST", Via::Web),
                administer: ask(Action::RepoAdmin, "POST", Via::Web),
            });
            let any_web = web.is_some_and(|w| w.view || w.work || w.administer);
            if read || write || any_web {
                out.push(Access {
                    name,
                    read,
                    write,
                    web,
                });
            }
        }
        out
    }

    /// The configured links the principal may open (`web:access`, GET).
    fn reachable_links(&self, principal: &Principal, adm: &Admitted) -> Vec<String> {
        let policy = self.decider.policy();
        self.settings
            .portal_links
            .iter()
            .filter(|l| {
                let Ok(u) = url::Url::parse(l) else {
                    return false;
                };
                let host = u.host_str().unwrap_or("").to_ascii_lowercase();
                let resource = Resource::Route(Route {
                    host: host.clone(),
                    path: u.path().to_owned(),
                    method: "GET".to_owned(),
                });
                policy
                    .evaluate(&AuthzRequest {
                        principal,
                        action: Action::WebAccess,
                        resource: &resource,
                        facts: Self::facts(adm, "GET", &host, Via::Web),
                    })
                    .allowed
            })
            .cloned()
            .collect()
    }
}

/// `owner/repo` for every `owner/repo.git` directory under `dir`.
async fn list_bare_repos(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let Ok(owners) = std::fs::read_dir(&dir) else {
            return out;
        };
        for o in owners.flatten() {
            let Ok(repos) = std::fs::read_dir(o.path()) else {
                continue;
            };
            let owner = o.file_name().to_string_lossy().into_owned();
            for r in repos.flatten() {
                let name = r.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_suffix(".git") {
                    out.push(format!("{owner}/{n}"));
                }
                if out.len() >= MAX_LISTED_REPOS {
                    return out;
                }
            }
        }
        out
    })
    .await
    .unwrap_or_default()
}
