//! The endpoint against an in-memory quiche client: datagrams are handed across in the test, no
//! socket is involved.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::plan::{ProxyPlan, QuicSettings};
use crate::quic::config::quic_config;
use crate::tls::TlsIdentity;

const SECRET: [u8; 32] = [7; 32];
const OWN_KEY: u16 = 3;

thread_local! {
    static CLOSED: Cell<usize> = const { Cell::new(0) };
    static DRAINED: Cell<usize> = const { Cell::new(0) };
}

/// A stand-in application: records what the endpoint tells it.
#[derive(Default)]
struct Recorder {
    writable: Vec<u64>,
    busy: bool,
}

impl Session for Recorder {
    fn open(_quic: &mut quiche::Connection) -> Result<Self, String> {
        Ok(Recorder::default())
    }
    fn stream_writable(&mut self, stream_id: u64) {
        self.writable.push(stream_id);
    }
    fn closed(&mut self) {
        CLOSED.with(|c| c.set(c.get() + 1));
    }
    fn is_idle(&self) -> bool {
        !self.busy
    }
    fn start_drain(&mut self, _quic: &mut quiche::Connection) {
        DRAINED.with(|c| c.set(c.get() + 1));
    }
}

fn server_addr() -> SocketAddr {
    "192.0.2.1:443".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "198.51.100.7:50000".parse().unwrap()
}

/// A certificate and key for `localhost`, in memory.
fn certificate() -> TlsIdentity {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    TlsIdentity::from_pem(
        cert.cert.pem().as_bytes(),
        cert.key_pair.serialize_pem().as_bytes(),
        std::path::Path::new("cert.pem"),
        std::path::Path::new("key.pem"),
    )
    .unwrap()
}

fn endpoint(idle_timeout: Duration) -> (Endpoint<Recorder>, Arc<ShardStats>) {
    let plan = ProxyPlan {
        tls: certificate(),
        sni: Default::default(),
        quic: QuicSettings {
            idle_timeout,
            ..QuicSettings::default()
        },
        upstreams: Vec::new(),
        access_log: false,
        alt_svc_max_age: None,
        redirect: None,
    };
    let stats = Arc::new(ShardStats::new());
    let endpoint = Endpoint::new(
        quic_config(&plan).unwrap(),
        CidMinter::new(&SECRET, OWN_KEY),
        server_addr(),
        1350,
        stats.clone(),
    );
    (endpoint, stats)
}

fn client() -> quiche::Connection {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    config.verify_peer(false);
    config
        .set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .unwrap();
    config.set_max_idle_timeout(30_000);
    config.set_initial_max_data(1 << 20);
    config.set_initial_max_stream_data_bidi_local(1 << 20);
    config.set_initial_max_stream_data_bidi_remote(1 << 20);
    config.set_initial_max_streams_bidi(10);
    config.set_active_connection_id_limit(8);
    let scid = [0x5a; 16];
    quiche::connect(
        Some("localhost"),
        &quiche::ConnectionId::from_ref(&scid),
        client_addr(),
        server_addr(),
        &mut config,
    )
    .unwrap()
}

/// The client's pending packets, one datagram each.
fn client_datagrams(client: &mut quiche::Connection) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = client.send(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Everything the endpoint has to send, as (datagram, destination).
fn server_datagrams(endpoint: &mut Endpoint<Recorder>) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut batch = SendBatch::new(true);
    let mut out = Vec::new();
    loop {
        let more = endpoint.poll_transmit(&mut batch);
        batch.drain(|packet, to| out.push((packet.to_vec(), to)));
        if !more {
            return out;
        }
    }
}

/// Moves datagrams both ways until neither side has anything to send.
fn exchange(endpoint: &mut Endpoint<Recorder>, client: &mut quiche::Connection) {
    for _ in 0..20 {
        let up = client_datagrams(client);
        for mut datagram in up.clone() {
            endpoint.recv(&mut datagram, client_addr(), false);
        }
        let down = server_datagrams(endpoint);
        for (mut datagram, to) in down.clone() {
            assert_eq!(to, client_addr());
            let info = quiche::RecvInfo {
                from: server_addr(),
                to,
            };
            let _ = client.recv(&mut datagram, info);
        }
        if up.is_empty() && down.is_empty() {
            return;
        }
    }
    panic!("the exchange did not settle");
}

