//! What `/.gatehouse/ssh/cert` needs of an SSH certificate authority, as a trait: the SSH front
//! door (`gatehouse-ssh`) implements it through an adapter in the app crate, so this crate
//! signs nothing and depends on no SSH code.

use gatehouse_core::Principal;

/// An SSH user certificate issued for a caller's key, with what its client needs to connect.
#[derive(Debug, Clone)]
pub struct SshCert {
    /// OpenSSH text (`ssh-ed25519-cert-v01@openssh.com AAAA...`).
    pub certificate: String,
    /// Its serial (what revocation names).
    pub serial: u64,
    /// Its end, seconds since the epoch.
    pub valid_before: u64,
    /// The SSH front door's address as clients reach it.
    pub ssh_address: String,
    /// A `known_hosts` line for the front door's host key.
    pub known_hosts: String,
    /// The host key's fingerprint.
    pub host_key_fingerprint: String,
}

/// Why no certificate was issued.
#[derive(Debug, thiserror::Error)]
pub enum SshCertError {
    /// The caller's credential has expired (a certificate never outlives it).
    #[error("the credential has expired")]
    CredentialExpired,
    /// The caller sent something that is not an OpenSSH public key line (the text says why).
    #[error("{0}")]
    BadKey(String),
}

/// Signs SSH user certificates for authenticated callers.
pub trait SshCertIssuer: Send + Sync + std::fmt::Debug {
    /// A certificate for `public_key` (an OpenSSH public key line) naming `principal`.
    fn issue(&self, public_key: &str, principal: &Principal) -> Result<SshCert, SshCertError>;
}
