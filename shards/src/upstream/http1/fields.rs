//! Heads across the HTTP/1.1 hop: the proxy's request head as an HTTP/1.1 backend must read it,
//! and the backend's response head without the fields that belonged to its connection.
//!
//! The request head was validated as HTTP/2 and HTTP/3 define it, so it carries no
//! connection-specific fields; what changes is where the target lives (origin form plus `Host`,
//! RFC 9112 §3.2) and how `te` is announced. The response comes from a hop that may send any
//! field, so the hop-by-hop ones (RFC 9110 §7.6.1) are dropped before an HTTP/2 or HTTP/3
//! client sees them, where they are malformed (RFC 9113 §8.2.2).

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

use crate::http::{lists, RequestHead, CONNECTION_SPECIFIC};

/// The HTTP/1.1 request for `head`, with `body` as its body. `has_body`: a body follows.
///
/// A body of unknown length goes chunked whatever the method: hyper would otherwise send a GET
/// with no body at all. Request trailers reach the backend only when the request's `Trailer`
/// field names them (hyper writes no others, RFC 9110 §6.6.2 leaves it to the sender).
pub fn request<B>(head: &RequestHead, has_body: bool, body: B) -> Request<B> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.version_mut() = Version::HTTP_11;
    *request.uri_mut() = match head.uri.path_and_query() {
        Some(target) => Uri::from(target.clone()),
        None => Uri::from_static("/"),
    };
    let headers = request.headers_mut();
    headers.reserve(head.headers.len() + 3);
    if let Some(authority) = head.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(HOST, host);
        }
    }
    for (name, value) in &head.headers {
        if name != HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    // `te` is hop-by-hop: its sender lists it in `Connection` (RFC 9110 §10.1.4).
    if headers.contains_key(TE) {
        headers.insert(CONNECTION, HeaderValue::from_static("te"));
    }
    if has_body && head.content_length.is_none() {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    request
}

/// Drops the response fields that describe the backend's connection: the connection-specific
/// ones, `te`, and every field that `Connection` lists. `Trailer` stays: it names trailers still
/// to come, which the proxy forwards.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<http::HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in CONNECTION_SPECIFIC {
        if let Ok(name) = std::str::from_utf8(name) {
            headers.remove(name);
        }
    }
    headers.remove(TE);
}

/// Whether the backend said this is its connection's last response (RFC 9112 §9.6).
pub fn closes_connection(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| lists(value, "close"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{translate_request, ClientInfo};

    fn head(fields: &[(&str, &str)]) -> RequestHead {
        let fields: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let client = ClientInfo {
            ip: "192.0.2.1".parse().unwrap(),
        };
        translate_request(fields, client).unwrap()
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "api.example.com:8443"),
        (":path", "/v1/items?page=2"),
    ];

    #[test]
    fn the_target_is_origin_form_and_the_authority_becomes_host() {
        let mut fields = GET.to_vec();
        fields.push(("host", "api.example.com:8443"));
        fields.push(("accept", "*/*"));
        let request = request(&head(&fields), false, ());
        assert_eq!(request.uri().to_string(), "/v1/items?page=2");
        assert_eq!(request.version(), Version::HTTP_11);
        let hosts: Vec<_> = request.headers().get_all(HOST).iter().collect();
        assert_eq!(hosts, ["api.example.com:8443"]);
        assert_eq!(request.headers()["accept"], "*/*");
        assert!(request.headers().get(TRANSFER_ENCODING).is_none());
        assert!(request.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn te_trailers_is_announced_in_connection() {
        let mut fields = GET.to_vec();
        fields.push(("te", "trailers"));
        let request = request(&head(&fields), false, ());
        assert_eq!(request.headers()[TE], "trailers");
        assert_eq!(request.headers()[CONNECTION], "te");
    }

    #[test]
    fn a_body_of_unknown_length_is_chunked_even_on_get() {
        let request_unknown = request(&head(&GET), true, ());
        assert_eq!(request_unknown.headers()[TRANSFER_ENCODING], "chunked");
        let mut fields = GET.to_vec();
        fields[0] = (":method", "POST");
        fields.push(("content-length", "5"));
        let declared = request(&head(&fields), true, ());
        assert!(declared.headers().get(TRANSFER_ENCODING).is_none());
        assert_eq!(declared.headers()["content-length"], "5");
        assert_eq!(declared.method(), http::Method::POST);
    }

    #[test]
    fn hop_by_hop_response_fields_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Backend-Hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-backend-hop", "1"),
            ("trailer", "grpc-status"),
            ("content-type", "text/plain"),
        ] {
            headers.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["trailer", "content-type"]);
    }

    #[test]
    fn connection_close_is_seen_in_any_list_position() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("x-a, Close"));
        assert!(closes_connection(&headers));
        headers.clear();
        headers.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!closes_connection(&headers));
    }
}
