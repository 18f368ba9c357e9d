//! What is shipped besides the binary, tested as its users would use it: the Kubernetes
//! manifests (rendered, then validated against Kubernetes' schemas and checked for what a
//! deployment must hold, their config through `gatehouse check`), the Dockerfile (hadolint), the
//! Prometheus alerts (promtool) and the Grafana dashboard (every metric they name is exported by a
//! running gateway), and the Debian package (built, installed with dpkg, run, its unit verified
//! by systemd-analyze).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse_testkit::{TempDir, raw_http};

use crate::common::{bin, builder, repos};
use crate::deploy::{root, run};

fn script(name: &str) -> PathBuf {
    root().join("crates/gatehouse-testkit/scripts").join(name)
}

/// Renders an overlay with the kustomize stand-in (kustomize itself cannot be installed here).
fn render(overlay: &str, out: &Path) -> PathBuf {
    let rendered = out.join(format!("{overlay}.yaml"));
    let o = Command::new("python3")
        .arg(script("kustomize_standin.py"))
        .arg(root().join("deploy/kubernetes").join(overlay))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "render {overlay}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&rendered, &o.stdout).unwrap();
    rendered
}

#[test]
fn kubernetes_overlays_validate_hold_what_a_deployment_needs_and_their_config_checks() {
    let tmp = TempDir::new("k8s");
    for overlay in ["base", "postgres"] {
        let rendered = render(overlay, tmp.path());
        let (ok, text) = run(Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.33"])
            .arg(&rendered));
        assert!(ok, "kubernetes-validate {overlay}:\n{text}");
        assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");
        let out = tmp.path().join(format!("{overlay}-config"));
        let (ok, text) = run(Command::new("python3")
            .arg(script("check_kubernetes.py"))
            .arg(&rendered)
            .arg(&out));
        assert!(ok, "{overlay}:\n{text}");
        // The ConfigMap's config, with the pod's paths moved into a scratch directory and the
        // workload's environment overrides applied, passes the pre-flight: nothing `serve` would
        // refuse (the issuer, the forge and PostgreSQL are not reachable from here: warnings).
        let state = out.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let keys = out.join("keys");
        let o = Command::new(bin())
            .args(["keys", "generate", "--out"])
            .arg(keys.join("signing.pem"))
            .output()
            .unwrap();
        assert!(o.status.success());
        let cfg = std::fs::read_to_string(out.join("gatehouse.toml"))
            .unwrap()
            .replace("/etc/gatehouse/keys", &keys.to_string_lossy())
            .replace("/etc/gatehouse/config", &out.to_string_lossy())
            .replace("/var/lib/gatehouse", &state.to_string_lossy())
            .replace("0.0.0.0:8080", "127.0.0.1:0")
            .replace("0.0.0.0:9090", "127.0.0.1:0");
        std::fs::write(out.join("gatehouse.toml"), cfg).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["check", "--timeout", "2s", "--config"])
            .arg(out.join("gatehouse.toml"));
        let env = std::fs::read_to_string(out.join("env")).unwrap();
        for line in env.lines() {
            let (k, v) = line.split_once('=').unwrap();
            cmd.env(k, v);
        }
        let (ok, text) = run(&mut cmd);
        if overlay == "base" {
            assert!(ok, "{overlay}: gatehouse check:\n{text}");
            assert!(text.contains("ok    policy"), "{text}");
        } else {
            // The store is PostgreSQL through the overrides: its password file and the server are
            // what is missing here, and nothing else.
            let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
            assert!(
                !fails.is_empty() && fails.iter().all(|l| l.starts_with("FAIL  store")),
                "{overlay}: gatehouse check:\n{text}"
            );
            assert!(text.contains("GATEHOUSE__STORE__URL"), "{text}");
        }
    }
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let (ok, text) = run(Command::new("hadolint")
        .args(["--failure-threshold", "info"])
        .arg(root().join("Dockerfile")));
    assert!(ok, "hadolint:\n{text}");
    // and hadolint does fail what it should (the check is live): a `latest` base image.
    let tmp = TempDir::new("hadolint");
    let bad = tmp.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian:latest\nRUN apt-get install curl\n").unwrap();
    let (ok, _) = run(Command::new("hadolint").arg(&bad));
    assert!(!ok, "hadolint accepted a bad Dockerfile");
}

