//! A blocking HTTP/3 client over quiche, for tests, the `get` command and load generation.
//!
//! One `H3Client` is one QUIC connection on its own UDP socket, driven on the caller's thread:
//! send what quiche has, wait for a datagram or quiche's next timeout, feed it, handle HTTP/3
//! events, push request bodies. Many requests can run at once on one connection. A stream that
//! is reset, or a connection that closes, before a response is complete is reported as an error:
//! a truncated body never looks like success.

use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiche::h3::NameValue;
use sha2::{Digest, Sha256};

use crate::backend::pattern_byte;

mod connect;
mod message;
mod stream;
mod wire;

pub use connect::{bind_connected, check_ip_literal, client_config, random_cid, sni_for};
pub use message::{Body, ClientError, Request, Response};
pub use quiche::h3::WireErrorCode;
use stream::{fail_all, finish, on_data, on_headers, push_body, Source, Stream};
use wire::{encode_literal_field_section, push_varint};

/// HTTP/3 error code a client uses to cancel a request (RFC 9114 §8.1).
pub const H3_REQUEST_CANCELLED: u64 = WireErrorCode::RequestCancelled as u64;
const H3_NO_ERROR: u64 = WireErrorCode::NoError as u64;
const CHUNK: usize = 64 * 1024;

/// How the client checks the server's certificate.
#[derive(Clone, Debug)]
pub enum Verify {
    /// Accept any certificate (for trying things out only).
    Insecure,
    /// Trust certificates signed by the CA in this PEM file.
    Ca(PathBuf),
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub server: SocketAddr,
    /// TLS server name (SNI) and default `:authority`.
    pub server_name: String,
    pub verify: Verify,
    /// Bound on any one operation (handshake, or a whole `request_many`).
    pub timeout: Duration,
}

