//! Bounds on one request (`[limits]`, `[upstream.NAME.limits]`) and the status each one earns,
//! as plain functions: measured while the head is translated, decided before any backend is
//! chosen, and answered on the request's own stream.

use crate::plan::RequestLimits;

use super::decision::LocalReply;

/// RFC 9114 §4.2.2 (and RFC 9113 §6.5.2): each field costs its name and value plus 32 bytes.
pub const FIELD_OVERHEAD: usize = 32;

/// What was measured of a request head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadSize {
    pub fields: usize,
    pub field_bytes: usize,
    pub uri_bytes: usize,
    pub content_length: Option<u64>,
}

impl HeadSize {
    pub fn count(&mut self, name: &[u8], value: &[u8]) {
        self.fields += 1;
        self.field_bytes += name.len() + value.len() + FIELD_OVERHEAD;
    }
}

/// Which limit a request broke, for the reply and the `reason` label of
/// `spooky_requests_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Header,
    Uri,
    Body,
    Rate,
    /// The shard is shedding requests (overload stage 3).
    Overload,
}

impl Exceeded {
    pub const ALL: [Exceeded; 5] = [
        Exceeded::Header,
        Exceeded::Uri,
        Exceeded::Body,
        Exceeded::Rate,
        Exceeded::Overload,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Exceeded::Header => "header_too_large",
            Exceeded::Uri => "uri_too_long",
            Exceeded::Body => "body_too_large",
            Exceeded::Rate => "rate",
            Exceeded::Overload => "overload",
        }
    }

    pub fn reply(self) -> LocalReply {
        match self {
            Exceeded::Header => LocalReply {
                status: 431,
                message: "request header fields too large",
                retry_after: None,
            },
            Exceeded::Uri => LocalReply {
                status: 414,
                message: "request target too long",
                retry_after: None,
            },
            Exceeded::Body => LocalReply {
                status: 413,
                message: "request body too large",
                retry_after: None,
            },
            // RFC 6585 §4: tell the client when to come back; the bucket refills within a
            // second at any rate of 1/s or more.
            Exceeded::Rate => LocalReply {
                status: 429,
                message: "too many requests",
                retry_after: Some("1"),
            },
            Exceeded::Overload => LocalReply {
                status: 503,
                message: "overloaded, try again shortly",
                retry_after: Some("1"),
            },
        }
    }
}

/// The first limit the head breaks, in the order a client would fix them.
pub fn check(limits: &RequestLimits, size: &HeadSize) -> Option<Exceeded> {
    if size.fields > limits.max_headers || size.field_bytes > limits.max_header_bytes {
        return Some(Exceeded::Header);
    }
    if size.uri_bytes > limits.max_uri_bytes {
        return Some(Exceeded::Uri);
    }
    if let (Some(max), Some(declared)) = (limits.max_body_bytes, size.content_length) {
        if declared > max {
            return Some(Exceeded::Body);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_header_bytes: 1000,
            max_headers: 10,
            max_uri_bytes: 100,
            max_body_bytes: Some(5000),
            rate: None,
        }
    }

    fn size(fields: usize, field_bytes: usize, uri: usize, length: Option<u64>) -> HeadSize {
        HeadSize {
            fields,
            field_bytes,
            uri_bytes: uri,
            content_length: length,
        }
    }

    #[test]
    fn each_limit_at_and_past_its_edge() {
        let l = limits();
        assert_eq!(check(&l, &size(10, 1000, 100, Some(5000))), None);
        assert_eq!(check(&l, &size(11, 500, 10, None)), Some(Exceeded::Header));
        assert_eq!(check(&l, &size(5, 1001, 10, None)), Some(Exceeded::Header));
        assert_eq!(check(&l, &size(5, 500, 101, None)), Some(Exceeded::Uri));
        assert_eq!(
            check(&l, &size(5, 500, 10, Some(5001))),
            Some(Exceeded::Body)
        );
        // Headers first: a client must fix those before anything else is read.
        assert_eq!(
            check(&l, &size(11, 5000, 101, Some(9999))),
            Some(Exceeded::Header)
        );
    }

    #[test]
    fn no_body_limit_means_any_length() {
        let l = RequestLimits {
            max_body_bytes: None,
            ..limits()
        };
        assert_eq!(check(&l, &size(1, 10, 1, Some(u64::MAX))), None);
    }

    #[test]
    fn fields_are_counted_as_rfc_9114_sizes_them() {
        let mut s = HeadSize::default();
        s.count(b":path", b"/");
        s.count(b"user-agent", b"x");
        assert_eq!(s.fields, 2);
        assert_eq!(s.field_bytes, 6 + 32 + 11 + 32);
    }

    #[test]
    fn statuses() {
        let statuses: Vec<u16> = Exceeded::ALL.iter().map(|e| e.reply().status).collect();
        assert_eq!(statuses, [431, 414, 413, 429, 503]);
        assert_eq!(Exceeded::Rate.reply().retry_after, Some("1"));
    }
}