/// Metric names a PromQL expression refers to (`gatehouse_...`), as exported series names.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("gatehouse_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        into.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
}

#[test]
fn alerts_and_dashboard_are_valid_and_name_only_metrics_a_gateway_exports() {
    let dir = root().join("deploy/observability");
    let (ok, text) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("gatehouse-alerts.yaml")));
    assert!(ok, "promtool check rules:\n{text}");
    let (ok, text) = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.join("gatehouse-alerts.test.yaml")));
    assert!(ok, "promtool test rules:\n{text}");

    let mut names = BTreeSet::new();
    let rules = std::fs::read_to_string(dir.join("gatehouse-alerts.yaml")).unwrap();
    metric_names(&rules, &mut names);
    // Every dashboard query, its Grafana variables replaced, must parse as PromQL: promtool checks
    // them as recording rules.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("gatehouse-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    let tmp = TempDir::new("dashboard");
    let mut recording = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        metric_names(e, &mut names);
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$job", "gatehouse")
            .replace("$instance", ".*");
        recording.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::Value::String(e)
        ));
    }
    std::fs::write(tmp.path().join("dashboard-rules.yaml"), recording).unwrap();
    let (ok, text) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(tmp.path().join("dashboard-rules.yaml")));
    assert!(ok, "a dashboard query is not valid PromQL:\n{text}");

    // Running gateways export every one of them. Labelled series appear once they have a
    // value, so the gateways first see one of each kind of traffic: an issuer's keys fetched, a
    // request allowed and one refused for its credential, an SSH command; and, on a second
    // gateway whose forge refuses connections, an upstream failure.
    let rtmp = TempDir::new("metrics-names");
    let (root_dir, _) = repos(&rtmp);
    let keys = rtmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    crate::ssh::keygen(&keys.join("ci"));
    let ci_pub = std::fs::read_to_string(keys.join("ci.pub")).unwrap();
    // The webhook relay's target refuses connections: the delivery stays pending.
    let refused_target = gatehouse_testkit::RefusedPort::new();
    let hooks = crate::webhooks::hook_config(
        &rtmp,
        &crate::webhooks::target(
            "ci",
            &format!("http://127.0.0.1:{}/hook", refused_target.port),
            "",
        ),
        "",
    );
    let gw = builder()
        .with_builtin_upstream(&root_dir)
        .with_idp(gatehouse_testkit::Idp::shared())
        .policy(crate::common::POLICY)
        .extra(&format!(
            "[ssh]\nlisten = \"127.0.0.1:0\"\n\n[[ssh.service_accounts]]\nname = \"ci-bot\"\n\
             public_key = \"{}\"\ngroups = [\"ci\"]\n\n{hooks}",
            ci_pub.trim()
        ))
        .start();
    let body = crate::webhooks::push_event("refs/heads/main", &"0".repeat(40), &"1".repeat(40));
    let (status, answer) = crate::webhooks::deliver(
        &gw,
        "gitea",
        "push",
        "5b3b8f3e-0000-4000-8000-000000000001",
        &body,
        Some(crate::webhooks::HOOK_SECRET),
    );
    assert_eq!(status, 202, "{answer}");
    let refs = "/demo/hello.git/info/refs?service=git-upload-pack";
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let (status, raw) = raw_http(gw.port, "GET", refs, &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{raw}");
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        refs,
        &[("Authorization", "Bearer not-a-token")],
    );
    assert_eq!(status, 401, "{raw}");
    let o = crate::ssh::ssh(
        &keys.join("ci"),
        gw.ssh_port(),
        &["git@127.0.0.1", "git-upload-pack 'demo/hello.git'"],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("refs/heads/main"),
        "{o:?}"
    );
    let refused = gatehouse_testkit::RefusedPort::new();
    // Exporting spans (when built with `otlp`) to a stand-in collector.
    let collector = gatehouse_testkit::OtlpCollectorStandIn::start();
    let traces = if cfg!(feature = "otlp") {
        format!("[traces]\nendpoint = \"{}\"\n", collector.url())
    } else {
        // A binary without the feature exports no span metric (and refuses [traces]).
        names.remove("gatehouse_trace_spans_total");
        String::new()
    };
    let down = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{}", refused.port))
        .no_wait_ready()
        .policy(crate::common::POLICY)
        .extra(&traces)
        .start();
    let auth = format!("Bearer {}", down.token("alice", &["dev"]));
    let (status, raw) = raw_http(down.port, "GET", refs, &[("Authorization", &auth)]);
    assert_eq!(status, 502, "{raw}");
    let metrics = gw.metrics() + &down.metrics();
    let families: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let exported = |name: &str| {
        let base = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        families.contains(name) || families.contains(base)
    };
    let missing: Vec<&String> = names.iter().filter(|n| !exported(n)).collect();
    assert!(names.len() >= 12, "{names:?}");
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "gatehouse_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "gatehouse"]).output();
    }
}

