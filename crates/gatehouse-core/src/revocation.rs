//! What has been revoked, held in memory so the hot path never asks a database: every front door
//! checks a caller against [`Revocations`] after authenticating it (a cached token included) and
//! again when deciding. The store fills it from its durable revocation log; this module only holds
//! and answers.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::principal::{Principal, PrincipalKind};

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// One token, by its `jti` (Gatehouse's own tokens and any issuer's that carry one).
    Token,
    /// One browser session, by the id audit records show (`session:<id>`, given without the prefix).
    Session,
    /// One SSH certificate, by its serial number (decimal).
    SshCert,
    /// Every credential of a subject: matched against the principal's subject and its username.
    Subject,
    /// A service account (any principal of kind service), by its username.
    ServiceAccount,
    /// Every credential bound to an environment (`gatehouse env end`), by the environment's id.
    Environment,
    /// Every credential of a CI job or pod (`gatehouse job end`), by its job id
    /// ([`crate::Workload::job_id`]): its workload tokens and what was bought with them.
    Job,
}

/// How long the revocation of an ended job stands (seconds): longer than the workload tokens
/// of a job live (GitHub's and Forgejo's last minutes to hours; a Kubernetes projected token as
/// long as its `expirationSeconds`, which must stay below this).
pub const JOB_ENDED_FOR: i64 = 7 * 86_400;

