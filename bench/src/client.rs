//! A blocking HTTP/3 client over quiche, for tests, the `get` command and load generation.
//!
//! One `H3Client` is one QUIC connection on its own UDP socket, driven on the caller's thread:
//! send what quiche has, wait for a datagram or quiche's next timeout, feed it, handle HTTP/3
//! events, push request bodies. Many requests can run at once on one connection. A stream that
//! is reset, or a connection that closes, before a response is complete is reported as an error:
//! a truncated body never looks like success.

use std::collections::VecDeque;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quiche::h3::NameValue;
use sha2::{Digest, Sha256};

use crate::backend::pattern_byte;

/// HTTP/3 error code a client uses to cancel a request (RFC 9114 §8.1).
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
const H3_NO_ERROR: u64 = 0x100;
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

/// A request body.
#[derive(Clone, Debug)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `n` bytes of [`pattern_byte`], generated while sending, never held whole.
    Pattern(u64),
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    pub trailers: Vec<(String, String)>,
    /// Keep the response body in memory (its length and SHA-256 are always recorded).
    pub keep_body: bool,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            authority: None,
            headers: Vec::new(),
            body: Body::Empty,
            trailers: Vec::new(),
            keep_body: true,
        }
    }

    pub fn get(path: &str) -> Self {
        Request::new("GET", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub fn trailers(mut self, trailers: Vec<(String, String)>) -> Self {
        self.trailers = trailers;
        self
    }

    pub fn keep_body(mut self, keep: bool) -> Self {
        self.keep_body = keep;
        self
    }
}

#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    Tls(String),
    /// The server reset the stream with this HTTP/3 error code.
    StreamReset {
        code: u64,
    },
    /// The connection closed before the response completed.
    ConnectionClosed(String),
    Timeout,
    /// The response broke HTTP rules (e.g. body length differs from content-length).
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "io: {e}"),
            ClientError::Tls(e) => write!(f, "tls/quic setup: {e}"),
            ClientError::StreamReset { code } => {
                write!(f, "stream reset by server (code {code:#x})")
            }
            ClientError::ConnectionClosed(why) => write!(f, "connection closed: {why}"),
            ClientError::Timeout => f.write_str("timed out"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// Where the next request body bytes come from.
enum Source {
    Empty,
    Bytes(Vec<u8>, usize),
    Pattern { len: u64, next: u64 },
    File(std::fs::File),
}

impl Source {
    fn new(body: &Body) -> Result<Source, ClientError> {
        Ok(match body {
            Body::Empty => Source::Empty,
            Body::Bytes(b) => Source::Bytes(b.clone(), 0),
            Body::Pattern(len) => Source::Pattern { len: *len, next: 0 },
            Body::File(path) => Source::File(std::fs::File::open(path)?),
        })
    }

    fn is_empty_body(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Bytes(b, _) => b.is_empty(),
            Source::Pattern { len, .. } => *len == 0,
            Source::File(_) => false,
        }
    }

    /// Fills `chunk` with the next bytes; an empty chunk means the body is done.
    fn refill(&mut self, chunk: &mut Vec<u8>) -> Result<(), ClientError> {
        chunk.clear();
        match self {
            Source::Empty => {}
            Source::Bytes(bytes, offset) => {
                let end = (*offset + CHUNK).min(bytes.len());
                chunk.extend_from_slice(&bytes[*offset..end]);
                *offset = end;
            }
            Source::Pattern { len, next } => {
                let end = (*next + CHUNK as u64).min(*len);
                chunk.extend((*next..end).map(pattern_byte));
                *next = end;
            }
            Source::File(file) => {
                chunk.resize(CHUNK, 0);
                let n = file.read(chunk)?;
                chunk.truncate(n);
            }
        }
        Ok(())
    }
}

