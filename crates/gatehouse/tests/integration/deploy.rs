//! `deploy/` is tested as its users would run it: the Kubernetes manifests against Kubernetes'
//! schemas (`kubernetes-validate --strict`, from PyPI), the Istio resources against Istio's
//! documented fields (a stand-in for Istio's own validation, which cannot run here:
//! `check_deploy.py`), every embedded or shipped `gatehouse.toml` with its policy through
//! `gatehouse policy check`, the nginx sites through `nginx -t`, and the Caddyfiles through
//! `caddy validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse_testkit::TempDir;

/// The repository's root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`: whether it succeeded, and its stdout and stderr together.
pub(crate) fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

/// Istio's security kinds: Kubernetes' schemas do not know them (`check_deploy.py` does).
const ISTIO_KINDS: [&str; 3] = [
    "AuthorizationPolicy",
    "RequestAuthentication",
    "PeerAuthentication",
];

fn check_istio(dir: &Path, out: &Path) -> (bool, String) {
    let script = root().join("crates/gatehouse-testkit/scripts/check_deploy.py");
    run(Command::new("python3").arg(script).arg(dir).arg(out))
}

#[test]
fn istio_manifests_validate_and_their_config_is_gatehouses() {
    let dir = root().join("deploy/istio");
    let files = yaml_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    let (ok, text) = run(Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files));
    assert!(ok, "kubernetes-validate:\n{text}");
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            ISTIO_KINDS
                .iter()
                .any(|k| line.contains(&format!("kind {k} "))),
            "a kind no schema checked: {line}"
        );
    }
    assert!(
        text.contains("passed for resource deployment/gatehouse"),
        "{text}"
    );

    let tmp = TempDir::new("deploy-istio");
    let (ok, text) = check_istio(&dir, tmp.path());
    assert!(ok, "{text}");

    // The checker finds what Istio would refuse, and the pieces that do not fit.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let text = text
            .replace("forwardOriginalToken: true", "forwardOriginalToken: false")
            .replace(
                "name: gatehouse-grpc\n  rules:",
                "name: gatehouse-grpcc\n  rules:",
            )
            .replace("mode: STRICT", "mode: STRICTER")
            .replace("packAsBytes: true", "packAs: true");
        std::fs::write(broken.join(f.file_name().unwrap()), text).unwrap();
    }
    let (ok, text) = check_istio(&broken, tmp.path());
    assert!(!ok, "{text}");
    for finding in [
        "forwardOriginalToken must be true",
        "provider 'gatehouse-grpcc' is not in the mesh",
        "mtls.mode 'STRICTER'",
        "unknown field 'packAs'",
    ] {
        assert!(text.contains(finding), "{finding}: {text}");
    }

    // The embedded gatehouse.toml and policy are what `gatehouse serve` accepts.
    let toml = std::fs::read_to_string(tmp.path().join("gatehouse-config-gatehouse.toml")).unwrap();
    let policy = tmp.path().join("gatehouse-config-policy.cedar");
    let toml = toml.replace("/etc/gatehouse/policy.cedar", &policy.to_string_lossy());
    let config = tmp.path().join("gatehouse.toml");
    std::fs::write(&config, toml).unwrap();
    policy_check(&config);
}

fn policy_check(config: &Path) {
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["policy", "check", "--config"])
        .arg(config));
    assert!(ok, "{}: {text}", config.display());
}

#[test]
fn nginx_and_caddy_sites_load() {
    let tmp = TempDir::new("deploy-sites");
    let d = tmp.path();
    // The shipped gatehouse.toml files, with a policy the tests' own.
    for site in ["nginx", "caddy"] {
        let text =
            std::fs::read_to_string(root().join(format!("deploy/{site}/gatehouse.toml"))).unwrap();
        let policy = d.join("policy.cedar");
        std::fs::write(
            &policy,
            "permit(principal, action == Gatehouse::Action::\"git:read\", resource);\n",
        )
        .unwrap();
        let config = d.join(format!("{site}.toml"));
        std::fs::write(
            &config,
            text.replace("/etc/gatehouse/policy.cedar", &policy.to_string_lossy()),
        )
        .unwrap();
        policy_check(&config);
    }

    // nginx -t on each site, with a certificate where the site expects one and the services'
    // names resolvable here.
    let cert = rcgen::generate_simple_self_signed(vec!["git.example.com".to_owned()]).unwrap();
    std::fs::write(d.join("site.crt"), cert.cert.pem()).unwrap();
    std::fs::write(d.join("site.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    for site in ["gitea", "gogs"] {
        let text =
            std::fs::read_to_string(root().join(format!("deploy/nginx/{site}.conf"))).unwrap();
        let text = text
            .replace(
                "/etc/nginx/tls/git.example.com.crt",
                &d.join("site.crt").to_string_lossy(),
            )
            .replace(
                "/etc/nginx/tls/git.example.com.key",
                &d.join("site.key").to_string_lossy(),
            )
            .replace("http://gatehouse:", "http://127.0.0.1:")
            .replace("http://gitea:", "http://127.0.0.1:")
            .replace("http://gogs:", "http://127.0.0.1:")
            .replace("listen 80;", "listen 127.0.0.1:18080;")
            .replace("listen 443 ssl http2;", "listen 127.0.0.1:18443 ssl http2;");
        let dd = d.display();
        let conf = format!(
            "worker_processes 1;\npid {dd}/nginx.pid;\nerror_log {dd}/error.log;\n\
             events {{}}\nhttp {{\n  client_body_temp_path {dd}/tmp/b;\n  proxy_temp_path {dd}/tmp/p;\n  \
             fastcgi_temp_path {dd}/tmp/f;\n  uwsgi_temp_path {dd}/tmp/u;\n  scgi_temp_path {dd}/tmp/s;\n{text}\n}}\n"
        );
        let path = d.join(format!("{site}.nginx.conf"));
        std::fs::write(&path, conf).unwrap();
        let (ok, text) = run(Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(d.join("error.log")));
        assert!(ok, "nginx -t {site}: {text}");
    }

    for site in ["Caddyfile.gitea", "Caddyfile.gogs"] {
        let (ok, text) = run(Command::new("caddy")
            .args(["validate", "--adapter", "caddyfile", "--config"])
            .arg(root().join("deploy/caddy").join(site))
            .env("HOME", d)
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_CONFIG_HOME", d.join("config")));
        assert!(ok && text.contains("Valid configuration"), "{site}: {text}");
    }
}
