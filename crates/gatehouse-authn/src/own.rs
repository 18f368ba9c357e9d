//! Gatehouse's own issuer: ES256 keys, token issuance for service accounts and agents, the
//! published JWKS, and the signed assertion sent upstream.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse_config::{ClaimMapping, TokensConfig};
use gatehouse_core::{Prehashed, Principal, PrincipalKind, Redacted};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

use crate::claims::{check_standard, map_principal};
use crate::jwks::{Key, KeyFamily, check_signature, select};
use crate::{AuthnError, UnverifiedJwt};

/// The DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a key of Gatehouse's own could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnKeyError {
    /// The PEM is not a P-256 key in a supported form.
    #[error("{what}: {message}")]
    BadKey {
        /// Which key.
        what: String,
        /// Why.
        message: String,
    },
    /// A verification key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A token request is out of bounds (e.g. longer than `tokens.max_ttl`).
    #[error("{0}")]
    Request(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A new P-256 signing key, as PKCS#8 PEM.
pub fn generate_signing_key_pem() -> Result<String, OwnKeyError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|k| k.serialize_pem())
        .map_err(|e| OwnKeyError::BadKey {
            what: "new key".into(),
            message: e.to_string(),
        })
}

/// What `gatehouse token issue` asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// The forge user name (default: the subject).
    pub username: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Lifetime (default: `tokens.default_ttl`).
    pub ttl: Option<Duration>,
    /// Display name.
    pub name: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Person or machine.
    pub kind: PrincipalKind,
    /// The environment the token is bound to (`gatehouse_env`): ending it revokes the token.
    pub environment: Option<String>,
    /// The credentials it is bought with (`gatehouse_from`): revoking one revokes it.
    pub derived_from: Vec<String>,
    /// The workload claims of the credential it is bought with (`gatehouse_workload`): a job's
    /// exchanged token is still that job to the policy.
    pub workload: Option<std::sync::Arc<gatehouse_core::Workload>>,
}

/// A digest of the audience and every identity field the assertion carries ([`assertion_key`]).
type AssertionKey = [u8; 32];

struct PublicKey {
    kid: String,
    jwk: Value,
    key: Key,
}

/// Gatehouse as a token issuer.
pub struct OwnIssuer {
    issuer: String,
    audience: String,
    leeway: i64,
    default_ttl: Duration,
    max_ttl: Duration,
    signing_kid: String,
    signing: EncodingKey,
    public: Vec<PublicKey>,
    keys: Vec<Key>,
    assertions: RwLock<HashMap<AssertionKey, (Arc<str>, i64), Prehashed>>,
}

