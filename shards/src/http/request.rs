//! Request translation: a received HTTP/3 field section (RFC 9114 §4.3) into the request head
//! sent to a backend over HTTP/2 (RFC 9113 §8.2), or precisely why the request is malformed.
//!
//! Both protocols share pseudo-header rules, so the work is validation (order, duplicates,
//! lowercase names, no connection-specific fields), cookie crumbs rejoined for backends that expect
//! one `cookie` line, and the forwarding headers every proxy adds.

use std::fmt;
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

use super::CONNECTION_SPECIFIC;

/// A request head ready to send to a backend over HTTP/2.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The declared body length, checked against what the client actually sends.
    pub content_length: Option<u64>,
    /// The client's address, for `client-ip` hashing.
    pub client_ip: IpAddr,
    /// `:protocol` of an extended CONNECT (RFC 8441 §4, RFC 9220 §3), lowercase: the protocol
    /// the client wants the stream to carry, such as `websocket`.
    pub protocol: Option<String>,
}

/// Why a request is malformed (RFC 9114 §4.1.2). The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    MissingPseudoHeader(&'static str),
    DuplicatePseudoHeader(&'static str),
    UnknownPseudoHeader,
    PseudoHeaderAfterRegular,
    UppercaseName,
    InvalidName,
    InvalidValue,
    ConnectionSpecific,
    InvalidTe,
    InvalidMethod,
    InvalidPath,
    InvalidAuthority,
    AuthorityMismatch,
    InvalidContentLength,
    ConnectNotSupported,
    /// `:protocol` on a request other than CONNECT (RFC 8441 §4).
    ProtocolWithoutConnect,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::MissingPseudoHeader(name) => write!(f, "missing pseudo-header {name}"),
            Malformed::DuplicatePseudoHeader(name) => write!(f, "duplicate pseudo-header {name}"),
            Malformed::UnknownPseudoHeader => f.write_str("unknown pseudo-header"),
            Malformed::PseudoHeaderAfterRegular => {
                f.write_str("pseudo-header after a regular header")
            }
            Malformed::UppercaseName => f.write_str("header name with uppercase characters"),
            Malformed::InvalidName => f.write_str("invalid header name"),
            Malformed::InvalidValue => f.write_str("invalid header value"),
            Malformed::ConnectionSpecific => f.write_str("connection-specific header field"),
            Malformed::InvalidTe => f.write_str("te header other than \"trailers\""),
            Malformed::InvalidMethod => f.write_str("invalid :method"),
            Malformed::InvalidPath => f.write_str("invalid :path"),
            Malformed::InvalidAuthority => f.write_str("invalid :authority"),
            Malformed::AuthorityMismatch => f.write_str(":authority and host disagree"),
            Malformed::InvalidContentLength => f.write_str("invalid content-length"),
            Malformed::ConnectNotSupported => f.write_str("CONNECT is not supported"),
            Malformed::ProtocolWithoutConnect => {
                f.write_str(":protocol on a request other than CONNECT")
            }
        }
    }
}

/// Where a request came from, for the forwarding headers.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    pub ip: IpAddr,
}

#[derive(Default)]
struct Pseudo<'a> {
    method: Option<&'a [u8]>,
    scheme: Option<&'a [u8]>,
    authority: Option<&'a [u8]>,
    path: Option<&'a [u8]>,
    protocol: Option<&'a [u8]>,
}

fn set_once<'a>(
    slot: &mut Option<&'a [u8]>,
    value: &'a [u8],
    name: &'static str,
) -> Result<(), Malformed> {
    if slot.replace(value).is_some() {
        return Err(Malformed::DuplicatePseudoHeader(name));
    }
    Ok(())
}

/// Room for the text a typical request head keeps (authority, path, header values): one
/// allocation holds it all, and a larger head grows into a second one.
const HEAD_TEXT: usize = 1024;

