//! HTTP/2 from clients (RFC 9113) on the TCP+TLS listener: a received request's head as the
//! field list the proxy admits, and each request stream as a [`Downstream`](crate::http::Downstream).
//!
//! The `h2` crate owns the framing, HPACK and flow control; the connection is driven by the task
//! that accepts its streams ([`crate::shard`]), and each request's task talks to its stream
//! through [`stream::H2Stream`].

pub mod stream;

pub use stream::H2Stream;

/// The pseudo-headers and fields of an HTTP/2 request, in the shape HTTP/3 requests are admitted
/// in ([`crate::proxy::admit`]): the same validation and translation serve both.
///
/// The `h2` crate has already rebuilt the URI from `:scheme`, `:authority` and `:path` and
/// refused connection-specific fields (RFC 9113 §8.2.2); a request that named its host only in
/// `host` has no authority in its URI, and `host` stands in for `:authority` as in HTTP/3.
pub fn request_fields(parts: &http::request::Parts) -> Vec<(&[u8], &[u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(parts.headers.len() + 4);
    fields.push((b":method", parts.method.as_str().as_bytes()));
    fields.push((
        b":scheme",
        parts.uri.scheme_str().unwrap_or("https").as_bytes(),
    ));
    if let Some(authority) = parts.uri.authority() {
        fields.push((b":authority", authority.as_str().as_bytes()));
    }
    // An empty path is refused by admission as an invalid `:path`.
    let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
    fields.push((b":path", path.as_bytes()));
    // h2 keeps an extended CONNECT's `:protocol` (RFC 8441 §4) as an extension.
    if let Some(protocol) = parts.extensions.get::<h2::ext::Protocol>() {
        fields.push((b":protocol", protocol.as_str().as_bytes()));
    }
    for (name, value) in &parts.headers {
        fields.push((name.as_str().as_bytes(), value.as_bytes()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{translate_request, ClientInfo};

    fn translated(request: http::Request<()>) -> crate::http::RequestHead {
        let parts = request.into_parts().0;
        let client = ClientInfo {
            ip: "192.0.2.9".parse().unwrap(),
        };
        translate_request(request_fields(&parts), client).unwrap()
    }

    #[test]
    fn an_h2_request_translates_like_an_h3_one() {
        let request = http::Request::builder()
            .method("POST")
            .uri("https://example.com/a?b=c")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("content-length", "3")
            .body(())
            .unwrap();
        let head = translated(request);
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.uri.to_string(), "https://example.com/a?b=c");
        assert_eq!(head.headers["cookie"], "a=1; b=2");
        assert_eq!(head.content_length, Some(3));
        assert_eq!(head.headers["x-forwarded-proto"], "https");
        assert_eq!(head.headers["x-forwarded-for"], "192.0.2.9");
    }

    #[test]
    fn host_stands_in_for_a_missing_authority() {
        let request = http::Request::builder()
            .uri("/x")
            .header("host", "example.net")
            .body(())
            .unwrap();
        let head = translated(request);
        assert_eq!(head.uri.to_string(), "https://example.net/x");
    }
}
