//! TLS for a listener (rustls with the ring provider): a certificate chain
//! and key from PEM files, read again whenever either file changes, so a
//! renewed certificate is served without a restart. TLS 1.3 and 1.2 only,
//! with rustls's cipher suites; ALPN offers HTTP/2 and HTTP/1.1.
//!
//! A reload that fails (a file half-written, a key that does not match
//! its certificate) is logged and the certificate in use stays; the next
//! change of either file is tried again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::kernel::config::ConfigError;
use crate::kernel::locks;

/// Where a listener's certificate chain and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The chain, leaf first, as PEM.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1), as PEM.
    pub key: PathBuf,
    /// How often the files are looked at for changes.
    pub check_every: Duration,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the chain and key of `files` into a key rustls serves.
fn load(files: &TlsFiles) -> Result<CertifiedKey, ConfigError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError(format!("{}: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(ConfigError(format!(
            "{}: no certificate in it",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ConfigError(format!("{}: {e}", files.key.display())))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ConfigError(format!("{}: {e}", files.key.display())))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        ConfigError(format!(
            "{} does not belong to {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })?;
    Ok(certified)
}

/// The key served to every client: the latest that loaded.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(locks::read(&self.0).clone())
    }
}

/// The server side of TLS for `files`, checked for changes until
/// `shutdown`. Fails when the files cannot be read or do not match.
pub fn server(
    files: &TlsFiles,
    shutdown: CancellationToken,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let current = Arc::new(Current(RwLock::new(Arc::new(load(files)?))));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(watch(files.clone(), current, shutdown));
    Ok(Arc::new(config))
}

/// When each file was last changed, and its length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

async fn watch(files: TlsFiles, current: Arc<Current>, shutdown: CancellationToken) {
    let mut seen = (stamp(&files.cert), stamp(&files.key));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(files.check_every) => {}
        }
        let now = (stamp(&files.cert), stamp(&files.key));
        if now == seen {
            continue;
        }
        seen = now;
        match load(&files) {
            Ok(key) => {
                *locks::write(&current.0) = Arc::new(key);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %e,
                "TLS certificate not reloaded; the one in use stays"),
        }
    }
}
