//! Phase 4b: a push is decided ref by ref. The command list before the pack is read as it
//! arrives (`PushReader`, each byte looked at once, bounded by `git.max_command_list`), every
//! ref is asked of the decision core (`Decider::push_refs`), and either the request goes on
//! with the bytes read put back in front of its body (`Prefixed`), or git gets its own answer:
//! a report-status naming each refused ref, after the pack it is still sending is read and
//! dropped. Nothing of a refused push reaches the forge.

use gatehouse_audit::{AuditRecord, AuditRef};
use gatehouse_core::{Action, Principal};
use gatehouse_git::{Classified, PushReader, refused_push_report};
use gatehouse_policy::RequestFacts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;

use crate::body::{Body, BodyIdleTimeout, Prefixed};
use crate::proxy::{Admitted, Gateway, describe};
use crate::respond::{ClientKind, Refusal, typed_response};

/// What the per-ref check decided.
pub(crate) enum RefCheck {
    /// Every ref is allowed: forward the request (its body unchanged). The flag: whether the
    /// forge's report will come in side-band (`side-band-64k`); `None` when the client asked
    /// for no report, so none will say what the forge did.
    Forward(Request<Body>, Option<bool>),
    /// At least one ref is refused: this is git's answer; nothing reaches the upstream.
    Refused(Response<Body>),
}

impl Gateway {
    /// Reads a push's command list, asks the policy about each ref, and either hands the request
    /// on (with the bytes already read put back in front) or answers git itself.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn authorize_refs(
        &self,
        req: Request<Body>,
        principal: &Principal,
        c: &Classified,
        adm: &Admitted,
        method: &str,
        rec: &mut AuditRecord,
        kind: ClientKind,
    ) -> Result<RefCheck, (Refusal, ClientKind)> {
        let bad = |code: &'static str, detail: String| (Refusal::BadRequest { code, detail }, kind);
        if crate::body::is_encoded(req.headers()) {
            return Err(bad(
                "compressed_push",
                "compressed push requests are not supported; Gatehouse must read the ref updates"
                    .into(),
            ));
        }
        let (parts, mut body) = req.into_parts();
        // Every byte read is kept, to be put back in front of the body; the reader looks at each
        // once (the list is bounded by `push_limits`).
        let mut buf = bytes::BytesMut::new();
        let mut reader = PushReader::new(self.settings.push_limits);
        while !reader.is_done() {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        buf.extend_from_slice(d);
                        if let Err(e) = reader.feed(d) {
                            // A little of what the client is still sending is read and dropped,
                            // so that a client that writes its whole body before reading (git)
                            // gets the answer rather than a reset connection.
                            drain(&mut body, DRAIN_AFTER_REFUSAL).await;
                            return Err(bad("bad_push_commands", e.to_string()));
                        }
                    }
                }
                Some(Err(e)) if e.is::<BodyIdleTimeout>() => {
                    return Err((Refusal::RequestTimeout, kind));
                }
                Some(Err(_)) | None => break,
            }
        }
        let push = reader
            .finish()
            .map_err(|e| bad("bad_push_commands", e.to_string()))?;
        let decisions = self.decider.push_refs(
            principal,
            &c.resource,
            RequestFacts {
                source_ip: adm.client,
                method,
                host: &adm.host,
                wiki: c.wiki,
                via: c.via,
                git_ref: None,
            },
            &push,
        );
        rec.refs = Some(
            push.updates
                .iter()
                .zip(&decisions.per_ref)
                .map(|(u, d)| AuditRef::decided(&u.name, u.op().as_str(), &u.old, &u.new, d))
                .collect(),
        );
        let refused = decisions.refused();
        let Some(denial) = decisions.first_denial() else {
            let report = push.wants_report().then_some(push.features.side_band_64k);
            return Ok(RefCheck::Forward(
                Request::from_parts(parts, Prefixed::new(buf.freeze(), body).boxed_unsync()),
                report,
            ));
        };
        rec.decision = Some("deny");
        rec.policy = Some(denial.deciding_policy());
        rec.reason = Some(denial.reason.clone());
        // Read (and drop) the pack the client is sending, so that it gets the answer rather than
        // a broken connection.
        while let Some(Ok(_)) = body.frame().await {}
        if !push.wants_report() {
            let (i, reason) = &refused[0];
            let name = push.updates.get(*i).map_or("", |u| u.name.as_str());
            return Err((
                Refusal::Forbidden {
                    reason: reason.clone(),
                    what: format!(
                        "push to {name} of {}",
                        describe(Action::GitWrite, &c.resource)
                    ),
                },
                kind,
            ));
        }
        let resp = typed_response(
            StatusCode::OK,
            refused_push_report(&push, &refused),
            "application/x-git-receive-pack-result",
            "no-cache, max-age=0, must-revalidate",
        );
        Ok(RefCheck::Refused(resp))
    }
}

/// At most this much of a refused push's body is read (and dropped) before the refusal is sent.
const DRAIN_AFTER_REFUSAL: u64 = 8 * 1024 * 1024;

/// Reads and drops up to `limit` more bytes of `body`, stopping at its end or on an error.
async fn drain(body: &mut Body, limit: u64) {
    let mut seen = 0u64;
    while seen < limit {
        match body.frame().await {
            Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len() as u64),
            _ => break,
        }
    }
}