struct Stream {
    index: usize,
    source: Source,
    chunk: Vec<u8>,
    chunk_offset: usize,
    body_done: bool,
    trailers: Vec<(String, String)>,
    keep_body: bool,
    response: Response,
    hasher: Sha256,
    headers_seen: bool,
    cancel_after: Option<u64>,
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

fn on_headers(stream: &mut Stream, list: Vec<quiche::h3::Header>) {
    let pairs = list.iter().map(|h| {
        (
            String::from_utf8_lossy(h.name()).into_owned(),
            String::from_utf8_lossy(h.value()).into_owned(),
        )
    });
    if stream.headers_seen {
        stream.response.trailers.extend(pairs);
        return;
    }
    stream.headers_seen = true;
    for (name, value) in pairs {
        if name == ":status" {
            stream.response.status = value.parse().unwrap_or(0);
        } else {
            stream.response.headers.push((name, value));
        }
    }
}

fn on_data(
    h3: &mut quiche::h3::Connection,
    conn: &mut quiche::Connection,
    stream_id: u64,
    stream: &mut Stream,
    buf: &mut [u8],
) -> Option<Result<Response, ClientError>> {
    while let Ok(n) = h3.recv_body(conn, stream_id, buf) {
        stream.hasher.update(&buf[..n]);
        stream.response.body_len += n as u64;
        if stream.keep_body {
            stream.response.body.extend_from_slice(&buf[..n]);
        }
        if let Some(limit) = stream.cancel_after {
            if stream.response.body_len >= limit {
                let _ =
                    conn.stream_shutdown(stream_id, quiche::Shutdown::Read, H3_REQUEST_CANCELLED);
                let _ =
                    conn.stream_shutdown(stream_id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
                return Some(Ok(std::mem::take(&mut stream.response)));
            }
        }
    }
    None
}

fn finish(stream: &mut Stream) -> Result<Response, ClientError> {
    let mut response = std::mem::take(&mut stream.response);
    response.body_sha256 = std::mem::take(&mut stream.hasher).finalize().into();
    if !stream.headers_seen {
        return Err(ClientError::Protocol(
            "stream ended without response headers".into(),
        ));
    }
    if let Some(declared) = response
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared != response.body_len {
            return Err(ClientError::Protocol(format!(
                "content-length {declared} but {} body bytes",
                response.body_len
            )));
        }
    }
    Ok(response)
}

fn push_body(
    h3: &mut quiche::h3::Connection,
    conn: &mut quiche::Connection,
    stream_id: u64,
    stream: &mut Stream,
) -> Result<(), ClientError> {
    while !stream.body_done {
        if stream.chunk_offset == stream.chunk.len() {
            stream.source.refill(&mut stream.chunk)?;
            stream.chunk_offset = 0;
            if stream.chunk.is_empty() {
                let ended = if stream.trailers.is_empty() {
                    h3.send_body(conn, stream_id, &[], true).map(|_| ())
                } else {
                    let trailers: Vec<quiche::h3::Header> = stream
                        .trailers
                        .iter()
                        .map(|(n, v)| quiche::h3::Header::new(n.as_bytes(), v.as_bytes()))
                        .collect();
                    h3.send_additional_headers(conn, stream_id, &trailers, true, true)
                };
                match ended {
                    Ok(()) => stream.body_done = true,
                    Err(quiche::h3::Error::Done | quiche::h3::Error::StreamBlocked) => {}
                    Err(e) => return Err(ClientError::Protocol(format!("ending body: {e}"))),
                }
                return Ok(());
            }
        }
        match h3.send_body(conn, stream_id, &stream.chunk[stream.chunk_offset..], false) {
            Ok(0) | Err(quiche::h3::Error::Done) => return Ok(()),
            Ok(n) => stream.chunk_offset += n,
            Err(quiche::h3::Error::TransportError(quiche::Error::StreamStopped(_))) => {
                // The server stopped reading our body (it answered early): stop sending.
                stream.body_done = true;
                return Ok(());
            }
            Err(e) => return Err(ClientError::Protocol(format!("send_body: {e}"))),
        }
    }
    Ok(())
}

fn fail_all(
    mut results: Vec<Option<Result<Response, ClientError>>>,
    streams: std::collections::HashMap<u64, Stream>,
    queue: VecDeque<(usize, Request, Option<u64>)>,
    error: ClientError,
) -> Vec<Result<Response, ClientError>> {
    let describe = error.to_string();
    let again = |e: &ClientError| match e {
        ClientError::Timeout => ClientError::Timeout,
        _ => ClientError::ConnectionClosed(describe.clone()),
    };
    for (_, stream) in streams {
        results[stream.index].get_or_insert_with(|| Err(again(&error)));
    }
    for (index, _, _) in queue {
        results[index].get_or_insert_with(|| Err(again(&error)));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(again(&error))))
        .collect()
}

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
    config.set_max_recv_udp_payload_size(65_535);
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

fn random_cid() -> [u8; 16] {
    let mut cid = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut cid);
    cid
}

/// QUIC variable-length integer (RFC 9000 §16).
fn push_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16_383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        16_384..=1_073_741_823 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// HPACK/QPACK prefixed integer (RFC 7541 §5.1) with `prefix` bits and the given high bits.
fn push_prefixed_int(out: &mut Vec<u8>, mut v: u64, prefix: u32, high_bits: u8) {
    let max = (1u64 << prefix) - 1;
    if v < max {
        out.push(high_bits | v as u8);
        return;
    }
    out.push(high_bits | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A QPACK field section of literal field lines with literal names, no Huffman, no dynamic table
/// (RFC 9204 §4.5.6).
fn encode_literal_field_section(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0, 0]; // Required Insert Count 0, Delta Base 0.
    for (name, value) in fields {
        push_prefixed_int(&mut out, name.len() as u64, 3, 0b0010_0000);
        out.extend_from_slice(name);
        push_prefixed_int(&mut out, value.len() as u64, 7, 0);
        out.extend_from_slice(value);
    }
    out
}
