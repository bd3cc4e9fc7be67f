//! Response translation: a backend's response head or trailers into the fields sent to the
//! client, `:status` first, without fields that are connection-specific (an HTTP/2 peer should
//! never send them, but a lenient one might; RFC 9113 §8.2.2, RFC 9114 §4.2).
//!
//! Yields borrowed name/value pairs so that a downstream encoder takes them without copies.

use http::header::{ALT_SVC, TE};
use http::{HeaderMap, HeaderValue};

use super::CONNECTION_SPECIFIC;

/// The `:status` pseudo-header value for `status`: three ASCII digits (RFC 9110 §15), without
/// allocating. A value outside 100..=999 (never produced by the h2 client) becomes 500.
pub fn status_digits(status: u16) -> [u8; 3] {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    [
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

/// `:status` (from [`status_digits`]), then every forwardable field of `headers`.
pub fn response_fields<'a>(
    status: &'a [u8; 3],
    headers: &'a HeaderMap,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    std::iter::once((&b":status"[..], &status[..])).chain(forwardable_fields(headers))
}

/// The fields of `headers` (trailers in either direction, or a response head) that may cross
/// to the next hop.
pub fn forwardable_fields(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .filter(|(name, _)| !CONNECTION_SPECIFIC.contains(name))
}

/// A backend's response head or trailers as the header map an HTTP/2 or HTTP/1.1 client gets:
/// without connection-specific fields or `te` (a request field, which `h2` refuses to send;
/// hyper writes its own framing), and with the listener's `Alt-Svc` when given.
pub fn tcp_client_fields(headers: &HeaderMap, alt_svc: Option<&HeaderValue>) -> HeaderMap {
    let mut fields = HeaderMap::with_capacity(headers.len() + usize::from(alt_svc.is_some()));
    for (name, value) in headers {
        if *name != TE && !CONNECTION_SPECIFIC.contains(&name.as_str().as_bytes()) {
            fields.append(name.clone(), value.clone());
        }
    }
    if let Some(alt_svc) = alt_svc {
        fields.insert(ALT_SVC, alt_svc.clone());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_clients_get_no_hop_fields_and_the_alt_svc_given() {
        let mut map = HeaderMap::new();
        map.append("set-cookie", HeaderValue::from_static("a=1"));
        map.append("set-cookie", HeaderValue::from_static("b=2"));
        map.insert("te", HeaderValue::from_static("trailers"));
        map.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        map.insert("alt-svc", HeaderValue::from_static("h2=\":9\""));
        let alt_svc = HeaderValue::from_static("h3=\":443\"; ma=60");
        let fields = tcp_client_fields(&map, Some(&alt_svc));
        let cookies: Vec<_> = fields.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(fields.get("te").is_none() && fields.get("keep-alive").is_none());
        assert_eq!(
            fields.get_all("alt-svc").iter().collect::<Vec<_>>(),
            [&alt_svc]
        );
        assert_eq!(tcp_client_fields(&map, None)["alt-svc"], "h2=\":9\"");
    }

    #[test]
    fn response_translation_puts_status_first_and_drops_hop_by_hop() {
        let mut map = HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("text/plain"));
        map.insert("connection", HeaderValue::from_static("close"));
        map.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let status = status_digits(204);
        let fields: Vec<_> = response_fields(&status, &map).collect();
        assert_eq!(
            fields,
            vec![
                (&b":status"[..], &b"204"[..]),
                (&b"content-type"[..], &b"text/plain"[..])
            ]
        );
    }

    #[test]
    fn every_status_has_three_digits() {
        assert_eq!(&status_digits(200), b"200");
        assert_eq!(&status_digits(599), b"599");
        assert_eq!(&status_digits(103), b"103");
        assert_eq!(&status_digits(1000), b"500");
        assert_eq!(&status_digits(7), b"500");
    }
}

/// Generated response heads: `scripts/fuzz.sh` runs every `fuzz_` test for longer.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_response_fields_never_carry_hop_fields(
            fields in proptest::collection::vec(
                (prop::sample::select(vec![
                    "content-type", "set-cookie", "te", "connection", "keep-alive",
                    "transfer-encoding", "upgrade", "proxy-connection", "x-a", "server",
                ]), proptest::collection::vec(32u8..127, 0..16)),
                0..16),
            status in 100u16..1000,
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in &fields {
                headers.append(*name, HeaderValue::from_bytes(value).unwrap());
            }
            let digits = status_digits(status);
            let to_h3: Vec<_> = response_fields(&digits, &headers).collect();
            let expected = status.to_string();
            prop_assert_eq!(to_h3[0].1, expected.as_bytes());
            for (name, _) in &to_h3 {
                prop_assert!(!CONNECTION_SPECIFIC.contains(name));
            }
            let to_tcp = tcp_client_fields(&headers, None);
            prop_assert!(!to_tcp.contains_key(TE));
            for hop in CONNECTION_SPECIFIC {
                prop_assert!(!to_tcp.contains_key(std::str::from_utf8(hop).unwrap()));
            }
        }
    }
}
