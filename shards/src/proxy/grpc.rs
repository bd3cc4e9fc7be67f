//! gRPC clients get Spooky's own replies in gRPC's terms: a "Trailers-Only" response (HTTP 200,
//! `content-type: application/grpc`, `grpc-status` and `grpc-message` in the header section,
//! end of stream) instead of a plain-text error page, which a gRPC client would report only as
//! a protocol error. As Envoy does for its local replies.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};

/// Whether a request is gRPC: `content-type` is `application/grpc` or one of its
/// `application/grpc+FORMAT` / `;parameters` forms (gRPC over HTTP/2, "Requests"). gRPC-Web
/// (`application/grpc-web`) carries its trailers in the body and is not included.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    // Asked of every proxied request: compared in place, without a lowercase copy.
    const GRPC: &[u8] = b"application/grpc";
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= GRPC.len()
            && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// The gRPC status for an HTTP status Spooky would have answered, following gRPC's
/// "HTTP to gRPC Status Code Mapping", except that Spooky's 504 is always a timeout, which gRPC
/// calls DEADLINE_EXCEEDED (Envoy's choice too).
pub fn status_for(http_status: u16) -> u8 {
    match http_status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        504 => 4,              // DEADLINE_EXCEEDED
        429 | 502 | 503 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// The header section of a Trailers-Only reply. `message` is Spooky's own ASCII text, which
/// needs no percent-encoding (`grpc-message` allows printable ASCII but `%`).
pub fn trailers_only(http_status: u16, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(status_for(http_status))),
    );
    if let Ok(value) = HeaderValue::from_str(&message.replace('%', "%25")) {
        headers.insert("grpc-message", value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn grpc_content_types_and_not_grpc_web() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=x",
        ] {
            assert!(is_grpc(&with_type(yes)), "{yes}");
        }
        for no in ["application/grpc-web", "application/json", "text/plain"] {
            assert!(!is_grpc(&with_type(no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn local_failures_map_to_the_statuses_grpc_clients_retry_on() {
        assert_eq!(status_for(502), 14);
        assert_eq!(status_for(503), 14);
        assert_eq!(status_for(504), 4);
        assert_eq!(status_for(404), 12);
        let headers = trailers_only(502, "backend unreachable");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "backend unreachable");
        assert_eq!(trailers_only(503, "50% gone")["grpc-message"], "50%25 gone");
    }
}
