use gatehouse_testkit::{GitHttpServer, TempDir, raw_http};

use crate::common::{POLICY, builder, repos};

const ADV: &str = "info/refs?service=git-upload-pack";

#[test]
fn no_spelling_of_a_path_reaches_a_forbidden_repository() {
    let tmp = TempDir::new("paths");
    let (root, secret_commit) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let alice = gw.token("alice", &["dev"]);
    let auth = format!("Bearer {alice}");
    let forbidden = [
        format!("/secret/repo.git/{ADV}"),
        format!("/demo/../secret/repo.git/{ADV}"),
        format!("/demo/%2e%2e/secret/repo.git/{ADV}"),
        format!("/demo/%2E%2E/secret/repo.git/{ADV}"),
        format!("/demo/.%2e/secret/repo.git/{ADV}"),
        format!("/demo%2F..%2Fsecret/repo.git/{ADV}"),
        format!("/demo/..%2Fsecret/repo.git/{ADV}"),
        format!("/demo/hello.git/../../secret/repo.git/{ADV}"),
        format!("/demo/hello.git%2F..%2F..%2Fsecret/repo.git/{ADV}"),
        format!("/demo/hello/../../secret/repo/{ADV}"),
        format!("//secret//repo.git/{ADV}"),
        format!("/./secret/./repo.git/{ADV}"),
        format!("/%73ecret/repo.git/{ADV}"),
        format!("/Secret/Repo.git/{ADV}"),
        format!("/secret/repo.git.git/{ADV}"),
        format!("/demo\\..\\secret/repo.git/{ADV}"),
        format!("/demo/%5C..%5Csecret/repo.git/{ADV}"),
        format!("/secret/repo/{ADV}"),
        "/secret/repo.git/info/refs?service=git-upload-pack&service=git-upload-pack".to_owned(),
        "/secret/repo.git/HEAD".to_owned(),
        "/secret/repo.git/objects/info/packs".to_owned(),
        format!("/repos/secret/repo.git/{ADV}"),
        format!("/../secret/repo.git/{ADV}"),
    ];
    for path in &forbidden {
        let (status, raw) = raw_http(gw.port, "GET", path, &[("Authorization", &auth)]);
        assert!(
            matches!(status, 400 | 403 | 404),
            "{path} -> {status}\n{raw}"
        );
        assert!(
            !raw.contains(&secret_commit),
            "{path} leaked secret/repo:\n{raw}"
        );
    }
    let allowed = [
        format!("/demo/hello.git/{ADV}"),
        format!("//demo//hello.git/{ADV}"),
        format!("/demo/./hello.git/{ADV}"),
        format!("/x/../demo/hello.git/{ADV}"),
        format!("/%64emo/hello.git/{ADV}"),
        format!("/demo/hello/{ADV}"),
    ];
    for path in &allowed {
        let (status, raw) = raw_http(gw.port, "GET", path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{path}\n{raw}");
        assert!(raw.contains("refs/heads/main"), "{path}\n{raw}");
    }
    // The audit trail names the repository that was actually decided on.
    gw.audit_when("the denial of secret/repo", |a| {
        a.contains("\"repo\":\"secret/repo\",\"decision\":\"deny\"")
    });
}

#[test]
fn gitea_flavor_folds_case_and_forwards_the_folded_path() {
    let tmp = TempDir::new("paths-gitea");
    let (root, secret_commit) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    for path in [
        format!("/DEMO/Hello.git/{ADV}"),
        format!("/api/../Demo/HELLO/{ADV}"),
    ] {
        let (status, raw) = raw_http(gw.port, "GET", &path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{path}\n{raw}");
    }
    for path in [
        format!("/SECRET/REPO.git/{ADV}"),
        format!("/Demo/../Secret/Repo.git/{ADV}"),
    ] {
        let (status, raw) = raw_http(gw.port, "GET", &path, &[("Authorization", &auth)]);
        assert_eq!(status, 403, "{path}\n{raw}");
        assert!(!raw.contains(&secret_commit));
    }
}
