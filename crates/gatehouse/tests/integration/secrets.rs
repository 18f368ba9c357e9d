//! The secrets broker through the real gateway: the `gatehouse secret` CLI over the HTTP API,
//! a GitHub-Actions-shaped job token from the real IdP reading what its policy allows, audit
//! records without values, and a `kill -9` in the middle of a burst of writes.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_testkit::{Idp, TempDir, TestGateway};
use serde_json::{Value, json};

use crate::common::{POLICY, bin, builder, repos};
use crate::state_api::call;

#[allow(clippy::disallowed_methods)] // the gateway under test runs on the real clock
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// ops may do anything with secrets; the deploy job of demo/hello on main in `prod` may read
/// prod/demo/hello/*; nobody reads a secret tagged break-glass=true.
pub(crate) const SECRETS_POLICY: &str = r#"
@id("ops-secrets")
permit(principal in Gatehouse::Group::"ops", action in [Gatehouse::Action::"secret:get",
  Gatehouse::Action::"secret:list", Gatehouse::Action::"secret:put", Gatehouse::Action::"secret:rotate",
  Gatehouse::Action::"secret:delete", Gatehouse::Action::"secret:admin"], resource is Gatehouse::Secret);

@id("deploy-job-secrets")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { principal has workload && principal.workload.repository == "demo/hello"
         && principal.workload.ref == "refs/heads/main" && principal.workload.environment == "prod"
         && resource.path like "prod/demo/hello/*" };

@id("payments-secrets")
permit(principal in Gatehouse::Group::"payments", action in [Gatehouse::Action::"secret:get",
  Gatehouse::Action::"secret:list", Gatehouse::Action::"secret:put"], resource is Gatehouse::Secret)
  when { resource.hasTag("team") && resource.getTag("team") == "payments" };

@id("payments-list")
permit(principal in Gatehouse::Group::"payments", action == Gatehouse::Action::"secret:list",
  resource == Gatehouse::Secret::"prod/");

@id("jobs-end-themselves")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"job:end", resource is Gatehouse::Job)
  when { principal has workload && principal.workload.job_id == resource.id };

@id("deploy-job-clones")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"git:read", resource == Gatehouse::Repo::"demo/hello")
  when { principal has workload && principal.workload.repository == "demo/hello" };

