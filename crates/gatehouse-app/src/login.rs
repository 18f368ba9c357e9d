//! The git CLI side: `gatehouse login` (OAuth2 device authorization grant, RFC 8628, against the
//! issuer a gateway names at `/.gatehouse/cli`), `gatehouse token print`, `gatehouse logout`,
//! and the git credential helper (`gatehouse credential get|store|erase`, also installed as
//! `git-credential-gatehouse`).
//!
//! Refresh tokens are kept in `$XDG_CONFIG_HOME/gatehouse/credentials.json` (default
//! `~/.config/gatehouse/`), mode 0600 in a 0700 directory, one entry per gateway URL. Nothing
//! here prints a token except `token print` and the credential helper's answer to git, which is
//! what they are for.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use gatehouse_core::{Clock as _, SystemClock};
use serde::{Deserialize, Serialize};

/// A renewed access token is fetched when the cached one has less than this left.
const MIN_VALIDITY_SECS: i64 = 60;
/// The device grant's polling interval when the IdP names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: u64 = 5;

/// One gateway's saved sign-in.
#[derive(Serialize, Deserialize, Clone)]
struct Saved {
    issuer: String,
    client_id: String,
    token_endpoint: String,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    extra_params: BTreeMap<String, String>,
    refresh_token: Option<String>,
    access_token: Option<String>,
    #[serde(default)]
    access_expires_at: i64,
    #[serde(default)]
    username: Option<String>,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct CredentialsFile {
    servers: BTreeMap<String, Saved>,
}

#[derive(Deserialize)]
struct CliIssuer {
    issuer: String,
    #[serde(default)]
    name: Option<String>,
    client_id: String,
    scopes: Vec<String>,
    #[serde(default)]
    extra_params: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct CliSettings {
    issuers: Vec<CliIssuer>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    revocation_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn now() -> i64 {
    SystemClock.now().as_secs()
}

/// The directory of the credentials file.
fn config_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("gatehouse"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".config").join("gatehouse"))
}

fn credentials_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("credentials.json"))
}

/// An exclusive lock on the credentials (`credentials.lock` beside the file), held while a
/// sign-in is read, renewed and written back: parallel git processes must not both spend one
/// refresh token or overwrite each other's.
pub(crate) struct FileLock(std::fs::File);

