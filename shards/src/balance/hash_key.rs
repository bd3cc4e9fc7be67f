//! The request attribute `consistent-hash` balancing hashes (`load_balancing.key`).
//!
//! Sans-IO: reads the key from a translated request head and hashes it with the balancer's
//! stable hash, so the same key maps to the same backend on every shard and every process.

use crate::balance::stable_hash;
use crate::http::RequestHead;
use crate::plan::HashKey;

/// The hash of the request's key, or `None` when the request does not carry it (the balancer
/// then picks at random rather than sending every keyless request to one backend).
pub fn request_hash(key: &HashKey, head: &RequestHead) -> Option<u64> {
    match key {
        HashKey::Header(name) => head
            .headers
            .get(name.as_str())
            .map(|v| stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => head
            .headers
            .get(http::header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|cookies| {
                cookies.split(';').find_map(|pair| {
                    let (n, v) = pair.trim().split_once('=')?;
                    (n == name).then(|| stable_hash(v.as_bytes()))
                })
            }),
        HashKey::Query(name) => head.uri.query().and_then(|query| {
            query.split('&').find_map(|pair| {
                let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                (n == name).then(|| stable_hash(v.as_bytes()))
            })
        }),
        HashKey::Path => Some(stable_hash(head.uri.path().as_bytes())),
        HashKey::Authority => head
            .uri
            .authority()
            .map(|a| stable_hash(a.as_str().as_bytes())),
        HashKey::ClientIp => Some(stable_hash(head.client_ip.to_string().as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{translate_request, ClientInfo};

    fn head(path: &str, extra: &[(&str, &str)]) -> RequestHead {
        let mut fields = vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", path),
        ];
        fields.extend_from_slice(extra);
        translate_request(
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            ClientInfo {
                ip: "192.0.2.1".parse().unwrap(),
            },
        )
        .unwrap()
    }

    #[test]
    fn each_key_kind_reads_its_attribute() {
        let h = head(
            "/a?user=7&x=1",
            &[("x-user", "42"), ("cookie", "sid=abc; other=1")],
        );
        let hash = |k: &str| request_hash(&HashKey::parse(k).unwrap(), &h);
        assert_eq!(hash("header:X-User"), Some(stable_hash(b"42")));
        assert_eq!(hash("cookie:sid"), Some(stable_hash(b"abc")));
        assert_eq!(hash("query:user"), Some(stable_hash(b"7")));
        assert_eq!(hash("path"), Some(stable_hash(b"/a")));
        assert_eq!(hash("authority"), Some(stable_hash(b"example.com")));
        assert_eq!(hash("client-ip"), Some(stable_hash(b"192.0.2.1")));
        assert_eq!(hash("header:absent"), None);
        assert_eq!(hash("cookie:absent"), None);
        assert_eq!(hash("query:absent"), None);
    }

    #[test]
    fn bad_key_specs_are_rejected() {
        for bad in ["header:", "cookie", "ip", ""] {
            assert!(HashKey::parse(bad).is_none(), "{bad}");
        }
    }
}
