/// Whether a principal is a person or a machine identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A person, signed in through an identity provider.
    User,
    /// A service account, CI job or AI agent.
    Service,
}

impl PrincipalKind {
    /// `user` or `service`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
        }
    }
}

/// An authenticated caller, as mapped from a credential's claims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Person or machine.
    pub kind: PrincipalKind,
    /// The issuer that vouched for this principal.
    pub issuer: String,
    /// The subject, unique within the issuer.
    pub subject: String,
    /// The name the forge knows the principal by (sent as `X-WEBAUTH-USER`).
    pub username: String,
    /// Display name, when the credential carried one.
    pub display_name: Option<String>,
    /// E-mail address, when the credential carried one.
    pub email: Option<String>,
    /// Group names, sorted and without duplicates.
    pub groups: Vec<String>,
    /// The credential's id (`jti`), for audit records and revocation.
    pub token_id: Option<String>,
    /// When the credential expires, in seconds since the epoch.
    pub expires_at: Option<i64>,
    /// The environment the credential is bound to (a token from an RFC 8693 exchange, an SSH
    /// certificate bought with one): ending the environment revokes it.
    pub environment: Option<String>,
    /// The ids of the credentials this one was bought with, oldest first (a token exchanged for
    /// another, an SSH certificate bought with a token): revoking any of them revokes this one.
    pub derived_from: Vec<String>,
    /// What a CI job or pod proved about itself, when the credential is a workload token.
    pub workload: Option<std::sync::Arc<Workload>>,
}

impl Workload {
    /// Every field by the name the policy, audit records and Gatehouse's own tokens give it
    /// (`ref` for `git_ref`), in the schema's order.
    pub fn fields(&self) -> [(&'static str, &str); 17] {
        // Every field by name, with no `..`: a field added does not compile until it is named.
        let Workload {
            platform,
            repository,
            owner,
            git_ref,
            ref_type,
            commit,
            workflow,
            job,
            run_id,
            run_attempt,
            environment,
            event,
            runner,
            actor,
            namespace,
            service_account,
            issuer,
        } = self;
        [
            ("platform", platform),
            ("repository", repository),
            ("owner", owner),
            ("ref", git_ref),
            ("ref_type", ref_type),
            ("commit", commit),
            ("workflow", workflow),
            ("job", job),
            ("run_id", run_id),
            ("run_attempt", run_attempt),
            ("environment", environment),
            ("event", event),
            ("runner", runner),
            ("actor", actor),
            ("namespace", namespace),
            ("service_account", service_account),
            ("issuer", issuer),
        ]
    }

    /// Sets the field `name` (as [`Self::fields`] names it) to `value`; `false`: no such field.
    pub fn set(&mut self, name: &str, value: String) -> bool {
        let slot = match name {
            "platform" => &mut self.platform,
            "repository" => &mut self.repository,
            "owner" => &mut self.owner,
            "ref" => &mut self.git_ref,
            "ref_type" => &mut self.ref_type,
            "commit" => &mut self.commit,
            "workflow" => &mut self.workflow,
            "job" => &mut self.job,
            "run_id" => &mut self.run_id,
            "run_attempt" => &mut self.run_attempt,
            "environment" => &mut self.environment,
            "event" => &mut self.event,
            "runner" => &mut self.runner,
            "actor" => &mut self.actor,
            "namespace" => &mut self.namespace,
            "service_account" => &mut self.service_account,
            "issuer" => &mut self.issuer,
            _ => return false,
        };
        *slot = value;
        true
    }

    /// The id of the job (`gatehouse job end` takes it, audit records show it): what every
    /// token of one CI job shares and no other job's does,
    /// `<issuer without scheme>/<repository or namespace>/run/<run_id>/job/<job>`, e.g.
    /// `token.actions.githubusercontent.com/acme/api/run/4242/job/31337`. The issuer keeps two
    /// forges' (or clusters') jobs apart; run and job are percent-encoded, so no repository name
    /// makes two ids equal.
    ///
    /// `None` when the token names no job: Forgejo's and GitHub Enterprise Server's tokens name
    /// only their run (and Forgejo's `run_attempt` counts each job's own attempts), so an id
    /// built from the run would stand for every job of it.
    ///
    /// The workload's own `issuer` is used when set, else `issuer` (the credential's).
    pub fn job_id(&self, issuer: &str) -> Option<String> {
        let scope = if self.repository.is_empty() {
            &self.namespace
        } else {
            &self.repository
        };
        if scope.is_empty() || self.job.is_empty() {
            return None;
        }
        let enc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
        let issuer = if self.issuer.is_empty() {
            issuer
        } else {
            &self.issuer
        };
        let iss = issuer
            .split_once("://")
            .map_or(issuer, |(_, rest)| rest)
            .trim_end_matches('/');
        let run = if self.run_id.is_empty() {
            "-".to_owned()
        } else {
            enc(&self.run_id)
        };
        let mut id = format!("{iss}/{scope}/run/{run}/job/{}", enc(&self.job));
        // Gitea re-runs a job as the same job (same run, same id): each attempt is its own job,
        // so that ending one attempt does not end the next.
        if self.platform == "gitea-actions" && !self.run_attempt.is_empty() {
            id.push_str("/attempt/");
            id.push_str(&enc(&self.run_attempt));
        }
        Some(id)
    }
}

/// What a workload token says about the CI job or pod that holds it. Every field is the claim
/// as the platform's issuer signed it, or empty when the token has none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Workload {
    /// `github-actions`, `forgejo-actions`, `kubernetes`, `oidc`, or `gatehouse` for a job token
    /// Gatehouse minted for a Gitea runner.
    pub platform: String,
    /// `owner/name`.
    pub repository: String,
    /// The repository's owner.
    pub owner: String,
    /// The full ref the job runs for (`refs/heads/main`).
    pub git_ref: String,
    /// `branch` or `tag`.
    pub ref_type: String,
    /// The commit the job runs (full hex id).
    pub commit: String,
    /// The workflow's name or file.
    pub workflow: String,
    /// The job within the workflow run.
    pub job: String,
    /// The workflow run's id.
    pub run_id: String,
    /// Which attempt of the run.
    pub run_attempt: String,
    /// The CI platform's deployment environment (`prod`), not a Gatehouse environment.
    pub environment: String,
    /// The event that started the run (`push`, `pull_request`, ...).
    pub event: String,
    /// Where it runs (`github-hosted`, `self-hosted`, a runner name).
    pub runner: String,
    /// Who started the run.
    pub actor: String,
    /// Kubernetes: the pod's namespace.
    pub namespace: String,
    /// Kubernetes: the service account's name.
    pub service_account: String,
    /// The issuer of the workload token the claims were read from: what the job's id is built
    /// with, so a token Gatehouse exchanged for the job's is still that job's.
    pub issuer: String,
}

