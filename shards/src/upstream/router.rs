//! Request routing: which upstream serves a request.
//!
//! A route names a host (exact, or `*.example.com` for any subdomain), a path prefix and a
//! method; host and method are optional. Among the routes a request matches, the most specific
//! wins, compared in this order: exact host over wildcard host (the longer wildcard suffix first)
//! over no host; then the longest path prefix (plain byte prefix, as Envoy and nginx compare
//! prefix routes); then a route naming the method over one that does not. Configuration
//! validation rejects two upstreams with the same (host, prefix, method), so there is never a tie.

use crate::plan::UpstreamPlan;

/// Index of an upstream in the plan.
pub type UpstreamIndex = usize;

enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

struct Route {
    host: HostMatch,
    prefix: String,
    method: Option<String>,
    upstream: UpstreamIndex,
}

pub struct Router {
    routes: Vec<Route>,
}

/// How specifically a route matched; larger is more specific.
type Specificity = (u8, usize, usize, bool);

impl Router {
    pub fn new(upstreams: &[UpstreamPlan]) -> Self {
        let routes = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| Route {
                host: match u.route.host.as_deref() {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                        None => HostMatch::Exact(h.to_string()),
                    },
                },
                prefix: u.route.path_prefix.clone(),
                method: u.route.method.clone(),
                upstream: i,
            })
            .collect();
        Router { routes }
    }

    /// The upstream for a request. `host` is the `:authority` (a port is ignored, case is not
    /// significant); `path` may include the query string.
    pub fn route(&self, host: &str, path: &[u8], method: &str) -> Option<UpstreamIndex> {
        let host = strip_port(host);
        self.routes
            .iter()
            .filter_map(|route| specificity(route, host, path, method).map(|s| (s, route.upstream)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, upstream)| upstream)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn specificity(route: &Route, host: &str, path: &[u8], method: &str) -> Option<Specificity> {
    let host_rank = match &route.host {
        HostMatch::Any => (0, 0),
        HostMatch::Exact(h) => (h.eq_ignore_ascii_case(host)).then_some((2, h.len()))?,
        HostMatch::Suffix(suffix) => {
            let matches = host.len() > suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
            matches.then_some((1, suffix.len()))?
        }
    };
    if !path.starts_with(route.prefix.as_bytes()) {
        return None;
    }
    let method_named = match &route.method {
        None => false,
        Some(m) if m == method => true,
        Some(_) => return None,
    };
    Some((host_rank.0, host_rank.1, route.prefix.len(), method_named))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Balancing, RoutePlan, UpstreamTimeouts};

    fn upstream(host: Option<&str>, prefix: &str, method: Option<&str>) -> UpstreamPlan {
        UpstreamPlan {
            name: prefix.into(),
            route: RoutePlan {
                path_prefix: prefix.into(),
                host: host.map(str::to_string),
                method: method.map(str::to_string),
            },
            balancing: Balancing::RoundRobin,
            timeouts: UpstreamTimeouts::default(),
            retries: 0,
            retry_budget: 0.0,
            protocol: crate::plan::BackendProtocol::Http2,
            tls: None,
            resolve_interval: crate::plan::DEFAULT_RESOLVE_INTERVAL,
            limits: Default::default(),
            backends: vec![],
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let router = Router::new(&[
            upstream(None, "/", None),
            upstream(None, "/api", None),
            upstream(None, "/api/v2", None),
        ]);
        assert_eq!(router.route("h", b"/index.html", "GET"), Some(0));
        assert_eq!(router.route("h", b"/api/users", "GET"), Some(1));
        assert_eq!(router.route("h", b"/api/v2/users?x=1", "GET"), Some(2));
    }

    #[test]
    fn no_match_without_catch_all() {
        let router = Router::new(&[upstream(None, "/api", None)]);
        assert_eq!(router.route("h", b"/static/a.css", "GET"), None);
        assert_eq!(router.route("h", b"/ap", "GET"), None);
    }

    #[test]
    fn host_comes_first_then_prefix_then_method() {
        let router = Router::new(&[
            upstream(None, "/", None),                              // 0
            upstream(Some("*.example.com"), "/", None),             // 1
            upstream(Some("*.eu.example.com"), "/", None),          // 2
            upstream(Some("api.example.com"), "/", None),           // 3
            upstream(Some("api.example.com"), "/v2", None),         // 4
            upstream(Some("api.example.com"), "/v2", Some("POST")), // 5
        ]);
        assert_eq!(router.route("other.org", b"/v2", "GET"), Some(0));
        assert_eq!(router.route("www.example.com", b"/v2", "GET"), Some(1));
        assert_eq!(router.route("x.eu.example.com:443", b"/", "GET"), Some(2));
        assert_eq!(router.route("API.example.com", b"/", "GET"), Some(3));
        assert_eq!(router.route("api.example.com", b"/v2/x", "GET"), Some(4));
        assert_eq!(router.route("api.example.com", b"/v2/x", "POST"), Some(5));
        // A wildcard does not match the bare domain.
        assert_eq!(router.route("example.com", b"/", "GET"), Some(0));
    }

    #[test]
    fn ports_and_brackets_are_ignored_in_hosts() {
        assert_eq!(strip_port("a.example:8443"), "a.example");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("a.example"), "a.example");
    }
}
