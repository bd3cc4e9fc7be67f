//! Request routing: which upstream serves a request path.
//!
//! The longest matching `path_prefix` wins. Prefixes are compared as plain byte prefixes, as Envoy
//! and nginx do for prefix routes; configuration validation has already rejected two upstreams with
//! the same prefix, so the match is never ambiguous.

use crate::plan::UpstreamPlan;

/// Index of an upstream in the plan.
pub type UpstreamIndex = usize;

pub struct Router {
    /// Sorted longest prefix first, so the first match is the best.
    routes: Vec<(String, UpstreamIndex)>,
}

impl Router {
    pub fn new(upstreams: &[UpstreamPlan]) -> Self {
        let mut routes: Vec<(String, UpstreamIndex)> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.route.path_prefix.clone(), i))
            .collect();
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Router { routes }
    }

    /// The upstream for a request `:path` (query string included or not; it never matters for a
    /// prefix that ends before it).
    pub fn route(&self, path: &[u8]) -> Option<UpstreamIndex> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_bytes()))
            .map(|(_, upstream)| *upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Balancing, RoutePlan, UpstreamTimeouts};

    fn upstream(prefix: &str) -> UpstreamPlan {
        UpstreamPlan {
            name: prefix.into(),
            route: RoutePlan {
                path_prefix: prefix.into(),
            },
            balancing: Balancing::RoundRobin,
            timeouts: UpstreamTimeouts::default(),
            retries: 0,
            retry_budget: 0.0,
            backends: vec![],
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let router = Router::new(&[upstream("/"), upstream("/api"), upstream("/api/v2")]);
        assert_eq!(router.route(b"/index.html"), Some(0));
        assert_eq!(router.route(b"/api/users"), Some(1));
        assert_eq!(router.route(b"/api/v2/users?x=1"), Some(2));
    }

    #[test]
    fn no_match_without_catch_all() {
        let router = Router::new(&[upstream("/api")]);
        assert_eq!(router.route(b"/static/a.css"), None);
        assert_eq!(router.route(b"/ap"), None);
    }
}
