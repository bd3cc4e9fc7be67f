//! TLS towards backends (`[upstream.NAME.tls]`): the test backend serves HTTP/2 or HTTP/1.1
//! over rustls with a certificate from a test CA, and records each handshake's SNI and client
//! certificate, so that verification, SNI and mutual TLS are checked on the backend's side.
//! Real HTTP/3 client, real proxy, real backend, 127.0.0.1 with kernel-chosen ports.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::SpookyProcess;
use common::{eventually, free_port, scratch_dir, Proxy};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use spooky::selfsigned::{self, GeneratedCerts};
use spooky_bench::backend::{
    self, pattern_sha256, BackendHandle, BackendOptions, BackendTlsOptions, TlsHandshake,
};
use spooky_bench::client::{H3Client, Request};

/// A backend certificate for `backend.test` and 127.0.0.1, from a CA of its own.
fn backend_certificates(dir: &Path) -> GeneratedCerts {
    selfsigned::generate_for(&dir.join("backend-ca"), &["backend.test", "127.0.0.1"]).unwrap()
}

/// A client CA and a certificate it issued for client authentication: (CA, chain, key).
fn client_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let named = |name: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = named("client CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["spooky.client".to_string()]).unwrap();
    params.distinguished_name = named("spooky.client");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = dir.join("client");
    std::fs::create_dir_all(&dir).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn tls_backend(
    name: &str,
    certs: &GeneratedCerts,
    http1: bool,
    client_ca: Option<&Path>,
) -> BackendHandle {
    backend::start(BackendOptions {
        http1,
        tls: Some(BackendTlsOptions {
            cert: certs.cert_chain.clone(),
            key: certs.private_key.clone(),
            client_ca: client_ca.map(Path::to_path_buf),
        }),
        ..BackendOptions::new("127.0.0.1:0".parse().unwrap(), name)
    })
    .expect("start TLS backend")
}

fn upstream(backend: &BackendHandle, protocol: &str, tls: &str) -> String {
    format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nprotocol = \"{protocol}\"\n\
         tls = {{ {tls} }}\n\
         [[upstream.main.backends]]\nid = \"tls-backend\"\naddress = \"{}\"\n",
        backend.addr()
    )
}

fn get_ok(client: &mut H3Client, size: u64) {
    let response = client
        .request(Request::get(&format!("/bytes/{size}")))
        .expect("request");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_sha256, pattern_sha256(size));
}

#[test]
fn h2_over_tls_is_verified_against_the_configured_ca_and_sends_the_server_name() {
    let dir = scratch_dir("tls-h2");
    let certs = backend_certificates(&dir);
    let backend = tls_backend("tls-h2", &certs, false, None);
    let ca = certs.ca.display();
    let proxy = Proxy::start(
        "tls-h2",
        &upstream(
            &backend,
            "h2",
            &format!("ca = \"{ca}\", server_name = \"backend.test\""),
        ),
    );
    let mut client = proxy.client();
    for size in [10, 200_000] {
        get_ok(&mut client, size);
    }
    let big: u64 = 20 * 1024 * 1024;
    let response = client
        .request(Request::get(&format!("/bytes/{big}")).keep_body(false))
        .unwrap();
    assert_eq!(
        (response.body_len, response.body_sha256),
        (big, pattern_sha256(big))
    );
    assert_eq!(
        backend.tls_handshakes(),
        [TlsHandshake {
            server_name: Some("backend.test".into()),
            client_certificate: false,
        }],
        "one multiplexed TLS connection, with SNI"
    );
}

#[test]
fn without_a_server_name_the_address_is_verified_and_no_sni_is_sent() {
    let dir = scratch_dir("tls-ip");
    let certs = backend_certificates(&dir);
    let backend = tls_backend("tls-ip", &certs, true, None);
    let ca = certs.ca.display();
    let proxy = Proxy::start(
        "tls-ip",
        &upstream(&backend, "http/1.1", &format!("ca = \"{ca}\"")),
    );
    let mut client = proxy.client();
    for _ in 0..3 {
        get_ok(&mut client, 1000);
    }
    // RFC 6066 §3: SNI carries host names only, never IP literals.
    assert_eq!(
        backend.tls_handshakes(),
        [TlsHandshake {
            server_name: None,
            client_certificate: false,
        }],
        "one kept-alive HTTP/1.1 connection over TLS"
    );
}

#[test]
fn mutual_tls_presents_the_client_certificate_and_a_backend_requiring_one_refuses_without() {
    let dir = scratch_dir("tls-mtls");
    let certs = backend_certificates(&dir);
    let (client_ca, client_cert, client_key) = client_certificate(&dir);
    let backend = tls_backend("tls-mtls", &certs, true, Some(&client_ca));
    let ca = certs.ca.display();
    let with_cert = Proxy::start(
        "tls-mtls",
        &upstream(
            &backend,
            "http/1.1",
            &format!(
                "ca = \"{ca}\", server_name = \"backend.test\", cert = \"{}\", key = \"{}\"",
                client_cert.display(),
                client_key.display()
            ),
        ),
    );
    get_ok(&mut with_cert.client(), 5000);
    assert_eq!(
        backend.tls_handshakes(),
        [TlsHandshake {
            server_name: Some("backend.test".into()),
            client_certificate: true,
        }]
    );
    let without = Proxy::start(
        "tls-no-mtls",
        &upstream(
            &backend,
            "http/1.1",
            &format!("ca = \"{ca}\", server_name = \"backend.test\""),
        ),
    );
    let response = without.client().request(Request::get("/bytes/10")).unwrap();
    assert_eq!(response.status, 502);
    assert_eq!(
        backend.stats().requests,
        1,
        "no request got past the handshake"
    );
}