fn established() -> (Endpoint<Recorder>, Arc<ShardStats>, quiche::Connection) {
    let (mut endpoint, stats) = endpoint(Duration::from_secs(30));
    let mut client = client();
    exchange(&mut endpoint, &mut client);
    assert!(client.is_established());
    (endpoint, stats, client)
}

/// A short-header packet for `dcid` with a payload nobody can decrypt.
fn short_packet(dcid: &[u8; 16]) -> Vec<u8> {
    let mut packet = vec![0x40];
    packet.extend_from_slice(dcid);
    packet.extend_from_slice(&[0xab; 40]);
    packet
}

#[test]
fn a_handshake_creates_one_connection_that_names_this_shard() {
    let (mut endpoint, stats, client) = established();
    assert_eq!(endpoint.len(), 1);
    assert_eq!(stats.connections_accepted.get(), 1);
    assert_eq!(stats.handshakes_completed.get(), 1);
    let cid: ServerCid = client.destination_id().as_ref().try_into().unwrap();
    assert_eq!(steering_key(&cid), OWN_KEY);
    let conn = endpoint
        .get_mut(cid)
        .expect("the connection is keyed by its server ID");
    assert!(conn.session.is_some(), "the session opens once established");
    assert_eq!(conn.peer, client_addr());
}

#[test]
fn spare_ids_are_offered_and_reach_the_same_connection() {
    let (mut endpoint, _, client) = established();
    // The client has its first ID of ours plus the spares we offered after the handshake.
    assert_eq!(client.available_dcids(), MAX_SPARE_IDS);
    let primary: ServerCid = client.destination_id().as_ref().try_into().unwrap();
    let spare = CidMinter::new(&SECRET, OWN_KEY).spare(&primary, 1);
    assert_eq!(steering_key(&spare), OWN_KEY);
    let mut packet = short_packet(&spare);
    assert_eq!(
        endpoint.recv(&mut packet, client_addr(), false),
        Destination::Connection(primary)
    );
}

#[test]
fn unknown_connections_are_dropped_or_sent_to_their_shard_without_state() {
    let (mut endpoint, stats) = endpoint(Duration::from_secs(30));
    let mut ours = [0x11; 16];
    ours[..2].copy_from_slice(&OWN_KEY.to_be_bytes());
    let mut packet = short_packet(&ours);
    assert_eq!(
        endpoint.recv(&mut packet, client_addr(), false),
        Destination::Dropped
    );
    assert_eq!(stats.datagrams_dropped_unknown.get(), 1);

    let mut theirs = [0x22; 16];
    theirs[..2].copy_from_slice(&9u16.to_be_bytes());
    let mut packet = short_packet(&theirs);
    assert_eq!(
        endpoint.recv(&mut packet, client_addr(), false),
        Destination::Elsewhere(9)
    );
    // A packet another shard handed over is never passed on again.
    assert_eq!(
        endpoint.recv(&mut packet, client_addr(), true),
        Destination::Dropped
    );

    let mut garbage = vec![0xff; 3];
    assert_eq!(
        endpoint.recv(&mut garbage, client_addr(), false),
        Destination::Dropped
    );
    assert_eq!(stats.datagrams_dropped_malformed.get(), 1);
    assert!(endpoint.is_empty());
    assert!(server_datagrams(&mut endpoint).is_empty());
}

#[test]
fn an_unsupported_version_gets_version_negotiation() {
    let (mut endpoint, stats) = endpoint(Duration::from_secs(30));
    let mut client = client();
    let mut initial = client_datagrams(&mut client).remove(0);
    // The version field follows the first byte of a long header (RFC 9000 §17.2).
    initial[1..5].copy_from_slice(&0x1a2a_3a4a_u32.to_be_bytes());
    assert_eq!(
        endpoint.recv(&mut initial, client_addr(), false),
        Destination::Stateless
    );
    assert_eq!(stats.version_negotiations.get(), 1);
    let (reply, to) = endpoint.stateless_reply().expect("a reply");
    assert_eq!(to, client_addr());
    let mut reply = reply.to_vec();
    let header = quiche::Header::from_slice(&mut reply, 16).unwrap();
    assert_eq!(header.ty, quiche::Type::VersionNegotiation);
    assert!(endpoint.stateless_reply().is_none(), "a reply is sent once");
    assert!(endpoint.is_empty());
}

