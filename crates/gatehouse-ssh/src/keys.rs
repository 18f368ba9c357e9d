//! Keys on disk and the two certificate authorities: the user CA (certificates people get with
//! `gatehouse ssh-cert`, checked at the front door) and the upstream CA (a certificate per
//! connection, which the forge trusts).

use std::collections::HashSet;
use std::path::Path;

use gatehouse_core::{Principal, PrincipalKind};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Fingerprint, LineEnding};
use russh::keys::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey};

use crate::SshError;

/// Certificate extensions carrying the identity Gatehouse vouched for.
const EXT_ISSUER: &str = "issuer@gatehouse";
const EXT_SUBJECT: &str = "subject@gatehouse";
const EXT_GROUPS: &str = "groups@gatehouse";
const EXT_EMAIL: &str = "email@gatehouse";
const EXT_NAME: &str = "name@gatehouse";
/// The environment the credential that bought the certificate is bound to: ending it revokes
/// the certificate too.
const EXT_ENVIRONMENT: &str = "environment@gatehouse";
/// The credentials that bought the certificate (comma-separated ids): revoking one revokes it.
const EXT_FROM: &str = "from@gatehouse";
/// The CI job's or pod's claims of the credential that bought the certificate, one `name=value`
/// per line: the policy reads them over SSH too, and ending the job revokes the certificate.
const EXT_WORKLOAD: &str = "workload@gatehouse";
const EXT_KIND: &str = "kind@gatehouse";

/// Loads an Ed25519 private key, or generates one (mode 0600) when the file is missing.
pub fn load_or_generate(path: &Path) -> Result<PrivateKey, SshError> {
    if path.exists() {
        return russh::keys::load_secret_key(path, None)
            .map_err(|e| SshError::Key(format!("{}: {e}", path.display())));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| SshError::Key(format!("{}: {e}", dir.display())))?;
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| SshError::Key(format!("generate: {e}")))?;
    key.write_openssh_file(path, LineEnding::LF)
        .map_err(|e| SshError::Key(format!("{}: {e}", path.display())))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| SshError::Key(e.to_string()))?;
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| SshError::Key(format!("{}: {e}", pub_path.display())))?;
    Ok(key)
}

/// `SHA256:...`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// A public key from an `authorized_keys`-style line.
pub fn parse_public_key(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| SshError::Key(format!("public key: {e}")))
}

/// Why a user certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not signed by Gatehouse's user CA, or the signature does not verify.
    #[error("not signed by Gatehouse's user CA")]
    WrongCa,
    /// Outside its validity window.
    #[error("expired or not yet valid")]
    Expired,
    /// Its serial is on the revocation list.
    #[error("revoked (serial {0})")]
    Revoked(u64),
    /// A host certificate, critical options Gatehouse does not apply, or no identity.
    #[error("not a Gatehouse user certificate ({0})")]
    Unusable(&'static str),
}

/// The user CA: issues and checks the certificates people present at the front door.
#[derive(Debug)]
pub struct UserCa {
    key: PrivateKey,
    fingerprint: Fingerprint,
    revoked: HashSet<u64>,
}

/// What a user certificate says about its holder.
#[derive(Debug, Clone)]
pub struct CertIdentity {
    /// The principal, with `token_id` = `cert:<serial>`.
    pub principal: Principal,
    /// The certificate's serial.
    pub serial: u64,
    /// The key id (identity and token id).
    pub key_id: String,
}

impl UserCa {
    /// The CA with its key and revocation list.
    pub fn new(key: PrivateKey, revoked: impl IntoIterator<Item = u64>) -> Self {
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        Self {
            key,
            fingerprint,
            revoked: revoked.into_iter().collect(),
        }
    }

