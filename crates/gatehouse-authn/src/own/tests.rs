use gatehouse_config::{ConfigDuration, SecretSource, TokensConfig};

use super::*;
use crate::parse_unverified;

fn cfg(verification_keys: Vec<std::path::PathBuf>) -> TokensConfig {
    TokensConfig {
        issuer: "urn:gatehouse".into(),
        audience: "gatehouse".into(),
        signing_key: SecretSource::Env {
            env: "UNUSED".into(),
        },
        verification_keys,
        default_ttl: ConfigDuration::secs(900),
        max_ttl: ConfigDuration::secs(86_400),
        leeway: ConfigDuration::secs(0),
    }
}

fn issuer(pem: &str, extra: Vec<std::path::PathBuf>) -> OwnIssuer {
    OwnIssuer::new(&cfg(extra), &Redacted::new(pem.to_owned())).unwrap_or_else(|e| panic!("{e}"))
}

fn req(sub: &str) -> TokenRequest {
    TokenRequest {
        subject: sub.into(),
        username: None,
        groups: vec!["bots".into()],
        ttl: Some(Duration::from_secs(60)),
        name: None,
        email: None,
        kind: PrincipalKind::Service,
        environment: None,
        derived_from: Vec::new(),
        workload: None,
    }
}

fn pem() -> String {
    generate_signing_key_pem().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn issue_and_verify() {
    let own = issuer(&pem(), vec![]);
    let (tok, exp) = own
        .issue(&req("agent:reviewer"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exp, 1_060);
    let jwt = parse_unverified(tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(jwt.kid.as_deref(), Some(own.signing_kid()));
    let p = own.verify(&jwt, 1_010).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.username, "agent:reviewer");
    assert_eq!(p.groups, vec!["bots"]);
    assert_eq!(p.kind, PrincipalKind::Service);
    assert_eq!(own.verify(&jwt, 1_061).err(), Some(AuthnError::Expired));
    assert_eq!(own.verify(&jwt, 900).err(), Some(AuthnError::NotYetValid));
}

#[test]
fn an_environment_binding_survives_verification_and_a_bad_one_is_refused() {
    let own = issuer(&pem(), vec![]);
    let mut r = req("job");
    r.environment = Some("env-1".into());
    let (tok, _) = own.issue(&r, 1_000).unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(jwt.claims["gatehouse_env"], "env-1");
    let p = own.verify(&jwt, 1_010).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.environment.as_deref(), Some("env-1"));
    let (plain, _) = own
        .issue(&req("job"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(plain.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(own.verify(&jwt, 1_010).map(|p| p.environment), Ok(None));
    // A binding that cannot be read is never dropped silently: the token is refused.
    let mut odd = jwt.clone();
    odd.claims
        .insert("gatehouse_env".into(), serde_json::json!(7));
    assert!(matches!(
        own.verify(&odd, 1_010),
        Err(AuthnError::BadClaim(_) | AuthnError::BadSignature)
    ));
}

#[test]
fn no_leeway_stretches_a_token_past_its_environments_end() {
    let mut c = cfg(vec![]);
    c.leeway = ConfigDuration::secs(60);
    let own = OwnIssuer::new(&c, &Redacted::new(pem())).unwrap_or_else(|e| panic!("{e}"));
    let mut bound = req("job");
    bound.environment = Some("env-1".into());
    let (tok, exp) = own.issue(&bound, 1_000).unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert!(own.verify(&jwt, exp).is_ok());
    assert_eq!(own.verify(&jwt, exp + 1).err(), Some(AuthnError::Expired));
    // An unbound token keeps the leeway (clock skew between nodes).
    let (tok, exp) = own
        .issue(&req("job"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert!(own.verify(&jwt, exp + 30).is_ok());
}

#[test]
fn ttl_is_bounded() {
    let own = issuer(&pem(), vec![]);
    let mut r = req("x");
    r.ttl = Some(Duration::from_secs(86_401));
    assert!(own.issue(&r, 0).is_err());
}

#[test]
fn rotation_keeps_old_tokens_valid() {
    let dir = std::env::temp_dir().join(format!("gh-own-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let old_pem = pem();
    let old = issuer(&old_pem, vec![]);
    let (old_tok, _) = old
        .issue(&req("svc"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let old_file = dir.join("old.pem");
    std::fs::write(&old_file, &old_pem).unwrap_or_else(|e| panic!("{e}"));

    let new = issuer(&pem(), vec![old_file]);
    assert_eq!(new.jwks()["keys"].as_array().map(Vec::len), Some(2));
    let jwt = parse_unverified(old_tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert!(new.verify(&jwt, 1_010).is_ok(), "old token still accepted");
    let (new_tok, _) = new
        .issue(&req("svc"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(new_tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(jwt.kid.as_deref(), Some(new.signing_kid()));

    // once retired (removed from verification_keys), the old key's tokens are refused
    let retired = issuer(&pem(), vec![]);
    let jwt = parse_unverified(old_tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        retired.verify(&jwt, 1_010).err(),
        Some(AuthnError::UnknownKey)
    );
}

#[test]
fn tampered_and_foreign_tokens_are_refused() {
    let own = issuer(&pem(), vec![]);
    let (tok, _) = own
        .issue(&req("svc"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let parts: Vec<&str> = tok.expose().split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(
        r#"{"iss":"urn:gatehouse","sub":"admin","aud":"gatehouse","exp":99999,"groups":["admins"]}"#,
    );
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let jwt = parse_unverified(&forged).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        own.verify(&jwt, 1_010).err(),
        Some(AuthnError::BadSignature)
    );

    // the same kid but a key the issuer never had: the signature does not verify
    let other = issuer(&pem(), vec![]);
    let (t2, _) = other
        .issue(&req("svc"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(t2.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(own.verify(&jwt, 1_010).err(), Some(AuthnError::UnknownKey));
}

#[test]
fn public_key_files_are_accepted_for_verification() {
    let dir = std::env::temp_dir().join(format!("gh-own-pub-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let old_pem = pem();
    let kp = rcgen::KeyPair::from_pem(&old_pem).unwrap_or_else(|e| panic!("{e}"));
    let pub_file = dir.join("old.pub.pem");
    std::fs::write(&pub_file, kp.public_key_pem()).unwrap_or_else(|e| panic!("{e}"));
    let old = issuer(&old_pem, vec![]);
    let new = issuer(&pem(), vec![pub_file]);
    let (tok, _) = old
        .issue(&req("svc"), 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    assert!(new.verify(&jwt, 1_010).is_ok());
}

#[test]
fn assertions_are_reused_for_half_their_life() {
    let own = issuer(&pem(), vec![]);
    let p = own
        .verify(
            &parse_unverified(
                own.issue(&req("svc"), 1_000)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .0
                    .expose(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
            1_000,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let ttl = Duration::from_secs(60);
    let a1 = own
        .assertion(&p, "up", ttl, 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let a2 = own
        .assertion(&p, "up", ttl, 1_020)
        .unwrap_or_else(|e| panic!("{e}"));
    let a3 = own
        .assertion(&p, "up", ttl, 1_031)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a1, a2);
    assert_ne!(a1, a3);
    let parsed = parse_unverified(&a3).unwrap_or_else(|e| panic!("{e}"));
    // an assertion is not a credential, even when its audience is Gatehouse's own
    let as_token = own
        .assertion(&p, "gatehouse", ttl, 1_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let as_token = parse_unverified(&as_token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        own.verify(&as_token, 1_001).err(),
        Some(AuthnError::WrongAudience)
    );
    // a changed group list is never served a stale assertion
    let mut p2 = p.clone();
    p2.groups.push("admins".into());
    let a4 = own
        .assertion(&p2, "up", ttl, 1_031)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a3, a4);
    let claims = parsed.claims;
    assert_eq!(claims["aud"], "up");
    assert_eq!(claims["exp"], 1_091);
}

#[test]
fn assertion_keys_tell_every_identity_apart() {
    let base = Principal {
        kind: gatehouse_core::PrincipalKind::User,
        issuer: "https://idp".into(),
        subject: "a".into(),
        username: "b\nc".into(),
        display_name: None,
        email: Some("x".into()),
        groups: vec!["g\nh".into()],
        token_id: Some("jti".into()),
        expires_at: Some(1),
        environment: None,
        workload: None,
        derived_from: Vec::new(),
    };
    let key = assertion_key(&base, "up");
    // Neither the credential's id nor its expiry is said in an assertion.
    let renewed = Principal {
        token_id: None,
        expires_at: Some(2),
        ..base.clone()
    };
    assert_eq!(assertion_key(&renewed, "up"), key);
    // Fields whose bytes run together the same way are still different identities.
    let variants = [
        Principal {
            subject: "a\nb".into(),
            username: "c".into(),
            ..base.clone()
        },
        Principal {
            groups: vec!["g".into(), "h".into()],
            ..base.clone()
        },
        Principal {
            display_name: Some("x".into()),
            email: None,
            ..base.clone()
        },
        Principal {
            email: None,
            ..base.clone()
        },
        Principal {
            kind: gatehouse_core::PrincipalKind::Service,
            ..base.clone()
        },
        Principal {
            issuer: "https://idp2".into(),
            ..base.clone()
        },
    ];
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(assertion_key(v, "up"), key, "variant {i}");
    }
    assert_ne!(assertion_key(&base, "up2"), key);
}

#[test]
fn a_workload_keeps_its_claims_through_an_exchanged_token() {
    let own = issuer(&pem(), vec![]);
    let w = std::sync::Arc::new(gatehouse_core::Workload {
        platform: "github-actions".into(),
        repository: "acme/api".into(),
        event: "pull_request".into(),
        ..Default::default()
    });
    let mut r = req("github-actions:acme:api");
    r.kind = PrincipalKind::User;
    r.workload = Some(w.clone());
    let (tok, _) = own.issue(&r, 1_000).unwrap_or_else(|e| panic!("{e}"));
    let jwt = parse_unverified(tok.expose()).unwrap_or_else(|e| panic!("{e}"));
    let p = own.verify(&jwt, 1_010).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.workload, Some(w));
    assert_eq!(p.kind, PrincipalKind::Service, "a job is never a person");
}
