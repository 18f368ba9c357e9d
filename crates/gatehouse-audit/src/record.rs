use serde::Serialize;

/// Who made the request, as far as the audit trail needs to know.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditPrincipal {
    /// `user` or `service`.
    pub kind: &'static str,
    /// The credential's subject.
    pub subject: String,
    /// The credential's issuer.
    pub issuer: String,
    /// The forge user name.
    pub username: String,
    /// Group memberships.
    pub groups: Vec<String>,
    /// The credential's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

impl AuditPrincipal {
    /// What the audit trail keeps of a principal (never a credential).
    pub fn of(p: &gatehouse_core::Principal) -> Self {
        Self {
            kind: p.kind.as_str(),
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
            username: p.username.clone(),
            groups: p.groups.clone(),
            token_id: p.token_id.clone(),
        }
    }
}

/// One ref a push asked to change, and what the policy said.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRef {
    /// The full ref name.
    pub name: String,
    /// `create`, `update` or `delete`.
    pub op: &'static str,
    /// The old object id.
    pub old: String,
    /// The new object id.
    pub new: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The reason code.
    pub reason: String,
}

impl AuditRef {
    /// A ref update (`op` is `create`, `update` or `delete`) and what the policy said about it.
    pub fn decided(
        name: &str,
        op: &'static str,
        old: &str,
        new: &str,
        d: &gatehouse_core::Decision,
    ) -> Self {
        Self {
            name: name.to_owned(),
            op,
            old: old.to_owned(),
            new: new.to_owned(),
            decision: if d.allowed { "allow" } else { "deny" },
            reason: d.reason.clone(),
        }
    }
}

/// One audited event. Field order is the order on disk.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// `request`, `gateway_start` or `gateway_stop`.
    pub event: &'static str,
    /// The request id (also sent upstream as `X-Request-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The authenticated caller, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<AuditPrincipal>,
    /// Why authentication failed, when it did (a stable description, never the credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authn_error: Option<String>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Request method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The normalized path (or the raw one, when it could not be normalized).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The classified action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The repository, `owner/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// `allow`, `deny` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// The deciding policy ids, or `default-deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The stable reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a push: every ref update it asked for, with the decision on each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refs: Option<Vec<AuditRef>>,
    /// The status sent to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Time from request arrival to the end of the response body, in milliseconds.
    pub duration_ms: f64,
    /// `complete`, or `aborted` when the client went away before the response ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// Free-form detail for non-request events (e.g. the version at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