pub(crate) fn lock() -> Result<FileLock> {
    let dir = config_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    set_mode(&dir, 0o700)?;
    let p = dir.join("credentials.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("cannot open {}", p.display()))?;
    f.lock()
        .with_context(|| format!("cannot lock {}", p.display()))?;
    Ok(FileLock(f))
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

pub(crate) fn load() -> Result<CredentialsFile> {
    let p = credentials_path()?;
    match std::fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("{} is not valid", p.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CredentialsFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

fn save(f: &CredentialsFile) -> Result<()> {
    let p = credentials_path()?;
    let dir = p.parent().ok_or_else(|| anyhow!("bad credentials path"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut file = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        set_mode(&tmp, 0o600)?;
        file.write_all(&serde_json::to_vec_pretty(f)?)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict {}", p.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// Whether a URL is https, or http to this machine (loopback): tokens never cross a network in
/// the clear.
fn secure_url(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => matches!(
            u.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        ),
        _ => false,
    }
}

/// Printable text from a server, for the terminal: no control characters (escape sequences).
pub(crate) fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(512).collect()
}

/// `scheme://host[:port]`, lower-case, no path: how gateways are keyed.
pub(crate) fn normalize_server(url: &str) -> Result<String> {
    let u = url::Url::parse(url.trim()).with_context(|| format!("`{url}` is not a URL"))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("`{url}` must be an http:// or https:// URL");
    }
    if !secure_url(url.trim()) {
        bail!(
            "`{url}` must be https:// (http:// only to this machine): tokens would travel in the clear"
        );
    }
    let host = u.host_str().ok_or_else(|| anyhow!("`{url}` has no host"))?;
    Ok(match u.port() {
        Some(p) => format!("{}://{}:{p}", u.scheme(), host.to_ascii_lowercase()),
        None => format!("{}://{}", u.scheme(), host.to_ascii_lowercase()),
    })
}

pub(crate) fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("gatehouse-cli/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()
        .context("http client")
}

async fn get_json<T: for<'de> Deserialize<'de>>(c: &reqwest::Client, url: &str) -> Result<T> {
    let r = c
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    r.json()
        .await
        .with_context(|| format!("GET {url}: unexpected answer"))
}

/// Posts a form to a token endpoint: `Ok` with the answer, or the OAuth2 error.
async fn token_post(
    c: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<std::result::Result<TokenAnswer, OAuthError>> {
    let r = c
        .post(endpoint)
        .form(form)
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    if status.is_success() {
        return Ok(Ok(serde_json::from_slice(&body)
            .with_context(|| format!("POST {endpoint}: unexpected answer"))?));
    }
    match serde_json::from_slice::<OAuthError>(&body) {
        Ok(e) => Ok(Err(e)),
        Err(_) => bail!("POST {endpoint}: {status}"),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")
}

/// The unverified `preferred_username`/`sub` of a JWT access token, for messages only.
fn token_name(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("preferred_username")
        .or_else(|| v.get("sub"))
        .and_then(|s| s.as_str())
        .map(str::to_owned)
}

/// Arguments of `gatehouse login`.
#[derive(Debug)]
pub struct LoginArgs {
    /// The gateway's URL.
    pub server: String,
    /// Which issuer, when the gateway offers several (issuer URL or display name).
    pub issuer: Option<String>,
}

/// `gatehouse login`: the device authorization grant. Prints the URL and code to stderr, polls
/// at the interval the IdP asks for (slower on `slow_down`), and saves the tokens.
pub fn login(args: &LoginArgs) -> Result<()> {
    let server = normalize_server(&args.server)?;
    runtime()?.block_on(async {
        let c = http()?;
        let settings: CliSettings = get_json(&c, &format!("{server}/.gatehouse/cli"))
            .await
            .context("cannot read the gateway's sign-in settings")?;
        let chosen = match &args.issuer {
            Some(want) => settings
                .issuers
                .into_iter()
                .find(|i| &i.issuer == want || i.name.as_deref() == Some(want.as_str())),
            None => settings.issuers.into_iter().next(),
        }
        .ok_or_else(|| anyhow!("{server} offers no command-line sign-in{}", args.issuer.as_ref().map(|i| format!(" at `{i}`")).unwrap_or_default()))?;
        let disco: Discovery = get_json(
            &c,
            &format!("{}/.well-known/openid-configuration", chosen.issuer.trim_end_matches('/')),
        )
        .await
        .context("cannot read the identity provider's discovery document")?;
        if disco.issuer != chosen.issuer {
            bail!("the discovery document names issuer `{}`, not `{}`", printable(&disco.issuer), printable(&chosen.issuer));
        }
        for endpoint in [Some(&disco.token_endpoint), disco.device_authorization_endpoint.as_ref()]
            .into_iter()
            .flatten()
        {
            if !secure_url(endpoint) {
                bail!("the identity provider's endpoint `{}` is not https", printable(endpoint));
            }
        }
        let device_endpoint = disco
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| anyhow!("{} does not offer the device authorization grant", chosen.issuer))?;
        let scope = chosen.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![("client_id", &chosen.client_id), ("scope", &scope)];
        for (k, v) in &chosen.extra_params {
            form.push((k, v));
        }
        let r = c
            .post(&device_endpoint)
            .form(&form)
            .send()
            .await
            .with_context(|| format!("POST {device_endpoint}"))?;
        if !r.status().is_success() {
            let status = r.status();
            let e: Option<OAuthError> = r.json().await.ok();
            bail!(
                "the identity provider refused the sign-in request ({}): {}",
                status,
                e.map(|e| format!("{} {}", e.error, e.error_description.unwrap_or_default()))
                    .unwrap_or_default()
            );
        }
        let da: DeviceAuthorization = r.json().await.context("unexpected device authorization answer")?;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "To sign in to {server}, open this page in a browser:");
        let _ = writeln!(
            err,
            "  {}",
            printable(da.verification_uri_complete.as_deref().unwrap_or(&da.verification_uri))
        );
        let _ = writeln!(err, "(at {}) and check that it shows the code {}", printable(&chosen.issuer), printable(&da.user_code));
        let _ = writeln!(err, "Waiting for the sign-in to complete...");
        drop(err);

        let deadline = now() + da.expires_in as i64;
        let mut interval = da.interval.unwrap_or(DEFAULT_INTERVAL).max(1);
        let tokens = loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if now() > deadline {
                bail!("the code expired before the sign-in was completed; run `gatehouse login` again");
            }
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &da.device_code),
                ("client_id", &chosen.client_id),
            ];
            for (k, v) in &chosen.extra_params {
                if k == "resource" {
                    form.push((k, v));
                }
            }
            match token_post(&c, &disco.token_endpoint, &form).await? {
                Ok(t) => break t,
                Err(e) => match e.error.as_str() {
                    "authorization_pending" => {}
                    // RFC 8628 §3.5: slow down by 5 seconds, for this and every later request.
                    "slow_down" => interval += 5,
                    "access_denied" => bail!("the sign-in was denied"),
                    "expired_token" => bail!("the code expired; run `gatehouse login` again"),
                    other => bail!(
                        "the identity provider refused the sign-in: {other} {}",
                        e.error_description.unwrap_or_default()
                    ),
                },
            }
        };
        let username = token_name(&tokens.access_token);
        let saved = Saved {
            issuer: chosen.issuer.clone(),
            client_id: chosen.client_id.clone(),
            token_endpoint: disco.token_endpoint.clone(),
            revocation_endpoint: disco.revocation_endpoint.clone(),
            scopes: chosen.scopes.clone(),
            extra_params: chosen.extra_params.clone(),
            refresh_token: tokens.refresh_token.clone(),
            access_token: Some(tokens.access_token.clone()),
            access_expires_at: now() + tokens.expires_in.unwrap_or(300),
            username: username.clone(),
        };
        let guard = lock()?;
        let mut file = load()?;
        file.servers.insert(server.clone(), saved);
        save(&file)?;
        drop(guard);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "Signed in to {server}{}. Credentials saved in {}.",
            username.map(|u| format!(" as {u}")).unwrap_or_default(),
            credentials_path()?.display()
        );
        if tokens.refresh_token.is_none() {
            let _ = writeln!(err, "The identity provider gave no refresh token: sign in again when the access token expires.");
        }
        let _ = writeln!(err, "For git: git config --global credential.{server}.helper gatehouse");
        Ok(())
    })
}

