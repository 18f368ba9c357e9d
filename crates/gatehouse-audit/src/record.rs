use std::borrow::Cow;
use std::sync::Arc;

use gatehouse_core::{Principal, UnixTime};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Who made the request, as far as the audit trail needs to know: a shared reference to the
/// authenticated principal (the request path copies no string for it), of which the record
/// writes the kind, subject, issuer, forge user name, groups and credential id (never a
/// credential, display name or e-mail address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPrincipal(Arc<Principal>);

impl AuditPrincipal {
    /// What the audit trail keeps of a principal.
    pub fn of(p: &Arc<Principal>) -> Self {
        Self(p.clone())
    }

    /// The principal's user name.
    pub fn username(&self) -> &str {
        &self.0.username
    }

    /// The principal itself (shared, not copied).
    pub fn principal(&self) -> &Arc<Principal> {
        &self.0
    }
}

impl From<Principal> for AuditPrincipal {
    fn from(p: Principal) -> Self {
        Self(Arc::new(p))
    }
}

impl Serialize for AuditPrincipal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = &*self.0;
        let mut st = s.serialize_struct("AuditPrincipal", 8)?;
        st.serialize_field("kind", p.kind.as_str())?;
        st.serialize_field("subject", &p.subject)?;
        st.serialize_field("issuer", &p.issuer)?;
        st.serialize_field("username", &p.username)?;
        st.serialize_field("groups", &p.groups)?;
        match &p.token_id {
            Some(id) => st.serialize_field("token_id", id)?,
            None => st.skip_field("token_id")?,
        }
        match &p.environment {
            Some(env) => st.serialize_field("environment", env)?,
            None => st.skip_field("environment")?,
        }
        match &p.workload {
            Some(w) => st.serialize_field("workload", &WorkloadView(w, &p.issuer))?,
            None => st.skip_field("workload")?,
        }
        st.end()
    }
}

/// A workload's claims in a record: the fields the token had (job, run, repository, ref,
/// commit, ...), by their policy names.
struct WorkloadView<'a>(&'a gatehouse_core::Workload, &'a str);

impl Serialize for WorkloadView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0.fields() {
            if !v.is_empty() {
                m.serialize_entry(k, v)?;
            }
        }
        // What `gatehouse job end` and `gatehouse audit search --job` take.
        if let Some(id) = self.0.job_id(self.1) {
            m.serialize_entry("job_id", &id)?;
        }
        m.end()
    }
}

fn rfc3339<S: Serializer>(t: &UnixTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
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
    pub reason: Arc<str>,
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

/// The secret a request of the secrets broker was about.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq, Eq)]
pub struct AuditSecret {
    /// Its path (for a listing, the prefix).
    pub path: String,
    /// The version read or written.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<i64>,
    /// The lease a read holds (or a lease revocation is about).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lease: Option<String>,
}

/// A webhook delivery: in the record of the request that delivered it to a hook, and in the
/// record of each attempt to relay it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq, Eq)]
pub struct AuditHook {
    /// The hook.
    pub hook: String,
    /// The event.
    pub event: String,
    /// Gatehouse's delivery id (the idempotency id targets see).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivery: Option<String>,
    /// The sender's delivery id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_id: Option<String>,
    /// The account the payload names as its sender.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sender: Option<String>,
    /// The target of a relay attempt.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
    /// The attempt's number (1 for the first).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempt: Option<i64>,
    /// `delivered`, `retry` or `dead` for an attempt.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outcome: Option<String>,
    /// For a push event: who pushed through Gatehouse.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pusher: Option<String>,
    /// For a push event: whether Gatehouse allowed a push with its ref update.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub push_seen: Option<bool>,
}

/// One audited event. Field order is the order on disk.
///
/// Built on the request path and written by the audit thread: the text it shares with the
/// request (ids, addresses, the principal, the deciding policy) is shared rather than copied, and
/// the time is formatted by the writer.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct AuditRecord {
    /// When the request arrived, written as RFC 3339 text.
    #[serde(serialize_with = "rfc3339")]
    pub time: UnixTime,
    /// `request`, `gateway_start` or `gateway_stop`.
    pub event: &'static str,
    /// The request id (also sent upstream as `X-Request-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Arc<str>>,
    /// The W3C trace id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The authenticated caller, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<AuditPrincipal>,
    /// Why authentication failed, when it did (a stable description, never the credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authn_error: Option<&'static str>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    /// Request method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Cow<'static, str>>,
    /// Request host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Arc<str>>,
    /// The normalized path (or the raw one, when it could not be normalized).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The classified action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// The repository, `owner/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// `allow`, `deny` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// The deciding policy ids, or `default-deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<str>>,
    /// The stable reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<str>>,
    /// For a push: every ref update it asked for, with the decision on each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refs: Option<Vec<AuditRef>>,
    /// For a request of the secrets broker: the secret, the version and the lease (never the
    /// value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<AuditSecret>,
    /// For a webhook delivery or relay attempt: the hook, the delivery and how it went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<AuditHook>,
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
    /// In the completion record of a request that can change the forge: the `seq` of its
    /// `forwarding` record, written and synced before it was forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarding_seq: Option<u64>,
}

impl AuditRecord {
    /// The announcement of a request that can change the forge: this record as decided so far,
    /// as a `forwarding` event, to be committed ([`crate::AuditSink::commit`]) before the
    /// request goes upstream.
    pub fn forwarding(&self) -> AuditRecord {
        AuditRecord {
            event: "forwarding",
            ..self.clone()
        }
    }
}
