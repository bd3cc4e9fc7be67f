//! The listener's certificate and key, read and parsed once by the coordinator.
//!
//! Shards never touch the files: the coordinator loads a [`TlsIdentity`] when it validates the
//! configuration (at start and on every reload) and sends it inside the plan, so every shard
//! serves the same certificate during a rotation and no shard thread blocks on disk IO. The
//! parsed certificates and key are reference-counted BoringSSL objects, shared by the shards'
//! own TLS contexts ([`crate::quic::config`]).

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
        Ok(TlsIdentity {
            inner: Arc::new(Parsed {
                chain,
                key,
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

    /// Where the certificate chain was read from.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
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
