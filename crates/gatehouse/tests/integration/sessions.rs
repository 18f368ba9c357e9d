//! Browser sign-in: the authorization code flow with PKCE through the real IdP, in headless
//! Chromium and step by step over HTTP for the attacks a browser would not make.

use std::time::Duration;

use gatehouse_testkit::{GitHttpServer, Idp, TempDir, browser_sign_in, local_listener};
use reqwest::header;

use crate::common::{POLICY, builder, repos};

/// The test policy, plus: the IdP's group `devs` may read demo/*; anyone may open /_setcookie.
fn policy() -> String {
    format!(
        "{POLICY}\n@id(\"devs-read\")\npermit(principal in Gatehouse::Group::\"devs\", action == Gatehouse::Action::\"git:read\", resource in Gatehouse::Owner::\"demo\");\n@id(\"setcookie\")\npermit(principal, action == Gatehouse::Action::\"web:access\", resource is Gatehouse::Route) when {{ resource.path == \"/_setcookie\" }};\n"
    )
}

struct Setup {
    gw: gatehouse_testkit::TestGateway,
    _upstream: GitHttpServer,
    _tmp: TempDir,
    base: String,
}

/// A TLS gateway in front of nginx, with browser sign-in at the shared IdP through a client
/// registered for this gateway's callback.
async fn setup(name: &str, refresh_before: &str) -> Setup {
    setup_with(Idp::shared(), name, refresh_before).await
}

