//! Workload identity: the real IdP signs tokens shaped like GitHub Actions' and Forgejo Actions'
//! OIDC tokens (their claim names and `sub` forms, from GitHub's docs and Forgejo's
//! `services/actions/auth.go`); Gatehouse checks the issuer's `bound_claims` and the policy
//! reads the job's claims.

use gatehouse_testkit::{Idp, TempDir, TestGateway, raw_http};
use serde_json::{Value, json};

use crate::common::{POLICY, builder, clone_demo, record_of, repos};

const REFS: &str = "/demo/hello.git/info/refs?service=git-upload-pack";

#[allow(clippy::disallowed_methods)] // the gateway under test runs on the real clock
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The deploy job of demo/hello on main, in the `prod` environment, may read the repository.
const JOB_POLICY: &str = r#"
@id("deploy-job")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"git:read",
       resource == Gatehouse::Repo::"demo/hello")
  when { principal has workload && principal.workload.repository == "demo/hello"
         && principal.workload.ref == "refs/heads/main"
         && (principal.workload.platform == "forgejo-actions" || principal.workload.environment == "prod") };
"#;

const BOUND: &str = "[issuers.bound_claims]\nrepository_owner = \"demo\"\nref = [\"refs/heads/*\", \"!refs/heads/dev*\"]\nevent_name = \"!pull_request*\"\n";