/// A fresh access token for `server`, renewed with the refresh token when needed.
async fn fresh_token(file: &mut CredentialsFile, server: &str) -> Result<(String, i64)> {
    let saved = file.servers.get_mut(server).ok_or_else(|| {
        anyhow!("not signed in to {server}: run `gatehouse login --server {server}`")
    })?;
    if let Some(at) = &saved.access_token
        && saved.access_expires_at - now() > MIN_VALIDITY_SECS
    {
        return Ok((at.clone(), saved.access_expires_at));
    }
    let rt = saved.refresh_token.clone().ok_or_else(|| {
        anyhow!("the sign-in to {server} has expired: run `gatehouse login --server {server}`")
    })?;
    let c = http()?;
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", &rt),
        ("client_id", &saved.client_id),
    ];
    for (k, v) in &saved.extra_params {
        if k == "resource" {
            form.push((k, v));
        }
    }
    let answer = token_post(&c, &saved.token_endpoint, &form).await?;
    let t = match answer {
        Ok(t) => t,
        Err(e) if e.error == "invalid_grant" => {
            saved.refresh_token = None;
            saved.access_token = None;
            bail!(
                "the sign-in to {server} has ended at the identity provider: run `gatehouse login --server {server}`"
            );
        }
        Err(e) => bail!(
            "renewing the token failed: {} {}",
            e.error,
            e.error_description.unwrap_or_default()
        ),
    };
    saved.access_expires_at = now() + t.expires_in.unwrap_or(300);
    saved.access_token = Some(t.access_token.clone());
    if let Some(r) = t.refresh_token {
        saved.refresh_token = Some(r);
    }
    Ok((t.access_token, saved.access_expires_at))
}

/// [`fresh_token`], writing the file back only when something changed.
pub(crate) async fn renew(file: &mut CredentialsFile, server: &str) -> Result<(String, i64)> {
    let before = serde_json::to_vec(&*file)?;
    let result = fresh_token(file, server).await;
    if serde_json::to_vec(&*file)? != before {
        save(file)?;
    }
    result
}

