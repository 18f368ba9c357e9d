//! docs/idp/: each guide's configuration, example token and resulting principal, checked. The
//! test IdP signs the guide's token (its claims as the provider shapes them: claim names, `aud`
//! forms, group claims) with fresh times; Gatehouse gets the guide's `[[issuers]]` entry, with
//! only the key set's address pointed at the test IdP; `gatehouse policy explain` must show the
//! principal the guide shows. The refusals each guide promises are checked the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse_testkit::{Child, Idp, TempDir};
use serde_json::Value;

use crate::common::{POLICY, bin, builder, repos};

fn guide_text(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/idp")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first fenced block of `lang` in `md`.
fn block(md: &str, lang: &str) -> String {
    let open = format!("```{lang}\n");
    let start = md
        .find(&open)
        .unwrap_or_else(|| panic!("no ```{lang} block"))
        + open.len();
    let end = md[start..].find("\n```").unwrap() + start;
    md[start..end].to_owned()
}

/// The guide's `principal: ...` line.
fn principal_line(md: &str) -> String {
    md.lines()
        .find(|l| l.starts_with("principal: "))
        .unwrap_or_else(|| panic!("no principal line"))
        .to_owned()
}

struct Setup {
    _tmp: TempDir,
    _builder: gatehouse_testkit::GatewayBuilder,
    config: PathBuf,
}

/// A gateway config with the guide's issuer entry, whose keys are fetched from the test IdP.
fn setup(guide: &str, idp_jwks: Option<&str>, edit: impl Fn(String) -> String) -> Setup {
    let tmp = TempDir::new("idp-guide");
    let (root, _) = repos(&tmp);
    let b = builder().with_builtin_upstream(&root).policy(POLICY);
    let config = b.write_config(0, 0);
    let mut entry = block(guide, "toml");
    if let Some(jwks) = idp_jwks {
        // The key set's address is the only thing not as the guide has it.
        let at = entry.find("issuer = ").unwrap();
        let line_end = entry[at..].find('\n').unwrap() + at + 1;
        entry.insert_str(line_end, &format!("jwks_uri = \"{jwks}\"\n"));
    }
    let entry = edit(entry);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push('\n');
    text.push_str(&entry);
    std::fs::write(&config, text).unwrap();
    Setup {
        config,
        _builder: b,
        _tmp: tmp,
    }
}

/// `gatehouse policy explain` for a clone by `token`: the principal line, or the refusal.
fn explain(s: &Setup, token: &str) -> Result<String, String> {
    let o = Command::new(bin())
        .args(["policy", "explain", "--config"])
        .arg(&s.config)
        .args([
            "--token",
            token,
            "--method",
            "GET",
            "--url",
            "http://git.example/demo/hello.git/info/refs?service=git-upload-pack",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    match out.lines().find(|l| l.starts_with("principal: ")) {
        Some(l) => Ok(l.to_owned()),
        None => Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr))),
    }
}

/// The guide's token claims with fresh times.
fn fresh(claims: &Value) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut c = claims.clone();
    let m = c.as_object_mut().unwrap();
    m.insert("exp".into(), (now + 600).into());
    for k in ["iat", "nbf", "auth_time"] {
        if m.contains_key(k) {
            m.insert(k.into(), (now - 5).into());
        }
    }
    c
}

async fn jwks_uri(idp: &Idp) -> String {
    let d: Value = reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    d["jwks_uri"].as_str().unwrap().to_owned()
}

/// Checks a JWT guide: the guide's token gives the guide's principal, and each of `refused`
/// (a change to the claims, and the code the guide says it gets) is refused with that code.
/// A change to a token's claims, and the code the guide says the changed token is refused with.
type Refusal<'a> = (&'a dyn Fn(&mut Value), &'a str);