    /// The CA's public key line (for `TrustedUserCAKeys`-style trust elsewhere).
    pub fn public_key_line(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// Signs a user certificate for `subject_key` naming `p`, valid from `now - 60 s` for `ttl`
    /// seconds. Principal = the forge user name; key id = the identity and the token id.
    pub fn issue(
        &self,
        subject_key: &PublicKey,
        p: &Principal,
        now: i64,
        ttl: u64,
    ) -> Result<Certificate, SshError> {
        let after = u64::try_from(now.saturating_sub(60)).unwrap_or(0);
        let before = u64::try_from(now).unwrap_or(0).saturating_add(ttl);
        let serial = rand::random::<u64>() >> 1;
        let sign = |e: russh::keys::ssh_key::Error| SshError::Key(format!("certificate: {e}"));
        let mut b = Builder::new_with_random_nonce(
            &mut rand::rng(),
            subject_key.key_data().clone(),
            after,
            before,
        )
        .map_err(sign)?;
        b.serial(serial).map_err(sign)?;
        b.cert_type(CertType::User).map_err(sign)?;
        b.key_id(format!(
            "{} ({}) token {}",
            p.username,
            p.subject,
            p.token_id.as_deref().unwrap_or("-")
        ))
        .map_err(sign)?;
        b.valid_principal(p.username.clone()).map_err(sign)?;
        b.extension(EXT_ISSUER, p.issuer.clone()).map_err(sign)?;
        b.extension(EXT_SUBJECT, p.subject.clone()).map_err(sign)?;
        b.extension(EXT_KIND, p.kind.as_str()).map_err(sign)?;
        if !p.groups.is_empty() {
            b.extension(EXT_GROUPS, p.groups.join(",")).map_err(sign)?;
        }
        if let Some(e) = &p.email {
            b.extension(EXT_EMAIL, e.clone()).map_err(sign)?;
        }
        if let Some(n) = &p.display_name {
            b.extension(EXT_NAME, n.clone()).map_err(sign)?;
        }
        if let Some(env) = &p.environment {
            b.extension(EXT_ENVIRONMENT, env.clone()).map_err(sign)?;
        }
        if let Some(w) = &p.workload {
            let fields: Vec<(&str, &str)> = w
                .fields()
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect();
            // A value that would break the line format buys no certificate rather than one that
            // loses its job (and so outlives the job's end).
            if fields.iter().any(|(_, v)| v.contains('\n')) {
                return Err(SshError::Key(
                    "the workload's claims cannot be carried in a certificate".into(),
                ));
            }
            let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            b.extension(EXT_WORKLOAD, text.join("\n")).map_err(sign)?;
        }
        // The token (or session) that buys it, and what that was bought with. An id with a comma
        // cannot be listed: such a credential buys no certificate rather than one that would
        // outlive its revocation.
        let from: Vec<&str> = p
            .derived_from
            .iter()
            .chain(&p.token_id)
            .map(String::as_str)
            .collect();
        if from.iter().any(|id| id.contains(',') || id.is_empty()) {
            return Err(SshError::Key(
                "the credential's id cannot be carried in a certificate".into(),
            ));
        }
        if !from.is_empty() {
            b.extension(EXT_FROM, from.join(",")).map_err(sign)?;
        }
        b.sign(&self.key).map_err(sign)
    }

    /// Checks a presented user certificate at `now` and returns who it names.
    pub fn verify(&self, cert: &Certificate, now: i64) -> Result<CertIdentity, CertError> {
        if cert.signature_key().fingerprint(HashAlg::Sha256) != self.fingerprint {
            return Err(CertError::WrongCa);
        }
        let now = u64::try_from(now).unwrap_or(0);
        if now < cert.valid_after() || now >= cert.valid_before() {
            return Err(CertError::Expired);
        }
        cert.validate_at(now, [&self.fingerprint])
            .map_err(|_| CertError::WrongCa)?;
        if !cert.cert_type().is_user() {
            return Err(CertError::Unusable("host certificate"));
        }
        if !cert.critical_options().is_empty() {
            return Err(CertError::Unusable("critical options"));
        }
        if self.revoked.contains(&cert.serial()) {
            return Err(CertError::Revoked(cert.serial()));
        }
        let ext = |k: &str| cert.extensions().get(k).cloned().filter(|v| !v.is_empty());
        let username = match cert.valid_principals() {
            [one] if !one.is_empty() => one.clone(),
            _ => return Err(CertError::Unusable("principals")),
        };
        let issuer = ext(EXT_ISSUER).ok_or(CertError::Unusable("issuer"))?;
        let subject = ext(EXT_SUBJECT).ok_or(CertError::Unusable("subject"))?;
        let kind = match ext(EXT_KIND).as_deref() {
            Some("service") => PrincipalKind::Service,
            _ => PrincipalKind::User,
        };
        let mut principal = Principal {
            kind,
            issuer,
            subject,
            username,
            display_name: ext(EXT_NAME),
            email: ext(EXT_EMAIL),
            groups: ext(EXT_GROUPS)
                .map(|g| g.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            token_id: Some(format!("cert:{}", cert.serial())),
            expires_at: i64::try_from(cert.valid_before()).ok(),
            environment: ext(EXT_ENVIRONMENT),
            workload: match ext(EXT_WORKLOAD) {
                None => None,
                Some(text) => {
                    let mut w = gatehouse_core::Workload::default();
                    for line in text.split('\n') {
                        let ok = line
                            .split_once('=')
                            .is_some_and(|(k, v)| w.set(k, v.to_owned()));
                        if !ok {
                            return Err(CertError::Unusable("workload"));
                        }
                    }
                    Some(std::sync::Arc::new(w))
                }
            },
            derived_from: ext(EXT_FROM)
                .map(|f| f.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        };
        principal.normalize_groups();
        Ok(CertIdentity {
            principal,
            serial: cert.serial(),
            key_id: cert.key_id().to_owned(),
        })
    }
}

/// The upstream CA: a fresh key and a certificate for every upstream connection, naming the forge
/// user as its principal, valid for `ttl` seconds.
pub fn mint_upstream(
    ca: &PrivateKey,
    forge_user: &str,
    connection: &str,
    now: i64,
    ttl: u64,
) -> Result<(PrivateKey, Certificate), SshError> {
    let sign = |e: russh::keys::ssh_key::Error| SshError::Key(format!("upstream certificate: {e}"));
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(sign)?;
    // A little slack before now for the forge's clock.
    let after = u64::try_from(now.saturating_sub(30)).unwrap_or(0);
    let before = u64::try_from(now).unwrap_or(0).saturating_add(ttl);
    let mut b = Builder::new_with_random_nonce(
        &mut rand::rng(),
        key.public_key().key_data().clone(),
        after,
        before,
    )
    .map_err(sign)?;
    b.serial(rand::random::<u64>() >> 1).map_err(sign)?;
    b.cert_type(CertType::User).map_err(sign)?;
    b.key_id(format!("gatehouse {connection} as {forge_user}"))
        .map_err(sign)?;
    b.valid_principal(forge_user.to_owned()).map_err(sign)?;
    let cert = b.sign(ca).map_err(sign)?;
    Ok((key, cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            kind: PrincipalKind::User,
            issuer: "https://idp".into(),
            subject: "u-1".into(),
            username: "alice".into(),
            display_name: Some("Alice".into()),
            email: Some("alice@example.test".into()),
            groups: vec!["dev".into(), "release".into()],
            token_id: Some("jti-1".into()),
            expires_at: None,
            environment: None,
            workload: None,
            derived_from: Vec::new(),
        }
    }

    fn ca() -> UserCa {
        UserCa::new(
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap(),
            [],
        )
    }

    fn user_key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn issued_certificates_carry_the_identity_and_expire() {
        let ca = ca();
        let cert = ca
            .issue(&user_key(), &principal(), 1_000_000, 3600)
            .unwrap();
        let id = ca.verify(&cert, 1_000_100).unwrap();
        assert_eq!(id.principal.username, "alice");
        assert_eq!(id.principal.subject, "u-1");
        assert_eq!(id.principal.issuer, "https://idp");
        assert_eq!(id.principal.groups, ["dev", "release"]);
        assert_eq!(id.principal.email.as_deref(), Some("alice@example.test"));
        assert!(id.key_id.contains("alice") && id.key_id.contains("jti-1"));
        assert!(matches!(
            ca.verify(&cert, 1_003_600),
            Err(CertError::Expired)
        ));
        assert!(matches!(
            ca.verify(&cert, 1_000_000 - 61),
            Err(CertError::Expired)
        ));
        // Round trip through OpenSSH text.
        let text = cert.to_openssh().unwrap();
        let back = Certificate::from_openssh(&text).unwrap();
        assert!(ca.verify(&back, 1_000_100).is_ok());
    }

    #[test]
    fn a_certificate_keeps_the_environment_its_credential_was_bound_to() {
        let ca = ca();
        assert_eq!(
            ca.verify(
                &ca.issue(&user_key(), &principal(), 1_000_000, 60).unwrap(),
                1_000_001
            )
            .unwrap()
            .principal
            .environment,
            None
        );
        let bound = Principal {
            environment: Some("env-0123".into()),
            ..principal()
        };
        let cert = ca.issue(&user_key(), &bound, 1_000_000, 60).unwrap();
        let id = ca.verify(&cert, 1_000_001).unwrap();
        assert_eq!(id.principal.environment.as_deref(), Some("env-0123"));
        // And what bought it, so that revoking that revokes the certificate.
        assert_eq!(id.principal.derived_from, ["jti-1"]);
        let chained = Principal {
            workload: None,
            derived_from: vec!["jti-0".into()],
            ..principal()
        };
        let cert = ca.issue(&user_key(), &chained, 1_000_000, 60).unwrap();
        assert_eq!(
            ca.verify(&cert, 1_000_001).unwrap().principal.derived_from,
            ["jti-0", "jti-1"]
        );
    }

    #[test]
    fn a_certificate_keeps_its_jobs_claims_and_dies_with_the_job() {
        let ca = ca();
        let w = std::sync::Arc::new(gatehouse_core::Workload {
            platform: "github-actions".into(),
            repository: "acme/api".into(),
            run_id: "42".into(),
            job: "7".into(),
            workflow: "a=b".into(),
            ..Default::default()
        });
        let p = Principal {
            kind: PrincipalKind::Service,
            workload: Some(w.clone()),
            ..principal()
        };
        let cert = ca.issue(&user_key(), &p, 1_000_000, 600).unwrap();
        let back = ca.verify(&cert, 1_000_001).unwrap().principal;
        assert_eq!(back.workload, Some(w.clone()));
        let job = w.job_id(&back.issuer).unwrap();
        let set = gatehouse_core::Revocations::new();
        set.apply(&[gatehouse_core::RevocationChange {
            seq: 1,
            lift: false,
            kind: gatehouse_core::RevocationKind::Job,
            value: job,
            until: None,
        }]);
        assert!(
            set.check(&back, 1_000_001).is_some(),
            "ending the job ends the certificate"
        );
    }

    #[test]
    fn another_ca_and_revoked_serials_are_refused() {
        let ca1 = ca();
        let cert = ca1
            .issue(&user_key(), &principal(), 1_000_000, 3600)
            .unwrap();
        assert!(matches!(
            ca().verify(&cert, 1_000_100),
            Err(CertError::WrongCa)
        ));
        let revoking = UserCa::new(ca1.key.clone(), [cert.serial()]);
        assert!(matches!(
            revoking.verify(&cert, 1_000_100),
            Err(CertError::Revoked(_))
        ));
    }

    #[test]
    fn upstream_certificates_name_the_forge_user() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let (key, cert) = mint_upstream(&ca, "alice", "c-1", 1_000_000, 60).unwrap();
        assert_eq!(cert.valid_principals(), ["alice"]);
        assert_eq!(cert.public_key(), key.public_key().key_data());
        assert!(
            cert.validate_at(1_000_010, [&ca.fingerprint(HashAlg::Sha256)])
                .is_ok()
        );
        assert!(
            cert.validate_at(1_000_061, [&ca.fingerprint(HashAlg::Sha256)])
                .is_err()
        );
    }
}
