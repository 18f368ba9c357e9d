//! Workload identity: the `bound_claims` an issuer's tokens must satisfy, and the claims of a CI
//! job's or pod's token read into [`Workload`] for the policy.
//!
//! Claim names per platform are the ones its issuer signs (read from their sources):
//! - GitHub Actions: `repository`, `repository_owner`, `ref`, `ref_type`, `sha`, `workflow`,
//!   `check_run_id` (the job), `run_id`, `run_attempt`, `environment`, `event_name`,
//!   `runner_environment`, `actor`.
//! - Forgejo Actions (15+, `services/actions/auth.go` `IDTokenCustomClaims`): the same names,
//!   without a job, environment or runner claim; `workflow` is the workflow's file name.
//! - Kubernetes (`pkg/serviceaccount/claims.go`): `kubernetes.io.namespace`,
//!   `kubernetes.io.serviceaccount.name`, `kubernetes.io.pod.uid` (the job),
//!   `kubernetes.io.node.name` (the runner).
//! - Any other OIDC issuer: GitHub's names, and `job_id` for the job.

use std::collections::BTreeMap;

use gatehouse_config::{OneOrMany, WorkloadPlatform};
use gatehouse_core::Workload;
use serde_json::{Map, Value};

use crate::AuthnError;
use crate::claims::lookup;

/// One claim's patterns: a value passes when it matches one of `allow` (or `allow` is empty)
/// and none of `deny`.
#[derive(Debug, Clone)]
struct Rule {
    claim: String,
    allow: Vec<String>,
    deny: Vec<String>,
}

/// An issuer's `bound_claims`, ready to check tokens against.
#[derive(Debug, Clone, Default)]
pub struct BoundClaims {
    rules: Vec<Rule>,
}

impl BoundClaims {
    /// The rules of `bound_claims` (validated by the config: no empty or dangling pattern).
    pub fn new(cfg: &BTreeMap<String, OneOrMany>) -> Self {
        let rules = cfg
            .iter()
            .map(|(claim, patterns)| {
                let mut allow = Vec::new();
                let mut deny = Vec::new();
                for p in patterns.values() {
                    match p.strip_prefix('!') {
                        Some(neg) => deny.push(neg.to_owned()),
                        None => allow.push(p.clone()),
                    }
                }
                Rule {
                    claim: claim.clone(),
                    allow,
                    deny,
                }
            })
            .collect();
        Self { rules }
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Checks verified claims. A claim that is absent, or not a string, number, boolean or
    /// array of them, fails its rule: what cannot be matched is refused.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), AuthnError> {
        for r in &self.rules {
            let values = match lookup(claims, &r.claim) {
                Some(Value::Array(items)) if !items.is_empty() => {
                    let mut out = Vec::with_capacity(items.len());
                    for v in items {
                        out.push(scalar(v).ok_or_else(|| unbound(&r.claim))?);
                    }
                    out
                }
                Some(v) => vec![scalar(v).ok_or_else(|| unbound(&r.claim))?],
                None => return Err(unbound(&r.claim)),
            };
            // An array claim (`groups`-like) passes when one of its values is allowed and none
            // is denied.
            let allowed = r.allow.is_empty()
                || values
                    .iter()
                    .any(|v| r.allow.iter().any(|p| glob_match(p, v)));
            let denied = values
                .iter()
                .any(|v| r.deny.iter().any(|p| glob_match(p, v)));
            if !allowed || denied {
                return Err(unbound(&r.claim));
            }
        }
        Ok(())
    }
}

fn unbound(claim: &str) -> AuthnError {
    AuthnError::Unbound(claim.to_owned())
}

/// A claim value as text: strings as they are, numbers and booleans as JSON writes them.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `text` matches `pattern`: `*` matches any run of characters (`/` included), `?` one
/// character, `\` makes the next character literal; everything else matches itself. Linear in
/// practice, at worst `pattern.len() * text.len()` steps (the classic backtrack to the last `*`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '*' => Tok::Any,
            '?' => Tok::One,
            // A dangling escape (refused by the config) matches a literal backslash.
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|k| *k == Tok::Any)
}