@id("break-glass")
forbid(principal, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { resource.hasTag("break-glass") && resource.getTag("break-glass") == "true" };
"#;

fn gateway(tmp: &TempDir, extra: &str) -> TestGateway {
    gateway_with(tmp, "", extra)
}

/// A gateway with a secrets broker, [`SECRETS_POLICY`] and `policy` added to the common one,
/// and `extra` in its config.
pub(crate) fn gateway_with(tmp: &TempDir, policy: &str, extra: &str) -> TestGateway {
    gateway_on(tmp, None, policy, extra)
}

/// [`gateway_with`] in front of a forge of `kind` (the test's default when `None`).
pub(crate) fn gateway_on(
    tmp: &TempDir,
    kind: Option<&str>,
    policy: &str,
    extra: &str,
) -> TestGateway {
    let (root, _) = repos(tmp);
    let key = tmp.path().join("master.key");
    let out = Command::new(bin())
        .args(["secret", "master-key", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&key, &out.stdout).unwrap();
    let b = match kind {
        Some(k) => builder().forge_kind(k),
        None => builder(),
    };
    b.with_builtin_upstream(&root)
        .with_idp_extra(Idp::shared(), "workload = \"github-actions\"\n")
        .policy(&format!("{POLICY}\n{SECRETS_POLICY}\n{policy}"))
        .extra(&format!(
            "[secrets]\nmaster_key = {{ file = \"{}\" }}\nmax_versions = 5\n{extra}",
            key.display()
        ))
        .start()
}

/// `gatehouse secret ARGS` against `gw` as the holder of `token`, with `stdin`.
pub(crate) fn secret_cli(
    gw: &TestGateway,
    token: &str,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("secret")
        .args(args)
        .args(["--server", &gw.url()])
        .env("GATEHOUSE_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn job_claims(idp: &Idp, environment: &str) -> Value {
    job_claims_for(idp, environment, "9001")
}

pub(crate) fn job_claims_for(idp: &Idp, environment: &str, job: &str) -> Value {
    let t = now();
    json!({
        "iss": idp.issuer(), "aud": "gatehouse", "iat": t, "exp": t + 300, "jti": format!("job-{environment}-{job}"),
        "sub": format!("repo:demo/hello:environment:{environment}"),
        "repository": "demo/hello", "repository_owner": "demo", "ref": "refs/heads/main",
        "ref_type": "branch", "sha": "e5b6f8c1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7",
        "workflow": "Deploy", "check_run_id": job, "run_id": "77", "run_attempt": "1",
        "environment": environment, "event_name": "push", "runner_environment": "github-hosted",
        "actor": "octocat"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_written_read_listed_and_refused_as_the_policy_says() {
    let tmp = TempDir::new("secrets-api");
    let gw = gateway(&tmp, "");
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    let value = "pg-pass-3b9e71c2";

    let out = ok(&secret_cli(
        &gw,
        &ops,
        &[
            "put",
            "prod/demo/hello/db-password",
            "--tag",
            "team=payments",
            "--expires-in",
            "90d",
        ],
        value.as_bytes(),
    ));
    assert!(out.contains("\"version\":1"), "{out}");
    assert_eq!(
        ok(&secret_cli(
            &gw,
            &ops,
            &["get", "prod/demo/hello/db-password"],
            b""
        )),
        value
    );
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        b"second",
    ));
    assert_eq!(
        ok(&secret_cli(
            &gw,
            &ops,
            &["get", "prod/demo/hello/db-password", "--version", "1"],
            b""
        )),
        value
    );
    let list = ok(&secret_cli(&gw, &ops, &["list", "prod/"], b""));
    assert!(
        list.contains("prod/demo/hello/db-password\tv2\tteam=payments"),
        "{list}"
    );
    assert!(
        !list.contains(value) && !list.contains("second"),
        "a value in a listing: {list}"
    );
    let versions = ok(&secret_cli(
        &gw,
        &ops,
        &["versions", "prod/demo/hello/db-password"],
        b"",
    ));
    assert!(versions.starts_with("v2\tenabled"), "{versions}");
    assert!(versions.contains("by service:oncall"), "{versions}");

    // The job of demo/hello on main in prod reads it; the same job in staging does not.
    let job = idp.sign(job_claims(idp, "prod"), "RS256", None).await;
    let path = "/.gatehouse/secrets/prod/demo/hello/db-password";
    let (status, doc) = call(gw.port, "GET", path, &job, None).unwrap();
    assert_eq!(
        (status, doc["value"].as_str()),
        (200, Some("second")),
        "{doc}"
    );
    let staging = idp.sign(job_claims(idp, "staging"), "RS256", None).await;
    assert_eq!(call(gw.port, "GET", path, &staging, None).unwrap().0, 403);
    // Nor anything outside its path, nor a write.
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/other/key"],
        b"x",
    ));
    assert_eq!(
        call(
            gw.port,
            "GET",
            "/.gatehouse/secrets/prod/demo/other/key",
            &job,
            None
        )
        .unwrap()
        .0,
        403
    );
    assert_eq!(
        call(gw.port, "PUT", path, &job, Some(&json!({"value": "evil"})))
            .unwrap()
            .0,
        403
    );
    // A tag can forbid what a path allows.
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/root", "--tag", "break-glass=true"],
        b"r",
    ));
    assert_eq!(
        call(
            gw.port,
            "GET",
            "/.gatehouse/secrets/prod/demo/hello/root",
            &job,
            None
        )
        .unwrap()
        .0,
        403
    );
    // The payments team: it lists only what is tagged theirs, creates tagged secrets, and
    // cannot re-tag one (which could move it out of a forbid's reach).
    let pay = gw.token("pay-1", &["payments"]);
    let listed = ok(&secret_cli(&gw, &pay, &["list", "prod/"], b""));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.starts_with("prod/demo/hello/db-password\t"),
        "{listed}"
    );
    ok(&secret_cli(
        &gw,
        &pay,
        &["put", "prod/pay/api-key", "--tag", "team=payments"],
        b"k",
    ));
    assert!(
        !secret_cli(&gw, &pay, &["put", "prod/pay/untagged"], b"k")
            .status
            .success()
    );
    let out = secret_cli(
        &gw,
        &pay,
        &[
            "tag",
            "prod/demo/hello/db-password",
            "--tag",
            "team=payments",
            "--tag",
            "x=y",
        ],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
    let out = secret_cli(
        &gw,
        &pay,
        &[
            "put",
            "prod/demo/hello/db-password",
            "--tag",
            "team=payments",
        ],
        b"v",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "re-tagging by put: {out:?}"
    );
    ok(&secret_cli(
        &gw,
        &pay,
        &["put", "prod/demo/hello/db-password"],
        b"second",
    ));

    // Someone who is not ops gets nothing; nobody unauthenticated does.
    let dev = gw.token("dev-1", &["dev"]);
    let out = secret_cli(&gw, &dev, &["get", "prod/demo/hello/db-password"], b"");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
    let (status, _) = call(gw.port, "GET", path, "not-a-token", None).unwrap();
    assert_eq!(status, 401);

    // Versions, disable, delete, recover, purge through the CLI.
    ok(&secret_cli(
        &gw,
        &ops,
        &["disable", "prod/demo/hello/db-password"],
        b"",
    ));
    let (status, doc) = call(gw.port, "GET", path, &job, None).unwrap();
    assert_eq!(
        (status, doc["code"].as_str()),
        (409, Some("secret_disabled")),
        "{doc}"
    );
    ok(&secret_cli(
        &gw,
        &ops,
        &["enable", "prod/demo/hello/db-password"],
        b"",
    ));
    ok(&secret_cli(
        &gw,
        &ops,
        &["rotate", "prod/demo/hello/db-password"],
        b"",
    ));
    assert_eq!(
        ok(&secret_cli(
            &gw,
            &ops,
            &["get", "prod/demo/hello/db-password"],
            b""
        ))
        .len(),
        43
    );
    ok(&secret_cli(
        &gw,
        &ops,
        &["delete", "prod/demo/other/key"],
        b"",
    ));
    assert_eq!(
        call(
            gw.port,
            "GET",
            "/.gatehouse/secrets/prod/demo/other/key",
            &ops,
            None
        )
        .unwrap()
        .0,
        409
    );
    assert!(
        ok(&secret_cli(&gw, &ops, &["list", "--deleted"], b"")).contains("prod/demo/other/key")
    );
    ok(&secret_cli(
        &gw,
        &ops,
        &["recover", "prod/demo/other/key"],
        b"",
    ));
    assert_eq!(
        ok(&secret_cli(&gw, &ops, &["get", "prod/demo/other/key"], b"")),
        "x"
    );
    ok(&secret_cli(
        &gw,
        &ops,
        &["delete", "prod/demo/other/key"],
        b"",
    ));
    ok(&secret_cli(
        &gw,
        &ops,
        &["purge", "prod/demo/other/key"],
        b"",
    ));
    assert_eq!(
        call(
            gw.port,
            "GET",
            "/.gatehouse/secrets/prod/demo/other/key",
            &ops,
            None
        )
        .unwrap()
        .0,
        404
    );
    // Not a path; not an operation.
    assert_eq!(
        call(gw.port, "GET", "/.gatehouse/secrets/a//b", &ops, None)
            .unwrap()
            .0,
        400
    );
    assert_eq!(
        call(
            gw.port,
            "POST",
            "/.gatehouse/secrets/a/b:explode",
            &ops,
            None
        )
        .unwrap()
        .0,
        405
    );
    // An encoded colon is part of the path (and refused there), never an operation.
    assert_eq!(
        call(
            gw.port,
            "GET",
            "/.gatehouse/secrets/a/b%3Aversions",
            &ops,
            None
        )
        .unwrap()
        .0,
        400
    );

    // On record: who read what, the job's run and commit, never a value.
    let audit = gw.audit_when("the job's read", |a| {
        a.contains("\"job\":\"9001\"") && a.contains("secret:get")
    });
    assert!(
        audit.contains("secret prod/demo/hello/db-password version 2"),
        "{audit}"
    );
    assert!(
        !audit.contains(value) && !audit.contains("second"),
        "a value reached the audit log"
    );
    assert!(
        !gw.log().contains(value) && !gw.log().contains("second"),
        "a value reached the log"
    );
    let job_read = audit
        .lines()
        .find(|l| l.contains("\"job\":\"9001\"") && l.contains("\"allow\""))
        .unwrap();
    let rec: Value = serde_json::from_str(job_read).unwrap();
    assert_eq!(
        rec["principal"]["workload"]["commit"],
        "e5b6f8c1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7"
    );
    assert_eq!(rec["principal"]["workload"]["run_id"], "77");
    assert_eq!(rec["action"], "secret:get");
}