fn get(gw: &TestGateway, token: &str) -> (u16, String) {
    raw_http(
        gw.port,
        "GET",
        REFS,
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// A GitHub Actions ID token's claims (docs: "Understanding the OIDC token").
fn github(idp: &Idp, over: Value) -> Value {
    let t = now();
    let mut c = json!({
        "iss": idp.issuer(), "aud": "gatehouse", "iat": t, "nbf": t, "exp": t + 300,
        "jti": "gh-1", "sub": "repo:demo/hello:environment:prod",
        "repository": "demo/hello", "repository_owner": "demo", "repository_id": "74",
        "repository_owner_id": "65", "repository_visibility": "private",
        "ref": "refs/heads/main", "ref_type": "branch",
        "sha": "e5b6f8c1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7",
        "workflow": "Deploy", "workflow_ref": "demo/hello/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "demo/hello/.github/workflows/deploy.yml@refs/heads/main",
        "check_run_id": "31337", "run_id": "4242", "run_number": "17", "run_attempt": "1",
        "environment": "prod", "event_name": "push", "actor": "octocat", "actor_id": "1",
        "runner_environment": "github-hosted", "base_ref": "", "head_ref": ""
    });
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_actions_job_gets_what_its_claims_allow_and_nothing_else() {
    let tmp = TempDir::new("workload-gh");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(idp, &format!("workload = \"github-actions\"\n{BOUND}"))
        .policy(&format!("{POLICY}\n{JOB_POLICY}"))
        .start();

    let job = idp.sign(github(idp, json!({})), "RS256", None).await;
    assert_eq!(get(&gw, &job).0, 200);
    // A real clone, as the job.
    let (_, work) = clone_demo(tmp.path(), &gw.url(), &job, "job-clone");
    assert!(work.join(".git").is_dir());
    // On record with its job, run, repository, ref and commit.
    let rec = record_of(&gw, "the job's clone", |l| {
        l.contains("\"check_run_id\"") || l.contains("\"job\":\"31337\"")
    });
    let rec: Value = serde_json::from_str(&rec).unwrap();
    let w = &rec["principal"]["workload"];
    assert_eq!(w["job"], "31337", "{rec}");
    assert_eq!(w["run_id"], "4242", "{rec}");
    assert_eq!(w["repository"], "demo/hello", "{rec}");
    assert_eq!(w["ref"], "refs/heads/main", "{rec}");
    assert_eq!(
        w["commit"], "e5b6f8c1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7",
        "{rec}"
    );
    assert_eq!(
        rec["principal"]["username"], "github-actions:demo:hello",
        "{rec}"
    );
    assert_eq!(rec["principal"]["kind"], "service", "{rec}");

    // The policy: another environment is refused (403), as is another repository of the owner.
    let staging = idp
        .sign(
            github(
                idp,
                json!({"environment": "staging", "sub": "repo:demo/hello:environment:staging"}),
            ),
            "RS256",
            None,
        )
        .await;
    assert_eq!(get(&gw, &staging).0, 403);
    let other_repo = idp
        .sign(
            github(idp, json!({"repository": "demo/other"})),
            "RS256",
            None,
        )
        .await;
    assert_eq!(get(&gw, &other_repo).0, 403);

    // bound_claims: refused before any policy (401, `claim_not_bound`).
    for (what, over) in [
        (
            "another owner",
            json!({"repository_owner": "evil", "repository": "evil/hello"}),
        ),
        ("a negated branch", json!({"ref": "refs/heads/dev-exp"})),
        ("no allowed ref", json!({"ref": "refs/pull/7/merge"})),
        (
            "a pull request",
            json!({"event_name": "pull_request_target"}),
        ),
        ("no event", json!({"event_name": null})),
    ] {
        let tok = idp.sign(github(idp, over), "RS256", None).await;
        let (status, raw) = get(&gw, &tok);
        assert_eq!(status, 401, "{what}: {raw}");
        assert!(raw.contains("invalid_token"), "{what}: {raw}");
    }
    // A workload token without the claims that make it one.
    let no_sha = idp
        .sign(github(idp, json!({"sha": null})), "RS256", None)
        .await;
    assert_eq!(get(&gw, &no_sha).0, 401);
    let audit = gw.audit_when("the refusals", |a| {
        a.matches("claim_not_bound").count() >= 5
    });
    assert!(!audit.contains(&job), "a token reached the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgejo_actions_job_is_read_by_forgejos_claim_names() {
    let tmp = TempDir::new("workload-fj");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(idp, &format!("workload = \"forgejo-actions\"\n{BOUND}"))
        .policy(&format!("{POLICY}\n{JOB_POLICY}"))
        .start();
    // Forgejo 15's IDTokenCustomClaims: no jti, no job, environment or runner claim; `workload`
    // is the workflow's file name; the legacy `sub` form.
    let t = now();
    let forgejo = |over: Value| {
        let mut c = json!({
            "iss": idp.issuer(), "aud": "gatehouse", "iat": t, "nbf": t, "exp": t + 3600,
            "sub": "repo:demo/hello:ref:refs/heads/main",
            "actor": "alice", "base_ref": "", "event_name": "push", "head_ref": "",
            "ref": "refs/heads/main", "ref_protected": "false", "ref_type": "branch",
            "repository": "demo/hello", "repository_owner": "demo", "run_attempt": "1",
            "run_id": "12", "run_number": "3", "sha": "0123456789abcdef0123456789abcdef01234567",
            "workflow": "deploy.yaml",
            "workflow_ref": "demo/hello/.forgejo/workflows/deploy.yaml@refs/heads/main"
        });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let job = idp.sign(forgejo(json!({})), "RS256", None).await;
    assert_eq!(get(&gw, &job).0, 200);
    let rec = record_of(&gw, "the job's request", |l| l.contains("forgejo-actions"));
    let rec: Value = serde_json::from_str(&rec).unwrap();
    let w = &rec["principal"]["workload"];
    assert_eq!(w["platform"], "forgejo-actions", "{rec}");
    assert_eq!(w["workflow"], "deploy.yaml", "{rec}");
    assert!(w.get("job").is_none(), "Forgejo names no job: {rec}");
    let dev = idp
        .sign(forgejo(json!({"ref": "refs/heads/dev"})), "RS256", None)
        .await;
    assert_eq!(get(&gw, &dev).0, 401);
    let feature = idp
        .sign(forgejo(json!({"ref": "refs/heads/feature"})), "RS256", None)
        .await;
    assert_eq!(get(&gw, &feature).0, 403, "bound, but not granted");
}
