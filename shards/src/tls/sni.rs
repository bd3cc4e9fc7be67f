//! Which certificate a TLS handshake gets, by the name the client asked for (SNI, RFC 6066 §3).
//!
//! One table serves both listeners: BoringSSL's certificate-selection callback on QUIC
//! ([`crate::quic::config`]) and rustls's resolver on TCP ([`super::tcp_server_config`]), so a
//! name gets the same certificate over HTTP/3 and over TCP. Names are matched without case, an
//! exact name before a wildcard, and a wildcard `*.example.com` covers exactly one more label
//! (RFC 6125 §6.4.3). A client without SNI, or with a name no entry lists, gets the default
//! certificate (`listen.tls`).

use std::sync::Arc;

use ahash::AHashMap;

use super::TlsIdentity;

/// The certificates chosen by name, besides the default one.
#[derive(Clone, Debug, Default)]
pub struct SniCertificates {
    inner: Arc<Table>,
}

#[derive(Debug, Default)]
struct Table {
    exact: AHashMap<String, TlsIdentity>,
    /// Keyed by what follows `*.`.
    wildcard: AHashMap<String, TlsIdentity>,
}

impl SniCertificates {
    /// Builds the table from (hosts, certificate) entries in configuration order; a host listed
    /// twice keeps its first certificate (configuration validation refuses that case).
    pub fn new(entries: impl IntoIterator<Item = (Vec<String>, TlsIdentity)>) -> Self {
        let mut table = Table::default();
        for (hosts, identity) in entries {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                let (map, key) = match host.strip_prefix("*.") {
                    Some(parent) => (&mut table.wildcard, parent.to_string()),
                    None => (&mut table.exact, host),
                };
                map.entry(key).or_insert_with(|| identity.clone());
            }
        }
        SniCertificates {
            inner: Arc::new(table),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.exact.is_empty() && self.inner.wildcard.is_empty()
    }

    /// The certificate for `server_name`, if an entry lists it.
    pub fn lookup(&self, server_name: &str) -> Option<&TlsIdentity> {
        let table = &*self.inner;
        // A trailing dot names the same host (RFC 6066 §3 forbids it, some clients send it).
        let name = server_name.strip_suffix('.').unwrap_or(server_name);
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            &lowered
        } else {
            name
        };
        if let Some(identity) = table.exact.get(name) {
            return Some(identity);
        }
        let (_, parent) = name.split_once('.')?;
        table.wildcard.get(parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn identity(name: &str) -> TlsIdentity {
        let cert = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        TlsIdentity::from_pem(
            cert.cert.pem().as_bytes(),
            cert.key_pair.serialize_pem().as_bytes(),
            Path::new(&format!("{name}.pem")),
            Path::new("key.pem"),
        )
        .unwrap()
    }

    fn served(table: &SniCertificates, name: &str) -> Option<String> {
        table
            .lookup(name)
            .map(|identity| identity.cert_path().display().to_string())
    }

    #[test]
    fn exact_names_then_one_label_wildcards_without_case() {
        let table = SniCertificates::new([
            (vec!["API.example.com".into()], identity("api")),
            (vec!["*.example.com".into()], identity("wild")),
            (
                vec!["other.test".into(), "www.other.test".into()],
                identity("other"),
            ),
        ]);
        assert_eq!(
            served(&table, "api.example.com").as_deref(),
            Some("api.pem")
        );
        assert_eq!(
            served(&table, "Api.Example.Com.").as_deref(),
            Some("api.pem")
        );
        assert_eq!(
            served(&table, "www.example.com").as_deref(),
            Some("wild.pem")
        );
        assert_eq!(served(&table, "a.b.example.com"), None);
        assert_eq!(served(&table, "example.com"), None);
        assert_eq!(
            served(&table, "www.other.test").as_deref(),
            Some("other.pem")
        );
        assert_eq!(served(&table, "unknown.test"), None);
        assert_eq!(served(&table, ""), None);
        assert!(!table.is_empty());
        assert!(SniCertificates::default().is_empty());
    }

    #[test]
    fn the_first_entry_listing_a_host_keeps_it() {
        let table = SniCertificates::new([
            (vec!["a.test".into()], identity("first")),
            (vec!["a.test".into()], identity("second")),
        ]);
        assert_eq!(served(&table, "a.test").as_deref(), Some("first.pem"));
    }
}