impl std::fmt::Debug for OwnIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnIssuer")
            .field("issuer", &self.issuer)
            .field("signing_kid", &self.signing_kid)
            .field(
                "keys",
                &self.public.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn pem_body(pem: &str) -> Option<(String, Vec<u8>)> {
    let begin = pem.find("-----BEGIN ")?;
    let rest = &pem[begin + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_owned();
    let body_start = label_end + 5;
    let end = rest.find("-----END ")?;
    let b64: String = rest
        .get(body_start..end)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok().map(|der| (label, der))
}

fn public_from_point(point: &[u8], what: &str) -> Result<PublicKey, OwnKeyError> {
    let bad = |m: &str| OwnKeyError::BadKey {
        what: what.to_owned(),
        message: m.to_owned(),
    };
    if point.len() != 65 || point[0] != 4 {
        return Err(bad("not an uncompressed P-256 public key"));
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    // RFC 7638 thumbprint: the required members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ));
    let key = DecodingKey::from_ec_components(&x, &y).map_err(|e| bad(&e.to_string()))?;
    Ok(PublicKey {
        jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256"}),
        key: Key {
            kid: Some(kid.clone()),
            family: KeyFamily::P256,
            key,
        },
        kid,
    })
}

/// Reads a P-256 key from PEM: a PKCS#8 private key (`PRIVATE KEY`) or a public key (`PUBLIC KEY`).
fn read_public(pem: &str, what: &str) -> Result<PublicKey, OwnKeyError> {
    let bad = |m: &str| OwnKeyError::BadKey {
        what: what.to_owned(),
        message: m.to_owned(),
    };
    let (label, der) = pem_body(pem).ok_or_else(|| bad("not a PEM file"))?;
    match label.as_str() {
        "PUBLIC KEY" => {
            if der.len() != 91 || der[..26] != P256_SPKI_PREFIX {
                return Err(bad("not a P-256 public key"));
            }
            public_from_point(&der[26..], what)
        }
        "PRIVATE KEY" => {
            let kp = rcgen::KeyPair::from_pem(pem).map_err(|e| bad(&e.to_string()))?;
            if kp.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
                return Err(bad("not a P-256 (ES256) key"));
            }
            public_from_point(kp.public_key_raw(), what)
        }
        other => Err(bad(&format!(
            "PEM label `{other}`: expected `PRIVATE KEY` (PKCS#8) or `PUBLIC KEY`; `gatehouse keys generate` writes one"
        ))),
    }
}

impl OwnIssuer {
    /// Loads the signing key and the earlier keys still accepted for verification.
    pub fn new(cfg: &TokensConfig, signing_pem: &Redacted<String>) -> Result<Self, OwnKeyError> {
        let what = "tokens.signing_key";
        let kp =
            rcgen::KeyPair::from_pem(signing_pem.expose()).map_err(|e| OwnKeyError::BadKey {
                what: what.into(),
                message: format!(
                    "{e} (expected a PKCS#8 P-256 private key, as `gatehouse keys generate` writes)"
                ),
            })?;
        if kp.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(OwnKeyError::BadKey {
                what: what.into(),
                message: "not a P-256 (ES256) key".into(),
            });
        }
        let signing_pub = public_from_point(kp.public_key_raw(), what)?;
        let signing = EncodingKey::from_ec_der(&kp.serialize_der());
        let mut public = vec![signing_pub];
        for path in &cfg.verification_keys {
            let pem = std::fs::read_to_string(path).map_err(|source| OwnKeyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let k = read_public(&pem, &path.display().to_string())?;
            if public.iter().all(|p| p.kid != k.kid) {
                public.push(k);
            }
        }
        let keys = public
            .iter()
            .map(|p| Key {
                kid: p.key.kid.clone(),
                family: p.key.family,
                key: p.key.key.clone(),
            })
            .collect();
        Ok(Self {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway.0.as_secs() as i64,
            default_ttl: cfg.default_ttl.0,
            max_ttl: cfg.max_ttl.0,
            signing_kid: public[0].kid.clone(),
            signing,
            public,
            keys,
            assertions: RwLock::new(HashMap::default()),
        })
    }

    /// The `iss` of Gatehouse's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of Gatehouse's tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The lifetime of a token issued without one (`tokens.default_ttl`).
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// The `kid` of the current signing key.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// The public keys (signing key first), as a JWKS document.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.public.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    fn sign(&self, claims: &Value) -> Result<String, OwnKeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing)
            .map_err(|e| OwnKeyError::Sign(e.to_string()))
    }

    /// Issues a token; returns it and its expiry (seconds since the epoch).
    pub fn issue(
        &self,
        req: &TokenRequest,
        now: i64,
    ) -> Result<(Redacted<String>, i64), OwnKeyError> {
        let ttl = req.ttl.unwrap_or(self.default_ttl);
        if ttl > self.max_ttl {
            return Err(OwnKeyError::Request(format!(
                "ttl {}s exceeds tokens.max_ttl ({}s)",
                ttl.as_secs(),
                self.max_ttl.as_secs()
            )));
        }
        if ttl.is_zero() {
            return Err(OwnKeyError::Request("ttl must be positive".into()));
        }
        let exp = now + ttl.as_secs() as i64;
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| OwnKeyError::Sign("no randomness".into()))?;
        let mut claims = json!({
            "iss": self.issuer,
            "sub": req.subject,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "groups": req.groups,
            "gatehouse_kind": req.kind.as_str(),
            "preferred_username": req.username.as_deref().unwrap_or(&req.subject),
        });
        if let Some(obj) = claims.as_object_mut() {
            if let Some(n) = &req.name {
                obj.insert("name".into(), Value::String(n.clone()));
            }
            if let Some(e) = &req.email {
                obj.insert("email".into(), Value::String(e.clone()));
            }
            if let Some(env) = &req.environment {
                obj.insert("gatehouse_env".into(), Value::String(env.clone()));
            }
            if !req.derived_from.is_empty() {
                obj.insert("gatehouse_from".into(), json!(req.derived_from));
            }
            if let Some(w) = &req.workload {
                obj.insert(
                    "gatehouse_workload".into(),
                    crate::workload::workload_claim(w),
                );
            }
        }
        // Check the claims the way a request would before handing the token out.
        let principal = map_principal(
            claims
                .as_object()
                .ok_or_else(|| OwnKeyError::Sign("claims".into()))?,
            &ClaimMapping::default(),
            &self.issuer,
            req.kind,
        )
        .map_err(|e| OwnKeyError::Request(format!("{e}: {}", detail(&e))))?;
        drop(principal);
        Ok((Redacted::new(self.sign(&claims)?), exp))
    }

    /// Verifies one of Gatehouse's own tokens.
    pub(crate) fn verify(&self, jwt: &UnverifiedJwt, now: i64) -> Result<Principal, AuthnError> {
        if jwt.alg != "ES256" {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        let key = select(&self.keys, jwt.kid.as_deref(), Algorithm::ES256)?
            .ok_or(AuthnError::UnknownKey)?;
        check_signature(jwt, key, Algorithm::ES256)?;
        check_standard(
            &jwt.claims,
            now,
            self.leeway,
            std::slice::from_ref(&self.audience),
            &[],
        )?;
        if jwt.claims.contains_key("token_use") {
            // An upstream assertion is never a credential, whatever its audience.
            return Err(AuthnError::WrongAudience);
        }
        let kind = match jwt.claims.get("gatehouse_kind").and_then(Value::as_str) {
            Some("user") => PrincipalKind::User,
            _ => PrincipalKind::Service,
        };
        let mut p = map_principal(&jwt.claims, &ClaimMapping::default(), &self.issuer, kind)?;
        p.environment = match jwt.claims.get("gatehouse_env") {
            None => None,
            Some(Value::String(env)) if !env.is_empty() => Some(env.clone()),
            // A binding that cannot be read is never dropped: the token is refused.
            Some(_) => return Err(AuthnError::BadClaim("gatehouse_env".into())),
        };
        // A token bound to an environment ends with it, to the second: its `exp` is capped at
        // the environment's end, and no clock-skew leeway may stretch it past that.
        if p.environment.is_some() && p.expires_at.is_none_or(|exp| now > exp) {
            return Err(AuthnError::Expired);
        }
        p.workload = match jwt.claims.get("gatehouse_workload") {
            None => None,
            Some(v) => Some(std::sync::Arc::new(
                crate::workload::workload_from_claim(v)
                    .ok_or_else(|| AuthnError::BadClaim("gatehouse_workload".into()))?,
            )),
        };
        if p.workload.is_some() {
            p.kind = PrincipalKind::Service;
        }
        p.derived_from = match jwt.claims.get("gatehouse_from") {
            None => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| AuthnError::BadClaim("gatehouse_from".into()))?,
            Some(_) => return Err(AuthnError::BadClaim("gatehouse_from".into())),
        };
        Ok(p)
    }

    /// A signed statement about a relayed webhook delivery, for the target `audience`:
    /// `claims` plus `iss`, `aud`, `iat`, `exp` (5 minutes) and `token_use: "webhook"`, which no
    /// front door accepts as a credential.
    pub fn webhook_assertion(
        &self,
        audience: &str,
        mut claims: Value,
        now: i64,
    ) -> Result<String, OwnKeyError> {
        let obj = claims
            .as_object_mut()
            .ok_or_else(|| OwnKeyError::Request("claims must be an object".into()))?;
        obj.insert("iss".into(), json!(self.issuer));
        obj.insert("aud".into(), json!(audience));
        obj.insert("iat".into(), json!(now));
        obj.insert("exp".into(), json!(now + 300));
        obj.insert("token_use".into(), json!("webhook"));
        obj.remove("sub");
        self.sign(&claims)
    }

    /// A short-lived assertion of who the caller is, for the upstream (`aud` = the upstream).
    /// Assertions are reused for half their lifetime, so a busy principal costs one signature per
    /// half-TTL rather than one per request.
    pub fn assertion(
        &self,
        p: &Principal,
        audience: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Arc<str>, AuthnError> {
        let key = assertion_key(p, audience);
        let half = (ttl.as_secs() / 2) as i64;
        if let Ok(cache) = self.assertions.read()
            && let Some((tok, exp)) = cache.get(&key)
            && now + half < *exp
        {
            return Ok(tok.clone());
        }
        let exp = now + ttl.as_secs() as i64;
        let claims = json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": p.subject,
            "idp": p.issuer,
            "preferred_username": p.username,
            "email": p.email,
            "name": p.display_name,
            "groups": p.groups,
            "kind": p.kind.as_str(),
            "token_use": "assertion",
            "iat": now,
            "exp": exp,
        });
        let tok: Arc<str> = self
            .sign(&claims)
            .map_err(|e| AuthnError::Internal(e.to_string()))?
            .into();
        if let Ok(mut cache) = self.assertions.write() {
            if cache.len() > 16_384 {
                cache.clear();
            }
            cache.insert(key, (tok.clone(), exp));
        }
        Ok(tok)
    }
}

