//! TLS for the HTTP/2 loader's `--tcp` mode (rustls, ring provider, ALPN `h2`): how it trusts the
//! server follows `--ca`/`--insecure`, as the HTTP/3 client's does.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use shards::tls::backend::AnyCertificate;

use crate::client::Verify;

/// A client configuration offering only `h2`.
pub fn client_config(verify: &Verify) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match verify {
        Verify::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