async fn jwt_guide(name: &str, refused: &[Refusal<'_>]) {
    let idp = Idp::shared();
    let md = guide_text(name);
    let jwks = jwks_uri(idp).await;
    let s = setup(&md, Some(&jwks), |e| e);
    let claims: Value = serde_json::from_str(&block(&md, "json")).unwrap();
    let token = idp.sign(fresh(&claims), "RS256", None).await;
    assert_eq!(
        explain(&s, &token),
        Ok(principal_line(&md)),
        "{name}: the guide's token"
    );
    for (change, code) in refused {
        let mut c = fresh(&claims);
        change(&mut c);
        let token = idp.sign(c, "RS256", None).await;
        match explain(&s, &token) {
            Ok(p) => panic!("{name}: accepted as {p}, expected {code}"),
            Err(e) => assert!(
                e.contains(&format!("({code})")),
                "{name}: expected {code}: {e}"
            ),
        }
    }
}

fn set(path: &'static str, v: Value) -> impl Fn(&mut Value) {
    move |c: &mut Value| {
        c[path] = v.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_guide() {
    jwt_guide(
        "keycloak.md",
        &[
            // A fresh realm's token, without the audience mapper.
            (&set("aud", "account".into()), "wrong_audience"),
            // Keycloak 25+ without the `basic` scope: no `sub`.
            (
                &|c: &mut Value| {
                    c.as_object_mut().unwrap().remove("sub");
                },
                "missing_claim",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dex_guide() {
    jwt_guide(
        "dex.md",
        &[(&set("aud", "gatehouse-cli".into()), "wrong_audience")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_guide() {
    jwt_guide(
        "okta.md",
        &[
            (&set("sub", "bob@contractor.example".into()), "bad_claim"),
            (&set("aud", "api://default".into()), "wrong_audience"),
            (
                &|c: &mut Value| {
                    c.as_object_mut().unwrap().remove("uid");
                },
                "missing_claim",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_id_guide() {
    jwt_guide(
        "entra-id.md",
        &[
            (
                &set(
                    "preferred_username",
                    "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com".into(),
                ),
                "bad_claim",
            ),
            (
                &set("preferred_username", "bob@fabrikam.example".into()),
                "bad_claim",
            ),
            (
                &set("tid", "00000000-0000-0000-0000-000000000000".into()),
                "claim_not_bound",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_guide() {
    jwt_guide(
        "google.md",
        &[
            (&set("email_verified", false.into()), "claim_not_bound"),
            // An ID token minted for another audience (gcloud's own client id).
            (
                &set("aud", "32555940559.apps.googleusercontent.com".into()),
                "wrong_audience",
            ),
            (&set("email", "someone@gmail.com".into()), "bad_claim"),
        ],
    )
    .await;
    // An opaque Google access token is not accepted.
    let md = guide_text("google.md");
    let jwks = jwks_uri(Idp::shared()).await;
    let s = setup(&md, Some(&jwks), |e| e);
    let e = explain(&s, "ya29.a0AfB_byC1234567890abcdefghijklmnopqrstuvwxyz").unwrap_err();
    assert!(e.contains("(malformed)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_guide() {
    jwt_guide(
        "github.md",
        &[
            (&set("repository_owner_id", "999".into()), "claim_not_bound"),
            (
                &set("aud", "https://github.com/acme".into()),
                "wrong_audience",
            ),
        ],
    )
    .await;
}

/// Gitea or Forgejo as the IdP: their JWT access tokens without `iss` go to introspection, here a
/// stand-in of their endpoint; a refresh token is refused without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_forgejo_guide() {
    let idp = Idp::shared();
    let md = guide_text("gitea-forgejo.md");
    let answer: Value = serde_json::from_str(&block(&md, "json")).unwrap();
    let client_id = answer["aud"][0].as_str().unwrap().to_owned();
    // Tokens shaped as the forge signs them: the grant, the kind and the times, nothing else.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let shaped = |gnt: i64, tt: i64| serde_json::json!({"gnt": gnt, "tt": tt, "exp": now + 3600, "iat": now});
    let alice = idp.sign(shaped(42, 0), "RS256", None).await;
    let other_app = idp.sign(shaped(43, 0), "RS256", None).await;
    let refresh = idp.sign(shaped(42, 1), "RS256", None).await;
    let revoked = idp.sign(shaped(44, 0), "RS256", None).await;
    let tmp = TempDir::new("gitea-introspect");
    let tokens = serde_json::json!({
        alice.clone(): {"username": answer["username"], "sub": answer["sub"], "aud": client_id, "scope": answer["scope"]},
        other_app.clone(): {"username": "alice", "sub": "3", "aud": "another-client", "scope": ""},
        refresh.clone(): {"username": "alice", "sub": "3", "aud": client_id, "scope": ""},
    });
    std::fs::write(tmp.path().join("tokens.json"), tokens.to_string()).unwrap();
    let secret = "gto_7f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gatehouse-testkit/scripts/gitea_introspect_standin.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(tmp.path().join("tokens.json"))
        .arg(&client_id)
        .arg(secret)
        .arg(answer["iss"].as_str().unwrap());
    let mut standin = Child::spawn(
        "gitea introspect stand-in",
        &mut cmd,
        &tmp.path().join("standin.log"),
    );
    let port = standin.wait_logged_port(
        "the introspection stand-in",
        "gitea introspect stand-in on ",
    );
    let secret_file = tmp.path().join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    // The forge's own key set (its /login/oauth/keys) is the test IdP's here: the forge's ID
    // tokens then verify as JWTs, and must still be refused.
    let jwks = jwks_uri(idp).await;
    let s = setup(&md, Some(&jwks), |e| {
        e.replace(
            "https://git.example.com/login/oauth/introspect",
            &format!("http://127.0.0.1:{port}/login/oauth/introspect"),
        )
        .replace(
            "/etc/gatehouse/gitea-oauth-secret",
            &secret_file.to_string_lossy(),
        )
    });
    assert_eq!(explain(&s, &alice), Ok(principal_line(&md)));
    let e = explain(&s, &other_app).unwrap_err();
    assert!(e.contains("(wrong_audience)"), "{e}");
    let asked_before = standin
        .log_text()
        .lines()
        .filter(|l| l.starts_with("introspect"))
        .count();
    let e = explain(&s, &refresh).unwrap_err();
    assert!(e.contains("(wrong_token_type)"), "{e}");
    let asked_after = standin
        .log_text()
        .lines()
        .filter(|l| l.starts_with("introspect"))
        .count();
    assert_eq!(
        asked_before, asked_after,
        "the refresh token was sent to the forge"
    );
    let e = explain(&s, &revoked).unwrap_err();
    assert!(e.contains("(inactive)"), "{e}");
    // An ID token of the forge's: `iss`, `aud` = the client, `sub` = the numeric user id, no
    // `username`. Signed with the forge's key, it is still not taken for user "3".
    let id_token = idp
        .sign(
            serde_json::json!({"iss": answer["iss"], "aud": [client_id], "sub": "3", "exp": now + 600, "iat": now, "nickname": "alice", "preferred_username": "alice"}),
            "RS256",
            None,
        )
        .await;
    let e = explain(&s, &id_token).unwrap_err();
    assert!(e.contains("(missing_claim)"), "{e}");
    // Gatehouse authenticates with HTTP Basic, as the forge requires: a wrong secret is a 401
    // there, and an outage here (never a pass).
    std::fs::write(&secret_file, "wrong").unwrap();
    let e = explain(&s, &alice).unwrap_err();
    assert!(e.contains("(introspection_unavailable)"), "{e}");
}
