//! HTTP semantics shared by every protocol the proxy speaks: request translation and validation
//! ([`request`]), response translation ([`response`]), and the [`downstream::Downstream`] seam
//! through which the proxy reads requests and writes responses.

pub mod downstream;
pub mod request;
pub mod response;

pub use downstream::{
    keep_as_is, to_keep, Abort, BodyRead, Downstream, Leftover, Protocol, ReadError, Sent,
    StreamGone,
};
pub use request::{
    translate_request, translate_request_trailers, ClientInfo, Malformed, RequestHead,
};

/// Fields meaningful only to one hop of HTTP/1.1, forbidden in HTTP/2 and HTTP/3 (RFC 9113
/// §8.2.2, RFC 9114 §4.2).
pub const CONNECTION_SPECIFIC: [&[u8]; 5] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

/// Whether the comma-separated list in `value` (`Connection`, `TE`) holds `token`, compared
/// without case (RFC 9110 §5.6.1).
pub fn lists(value: &http::HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}