/// The one saved gateway, or the one named.
fn pick_server(file: &CredentialsFile, server: Option<&str>) -> Result<String> {
    match server {
        Some(s) => normalize_server(s),
        None => {
            let mut keys = file.servers.keys();
            match (keys.next(), keys.next()) {
                (Some(k), None) => Ok(k.clone()),
                (None, _) => bail!("not signed in anywhere: run `gatehouse login --server URL`"),
                (Some(_), Some(_)) => {
                    bail!("signed in to several gateways: name one with --server")
                }
            }
        }
    }
}

/// `gatehouse token print`: a fresh access token on stdout.
pub fn token_print(server: Option<&str>) -> Result<()> {
    runtime()?.block_on(async {
        let _guard = lock()?;
        let mut file = load()?;
        let server = pick_server(&file, server)?;
        let result = renew(&mut file, &server).await;
        let (token, _) = result?;
        println!("{token}");
        Ok(())
    })
}

/// `gatehouse logout`: revokes the refresh token (best effort) and forgets the sign-in.
pub fn logout(server: Option<&str>) -> Result<()> {
    runtime()?.block_on(async {
        let _guard = lock()?;
        let mut file = load()?;
        let server = pick_server(&file, server)?;
        let Some(saved) = file.servers.remove(&server) else {
            eprintln!("Not signed in to {server}.");
            return Ok(());
        };
        if let (Some(rt), Some(endpoint)) = (&saved.refresh_token, &saved.revocation_endpoint) {
            let c = http()?;
            let form = [
                ("token", rt.as_str()),
                ("token_type_hint", "refresh_token"),
                ("client_id", saved.client_id.as_str()),
            ];
            // RFC 7009 §2.2: 200 whether or not the token was still valid; anything else means
            // it may still be usable at the IdP.
            match c.post(endpoint).form(&form).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => eprintln!(
                    "warning: could not revoke the refresh token: the issuer answered {}",
                    r.status()
                ),
                Err(e) => eprintln!("warning: could not revoke the refresh token: {e}"),
            }
        }
        save(&file)?;
        eprintln!("Signed out of {server}.");
        Ok(())
    })
}

/// `gatehouse credential <get|store|erase>`: git's credential helper protocol on stdin/stdout.
/// `get` answers for a gateway this user signed in to (matched by protocol and host) with a
/// fresh token as the password and its expiry; it answers nothing for other hosts, so git asks
/// its next helper. `store` is a no-op (tokens are Gatehouse's to keep); `erase` drops the cached
/// access token so the next `get` renews it.
pub fn credential(op: &str) -> Result<()> {
    let mut attrs = BTreeMap::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading git's request")?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            attrs.insert(k.to_owned(), v.to_owned());
        }
    }
    let (Some(proto), Some(host)) = (attrs.get("protocol"), attrs.get("host")) else {
        return Ok(());
    };
    let Ok(server) = normalize_server(&format!("{proto}://{host}")) else {
        return Ok(());
    };
    match op {
        "get" => runtime()?.block_on(async {
            let _guard = lock()?;
            let mut file = load()?;
            if !file.servers.contains_key(&server) {
                return Ok(());
            }
            match renew(&mut file, &server).await {
                Ok((token, expires)) => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "username=gatehouse")?;
                    writeln!(out, "password={token}")?;
                    writeln!(out, "password_expiry_utc={expires}")?;
                    Ok(())
                }
                // git shows helper stderr; an empty answer lets it fall back to a prompt.
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    Ok(())
                }
            }
        }),
        "erase" => {
            let _guard = lock()?;
            let mut file = load()?;
            if let Some(s) = file.servers.get_mut(&server) {
                s.access_token = None;
                save(&file)?;
            }
            Ok(())
        }
        "store" => Ok(()),
        other => bail!("unknown credential operation `{other}` (get, store or erase)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_normalized() {
        assert_eq!(
            normalize_server("https://Git.Example.com/").unwrap(),
            "https://git.example.com"
        );
        assert_eq!(
            normalize_server("http://127.0.0.1:8080/x").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(normalize_server("ssh://host").is_err());
        assert!(
            normalize_server("http://git.example.com").is_err(),
            "plain http off-host"
        );
        assert!(normalize_server("http://localhost:8080").is_ok());
        assert_eq!(printable("a\u{1b}[31mb\n"), "a[31mb");
        assert!(normalize_server("nope").is_err());
    }

    #[test]
    fn token_names_are_read_for_messages_only() {
        use base64::Engine as _;
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"sub":"s","preferred_username":"alice"}"#);
        assert_eq!(token_name(&format!("h.{p}.s")).as_deref(), Some("alice"));
        assert_eq!(token_name("opaque"), None);
    }

    #[test]
    fn saved_sign_ins_never_debug_print_tokens() {
        let s = Saved {
            issuer: "i".into(),
            client_id: "c".into(),
            token_endpoint: "t".into(),
            revocation_endpoint: None,
            scopes: vec![],
            extra_params: BTreeMap::new(),
            refresh_token: Some("RT-SECRET".into()),
            access_token: Some("AT-SECRET".into()),
            access_expires_at: 0,
            username: None,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("SECRET"), "{d}");
    }
}

