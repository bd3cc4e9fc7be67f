//! Throwaway TLS material for the demo mode and the tests.
//!
//! QUIC cannot run without TLS, so anything that starts a listener without an operator-supplied
//! certificate needs one. A single self-signed certificate will not do: it has to be both the
//! trust anchor the client pins and the server's leaf, and BoringSSL and rustls reject a
//! `CA:TRUE` certificate presented as a leaf. So this makes a small private CA and a leaf for the
//! loopback names signed by it; clients trust `ca.pem` and the server presents `cert.pem`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Names the leaf certificate is valid for: everything a local client might dial.
pub const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Paths of the files written by [`generate`].
#[derive(Clone, Debug)]
pub struct GeneratedCerts {
    /// The CA certificate alone: what a client should trust.
    pub ca: PathBuf,
    /// Leaf then CA, PEM: what the server presents (`listen.tls.cert`).
    pub cert_chain: PathBuf,
    /// The leaf's private key, PKCS#8 PEM, mode 0600 (`listen.tls.key`).
    pub private_key: PathBuf,
}

/// Creates `dir` if needed and writes a fresh CA, leaf chain and key into it as `ca.pem`,
/// `cert.pem` and `key.pem`, replacing any files of those names.
pub fn generate(dir: &Path) -> io::Result<GeneratedCerts> {
    generate_for(dir, &LEAF_NAMES)
}

/// Like [`generate`], with a CA of its own and a leaf valid for `names` (DNS names or IP
/// literals): tests that serve several certificates give each its own trust anchor.
pub fn generate_for(dir: &Path, names: &[&str]) -> io::Result<GeneratedCerts> {
    let (ca_pem, leaf_pem, key_pem) = build(names).map_err(io::Error::other)?;

    fs::create_dir_all(dir)?;
    let certs = GeneratedCerts {
        ca: dir.join("ca.pem"),
        cert_chain: dir.join("cert.pem"),
        private_key: dir.join("key.pem"),
    };
    fs::write(&certs.ca, &ca_pem)?;
    fs::write(&certs.cert_chain, format!("{leaf_pem}{ca_pem}"))?;
    write_private(&certs.private_key, key_pem.as_bytes())?;
    Ok(certs)
}

/// Returns (CA PEM, leaf PEM, leaf key PEM).
fn build(names: &[&str]) -> Result<(String, String, String), rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("Spooky throwaway CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let common_name = names.first().cloned().unwrap_or_default();
    // `new` turns the IP literals into IP-address SANs, which is what clients match IPs against.
    let mut leaf_params = CertificateParams::new(names)?;
    leaf_params.distinguished_name = name(&common_name);
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict verifiers (OpenSSL's -x509_strict, RFC 5280 §4.2.1.1) require it on CA-issued certs.
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

    Ok((ca.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a secret so that it is never readable by others, not even briefly: the mode is set at
/// creation, and reset in case the file already existed with a wider one.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ca_chain_and_private_key() {
        let dir = std::env::temp_dir().join(format!("spooky-selfsigned-{}", std::process::id()));
        let certs = generate(&dir).expect("generate");

        let ca = fs::read_to_string(&certs.ca).expect("read ca");
        let chain = fs::read_to_string(&certs.cert_chain).expect("read chain");
        let key = fs::read_to_string(&certs.private_key).expect("read key");
        assert_eq!(ca.matches("-----BEGIN CERTIFICATE-----").count(), 1);
        assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(chain.ends_with(&ca), "chain is leaf first, then the CA");
        assert!(key.contains("-----BEGIN PRIVATE KEY-----"));

        let mode = fs::metadata(&certs.private_key)
            .expect("stat key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A second run replaces everything, with a different key.
        let again = generate(&dir).expect("generate again");
        let key2 = fs::read_to_string(&again.private_key).expect("read key");
        assert_ne!(key, key2);

        let _ = fs::remove_dir_all(&dir);
    }
}
