//! What a client request and response are, and how one fails.

use std::fmt;
use std::path::PathBuf;

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
    /// `:protocol` of an extended CONNECT (RFC 9220), e.g. `websocket`.
    pub protocol: Option<String>,
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
            protocol: None,
            headers: Vec::new(),
            body: Body::Empty,
            trailers: Vec::new(),
            keep_body: true,
        }
    }

    pub fn get(path: &str) -> Self {
        Request::new("GET", path)
    }

    /// Makes the request an extended CONNECT for `protocol` (use it with method `CONNECT`).
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = Some(protocol.into());
        self
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

    /// The first value of trailer `name` (lowercase).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
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