/// Reads a workload token's claims for `platform`. Fails when the claims that make it a
/// workload identity are missing: a GitHub or Forgejo token without `repository`, `ref`, `sha`
/// and `run_id`, a Kubernetes token without its namespace and service account.
pub fn workload_of(
    platform: WorkloadPlatform,
    claims: &Map<String, Value>,
) -> Result<Workload, AuthnError> {
    let text = |name: &str| -> Result<String, AuthnError> {
        match lookup(claims, name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(v) => match scalar(v) {
                Some(s) if s.len() <= 1024 && !s.chars().any(char::is_control) => Ok(s),
                _ => Err(AuthnError::BadClaim(name.to_owned())),
            },
        }
    };
    let required = |name: &str| -> Result<String, AuthnError> {
        let v = text(name)?;
        if v.is_empty() {
            return Err(AuthnError::MissingClaim(name.to_owned()));
        }
        Ok(v)
    };
    let w = match platform {
        WorkloadPlatform::Kubernetes => Workload {
            platform: platform.as_str().to_owned(),
            namespace: required("kubernetes.io.namespace")?,
            service_account: required("kubernetes.io.serviceaccount.name")?,
            // The pod's uid, not its name: a StatefulSet's or runner's pod comes back under the
            // same name, and must not inherit an ended predecessor's revocation.
            job: text("kubernetes.io.pod.uid")?,
            runner: text("kubernetes.io.node.name")?,
            ..Workload::default()
        },
        WorkloadPlatform::GithubActions
        | WorkloadPlatform::ForgejoActions
        | WorkloadPlatform::Oidc => {
            let job = match platform {
                WorkloadPlatform::GithubActions => text("check_run_id")?,
                WorkloadPlatform::Oidc => match text("check_run_id")? {
                    j if j.is_empty() => text("job_id")?,
                    j => j,
                },
                _ => String::new(),
            };
            let repository = required("repository")?;
            let owner = match text("repository_owner")? {
                o if o.is_empty() => repository
                    .split_once('/')
                    .map(|(o, _)| o.to_owned())
                    .unwrap_or_default(),
                o => o,
            };
            Workload {
                platform: platform.as_str().to_owned(),
                repository,
                owner,
                git_ref: required("ref")?,
                ref_type: text("ref_type")?,
                commit: required("sha")?,
                workflow: text("workflow")?,
                job,
                run_id: required("run_id")?,
                run_attempt: text("run_attempt")?,
                environment: text("environment")?,
                event: text("event_name")?,
                runner: text("runner_environment")?,
                actor: text("actor")?,
                ..Workload::default()
            }
        }
    };
    Ok(w)
}