/// The text of a request head: each value is written into one shared buffer and handed out as a
/// slice of it. Building the head then allocates once instead of once per value (`HeaderValue`,
/// `Authority` and `PathAndQuery` copy a borrowed slice into a buffer of their own), and cloning
/// the head for an attempt counts references instead of copying values (a clone of a value that
/// owns its bytes allocates to make them shared).
struct HeadText(BytesMut);

impl HeadText {
    fn new() -> Self {
        HeadText(BytesMut::with_capacity(HEAD_TEXT))
    }

    /// `parts` written one after another, as one shared slice.
    fn share(&mut self, parts: &[&[u8]]) -> Bytes {
        for part in parts {
            self.0.extend_from_slice(part);
        }
        self.0.split().freeze()
    }

    fn value(&mut self, parts: &[&[u8]]) -> Result<HeaderValue, Malformed> {
        HeaderValue::from_maybe_shared(self.share(parts)).map_err(|_| Malformed::InvalidValue)
    }

    /// `parts` joined with `separator`, as one header value.
    fn joined(&mut self, parts: &[&[u8]], separator: &[u8]) -> Result<HeaderValue, Malformed> {
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                self.0.extend_from_slice(separator);
            }
            self.0.extend_from_slice(part);
        }
        self.value(&[])
    }
}

/// Validates an HTTP/3 request field section and builds the HTTP/2 request head.
///
/// `fields` yields (name, value) pairs in received order.
pub fn translate_request<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    client: ClientInfo,
) -> Result<RequestHead, Malformed> {
    let fields = fields.into_iter();
    let mut pseudo = Pseudo::default();
    // The forwarding headers add two fields; pseudo-headers take none, so this is enough.
    let mut headers = HeaderMap::with_capacity(fields.size_hint().0 + 2);
    let mut text = HeadText::new();
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut regular_seen = false;

    for (name, value) in fields {
        if let Some(pseudo_name) = name.strip_prefix(b":") {
            if regular_seen {
                return Err(Malformed::PseudoHeaderAfterRegular);
            }
            match pseudo_name {
                b"method" => set_once(&mut pseudo.method, value, ":method")?,
                b"scheme" => set_once(&mut pseudo.scheme, value, ":scheme")?,
                b"authority" => set_once(&mut pseudo.authority, value, ":authority")?,
                b"path" => set_once(&mut pseudo.path, value, ":path")?,
                b"protocol" => set_once(&mut pseudo.protocol, value, ":protocol")?,
                _ => return Err(Malformed::UnknownPseudoHeader),
            }
            continue;
        }
        regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(Malformed::UppercaseName);
        }
        if CONNECTION_SPECIFIC.contains(&name) {
            return Err(Malformed::ConnectionSpecific);
        }
        if name == b"te" && value != b"trailers" {
            return Err(Malformed::InvalidTe);
        }
        if !valid_value(value) {
            return Err(Malformed::InvalidValue);
        }
        match name {
            b"cookie" => {
                cookies.push(value);
                continue;
            }
            b"host" => host = Some(value),
            b"content-length" => {
                let parsed = parse_content_length(value)?;
                if content_length.is_some_and(|previous| previous != parsed) {
                    return Err(Malformed::InvalidContentLength);
                }
                content_length = Some(parsed);
            }
            _ => {}
        }
        let header_name = HeaderName::from_bytes(name).map_err(|_| Malformed::InvalidName)?;
        headers.append(header_name, text.value(&[value])?);
    }

    let method_bytes = pseudo
        .method
        .ok_or(Malformed::MissingPseudoHeader(":method"))?;
    let method = Method::from_bytes(method_bytes).map_err(|_| Malformed::InvalidMethod)?;
    // Only the extended CONNECT, which names a protocol and a path, is proxied; a classic
    // CONNECT asks for a raw TCP tunnel, which an edge load balancer does not open.
    let protocol = match (method == Method::CONNECT, pseudo.protocol) {
        (true, None) => return Err(Malformed::ConnectNotSupported),
        (false, Some(_)) => return Err(Malformed::ProtocolWithoutConnect),
        (true, Some(protocol)) => Some(
            std::str::from_utf8(protocol)
                .map_err(|_| Malformed::InvalidValue)?
                .to_ascii_lowercase(),
        ),
        (false, None) => None,
    };
    let scheme = pseudo
        .scheme
        .ok_or(Malformed::MissingPseudoHeader(":scheme"))?;
    let path = pseudo.path.ok_or(Malformed::MissingPseudoHeader(":path"))?;
    if path.is_empty() || !(path[0] == b'/' || (path == b"*" && method == Method::OPTIONS)) {
        return Err(Malformed::InvalidPath);
    }
    // RFC 9114 §4.3.1: http and https requests carry :authority or host, and they must agree.
    let authority = match (pseudo.authority, host) {
        (Some(a), Some(h)) if a != h => return Err(Malformed::AuthorityMismatch),
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(Malformed::MissingPseudoHeader(":authority")),
    };
    if authority.is_empty() {
        return Err(Malformed::InvalidAuthority);
    }
    let uri = build_uri(scheme, authority, path, &mut text)?;

    if !cookies.is_empty() {
        // RFC 9114 §4.2.1: crumbs are rejoined with "; " before passing to a non-HTTP/3 hop.
        headers.insert(http::header::COOKIE, text.joined(&cookies, b"; ")?);
    }
    add_forwarding_headers(&mut headers, client, &mut text);

    Ok(RequestHead {
        method,
        uri,
        headers,
        content_length,
        client_ip: client.ip,
        protocol,
    })
}

