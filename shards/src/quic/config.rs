//! The QUIC configuration every connection of a shard shares: certificate, ALPN and transport
//! parameters, built from the plan.

use std::path::PathBuf;

use crate::plan::{ProxyPlan, QuicSettings};
use crate::quic::endpoint::MAX_DATAGRAM;

/// Path slots per connection. quiche keeps one per client address seen and frees none when a
/// client's NAT rebinds (it reuses the connection ID), and it sizes the slots by the active
/// connection ID limit: 8 lets a connection survive 7 address changes.
const MAX_PATHS: u64 = 8;

/// Why the QUIC configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("quiche configuration: {0}")]
    Quiche(#[source] quiche::Error),
    #[error("certificate chain {path}: {source}")]
    CertChain {
        path: PathBuf,
        #[source]
        source: quiche::Error,
    },
    #[error("private key {path}: {source}")]
    PrivateKey {
        path: PathBuf,
        #[source]
        source: quiche::Error,
    },
}

/// Builds the configuration for `plan`: its certificate and key, ALPN `h3`, its transport limits.
pub fn quic_config(plan: &ProxyPlan) -> Result<quiche::Config, ConfigError> {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(ConfigError::Quiche)?;
    let cert = &plan.tls.cert_chain;
    let key = &plan.tls.private_key;
    config
        .load_cert_chain_from_pem_file(&cert.to_string_lossy())
        .map_err(|source| ConfigError::CertChain {
            path: cert.clone(),
            source,
        })?;
    config
        .load_priv_key_from_pem_file(&key.to_string_lossy())
        .map_err(|source| ConfigError::PrivateKey {
            path: key.clone(),
            source,
        })?;
    config
        .set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .map_err(ConfigError::Quiche)?;
    apply_transport_settings(&mut config, &plan.quic);
    Ok(config)
}

fn apply_transport_settings(config: &mut quiche::Config, quic: &QuicSettings) {
    config.set_max_idle_timeout(quic.idle_timeout.as_millis() as u64);
    config.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    config.set_max_send_udp_payload_size(quic.max_udp_payload);
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