impl Principal {
    /// Whether the principal belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups
            .binary_search_by(|g| g.as_str().cmp(group))
            .is_ok()
    }

    /// Sorts and de-duplicates the group list (what [`Principal::in_group`] relies on).
    pub fn normalize_groups(&mut self) {
        self.groups.sort();
        self.groups.dedup();
    }

    /// Everything the principal says about who it is, borrowed: what decisions and upstream
    /// assertions depend on, and so what their caches are keyed by. The credential's id and
    /// expiry are left out: a new token for the same claims gets the same answers.
    pub fn claims(&self) -> Claims<'_> {
        // Every field by name, with no `..`: a field added to `Principal` does not compile until
        // it is either part of the claims or said to be left out here.
        let Principal {
            kind,
            issuer,
            subject,
            username,
            display_name,
            email,
            groups,
            token_id: _,
            expires_at: _,
            environment: _,
            workload,
            derived_from: _,
        } = self;
        Claims {
            kind: *kind,
            issuer,
            subject,
            username,
            display_name: display_name.as_deref(),
            email: email.as_deref(),
            groups,
            workload: workload.as_deref(),
        }
    }
}

/// A principal's claims, borrowed ([`Principal::claims`]). Equal claims mean equal answers from
/// the policy and the same upstream assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claims<'a> {
    /// Person or machine.
    pub kind: PrincipalKind,
    /// The issuer that vouched for the principal.
    pub issuer: &'a str,
    /// The subject, unique within the issuer.
    pub subject: &'a str,
    /// The forge user name.
    pub username: &'a str,
    /// Display name.
    pub display_name: Option<&'a str>,
    /// E-mail address.
    pub email: Option<&'a str>,
    /// Group names, sorted and without duplicates.
    pub groups: &'a [String],
    /// The workload's claims, for a CI job or pod.
    pub workload: Option<&'a Workload>,
}

#[cfg(test)]
mod workload_tests {
    use super::Workload;

    #[test]
    fn a_job_id_names_one_job_of_one_issuer_and_nothing_else() {
        let gh = Workload {
            platform: "github-actions".into(),
            repository: "acme/api".into(),
            run_id: "42".into(),
            run_attempt: "2".into(),
            job: "31337".into(),
            ..Workload::default()
        };
        let iss = "https://token.actions.githubusercontent.com";
        assert_eq!(
            gh.job_id(iss).as_deref(),
            Some("token.actions.githubusercontent.com/acme/api/run/42/job/31337")
        );
        // Another forge's run of the same repository is another job.
        assert_ne!(
            gh.job_id(iss),
            gh.job_id("https://ghes.example.com/_services/token")
        );
        // A token that names no job (Forgejo, GHES) has no job id: one built from its run
        // would stand for every job of the run.
        let fj = Workload {
            platform: "forgejo-actions".into(),
            job: String::new(),
            ..gh.clone()
        };
        assert_eq!(fj.job_id("https://forgejo.example/api/actions"), None);
        let pod = Workload {
            platform: "kubernetes".into(),
            namespace: "ci".into(),
            job: "6f1c2d3e-uid".into(),
            ..Workload::default()
        };
        assert_eq!(
            pod.job_id("https://kubernetes.default.svc").as_deref(),
            Some("kubernetes.default.svc/ci/run/-/job/6f1c2d3e-uid")
        );
        assert_eq!(Workload::default().job_id(iss), None);
        // Slashes in run or job never make two ids equal.
        let a = Workload {
            repository: "x".into(),
            run_id: "5".into(),
            job: "6/run/7/job/8".into(),
            ..Workload::default()
        };
        let b = Workload {
            repository: "x/run/5/job/6".into(),
            run_id: "7".into(),
            job: "8".into(),
            ..Workload::default()
        };
        assert_ne!(a.job_id(iss), b.job_id(iss));
    }
}
