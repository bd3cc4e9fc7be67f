//! The listener's certificate and key, read and parsed once by the coordinator.
//!
//! Shards never touch the files: the coordinator loads a [`TlsIdentity`] when it validates the
//! configuration (at start and on every reload) and sends it inside the plan, so every shard
//! serves the same certificate during a rotation and no shard thread blocks on disk IO. The
//! parsed certificates and key are reference-counted BoringSSL objects, shared by the shards'
//! own TLS contexts ([`crate::quic::config`]). TLS towards backends is in [`backend`].

pub mod backend;
mod sni;

pub use sni::SniCertificates;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boring::pkey::{PKey, Private};
use boring::x509::X509;

/// A certificate chain (leaf first) and its private key, checked to belong together.
#[derive(Clone)]
pub struct TlsIdentity {
    inner: Arc<Parsed>,
}

struct Parsed {
    chain: Vec<X509>,
    key: PKey<Private>,
    /// The same pair for rustls, which serves the TCP listener.
    certified: Arc<rustls::sign::CertifiedKey>,
    /// The DNS names in the leaf's subjectAltName, lowercase.
    names: Vec<String>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no readable PEM certificate: {source}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: boring::error::ErrorStack,
    },
    #[error("{path} holds no readable PEM private key: {source}")]
    PrivateKey {
        path: PathBuf,
        #[source]
        source: boring::error::ErrorStack,
    },
    #[error("{path}: TLS over TCP cannot use this certificate or key: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl TlsIdentity {
    /// Reads and parses `cert` (PEM chain, leaf first) and `key` (PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?, cert, key)
    }

    /// Parses PEM text; `cert_path` and `key_path` only name the sources in messages.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<TlsIdentity, TlsError> {
        let chain = X509::stack_from_pem(chain_pem).map_err(|source| TlsError::Certificate {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let key = PKey::private_key_from_pem(key_pem).map_err(|source| TlsError::PrivateKey {
            path: key_path.to_path_buf(),
            source,
        })?;
        let leaf_key = chain
            .first()
            .and_then(|leaf| leaf.public_key().ok())
            .ok_or_else(|| TlsError::Certificate {
                path: cert_path.to_path_buf(),
                source: boring::error::ErrorStack::get(),
            })?;
        if !leaf_key.public_eq(&key) {
            return Err(TlsError::Mismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        let certified = Arc::new(certified_key(chain_pem, key_pem, cert_path, key_path)?);
        let names = chain[0]
            .subject_alt_names()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.dnsname())
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        Ok(TlsIdentity {
            inner: Arc::new(Parsed {
                chain,
                key,
                certified,
                names,
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
            }),
        })
    }

    /// The leaf certificate, then the intermediates.
    pub fn chain(&self) -> &[X509] {
        &self.inner.chain
    }

    pub fn key(&self) -> &PKey<Private> {
        &self.inner.key
    }

    /// The chain and signing key as rustls takes them.
    pub fn certified_key(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.inner.certified.clone()
    }

    /// The DNS names the leaf certificate is valid for (its subjectAltName entries).
    pub fn names(&self) -> &[String] {
        &self.inner.names
    }

    /// Where the certificate chain was read from.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }
}

/// Parses the pair again for rustls; BoringSSL has already checked that they belong together.
fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let unsupported = |path: &Path, reason: String| TlsError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unsupported(cert_path, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| unsupported(key_path, e.to_string()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| unsupported(key_path, e.to_string()))?;
    Ok(rustls::sign::CertifiedKey::new(chain, signing_key))
}

/// The ALPN protocols the TCP listener offers (RFC 7301), HTTP/2 preferred.
pub const TCP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The rustls server configuration of the TCP listener: TLS 1.2 and 1.3 with the ring
/// provider, ALPN [`TCP_ALPN`], serving the certificate `sni` names for the client's SNI, else
/// `default`. Each shard builds its own, so the session cache inside it is never shared between
/// cores.
pub fn tcp_server_config(
    default: &TlsIdentity,
    sni: &SniCertificates,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ByServerName {
        default: default.certified_key(),
        sni: sni.clone(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = TCP_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Picks the certificate by SNI, as the QUIC listener does.
#[derive(Debug)]
struct ByServerName {
    default: Arc<rustls::sign::CertifiedKey>,
    sni: SniCertificates,
}

impl rustls::server::ResolvesServerCert for ByServerName {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| self.sni.lookup(name));
        Some(chosen.map_or_else(|| self.default.clone(), TlsIdentity::certified_key))
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert", &self.inner.cert_path)
            .field("key", &self.inner.key_path)
            .field("chain_len", &self.inner.chain.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        (cert.cert.pem(), cert.key_pair.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_a_foreign_key_is_refused() {
        let (cert, key) = pair("a.example");
        let (_, other_key) = pair("b.example");
        let (c, k) = (Path::new("c.pem"), Path::new("k.pem"));
        let identity = TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes(), c, k).unwrap();
        assert_eq!(identity.chain().len(), 1);
        let refused = TlsIdentity::from_pem(cert.as_bytes(), other_key.as_bytes(), c, k);
        assert!(matches!(refused, Err(TlsError::Mismatch { .. })));
        let garbage = TlsIdentity::from_pem(b"not pem", key.as_bytes(), c, k);
        assert!(matches!(garbage, Err(TlsError::Certificate { .. })));
        let no_key = TlsIdentity::from_pem(cert.as_bytes(), cert.as_bytes(), c, k);
        assert!(matches!(no_key, Err(TlsError::PrivateKey { .. })));
    }
}