async fn setup_with(idp: &Idp, name: &str, refresh_before: &str) -> Setup {
    let tmp = TempDir::new(name);
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let listener = local_listener();
    let port = listener.local_addr().unwrap().port();
    let base = format!("https://127.0.0.1:{port}");
    let (client_id, secret) = idp
        .register_client(
            &[&format!("{base}/.gatehouse/callback")],
            &[&format!("{base}/.gatehouse/signed-out")],
        )
        .await;
    let secret_file = tmp.path().join("client-secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let crt = tmp.path().join("gw.crt");
    let key = tmp.path().join("gw.key");
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let gw = builder()
        .listener(listener)
        .with_upstream_url(&format!("http://127.0.0.1:{}", upstream.port))
        .with_idp_extra(
            idp,
            &format!(
                "[issuers.login]\nclient_id = \"{client_id}\"\nclient_secret = {{ file = \"{}\" }}\ndisplay_name = \"Test IdP\"\nscopes = [\"openid\", \"profile\", \"email\", \"groups\", \"offline_access\"]\nextra_params = {{ resource = \"urn:gatehouse\" }}\ncli_client_id = \"git-cli\"\n",
                secret_file.display()
            ),
        )
        .server_extra(&format!(
            "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
            crt.display(),
            key.display()
        ))
        .policy(&policy())
        .extra(&format!(
            "[identity_headers]\ngroups = \"X-Gatehouse-Groups\"\n\n[session]\nexternal_url = \"{base}\"\nrefresh_before = \"{refresh_before}\"\nrepositories = [\"demo/hello\", \"secret/repo\"]\n"
        ))
        .start();
    Setup {
        gw,
        _upstream: upstream,
        _tmp: tmp,
        base,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_sees_who_it_is_renews_and_signs_out() {
    // refresh_before equal to the IdP's access-token lifetime: every request renews, so the
    // renewal path runs against the real IdP within the test.
    let s = setup("browser", "3600s").await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("whoami.png");
    let _ = std::fs::remove_file(&shot);
    let scenario = serde_json::json!({
        "start": format!("{}/_echo?from=browser", s.base),
        "gateway": s.base,
        "username": "alice",
        "password": "alice-pass",
        "screenshot": shot.to_string_lossy(),
    });
    let out =
        tokio::task::spawn_blocking(move || browser_sign_in(&scenario, Duration::from_secs(120)))
            .await
            .unwrap();
    let text = |k: &str| out[k].as_str().unwrap_or("").to_owned();
    assert!(
        out.get("error").is_none(),
        "browser: {out:#}\ngateway log:\n{}",
        s.gw.log()
    );

    // The protected page sent the browser to the IdP, and back to the page first asked for.
    assert!(
        text("login_url").starts_with(&Idp::shared().issuer()),
        "{out:#}"
    );
    assert_eq!(
        text("after_login_url"),
        format!("{}/_echo?from=browser", s.base)
    );
    let echo = text("after_login_text");
    assert!(echo.contains("user=alice;"), "{echo}");
    assert!(echo.contains("email=alice@example.test;"), "{echo}");
    assert!(echo.contains("fullname=Alice Admin;"), "{echo}");
    assert!(echo.contains("groups=admins,devs;"), "{echo}");
    assert!(
        !echo.contains("gatehouse-session"),
        "the session cookie reached the upstream: {echo}"
    );

    // The session cookie: opaque, Secure, HttpOnly, SameSite=Lax, host-only, Path=/.
    let cookies = out["cookies"].as_array().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "__Host-gatehouse-session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:#?}"));
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");
    assert_eq!(session["path"], "/", "{session}");
    assert_eq!(session["domain"], "127.0.0.1", "{session}");
    assert!(session["valueLength"].as_u64().unwrap() < 100, "{session}");
    assert!(
        !cookies
            .iter()
            .any(|c| c["name"] == "__Host-gatehouse-login"),
        "the sign-in cookie outlived the sign-in: {cookies:#?}"
    );

    // Who am I: identity, groups, session end, renewal, what the policy opens.
    let who = text("whoami_text");
    for want in [
        "Signed in as Alice Admin",
        "alice@example.test",
        "admins",
        "devs",
        "Session ends",
        "demo/hello",
        "Sign out",
    ] {
        assert!(who.contains(want), "who-am-I lacks {want:?}:\n{who}");
    }
    assert!(!who.contains("secret/repo"), "{who}");
    assert!(
        who.contains("renewed") && !who.contains("renewed 0 times"),
        "the session was not renewed:\n{who}"
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "screenshot"
    );

    // Sign-out went through the IdP (RP-initiated logout) and back to Gatehouse.
    assert!(
        text("idp_logout_url").starts_with(&Idp::shared().issuer()),
        "{out:#}"
    );
    assert!(
        text("signed_out_text").contains("You are signed out"),
        "{out:#}"
    );
    assert!(
        !out["cookies_after_logout"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "__Host-gatehouse-session"),
        "session cookie kept after sign-out"
    );
    // Signed out at the IdP too: the protected page asks for the password again.
    assert_eq!(out["after_logout_has_login_form"], true, "{out:#}");

    s.gw.audit_when("the sign-in and sign-out records", |a| {
        a.contains("\"signed_in\"") && a.contains("\"signed_out\"")
    });
}

/// A browser stand-in: no redirects followed by itself, cookies for the IdP kept by hand.
struct Browser {
    http: reqwest::Client,
    idp_cookies: Vec<(String, String)>,
}

struct Answer {
    status: u16,
    location: String,
    set_cookies: Vec<String>,
    body: String,
}

impl Answer {
    /// The name and value of the cookie `name` this answer sets.
    fn cookie(&self, name: &str) -> Option<(String, String)> {
        self.set_cookies
            .iter()
            .map(|c| name_value(c))
            .find(|(n, _)| n == name)
    }
}

fn name_value(set_cookie: &str) -> (String, String) {
    let nv = set_cookie.split(';').next().unwrap_or("");
    let (n, v) = nv.split_once('=').unwrap_or((nv, ""));
    (n.trim().to_owned(), v.trim().to_owned())
}

impl Browser {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            idp_cookies: Vec::new(),
        }
    }

    async fn get(&self, url: &str, cookie: &str, accept: &str) -> Answer {
        let mut req = self.http.get(url).header(header::ACCEPT, accept);
        if !cookie.is_empty() {
            req = req.header(header::COOKIE, cookie);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let set_cookies = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = resp.text().await.unwrap_or_default();
        Answer {
            status,
            location,
            set_cookies,
            body,
        }
    }

    /// Starts a sign-in at the gateway (`return_to` sent as given, form-encoded), lets the IdP
    /// log alice in through `login_hint`, and returns the gateway's sign-in cookie and the
    /// callback URL the IdP sends the browser back to. `tamper` may rewrite the authorization
    /// URL first, as an attacker in the middle would.
    async fn authorize(
        &mut self,
        base: &str,
        return_to: &str,
        tamper: impl Fn(String) -> String,
    ) -> (String, String) {
        self.authorize_as("alice", base, return_to, tamper).await
    }

    async fn authorize_as(
        &mut self,
        user: &str,
        base: &str,
        return_to: &str,
        tamper: impl Fn(String) -> String,
    ) -> (String, String) {
        self.authorize_with(
            user,
            base,
            &format!("return_to={}", form(return_to)),
            tamper,
        )
        .await
    }

    /// A sign-in whose session is bound to the environment `env`.
    async fn authorize_in(&mut self, base: &str, return_to: &str, env: &str) -> (String, String) {
        let query = format!("return_to={}&environment={}", form(return_to), form(env));
        self.authorize_with("alice", base, &query, |u| u).await
    }

    async fn authorize_with(
        &mut self,
        user: &str,
        base: &str,
        login_query: &str,
        tamper: impl Fn(String) -> String,
    ) -> (String, String) {
        let start = self
            .get(
                &format!("{base}/.gatehouse/login?{login_query}"),
                "",
                "text/html",
            )
            .await;
        assert_eq!(start.status, 302, "{}", start.body);
        let login_cookie = start
            .cookie("__Host-gatehouse-login")
            .map(|(n, v)| format!("{n}={v}"))
            .expect("sign-in cookie");
        let start_cookie = start
            .set_cookies
            .iter()
            .find(|c| c.starts_with("__Host-gatehouse-login="))
            .unwrap();
        for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(start_cookie.contains(attr), "{start_cookie}");
        }
        let auth = tamper(start.location.clone());
        assert!(auth.contains("code_challenge_method=S256"), "{auth}");
        assert!(
            auth.contains("&nonce=") && auth.contains("&state="),
            "{auth}"
        );
        let mut url = format!("{auth}&login_hint={user}");
        for _ in 0..20 {
            let cookie = self
                .idp_cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let a = self.get(&url, &cookie, "text/html").await;
            for c in &a.set_cookies {
                let (n, v) = name_value(c);
                self.idp_cookies.retain(|(k, _)| *k != n);
                self.idp_cookies.push((n, v));
            }
            assert!(
                (300..400).contains(&a.status),
                "IdP answered {} at {url}: {}",
                a.status,
                a.body
            );
            let next = reqwest::Url::parse(&url)
                .unwrap()
                .join(&a.location)
                .unwrap()
                .to_string();
            if next.starts_with(base) {
                return (login_cookie, next);
            }
            url = next;
        }
        panic!("the IdP never sent the browser back");
    }
}

