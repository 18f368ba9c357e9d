use std::collections::BTreeSet;
use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
[upstream]
url = "http://127.0.0.1:3000"
[tokens]
signing_key = { file = "keys/signing.pem" }
[policy]
file = "policy.cedar"
[audit]
file = "audit.log"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/gatehouse"), "test.toml")
}

#[test]
fn minimal_config_gets_defaults_and_resolved_paths() -> Result<(), ConfigError> {
    let c = parse(MINIMAL)?;
    assert_eq!(c.policy.file, Path::new("/etc/gatehouse/policy.cedar"));
    assert_eq!(c.identity_headers.user, "X-WEBAUTH-USER");
    assert_eq!(c.server.header_read_timeout, ConfigDuration::secs(10));
    assert_eq!(c.server.websocket_idle_timeout, ConfigDuration::secs(600));
    assert_eq!(c.upstream.body_idle_timeout, ConfigDuration::secs(300));
    assert_eq!(c.server.body_idle_timeout, ConfigDuration::secs(60));
    assert_eq!(c.forge.kind, ForgeKind::Gitea);
    match &c.tokens.signing_key {
        SecretSource::File { file } => {
            assert_eq!(file, Path::new("/etc/gatehouse/keys/signing.pem"))
        }
        SecretSource::Env { .. } => panic!("expected a file"),
    }
    Ok(())
}

#[test]
fn a_typo_fails_loudly() {
    let text = MINIMAL.replace("[policy]\nfile", "[policy]\nfiel");
    let err = parse(&text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("fiel"), "{err}");
    let text = format!("{MINIMAL}\n[log]\nlevel = \"info\"\nformt = \"json\"\n");
    assert!(parse(&text).is_err());
}

#[test]
fn unsafe_algorithms_are_refused() {
    for alg in ["HS256", "none", "None"] {
        let text = format!(
            "{MINIMAL}\n[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"gatehouse\"]\nalgorithms = [\"RS256\", \"{alg}\"]\n"
        );
        let err = parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("never accepted"), "{alg}: {err}");
    }
}

#[test]
fn unusable_values_are_refused() {
    for (from, to) in [
        ("[policy]", "[identity_headers]\nuser = \"X Bad\"\n[policy]"),
        (
            "[policy]",
            "[identity_headers]\nstrip = [\"ok\", \"bad:header\"]\n[policy]",
        ),
        (
            "[policy]",
            "[identity_headers]\nassertion_ttl = \"0s\"\n[policy]",
        ),
        (
            "[policy]",
            "[identity_headers]\nassertion_audience = \"gatehouse\"\n[policy]",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nidle_timeout = \"0s\"",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nwebsocket_idle_timeout = \"0s\"",
        ),
    ] {
        let text = MINIMAL.replacen(from, to, 1);
        assert!(parse(&text).is_err(), "accepted:\n{text}");
    }
}