/// One HTTP/3 connection.
pub struct H3Client {
    socket: UdpSocket,
    conn: quiche::Connection,
    h3: quiche::h3::Connection,
    local: SocketAddr,
    options: ClientOptions,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl H3Client {
    /// Connects and completes the QUIC handshake.
    pub fn connect(options: ClientOptions) -> Result<H3Client, ClientError> {
        let socket = bind_connected(options.server)?;
        let local = socket.local_addr()?;
        let tls = |e: quiche::Error| ClientError::Tls(e.to_string());
        let mut config = client_config(&options.verify, options.timeout).map_err(tls)?;
        let scid_bytes = random_cid();
        let scid = quiche::ConnectionId::from_ref(&scid_bytes);
        let mut conn = quiche::connect(
            sni_for(&options.server_name),
            &scid,
            local,
            options.server,
            &mut config,
        )
        .map_err(tls)?;
        let mut buf = vec![0u8; 65_535];
        let mut out = vec![0u8; 65_535];
        let deadline = Instant::now() + options.timeout;
        while !conn.is_established() {
            flush(&socket, &mut conn, &mut out)?;
            if conn.is_closed() {
                return Err(ClientError::ConnectionClosed(close_reason(&conn)));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            wait_and_receive(&socket, &mut conn, &mut buf, local, deadline)?;
        }
        check_ip_literal(&conn, &options.server_name, &options.verify).map_err(ClientError::Tls)?;
        offer_spare_ids(&mut conn);
        let h3 = quiche::h3::Connection::with_transport(
            &mut conn,
            &quiche::h3::Config::new().map_err(|e| ClientError::Tls(e.to_string()))?,
        )
        .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(H3Client {
            socket,
            conn,
            h3,
            local,
            options,
            buf,
            out,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Moves the connection to a new UDP socket (a new source port) without telling QUIC, as a
    /// NAT rebinding does: the server sees the client's address change mid-connection. Returns
    /// the new source address.
    pub fn rebind(&mut self) -> Result<SocketAddr, ClientError> {
        let socket = bind_connected(self.options.server)?;
        let address = socket.local_addr()?;
        self.socket = socket;
        Ok(address)
    }

    /// Moves the connection to a new local address on purpose (active migration, RFC 9000 §9):
    /// the client switches to one of the spare connection IDs the server offered, and QUIC
    /// validates the new path. Returns the new source address.
    pub fn migrate(&mut self) -> Result<SocketAddr, ClientError> {
        let socket = bind_connected(self.options.server)?;
        // The address QUIC tracks must be the one packets really come from.
        let address = match socket.local_addr()? {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::new(self.local.ip(), a.port())
            }
            other => other,
        };
        self.conn
            .migrate(address, self.options.server)
            .map_err(|e| ClientError::Protocol(format!("migration refused: {e}")))?;
        self.socket = socket;
        self.local = address;
        offer_spare_ids(&mut self.conn);
        Ok(address)
    }

    /// Spare connection IDs the server has offered and the client has not used yet.
    pub fn spare_server_ids(&self) -> usize {
        self.conn.available_dcids()
    }

    /// The connection ID the server issued for this connection (where the client sends).
    pub fn server_cid(&self) -> Vec<u8> {
        self.conn.destination_id().to_vec()
    }

    pub fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        self.run(vec![(request, None)], None)
            .pop()
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Runs every request at once, as concurrent streams, and returns results in order.
    pub fn request_many(&mut self, requests: Vec<Request>) -> Vec<Result<Response, ClientError>> {
        self.run(requests.into_iter().map(|r| (r, None)).collect(), None)
    }

    /// Sends exactly `fields` as the request header section, QPACK-encoded by hand as literal
    /// field lines, so that names keep their case (quiche's encoder lowercases them). Used to
    /// test how a server treats malformed requests. Must be the first request on this client:
    /// it takes stream 0, which the HTTP/3 layer does not know about.
    pub fn request_raw(
        &mut self,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Response, ClientError> {
        let section = encode_literal_field_section(&fields);
        let mut frame = Vec::with_capacity(section.len() + 10);
        push_varint(&mut frame, 0x01); // HEADERS
        push_varint(&mut frame, section.len() as u64);
        frame.extend_from_slice(&section);
        self.conn
            .stream_send(0, &frame, true)
            .map_err(|e| ClientError::Protocol(format!("raw stream: {e}")))?;
        self.run(vec![], Some(0))
            .pop()
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Reads the response body until at least `cancel_after` bytes arrived, then cancels the
    /// stream (STOP_SENDING and RESET_STREAM with H3_REQUEST_CANCELLED). Returns bytes received.
    pub fn download_then_cancel(
        &mut self,
        request: Request,
        cancel_after: u64,
    ) -> Result<u64, ClientError> {
        let request = request.keep_body(false);
        self.run(vec![(request, Some(cancel_after))], None)
            .pop()
            .unwrap_or(Err(ClientError::Timeout))
            .map(|r| r.body_len)
    }

    /// Closes the connection with H3_NO_ERROR.
    pub fn close(mut self) {
        let _ = self.conn.close(true, H3_NO_ERROR, b"");
        let _ = flush(&self.socket, &mut self.conn, &mut self.out);
    }

    fn fields_for(&self, request: &Request, has_body: bool) -> Vec<quiche::h3::Header> {
        let authority = request
            .authority
            .clone()
            .unwrap_or_else(|| self.options.server_name.clone());
        let mut fields = vec![
            quiche::h3::Header::new(b":method", request.method.as_bytes()),
            quiche::h3::Header::new(b":scheme", b"https"),
            quiche::h3::Header::new(b":authority", authority.as_bytes()),
            quiche::h3::Header::new(b":path", request.path.as_bytes()),
        ];
        if let Some(protocol) = &request.protocol {
            fields.push(quiche::h3::Header::new(b":protocol", protocol.as_bytes()));
        }
        if let (true, Body::Bytes(b)) = (has_body, &request.body) {
            fields.push(quiche::h3::Header::new(
                b"content-length",
                b.len().to_string().as_bytes(),
            ));
        }
        if let (true, Body::Pattern(n)) = (has_body, &request.body) {
            fields.push(quiche::h3::Header::new(
                b"content-length",
                n.to_string().as_bytes(),
            ));
        }
        for (name, value) in &request.headers {
            fields.push(quiche::h3::Header::new(name.as_bytes(), value.as_bytes()));
        }
        fields
    }

    /// Drives `requests` (and, if given, one stream already opened by hand) to completion.
    fn run(
        &mut self,
        requests: Vec<(Request, Option<u64>)>,
        opened: Option<u64>,
    ) -> Vec<Result<Response, ClientError>> {
        let total = requests.len() + usize::from(opened.is_some());
        let mut results: Vec<Option<Result<Response, ClientError>>> =
            (0..total).map(|_| None).collect();
        let mut queue: VecDeque<(usize, Request, Option<u64>)> = requests
            .into_iter()
            .enumerate()
            .map(|(i, (r, c))| (i, r, c))
            .collect();
        let mut streams: std::collections::HashMap<u64, Stream> = std::collections::HashMap::new();
        if let Some(stream_id) = opened {
            streams.insert(
                stream_id,
                Stream {
                    index: total - 1,
                    source: Source::Empty,
                    chunk: Vec::new(),
                    chunk_offset: 0,
                    body_done: true,
                    trailers: Vec::new(),
                    keep_body: true,
                    response: Response::default(),
                    hasher: Sha256::new(),
                    headers_seen: false,
                    cancel_after: None,
                },
            );
        }
        let deadline = Instant::now() + self.options.timeout;
        let mut finished = 0;
        while finished < total {
            // Open as many queued requests as the server's stream limit allows.
            while let Some((index, request, cancel_after)) = queue.pop_front() {
                let source = match Source::new(&request.body) {
                    Ok(s) => s,
                    Err(e) => {
                        results[index] = Some(Err(e));
                        finished += 1;
                        continue;
                    }
                };
                let has_body = !source.is_empty_body();
                let fin = !has_body && request.trailers.is_empty();
                let fields = self.fields_for(&request, has_body);
                let sent = self.h3.send_request(&mut self.conn, &fields, fin);
                match sent {
                    Ok(stream_id) => {
                        streams.insert(
                            stream_id,
                            Stream {
                                index,
                                source,
                                chunk: Vec::new(),
                                chunk_offset: 0,
                                body_done: fin,
                                trailers: request.trailers.clone(),
                                keep_body: request.keep_body,
                                response: Response::default(),
                                hasher: Sha256::new(),
                                headers_seen: false,
                                cancel_after,
                            },
                        );
                    }
                    Err(quiche::h3::Error::StreamBlocked)
                    | Err(quiche::h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                        queue.push_front((index, request, cancel_after));
                        break;
                    }
                    Err(e) => {
                        results[index] =
                            Some(Err(ClientError::Protocol(format!("send_request: {e}"))));
                        finished += 1;
                    }
                }
            }
            // Push request bodies.
            for (stream_id, stream) in streams.iter_mut() {
                if let Err(e) = push_body(&mut self.h3, &mut self.conn, *stream_id, stream) {
                    results[stream.index] = Some(Err(e));
                }
            }
            if let Err(e) = flush(&self.socket, &mut self.conn, &mut self.out) {
                return fail_all(results, streams, queue, e);
            }
            if self.conn.is_closed() {
                let why = close_reason(&self.conn);
                return fail_all(results, streams, queue, ClientError::ConnectionClosed(why));
            }
            if Instant::now() >= deadline {
                return fail_all(results, streams, queue, ClientError::Timeout);
            }
            if let Err(e) = wait_and_receive(
                &self.socket,
                &mut self.conn,
                &mut self.buf,
                self.local,
                deadline,
            ) {
                return fail_all(results, streams, queue, e);
            }
            // Handle HTTP/3 events.
            loop {
                let (stream_id, event) = match self.h3.poll(&mut self.conn) {
                    Ok(event) => event,
                    Err(quiche::h3::Error::Done) => break,
                    Err(e) => {
                        let error = ClientError::Protocol(format!("h3: {e}"));
                        return fail_all(results, streams, queue, error);
                    }
                };
                let Some(stream) = streams.get_mut(&stream_id) else {
                    continue;
                };
                let outcome = match event {
                    quiche::h3::Event::Headers { list, .. } => {
                        on_headers(stream, list);
                        None
                    }
                    quiche::h3::Event::Data => on_data(
                        &mut self.h3,
                        &mut self.conn,
                        stream_id,
                        stream,
                        &mut self.buf,
                    ),
                    quiche::h3::Event::Finished => Some(finish(stream)),
                    quiche::h3::Event::Reset(code) => Some(Err(ClientError::StreamReset { code })),
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    if let Some(stream) = streams.remove(&stream_id) {
                        results[stream.index] = Some(outcome);
                        finished += 1;
                    }
                }
            }
            // Streams whose body push failed are finished too.
            let failed: Vec<u64> = streams
                .iter()
                .filter(|(_, s)| results[s.index].is_some())
                .map(|(id, _)| *id)
                .collect();
            for id in failed {
                streams.remove(&id);
                finished += 1;
            }
        }
        let _ = flush(&self.socket, &mut self.conn, &mut self.out);
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ClientError::Timeout)))
            .collect()
    }
}

/// Offers the server spare client connection IDs up to its limit: migrating needs a fresh ID in
/// each direction.
fn offer_spare_ids(conn: &mut quiche::Connection) {
    while conn.scids_left() > 0 {
        let cid = random_cid();
        let token = u128::from_be_bytes(random_cid());
        if conn
            .new_scid(&quiche::ConnectionId::from_ref(&cid), token, false)
            .is_err()
        {
            break;
        }
    }
}

fn flush(
    socket: &UdpSocket,
    conn: &mut quiche::Connection,
    out: &mut [u8],
) -> Result<(), ClientError> {
    loop {
        match conn.send(out) {
            Ok((n, _)) => {
                if let Err(e) = socket.send(&out[..n]) {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        return Err(e.into());
                    }
                }
            }
            Err(quiche::Error::Done) => return Ok(()),
            Err(e) => return Err(ClientError::Protocol(format!("quic send: {e}"))),
        }
    }
}

/// Waits for datagrams until quiche's next timeout (or `deadline`), feeding all that arrive.
fn wait_and_receive(
    socket: &UdpSocket,
    conn: &mut quiche::Connection,
    buf: &mut [u8],
    local: SocketAddr,
    deadline: Instant,
) -> Result<(), ClientError> {
    let now = Instant::now();
    let wait = conn
        .timeout()
        .unwrap_or(Duration::from_millis(100))
        .min(deadline.saturating_duration_since(now))
        .max(Duration::from_micros(100));
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(wait))?;
    let mut received_any = false;
    loop {
        match socket.recv_from(buf) {
            Ok((n, from)) => {
                received_any = true;
                let _ = conn.recv(&mut buf[..n], quiche::RecvInfo { from, to: local });
                // Drain the rest without waiting.
                socket.set_nonblocking(true)?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::ConnectionClosed(
                    "server port unreachable".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !received_any {
        conn.on_timeout();
    }
    Ok(())
}

fn close_reason(conn: &quiche::Connection) -> String {
    if let Some(e) = conn.peer_error() {
        return format!(
            "closed by server: code {:#x} {}",
            e.error_code,
            String::from_utf8_lossy(&e.reason)
        );
    }
    if let Some(e) = conn.local_error() {
        return format!(
            "closed locally: code {:#x} {}",
            e.error_code,
            String::from_utf8_lossy(&e.reason)
        );
    }
    if conn.is_timed_out() {
        return "idle timeout".into();
    }
    "closed".into()
}