/// A burst of puts through one node, killed with SIGKILL in the middle: every acknowledged
/// version reads back after the restart, with its value.
#[test]
fn a_node_killed_mid_burst_of_puts_keeps_every_acknowledged_version() {
    let tmp = TempDir::new("secrets-kill9");
    let mut gw = gateway(&tmp, "");
    let ops = gw.token("oncall", &["ops"]);
    let port = gw.port;
    let acked = Arc::new(Mutex::new(Vec::<(String, i64, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (ops, acked) = (ops.clone(), acked.clone());
        writers.push(std::thread::spawn(move || {
            for i in 0..200 {
                let path = format!("burst/w{w}/s{}", i % 7);
                let value = format!("v-{w}-{i}");
                match call(
                    port,
                    "PUT",
                    &format!("/.gatehouse/secrets/{path}"),
                    &ops,
                    Some(&json!({"value": value, "max_versions": 1000})),
                ) {
                    Some((201, doc)) => {
                        acked
                            .lock()
                            .unwrap()
                            .push((path, doc["version"].as_i64().unwrap(), value))
                    }
                    None | Some((0, _)) => return,
                    Some((status, doc)) => panic!("{status}: {doc}"),
                }
            }
        }));
    }
    let start = Instant::now();
    while acked.lock().unwrap().len() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the burst did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    gw.kill_and_restart();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40 && acked.len() < 800,
        "{} acknowledged",
        acked.len()
    );
    for (path, version, value) in &acked {
        let (status, doc) = call(
            gw.port,
            "GET",
            &format!("/.gatehouse/secrets/{path}?version={version}"),
            &ops,
            None,
        )
        .unwrap();
        assert_eq!(
            (status, doc["value"].as_str()),
            (200, Some(value.as_str())),
            "{path} v{version}"
        );
    }
}

/// Waits until `f` answers `want` (within a second: a revocation reaches every node in one).
fn within_a_second(what: &str, want: u16, f: impl Fn() -> u16) {
    let start = Instant::now();
    loop {
        let got = f();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: still {got}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_job_revokes_its_tokens_and_a_job_may_end_itself() {
    let tmp = TempDir::new("secrets-job-end");
    let gw = gateway(&tmp, "");
    let idp = Idp::shared();
    let ops = gw.token("oncall", &["ops"]);
    ok(&secret_cli(
        &gw,
        &ops,
        &["put", "prod/demo/hello/db-password"],
        b"v1",
    ));
    let path = "/.gatehouse/secrets/prod/demo/hello/db-password";
    let refs = "/demo/hello.git/info/refs?service=git-upload-pack";
    let first = idp
        .sign(job_claims_for(idp, "prod", "9001"), "RS256", None)
        .await;
    let second = idp
        .sign(job_claims_for(idp, "prod", "9002"), "RS256", None)
        .await;
    for t in [&first, &second] {
        assert_eq!(call(gw.port, "GET", path, t, None).unwrap().0, 200);
        assert_eq!(call(gw.port, "GET", refs, t, None).unwrap().0, 200);
    }
    // The operator ends the first job by the id the audit records show.
    // Job ids as the audit records show them: the issuer, the repository, the run and the job.
    let job = |n: &str| {
        format!(
            "{}/demo/hello/run/77/job/{n}",
            idp.issuer().trim_start_matches("http://")
        )
    };
    let out = gw.cli(&["job", "end", &job("9001")]);
    assert!(out.status.success(), "{out:?}");
    within_a_second("the ended job's secret read", 401, || {
        call(gw.port, "GET", path, &first, None).unwrap().0
    });
    assert_eq!(
        call(gw.port, "GET", refs, &first, None).unwrap().0,
        401,
        "and its clone"
    );
    assert_eq!(
        call(gw.port, "GET", path, &second, None).unwrap().0,
        200,
        "another job of the run"
    );
    // A job ends itself over the API; it may not end another.
    let third = idp
        .sign(job_claims_for(idp, "prod", "9003"), "RS256", None)
        .await;
    let other = format!("/.gatehouse/jobs/{}:end", job("9003"));
    assert_eq!(call(gw.port, "POST", &other, &second, None).unwrap().0, 403);
    let own = format!("/.gatehouse/jobs/{}:end", job("9002"));
    let (status, doc) = call(gw.port, "POST", &own, &second, None).unwrap();
    assert_eq!((status, doc["ended"].as_bool()), (200, Some(true)), "{doc}");
    within_a_second("the job that ended itself", 401, || {
        call(gw.port, "GET", path, &second, None).unwrap().0
    });
    assert_eq!(call(gw.port, "GET", path, &third, None).unwrap().0, 200);
    // An ended job stays ended: it cannot be lifted, nor written through the revocation API.
    let lift = gw.cli(&["revoke", "lift", "job", &job("9001")]);
    assert!(!lift.status.success(), "{lift:?}");
    let (status, _) = call(
        gw.port,
        "POST",
        "/.gatehouse/revocations",
        &ops,
        Some(&json!({"kind": "job", "value": job("9003")})),
    )
    .unwrap();
    assert_eq!(status, 400);
    let audit = gw.audit_when("the refusal of the ended job", |a| a.contains("job_ended"));
    assert!(audit.contains("\"job:end\""), "{audit}");
    // What did the first job do? Its reads, its clone, and its refusals after it ended.
    let out = gw.cli_raw(&[
        "audit",
        "search",
        &gw.audit_path().to_string_lossy(),
        "--job",
        &job("9001"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.lines().any(|l| l.contains("secret:get  allow")
            && l.contains("secret prod/demo/hello/db-password version 1")),
        "{text}"
    );
    assert!(text.contains("git:read  allow"), "{text}");
    // Only this job's records (the second job's reads are not its).
    assert_eq!(
        text.lines().count(),
        audit
            .lines()
            .filter(|l| l.contains(&format!("\"job_id\":\"{}\"", job("9001"))))
            .count(),
        "{text}"
    );
    assert!(!text.contains("v1 "), "a value in the search: {text}");
}
