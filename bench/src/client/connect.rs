//! Setting up a client connection: the QUIC configuration every spooky-bench connection shares,
//! what TLS is told about the server's name, and the UDP socket.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use super::Verify;

/// The QUIC configuration of every client connection spooky-bench opens (tests, `get`, load):
/// windows large enough for bulk transfers, room for 1000 concurrent requests, and for the
/// server's spare connection IDs (each migration uses one).
pub fn client_config(
    verify: &Verify,
    idle_timeout: Duration,
) -> Result<quiche::Config, quiche::Error> {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
    match verify {
        Verify::Insecure => config.verify_peer(false),
        Verify::Ca(path) => {
            config.load_verify_locations_from_file(&path.to_string_lossy())?;
            config.verify_peer(true);
        }
    }
    config.set_application_protos(quiche::h3::APPLICATION_PROTOCOL)?;
    config.set_max_idle_timeout(idle_timeout.as_millis() as u64);
    // The largest UDP payload there is (RFC 9000 §18.2, max_udp_payload_size); nginx closes a
    // connection whose client announces more.
    config.set_max_recv_udp_payload_size(65_527);
    config.set_max_send_udp_payload_size(1350);
    config.set_initial_max_data(64 * 1024 * 1024);
    config.set_initial_max_stream_data_bidi_local(16 * 1024 * 1024);
    config.set_initial_max_stream_data_bidi_remote(4 * 1024 * 1024);
    config.set_initial_max_stream_data_uni(1024 * 1024);
    config.set_initial_max_streams_bidi(1000);
    config.set_initial_max_streams_uni(100);
    config.set_active_connection_id_limit(4);
    Ok(config)
}

/// The TLS server name to send for `host`. An IP literal is never sent as SNI (RFC 6066 §3), and
/// BoringSSL's host name check would not match it against the certificate's IP addresses, so for
/// an IP the name is checked after the handshake by [`check_ip_literal`].
pub fn sni_for(host: &str) -> Option<&str> {
    match host.parse::<IpAddr>() {
        Ok(_) => None,
        Err(_) => Some(host),
    }
}

/// For an IP-literal `host` with a verified chain, checks that the server's certificate names
/// that IP in its subject alternative names (RFC 9110 §4.3.4, RFC 6125). BoringSSL verified the
/// chain against the CA during the handshake; without SNI it checked no name.
pub fn check_ip_literal(
    conn: &quiche::Connection,
    host: &str,
    verify: &Verify,
) -> Result<(), String> {
    let (Verify::Ca(_), Ok(ip)) = (verify, host.parse::<IpAddr>()) else {
        return Ok(());
    };
    let der = conn
        .peer_cert()
        .ok_or_else(|| format!("{ip}: the server sent no certificate"))?;
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("{ip}: unreadable server certificate: {e}"))?;
    let name = rustls_pki_types::ServerName::IpAddress(ip.into());
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("server certificate is not valid for {ip}: {e}"))
}

/// A new UDP socket on an ephemeral port, connected to `server`.
pub fn bind_connected(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    Ok(socket)
}

pub fn random_cid() -> [u8; 16] {
    let mut cid = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut cid);
    cid
}