#[test]
fn audit_rotation_takes_sizes_and_durations_with_a_floor() {
    let with = |lines: &str| {
        parse(&MINIMAL.replace(
            "file = \"audit.log\"",
            &format!("file = \"audit.log\"\n{lines}"),
        ))
    };
    let cfg =
        with("rotate_size = \"256MiB\"\nrotate_age = \"1d\"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.audit.rotate_size, Some(ByteSize(256 << 20)));
    assert_eq!(
        cfg.audit.rotate_age.map(|a| a.0),
        Some(std::time::Duration::from_secs(86_400))
    );
    let cfg = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((cfg.audit.rotate_size, cfg.audit.rotate_age), (None, None));
    for bad in [
        "rotate_size = \"1KiB\"",
        "rotate_size = \"256\"",
        "rotate_size = \"256mb\"",
        "rotate_age = \"0s\"",
        "rotate_after = \"1d\"",
    ] {
        assert!(with(bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn upstream_must_be_exactly_one() {
    let text = MINIMAL.replace("url = \"http://127.0.0.1:3000\"", "");
    assert!(parse(&text).is_err());
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:3000\"",
        "url = \"http://x\"\ngit_http_backend = { repos_dir = \"r\" }",
    );
    assert!(parse(&text).is_err());
    let text = MINIMAL.replace("http://127.0.0.1:3000", "ftp://x");
    assert!(parse(&text).is_err());
}

#[test]
fn a_unix_socket_upstream_is_an_absolute_path_without_tls() {
    let unix = |url: &str, more: &str| {
        parse(&MINIMAL.replace(
            "url = \"http://127.0.0.1:3000\"",
            &format!("url = \"{url}\"\n{more}"),
        ))
    };
    assert!(unix("unix:/run/gitea/gitea.sock", "").is_ok());
    for (url, more) in [
        ("unix:run/gitea.sock", ""),
        ("unix:", ""),
        ("unix:/run/gitea.sock", "ca_file = \"ca.pem\""),
        (
            "unix:/run/gitea.sock",
            "client_cert_file = \"c.pem\"\nclient_key_file = \"k.pem\"",
        ),
        ("unix:/run/gitea.sock", "danger_accept_invalid_certs = true"),
    ] {
        let e = unix(url, more)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("upstream.url"), "{url} {more}: {e}");
    }
    // The forge API is not read through the socket: it needs its own URL.
    let groups = "[forge.groups]\ntoken = { env = \"T\" }\n";
    let e = parse(&format!(
        "{}{groups}",
        MINIMAL.replace("http://127.0.0.1:3000", "unix:/run/gitea.sock")
    ))
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("forge.groups.api_url"), "{e}");
    let text = format!(
        "{}{groups}api_url = \"http://127.0.0.1:3000\"\n",
        MINIMAL.replace("http://127.0.0.1:3000", "unix:/run/gitea.sock")
    );
    assert!(parse(&text).is_ok(), "{:?}", parse(&text).err());
}

#[test]
fn durations() {
    assert_eq!(
        ConfigDuration::parse("250ms").map(|d| d.0.as_millis()),
        Ok(250)
    );
    assert_eq!(ConfigDuration::parse("5m").map(|d| d.0.as_secs()), Ok(300));
    assert_eq!(
        ConfigDuration::parse("2d").map(|d| d.0.as_secs()),
        Ok(172_800)
    );
    assert!(ConfigDuration::parse("5").is_err());
    assert!(ConfigDuration::parse("5 minutes").is_err());
    assert!(ConfigDuration::parse("-5s").is_err());
    assert_eq!(ConfigDuration::secs(3600).to_string(), "1h");
}

#[test]
fn secrets_from_env_and_file() {
    let dir = std::env::temp_dir().join(format!("gh-cfg-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let f = dir.join("s");
    let _ = std::fs::write(&f, "file-secret");
    let s = read_secret("x", &SecretSource::File { file: f });
    assert_eq!(
        s.map(|s| s.expose().clone()).ok().as_deref(),
        Some("file-secret")
    );
    let missing = read_secret(
        "x",
        &SecretSource::Env {
            env: "GATEHOUSE_TEST_SURELY_UNSET".into(),
        },
    );
    assert!(missing.is_err());
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every example config in `examples/` parses.
#[test]
fn examples_parse() {
    let dir = repo_root().join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "expected example configs in {}", dir.display());
}

fn keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                // A free-form map (its keys are the user's, not the schema's).
                if !matches!(
                    p.as_str(),
                    "issuers.login.extra_params" | "issuers.bound_claims" | "traces.headers"
                ) {
                    keys(&p, v, out);
                }
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                if v.is_table() {
                    keys(prefix, v, out);
                }
            }
        }
        _ => {}
    }
}

