//! TLS towards backends (`[upstream.NAME.tls]`): the rustls client configuration an upstream's
//! connections use, built once when the configuration is loaded and copied into each shard.
//!
//! Verification is on unless the operator opts out: the server's chain must lead to the
//! configured CA bundle (`tls.ca`) or, without one, to the system's trusted roots, and name the
//! server (`tls.server_name`, else the backend's host name or address). A client certificate (`tls.cert`,
//! `tls.key`) is offered for mutual TLS. Each shard gets its own copy with its own session
//! cache, so resuming a session never touches another core's state.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::TlsIdentity;

/// `protocol = "h2"`: HTTP/2 must be negotiated (RFC 9113 §3.2).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// `protocol = "http/1.1"` over TLS.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// `protocol = "auto"`: the backend picks, HTTP/2 preferred.
pub const ALPN_AUTO: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Sessions each shard remembers per backend for resumption (rustls's own default is 256 for
/// a whole process; one backend needs few).
const SESSIONS_PER_BACKEND: usize = 32;

/// What an upstream's TLS is built from.
pub struct BackendTlsSettings<'a> {
    /// A PEM bundle of the CAs to trust instead of the system's roots.
    pub ca: Option<&'a Path>,
    /// The certificate and key to present for mutual TLS.
    pub client_identity: Option<&'a TlsIdentity>,
    /// The name to send (SNI) and verify; `None` uses each backend's host name or address.
    pub server_name: Option<ServerName<'static>>,
    /// Accept any certificate: an explicit, logged opt-in for test fleets.
    pub insecure_skip_verify: bool,
    /// The protocols offered by ALPN: [`ALPN_H2`], [`ALPN_HTTP1`] or [`ALPN_AUTO`].
    pub alpn: &'static [&'static [u8]],
}

/// Why an upstream's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no readable PEM certificate: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("{path}: a CA certificate is not usable as a trust anchor: {source}")]
    Anchor {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no trusted root certificates found on this system ({0}); set tls.ca")]
    NoSystemRoots(String),
    #[error("TLS client configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// An upstream's TLS, shared by its backends; see the module documentation.
#[derive(Clone)]
pub struct BackendTls {
    template: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
    alpn: &'static [&'static [u8]],
    insecure: bool,
    /// A digest of everything the configuration was built from, so that a reload that changes
    /// nothing keeps the shards' warm connections.
    fingerprint: u64,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .field("alpn", &self.alpn.len())
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl BackendTls {
    pub fn build(settings: &BackendTlsSettings<'_>) -> Result<BackendTls, BackendTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(BackendTlsError::Config)?;
        let builder = if settings.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let roots = match settings.ca {
                Some(path) => bundle(path, &mut digest)?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match settings.client_identity {
            Some(identity) => {
                let certified = identity.certified_key();
                for cert in &certified.cert {
                    cert.as_ref().hash(&mut digest);
                }
                builder.with_client_cert_resolver(Arc::new(ClientCertificate(certified)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = settings.alpn.iter().map(|p| p.to_vec()).collect();
        (
            settings
                .server_name
                .as_ref()
                .map(|n| n.to_str().into_owned()),
            settings.insecure_skip_verify,
            settings.alpn,
        )
            .hash(&mut digest);
        Ok(BackendTls {
            template: Arc::new(config),
            server_name: settings.server_name.clone(),
            alpn: settings.alpn,
            insecure: settings.insecure_skip_verify,
            fingerprint: digest.finish(),
        })
    }

    /// A copy for one shard's connections to one backend, with a session cache of its own.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.template).clone();
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_BACKEND);
        Arc::new(config)
    }

    /// The name sent and verified for a backend at `address`, given by `host` if it was:
    /// `tls.server_name`, else the host name, else the address itself, which the certificate
    /// must then list as an IP address SAN.
    pub fn server_name_for(&self, address: SocketAddr, host: Option<&str>) -> ServerName<'static> {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        host.and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()))
    }

    /// The protocols offered by ALPN, preferred first.
    pub fn alpn(&self) -> &'static [&'static [u8]] {
        self.alpn
    }

    pub fn skips_verification(&self) -> bool {
        self.insecure
    }
}

/// Trust anchors from a PEM bundle.
fn bundle(path: &Path, digest: &mut impl Hasher) -> Result<RootCertStore, BackendTlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|source| BackendTlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    pem.hash(digest);
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BackendTlsError::Bundle {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(BackendTlsError::Bundle {
            path: path.to_path_buf(),
            reason: "no -----BEGIN CERTIFICATE----- block".into(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| BackendTlsError::Anchor {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The system's trusted roots, as OpenSSL would find them (`SSL_CERT_FILE`, `SSL_CERT_DIR`,
/// then the distribution's bundle). Certificates the store cannot use are skipped, as
/// browsers skip them.
fn system_roots() -> Result<RootCertStore, BackendTlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _skipped) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found.errors.first().map_or_else(
            || "the system store is empty".to_string(),
            |e| e.to_string(),
        );
        return Err(BackendTlsError::NoSystemRoots(why));
    }
    Ok(roots)
}

/// `tls.cert` and `tls.key`: the one certificate offered whenever a backend asks for one.
#[derive(Debug)]
struct ClientCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `tls.insecure_skip_verify` (and the load generator's `--insecure`): any certificate is
/// accepted, but the handshake signature is still checked against it, so the session is at
/// least bound to the key the server showed (and the TLS work done is the real one).
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
