//! The QUIC configuration every connection of a shard shares: certificate, ALPN and transport
//! parameters, built from the plan in memory (the certificate was parsed by the coordinator; see
//! [`crate::tls`]).

use boring::ssl::{ClientHello, NameType, SelectCertError, SslContextBuilder, SslMethod};

use crate::plan::{ProxyPlan, QuicSettings};
use crate::quic::endpoint::MAX_DATAGRAM;

/// Path slots per connection. quiche keeps one per client address seen and frees none when a
/// client's NAT rebinds (it reuses the connection ID), and it sizes the slots by the active
/// connection ID limit: 8 lets a connection survive 7 address changes.
const MAX_PATHS: u64 = 8;

/// Why the QUIC configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("TLS context for {cert}: {source}")]
    Tls {
        cert: std::path::PathBuf,
        #[source]
        source: boring::error::ErrorStack,
    },
    #[error("quiche configuration: {0}")]
    Quiche(#[source] quiche::Error),
}

/// Builds the configuration for `plan`: its certificate and key, ALPN `h3`, its transport limits.
pub fn quic_config(plan: &ProxyPlan) -> Result<quiche::Config, ConfigError> {
    let identity = &plan.tls;
    let tls = |source| ConfigError::Tls {
        cert: identity.cert_path().to_path_buf(),
        source,
    };
    let mut context = SslContextBuilder::new(SslMethod::tls()).map_err(tls)?;
    let leaf = identity
        .chain()
        .first()
        .ok_or_else(|| tls(boring::error::ErrorStack::get()))?;
    context.set_certificate(leaf).map_err(tls)?;
    context.set_private_key(identity.key()).map_err(tls)?;
    context.check_private_key().map_err(tls)?;
    // The chain is completed per connection, once the ClientHello's SNI chose the certificate;
    // intermediates left on the context would follow whichever leaf is chosen.
    let default = identity.clone();
    let sni = plan.sni.clone();
    let fixed_payload = plan.quic.max_udp_payload;
    context.set_select_certificate_callback(move |mut hello: ClientHello<'_>| {
        let named = hello
            .servername(NameType::HOST_NAME)
            .and_then(|name| sni.lookup(name))
            .cloned();
        let ssl = hello.ssl_mut();
        let chosen = match &named {
            Some(identity) => {
                let (leaf, _) = identity
                    .chain()
                    .split_first()
                    .ok_or(SelectCertError::ERROR)?;
                ssl.set_certificate(leaf)
                    .map_err(|_| SelectCertError::ERROR)?;
                ssl.set_private_key(identity.key())
                    .map_err(|_| SelectCertError::ERROR)?;
                identity
            }
            None => &default,
        };
        for intermediate in &chosen.chain()[1..] {
            ssl.add_chain_cert(intermediate)
                .map_err(|_| SelectCertError::ERROR)?;
        }
        // The endpoint set this connection's path MTU discovery ceiling as its largest packet;
        // quiche probes only the path the connection starts on, and gives any path the client
        // migrates to this size unprobed. There it must be a size that needs no proof. Applied
        // before the first packet is sent, so the handshake's congestion window is ten of these.
        if <quiche::Connection>::set_max_send_udp_payload_size_in_handshake(ssl, fixed_payload)
            .is_err()
        {
            log::debug!("the packet size for migrated paths could not be set");
        }
        Ok(())
    });
    let mut config = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, context)
        .map_err(ConfigError::Quiche)?;
    config
        .set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .map_err(ConfigError::Quiche)?;
    apply_transport_settings(&mut config, &plan.quic);
    Ok(config)
}

fn apply_transport_settings(config: &mut quiche::Config, quic: &QuicSettings) {
    config.set_max_idle_timeout(quic.idle_timeout.as_millis() as u64);
    config.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    // The endpoint sets each connection's own size before accepting it (see `net::path_mtu`).
    config.set_max_send_udp_payload_size(quic.max_udp_payload);
    config.discover_pmtu(quic.path_mtu_discovery);
    config.set_initial_max_data(quic.connection_window);
    config.set_initial_max_stream_data_bidi_remote(quic.stream_window);
    config.set_initial_max_stream_data_bidi_local(quic.stream_window);
    // Unidirectional streams carry only HTTP/3 control and QPACK traffic.
    config.set_initial_max_stream_data_uni(64 * 1024);
    config.set_initial_max_streams_bidi(quic.max_concurrent_streams);
    config.set_initial_max_streams_uni(16);
    config.set_max_connection_window(quic.connection_window.max(16 * 1024 * 1024));
    config.set_max_stream_window(quic.stream_window.max(4 * 1024 * 1024));
    // Connection IDs name their shard, so a client whose address changes is still served: the
    // kernel steers by ID, or another shard hands its packets over.
    config.set_disable_active_migration(false);
    config.set_active_connection_id_limit(MAX_PATHS);
}