/// `examples/full.toml` sets every key, and `docs/configuration.md` documents every key it sets.
#[test]
fn every_key_is_documented() {
    let root = repo_root();
    let full = Config::load(&root.join("examples/full.toml")).unwrap_or_else(|e| panic!("{e}"));
    let serialized = toml::Value::try_from(&full).unwrap_or_else(|e| panic!("{e}"));
    let mut all = BTreeSet::new();
    keys("", &serialized, &mut all);
    let text =
        std::fs::read_to_string(root.join("examples/full.toml")).unwrap_or_else(|e| panic!("{e}"));
    let written: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut in_example = BTreeSet::new();
    keys("", &written, &mut in_example);
    let missing_in_example: Vec<_> = all.difference(&in_example).collect();
    assert!(
        missing_in_example.is_empty(),
        "examples/full.toml lacks {missing_in_example:?}"
    );
    let docs = std::fs::read_to_string(root.join("docs/configuration.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    let undocumented: Vec<_> = all
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/configuration.md lacks {undocumented:?}"
    );
}

#[test]
fn forge_api_settings_are_checked() {
    let c = parse(&format!(
        "{MINIMAL}\n[forge.api]\ntoken = {{ env = \"T\" }}\n"
    ))
    .unwrap();
    let a = c.forge.api.unwrap();
    assert_eq!(a.cache_ttl.0, std::time::Duration::from_secs(10));
    assert_eq!(a.url, None);
    for (extra, key) in [
        (
            "[forge]\nkind = \"generic\"\n[forge.api]\ntoken = { env = \"T\" }\n",
            "forge.api",
        ),
        (
            "[forge.api]\nurl = \"unix:/run/forge.sock\"\ntoken = { env = \"T\" }\n",
            "forge.api.url",
        ),
        (
            "[forge.api]\ntoken = { env = \"T\" }\ntimeout = \"0s\"\n",
            "forge.api.timeout",
        ),
        (
            "[forge.api]\ntoken = { env = \"T\" }\nsudo = true\n",
            "sudo",
        ),
    ] {
        let e = parse(&format!("{MINIMAL}\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
}

#[test]
fn trace_export_settings_are_checked() {
    let t = |extra: &str| parse(&format!("{MINIMAL}\n[traces]\n{extra}\n"));
    let c = t("endpoint = \"http://collector:4318\"").unwrap();
    let tr = c.traces.unwrap();
    assert_eq!(tr.traces_url(), "http://collector:4318/v1/traces");
    assert_eq!(
        (tr.sample_ratio, tr.service_name.as_str()),
        (1.0, "gatehouse")
    );
    let c = t("endpoint = \"http://[::1]:4318/\"").unwrap();
    assert_eq!(
        c.traces.unwrap().traces_url(),
        "http://[::1]:4318/v1/traces"
    );
    let c =
        t("endpoint = \"https://otlp.vendor.example/api/v2/spans\"\nsample_ratio = 0.1").unwrap();
    assert_eq!(
        c.traces.unwrap().traces_url(),
        "https://otlp.vendor.example/api/v2/spans"
    );
    for (extra, key) in [
        ("endpoint = \"collector:4318\"", "traces.endpoint"),
        ("endpoint = \"http://\"", "traces.endpoint"),
        (
            "endpoint = \"http://c:4318\"\nsample_ratio = 1.5",
            "traces.sample_ratio",
        ),
        (
            "endpoint = \"http://c:4318\"\nsample_ratio = -0.1",
            "traces.sample_ratio",
        ),
        (
            "endpoint = \"http://c:4318\"\nmax_queue = 0",
            "traces.max_queue",
        ),
        (
            "endpoint = \"http://c:4318\"\nmax_queue = 100000000",
            "traces.max_queue",
        ),
        (
            "endpoint = \"http://c:4318\"\ntimeout = \"0s\"",
            "traces.timeout",
        ),
        (
            "endpoint = \"http://c:4318/v1/traces?key=k\"",
            "traces.endpoint",
        ),
        ("endpoint = \"http://c:4318/#f\"", "traces.endpoint"),
        (
            "endpoint = \"http://user:pw@c:4318/v1/traces\"",
            "traces.endpoint",
        ),
        ("endpoint = \"http://c:4318/v1 traces\"", "traces.endpoint"),
        ("endpoint = \"http://c:4318//v1/traces\"", "traces.endpoint"),
        (
            "endpoint = \"http://c:4318\"\nheaders = { \"bad header\" = { env = \"K\" } }",
            "traces.headers",
        ),
        // A header value is a secret: never written in the file.
        (
            "endpoint = \"http://c:4318\"\nheaders = { x-api-key = \"k\" }",
            "headers",
        ),
    ] {
        let e = t(extra).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
        assert!(!e.contains("\"k\""), "{e}");
    }
}

#[test]
fn sign_in_settings_are_checked() {
    let login = "[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"gatehouse\"]\n[issuers.login]\nclient_id = \"gh\"\n";
    let with = |extra: &str, session: &str| parse(&format!("{MINIMAL}\n{login}{extra}\n{session}"));
    let session = "[session]\nexternal_url = \"https://git.example.com\"\n";
    let c = with("", session).unwrap();
    let s = c.session.unwrap();
    assert_eq!(s.dir, Path::new("/etc/gatehouse/sessions"));
    assert_eq!(s.max_lifetime, ConfigDuration::secs(12 * 3600));
    assert!(
        c.issuers[0]
            .login
            .as_ref()
            .unwrap()
            .scopes
            .contains(&"openid".to_owned())
    );

    let refused = [
        ("", ""),
        ("scopes = [\"profile\"]\n", session),
        ("extra_params = { state = \"fixed\" }\n", session),
        (
            "extra_params = { redirect_uri = \"https://evil\" }\n",
            session,
        ),
        ("", "[session]\nexternal_url = \"http://git.example.com\"\n"),
        (
            "",
            "[session]\nexternal_url = \"https://git.example.com/path\"\n",
        ),
        ("", "[session]\nexternal_url = \"git.example.com\"\n"),
        (
            "",
            "[session]\nexternal_url = \"https://g\"\nrepositories = [\"nope\"]\n",
        ),
        (
            "",
            "[session]\nexternal_url = \"https://g\"\nmax_lifetime = \"10s\"\n",
        ),
        (
            "",
            "[session]\nexternal_url = \"https://g\"\nexternal_ur = \"x\"\n",
        ),
    ];
    for (extra, session) in refused {
        assert!(with(extra, session).is_err(), "accepted: {extra} {session}");
    }
    assert!(with("", "[session]\nexternal_url = \"http://127.0.0.1:8443\"\n").is_ok());
}

#[test]
fn spiffe_ids() {
    for ok in [
        "spiffe://cluster.local/ns/ci/sa/deployer",
        "spiffe://example.org",
        "spiffe://td_1.example-2/a.b/c_d-e",
    ] {
        assert!(crate::check_spiffe_id(ok).is_ok(), "refused {ok}");
    }
    for bad in [
        "",
        "http://cluster.local/ns/ci",
        "spiffe://",
        "spiffe://Cluster.local/ns",
        "spiffe://cluster.local/ns/",
        "spiffe://cluster.local//ns",
        "spiffe://cluster.local/ns/../sa",
        "spiffe://cluster.local/ns/./sa",
        "spiffe://cluster.local/ns?x=1",
        "spiffe://cluster.local/ns#f",
        "spiffe://user@cluster.local/ns",
        "spiffe://cluster.local:443/ns",
        "spiffe://cluster.local/n%41",
    ] {
        assert!(crate::check_spiffe_id(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn bound_claims_and_workloads_are_checked() {
    let with = |extra: &str| {
        parse(&format!(
            "{MINIMAL}\n[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"gatehouse\"]\n{extra}\n"
        ))
    };
    let ok = with("workload = \"github-actions\"\nbound_claims = { ref = [\"refs/heads/*\", \"!refs/heads/dev\"], \"kubernetes.io.namespace\" = \"ci\" }")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok.issuers[0].workload,
        Some(WorkloadPlatform::GithubActions)
    );
    assert_eq!(ok.issuers[0].bound_claims.len(), 2);
    for (extra, want) in [
        ("bound_claims = { ref = \"\" }", "must not be empty"),
        ("bound_claims = { ref = \"!\" }", "must not be empty"),
        ("bound_claims = { ref = [] }", "at least one pattern"),
        ("bound_claims = { ref = \"main\\\\\" }", "escapes nothing"),
        ("bound_claims = { ref = 7 }", "bound_claims"),
        ("workload = \"jenkins\"", "workload"),
    ] {
        let err = with(extra).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "{extra}: {err}");
    }
    // An escaped backslash at the end is a literal one.
    assert!(with("bound_claims = { ref = \"main\\\\\\\\\" }").is_ok());
}

#[test]
fn webhooks_are_checked_and_their_secret_files_resolved() {
    let hook = "[webhooks]\n[[webhooks.hooks]]\nname = \"gitea\"\nkind = \"gitea\"\nsecrets = [{ file = \"hook.secret\" }]\n";
    let target = "[[webhooks.hooks.targets]]\nname = \"bot\"\nurl = \"http://127.0.0.1:9/\"\nsigning_secret = { file = \"bot.whsec\" }\n";
    let c = parse(&format!("{MINIMAL}\n{hook}{target}")).unwrap();
    let w = c.webhooks.unwrap();
    let h = &w.hooks[0];
    assert!(
        matches!(&h.secrets[0], HookSecret::Source(SecretSource::File { file }) if file == Path::new("/etc/gatehouse/hook.secret"))
    );
    assert!(
        matches!(&h.targets[0].signing_secret, SecretSource::File { file } if file == Path::new("/etc/gatehouse/bot.whsec"))
    );
    assert_eq!(h.max_body.0, 5 << 20);
    assert_eq!(h.targets[0].max_in_flight, 4);
    assert!(!h.end_jobs);
    for (extra, key) in [
        (
            hook.replace("secrets = [{ file = \"hook.secret\" }]", "secrets = []"),
            "secrets",
        ),
        (
            hook.replace("\"gitea\"\nkind", "\"a/b\"\nkind"),
            "webhooks.hooks[0].name",
        ),
        (
            format!("{hook}{}", target.replace("http://127", "ftp://127")),
            "url",
        ),
        (format!("{hook}{target}{target}"), "targets[1].name"),
        (
            format!("{hook}{target}give_up_after = \"30d\"\n"),
            "give_up_after",
        ),
        (
            format!("{hook}{target}max_in_flight = 0\n"),
            "max_in_flight",
        ),
        (
            format!("{hook}{target}repositories = [\"acme\"]\n"),
            "repositories",
        ),
        (format!("{hook}{target}retry_min = \"2h\"\n"), "retry_min"),
        (format!("{hook}replay_window = \"10s\"\n"), "replay_window"),
        (
            hook.replace(
                "kind = \"gitea\"",
                "kind = \"standard\"\nreplay_window = \"5m\"",
            ),
            "replay_window",
        ),
        (
            hook.replace("kind = \"gitea\"", "kind = \"bitbucket\""),
            "kind",
        ),
        (
            hook.replace("{ file = \"hook.secret\" }", "{ secret = \"ci/hook\" }"),
            "needs the secrets broker",
        ),
        (format!("{hook}{target}colour = \"red\"\n"), "colour"),
    ] {
        let e = parse(&format!("{MINIMAL}\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
}

#[test]
fn a_secret_written_in_the_config_is_refused_with_the_fix_at_its_line() {
    let text = MINIMAL.replace(
        "signing_key = { file = \"keys/signing.pem\" }",
        "signing_key = \"-----BEGIN PRIVATE KEY-----\"",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(!e.contains("untagged"), "serde's words: {e}");
    assert!(e.contains("{ file = ") && e.contains("{ env = "), "{e}");
    assert!(e.contains("line 7"), "no line: {e}");
    assert!(!e.contains("BEGIN PRIVATE"), "the value was echoed: {e}");
    assert!(e.contains("signing_key = "), "the key is not shown: {e}");
}

#[test]
fn environment_overrides_apply_over_the_file_and_a_bad_one_names_the_variable() {
    let vars = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let c = Config::parse_with_env(
        MINIMAL,
        Path::new("/etc/gatehouse"),
        "test.toml",
        vars(&[
            ("GATEHOUSE__SERVER__LISTEN", "0.0.0.0:9443"),
            (
                "GATEHOUSE__TOKENS__SIGNING_KEY__FILE",
                "/run/secrets/key.pem",
            ),
            ("GATEHOUSE__TOKENS__ISSUER", "https://git.example.com"),
            ("GATEHOUSE__AUDIT__FILE", "/var/lib/gatehouse/audit.log"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9443");
    assert_eq!(c.tokens.issuer, "https://git.example.com");
    assert!(
        matches!(&c.tokens.signing_key, SecretSource::File { file } if file == Path::new("/run/secrets/key.pem"))
    );
    assert_eq!(c.env_overrides.len(), 4);
    // An unknown key, or a value of the wrong type, is refused naming the variables applied.
    for (var, value) in [
        ("GATEHOUSE__SERVER__LISTN", "0.0.0.0:1"),
        ("GATEHOUSE__SERVER__LISTEN", "not an address"),
    ] {
        let e = Config::parse_with_env(
            MINIMAL,
            Path::new("/etc/gatehouse"),
            "test.toml",
            vars(&[(var, value)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(var), "{var}: {e}");
    }
    // Validation still runs after the overrides.
    let e = Config::parse_with_env(
        MINIMAL,
        Path::new("/etc/gatehouse"),
        "test.toml",
        vars(&[("GATEHOUSE__UPSTREAM__URL", "ftp://forge")]),
    );
    assert!(e.is_err());
}