fn build_uri(
    scheme: &[u8],
    authority: &[u8],
    path: &[u8],
    text: &mut HeadText,
) -> Result<Uri, Malformed> {
    let scheme = http::uri::Scheme::try_from(scheme).map_err(|_| Malformed::InvalidPath)?;
    let authority = http::uri::Authority::from_maybe_shared(text.share(&[authority]))
        .map_err(|_| Malformed::InvalidAuthority)?;
    let path = http::uri::PathAndQuery::from_maybe_shared(text.share(&[path]))
        .map_err(|_| Malformed::InvalidPath)?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).map_err(|_| Malformed::InvalidPath)
}

fn parse_content_length(value: &[u8]) -> Result<u64, Malformed> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
        return Err(Malformed::InvalidContentLength);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed::InvalidContentLength)
}

/// RFC 9110 §5.5: no NUL, CR or LF, and no leading or trailing whitespace.
fn valid_value(value: &[u8]) -> bool {
    let edge_ok = |b: Option<&u8>| !matches!(b, Some(b' ') | Some(b'\t'));
    !value.iter().any(|b| matches!(b, 0 | b'\r' | b'\n'))
        && edge_ok(value.first())
        && edge_ok(value.last())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn add_forwarding_headers(headers: &mut HeaderMap, client: ClientInfo, text: &mut HeadText) {
    let mut address = [0u8; MAX_ADDRESS_TEXT];
    let ip = address_text(client.ip, &mut address);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => text.value(&[existing.as_bytes(), b", ", ip]),
        None => text.value(&[ip]),
    };
    if let Ok(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
}

/// The longest text of an IPv6 address (an IPv4-mapped one written in full).
const MAX_ADDRESS_TEXT: usize = 45;

/// `ip` as text in `out`. IPv4 addresses, most clients', are written by hand: `Display` goes
/// through the formatting machinery and a `String`, a measurable part of each request.
fn address_text(ip: IpAddr, out: &mut [u8; MAX_ADDRESS_TEXT]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    out[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    out[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                out[n] = b'0' + octet % 10;
                n += 1;
            }
            &out[..n]
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            // Cannot fail: the longest form fits the buffer.
            let _ = write!(cursor, "{v6}");
            let n = cursor.position() as usize;
            &out[..n]
        }
    }
}

