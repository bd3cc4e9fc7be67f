//! The endpoint against an in-memory quiche client: datagrams are handed across in the test, no
//! socket is involved.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::plan::{ProxyPlan, QuicSettings, RetryMode};
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
    fn open(_quic: &mut QuicConnection) -> Result<Self, String> {
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
    fn start_drain(&mut self, _quic: &mut QuicConnection) {
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
    endpoint_with(QuicSettings {
        idle_timeout,
        ..QuicSettings::default()
    })
}

fn endpoint_with(settings: QuicSettings) -> (Endpoint<Recorder>, Arc<ShardStats>) {
    let plan = ProxyPlan {
        tls: certificate(),
        sni: Default::default(),
        quic: settings,
        overload: Default::default(),
        upstreams: Vec::new(),
        access_log: false,
        alt_svc_max_age: None,
        redirect: None,
    };
    let stats = Arc::new(ShardStats::new());
    let mut endpoint = Endpoint::new(
        quic_config(&plan).unwrap(),
        &SECRET,
        OWN_KEY,
        server_addr(),
        &plan.quic,
        stats.clone(),
    );
    // The test addresses are documentation prefixes: whatever route this machine has to them
    // must not decide the tests' packet sizes.
    endpoint.set_route_lookup(ethernet_route);
    (endpoint, stats)
}

fn ethernet_route(_: SocketAddr) -> std::io::Result<usize> {
    Ok(1500)
}

fn jumbo_route(_: SocketAddr) -> std::io::Result<usize> {
    Ok(9000)
}

fn client() -> quiche::Connection {
    client_with_scid([0x5a; 16])
}

fn client_with_scid(scid: [u8; 16]) -> quiche::Connection {
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
    exchange_from(endpoint, client, client_addr());
}

/// [`exchange`] for a client at `from`; stateless replies (Retry) reach the client too.
fn exchange_from(
    endpoint: &mut Endpoint<Recorder>,
    client: &mut quiche::Connection,
    from: SocketAddr,
) {
    for _ in 0..20 {
        let up = client_datagrams(client);
        let mut down = Vec::new();
        for mut datagram in up.clone() {
            if endpoint.recv(&mut datagram, from, false) == Destination::Stateless {
                let (reply, to) = endpoint.stateless_reply().expect("a stateless reply");
                down.push((reply.to_vec(), to));
            }
        }
        down.extend(server_datagrams(endpoint));
        for (mut datagram, to) in down.clone() {
            assert_eq!(to, from);
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
    // An ID of ours whose connection is gone.
    let closed = CidMinter::new(&SECRET, OWN_KEY).derive(b"long gone");
    let mut packet = short_packet(&closed);
    assert_eq!(
        endpoint.recv(&mut packet, client_addr(), false),
        Destination::Dropped
    );
    assert_eq!(stats.datagrams_dropped_unknown.get(), 1);

    // Random IDs, whichever shard their first bytes name, are noise: not handed anywhere.
    for key in [OWN_KEY, 9] {
        let mut random = [0x11; 16];
        random[..2].copy_from_slice(&key.to_be_bytes());
        let mut packet = short_packet(&random);
        assert_eq!(
            endpoint.recv(&mut packet, client_addr(), false),
            Destination::Dropped
        );
    }
    assert_eq!(stats.datagrams_dropped_foreign_id.get(), 2);
    assert_eq!(stats.datagrams_dropped_unknown.get(), 1);

    let theirs = CidMinter::new(&SECRET, 9).derive(b"another shard's");
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

/// Sends `bytes` on a new client stream and feeds the datagram(s) to the endpoint.
fn client_request(
    endpoint: &mut Endpoint<Recorder>,
    client: &mut quiche::Connection,
    stream_id: u64,
) -> ServerCid {
    client.stream_send(stream_id, b"a request", true).unwrap();
    let mut cid = None;
    for mut datagram in client_datagrams(client) {
        match endpoint.recv(&mut datagram, client_addr(), false) {
            Destination::Connection(c) => cid = Some(c),
            other => panic!("the request went to {other:?}"),
        }
    }
    cid.expect("a datagram")
}

#[test]
fn a_request_ack_waits_for_the_response_at_most_ack_coalesce() {
    let (mut endpoint, _, mut client) = established();
    server_datagrams(&mut endpoint);
    let now = Instant::now();
    let cid = client_request(&mut endpoint, &mut client, 0);
    assert!(endpoint.defer_send(cid, now), "a whole request may wait");
    assert!(!endpoint.has_dirty());
    assert!(
        server_datagrams(&mut endpoint).is_empty(),
        "nothing before the deadline"
    );
    assert!(endpoint.next_timeout().unwrap() <= now + ACK_COALESCE);
    // No response came: the ACK goes out alone at the deadline.
    endpoint.on_timeout(now + ACK_COALESCE);
    let sent = server_datagrams(&mut endpoint);
    assert_eq!(sent.len(), 1, "one datagram with the ACK");
    let before = client.stats().sent;
    for (mut datagram, to) in sent {
        client
            .recv(
                &mut datagram,
                quiche::RecvInfo {
                    from: server_addr(),
                    to,
                },
            )
            .unwrap();
    }
    assert_eq!(
        client.stats().sent,
        before,
        "the client had nothing to answer"
    );
    assert!(client.stats().lost == 0);
}

#[test]
fn a_response_takes_the_waiting_ack_and_its_timer_goes() {
    let (mut endpoint, _, mut client) = established();
    server_datagrams(&mut endpoint);
    endpoint.timer_moved();
    let now = Instant::now();
    let cid = client_request(&mut endpoint, &mut client, 0);
    assert!(endpoint.defer_send(cid, now));
    assert!(
        endpoint.timer_moved(),
        "the deferral is the earliest deadline"
    );
    // The response is written: the connection is queued, and one flush sends everything.
    let conn = endpoint.get_mut(cid).unwrap();
    conn.quic.stream_send(0, b"the response", true).unwrap();
    endpoint.mark_dirty(cid);
    assert_eq!(
        server_datagrams(&mut endpoint).len(),
        1,
        "ACK and response together"
    );
    assert!(
        endpoint.timer_moved(),
        "the timer task is told to sleep longer"
    );
    assert!(
        endpoint.next_timeout().unwrap() > now + ACK_COALESCE,
        "no wake-up is left for the deferral"
    );
}

#[test]
fn a_second_packet_or_a_handshake_is_acknowledged_at_once() {
    let (mut endpoint, _, mut client) = established();
    server_datagrams(&mut endpoint);
    let now = Instant::now();
    let cid = client_request(&mut endpoint, &mut client, 0);
    assert!(endpoint.defer_send(cid, now));
    // RFC 9000 §13.2.2: at least every second ack-eliciting packet is acknowledged.
    let cid = client_request(&mut endpoint, &mut client, 4);
    assert!(!endpoint.defer_send(cid, now));
    assert!(endpoint.has_dirty());
    assert_eq!(server_datagrams(&mut endpoint).len(), 1);

    // A datagram that is part of a handshake never waits.
    let (mut handshaking, _) = self::endpoint(Duration::from_secs(30));
    let mut fresh = self::client();
    let mut cid = None;
    for mut datagram in client_datagrams(&mut fresh) {
        if let Destination::Connection(c) = handshaking.recv(&mut datagram, client_addr(), false) {
            cid = Some(c);
        }
    }
    assert!(!handshaking.defer_send(cid.expect("a connection"), now));
    assert!(!server_datagrams(&mut handshaking).is_empty());
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

fn retry_settings(retry: RetryMode) -> QuicSettings {
    QuicSettings {
        retry,
        ..QuicSettings::default()
    }
}

/// The client's first Initial after it processed our Retry: it carries the token.
fn initial_after_retry(
    endpoint: &mut Endpoint<Recorder>,
    client: &mut quiche::Connection,
) -> Vec<u8> {
    let mut first = client_datagrams(client).remove(0);
    assert_eq!(
        endpoint.recv(&mut first, client_addr(), false),
        Destination::Stateless
    );
    let (retry, to) = endpoint.stateless_reply().unwrap();
    let mut retry = retry.to_vec();
    let info = quiche::RecvInfo {
        from: server_addr(),
        to,
    };
    client
        .recv(&mut retry, info)
        .expect("the client takes the Retry");
    client_datagrams(client).remove(0)
}

#[test]
fn retry_always_validates_the_address_before_any_handshake_state() {
    let (mut endpoint, stats) = endpoint_with(retry_settings(RetryMode::Always));
    let mut client = client();
    let mut first = client_datagrams(&mut client).remove(0);
    assert_eq!(
        endpoint.recv(&mut first, client_addr(), false),
        Destination::Stateless
    );
    assert!(endpoint.is_empty(), "a Retry keeps no state");
    let (retry, _) = endpoint.stateless_reply().unwrap();
    let mut retry = retry.to_vec();
    let header = quiche::Header::from_slice(&mut retry, 16).unwrap();
    assert_eq!(header.ty, quiche::Type::Retry);
    let new_id: ServerCid = header.scid.as_ref().try_into().unwrap();
    assert_eq!(
        steering_key(&new_id),
        OWN_KEY,
        "the Retry's ID names this shard"
    );

    let info = quiche::RecvInfo {
        from: server_addr(),
        to: client_addr(),
    };
    client.recv(&mut retry, info).unwrap();
    exchange(&mut endpoint, &mut client);
    assert!(
        client.is_established(),
        "the handshake completes after the Retry"
    );
    assert_eq!(stats.retries_sent.get(), 1);
    assert_eq!(stats.handshakes_completed.get(), 1);
    assert_eq!(stats.handshakes_active.get(), 0);
    assert_eq!(stats.unvalidated_active.get(), 0);
    let cid: ServerCid = client.destination_id().as_ref().try_into().unwrap();
    assert_eq!(cid, new_id, "the connection keeps the ID the Retry gave");
    // Only the first Initial and the Retry were exchanged unvalidated.
    assert_eq!(stats.unvalidated_bytes_received.get(), first.len() as u64);
    assert!(stats.unvalidated_bytes_sent.get() < 200);
}

#[test]
fn tokens_forged_or_from_another_address_are_refused() {
    let (mut endpoint, stats) = endpoint_with(retry_settings(RetryMode::Always));
    let mut client = client();
    let initial = initial_after_retry(&mut endpoint, &mut client);
    // The token follows the first byte, version, both IDs and the token length (one byte
    // varint for tokens under 64 bytes): flip a byte inside it.
    let token_start = 1 + 4 + 1 + 16 + 1 + 16 + 1;
    let mut forged = initial.clone();
    forged[token_start + 12] ^= 0x01;
    assert_eq!(
        endpoint.recv(&mut forged, client_addr(), false),
        Destination::Dropped
    );
    let mut elsewhere = initial.clone();
    assert_eq!(
        endpoint.recv(&mut elsewhere, "203.0.113.50:50000".parse().unwrap(), false),
        Destination::Dropped
    );
    assert_eq!(stats.refusals.invalid_token.get(), 2);
    assert!(endpoint.is_empty());
    // The genuine one, from the right address, is taken.
    let mut genuine = initial;
    assert!(matches!(
        endpoint.recv(&mut genuine, client_addr(), false),
        Destination::Connection(_)
    ));
    assert_eq!(
        stats.unvalidated_active.get(),
        0,
        "its address is validated"
    );
    assert_eq!(stats.handshakes_active.get(), 1);
}

#[test]
fn retry_auto_starts_once_unvalidated_connections_pass_the_mark() {
    let (mut endpoint, stats) = endpoint_with(QuicSettings {
        retry: RetryMode::Auto,
        retry_above: 2,
        ..QuicSettings::default()
    });
    for i in 0..2u8 {
        let mut client = client_with_scid([i; 16]);
        let mut initial = client_datagrams(&mut client).remove(0);
        assert!(matches!(
            endpoint.recv(&mut initial, client_addr(), false),
            Destination::Connection(_)
        ));
    }
    assert_eq!(stats.unvalidated_active.get(), 2);
    let mut third = client_with_scid([9; 16]);
    // A post-quantum key share makes the ClientHello span two Initials: each gets the same Retry.
    let flight = client_datagrams(&mut third);
    for mut datagram in flight.clone() {
        assert_eq!(
            endpoint.recv(&mut datagram, client_addr(), false),
            Destination::Stateless
        );
    }
    assert_eq!(stats.retries_sent.get(), flight.len() as u64);
    let (retry, to) = endpoint.stateless_reply().unwrap();
    let mut retry = retry.to_vec();
    let info = quiche::RecvInfo {
        from: server_addr(),
        to,
    };
    third.recv(&mut retry, info).unwrap();
    exchange(&mut endpoint, &mut third);
    assert!(
        third.is_established(),
        "the third completes through a Retry"
    );
    assert_eq!(stats.retries_sent.get(), flight.len() as u64);
    // Unvalidated peers got at most three times what they sent (RFC 9000 §8.1).
    assert!(stats.unvalidated_bytes_sent.get() <= 3 * stats.unvalidated_bytes_received.get());
}

#[test]
fn retry_off_never_retries() {
    let (mut endpoint, stats) = endpoint_with(QuicSettings {
        retry: RetryMode::Off,
        retry_above: 0,
        ..QuicSettings::default()
    });
    let mut client = client();
    exchange(&mut endpoint, &mut client);
    assert!(client.is_established());
    assert_eq!(stats.retries_sent.get(), 0);
}

#[test]
fn a_handshake_that_never_finishes_is_dropped_at_its_own_deadline() {
    let (mut endpoint, stats) = endpoint_with(QuicSettings {
        handshake_timeout: Duration::from_secs(2),
        ..QuicSettings::default()
    });
    let mut client = client();
    let mut initial = client_datagrams(&mut client).remove(0);
    let accepted = Instant::now();
    endpoint.recv(&mut initial, client_addr(), false);
    server_datagrams(&mut endpoint);
    assert_eq!(stats.handshakes_active.get(), 1);
    // quiche's own timers (loss detection) come first; the handshake deadline ends it.
    let mut turns = 0;
    while !endpoint.is_empty() {
        turns += 1;
        assert!(turns < 100, "the handshake never timed out");
        let next = endpoint.next_timeout().expect("an armed timer");
        assert!(
            next <= accepted + Duration::from_secs(3),
            "armed past the deadline"
        );
        endpoint.on_timeout(next);
        server_datagrams(&mut endpoint);
    }
    assert_eq!(stats.handshake_timeouts.get(), 1);
    assert_eq!(stats.handshakes_active.get(), 0);
    assert_eq!(stats.unvalidated_active.get(), 0);
    assert_eq!(stats.connections_active.get(), 0);
}

#[test]
fn connection_handshake_and_source_limits_refuse_cheaply() {
    let initial_from = |endpoint: &mut Endpoint<Recorder>, seed: u8, from: &str| {
        let mut client = client_with_scid([seed; 16]);
        let mut initial = client_datagrams(&mut client).remove(0);
        endpoint.recv(&mut initial, from.parse().unwrap(), false)
    };
    let opened = |d: Destination| matches!(d, Destination::Connection(_));
    // Each cap admits one connection and refuses the next, from another address.
    type RefusedCount = fn(&ShardStats) -> u64;
    let caps: [(QuicSettings, RefusedCount); 2] = [
        (
            QuicSettings {
                max_connections: 1,
                ..QuicSettings::default()
            },
            |s| s.refusals.connection_limit.get(),
        ),
        (
            QuicSettings {
                max_handshakes: 1,
                ..QuicSettings::default()
            },
            |s| s.refusals.handshake_limit.get(),
        ),
    ];
    for (settings, refused) in caps {
        let (mut endpoint, stats) = endpoint_with(settings);
        assert!(opened(initial_from(&mut endpoint, 1, "198.51.100.1:1")));
        assert!(!opened(initial_from(&mut endpoint, 2, "198.51.100.2:1")));
        assert_eq!(refused(&stats), 1);
    }

    let (mut endpoint, stats) = endpoint_with(QuicSettings {
        new_connection_rate: 1,
        new_connection_burst: 2,
        ..QuicSettings::default()
    });
    assert!(opened(initial_from(&mut endpoint, 1, "198.51.100.1:1")));
    assert!(opened(initial_from(&mut endpoint, 2, "198.51.100.1:2")));
    assert!(!opened(initial_from(&mut endpoint, 3, "198.51.100.1:3")));
    assert_eq!(stats.refusals.source_rate.get(), 1);
    assert!(
        opened(initial_from(&mut endpoint, 4, "198.51.100.9:1")),
        "another source has its own bucket"
    );
    assert_eq!(stats.connections_accepted.get(), 3);
}

#[test]
fn an_initial_that_does_not_decrypt_leaves_no_connection() {
    let (mut endpoint, stats) = endpoint(Duration::from_secs(30));
    let mut client = client();
    let mut initial = client_datagrams(&mut client).remove(0);
    // Keep the header (first byte, version, IDs, token and length fields); spoil the payload.
    let last = initial.len() - 1;
    for byte in &mut initial[100..last] {
        *byte ^= 0x5c;
    }
    assert_eq!(
        endpoint.recv(&mut initial, client_addr(), false),
        Destination::Dropped
    );
    assert!(endpoint.is_empty());
    assert_eq!(stats.datagrams_dropped_malformed.get(), 1);
    assert_eq!(stats.connections_accepted.get(), 0);
    assert_eq!(stats.handshake_failures.get(), 0);
    assert_eq!(stats.handshakes_active.get(), 0);
    assert_eq!(stats.connections_active.get(), 0);
}

/// Generated datagrams: `scripts/fuzz.sh` runs every `fuzz_` test for longer.
mod fuzz {
    use std::cell::RefCell;

    use super::*;
    use proptest::prelude::*;

    thread_local! {
        // One endpoint (a TLS context and keys) for all of a thread's cases: building it costs
        // a hundred times more than a case, and every case must leave it empty anyway. No
        // per-source rate, so that later cases reach the handshake, not the rate refusal.
        static ENDPOINT: RefCell<Endpoint<Recorder>> = RefCell::new(
            endpoint_with(QuicSettings {
                idle_timeout: Duration::from_secs(30),
                new_connection_rate: 0,
                ..QuicSettings::default()
            })
            .0,
        );
        // A real client's first Initial, made once: the mutations start from it.
        static INITIAL: Vec<u8> = client_datagrams(&mut client()).remove(0);
    }

    proptest! {
        #[test]
        fn fuzz_random_datagrams_leave_no_state(
            datagrams in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..1500), 1..16),
            handed_off in any::<bool>(),
        ) {
            ENDPOINT.with_borrow_mut(|endpoint| {
                for mut datagram in datagrams {
                    let _ = endpoint.recv(&mut datagram, client_addr(), handed_off);
                }
                server_datagrams(endpoint);
                prop_assert!(endpoint.is_empty());
                Ok(())
            })?;
        }

        #[test]
        fn fuzz_mutated_initials_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut initial = INITIAL.with(Vec::clone);
            for (at, value) in flips {
                let i = at.index(initial.len());
                initial[i] ^= value;
            }
            let keep = 1 + cut.index(initial.len());
            ENDPOINT.with_borrow_mut(|endpoint| {
                let _ = endpoint.recv(&mut initial[..keep], client_addr(), false);
                server_datagrams(endpoint);
                let now = Instant::now() + Duration::from_secs(60);
                endpoint.on_timeout(now);
                server_datagrams(endpoint);
                prop_assert!(
                    endpoint.is_empty(),
                    "the handshake deadline ends whatever was opened"
                );
                Ok(())
            })?;
        }
    }
}

/// The client's pending packets with the address each leaves from.
fn client_datagrams_routed(client: &mut quiche::Connection) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((n, info)) = client.send(&mut buf) {
        out.push((buf[..n].to_vec(), info.from));
    }
    out
}

/// Downloads `size` bytes on a new client stream and returns the size and destination of every
/// datagram the endpoint sent meanwhile. Datagrams travel from whichever address the client
/// sends them from.
fn download_datagrams(
    endpoint: &mut Endpoint<Recorder>,
    client: &mut quiche::Connection,
    stream_id: u64,
    size: usize,
) -> Vec<(usize, SocketAddr)> {
    client.stream_send(stream_id, b"a request", true).unwrap();
    let mut cid = None;
    for (mut datagram, from) in client_datagrams_routed(client) {
        if let Destination::Connection(c) = endpoint.recv(&mut datagram, from, false) {
            cid = Some(c);
        }
    }
    let cid = cid.expect("the request reached a connection");
    let body = vec![0x42u8; size];
    let mut written = 0;
    let mut sent = Vec::new();
    let mut received = 0;
    let mut buf = vec![0u8; 65_536];
    for _ in 0..10_000 {
        let conn = endpoint.get_mut(cid).unwrap();
        if written < size {
            written += conn
                .quic
                .stream_send(stream_id, &body[written..], true)
                .unwrap_or(0);
        }
        endpoint.mark_dirty(cid);
        for (mut datagram, to) in server_datagrams(endpoint) {
            sent.push((datagram.len(), to));
            let info = quiche::RecvInfo {
                from: server_addr(),
                to,
            };
            client.recv(&mut datagram, info).unwrap();
        }
        while let Ok((n, _)) = client.stream_recv(stream_id, &mut buf) {
            received += n;
        }
        if received == size {
            return sent;
        }
        for (mut datagram, from) in client_datagrams_routed(client) {
            endpoint.recv(&mut datagram, from, false);
        }
    }
    panic!("the download did not finish: {received} of {size} bytes");
}

fn download_datagram_sizes(
    endpoint: &mut Endpoint<Recorder>,
    client: &mut quiche::Connection,
    size: usize,
) -> Vec<usize> {
    let sent = download_datagrams(endpoint, client, 0, size);
    sent.into_iter().map(|(n, _)| n).collect()
}

/// A connection over a 9,000-byte route, established, with `path_mtu_discovery` as given.
fn over_jumbo_route(discovery: bool) -> (Endpoint<Recorder>, quiche::Connection, ServerCid) {
    let (mut endpoint, _) = endpoint_with(QuicSettings {
        path_mtu_discovery: discovery,
        ..QuicSettings::default()
    });
    endpoint.set_route_lookup(jumbo_route);
    let mut client = client();
    exchange(&mut endpoint, &mut client);
    assert!(client.is_established());
    let cid: ServerCid = client.destination_id().as_ref().try_into().unwrap();
    (endpoint, client, cid)
}

#[test]
fn path_mtu_discovery_probes_up_to_the_route_and_then_fills_it() {
    let (mut endpoint, mut client, cid) = over_jumbo_route(true);
    // A 9,000-byte route carries 8,972 bytes of UDP payload over IPv4: the first probe, at the
    // ceiling, went out once the handshake was confirmed and was acknowledged in the exchange.
    assert_eq!(endpoint.get_mut(cid).unwrap().quic.pmtu(), Some(8972));
    let sizes = download_datagram_sizes(&mut endpoint, &mut client, 1 << 20);
    assert!(sizes.iter().all(|&n| n <= 8972), "{sizes:?}");
    let full = sizes.iter().filter(|&&n| n == 8972).count();
    assert!(
        full * 8972 > (1 << 20) * 9 / 10,
        "most of the body travels in datagrams of the path's size: {full} of {} datagrams",
        sizes.len()
    );
}

#[test]
fn without_discovery_every_datagram_keeps_to_max_udp_payload_size() {
    let (mut endpoint, mut client, cid) = over_jumbo_route(false);
    assert_eq!(endpoint.get_mut(cid).unwrap().quic.pmtu(), None);
    let sizes = download_datagram_sizes(&mut endpoint, &mut client, 1 << 20);
    let largest = sizes.iter().copied().max().unwrap();
    assert_eq!(largest, QuicSettings::default().max_udp_payload);
}

#[test]
fn a_path_the_client_moves_to_keeps_to_max_udp_payload_size() {
    let (mut endpoint, mut client, cid) = over_jumbo_route(true);
    assert_eq!(endpoint.get_mut(cid).unwrap().quic.pmtu(), Some(8972));
    // quiche does not probe a path the client migrates to: its packets there are the size that
    // needs no proof, not the first path's.
    let moved: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    // A client that moves needs a spare ID of its own for the new path (RFC 9000 §9.5).
    client
        .new_scid(&quiche::ConnectionId::from_ref(&[0x6b; 16]), 0x6b, false)
        .unwrap();
    exchange(&mut endpoint, &mut client);
    client.migrate_source(moved).unwrap();
    let sent = download_datagrams(&mut endpoint, &mut client, 0, 1 << 20);
    let on_new_path: Vec<usize> = sent
        .iter()
        .filter(|(_, to)| *to == moved)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        on_new_path.len() > 100,
        "{} datagrams to the new address",
        on_new_path.len()
    );
    let largest = on_new_path.iter().copied().max().unwrap();
    assert_eq!(largest, QuicSettings::default().max_udp_payload);
    assert_eq!(
        endpoint.get_mut(cid).unwrap().peer,
        client_addr(),
        "(the table keeps the first)"
    );
}
