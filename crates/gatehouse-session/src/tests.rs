//! Session lifetimes on an injected clock, without an IdP: expiry, renewal that cannot happen,
//! a rotated secret, forged cookies and sign-ins that are not pending.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_authn::{Authenticator, OwnIssuer, generate_signing_key_pem};
use gatehouse_config::Config;
use gatehouse_core::{ManualClock, Redacted};

use super::*;

const T0: i64 = 1_800_000_000;

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gh-sessions-{}", random_token(8).unwrap()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sessions(dir: &Path, secret: &str, clock: Arc<ManualClock>) -> Sessions {
    std::fs::write(dir.join("secret"), secret).unwrap();
    let text = r#"
[server]
listen = "127.0.0.1:8080"
[upstream]
url = "http://127.0.0.1:3000"
[tokens]
signing_key = { file = "unused.pem" }
[policy]
file = "policy.cedar"
[audit]
file = "audit.log"
[session]
external_url = "https://gw.example"
dir = "store"
secret = { file = "secret" }
max_lifetime = "1h"
refresh_before = "60s"
[[issuers]]
issuer = "http://127.0.0.1:1"
audiences = ["gatehouse"]
http_timeout = "1s"
[issuers.login]
client_id = "gh"
"#;
    let cfg = Config::parse(text, dir, "test.toml").unwrap();
    let pem = Redacted::new(generate_signing_key_pem().unwrap());
    let own = Arc::new(OwnIssuer::new(&cfg.tokens, &pem).unwrap());
    let authn = Authenticator::new(&cfg.issuers, own, clock.clone()).unwrap();
    let scfg = cfg.session.as_ref().unwrap();
    Sessions::new(
        scfg,
        &cfg.issuers,
        Arc::new(crate::MemoryStore::default()),
        &authn,
        clock,
    )
    .unwrap()
}

/// Whether the store holds the session record under `key`.
async fn stored(s: &Sessions, key: &str) -> bool {
    s.store
        .get(RecordKind::Session, key)
        .await
        .unwrap()
        .is_some()
}

/// Stores a session as a completed sign-in would; returns its cookie header value.
async fn signed_in(s: &Sessions, access_ttl: i64, refresh: bool) -> (String, String) {
    signed_in_at(s, IDP, access_ttl, refresh).await
}

/// The configured issuer; nothing listens there, so a renewal finds the IdP unreachable.
const IDP: &str = "http://127.0.0.1:1";

async fn signed_in_at(
    s: &Sessions,
    issuer: &str,
    access_ttl: i64,
    refresh: bool,
) -> (String, String) {
    let now = s.clock.now().as_secs();
    let id = random_token(32).unwrap();
    let access_expires_at = now + access_ttl;
    let hard = now + s.cfg.max_lifetime.0.as_secs() as i64;
    let expires_at = if refresh {
        hard
    } else {
        hard.min(access_expires_at)
    };
    let rec = StoredSession {
        issuer: issuer.into(),
        principal: StoredPrincipal {
            kind: "user".into(),
            subject: "alice".into(),
            username: "alice".into(),
            display_name: None,
            email: None,
            groups: vec!["devs".into()],
        },
        created_at: now,
        expires_at,
        access_expires_at,
        access_token: "AT".into(),
        refresh_token: refresh.then(|| "RT".into()),
        id_token: None,
        refreshes: 0,
        environment: None,
    };
    s.put(RecordKind::Session, &store_key(&id), expires_at, &rec)
        .await
        .unwrap();
    (
        format!("other=1; {SESSION_COOKIE}={}", s.keys.sign("session", &id)),
        store_key(&id),
    )
}

async fn resolve(s: &Sessions, cookie: &str) -> Option<ActiveSession> {
    s.resolve(std::iter::once(cookie)).await.unwrap()
}

