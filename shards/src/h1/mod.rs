//! HTTP/1.1 from clients (RFC 9112) on the TCP+TLS listener: a parsed request head as the field
//! list the proxy admits, and each request as a [`Downstream`](crate::http::Downstream).
//!
//! hyper owns the wire: parsing, keep-alive, pipelined requests answered in order, chunked
//! bodies both ways, `Expect: 100-continue` (answered when the proxy first reads the body) and
//! `Connection: close` when the shard drains. What is left here is what a proxy must do to the
//! head itself: drop the fields that belong to this one hop (RFC 9110 §7.6.1) and name the
//! target the way HTTP/2 and HTTP/3 do (`:authority` from `Host`, RFC 9112 §3.2).

pub mod stream;

pub use stream::{H1Stream, ResponseAborted};

use http::header::{CONNECTION, HOST, TE};

use crate::http::{lists, Malformed, CONNECTION_SPECIFIC};

/// Fields of this hop only, beyond the connection-specific ones HTTP/2 forbids: `expect` was
/// answered here (hyper sends the `100 Continue`), and `http2-settings` belongs to an h2c
/// upgrade, which this listener does not offer.
const HOP_ONLY: [&str; 2] = ["expect", "http2-settings"];

/// Field names and values as the proxy admits them, borrowed from the parsed request.
pub type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The pseudo-headers and fields of an HTTP/1.1 request, in the shape HTTP/3 requests are
/// admitted in ([`crate::proxy::admit`]), without this hop's own fields.
///
/// An absolute-form target names the authority itself and `Host` is then ignored (RFC 9112
/// §3.2.2); otherwise `Host` is the authority, and a request with two of them is refused (RFC
/// 9112 §3.2).
pub fn request_fields(parts: &http::request::Parts) -> Result<Fields<'_>, Malformed> {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(parts.headers.len() + 4);
    fields.push((b":method", parts.method.as_str().as_bytes()));
    fields.push((b":scheme", b"https"));
    let absolute_form = parts.uri.authority();
    if let Some(authority) = absolute_form {
        fields.push((b":authority", authority.as_str().as_bytes()));
    } else if parts.headers.get_all(HOST).iter().count() > 1 {
        return Err(Malformed::InvalidAuthority);
    }
    let path = match parts.uri.path_and_query() {
        Some(path) => path.as_str(),
        // `https://example.com` with nothing after the authority targets `/`.
        None if absolute_form.is_some() => "/",
        None => "",
    };
    fields.push((b":path", path.as_bytes()));
    let listed = parts.headers.get_all(CONNECTION);
    for (name, value) in &parts.headers {
        let name_text = name.as_str();
        if *name == HOST && absolute_form.is_some() {
            continue;
        }
        if *name == TE {
            // Only `trailers` means anything beyond this hop (RFC 9110 §10.1.4).
            if lists(value, "trailers") {
                fields.push((b"te", b"trailers"));
            }
            continue;
        }
        if CONNECTION_SPECIFIC.contains(&name_text.as_bytes())
            || HOP_ONLY.contains(&name_text)
            || listed.iter().any(|connection| lists(connection, name_text))
        {
            continue;
        }
        fields.push((name_text.as_bytes(), value.as_bytes()));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{translate_request, ClientInfo, RequestHead};

    fn translated(request: http::Request<()>) -> Result<RequestHead, Malformed> {
        let parts = request.into_parts().0;
        let client = ClientInfo {
            ip: "198.51.100.7".parse().unwrap(),
        };
        translate_request(request_fields(&parts)?, client)
    }

    #[test]
    fn host_becomes_the_authority_and_forwarding_headers_are_added() {
        let request = http::Request::builder()
            .method("GET")
            .uri("/a/b?c=d")
            .header("host", "example.com:8443")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let head = translated(request).unwrap();
        assert_eq!(head.uri.to_string(), "https://example.com:8443/a/b?c=d");
        assert_eq!(head.headers["accept"], "*/*");
        assert_eq!(head.headers["x-forwarded-proto"], "https");
        assert_eq!(head.headers["x-forwarded-for"], "198.51.100.7");
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_lists_are_dropped() {
        let request = http::Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", "example.com")
            .header("connection", "keep-alive, X-Hop")
            .header("connection", "x-other-hop")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .header("expect", "100-continue")
            .header("x-hop", "1")
            .header("x-other-hop", "2")
            .header("x-kept", "3")
            .body(())
            .unwrap();
        let head = translated(request).unwrap();
        let names: Vec<&str> = head.headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(
            names,
            ["host", "x-kept", "x-forwarded-for", "x-forwarded-proto"]
        );
    }

    #[test]
    fn te_passes_only_as_trailers() {
        let with_trailers = http::Request::builder()
            .uri("/")
            .header("host", "example.com")
            .header("te", "gzip, Trailers")
            .body(())
            .unwrap();
        assert_eq!(translated(with_trailers).unwrap().headers["te"], "trailers");
        let without = http::Request::builder()
            .uri("/")
            .header("host", "example.com")
            .header("te", "gzip")
            .body(())
            .unwrap();
        assert!(translated(without).unwrap().headers.get("te").is_none());
    }

    #[test]
    fn an_absolute_form_target_overrides_host() {
        let request = http::Request::builder()
            .uri("https://api.example.com/v1")
            .header("host", "other.example.com")
            .body(())
            .unwrap();
        let head = translated(request).unwrap();
        assert_eq!(head.uri.to_string(), "https://api.example.com/v1");
        assert!(head.headers.get("host").is_none());
        let bare = http::Request::builder()
            .uri("https://api.example.com")
            .body(())
            .unwrap();
        assert_eq!(translated(bare).unwrap().uri.path(), "/");
    }

    #[test]
    fn two_hosts_or_none_are_malformed() {
        let two = http::Request::builder()
            .uri("/")
            .header("host", "a.example.com")
            .header("host", "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(translated(two).unwrap_err(), Malformed::InvalidAuthority);
        let none = http::Request::builder().uri("/").body(()).unwrap();
        assert_eq!(
            translated(none).unwrap_err(),
            Malformed::MissingPseudoHeader(":authority")
        );
    }
}