#[test]
fn a_short_initial_creates_nothing() {
    let (mut endpoint, stats) = endpoint(Duration::from_secs(30));
    let mut client = client();
    let initial = client_datagrams(&mut client).remove(0);
    assert!(initial.len() >= 1200, "clients pad their Initials");
    let mut short = initial[..1199].to_vec();
    assert_eq!(
        endpoint.recv(&mut short, client_addr(), false),
        Destination::Dropped
    );
    assert!(endpoint.is_empty());
    assert_eq!(stats.connections_accepted.get(), 0);
    let mut full = initial.clone();
    assert!(matches!(
        endpoint.recv(&mut full, client_addr(), false),
        Destination::Connection(_)
    ));
    assert_eq!(endpoint.len(), 1);
}

#[test]
fn idle_connections_time_out_and_their_session_learns_it() {
    let (mut endpoint, stats) = endpoint(Duration::from_millis(200));
    let mut client = client();
    exchange(&mut endpoint, &mut client);
    assert_eq!(endpoint.len(), 1);
    let closed_before = CLOSED.with(Cell::get);
    let limit = Instant::now() + Duration::from_secs(10);
    while !endpoint.is_empty() {
        assert!(Instant::now() < limit, "the connection never timed out");
        let deadline = endpoint.next_timeout().expect("an armed timer");
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        endpoint.on_timeout(Instant::now());
        server_datagrams(&mut endpoint);
    }
    assert_eq!(CLOSED.with(Cell::get), closed_before + 1);
    assert_eq!(stats.connections_active.get(), 0);
    // Entries of a removed connection are dropped when they come due, not searched for.
    endpoint.on_timeout(Instant::now() + Duration::from_secs(3600));
    assert_eq!(endpoint.next_timeout(), None);
}

#[test]
fn a_timer_is_armed_once_per_deadline_and_moves_only_earlier() {
    let (mut endpoint, _, _client) = established();
    assert!(endpoint.timer_moved(), "the first deadline moves the timer");
    assert!(!endpoint.timer_moved(), "reported once");
    let deadline = endpoint.next_timeout().unwrap();
    // Firing before the deadline does nothing.
    endpoint.on_timeout(deadline - Duration::from_millis(1));
    assert_eq!(endpoint.next_timeout(), Some(deadline));
    assert!(!endpoint.has_dirty());
}

#[test]
fn draining_refuses_new_connections_and_closes_idle_ones() {
    let (mut endpoint, _, mut open_client) = established();
    let cid: ServerCid = open_client.destination_id().as_ref().try_into().unwrap();
    endpoint
        .get_mut(cid)
        .unwrap()
        .session
        .as_mut()
        .unwrap()
        .busy = true;
    let drained_before = DRAINED.with(Cell::get);
    endpoint.start_drain(0x100);
    assert_eq!(DRAINED.with(Cell::get), drained_before + 1);
    exchange(&mut endpoint, &mut open_client);
    assert!(!open_client.is_closed(), "a busy connection stays open");
    endpoint
        .get_mut(cid)
        .unwrap()
        .session
        .as_mut()
        .unwrap()
        .busy = false;
    endpoint.close_idle(0x100);
    exchange(&mut endpoint, &mut open_client);
    assert_eq!(open_client.peer_error().map(|e| e.error_code), Some(0x100));

    let mut newcomer = client();
    let mut initial = client_datagrams(&mut newcomer).remove(0);
    let before = endpoint.len();
    assert_eq!(
        endpoint.recv(&mut initial, "198.51.100.8:4000".parse().unwrap(), false),
        Destination::Dropped
    );
    assert_eq!(endpoint.len(), before);
}
