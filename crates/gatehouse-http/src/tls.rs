//! TLS termination with certificate files reloaded on change, without a restart: new handshakes
//! use the new certificate, established connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file is unusable.
    #[error("TLS certificate {path}: {message}")]
    Cert {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The key file is unusable or does not match the certificate.
    #[error("TLS key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// Serves the current certificate and reloads it when its files change.
#[derive(Debug)]
pub struct TlsReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// CA certificates client certificates are verified against (asked for, optional).
    client_ca_file: Option<PathBuf>,
    current: ArcSwap<CertifiedKey>,
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |m: String| TlsError::Cert {
        path: cert_file.display().to_string(),
        message: m,
    };
    let key_err = |m: String| TlsError::Key {
        path: key_file.display().to_string(),
        message: m,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate in file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| key_err(e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| key_err(e.to_string()))
}

impl TlsReloader {
    /// Loads the certificate and key.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Result<Arc<Self>, TlsError> {
        Self::with_client_ca(cert_file, key_file, None)
    }

    /// Loads the certificate and key, and asks clients for a certificate signed by one in
    /// `client_ca_file` (optional for the client; one that does not verify ends the handshake).
    pub fn with_client_ca(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let ck = load(&cert_file, &key_file)?;
        let stamp = (mtime(&cert_file), mtime(&key_file));
        Ok(Arc::new(Self {
            cert_file,
            key_file,
            client_ca_file,
            current: ArcSwap::from_pointee(ck),
            stamp: Mutex::new(stamp),
        }))
    }

    /// A rustls server config that asks this reloader for its certificate (ALPN h2, http/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Cert {
                path: self.cert_file.display().to_string(),
                message: e.to_string(),
            })?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let ca_err = |m: String| TlsError::Cert {
                    path: ca.display().to_string(),
                    message: m,
                };
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| ca_err(e.to_string()))? {
                    roots
                        .add(c.map_err(|e| ca_err(e.to_string()))?)
                        .map_err(|e| ca_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no CA certificate in file".into()));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder.with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Reloads when either file changed. `Ok(true)` when a new certificate is in use; on error
    /// the previous certificate stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (mtime(&self.cert_file), mtime(&self.key_file));
        {
            let Ok(stamp) = self.stamp.lock() else {
                return Ok(false);
            };
            if *stamp == now {
                return Ok(false);
            }
        }
        let ck = load(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(ck));
        if let Ok(mut stamp) = self.stamp.lock() {
            *stamp = now;
        }
        Ok(true)
    }
}

impl ResolvesServerCert for TlsReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The names a verified client certificate carries: its URI and DNS subject alternative names.
/// Empty when it cannot be read (it was verified, so that is not expected).
pub(crate) fn client_cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}
