//! Leases, `gatehouse secret exec` and provenance through the real gateway: a job token from
//! the real IdP reads secrets into a child process's environment only, the leases its reads hold
//! are revoked when the child exits (normally, or killed with SIGKILL), and under a provenance
//! policy only a job whose commit was pushed through Gatehouse gets anything.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit::{Idp, TempDir, TestGateway};
use serde_json::Value;

use crate::common::{bin, clone_demo, commit_file, local_head};
use crate::secrets::{gateway_on, gateway_with, job_claims_for, ok, secret_cli};
use crate::state_api::call;

/// The job id of `job_claims_for(idp, _, n)`.
fn job_id(idp: &Idp, n: &str) -> String {
    format!(
        "{}/demo/hello/run/77/job/{n}",
        idp.issuer().trim_start_matches("http://")
    )
}

/// `gatehouse secret exec` as `token`, in `dir`, with its output piped.
fn exec(gw: &TestGateway, token: &str, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["secret", "exec", "--server", &gw.url()])
        .args(args)
        .env("GATEHOUSE_TOKEN", token)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The job's leases as `ops` lists them: (path, live, reason).
fn leases_of(gw: &TestGateway, ops: &str, job: &str) -> Vec<(String, bool, String)> {
    let q = format!("/.gatehouse/leases?job={}", url_escape(job));
    let (status, doc) = call(gw.port, "GET", &q, ops, None).unwrap();
    assert_eq!(status, 200, "{doc}");
    let mut v: Vec<(String, bool, String)> = doc["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_owned(),
                l["live"].as_bool().unwrap(),
                l["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

fn wait_for_file(p: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(p)
            && t.ends_with('\n')
        {
            return t.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pre-receive hook in the repository `bare` that refuses every push to `refs/heads/blocked`,
/// as a forge's branch protection would.
fn refuse_blocked_pushes(bare: &Path) {
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/blocked ]; then echo \"blocked by the forge\" >&2; exit 1; fi\ndone\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A deploy job's claims (`job_claims_for`) running `sha` for `git_ref`.
fn job_at(idp: &Idp, sha: &str, git_ref: &str, n: &str) -> Value {
    let mut c = job_claims_for(idp, "prod", n);
    c["sha"] = Value::String(sha.to_owned());
    c["ref"] = Value::String(git_ref.to_owned());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_exec_gives_values_to_the_child_only_and_revokes_its_leases_however_it_exits() {
    let tmp = TempDir::new("secret-exec");
    let gw = gateway_with(&tmp, "", "");
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    // Values no other file could hold by chance.
    let db = format!("db-{}-pw", std::process::id());
    let api = format!("api-{}-key", gw.port);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        db.as_bytes(),
    ));
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/api-key"],
        api.as_bytes(),
    ));
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/other/secret"],
        b"nope",
    ));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let maps = [
        "--map",
        "DB_PASSWORD=prod/demo/hello/db-password",
        "--map",
        "API_KEY=prod/demo/hello/api-key@1",
    ];

    // A normal exit: the child saw both values and not the caller's token; its exit code is
    // ours; both leases are revoked after it.
    let first = idp
        .sign(job_claims_for(idp, "prod", "5001"), "RS256", None)
        .await;
    let script =
        r#"printf '%s|%s|%s\n' "$DB_PASSWORD" "$API_KEY" "${GATEHOUSE_TOKEN:-no-token}"; exit 7"#;
    let out = exec(&gw, &first, &work, &maps)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{db}|{api}|no-token\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        leases_of(&gw, &ops, &job_id(idp, "5001")),
        [
            (
                "prod/demo/hello/api-key".to_owned(),
                false,
                "exec_ended".to_owned()
            ),
            (
                "prod/demo/hello/db-password".to_owned(),
                false,
                "exec_ended".to_owned()
            ),
        ]
    );

    // SIGKILL of the child: while it runs, its environment holds the value and its parent's
    // does not; once it is killed, the leases are revoked and the exit is 128 + 9.
    let second = idp
        .sign(job_claims_for(idp, "prod", "5002"), "RS256", None)
        .await;
    let pid_file = work.join("child.pid");
    let mut parent = exec(&gw, &second, &work, &maps)
        .args(["--", "sh", "-c", "echo $$ > child.pid; exec sleep 60"])
        .spawn()
        .unwrap();
    let child_pid = wait_for_file(&pid_file);
    let environ = |pid: &str| std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let holds = |bytes: &[u8], v: &str| bytes.windows(v.len()).any(|w| w == v.as_bytes());
    // The child writes its pid, then replaces itself with `sleep`: read while that exec is under
    // way, /proc/PID/environ can be empty for a moment. The environment is the same before and
    // after it, so the read is retried (for at most 5 s) until it is there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let child_env = loop {
        let env = environ(&child_pid);
        if (holds(&env, &format!("DB_PASSWORD={db}")) && holds(&env, &api))
            || Instant::now() > deadline
        {
            break env;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        holds(&child_env, &format!("DB_PASSWORD={db}")) && holds(&child_env, &api),
        "the child's environment lacks the values: {}",
        String::from_utf8_lossy(&child_env).replace('\0', " ")
    );
    let parent_env = environ(&parent.id().to_string());
    assert!(
        !holds(&parent_env, &db) && !holds(&parent_env, &api),
        "the parent's environment holds a value"
    );
    assert!(
        leases_of(&gw, &ops, &job_id(idp, "5002"))
            .iter()
            .all(|l| l.1),
        "live while the child runs"
    );
    let kill = Command::new("kill")
        .args(["-9", &child_pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = parent.wait().unwrap();
    assert_eq!(status.code(), Some(137), "{status:?}");
    assert_eq!(
        leases_of(&gw, &ops, &job_id(idp, "5002")),
        [
            (
                "prod/demo/hello/api-key".to_owned(),
                false,
                "exec_ended".to_owned()
            ),
            (
                "prod/demo/hello/db-password".to_owned(),
                false,
                "exec_ended".to_owned()
            ),
        ]
    );

    // A secret the job may not read: the command never runs and the lease already taken is
    // revoked.
    let third = idp
        .sign(job_claims_for(idp, "prod", "5003"), "RS256", None)
        .await;
    let marker = work.join("ran");
    let out = exec(
        &gw,
        &third,
        &work,
        &[
            "--map",
            "DB_PASSWORD=prod/demo/hello/db-password",
            "--map",
            "OTHER=prod/other/secret",
        ],
    )
    .args(["--", "touch", &marker.to_string_lossy()])
    .output()
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("reading prod/other/secret: the gateway refused (403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists(), "the command ran");
    assert_eq!(
        leases_of(&gw, &ops, &job_id(idp, "5003")),
        [(
            "prod/demo/hello/db-password".to_owned(),
            false,
            "exec_failed".to_owned()
        )]
    );

    // Nothing on disk holds a value in clear: not the work directory, not the store, not the
    // audit log.
    for v in [&db, &api] {
        assert_eq!(
            files_holding(tmp.path(), v.as_bytes()),
            Vec::<String>::new(),
            "{v}"
        );
    }
    // Every read is on record with its lease, and so is every revocation.
    let audit = gw.audit_when("the lease revocations", |a| {
        a.matches("\"lease:revoke\"").count() >= 5
    });
    let reads: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"secret:get\"") && l.contains("\"allow\""))
        .collect();
    assert!(
        reads
            .iter()
            .all(|l| l.contains("\"lease\":\"lease_") && l.contains("\"version\":")),
        "{reads:?}"
    );
    // `audit search --job` answers what the job read, with the lease.
    let out = gw.cli_raw(&[
        "audit",
        "search",
        &gw.audit_path().to_string_lossy(),
        "--job",
        &job_id(idp, "5002"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .filter(|l| l.contains("secret:get  allow") && l.contains("lease_"))
            .count()
            == 2,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_revoked_by_its_holder_or_an_admin_and_ending_the_job_revokes_the_rest() {
    let tmp = TempDir::new("secret-leases");
    let gw = gateway_with(&tmp, "", "");
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        b"lease-test-value",
    ));
    let job = idp
        .sign(job_claims_for(idp, "prod", "6001"), "RS256", None)
        .await;
    let path = "/.gatehouse/secrets/prod/demo/hello/db-password";
    let mut leases = Vec::new();
    for _ in 0..3 {
        let (status, doc) = call(gw.port, "GET", path, &job, None).unwrap();
        assert_eq!(status, 200, "{doc}");
        let l = &doc["lease"];
        // No longer than the job's token (300 s in job_claims_for).
        let exp = l["expires_at"].as_str().unwrap();
        assert!(!exp.is_empty());
        leases.push(l["id"].as_str().unwrap().to_owned());
    }
    // Another caller without secret:admin may not revoke the job's lease.
    let dev = gw.token("alice", &["dev"]);
    let revoke = |id: &str| format!("/.gatehouse/leases/{id}:revoke");
    assert_eq!(
        call(gw.port, "POST", &revoke(&leases[0]), &dev, None)
            .unwrap()
            .0,
        403
    );
    // Its holder may.
    let (status, doc) = call(gw.port, "POST", &revoke(&leases[0]), &job, None).unwrap();
    assert_eq!((status, doc["live"].as_bool()), (200, Some(false)), "{doc}");
    // An admin may, through the CLI.
    let out = secret_cli(
        &gw,
        &ops,
        &["revoke-lease", &leases[1], "--reason", "rotated"],
        b"",
    );
    ok(&out);
    // Ending the job (the job ends itself) revokes the one left.
    let end = format!("/.gatehouse/jobs/{}:end", job_id(idp, "6001"));
    let (status, doc) = call(gw.port, "POST", &end, &job, None).unwrap();
    assert_eq!(
        (status, doc["leases_revoked"].as_u64()),
        (200, Some(1)),
        "{doc}"
    );
    let listed = ok(&secret_cli(
        &gw,
        &ops,
        &["leases", "--job", &job_id(idp, "6001")],
        b"",
    ));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    for (id, reason) in [
        (&leases[0], "revoked"),
        (&leases[1], "rotated"),
        (&leases[2], "job_ended"),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains(&format!("({reason})"))),
            "{id} {reason}: {listed}"
        );
    }
    assert!(!listed.contains("lease-test-value"), "{listed}");
    let live = ok(&secret_cli(&gw, &ops, &["leases", "--live"], b""));
    assert!(live.trim().is_empty(), "{live}");
    // A malformed or unknown lease id is a clear error.
    let (status, doc) = call(gw.port, "POST", &revoke("nope"), &ops, None).unwrap();
    assert_eq!(status, 400, "{doc}");
    let (status, _) = call(
        gw.port,
        "POST",
        &revoke("lease_00000000000000000000000000000000"),
        &ops,
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
}

/// Jobs get prod secrets only when their commit reached their ref through a push Gatehouse
/// allowed (and audited); deploy jobs of demo/hello may read them.
const PROVENANCE_POLICY: &str = r#"
@id("pushed-through-gatehouse")
forbid(principal, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { principal has workload && resource.path like "prod/*" }
  unless { context.provenance.pushed };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_commit_never_came_through_gatehouse_gets_nothing_under_a_provenance_policy() {
    let tmp = TempDir::new("secret-provenance");
    let gw = gateway_with(&tmp, PROVENANCE_POLICY, "");
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        b"v1",
    ));
    let bare = tmp.path().join("repos/demo/hello.git");

    // Alice pushes a commit to main through Gatehouse.
    let alice = gw.token("alice", &["dev"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice");
    commit_file(&git, &work, "deploy.txt", "through the gateway\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let pushed = local_head(&git, &work);
    // Its twin reaches the forge another way: straight into the repository on disk.
    commit_file(&git, &work, "sneaky.txt", "around the gateway\n");
    git.ok(
        &work,
        &[
            "push",
            "-q",
            &bare.to_string_lossy(),
            "HEAD:refs/heads/main",
        ],
    );
    let sneaked = local_head(&git, &work);
    // A push Gatehouse allows but the forge refuses (its pre-receive hook declines the ref):
    // announced in the push index, never confirmed by the forge's report.
    refuse_blocked_pushes(&bare);
    commit_file(&git, &work, "blocked.txt", "refused by the forge\n");
    let refused = git.run(&work, &["push", "origin", "HEAD:refs/heads/blocked"]);
    assert!(!refused.ok, "the hook did not refuse the push");
    assert!(
        refused.stderr.contains("pre-receive hook declined"),
        "{}",
        refused.stderr
    );
    let declined = local_head(&git, &work);

    let job = |sha: &str, git_ref: &str, n: &str| job_at(idp, sha, git_ref, n);
    let path = "/.gatehouse/secrets/prod/demo/hello/db-password";
    let get = |t: &str| call(gw.port, "GET", path, t, None).unwrap();
    let good = idp
        .sign(job(&pushed, "refs/heads/main", "7001"), "RS256", None)
        .await;
    let (status, doc) = get(&good);
    assert_eq!((status, doc["value"].as_str()), (200, Some("v1")), "{doc}");
    let bad = idp
        .sign(job(&sneaked, "refs/heads/main", "7002"), "RS256", None)
        .await;
    let (status, doc) = get(&bad);
    assert_eq!(status, 403, "{doc}");
    // The forge refused it: the gateway allowed it, but it never reached the ref.
    let blocked = idp
        .sign(job(&declined, "refs/heads/blocked", "7004"), "RS256", None)
        .await;
    let (status, doc) = get(&blocked);
    assert_eq!(status, 403, "a push the forge refused counted: {doc}");
    // The pushed commit, claimed for a ref it was never pushed to.
    let elsewhere = idp
        .sign(job(&pushed, "refs/heads/release", "7003"), "RS256", None)
        .await;
    assert_eq!(get(&elsewhere).0, 403);
    let refusal = gw.audit_when("the refusal of the sneaked commit", |a| {
        a.lines()
            .any(|l| l.contains("pushed-through-gatehouse") && l.contains(&sneaked))
    });
    assert!(
        refusal.contains(&pushed),
        "the push of {pushed} is on record"
    );
    // Without a workload, the provenance rule does not apply (ops reads as before).
    assert_eq!(call(gw.port, "GET", path, &ops, None).unwrap().0, 200);
}

/// Runners may mint job tokens for acme's repositories; a Gitea job of acme/api on main reads
/// acme/api's CI secrets, one of acme/web reads acme/web's.
const GITEA_RUNNER_POLICY: &str = r#"
@id("runners-mint")
permit(principal in Gatehouse::Group::"runners", action == Gatehouse::Action::"job:mint",
       resource in Gatehouse::Owner::"acme")
  when { context.job.runner == principal.username };

@id("gitea-api-jobs")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { principal has workload && principal.workload.platform == "gitea-actions"
         && principal.workload.repository == "acme/api" && principal.workload.ref == "refs/heads/main"
         && resource.path like "ci/acme/api/*" };

@id("gitea-web-jobs")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { principal has workload && principal.workload.platform == "gitea-actions"
         && principal.workload.repository == "acme/web" && resource.path like "ci/acme/web/*" };
"#;

fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitea_runner_mints_tokens_only_for_running_jobs_of_the_repository_it_names() {
    let sha = "9fceb02d0ae598e95dc970b74767f19372d61af8";
    let web_sha = "1234567890abcdef1234567890abcdef12345678";
    // A STAND-IN for Gitea's Actions API (gatehouse-testkit/idp/forge-standin.mjs): no Gitea
    // can be installed here.
    let forge = gatehouse_testkit::ForgeStandIn::start_with(
        &serde_json::json!({}),
        &serde_json::json!({
            "acme/api": {"actions": {
                "runs": {"42": {"path": "deploy.yml@refs/heads/main", "event": "push",
                                "head_sha": sha, "head_branch": "main", "actor": "alice"},
                         "43": {"path": "deploy.yml@refs/tags/v1.0", "event": "push",
                                "head_sha": sha, "actor": "alice"}},
                "jobs": {"77": {"run_id": 42, "status": "in_progress", "head_sha": sha,
                                "runner_name": "runner-1"},
                         "78": {"run_id": 42, "status": "completed", "head_sha": sha},
                         "79": {"run_id": 43, "status": "in_progress", "head_sha": sha, "runner_name": "runner-1"}}}},
            "acme/web": {"actions": {
                "runs": {"50": {"path": "ci.yml@refs/heads/main", "head_sha": web_sha,
                                "head_branch": "main"}},
                "jobs": {"90": {"run_id": 50, "status": "in_progress", "head_sha": web_sha,
                                "runner_name": "runner-1"}}}},
            "other/api": {"actions": {
                "runs": {"60": {"path": "ci.yml@refs/heads/main", "head_sha": web_sha,
                                "head_branch": "main"}},
                "jobs": {"61": {"run_id": 60, "status": "in_progress", "head_sha": web_sha,
                                "runner_name": "runner-1"}}}}
        }),
    );
    let tmp = TempDir::new("gitea-job-tokens");
    let token_file = tmp.path().join("forge-token");
    std::fs::write(&token_file, &forge.token).unwrap();
    let gw = gateway_on(
        &tmp,
        Some("gitea"),
        GITEA_RUNNER_POLICY,
        &format!(
            "[forge.api]\nurl = \"{}\"\ntoken = {{ file = \"{}\" }}\n\n[job_tokens]\nttl = \"1h\"\nrecheck = \"1s\"\n",
            forge.url(),
            token_file.display()
        ),
    );
    let ops = gw.token("oncall", &["ops"]);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "ci/acme/api/deploy-key"],
        b"api-key",
    ));
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "ci/acme/web/deploy-key"],
        b"web-key",
    ));
    let runner = gw.token("runner-1", &["runners"]);
    let mint = |who: &str, repo: &str, run: u64, job: u64| {
        call(
            gw.port,
            "POST",
            "/.gatehouse/jobs:mint",
            who,
            Some(&serde_json::json!({"repository": repo, "run_id": run, "job_id": job})),
        )
        .unwrap()
    };

    // A running job of acme/api: its token carries what the forge says, not what was asked.
    let (status, doc) = mint(&runner, "Acme/API", 42, 77);
    assert_eq!(status, 200, "{doc}");
    let job_token = doc["access_token"].as_str().unwrap().to_owned();
    let w = &claims_of(&job_token)["gatehouse_workload"];
    assert_eq!(
        (
            w["platform"].as_str(),
            w["repository"].as_str(),
            w["ref"].as_str(),
            w["commit"].as_str(),
            w["workflow"].as_str(),
            w["run_id"].as_str(),
            w["job"].as_str(),
            w["runner"].as_str(),
        ),
        (
            Some("gitea-actions"),
            Some("acme/api"),
            Some("refs/heads/main"),
            Some(sha),
            Some("deploy.yml"),
            Some("42"),
            Some("77"),
            Some("runner-1"),
        ),
        "{w}"
    );
    assert!(
        doc["expires_in"].as_i64().unwrap() <= 600,
        "no longer than the runner's token"
    );
    let job_id = doc["job_id"].as_str().unwrap().to_owned();
    assert!(
        job_id.ends_with("/acme/api/run/42/job/77/attempt/1"),
        "{job_id}"
    );
    // A tag run's job: its ref is the tag.
    let (status, doc) = mint(&runner, "acme/api", 43, 79);
    assert_eq!(status, 200, "{doc}");
    let tag_token = doc["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        claims_of(&tag_token)["gatehouse_workload"]["ref"],
        "refs/tags/v1.0"
    );

    // What is not a running job of the repository named gets nothing.
    for (repo, run, job, want, why) in [
        (
            "acme/web",
            42,
            77,
            403,
            "a job of acme/api, asked for acme/web",
        ),
        (
            "acme/api",
            50,
            90,
            403,
            "a job of acme/web, asked for acme/api",
        ),
        ("acme/api", 43, 77, 403, "the job is not the run's"),
        ("acme/api", 42, 78, 409, "a job that has finished"),
        ("acme/api", 42, 9999, 403, "no such job"),
        (
            "other/api",
            60,
            61,
            403,
            "an owner the runner may not mint for",
        ),
    ] {
        let (status, doc) = mint(&runner, repo, run, job);
        assert_eq!(status, want, "{why}: {doc}");
    }
    let dev = gw.token("alice", &["dev"]);
    assert_eq!(mint(&dev, "acme/api", 42, 77).0, 403, "not a runner");
    // Another runner may not mint for the job runner-1 runs.
    let other_runner = gw.token("runner-2", &["runners"]);
    let (status, doc) = mint(&other_runner, "acme/api", 42, 77);
    assert_eq!(
        (status, doc["code"].as_str()),
        (403, Some("no_matching_permit")),
        "{doc}"
    );
    for bad in [
        serde_json::json!({"repository": "acme/api/x", "run_id": 42, "job_id": 77}),
        serde_json::json!({"repository": "acme/..", "run_id": 42, "job_id": 77}),
        serde_json::json!({"repository": "acme/api", "run_id": -1, "job_id": 77}),
        serde_json::json!({"repository": "acme/api", "run_id": "42; drop", "job_id": 77}),
    ] {
        let (status, doc) = call(
            gw.port,
            "POST",
            "/.gatehouse/jobs:mint",
            &runner,
            Some(&bad),
        )
        .unwrap();
        assert_eq!(status, 400, "{bad}: {doc}");
    }

    // The job's token reads its repository's secrets, not another's.
    let path = |p: &str| format!("/.gatehouse/secrets/{p}");
    let (status, doc) = call(
        gw.port,
        "GET",
        &path("ci/acme/api/deploy-key"),
        &job_token,
        None,
    )
    .unwrap();
    assert_eq!(
        (status, doc["value"].as_str()),
        (200, Some("api-key")),
        "{doc}"
    );
    let (status, _) = call(
        gw.port,
        "GET",
        &path("ci/acme/web/deploy-key"),
        &job_token,
        None,
    )
    .unwrap();
    assert_eq!(status, 403, "another repository's secret");

    // The job ends on the forge: within `recheck`, its token reads nothing more.
    let (s, _) = gatehouse_testkit::raw_http(
        forge.port,
        "POST",
        "/_job?repo=acme/api&job=77&status=completed",
        &[],
    );
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, doc) = call(
            gw.port,
            "GET",
            &path("ci/acme/api/deploy-key"),
            &job_token,
            None,
        )
        .unwrap();
        if status == 401 {
            assert_eq!(doc["code"], "job_ended", "{doc}");
            break;
        }
        assert_eq!(status, 200, "{doc}");
        assert!(
            Instant::now() < deadline,
            "the ended job's token still reads"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Gitea re-runs the job: the same job, a new attempt, which ending the first did not end.
    let (s, _) = gatehouse_testkit::raw_http(
        forge.port,
        "POST",
        "/_job?repo=acme/api&job=77&status=in_progress&attempt=2",
        &[],
    );
    assert_eq!(s, 200);
    let (status, doc) = mint(&runner, "acme/api", 42, 77);
    assert_eq!(status, 200, "{doc}");
    let rerun = doc["access_token"].as_str().unwrap().to_owned();
    let (status, doc) = call(
        gw.port,
        "GET",
        &path("ci/acme/api/deploy-key"),
        &rerun,
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "the re-run's token: {doc}");
    // The first attempt's token stays ended.
    assert_eq!(
        call(
            gw.port,
            "GET",
            &path("ci/acme/api/deploy-key"),
            &job_token,
            None
        )
        .unwrap()
        .0,
        401
    );
    // The tag job ends on the forge while its token sits unused: the gateway, which watches the
    // jobs it minted for, revokes it, so every front door refuses it (a clone here: 403 from
    // the policy while the job runs, 401 once it has ended).
    let clone = "/demo/hello.git/info/refs?service=git-upload-pack";
    assert_eq!(
        call(gw.port, "GET", clone, &tag_token, None).unwrap().0,
        403
    );
    let (s, _) = gatehouse_testkit::raw_http(
        forge.port,
        "POST",
        "/_job?repo=acme/api&job=79&status=completed",
        &[],
    );
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, doc) = call(gw.port, "GET", clone, &tag_token, None).unwrap();
        if status == 401 {
            break;
        }
        assert_eq!(status, 403, "{doc}");
        assert!(
            Instant::now() < deadline,
            "the ended tag job's token was not revoked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let audit = gw.audit_when("the ended tag job's refusal", |a| {
        a.lines()
            .any(|l| l.contains("\"git:read\"") && l.contains("job_ended"))
    });
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"job:mint\"") && l.contains("job_not_verified")),
        "{audit}"
    );
    assert!(!audit.contains(&job_token), "a token in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_ssh_counts_for_provenance_once_the_forge_reports_it() {
    let tmp = TempDir::new("secret-provenance-ssh");
    let key = tmp.path().join("ci_key");
    crate::ssh::keygen(&key);
    let key_pub = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let policy = format!(
        "{PROVENANCE_POLICY}\n@id(\"ci-bot-pushes\")\npermit(principal == Gatehouse::ServiceAccount::\"ci-bot\", action in [Gatehouse::Action::\"git:read\", Gatehouse::Action::\"git:write\"], resource in Gatehouse::Owner::\"demo\");\n"
    );
    let gw = gateway_with(
        &tmp,
        &policy,
        &format!(
            "\n[ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{dir}/host_ed25519\"\nuser_ca_key = \"{dir}/user_ca\"\n\n[[ssh.service_accounts]]\nname = \"ci-bot\"\npublic_key = \"{}\"\ngroups = [\"ci\"]\n",
            key_pub.trim(),
            dir = tmp.path().display(),
        ),
    );
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        b"v1",
    ));
    let bare = tmp.path().join("repos/demo/hello.git");
    let port = gw.ssh_port();
    let git = crate::ssh::git_ssh(tmp.path(), "ci", &key, port);
    let work = tmp.path().join("ci-work");
    git.ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &format!("ssh://git@127.0.0.1:{port}/demo/hello.git"),
            &work.to_string_lossy(),
        ],
    );
    commit_file(&git, &work, "over-ssh.txt", "pushed over ssh\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let pushed = local_head(&git, &work);
    // One the forge refuses over SSH.
    refuse_blocked_pushes(&bare);
    commit_file(&git, &work, "blocked.txt", "refused\n");
    assert!(
        !git.run(&work, &["push", "origin", "HEAD:refs/heads/blocked"])
            .ok
    );
    let declined = local_head(&git, &work);

    let job = |sha: &str, git_ref: &str, n: &str| job_at(idp, sha, git_ref, n);
    let path = "/.gatehouse/secrets/prod/demo/hello/db-password";
    let good = idp
        .sign(job(&pushed, "refs/heads/main", "8001"), "RS256", None)
        .await;
    let (status, doc) = call(gw.port, "GET", path, &good, None).unwrap();
    assert_eq!(status, 200, "a push over SSH the forge took: {doc}");
    let bad = idp
        .sign(job(&declined, "refs/heads/blocked", "8002"), "RS256", None)
        .await;
    let (status, doc) = call(gw.port, "GET", path, &bad, None).unwrap();
    assert_eq!(status, 403, "a push over SSH the forge refused: {doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_an_annotated_tag_pushed_through_gatehouse_passes_provenance() {
    let tmp = TempDir::new("secret-provenance-tag");
    // A STAND-IN for Gitea's annotated-tag API, reading the real repositories behind the gateway.
    let forge = gatehouse_testkit::ForgeStandIn::start_over(
        &serde_json::json!({}),
        &serde_json::json!({}),
        Some(&tmp.path().join("repos")),
    );
    let token_file = tmp.path().join("forge-token");
    std::fs::write(&token_file, &forge.token).unwrap();
    let gw = gateway_on(
        &tmp,
        Some("gitea"),
        &format!(
            "{PROVENANCE_POLICY}\n@id(\"release-jobs\")\npermit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::\"secret:get\", resource is Gatehouse::Secret) when {{ principal has workload && principal.workload.repository == \"demo/hello\" && principal.workload.ref like \"refs/tags/v*\" && resource.path like \"prod/demo/hello/*\" }};\n"
        ),
        &format!(
            "[forge.api]\nurl = \"{}\"\ntoken = {{ file = \"{}\" }}\n",
            forge.url(),
            token_file.display()
        ),
    );
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        b"v1",
    ));
    let bare = tmp.path().join("repos/demo/hello.git");
    let alice = gw.token("alice", &["dev"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice");
    commit_file(&git, &work, "release.txt", "v2\n");
    let commit = local_head(&git, &work);
    git.ok(&work, &["tag", "-a", "v2.0", "-m", "release 2.0"]);
    git.ok(&work, &["push", "-q", "origin", "refs/tags/v2.0"]);
    // Its twin never came through the gateway.
    git.ok(&work, &["tag", "-a", "v3.0", "-m", "release 3.0"]);
    git.ok(
        &work,
        &["push", "-q", &bare.to_string_lossy(), "refs/tags/v3.0"],
    );
    let job = |git_ref: &str, n: &str| {
        let mut c = job_at(idp, &commit, git_ref, n);
        c["ref_type"] = Value::String("tag".into());
        c
    };
    let path = "/.gatehouse/secrets/prod/demo/hello/db-password";
    let pushed = idp.sign(job("refs/tags/v2.0", "9101"), "RS256", None).await;
    let (status, doc) = call(gw.port, "GET", path, &pushed, None).unwrap();
    assert_eq!(
        status, 200,
        "the annotated tag pushed through the gateway: {doc}"
    );
    let sneaked = idp.sign(job("refs/tags/v3.0", "9102"), "RS256", None).await;
    let (status, doc) = call(gw.port, "GET", path, &sneaked, None).unwrap();
    assert_eq!(
        status, 403,
        "an annotated tag pushed around the gateway: {doc}"
    );
}
