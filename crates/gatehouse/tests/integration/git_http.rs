use gatehouse_testkit::{GitHttpServer, Idp, TempDir, raw_http};

use crate::common::{
    POLICY, builder, clone_demo, commit_file, denial, echo, git_bearer, head_of, local_head, repos,
};

#[test]
fn clone_and_push_through_the_builtin_upstream() {
    let tmp = TempDir::new("builtin");
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let alice = gw.token("alice", &["dev"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice-clone");
    commit_file(&git, &work, "a.txt", "from alice\n");
    git.ok(&work, &["push", "-q", "origin", "main"]);
    let local = local_head(&git, &work);
    assert_eq!(head_of(&root.join("demo/hello.git"), "main"), local);

    // protocol v2 fetch and ls-remote work too
    git.ok(
        &work,
        &["-c", "protocol.version=2", "fetch", "-q", "origin"],
    );
    let refs = git.ok(&work, &["ls-remote", "origin"]).stdout;
    assert!(refs.contains(&local), "{refs}");
}

#[test]
fn read_only_identity_cannot_push_and_git_shows_why() {
    let tmp = TempDir::new("readonly");
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let bot = gw.token("ci-bot", &["ci"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &bot, "ci-clone");
    let before = head_of(&root.join("demo/hello.git"), "main");
    commit_file(&git, &work, "b.txt", "from ci\n");
    let push = git.run(&work, &["push", "origin", "main"]);
    assert!(!push.ok, "push by a read-only identity succeeded");
    assert!(
        push.stderr.contains(
            "remote: Gatehouse: git:write on demo/hello denied by policy (no_matching_permit)"
        ),
        "git did not show the refusal:\n{}",
        push.stderr
    );
    assert_eq!(
        head_of(&root.join("demo/hello.git"), "main"),
        before,
        "upstream changed"
    );
    // The refusal is on record: ci-bot's push (its ref advertisement, where git:write is decided).
    let record = denial(&gw, "ci-bot's refused push", |l| {
        l.contains(r#""path":"/demo/hello.git/info/refs","action":"git:write","repo":"demo/hello""#)
            && l.contains(r#""subject":"ci-bot""#)
    });
    assert!(
        record.contains(r#""reason":"no_matching_permit""#),
        "{record}"
    );

    // and a repository outside the policy cannot even be read
    let other = git.run(
        tmp.path(),
        &["clone", "-q", &format!("{}/secret/repo.git", gw.url()), "x"],
    );
    assert!(!other.ok);
    assert!(
        other
            .stderr
            .contains("git:read on secret/repo denied by policy"),
        "{}",
        other.stderr
    );
}

#[test]
fn unauthenticated_git_is_asked_for_credentials_and_api_gets_a_bearer_challenge() {
    let tmp = TempDir::new("unauth");
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();

    let (status, raw) = raw_http(
        gw.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[],
    );
    assert_eq!(status, 401, "{raw}");
    assert!(
        raw.contains("www-authenticate: Basic realm=\"Gatehouse\""),
        "{raw}"
    );
    assert!(raw.contains("text/plain"), "{raw}");

    let git = gatehouse_testkit::Git::new(&tmp.path().join("home"));
    let ls = git.run(
        tmp.path(),
        &["ls-remote", &format!("{}/demo/hello.git", gw.url())],
    );
    assert!(!ls.ok);
    assert!(
        ls.stderr.contains("could not read Username"),
        "git did not try to prompt: {}",
        ls.stderr
    );

    let (status, raw) = raw_http(gw.port, "GET", "/api/v1/repos/demo/hello", &[]);
    assert_eq!(status, 401, "{raw}");
    assert!(
        raw.contains("www-authenticate: Bearer realm=\"Gatehouse\"\r\n"),
        "{raw}"
    );
    assert!(
        raw.contains("content-type: application/problem+json"),
        "{raw}"
    );
    assert!(raw.contains("\"code\":\"missing\""), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_tokens_rs256_and_es256_through_a_real_nginx_upstream() {
    let tmp = TempDir::new("nginx-idp");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let idp = Idp::shared();
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .with_idp(idp)
        .forge_kind("gitea")
        .policy(POLICY)
        .start();

    let rs = idp.client_token("urn:gatehouse:rs256").await;
    let es = idp.client_token("urn:gatehouse:es256").await;
    assert!(rs.starts_with("eyJ"));
    let header = |t: &str| {
        use base64::Engine as _;
        let h = t.split('.').next().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(header(&rs).contains("RS256"));
    assert!(header(&es).contains("ES256"));

    for (name, token) in [("rs", &rs), ("es", &es)] {
        let git = git_bearer(&tmp.path().join(format!("home-{name}")), token);
        let work = tmp.path().join(format!("clone-{name}"));
        git.ok(
            tmp.path(),
            &[
                "clone",
                "-q",
                &format!("{}/demo/hello.git", gw.url()),
                &work.to_string_lossy(),
            ],
        );
        commit_file(&git, &work, &format!("{name}.txt"), name);
        git.ok(&work, &["push", "-q", "origin", "main"]);
        let local = local_head(&git, &work);
        assert_eq!(head_of(&root.join("demo/hello.git"), "main"), local);
        git.ok(&work, &["pull", "-q", "--rebase", "origin", "main"]);
    }

    // What git does with https://user:TOKEN@host/...: HTTP Basic with the token as password.
    let git = gatehouse_testkit::Git::new(&tmp.path().join("home-basic"));
    let url = format!("http://x-token:{rs}@127.0.0.1:{}/demo/hello.git", gw.port);
    let ls = git.ok(tmp.path(), &["ls-remote", &url]);
    assert!(ls.stdout.contains("refs/heads/main"));
}

#[test]
fn a_forge_on_a_unix_socket_gets_clones_pushes_and_only_gatehouse_identity() {
    let tmp = TempDir::new("unix-upstream");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let socket = upstream.unix_socket().to_path_buf();
    let gw = builder()
        .with_upstream_url(&format!("unix:{}", socket.display()))
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let alice = gw.token("alice", &["dev"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice-clone");
    commit_file(&git, &work, "u.txt", "over the socket\n");
    git.ok(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        head_of(&root.join("demo/hello.git"), "main"),
        local_head(&git, &work)
    );

    // The forge sees Gatehouse's identity headers, never the client's.
    let (_, body) = echo(
        gw.port,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("X-WEBAUTH-USER", "admin"),
        ],
    );
    assert!(body.starts_with("user=alice;"), "{body}");

    // Readiness connects to the socket: gone, not ready; back, ready.
    let (s, ready) = raw_http(gw.admin_port, "GET", "/readyz", &[]);
    assert_eq!(s, 200, "{ready}");
    let moved = socket.with_extension("moved");
    std::fs::rename(&socket, &moved).unwrap();
    let (s, ready) = raw_http(gw.admin_port, "GET", "/readyz", &[]);
    assert_eq!(s, 503, "{ready}");
    assert!(ready.contains("\"upstream\":false"), "{ready}");
    std::fs::rename(&moved, &socket).unwrap();
    let (s, ready) = raw_http(gw.admin_port, "GET", "/readyz", &[]);
    assert_eq!(s, 200, "{ready}");
}

/// Both `server.threading` modes (thread per core, the default: several threads, each its own
/// runtime accepting on the listener; and the work-stealing runtime) serve clones, pushes and
/// concurrent requests alike, and drain on SIGTERM.
#[test]
fn both_threading_modes_serve_and_drain() {
    for (mode, accept_threads) in [("thread_per_core", 2), ("work_stealing", 0)] {
        serves_and_drains(mode, accept_threads);
    }
}

fn serves_and_drains(mode: &str, accept_threads: usize) {
    let tmp = TempDir::new(&format!("threading-{mode}"));
    let (root, _) = repos(&tmp);
    let mut gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .server_extra(&format!("threading = \"{mode}\"\nworker_threads = 3"))
        .start();
    let alice = gw.token("alice", &["dev"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "tpc-clone");
    commit_file(&git, &work, "t.txt", "thread per core\n");
    git.ok(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        head_of(&root.join("demo/hello.git"), "main"),
        local_head(&git, &work)
    );
    // Many connections at once: they land on the several accept threads.
    let auth = format!("Bearer {alice}");
    let port = gw.port;
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                raw_http(
                    port,
                    "GET",
                    "/demo/hello.git/info/refs?service=git-upload-pack",
                    &[("Authorization", &auth)],
                )
                .0
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let threads = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("gatehouse-accep"))
        .count();
    assert_eq!(
        threads, accept_threads,
        "{mode}: accept threads besides the main runtime's"
    );
    gw.signal("TERM");
    let status = gw
        .wait_exit(std::time::Duration::from_secs(15))
        .expect("gatehouse did not stop on SIGTERM");
    assert!(status.success(), "{mode}: {status:?}");
}
