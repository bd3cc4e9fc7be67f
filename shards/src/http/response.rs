//! Response translation: a backend's response head or trailers into the fields sent to the
//! client, `:status` first, without fields that are connection-specific (an HTTP/2 peer should
//! never send them, but a lenient one might; RFC 9113 §8.2.2, RFC 9114 §4.2).
//!
//! Yields borrowed name/value pairs so that a downstream encoder takes them without copies.

use http::HeaderMap;

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
