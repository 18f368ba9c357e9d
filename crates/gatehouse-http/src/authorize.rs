//! Phase 4: the policy's decision on the request as classified. An LFS batch says in its body
//! whether it downloads or uploads: that body (at most 1 MiB) is read for its `operation`, and
//! handed on whole. A refusal is a 403 with the deciding policy's reason, on record.

use gatehouse_audit::AuditRecord;
use gatehouse_core::{Action, Principal};
use gatehouse_git::{Classified, LfsOperation, RequestKind, lfs_batch_operation};
use gatehouse_policy::{AuthzRequest, RequestFacts};
use http::Request;

use crate::body::{Body, full};
use crate::proxy::{Admitted, Gateway, describe, read_limited};
use crate::respond::{ClientKind, Refusal};

/// The largest LFS batch body read for its `operation`.
pub(crate) const MAX_LFS_BATCH_BODY: usize = 1024 * 1024;

/// The action an LFS batch body asks for, read as the forge reads it.
pub(crate) fn lfs_batch_action(body: &[u8]) -> Result<Action, Refusal> {
    match lfs_batch_operation(body) {
        Ok(LfsOperation::Download) => Ok(Action::LfsRead),
        Ok(LfsOperation::Upload) => Ok(Action::LfsWrite),
        Err(e) => Err(Refusal::BadRequest {
            code: "bad_lfs_batch",
            detail: e.to_string(),
        }),
    }
}

impl Gateway {
    /// Decides the request; `Ok` with the request (its body put back when read) and the action
    /// decided. The action is on the record and in `action_label` either way.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn authorize(
        &self,
        req: Request<Body>,
        principal: &Principal,
        c: &Classified,
        adm: &Admitted,
        method: &str,
        rec: &mut AuditRecord,
        kind: ClientKind,
        action_label: &mut &'static str,
    ) -> Result<(Request<Body>, Action), (Refusal, ClientKind)> {
        let (req, action) = if c.kind == RequestKind::LfsBatch {
            let (parts, body) = req.into_parts();
            let bytes = read_limited(body, MAX_LFS_BATCH_BODY)
                .await
                .map_err(|r| (r, kind))?;
            let action = lfs_batch_action(&bytes).map_err(|r| (r, kind))?;
            (Request::from_parts(parts, full(bytes)), action)
        } else {
            (req, c.action)
        };
        *action_label = action.as_str();
        rec.action = Some(action.as_str());
        let decision = self.decider.decide(&AuthzRequest {
            principal,
            action,
            resource: &c.resource,
            facts: RequestFacts {
                source_ip: adm.client,
                method,
                host: &adm.host,
                wiki: c.wiki,
                via: c.via,
                git_ref: None,
            },
        });
        rec.policy = Some(decision.deciding_policy());
        rec.reason = Some(decision.reason.clone());
        if !decision.allowed {
            rec.decision = Some("deny");
            return Err((
                Refusal::Forbidden {
                    reason: decision.reason,
                    what: describe(action, &c.resource),
                },
                kind,
            ));
        }
        rec.decision = Some("allow");
        Ok((req, action))
    }
}