impl RevocationKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [RevocationKind; 7] = [
        RevocationKind::Token,
        RevocationKind::Session,
        RevocationKind::SshCert,
        RevocationKind::Subject,
        RevocationKind::ServiceAccount,
        RevocationKind::Environment,
        RevocationKind::Job,
    ];

    /// The name stored and typed on the command line: `token`, `session`, `ssh-cert`,
    /// `subject`, `service-account`, `environment`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "token",
            RevocationKind::Session => "session",
            RevocationKind::SshCert => "ssh-cert",
            RevocationKind::Subject => "subject",
            RevocationKind::ServiceAccount => "service-account",
            RevocationKind::Environment => "environment",
            RevocationKind::Job => "job",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Checks a value typed for this kind, so that a revocation that could never match is refused
    /// when it is made rather than recorded and silently ineffective.
    pub fn check_value(self, value: &str) -> Result<(), String> {
        if value.is_empty() || value.len() > 512 {
            return Err(format!(
                "a {} revocation needs a value of 1 to 512 bytes",
                self.as_str()
            ));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err("the value contains a control character".into());
        }
        match self {
            RevocationKind::SshCert if value.parse::<u64>().is_err() => Err(format!(
                "an SSH certificate is revoked by its serial, a decimal number (not {value:?})"
            )),
            // A token's id never looks like another credential's (`session:`, `cert:`,
            // `ssh-key:` are what sessions, certificates and service keys are named by): one
            // revocation must never stand for, or lift, another kind's.
            RevocationKind::Token
                if ["session:", "cert:", "ssh-key:"]
                    .iter()
                    .any(|p| value.starts_with(p)) =>
            {
                Err(format!(
                    "{value:?} names a session, certificate or key, not a token: revoke it as \
                     that"
                ))
            }
            RevocationKind::Session if value.starts_with("session:") => Err(
                "give the session id without its `session:` prefix, as `gatehouse audit` shows it \
                 after the colon"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The key a principal's `token_id` is looked up by, for the kinds that name one credential.
    fn token_key(self, value: &str) -> Option<String> {
        match self {
            RevocationKind::Token => Some(value.to_owned()),
            RevocationKind::Session => Some(format!("session:{value}")),
            RevocationKind::SshCert => Some(format!("cert:{value}")),
            RevocationKind::Subject
            | RevocationKind::ServiceAccount
            | RevocationKind::Environment
            | RevocationKind::Job => None,
        }
    }

    /// The kind a credential id names: the inverse of [`Self::token_key`].
    fn of_credential(id: &str) -> Self {
        if id.starts_with("session:") {
            RevocationKind::Session
        } else if id.starts_with("cert:") {
            RevocationKind::SshCert
        } else {
            RevocationKind::Token
        }
    }
}

impl std::fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the revocation log: a revocation made, or one lifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationChange {
    /// The log's sequence number (increasing; every node applies changes in this order).
    pub seq: i64,
    /// Revoke, or lift an earlier revocation of the same kind and value.
    pub lift: bool,
    /// What is named.
    pub kind: RevocationKind,
    /// The jti, session id, serial, subject or service account name.
    pub value: String,
    /// When the revocation lapses, in seconds since the epoch (the credential's own expiry, after
    /// which it is refused anyway); `None`: never.
    pub until: Option<i64>,
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// What matched.
    pub kind: RevocationKind,
}

impl Revoked {
    /// The reason code decisions and audit records carry: `token_revoked`, `session_revoked`,
    /// `ssh_cert_revoked`, `subject_revoked`, `service_account_revoked`, `environment_ended`.
    pub const fn reason(self) -> &'static str {
        match self.kind {
            RevocationKind::Token => "token_revoked",
            RevocationKind::Session => "session_revoked",
            RevocationKind::SshCert => "ssh_cert_revoked",
            RevocationKind::Subject => "subject_revoked",
            RevocationKind::ServiceAccount => "service_account_revoked",
            RevocationKind::Environment => "environment_ended",
            RevocationKind::Job => "job_ended",
        }
    }
}

/// The revocations in force, shared by every front door of a process. Cheap to check when empty
/// (one atomic load) and a few hash lookups otherwise.
#[derive(Debug, Default)]
pub struct Revocations {
    any: AtomicBool,
    seq: AtomicI64,
    /// When the store was last read successfully (seconds since the epoch; 0: never).
    synced_at: AtomicI64,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// By the principal's `token_id` (`jti`, `session:<id>`, `cert:<serial>`).
    credentials: HashMap<String, Option<i64>>,
    subjects: HashMap<String, Option<i64>>,
    services: HashMap<String, Option<i64>>,
    environments: HashMap<String, Option<i64>>,
    jobs: HashMap<String, Option<i64>>,
    /// The last change applied: the store checks it is still in the log where this node saw it
    /// (a log restored from a backup and written to since has other entries there).
    last: Option<RevocationChange>,
}

impl State {
    fn map(&mut self, kind: RevocationKind) -> &mut HashMap<String, Option<i64>> {
        match kind {
            RevocationKind::Token | RevocationKind::Session | RevocationKind::SshCert => {
                &mut self.credentials
            }
            RevocationKind::Subject => &mut self.subjects,
            RevocationKind::ServiceAccount => &mut self.services,
            RevocationKind::Environment => &mut self.environments,
            RevocationKind::Job => &mut self.jobs,
        }
    }

    fn is_empty(&self) -> bool {
        self.credentials.is_empty()
            && self.subjects.is_empty()
            && self.services.is_empty()
            && self.environments.is_empty()
            && self.jobs.is_empty()
    }
}

fn in_force(until: Option<i64>, now: i64) -> bool {
    until.is_none_or(|u| now <= u)
}

impl Revocations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the store was read successfully at `now` (seconds since the epoch).
    pub fn mark_synced(&self, now: i64) {
        self.synced_at.store(now, Ordering::Release);
    }

    /// When the store was last read successfully (0: never): how stale this node's view may be.
    pub fn synced_at(&self) -> i64 {
        self.synced_at.load(Ordering::Acquire)
    }

    /// How many revocations are held (lapsed ones until the next prune).
    pub fn len(&self) -> usize {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.credentials.len()
            + st.subjects.len()
            + st.services.len()
            + st.environments.len()
            + st.jobs.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// The sequence number of the last change applied (0: none).
    pub fn seq(&self) -> i64 {
        self.seq.load(Ordering::Acquire)
    }

    /// The last change applied (`None`: none yet).
    pub fn last_applied(&self) -> Option<RevocationChange> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.last.clone()
    }

    /// Applies changes in log order. Changes at or below [`Self::seq`] were applied already and
    /// are skipped, so a batch read twice (a notification and a poll racing) does no harm.
    pub fn apply<'a>(&self, changes: impl IntoIterator<Item = &'a RevocationChange>) {
        // A poisoned lock only means a panic elsewhere mid-update of plain maps: keep going.
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let seq = self.seq.load(Ordering::Acquire);
        let seq = Self::apply_to(&mut st, seq, changes);
        self.any.store(!st.is_empty(), Ordering::Release);
        self.seq.store(seq, Ordering::Release);
    }

    fn apply_to<'a>(
        st: &mut State,
        mut seq: i64,
        changes: impl IntoIterator<Item = &'a RevocationChange>,
    ) -> i64 {
        let mut last = None;
        for c in changes {
            if c.seq <= seq {
                continue;
            }
            seq = c.seq;
            last = Some(c);
            let key = c
                .kind
                .token_key(&c.value)
                .unwrap_or_else(|| c.value.clone());
            let map = st.map(c.kind);
            if c.lift {
                map.remove(&key);
            } else {
                map.insert(key, c.until);
            }
        }
        if let Some(c) = last {
            st.last = Some(c.clone());
        }
        seq
    }

    /// Forgets everything and applies `changes` from the start: for a log that went backwards
    /// (a store restored from a backup), which [`Self::apply`] would otherwise skip. The new
    /// set is built aside and swapped in under one lock: no check ever sees it half-built.
    pub fn replace<'a>(&self, changes: impl IntoIterator<Item = &'a RevocationChange>) {
        let mut fresh = State::default();
        let seq = Self::apply_to(&mut fresh, 0, changes);
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        *st = fresh;
        self.any.store(!st.is_empty(), Ordering::Release);
        self.seq.store(seq, Ordering::Release);
    }

    /// Drops revocations that lapsed before `now` (their credentials have expired anyway).
    pub fn prune(&self, now: i64) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        for kind in [
            RevocationKind::Token,
            RevocationKind::Subject,
            RevocationKind::ServiceAccount,
            RevocationKind::Environment,
            RevocationKind::Job,
        ] {
            st.map(kind).retain(|_, until| in_force(*until, now));
        }
        self.any.store(!st.is_empty(), Ordering::Release);
    }

    /// Whether `p` is refused, and for what, at `now` (seconds since the epoch).
    pub fn check(&self, p: &Principal, now: i64) -> Option<Revoked> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let hit = |m: &HashMap<String, Option<i64>>, k: &str| {
            m.get(k).is_some_and(|until| in_force(*until, now))
        };
        // The credential itself, or one it was bought with: revoked as that one is.
        if let Some(id) = p
            .token_id
            .iter()
            .chain(&p.derived_from)
            .find(|id| hit(&st.credentials, id))
        {
            return Some(Revoked {
                kind: RevocationKind::of_credential(id),
            });
        }
        if hit(&st.subjects, &p.subject) || hit(&st.subjects, &p.username) {
            return Some(Revoked {
                kind: RevocationKind::Subject,
            });
        }
        if p.kind == PrincipalKind::Service && hit(&st.services, &p.username) {
            return Some(Revoked {
                kind: RevocationKind::ServiceAccount,
            });
        }
        if let Some(env) = &p.environment
            && hit(&st.environments, env)
        {
            return Some(Revoked {
                kind: RevocationKind::Environment,
            });
        }
        if !st.jobs.is_empty()
            && let Some(job) = p.workload.as_ref().and_then(|w| w.job_id(&p.issuer))
            && hit(&st.jobs, &job)
        {
            return Some(Revoked {
                kind: RevocationKind::Job,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(kind: PrincipalKind, subject: &str, user: &str, token: Option<&str>) -> Principal {
        Principal {
            kind,
            issuer: "https://idp".into(),
            subject: subject.into(),
            username: user.into(),
            display_name: None,
            email: None,
            groups: vec![],
            token_id: token.map(str::to_owned),
            expires_at: None,
            environment: None,
            workload: None,
            derived_from: Vec::new(),
        }
    }

    fn change(seq: i64, lift: bool, kind: RevocationKind, value: &str) -> RevocationChange {
        RevocationChange {
            seq,
            lift,
            kind,
            value: value.into(),
            until: None,
        }
    }

    #[test]
    fn each_kind_matches_what_it_names_and_nothing_else() {
        let r = Revocations::new();
        let alice = principal(PrincipalKind::User, "s-alice", "alice", Some("jti-1"));
        assert_eq!(r.check(&alice, 0), None, "empty set refuses nobody");
        r.apply(&[change(1, false, RevocationKind::Token, "jti-1")]);
        assert_eq!(
            r.check(&alice, 0).map(|x| x.kind),
            Some(RevocationKind::Token)
        );
        let other = principal(PrincipalKind::User, "s-alice", "alice", Some("jti-2"));
        assert_eq!(
            r.check(&other, 0),
            None,
            "another token of the same subject"
        );

        r.apply(&[change(2, false, RevocationKind::Session, "ab12")]);
        let s = principal(PrincipalKind::User, "s-bob", "bob", Some("session:ab12"));
        assert_eq!(r.check(&s, 0).map(|x| x.reason()), Some("session_revoked"));
        // A token whose jti is spelled like the session's bare id is a different credential.
        let t = principal(PrincipalKind::User, "s-bob", "bob", Some("ab12"));
        assert_eq!(r.check(&t, 0), None);

        r.apply(&[change(3, false, RevocationKind::SshCert, "77")]);
        let c = principal(PrincipalKind::User, "s-carol", "carol", Some("cert:77"));
        assert_eq!(r.check(&c, 0).map(|x| x.reason()), Some("ssh_cert_revoked"));

        r.apply(&[change(4, false, RevocationKind::Subject, "dave")]);
        let d = principal(PrincipalKind::User, "s-dave", "dave", None);
        assert_eq!(r.check(&d, 0).map(|x| x.reason()), Some("subject_revoked"));
        r.apply(&[change(5, false, RevocationKind::Subject, "s-erin")]);
        let e = principal(PrincipalKind::User, "s-erin", "erin", Some("t"));
        assert!(
            r.check(&e, 0).is_some(),
            "by subject as well as by username"
        );

        r.apply(&[change(6, false, RevocationKind::ServiceAccount, "ci-bot")]);
        let bot = principal(PrincipalKind::Service, "x", "ci-bot", None);
        assert_eq!(
            r.check(&bot, 0).map(|x| x.reason()),
            Some("service_account_revoked")
        );
        let person = principal(PrincipalKind::User, "x", "ci-bot", None);
        assert_eq!(
            r.check(&person, 0),
            None,
            "a person named like a service account"
        );
    }

    #[test]
    fn lifting_restores_and_old_changes_are_not_applied_again() {
        let r = Revocations::new();
        let p = principal(PrincipalKind::User, "s", "u", Some("j"));
        r.apply(&[
            change(1, false, RevocationKind::Token, "j"),
            change(2, true, RevocationKind::Token, "j"),
        ]);
        assert_eq!(r.check(&p, 0), None);
        assert_eq!(r.seq(), 2);
        // The same batch again (a poll racing a notification) must not re-revoke.
        r.apply(&[change(1, false, RevocationKind::Token, "j")]);
        assert_eq!(r.check(&p, 0), None);
        r.apply(&[change(3, false, RevocationKind::Token, "j")]);
        assert!(r.check(&p, 0).is_some());
    }

    #[test]
    fn a_log_that_went_backwards_is_applied_from_scratch() {
        let r = Revocations::new();
        let p = principal(PrincipalKind::User, "s", "u", Some("j"));
        r.apply(&[
            change(1, false, RevocationKind::Token, "j"),
            change(2, false, RevocationKind::Token, "k"),
        ]);
        // The store was restored to before seq 2, then got a new entry 2.
        r.replace(&[
            change(1, false, RevocationKind::Token, "x"),
            change(2, false, RevocationKind::Token, "y"),
        ]);
        assert_eq!(
            r.check(&p, 0),
            None,
            "what the restored log does not hold is gone"
        );
        let y = principal(PrincipalKind::User, "s", "u", Some("y"));
        assert!(r.check(&y, 0).is_some());
        assert_eq!(r.seq(), 2);
    }

    #[test]
    fn a_revocation_lapses_with_the_credential() {
        let r = Revocations::new();
        let p = principal(PrincipalKind::User, "s", "u", Some("j"));
        r.apply(&[RevocationChange {
            until: Some(100),
            ..change(1, false, RevocationKind::Token, "j")
        }]);
        assert!(r.check(&p, 100).is_some());
        assert!(r.check(&p, 101).is_none());
        r.prune(101);
        assert!(!r.any.load(Ordering::Acquire), "pruned to empty");
    }

    #[test]
    fn values_that_could_never_match_are_refused() {
        assert!(RevocationKind::SshCert.check_value("12x").is_err());
        assert!(RevocationKind::SshCert.check_value("12").is_ok());
        assert!(RevocationKind::Session.check_value("session:ab").is_err());
        assert!(RevocationKind::Token.check_value("").is_err());
        assert!(RevocationKind::Token.check_value("session:ab").is_err());
        assert!(RevocationKind::Token.check_value("cert:12").is_err());
        assert!(RevocationKind::Subject.check_value("a\nb").is_err());
        for k in RevocationKind::ALL {
            assert_eq!(RevocationKind::parse(k.as_str()), Some(k));
        }
    }
}
