//! `gatehouse login` (device authorization grant approved in Chromium), `token print`, the git
//! credential helper with a real `git clone` and `git push`, and `gatehouse logout`.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_testkit::{Git, Idp, TempDir, browser_sign_in, local_listener};

use crate::common::{POLICY, builder, commit_file, head_of, repos};

fn cli(xdg: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env("XDG_CONFIG_HOME", xdg);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_then_git_clone_and_push_through_the_credential_helper() {
    let tmp = TempDir::new("cli-login");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let listener = local_listener();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let secret = tmp.path().join("gatehouse-secret");
    std::fs::write(&secret, "gatehouse-secret").unwrap();
    let policy = format!(
        "{POLICY}\n@id(\"devs-demo\")\npermit(principal in Gatehouse::Group::\"devs\", action in [Gatehouse::Action::\"git:read\", Gatehouse::Action::\"git:write\"], resource in Gatehouse::Owner::\"demo\");\n"
    );
    let gw = builder()
        .listener(listener)
        .with_builtin_upstream(&root)
        .with_idp_extra(
            idp,
            &format!(
                "[issuers.login]\nclient_id = \"gatehouse\"\nclient_secret = {{ file = \"{}\" }}\nscopes = [\"openid\", \"profile\", \"email\", \"groups\", \"offline_access\", \"git:read\", \"git:write\"]\nextra_params = {{ resource = \"urn:gatehouse\" }}\ncli_client_id = \"git-cli\"\n",
                secret.display()
            ),
        )
        .policy(&policy)
        .extra(&format!("[session]\nexternal_url = \"{base}\"\n"))
        .start();
    let xdg = tmp.path().join("xdg");

    // Not signed in yet: a clear message, no token.
    let out = cli(&xdg).args(["token", "print"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gatehouse login"),
        "{out:?}"
    );

    // gatehouse login prints the URL and code, and polls while a person approves in a browser.
    let mut login = cli(&xdg)
        .args(["login", "--server", &base])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(login.stderr.take().unwrap());
    let mut printed = String::new();
    let mut url = String::new();
    while url.is_empty() {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "login printed:\n{printed}"
        );
        printed.push_str(&line);
        if let Some(u) = line
            .split_whitespace()
            .find(|w| w.starts_with("http") && w.contains("user_code="))
        {
            url = u.to_owned();
        }
    }
    assert!(url.starts_with(&idp.issuer()), "{printed}");
    let scenario = serde_json::json!({
        "scenario": "device", "start": url, "username": "alice", "password": "alice-pass",
    });
    let seen =
        tokio::task::spawn_blocking(move || browser_sign_in(&scenario, Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(seen.get("error").is_none(), "{seen:#}");
    assert!(
        printed.contains(seen["user_code"].as_str().unwrap()),
        "the code shown differs:\n{printed}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        (login.wait().unwrap(), rest)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "login failed:\n{printed}{}", status.1);
    assert!(
        status.1.contains("Signed in to") && status.1.contains("as alice"),
        "{}",
        status.1
    );

    // The refresh token rests in a file only the user can read.
    let creds = xdg.join("gatehouse/credentials.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&creds).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dmode = std::fs::metadata(xdg.join("gatehouse"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o077, 0, "{dmode:o}");
    }
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert!(
        saved["servers"][&base]["refresh_token"].is_string(),
        "{saved}"
    );

    // token print gives a token the gateway accepts as alice.
    let out = cli(&xdg).args(["token", "print"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let who: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/.gatehouse/"))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["username"], "alice", "{who}");
    // This gateway has no SSH front door: no SSH certificates either.
    let no_ssh = reqwest::Client::new()
        .post(format!("{base}/.gatehouse/ssh/cert"))
        .bearer_auth(&token)
        .body("ssh-ed25519 AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(no_ssh.status(), 400);
    assert!(no_ssh.text().await.unwrap().contains("ssh_not_configured"));
    // An expired cached token is renewed with the refresh token.
    let mut edited = saved.clone();
    edited["servers"][&base]["access_expires_at"] = 0.into();
    std::fs::write(&creds, serde_json::to_vec(&edited).unwrap()).unwrap();
    let out = cli(&xdg)
        .args(["token", "print", "--server", &base])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let renewed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(renewed, token, "the token was not renewed");

    // git with the helper: clone and push with no token anywhere in the URL or config.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_git-credential-gatehouse"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let git = Git::new(&tmp.path().join("home"))
        .env("PATH", &path)
        .env("XDG_CONFIG_HOME", &xdg.to_string_lossy())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", &format!("credential.{base}.helper"))
        .env("GIT_CONFIG_VALUE_0", "gatehouse");
    let work = tmp.path().join("work");
    git.ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &format!("{base}/demo/hello.git"),
            &work.to_string_lossy(),
        ],
    );
    commit_file(
        &git,
        &work,
        "from-helper.txt",
        "pushed through the credential helper\n",
    );
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/helper"]);
    let bare = root.join("demo/hello.git");
    assert!(
        !head_of(&bare, "helper").is_empty(),
        "the push did not land"
    );
    gw.audit_when("the push's audit record", |a| {
        a.contains("\"git:write\"") && a.contains("\"alice\"")
    });

    // The helper answers nothing for other hosts (git then asks its next helper).
    let mut other = cli(&xdg)
        .args(["credential", "get"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        other.stdin.as_mut().unwrap(),
        b"protocol=https\nhost=elsewhere.example\n\n",
    )
    .unwrap();
    let out = other.wait_with_output().unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    // logout revokes the refresh token at the IdP and forgets the sign-in; git then gets no
    // credentials and fails without prompting.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    let refresh = saved["servers"][&base]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client_id = saved["servers"][&base]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli(&xdg)
        .args(["logout", "--server", &base])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("could not revoke"),
        "{out:?}"
    );
    // The refresh token the file held (the one `token print` renewed with just before): the IdP
    // no longer knows it.
    let reuse: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reuse["error"], "invalid_grant", "{reuse}");
    let out = cli(&xdg).args(["token", "print"]).output().unwrap();
    assert!(!out.status.success());
    let r = git.run(
        tmp.path(),
        &["ls-remote", &format!("{base}/demo/hello.git")],
    );
    assert!(!r.ok, "ls-remote worked after logout");
}