fn form(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attacks_are_refused_and_return_to_stays_on_this_host() {
    let s = setup("signin-attacks", "60s").await;
    let base = s.base.as_str();
    let mut b = Browser::new();

    // A browser opening a protected page is sent to sign in; an API client gets 401.
    let page = b.get(&format!("{base}/_echo?x=1"), "", "text/html").await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.location,
        format!("{base}/.gatehouse/login?return_to=/_echo%3Fx%3D1")
    );
    let api = b
        .get(&format!("{base}/_echo"), "", "application/json")
        .await;
    assert_eq!(api.status, 401);

    // The happy path, then the same callback again: a sign-in completes once.
    let (cookie, callback) = b.authorize(base, "/_echo?x=1", |u| u).await;
    assert_eq!(
        param(&callback, "iss"),
        Idp::shared().issuer(),
        "RFC 9207 iss"
    );
    let done = b.get(&callback, &cookie, "text/html").await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(done.location, format!("{base}/_echo?x=1"));
    let (sn, sv) = done
        .cookie("__Host-gatehouse-session")
        .expect("session cookie");
    let echo = b
        .get(
            &format!("{base}/_echo"),
            &format!("theirs=1; {sn}={sv}"),
            "text/html",
        )
        .await;
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert!(echo.body.contains("user=alice;"), "{}", echo.body);
    assert!(
        echo.body.contains("cookie=theirs=1\n"),
        "own cookie forwarded: {}",
        echo.body
    );
    // The same callback again: the IdP redeems a code once.
    let replay = b.get(&callback, &cookie, "text/html").await;
    assert_eq!(replay.status, 400);
    assert!(
        replay.body.contains("did not accept the sign-in code"),
        "{}",
        replay.body
    );

    // The session is for browsers on web routes: a cross-site state-changing request with it is
    // refused, a same-origin one goes through, and git requests never use it.
    let session_cookie = format!("{sn}={sv}");
    let post = |site: &'static str| {
        b.http
            .post(format!("{base}/_echo"))
            .header(header::COOKIE, session_cookie.clone())
            .header("sec-fetch-site", site)
            .send()
    };
    assert_eq!(post("cross-site").await.unwrap().status(), 403);
    assert_eq!(post("same-site").await.unwrap().status(), 403);
    assert_eq!(post("same-origin").await.unwrap().status(), 200);
    let git = b
        .get(
            &format!("{base}/demo/hello.git/info/refs?service=git-upload-pack"),
            &session_cookie,
            "*/*",
        )
        .await;
    assert_eq!(git.status, 401, "a session cookie authenticated git");

    // The upstream cannot plant Gatehouse's cookies in the browser.
    let planted = b
        .get(&format!("{base}/_setcookie"), &session_cookie, "text/html")
        .await;
    assert_eq!(planted.status, 200);
    assert_eq!(planted.set_cookies, vec!["theirs=1; Path=/".to_owned()]);

    // The session id is opaque and signed: a changed cookie is no session.
    // One character changed to a different one (an `A` in place of an `A` would be the real
    // cookie, about one run in 64).
    let first = if sv.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{sn}={first}{}", &sv[1..]);
    assert_ne!(forged, format!("{sn}={sv}"));
    let r = b.get(&format!("{base}/_echo"), &forged, "text/html").await;
    assert_eq!(r.status, 302, "a forged session cookie was accepted");

    // state from one sign-in, cookie from another (login CSRF): refused.
    let (_, cb_a) = b.authorize(base, "/", |u| u).await;
    let (cookie_b, _) = b.authorize(base, "/", |u| u).await;
    for c in [cookie_b.as_str(), ""] {
        let r = b.get(&cb_a, c, "text/html").await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("not started in this browser"), "{}", r.body);
    }

    // A code replayed into a fresh sign-in: the IdP refuses it (already used, other verifier).
    let (cookie_c, cb_c) = b.authorize(base, "/", |u| u).await;
    assert_eq!(b.get(&cb_c, &cookie_c, "text/html").await.status, 302);
    let (cookie_d, cb_d) = b.authorize(base, "/", |u| u).await;
    let replayed = replace_param(&cb_d, "code", &param(&cb_c, "code"));
    let r = b.get(&replayed, &cookie_d, "text/html").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("did not accept the sign-in code"),
        "{}",
        r.body
    );

    // A nonce changed on the way to the IdP: the ID token's nonce does not match.
    let (cookie_e, cb_e) = b
        .authorize(base, "/", |u| replace_param(&u, "nonce", "forged-nonce"))
        .await;
    let r = b.get(&cb_e, &cookie_e, "text/html").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("token nonce does not match"), "{}", r.body);

    // A PKCE challenge changed on the way: the code cannot be redeemed with our verifier.
    let (cookie_f, cb_f) = b
        .authorize(base, "/", |u| {
            replace_param(
                &u,
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            )
        })
        .await;
    let r = b.get(&cb_f, &cookie_f, "text/html").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // An IdP error answer is shown, not followed.
    let (cookie_g, cb_g) = b.authorize(base, "/", |u| u).await;
    // The IdP advertises RFC 9207: a response without `iss` (or with another) is refused.
    let denied = format!(
        "{base}/.gatehouse/callback?error=access_denied&state={}",
        param(&cb_g, "state")
    );
    for iss in ["", "&iss=https%3A%2F%2Fevil.example"] {
        let r = b
            .get(&format!("{denied}{iss}"), &cookie_g, "text/html")
            .await;
        assert_eq!(r.status, 400);
        assert!(
            r.body.contains("came from another identity provider"),
            "{}",
            r.body
        );
    }
    let iss: String =
        url::form_urlencoded::byte_serialize(Idp::shared().issuer().as_bytes()).collect();
    let r = b
        .get(&format!("{denied}&iss={iss}"), &cookie_g, "text/html")
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("refused the sign-in (access_denied)"),
        "{}",
        r.body
    );

    // Wherever return_to points, the browser lands on this host.
    for evil in [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%252F%252Fevil.example",
        "/\t/evil.example",
        "https:evil.example",
    ] {
        let (cookie, cb) = b.authorize(base, evil, |u| u).await;
        let r = b.get(&cb, &cookie, "text/html").await;
        assert_eq!(r.status, 302, "{evil:?}: {}", r.body);
        assert_eq!(r.location, format!("{base}/"), "return_to {evil:?}");
    }

    // A new sign-in in the same browser ends the session it had.
    let (cookie_h, cb_h) = b.authorize(base, "/", |u| u).await;
    let again = b
        .get(&cb_h, &format!("{cookie_h}; {session_cookie}"), "text/html")
        .await;
    assert_eq!(again.status, 302, "{}", again.body);
    let old = b
        .get(&format!("{base}/_echo"), &session_cookie, "text/html")
        .await;
    assert_eq!(
        old.status, 302,
        "the previous session outlived a new sign-in"
    );

    // Sign-out needs the page's CSRF token: a forged or missing one is refused and the session
    // lives on; the one the confirmation page carries signs out.
    let (hn, hv) = again.cookie("__Host-gatehouse-session").unwrap();
    let current = format!("{hn}={hv}");
    let post_logout = |csrf: &'static str| {
        b.http
            .post(format!("{base}/.gatehouse/logout"))
            .header(header::COOKIE, current.clone())
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(csrf)
            .send()
    };
    for forged in ["", "csrf=AAAA"] {
        let r = post_logout(forged).await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("did not come from this session")
        );
    }
    let still = b.get(&format!("{base}/_echo"), &current, "text/html").await;
    assert_eq!(still.status, 200, "a forged sign-out ended the session");
    let confirm = b
        .get(&format!("{base}/.gatehouse/logout"), &current, "text/html")
        .await;
    let csrf = confirm
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("a CSRF token on the confirmation page")
        .to_owned();
    let out = b
        .http
        .post(format!("{base}/.gatehouse/logout"))
        .header(header::COOKIE, current.clone())
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let gone = b.get(&format!("{base}/_echo"), &current, "text/html").await;
    assert_eq!(gone.status, 302, "the session outlived its sign-out");

    // Tokens rest encrypted in the store: no JWT (or refresh token), no name in the clear in
    // the SQLite file or its write-ahead log.
    let mut bytes = Vec::new();
    for f in ["gatehouse.db", "gatehouse.db-wal"] {
        bytes.extend(std::fs::read(s.gw.dir().join(f)).unwrap_or_default());
    }
    assert!(bytes.len() > 4096, "no store file beside the config");
    assert!(
        !bytes.windows(3).any(|w| w == b"eyJ"),
        "a token is stored in the clear"
    );
    assert!(
        !bytes.windows(5).any(|w| w == b"alice"),
        "a session is stored in the clear"
    );
    assert!(!s.gw.log().contains(&sv), "the session id was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_issuers_get_a_chooser_and_each_sends_to_its_own_idp() {
    let tmp = TempDir::new("chooser");
    let (root, _) = repos(&tmp);
    let first = Idp::shared();
    let second = Idp::start();
    let listener = local_listener();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let login = |name: &str| {
        format!("[issuers.login]\nclient_id = \"gatehouse\"\ndisplay_name = \"{name}\"\n")
    };
    let gw = builder()
        .listener(listener)
        .with_builtin_upstream(&root)
        .with_idp_extra(first, &login("Company SSO"))
        .with_idp_extra(&second, &login("Partner <SSO>"))
        .policy(POLICY)
        .extra(&format!("[session]\nexternal_url = \"{base}\"\n"))
        .start();
    let b = Browser::new();
    let page = b
        .get(
            &format!("{base}/.gatehouse/login?return_to=%2Fdemo"),
            "",
            "text/html",
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Sign in with Company SSO"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Sign in with Partner &lt;SSO&gt;"),
        "not escaped: {}",
        page.body
    );
    assert!(
        page.body.contains("provider=1&amp;return_to=/demo"),
        "{}",
        page.body
    );
    for (n, idp) in [(0, first), (1, &second)] {
        let r = b
            .get(
                &format!("{base}/.gatehouse/login?provider={n}&return_to=/demo"),
                "",
                "text/html",
            )
            .await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert!(
            r.location.starts_with(&format!("{}/auth?", idp.issuer())),
            "{}",
            r.location
        );
        assert_eq!(
            param(&r.location, "redirect_uri"),
            format!("{base}/.gatehouse/callback")
        );
    }
    let r = b
        .get(
            &format!("{base}/.gatehouse/login?provider=7"),
            "",
            "text/html",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_the_idp_no_longer_renews_it() {
    // An IdP of its own, renewing on every request (refresh_before = the token lifetime).
    let mut idp = Idp::start();
    let s = setup_with(&idp, "renewal-refused", "3600s").await;
    let base = s.base.as_str();
    let mut b = Browser::new();
    let (cookie, callback) = b.authorize(base, "/_echo", |u| u).await;
    let done = b.get(&callback, &cookie, "text/html").await;
    assert_eq!(done.status, 302, "{}", done.body);
    let (sn, sv) = done.cookie("__Host-gatehouse-session").unwrap();
    let session = format!("{sn}={sv}");
    for _ in 0..2 {
        let r = b.get(&format!("{base}/_echo"), &session, "text/html").await;
        assert_eq!(r.status, 200, "renewal failed: {}", r.body);
    }
    // The IdP restarts and has forgotten every grant (its store is in memory): the next renewal
    // is refused, and the Gatehouse session ends with it.
    idp.rotate_keys(1);
    let r = b.get(&format!("{base}/_echo"), &session, "text/html").await;
    assert_eq!(r.status, 302, "the session outlived the IdP's: {}", r.body);
    assert!(r.location.contains("/.gatehouse/login"), "{}", r.location);
    assert!(s.gw.log().contains("no longer renews"), "{}", s.gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_do_not_grow_the_cookie() {
    let s = setup("many-groups", "60s").await;
    let base = s.base.as_str();
    // The browser's fresh cookie jar: only the IdP's cookies for this user.
    let mut b = Browser::new();
    let (cookie, callback) = b.authorize_as("carol", base, "/", |u| u).await;
    let done = b.get(&callback, &cookie, "text/html").await;
    assert_eq!(done.status, 302, "{}", done.body);
    let (sn, sv) = done.cookie("__Host-gatehouse-session").unwrap();
    assert!(
        sv.len() < 100,
        "the session cookie grew to {} bytes",
        sv.len()
    );
    let who: serde_json::Value = b
        .http
        .get(format!("{base}/.gatehouse/"))
        .header(header::COOKIE, format!("{sn}={sv}"))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["username"], "carol", "{who}");
    assert_eq!(who["groups"].as_array().unwrap().len(), 400, "{who}");
}

/// Two TLS gateway nodes in front of one nginx, sharing one PostgreSQL store and one session
/// secret, signing in at the shared IdP (which rotates refresh tokens) with one client. Every
/// request renews (`refresh_before` = the IdP's token lifetime).
async fn two_nodes(name: &str) -> (Setup, Setup) {
    let pg = gatehouse_testkit::Postgres::shared();
    let url = pg.create_database(&format!("sessions_{name}"));
    let idp = Idp::shared();
    let tmp = TempDir::new(name);
    let (root, _) = repos(&tmp);
    let listeners = [local_listener(), local_listener()];
    let bases: Vec<String> = listeners
        .iter()
        .map(|l| format!("https://127.0.0.1:{}", l.local_addr().unwrap().port()))
        .collect();
    let callbacks: Vec<String> = bases
        .iter()
        .map(|b| format!("{b}/.gatehouse/callback"))
        .collect();
    let signed_out: Vec<String> = bases
        .iter()
        .map(|b| format!("{b}/.gatehouse/signed-out"))
        .collect();
    let (client_id, secret) = idp
        .register_client(
            &callbacks.iter().map(String::as_str).collect::<Vec<_>>(),
            &signed_out.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
    let files = tmp.path();
    std::fs::write(files.join("client-secret"), &secret).unwrap();
    std::fs::write(files.join("session-secret"), "s".repeat(48)).unwrap();
    std::fs::write(files.join("store-url"), &url).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(files.join("gw.crt"), ck.cert.pem()).unwrap();
    std::fs::write(files.join("gw.key"), ck.signing_key.serialize_pem()).unwrap();
    let mut nodes = Vec::new();
    for (listener, base) in listeners.into_iter().zip(&bases) {
        let upstream = GitHttpServer::start(&root);
        let gw = builder()
            .listener(listener)
            .with_upstream_url(&format!("http://127.0.0.1:{}", upstream.port))
            .with_idp_extra(
                idp,
                &format!(
                    "[issuers.login]\nclient_id = \"{client_id}\"\nclient_secret = {{ file = \"{}\" }}\nscopes = [\"openid\", \"profile\", \"email\", \"groups\", \"offline_access\"]\nextra_params = {{ resource = \"urn:gatehouse\" }}\n",
                    files.join("client-secret").display()
                ),
            )
            .server_extra(&format!(
                "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
                files.join("gw.crt").display(),
                files.join("gw.key").display()
            ))
            .policy(&policy())
            .extra(&format!(
                "[session]\nexternal_url = \"{base}\"\nrefresh_before = \"3600s\"\nsecret = {{ file = \"{}\" }}\n\n[store]\nurl = {{ file = \"{}\" }}\n",
                files.join("session-secret").display(),
                files.join("store-url").display()
            ))
            .start();
        nodes.push(Setup {
            gw,
            _upstream: upstream,
            _tmp: TempDir::new(&format!("{name}-node")),
            base: base.clone(),
        });
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    // The repositories and files live as long as node A's setup.
    (Setup { _tmp: tmp, ..a }, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_node_works_on_the_other_and_is_renewed_once_at_a_time() {
    let (a, b) = two_nodes("two_nodes").await;
    let mut browser = Browser::new();
    let (cookie, callback) = browser.authorize(&a.base, "/_echo", |u| u).await;
    let done = browser.get(&callback, &cookie, "text/html").await;
    assert_eq!(done.status, 302, "{}", done.body);
    let (sn, sv) = done.cookie("__Host-gatehouse-session").unwrap();
    let session = format!("{sn}={sv}");

    // Signed in on A, known on B.
    let on_b = browser
        .get(&format!("{}/_echo", b.base), &session, "text/html")
        .await;
    assert_eq!(on_b.status, 200, "{}", on_b.body);
    assert!(on_b.body.contains("user=alice;"), "{}", on_b.body);

    // Both nodes renew at once, again and again: each refresh token is spent once (the IdP
    // rotates them and refuses a second use, which would end the session).
    for round in 0..5 {
        let mut calls = Vec::new();
        for i in 0..6 {
            let base = if i % 2 == 0 { &a.base } else { &b.base };
            let url = format!("{base}/_echo?round={round}&i={i}");
            let http = browser.http.clone();
            let session = session.clone();
            calls.push(tokio::spawn(async move {
                http.get(url)
                    .header(header::COOKIE, session)
                    .header(header::ACCEPT, "text/html")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        for c in calls {
            assert_eq!(
                c.await.unwrap(),
                200,
                "round {round}: the session was lost\nA:\n{}\nB:\n{}",
                a.gw.log(),
                b.gw.log()
            );
        }
    }
    for node in [&a, &b] {
        let r = browser
            .get(&format!("{}/_echo", node.base), &session, "text/html")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            !node.gw.log().contains("no longer renews"),
            "{}",
            node.gw.log()
        );
    }

    // Signed out on B: gone on A too.
    let confirm = browser
        .get(
            &format!("{}/.gatehouse/logout", b.base),
            &session,
            "text/html",
        )
        .await;
    let csrf = confirm
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("a CSRF token on the confirmation page")
        .to_owned();
    let out = browser
        .http
        .post(format!("{}/.gatehouse/logout", b.base))
        .header(header::COOKIE, session.clone())
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let gone = browser
        .get(&format!("{}/_echo", a.base), &session, "text/html")
        .await;
    assert_eq!(
        gone.status, 302,
        "the session outlived its sign-out on the other node"
    );

    // A second sign-in, revoked by its id as the audit records name it: on the next request
    // the browser is sent to sign in again, on either node.
    let (cookie, callback) = browser.authorize(&a.base, "/_echo", |u| u).await;
    let done = browser.get(&callback, &cookie, "text/html").await;
    let (sn, sv) = done.cookie("__Host-gatehouse-session").unwrap();
    let second = format!("{sn}={sv}");
    let r = browser
        .get(&format!("{}/_echo?second=1", b.base), &second, "text/html")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Its id is in the audit record of that request: the newest naming a session other than
    // the first one (records reach the file a few milliseconds after the answer).
    let session_of = |line: &str| -> Option<String> {
        let rec: serde_json::Value = serde_json::from_str(line).ok()?;
        rec["principal"]["token_id"]
            .as_str()?
            .strip_prefix("session:")
            .map(str::to_owned)
    };
    let before = std::fs::read_to_string(b.gw.audit_path()).unwrap_or_default();
    let first_id = before.lines().find_map(session_of).unwrap();
    let record = b.gw.audit_when("the second session's request", |a| {
        a.lines().filter_map(session_of).any(|id| id != first_id)
    });
    let id = record
        .lines()
        .filter_map(session_of)
        .rfind(|id| *id != first_id)
        .unwrap();
    let out = a.gw.cli(&["revoke", "session", &id]);
    assert!(out.status.success(), "{out:?}");
    for node in [&a, &b] {
        let started = std::time::Instant::now();
        loop {
            let r = browser
                .get(&format!("{}/_echo", node.base), &second, "text/html")
                .await;
            if r.status == 302 {
                assert!(r.location.contains("/.gatehouse/login"), "{}", r.location);
                break;
            }
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "revoked session still served"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // A sign-in for an environment: the session says so, ends no later than the environment,
    // and dies with it on every node.
    let env = String::from_utf8(
        a.gw.cli(&["env", "create", "--name", "preview-7", "--ttl", "1h"])
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(env.starts_with("env-"), "{env}");
    let (cookie, callback) = browser.authorize_in(&a.base, "/_echo", &env).await;
    let done = browser.get(&callback, &cookie, "text/html").await;
    assert_eq!(done.status, 302, "{}", done.body);
    let (sn, sv) = done.cookie("__Host-gatehouse-session").unwrap();
    let bound = format!("{sn}={sv}");
    let who = browser
        .get(
            &format!("{}/.gatehouse/", b.base),
            &bound,
            "application/json",
        )
        .await;
    let who: serde_json::Value = serde_json::from_str(&who.body).unwrap();
    assert_eq!(who["environment"], env.as_str(), "{who}");
    let ends = chrono_secs(who["session"]["expires_at"].as_str().unwrap());
    assert!(
        ends <= chrono_secs_now() + 3600 + 5,
        "the session outlives its environment: {who}"
    );
    let out = b.gw.cli(&["env", "end", &env]);
    assert!(out.status.success(), "{out:?}");
    for node in [&a, &b] {
        let started = std::time::Instant::now();
        loop {
            let r = browser
                .get(&format!("{}/_echo", node.base), &bound, "text/html")
                .await;
            if r.status == 302 {
                assert!(r.location.contains("/.gatehouse/login"), "{}", r.location);
                break;
            }
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a session outlived its environment"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // An ended or unknown environment cannot be signed in for.
    for (id, why) in [(env.as_str(), "has ended"), ("env-nope", "no environment")] {
        let r = browser
            .get(
                &format!("{}/.gatehouse/login?environment={id}", a.base),
                "",
                "text/html",
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(why), "{}", r.body);
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-12-07T08:00:00Z`).
fn chrono_secs(t: &str) -> i64 {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

#[allow(clippy::disallowed_methods)] // the gateway under test runs on the real clock
fn chrono_secs_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