/// A workload as the `gatehouse_workload` claim of Gatehouse's own tokens carries it (the
/// policy's field names; empty fields left out).
pub(crate) fn workload_claim(w: &Workload) -> Value {
    let mut m = Map::new();
    for (k, v) in w.fields() {
        if !v.is_empty() {
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    }
    Value::Object(m)
}

/// The workload of a `gatehouse_workload` claim; `None` when it is not one (an unknown field, a
/// value that is not a string, no platform): a binding that cannot be read is never dropped.
pub(crate) fn workload_from_claim(v: &Value) -> Option<Workload> {
    let obj = v.as_object()?;
    let mut w = Workload::default();
    for (k, v) in obj {
        if !w.set(k, v.as_str()?.to_owned()) {
            return None;
        }
    }
    (!w.platform.is_empty()).then_some(w)
}

/// The forge user name a workload goes by when its token names none: `<platform>:<owner>:<repo>`
/// for a CI job, the subject (`system:serviceaccount:NS:NAME`) for a pod.
pub fn workload_username(w: &Workload, subject: &str) -> String {
    if w.repository.is_empty() {
        subject.to_owned()
    } else {
        format!("{}:{}", w.platform, w.repository.replace('/', ":"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bound(pairs: &[(&str, &[&str])]) -> BoundClaims {
        BoundClaims::new(
            &pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        OneOrMany::Many(v.iter().map(|s| (*s).to_owned()).collect()),
                    )
                })
                .collect(),
        )
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn globs_match_like_shell_patterns_without_path_rules() {
        for (p, t, want) in [
            ("refs/heads/*", "refs/heads/main", true),
            ("refs/heads/*", "refs/heads/feature/x", true),
            ("refs/heads/*", "refs/tags/v1", false),
            ("refs/tags/v?", "refs/tags/v1", true),
            ("refs/tags/v?", "refs/tags/v10", false),
            ("acme/*", "acme/api", true),
            ("acme/*", "acme-evil/api", false),
            ("acme/*", "acme/", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("\\!x", "!x", true),
            ("main", "main ", false),
            ("ma?n", "mäin", false),
            ("m?in", "mäin", true),
            ("*a*a*a*a*a*b", &"a".repeat(64), false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} ~ {t:?}");
        }
    }

    #[test]
    fn bound_claims_match_exactly_by_glob_and_by_negation() {
        let b = bound(&[
            ("repository", &["acme/*"]),
            ("ref", &["refs/heads/*", "refs/tags/*", "!refs/heads/dev*"]),
            ("event_name", &["!pull_request*"]),
        ]);
        let ok = claims(
            json!({"repository": "acme/api", "ref": "refs/heads/main", "event_name": "push"}),
        );
        assert_eq!(b.check(&ok), Ok(()));
        for (what, c, claim) in [
            (
                "another owner",
                json!({"repository": "evil/api", "ref": "refs/heads/main", "event_name": "push"}),
                "repository",
            ),
            (
                "a negated ref",
                json!({"repository": "acme/api", "ref": "refs/heads/dev-x", "event_name": "push"}),
                "ref",
            ),
            (
                "no allowed ref",
                json!({"repository": "acme/api", "ref": "refs/pull/1/head", "event_name": "push"}),
                "ref",
            ),
            (
                "a negated event",
                json!({"repository": "acme/api", "ref": "refs/heads/main", "event_name": "pull_request_target"}),
                "event_name",
            ),
            (
                "a missing claim",
                json!({"repository": "acme/api", "ref": "refs/heads/main"}),
                "event_name",
            ),
            (
                "an object",
                json!({"repository": {"a": 1}, "ref": "refs/heads/main", "event_name": "push"}),
                "repository",
            ),
        ] {
            assert_eq!(
                b.check(&claims(c)),
                Err(AuthnError::Unbound(claim.into())),
                "{what}"
            );
        }
        // Numbers and booleans match as JSON writes them; arrays by any value, denied by any.
        let b = bound(&[("repository_id", &["42"]), ("groups", &["ci", "!banned"])]);
        assert_eq!(
            b.check(&claims(json!({"repository_id": 42, "groups": ["x", "ci"]}))),
            Ok(())
        );
        assert!(
            b.check(&claims(
                json!({"repository_id": 42, "groups": ["ci", "banned"]})
            ))
            .is_err()
        );
        assert!(
            b.check(&claims(json!({"repository_id": 42, "groups": []})))
                .is_err()
        );
        assert!(
            b.check(&claims(json!({"repository_id": "42x", "groups": ["ci"]})))
                .is_err()
        );
        // Dotted paths reach into nested objects, names with dots included.
        let b = bound(&[("kubernetes.io.namespace", &["ci-*"])]);
        assert_eq!(
            b.check(&claims(json!({"kubernetes.io": {"namespace": "ci-7"}}))),
            Ok(())
        );
        assert!(
            b.check(&claims(json!({"kubernetes.io": {"namespace": "prod"}})))
                .is_err()
        );
    }

    #[test]
    fn a_workload_survives_the_round_trip_through_gatehouses_own_claim() {
        let w = Workload {
            platform: "github-actions".into(),
            repository: "acme/api".into(),
            git_ref: "refs/heads/main".into(),
            event: "push".into(),
            ..Workload::default()
        };
        assert_eq!(workload_from_claim(&workload_claim(&w)), Some(w));
        for bad in [
            json!({"platform": "x", "evil": "1"}),
            json!({"platform": 7}),
            json!({}),
            json!("x"),
        ] {
            assert_eq!(workload_from_claim(&bad), None, "{bad}");
        }
    }

    #[test]
    fn workload_claims_are_read_by_each_platforms_names() {
        let gh = claims(json!({
            "sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api",
            "repository_owner": "acme", "ref": "refs/heads/main", "ref_type": "branch",
            "sha": "0123456789abcdef0123456789abcdef01234567", "workflow": "Deploy",
            "check_run_id": "777", "run_id": "42", "run_attempt": "1", "environment": "prod",
            "event_name": "push", "runner_environment": "github-hosted", "actor": "octocat"
        }));
        let w = workload_of(WorkloadPlatform::GithubActions, &gh).unwrap();
        assert_eq!(
            (
                w.repository.as_str(),
                w.owner.as_str(),
                w.git_ref.as_str(),
                w.job.as_str()
            ),
            ("acme/api", "acme", "refs/heads/main", "777")
        );
        assert_eq!(
            (w.environment.as_str(), w.runner.as_str()),
            ("prod", "github-hosted")
        );
        assert_eq!(workload_username(&w, "x"), "github-actions:acme:api");
        let fj = workload_of(WorkloadPlatform::ForgejoActions, &gh).unwrap();
        assert_eq!(fj.job, "", "Forgejo tokens name no job");
        let mut no_sha = gh.clone();
        no_sha.remove("sha");
        assert_eq!(
            workload_of(WorkloadPlatform::GithubActions, &no_sha),
            Err(AuthnError::MissingClaim("sha".into()))
        );
        let k8s = claims(json!({
            "sub": "system:serviceaccount:ci:builder",
            "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder", "uid": "u"},
                              "pod": {"name": "build-7", "uid": "p"}, "node": {"name": "n1", "uid": "n"}}
        }));
        let w = workload_of(WorkloadPlatform::Kubernetes, &k8s).unwrap();
        assert_eq!(
            (
                w.namespace.as_str(),
                w.service_account.as_str(),
                w.job.as_str(),
                w.runner.as_str()
            ),
            ("ci", "builder", "p", "n1")
        );
        assert_eq!(
            workload_username(&w, "system:serviceaccount:ci:builder"),
            "system:serviceaccount:ci:builder"
        );
    }
}
