use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse_testkit::{GatewayBuilder, Git, TempDir, TestGateway};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"))
}

pub fn builder() -> GatewayBuilder {
    GatewayBuilder::new(&bin())
}

/// `GET /explore/_echo` through the gateway on `port` (the test upstream's page that prints the
/// request headers it received as `name=value;` pairs; under `/explore/`, an instance page on a
/// forge); asserts a 200 and returns the whole response and its body.
pub fn echo(port: u16, headers: &[(&str, &str)]) -> (String, String) {
    let (status, raw) = gatehouse_testkit::raw_http(port, "GET", "/explore/_echo", headers);
    assert_eq!(status, 200, "{raw}");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (raw, body)
}

/// The records in the audit log at `path` whose decision is `deny` and whose line `is_it` picks
/// out, once there are at least `n` (records reach the file in batches, a few milliseconds after
/// the response). After 10 s, panics with the log (each line cut to 1000 characters).
pub fn denials_in(path: &Path, what: &str, n: usize, is_it: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<String> = text
            .lines()
            .filter(|&l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|r| r["decision"] == "deny")
                    && is_it(l)
            })
            .map(str::to_owned)
            .collect();
        if found.len() >= n {
            return found;
        }
        if Instant::now() > deadline {
            let shown: Vec<&str> = text
                .lines()
                .map(|l| l.char_indices().nth(1000).map_or(l, |(i, _)| &l[..i]))
                .collect();
            panic!(
                "{} deny record(s) of {what} found in {}, {n} expected:\n{}",
                found.len(),
                path.display(),
                shown.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The (first) deny record of `what` in `gw`'s audit log: see [`denials_in`].
pub fn denial(gw: &TestGateway, what: &str, is_it: impl Fn(&str) -> bool) -> String {
    denials_in(&gw.audit_path(), what, 1, is_it).swap_remove(0)
}

/// dev may read and write demo/*; ci may only read it; anybody may reach the echo route.
pub const POLICY: &str = r#"
@id("dev-demo")
permit(principal in Gatehouse::Group::"dev",
       action in [Gatehouse::Action::"git:read", Gatehouse::Action::"git:write"],
       resource in Gatehouse::Owner::"demo");

@id("ci-read")
permit(principal in Gatehouse::Group::"ci", action == Gatehouse::Action::"git:read",
       resource in Gatehouse::Owner::"demo");

@id("idp-client")
permit(principal == Gatehouse::ServiceAccount::"ci-bot",
       action in [Gatehouse::Action::"git:read", Gatehouse::Action::"git:write"],
       resource in Gatehouse::Owner::"demo")
  // The IdP's ci-bot client, not Gatehouse's own ci-bot service token: pin the issuer.
  unless { principal.issuer == "urn:gatehouse:test" };

@id("echo")
permit(principal, action == Gatehouse::Action::"web:access", resource is Gatehouse::Route)
  when { resource.path == "/_echo" || resource.path == "/explore/_echo" };
"#;

/// Repositories demo/hello and secret/repo; returns the directory and secret/repo's commit.
pub fn repos(tmp: &TempDir) -> (PathBuf, String) {
    let root = tmp.path().join("repos");
    gatehouse_testkit::make_repo(&root, "demo", "hello");
    let secret = gatehouse_testkit::make_repo(&root, "secret", "repo");
    (root, secret)
}

/// A git client that sends `Authorization: Bearer <token>` with every request.
pub fn git_bearer(home: &Path, token: &str) -> Git {
    Git::new(home)
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env(
            "GIT_CONFIG_VALUE_0",
            &format!("Authorization: Bearer {token}"),
        )
}

pub fn commit_file(git: &Git, work: &Path, name: &str, content: &str) {
    std::fs::write(work.join(name), content).unwrap();
    git.ok(work, &["add", name]);
    git.ok(work, &["commit", "-qm", &format!("add {name}")]);
}

/// Makes the bare repository offer push options (`receive.advertisePushOptions`): to a server
/// that does not, git refuses to send them and the push never leaves the client.
pub fn offer_push_options(bare: &Path) {
    let cfg = std::process::Command::new("git")
        .args(["-c", "safe.directory=*", "--git-dir"])
        .arg(bare)
        .args(["config", "receive.advertisePushOptions", "true"])
        .output()
        .unwrap();
    assert!(cfg.status.success(), "{cfg:?}");
}

/// The id `full_ref` names in a bare repository on disk; empty when there is none.
pub fn ref_of(bare: &Path, full_ref: &str) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "--git-dir",
            &bare.to_string_lossy(),
            "rev-parse",
            "-q",
            "--verify",
            full_ref,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The id of `refs/heads/<branch>` in a bare repository on disk; empty when there is none.
pub fn head_of(bare: &Path, branch: &str) -> String {
    ref_of(bare, &format!("refs/heads/{branch}"))
}

/// Clones `{base}/demo/hello.git` as the holder of `token` into `tmp/<name>`; returns the git
/// client and the work tree.
pub fn clone_demo(tmp: &Path, base: &str, token: &str, name: &str) -> (Git, PathBuf) {
    let git = git_bearer(&tmp.join(format!("home-{name}")), token);
    let work = tmp.join(name);
    git.ok(
        tmp,
        &[
            "clone",
            "-q",
            &format!("{base}/demo/hello.git"),
            &work.to_string_lossy(),
        ],
    );
    (git, work)
}

/// The id of `HEAD` in a work tree.
pub fn local_head(git: &Git, work: &Path) -> String {
    git.ok(work, &["rev-parse", "HEAD"])
        .stdout
        .trim()
        .to_owned()
}

/// The first record of `what` in `gw`'s audit log, whatever its decision, waiting for it as
/// [`denials_in`] does.
pub fn record_of(gw: &TestGateway, what: &str, is_it: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(gw.audit_path()).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| is_it(l)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no record of {what} in {}:\n{text}",
            gw.audit_path().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