/// The assertion cache's key: SHA-256 over everything the assertion says, each field
/// length-prefixed so that no two principals (whatever bytes their claims hold) share a key,
/// and a changed group or e-mail is never served a stale assertion.
fn assertion_key(p: &Principal, audience: &str) -> [u8; 32] {
    // Every claim by name, with no `..`: a claim added to the principal does not compile until
    // it is keyed here.
    let gatehouse_core::Claims {
        kind,
        issuer,
        subject,
        username,
        display_name,
        email,
        groups,
        // The assertion names the caller; a workload's claims are not in it.
        workload: _,
    } = p.claims();
    let mut buf = Vec::with_capacity(256);
    let mut field = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
        buf.extend_from_slice(b);
    };
    field(audience.as_bytes());
    field(issuer.as_bytes());
    field(subject.as_bytes());
    field(username.as_bytes());
    for o in [email, display_name] {
        match o {
            Some(v) => {
                field(b"1");
                field(v.as_bytes());
            }
            None => field(b"0"),
        }
    }
    field(kind.as_str().as_bytes());
    field(&(groups.len() as u32).to_be_bytes());
    for g in groups {
        field(g.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf).as_ref());
    key
}

fn detail(e: &AuthnError) -> String {
    match e {
        AuthnError::BadClaim(c) | AuthnError::MissingClaim(c) | AuthnError::Unbound(c) => c.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