/// Validates HTTP/3 request trailers and converts them for HTTP/2. Pseudo-headers are forbidden in
/// trailers (RFC 9114 §4.3).
pub fn translate_request_trailers<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<HeaderMap, Malformed> {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        if name.starts_with(b":") {
            return Err(Malformed::PseudoHeaderAfterRegular);
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(Malformed::UppercaseName);
        }
        if CONNECTION_SPECIFIC.contains(&name) {
            return Err(Malformed::ConnectionSpecific);
        }
        let header_name = HeaderName::from_bytes(name).map_err(|_| Malformed::InvalidName)?;
        let header_value = HeaderValue::from_bytes(value).map_err(|_| Malformed::InvalidValue)?;
        map.append(header_name, header_value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo {
            ip: "192.0.2.7".parse().unwrap(),
        }
    }

    fn request(fields: &[(&str, &str)]) -> Result<RequestHead, Malformed> {
        translate_request(
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            client(),
        )
    }

    const BASE: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/a?b=c"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        BASE.iter().chain(extra).copied().collect()
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut out = [0u8; MAX_ADDRESS_TEXT];
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.9.255",
            "192.0.2.7",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(address_text(ip, &mut out), ip.to_string().as_bytes());
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 0, 99, octet]);
            assert_eq!(address_text(ip, &mut out), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn valid_request_translates() {
        let head = request(&with(&[("accept", "*/*")])).unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.to_string(), "https://example.com/a?b=c");
        assert_eq!(head.headers["accept"], "*/*");
        assert_eq!(head.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(head.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn cookie_crumbs_are_rejoined() {
        let head = request(&with(&[("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")])).unwrap();
        assert_eq!(head.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(head.headers["cookie"], "a=1; b=2");
    }

    #[test]
    fn forwarded_for_chain_is_extended() {
        let head = request(&with(&[("x-forwarded-for", "198.51.100.1")])).unwrap();
        assert_eq!(head.headers["x-forwarded-for"], "198.51.100.1, 192.0.2.7");
    }

    #[test]
    fn missing_pseudo_headers_are_malformed() {
        for missing in [":method", ":scheme", ":path"] {
            let fields: Vec<_> = BASE
                .iter()
                .filter(|(n, _)| *n != missing)
                .copied()
                .collect();
            assert_eq!(
                request(&fields).unwrap_err(),
                Malformed::MissingPseudoHeader(missing)
            );
        }
        let no_authority: Vec<_> = BASE
            .iter()
            .filter(|(n, _)| *n != ":authority")
            .copied()
            .collect();
        assert_eq!(
            request(&no_authority).unwrap_err(),
            Malformed::MissingPseudoHeader(":authority")
        );
        let mut with_host = no_authority.clone();
        with_host.push(("host", "example.com"));
        assert_eq!(request(&with_host).unwrap().uri.host(), Some("example.com"));
    }

    #[test]
    fn ordering_and_duplicates_are_checked() {
        let mut late = with(&[("accept", "*/*")]);
        late.push((":method", "GET"));
        assert_eq!(
            request(&late).unwrap_err(),
            Malformed::PseudoHeaderAfterRegular
        );
        let mut dup: Vec<_> = BASE.to_vec();
        dup.insert(1, (":path", "/other"));
        assert_eq!(
            request(&dup).unwrap_err(),
            Malformed::DuplicatePseudoHeader(":path")
        );
        let mut unknown: Vec<_> = BASE.to_vec();
        unknown.insert(0, (":status", "200"));
        assert_eq!(
            request(&unknown).unwrap_err(),
            Malformed::UnknownPseudoHeader
        );
    }

    #[test]
    fn names_and_values_are_checked() {
        assert_eq!(
            request(&with(&[("Accept", "*/*")])).unwrap_err(),
            Malformed::UppercaseName
        );
        for field in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
            assert_eq!(
                request(&with(&[(field, "x")])).unwrap_err(),
                Malformed::ConnectionSpecific
            );
        }
        assert_eq!(
            request(&with(&[("te", "gzip")])).unwrap_err(),
            Malformed::InvalidTe
        );
        assert!(request(&with(&[("te", "trailers")])).is_ok());
        assert_eq!(
            request(&with(&[("x", "a\r\nb")])).unwrap_err(),
            Malformed::InvalidValue
        );
        assert_eq!(
            request(&with(&[("x", " padded")])).unwrap_err(),
            Malformed::InvalidValue
        );
        assert_eq!(
            request(&with(&[("bad name", "x")])).unwrap_err(),
            Malformed::InvalidName
        );
    }

    #[test]
    fn content_length_is_parsed_and_checked() {
        assert_eq!(
            request(&with(&[("content-length", "42")]))
                .unwrap()
                .content_length,
            Some(42)
        );
        assert_eq!(
            request(&with(&[("content-length", "4x")])).unwrap_err(),
            Malformed::InvalidContentLength
        );
        assert_eq!(
            request(&with(&[("content-length", "1"), ("content-length", "2")])).unwrap_err(),
            Malformed::InvalidContentLength
        );
    }

    #[test]
    fn authority_and_host_must_agree() {
        assert_eq!(
            request(&with(&[("host", "other.example")])).unwrap_err(),
            Malformed::AuthorityMismatch
        );
    }

    #[test]
    fn connect_is_refused() {
        let fields = [(":method", "CONNECT"), (":authority", "example.com:443")];
        assert_eq!(
            request(&fields).unwrap_err(),
            Malformed::ConnectNotSupported
        );
    }

    #[test]
    fn extended_connect_names_its_protocol_and_protocol_needs_connect() {
        let fields = [
            (":method", "CONNECT"),
            (":protocol", "WebSocket"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/chat"),
            ("sec-websocket-version", "13"),
        ];
        let head = request(&fields).unwrap();
        assert_eq!(head.method, Method::CONNECT);
        assert_eq!(head.protocol.as_deref(), Some("websocket"));
        assert_eq!(head.uri.path(), "/chat");
        let mut get = fields;
        get[0] = (":method", "GET");
        assert_eq!(
            request(&get).unwrap_err(),
            Malformed::ProtocolWithoutConnect
        );
        assert_eq!(request(&with(&[])).unwrap().protocol, None);
    }
}

/// Generated field sections: `scripts/fuzz.sh` runs every `fuzz_` test for longer.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Names a client sends, pseudo-headers and connection-specific ones among them, or bytes.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                ":method",
                ":scheme",
                ":authority",
                ":path",
                ":protocol",
                ":status",
                "host",
                "cookie",
                "content-length",
                "te",
                "connection",
                "keep-alive",
                "transfer-encoding",
                "upgrade",
                "x-ok",
                "X-Upper",
            ])
            .prop_map(|n| n.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "GET",
                "CONNECT",
                "https",
                "/",
                "/a?b",
                "example.com",
                "10",
                "-1",
                "trailers",
                "websocket",
                "a=b",
            ])
            .prop_map(|v| v.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_translate_request_never_panics_nor_forwards_hop_fields(
            fields in proptest::collection::vec((name(), value()), 0..16),
        ) {
            let client = ClientInfo { ip: "192.0.2.1".parse().unwrap() };
            let pairs = fields.iter().map(|(n, v)| (&n[..], &v[..]));
            if let Ok(head) = translate_request(pairs, client) {
                for hop in CONNECTION_SPECIFIC {
                    prop_assert!(!head.headers.contains_key(
                        std::str::from_utf8(hop).unwrap()
                    ));
                }
            }
            let pairs = fields.iter().map(|(n, v)| (&n[..], &v[..]));
            let _ = translate_request_trailers(pairs);
        }
    }
}