#[test]
fn a_backend_certificate_from_another_ca_is_refused_with_502_and_a_log_naming_why() {
    let dir = scratch_dir("tls-wrong-ca");
    let certs = backend_certificates(&dir);
    let backend = tls_backend("tls-wrong-ca", &certs, false, None);
    let other = selfsigned::generate_for(&dir.join("other-ca"), &["backend.test"]).unwrap();
    let process = SpookyProcess::start(
        "tls-wrong-ca",
        free_port(),
        &upstream(
            &backend,
            "h2",
            &format!(
                "ca = \"{}\", server_name = \"backend.test\"",
                other.ca.display()
            ),
        ),
    );
    let mut client = H3Client::connect(process.client_options(Duration::from_secs(10))).unwrap();
    let response = client.request(Request::get("/bytes/10")).unwrap();
    assert_eq!(response.status, 502);
    assert_eq!(backend.stats().requests, 0);
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = process.log_text();
            log.contains("TLS handshake: invalid peer certificate")
        }),
        "the log does not say why the backend was refused:\n{}",
        process.log_text()
    );
    // The wrong name is refused as well, with its own reason.
    let ca = certs.ca.display();
    let named = Proxy::start(
        "tls-wrong-name",
        &upstream(
            &backend,
            "h2",
            &format!("ca = \"{ca}\", server_name = \"other.test\""),
        ),
    );
    let response = named.client().request(Request::get("/bytes/10")).unwrap();
    assert_eq!(response.status, 502);
    assert_eq!(backend.stats().requests, 0);
}

#[test]
fn insecure_skip_verify_accepts_an_unknown_certificate_and_says_so_at_start() {
    let dir = scratch_dir("tls-insecure");
    let certs = backend_certificates(&dir);
    let backend = tls_backend("tls-insecure", &certs, false, None);
    let process = SpookyProcess::start(
        "tls-insecure",
        free_port(),
        &upstream(&backend, "h2", "insecure_skip_verify = true"),
    );
    let mut client = H3Client::connect(process.client_options(Duration::from_secs(10))).unwrap();
    get_ok(&mut client, 4096);
    assert!(
        process
            .log_text()
            .contains("upstream.main.tls.insecure_skip_verify = true"),
        "{}",
        process.log_text()
    );
}

#[test]
fn health_checks_go_over_tls_and_fail_on_a_certificate_they_cannot_verify() {
    let dir = scratch_dir("tls-health");
    let certs = backend_certificates(&dir);
    let backend = tls_backend("tls-health", &certs, true, None);
    let other = selfsigned::generate_for(&dir.join("other-ca"), &["backend.test"]).unwrap();
    let check = "health_check = { path = \"/health\", interval = 50, timeout_ms = 40, \
                 failure_threshold = 1, success_threshold = 1 }";
    let config = |ca: &Path| {
        format!(
            "{}{check}\n",
            upstream(
                &backend,
                "http/1.1",
                &format!("ca = \"{}\", server_name = \"backend.test\"", ca.display())
            )
        )
    };
    let good = Proxy::start("tls-health-good", &config(&certs.ca));
    assert!(eventually(Duration::from_secs(5), || backend
        .requests_for("/health")
        >= 2));
    get_ok(&mut good.client(), 10);
    drop(good);
    let bad = Proxy::start("tls-health-bad", &config(&other.ca));
    let mut client = bad.client();
    assert!(
        eventually(Duration::from_secs(5), || {
            client.request(Request::get("/bytes/10")).unwrap().status == 503
        }),
        "a backend whose certificate fails verification was left healthy"
    );
}

#[test]
fn auto_speaks_whichever_protocol_each_backend_chooses_by_alpn() {
    let dir = scratch_dir("tls-auto");
    let certs = backend_certificates(&dir);
    let h2 = tls_backend("auto-h2", &certs, false, None);
    let http1 = tls_backend("auto-http1", &certs, true, None);
    let ca = certs.ca.display();
    let text = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nprotocol = \"auto\"\n\
         tls = {{ ca = \"{ca}\", server_name = \"backend.test\" }}\n\
         [[upstream.main.backends]]\nid = \"auto-h2\"\naddress = \"{}\"\n\
         [[upstream.main.backends]]\nid = \"auto-http1\"\naddress = \"{}\"\n",
        h2.addr(),
        http1.addr()
    );
    let proxy = Proxy::start("tls-auto", &text);
    let mut client = proxy.client();
    for _ in 0..6 {
        get_ok(&mut client, 2000);
    }
    // Round robin: three requests each, sequential, so one connection each after the one that
    // learned the protocol.
    for backend in [&h2, &http1] {
        assert_eq!(backend.stats().requests, 3);
        assert_eq!(
            backend.tls_handshakes().len(),
            2,
            "the probe and one pooled connection"
        );
    }
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let (_, metrics) = common::http_get(admin, "/metrics").unwrap();
    let samples = common::parse_prometheus(&metrics).unwrap();
    let gauge = |name: &str, backend: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.label("backend") == Some(backend))
            .map(|s| s.value)
            .unwrap()
    };
    assert_eq!(gauge("spooky_backend_h2_connections", "auto-h2"), 1.0);
    assert_eq!(gauge("spooky_backend_http1_connections", "auto-h2"), 0.0);
    assert_eq!(gauge("spooky_backend_http1_connections", "auto-http1"), 1.0);
    assert_eq!(gauge("spooky_backend_h2_connections", "auto-http1"), 0.0);
}