/// The Debian package as an operator gets it: built by scripts/package-deb.sh (from this test
/// run's binaries: the release one is the same code, built slower), installed with dpkg, its
/// binary run from /usr/bin, its unit verified, its user and directories made; then purged.
#[test]
fn the_debian_package_installs_runs_and_its_unit_verifies() {
    let tmp = TempDir::new("deb");
    let target = bin().parent().unwrap().parent().unwrap().to_owned();
    let (ok, text) = run(Command::new("bash")
        .arg(root().join("scripts/package-deb.sh"))
        .args(["--profile", "dev", "--no-build", "--out"])
        .arg(tmp.path())
        .env("CARGO_TARGET_DIR", &target));
    assert!(ok, "package-deb.sh:\n{text}");
    let deb = PathBuf::from(text.lines().last().unwrap().trim());
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{text}");
    let (ok, listing) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(ok, "{listing}");
    for path in [
        "./usr/bin/gatehouse",
        "./usr/bin/git-credential-gatehouse",
        "./usr/share/man/man1/gatehouse.1.gz",
        "./usr/share/bash-completion/completions/gatehouse",
        "./usr/share/zsh/vendor-completions/_gatehouse",
        "./usr/share/fish/vendor_completions.d/gatehouse.fish",
        "./usr/lib/systemd/system/gatehouse.service",
        "./usr/share/doc/gatehouse/copyright",
        "./usr/lib/debug/",
    ] {
        assert!(
            listing.contains(path),
            "{path} not in the package:\n{listing}"
        );
    }
    let _purge = Installed;
    let (ok, text) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i:\n{text}");
    let (ok, v) = run(Command::new("/usr/bin/gatehouse").arg("--version"));
    assert!(ok && v.starts_with("gatehouse "), "{v}");
    // Stripped: the debug info is in /usr/lib/debug, not in the binary.
    let (_, sections) = run(Command::new("objdump").args(["-h", "/usr/bin/gatehouse"]));
    assert!(!sections.contains(".debug_info"), "not stripped");
    let (ok, text) = run(Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/gatehouse.service"]));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/gatehouse.service").unwrap();
    for line in [
        "User=gatehouse",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecStartPre=/usr/bin/gatehouse check",
    ] {
        assert!(unit.contains(line), "{line} not in the unit");
    }
    let (ok, who) = run(Command::new("getent").args(["passwd", "gatehouse"]));
    assert!(ok && who.contains("/usr/sbin/nologin"), "{who}");
    assert!(Path::new("/var/lib/gatehouse").is_dir());
    let (ok, man) = run(Command::new("man")
        .args(["-P", "cat", "gatehouse"])
        .env("MANWIDTH", "80"));
    assert!(ok && man.contains("check"), "{man}");
    drop(_purge);
    // Purged: the configuration is gone; the state and its owner stay (an audit trail is not a
    // package manager's to delete, nor its uid to hand to the next system user).
    assert!(
        !Path::new("/etc/gatehouse").exists(),
        "purge left /etc/gatehouse"
    );
    assert!(!Path::new("/usr/bin/gatehouse").exists());
    assert!(Path::new("/var/lib/gatehouse").is_dir());
    let (ok, _) = run(Command::new("getent").args(["passwd", "gatehouse"]));
    assert!(ok, "purge deleted the owner of /var/lib/gatehouse");
}