/// Arguments of `gatehouse ssh-cert`.
#[derive(Debug)]
pub struct SshCertArgs {
    /// The gateway's URL.
    pub server: String,
    /// A token to authenticate with (default: the saved `gatehouse login` sign-in).
    pub token: Option<String>,
    /// The public key to certify.
    pub key: PathBuf,
    /// Where to write the certificate (default: next to the key, `-cert.pub`).
    pub out: Option<PathBuf>,
    /// Also write an `ssh_config` snippet for the front door here.
    pub ssh_config: Option<PathBuf>,
}

#[derive(Deserialize)]
struct CertAnswer {
    certificate: String,
    serial: u64,
    valid_before: String,
    principal: String,
    ssh_address: String,
    known_hosts: String,
    host_key_fingerprint: String,
}

/// `gatehouse ssh-cert`: asks the gateway to certify a public key for the caller, writes the
/// certificate where OpenSSH finds it, and prints the clone URL and the front door's host key.
pub fn ssh_cert(args: &SshCertArgs) -> Result<()> {
    let server = normalize_server(&args.server)?;
    let key_text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read {}", args.key.display()))?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let name = args
                .key
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name.strip_suffix(".pub").unwrap_or(&name);
            args.key.with_file_name(format!("{stem}-cert.pub"))
        }
    };
    runtime()?.block_on(async {
        let token = match &args.token {
            Some(t) => t.trim().to_owned(),
            None => {
                let _guard = lock()?;
                let mut file = load()?;
                renew(&mut file, &server).await?.0
            }
        };
        let c = http()?;
        let r = c
            .post(format!("{server}/.gatehouse/ssh/cert"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(key_text.trim().to_owned())
            .send()
            .await
            .with_context(|| format!("POST {server}/.gatehouse/ssh/cert"))?;
        let status = r.status();
        if !status.is_success() {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            bail!(
                "the gateway refused ({status}): {}",
                printable(body["detail"].as_str().unwrap_or("no detail"))
            );
        }
        let a: CertAnswer = r.json().await.context("unexpected answer")?;
        std::fs::write(&out, format!("{}\n", a.certificate.trim()))
            .with_context(|| format!("cannot write {}", out.display()))?;
        let (host, port) = match a.ssh_address.rsplit_once(':') {
            Some((h, p)) => (h.trim_matches(['[', ']']).to_owned(), p.to_owned()),
            None => (a.ssh_address.clone(), "22".to_owned()),
        };
        let identity = args
            .key
            .to_string_lossy()
            .strip_suffix(".pub")
            .map(str::to_owned)
            .unwrap_or_else(|| args.key.to_string_lossy().into_owned());
        let snippet = format!(
            "Host {host}\n  Port {port}\n  User git\n  IdentityFile {identity}\n  CertificateFile {}\n  IdentitiesOnly yes\n",
            out.display()
        );
        if let Some(p) = &args.ssh_config {
            std::fs::write(p, &snippet).with_context(|| format!("cannot write {}", p.display()))?;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "Certificate for {} (serial {}) valid until {} written to {}",
            printable(&a.principal),
            a.serial,
            printable(&a.valid_before),
            out.display()
        );
        let _ = writeln!(
            err,
            "Gatehouse's SSH host key is {}; add this line to ~/.ssh/known_hosts:\n  {}",
            printable(&a.host_key_fingerprint),
            printable(&a.known_hosts)
        );
        drop(err);
        println!("ssh://git@{}/OWNER/REPO.git", printable(&a.ssh_address));
        Ok(())
    })
}