#[tokio::test]
async fn a_session_ends_at_its_maximum_lifetime_and_leaves_the_store() {
    let dir = tmp();
    let clock = Arc::new(ManualClock::new(T0));
    let s = sessions(&dir, &"k".repeat(32), clock.clone());
    let (cookie, key) = signed_in(&s, 7200, true).await;
    let live = resolve(&s, &cookie).await.unwrap();
    assert_eq!(live.principal.username, "alice");
    assert_eq!(live.expires_at, T0 + 3600);
    assert!(
        live.principal
            .token_id
            .as_deref()
            .unwrap()
            .starts_with("session:")
    );
    clock.set(T0 + 3599);
    assert!(resolve(&s, &cookie).await.is_some());
    clock.set(T0 + 3600);
    assert!(resolve(&s, &cookie).await.is_none());
    assert!(!stored(&s, &key).await, "expired record kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn without_a_refresh_token_the_session_ends_with_the_access_token() {
    let dir = tmp();
    let clock = Arc::new(ManualClock::new(T0));
    let s = sessions(&dir, &"k".repeat(32), clock.clone());
    let (cookie, _) = signed_in(&s, 300, false).await;
    clock.set(T0 + 299);
    let live = resolve(&s, &cookie).await.unwrap();
    assert!(!live.renews);
    clock.set(T0 + 300);
    assert!(resolve(&s, &cookie).await.is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unreachable_idp_keeps_a_session_only_until_its_access_token_expires() {
    let dir = tmp();
    let clock = Arc::new(ManualClock::new(T0));
    let s = sessions(&dir, &"k".repeat(32), clock.clone());
    let (cookie, key) = signed_in(&s, 300, true).await;
    clock.set(T0 + 239);
    let live = resolve(&s, &cookie).await.unwrap();
    assert_eq!(live.refreshes, 0, "renewed before it was due");
    // Renewal is due but the IdP cannot be reached: the session goes on while its token lasts.
    clock.set(T0 + 240);
    assert!(resolve(&s, &cookie).await.is_some());
    clock.set(T0 + 300);
    assert!(resolve(&s, &cookie).await.is_none());
    assert!(stored(&s, &key).await, "an outage is not a sign-out");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_session_of_an_issuer_no_longer_configured_ends_at_once() {
    let dir = tmp();
    let clock = Arc::new(ManualClock::new(T0));
    let s = sessions(&dir, &"k".repeat(32), clock.clone());
    let (cookie, key) = signed_in_at(&s, "https://gone.example", 3600, true).await;
    assert!(resolve(&s, &cookie).await.is_none());
    assert!(!stored(&s, &key).await);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn forged_cookies_and_another_secret_find_no_session() {
    let dir = tmp();
    let clock = Arc::new(ManualClock::new(T0));
    let s = sessions(&dir, &"k".repeat(32), clock.clone());
    let (cookie, _) = signed_in(&s, 3600, true).await;
    assert!(resolve(&s, &cookie).await.is_some());
    // A flipped character in the id or the MAC.
    let value = cookie.split_once(&format!("{SESSION_COOKIE}=")).unwrap().1;
    for i in [0, value.len() - 1] {
        let mut bytes = value.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = format!("{SESSION_COOKIE}={}", String::from_utf8(bytes).unwrap());
        assert!(resolve(&s, &forged).await.is_none(), "{i}");
    }
    assert!(resolve(&s, "other=1").await.is_none());
    assert!(resolve(&s, &format!("{SESSION_COOKIE}=")).await.is_none());
    // The same store read with another secret: the cookie does not verify, and the records do
    // not open even for a cookie signed with the new secret over the same id.
    let rotated = sessions(&dir, &"z".repeat(32), clock.clone());
    assert!(resolve(&rotated, &cookie).await.is_none());
    let id = value.rsplit_once('.').unwrap().0;
    let resigned = format!("{SESSION_COOKIE}={}", rotated.keys.sign("session", id));
    assert!(resolve(&rotated, &resigned).await.is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn callbacks_without_a_matching_sign_in_are_refused() {
    let dir = tmp();
    let clock = Arc::new(ManualClock::new(T0));
    let s = sessions(&dir, &"k".repeat(32), clock.clone());
    assert!(matches!(
        s.begin(7, "/", None).await,
        Err(SessionError::UnknownProvider)
    ));
    let login_cookie = |issuer: &str, state: &str, expires_at: i64| {
        let p = PendingLogin {
            issuer: issuer.into(),
            state: state.into(),
            verifier: "v".into(),
            nonce: "n".into(),
            return_to: "/".into(),
            expires_at,
            environment: None,
        };
        format!("{LOGIN_COOKIE}={}", s.seal_cookie(&p).unwrap())
    };
    let s = &s;
    let finish = |q: &'static str, c: String| async move {
        s.finish(Some(q), std::iter::once(c.as_str())).await
    };
    // No state; no cookie; a cookie for another state; a forged cookie.
    let r = s.finish(Some("code=c"), std::iter::empty()).await;
    assert!(matches!(r, Err(SessionError::BadCallback)));
    let r = s.finish(Some("code=c&state=abc"), std::iter::empty()).await;
    assert!(matches!(r, Err(SessionError::StateMismatch)));
    let r = finish("code=c&state=abc", login_cookie(IDP, "xyz", T0 + 600)).await;
    assert!(matches!(r, Err(SessionError::StateMismatch)));
    let r = finish("code=c&state=abc", format!("{LOGIN_COOKIE}=Zm9yZ2Vk")).await;
    assert!(matches!(r, Err(SessionError::StateMismatch)));
    // Repeated parameters are refused.
    let r = finish(
        "code=c&state=abc&state=abc",
        login_cookie(IDP, "abc", T0 + 600),
    )
    .await;
    assert!(matches!(r, Err(SessionError::BadCallback)));
    // Past the sign-in timeout.
    clock.set(T0 + 601);
    let r = finish("code=c&state=abc", login_cookie(IDP, "abc", T0 + 600)).await;
    assert!(matches!(r, Err(SessionError::Expired)));
    // For an issuer no longer configured.
    let r = finish(
        "code=c&state=abc",
        login_cookie("https://gone.example", "abc", T0 + 900),
    )
    .await;
    assert!(matches!(r, Err(SessionError::UnknownProvider)));
    std::fs::remove_dir_all(&dir).unwrap();
}
