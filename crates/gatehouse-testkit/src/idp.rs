use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::proc::{Child, TempDir};

/// The real OIDC provider (`oidc-provider`, pinned by `idp/package-lock.json`) on 127.0.0.1.
pub struct Idp {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp")
}

impl Idp {
    /// Starts a fresh IdP with its own keys (generation 1).
    pub fn start() -> Self {
        let mut idp = Self {
            port: 0,
            child: None,
            dir: TempDir::new("idp"),
        };
        idp.launch(1);
        idp
    }

    /// One IdP shared by every test in this process (it exits with the process).
    pub fn shared() -> &'static Idp {
        static IDP: OnceLock<Idp> = OnceLock::new();
        IDP.get_or_init(Idp::start)
    }

    fn launch(&mut self, generation: u32) {
        let dir = idp_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the test IdP's packages are missing: run scripts/install-deps.sh"
        );
        let log = self.dir.path().join(format!("idp-{generation}.log"));
        let mut cmd = Command::new("node");
        cmd.arg("idp.mjs")
            .current_dir(&dir)
            .env("IDP_PORT", self.port.to_string())
            .env("IDP_KEYS_FILE", self.dir.path().join("keys.json"))
            .env("IDP_KEY_GENERATION", generation.to_string())
            .env("IDP_TEST_SIGNING", "1")
            .env("IDP_EXIT_WITH_PARENT", "1")
            .env("IDP_TRUST_LOGIN_HINT", "1");
        // The first launch asks for port 0 and reads back the port it got; a restart asks for
        // that same port again, so that the issuer stays the same (a restart of one component,
        // not a port handed from one component to another).
        //
        // A start that stalls (seen once in CI: no line in 90 s, cause unknown) is reported with
        // the process's state and started once more, so that the next one says why.
        let prefix = "idp: listening on http://127.0.0.1:";
        let mut child = Child::spawn("idp", &mut cmd, &log);
        let port = match child.try_wait_logged_port(prefix, Duration::from_secs(45)) {
            Ok(port) => port,
            Err(first) => {
                eprintln!("the IdP did not start, starting it again: {first}");
                drop(child);
                let retry_log = self.dir.path().join(format!("idp-{generation}-retry.log"));
                child = Child::spawn("idp", &mut cmd, &retry_log);
                match child.try_wait_logged_port(prefix, Duration::from_secs(90)) {
                    Ok(port) => port,
                    Err(second) => {
                        panic!("the IdP did not start, twice:\nfirst: {first}\nthen: {second}")
                    }
                }
            }
        };
        self.port = port;
        self.child = Some(child);
    }

    /// The issuer URL.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Restarts the IdP on the same port with a new key generation (new `kid`s first, the old
    /// keys still published): a key rotation.
    pub fn rotate_keys(&mut self, generation: u32) {
        self.child = None; // drop: TERM and wait
        self.launch(generation);
    }

    /// Stops the IdP (TERM, then waits): it answers nothing until [`Self::relaunch_dropping_keys`].
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts the IdP again on the same port with new keys of `generation` and none of the old
    /// ones: every key it published before is withdrawn from its JWKS.
    pub fn relaunch_dropping_keys(&mut self, generation: u32) {
        self.child = None;
        let _ = std::fs::remove_file(self.dir.path().join("keys.json"));
        self.launch(generation);
    }

    /// Registers a confidential web client (RFC 7591 dynamic registration) that may use these
    /// redirect URIs; returns its id and secret.
    pub async fn register_client(
        &self,
        redirect_uris: &[&str],
        post_logout_redirect_uris: &[&str],
    ) -> (String, String) {
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/reg", self.issuer()))
            .json(&serde_json::json!({
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
                "scope": "openid profile email groups offline_access git:read git:write",
            }))
            .send()
            .await
            .expect("registration request")
            .json()
            .await
            .expect("registration response");
        let id = resp["client_id"].as_str();
        let secret = resp["client_secret"].as_str();
        match (id, secret) {
            (Some(i), Some(s)) => (i.to_owned(), s.to_owned()),
            _ => panic!("registration failed: {resp}"),
        }
    }

    /// A client-credentials access token for `ci-bot` (`resource` picks RS256, ES256 or opaque).
    pub async fn client_token(&self, resource: &str) -> String {
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .basic_auth("ci-bot", Some("ci-bot-secret"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "git:read git:write"),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token response");
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {resp}"))
            .to_owned()
    }

    /// A token signed by the IdP's real published key with exactly these claims (test-only IdP
    /// endpoint, used to mint expired, not-yet-valid or wrong-audience tokens).
    pub async fn sign(&self, claims: Value, alg: &str, kid: Option<&str>) -> String {
        self.sign_typed(claims, alg, kid, None).await
    }

    /// [`Self::sign`] with this `typ` header (the IdP writes `JWT` when none is given).
    pub async fn sign_typed(
        &self,
        claims: Value,
        alg: &str,
        kid: Option<&str>,
        typ: Option<&str>,
    ) -> String {
        let mut body = serde_json::json!({"claims": claims, "alg": alg});
        if let Some(k) = kid {
            body["kid"] = Value::String(k.to_owned());
        }
        if let Some(t) = typ {
            body["typ"] = Value::String(t.to_owned());
        }
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/test/sign", self.issuer()))
            .json(&body)
            .send()
            .await
            .expect("sign request")
            .json()
            .await
            .expect("sign response");
        resp["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {resp}"))
            .to_owned()
    }

    /// The IdP's public keys.
    pub async fn jwks(&self) -> Value {
        reqwest::get(format!("{}/jwks", self.issuer()))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("jwks json")
    }
}
