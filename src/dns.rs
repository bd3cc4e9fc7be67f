//! Backends given by DNS name (`address = "api.internal:8080"`): resolved by the coordinator,
//! never on a shard thread, and turned into endpoints in the plan the shards run.
//!
//! Each address a name resolves to is one endpoint: a backend of the plan with the configured
//! backend's id, counters, health check and its weight *split* evenly between the endpoints
//! (rounded down, at least 1). Split, not repeated, because the weight is the operator's share
//! for that configured entry: a name that grows from two addresses to ten must not take five
//! times the traffic from the literal backends beside it.
//!
//! A [`DnsWatcher`] re-resolves every name at its upstream's `resolve_interval_ms` through a
//! [`Resolver`] (the system's, by default, so `/etc/hosts`, nsswitch and a local caching
//! resolver apply; getaddrinfo reports no TTL, so the interval is the refresh period, as in
//! Envoy's default). When an answer differs from the last, the runtime publishes a plan with the
//! new endpoints, as a reload does: pools of endpoints that remain are kept, requests in flight
//! on vanished ones finish. A name that stops resolving keeps its last good answer, with a
//! warning.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shards::plan::{BackendName, ProxyPlan, UpstreamPlan};

/// Turns a backend name into addresses. Tests give their own, to change the answers at will.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, name: &BackendName) -> io::Result<Vec<IpAddr>>;
}

/// getaddrinfo, through the standard library.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, name: &BackendName) -> io::Result<Vec<IpAddr>> {
        let addresses = (name.host.as_str(), name.port).to_socket_addrs()?;
        Ok(addresses.map(|a| a.ip()).collect())
    }
}

/// The last good answer for each name: distinct addresses, sorted.
pub type Answers = BTreeMap<BackendName, Vec<IpAddr>>;

/// Every backend name of `upstreams`, with the shortest re-resolution interval of the upstreams
/// using it.
pub fn names(upstreams: &[UpstreamPlan]) -> BTreeMap<BackendName, Duration> {
    let mut names: BTreeMap<BackendName, Duration> = BTreeMap::new();
    for upstream in upstreams {
        for name in upstream.backends.iter().filter_map(|b| b.name.as_ref()) {
            names
                .entry(name.clone())
                .and_modify(|d| *d = (*d).min(upstream.resolve_interval))
                .or_insert(upstream.resolve_interval);
        }
    }
    names
}

/// Resolves `name` once; `None` when it gives no address (the reason is logged).
fn resolve_once(resolver: &dyn Resolver, name: &BackendName) -> Result<Vec<IpAddr>, String> {
    match resolver.resolve(name) {
        Ok(addresses) => {
            let distinct: BTreeSet<IpAddr> = addresses.into_iter().collect();
            if distinct.is_empty() {
                Err("no address".to_string())
            } else {
                Ok(distinct.into_iter().collect())
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Answers for every name of `plan`, reusing `known` ones; the others are resolved now. A name
/// that does not resolve has no endpoints until it does (the watcher keeps trying).
pub fn resolve_new(
    resolver: &dyn Resolver,
    upstreams: &[UpstreamPlan],
    known: &Answers,
) -> Answers {
    names(upstreams)
        .into_keys()
        .filter_map(|name| {
            if let Some(addresses) = known.get(&name) {
                return Some((name, addresses.clone()));
            }
            match resolve_once(resolver, &name) {
                Ok(addresses) => {
                    log::info!("backend name {name} resolves to {}", list(&addresses));
                    Some((name, addresses))
                }
                Err(e) => {
                    log::error!(
                        "cannot resolve backend name {name}: {e}; it has no endpoints until it \
                         resolves"
                    );
                    None
                }
            }
        })
        .collect()
}

/// The plan the shards run: each named backend replaced by its endpoints.
pub fn expand(configured: &ProxyPlan, answers: &Answers) -> ProxyPlan {
    ProxyPlan {
        upstreams: expand_upstreams(&configured.upstreams, answers),
        ..configured.clone()
    }
}

fn expand_upstreams(configured: &[UpstreamPlan], answers: &Answers) -> Vec<UpstreamPlan> {
    let mut upstreams = configured.to_vec();
    for upstream in &mut upstreams {
        let mut endpoints = Vec::with_capacity(upstream.backends.len());
        for backend in upstream.backends.drain(..) {
            let Some(name) = &backend.name else {
                endpoints.push(backend);
                continue;
            };
            let addresses = answers.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let weight = (backend.weight / addresses.len().max(1) as u32).max(1);
            for ip in addresses {
                let mut endpoint = backend.clone();
                endpoint.address = SocketAddr::new(*ip, name.port);
                endpoint.weight = weight;
                endpoints.push(endpoint);
            }
        }
        upstream.backends = endpoints;
    }
    upstreams
}

fn list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Re-resolves names in the background; dropping it stops the thread.
pub struct DnsWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DnsWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the watcher looks at the stop flag and the due times.
const TICK: Duration = Duration::from_millis(20);

impl DnsWatcher {
    /// Watches the names of `plan`, starting from `answers`; calls `changed` with the whole set
    /// whenever a name's addresses change. `None` when the plan has no names.
    pub fn start(
        plan: &ProxyPlan,
        answers: Answers,
        resolver: Arc<dyn Resolver>,
        changed: impl Fn(&Answers) + Send + 'static,
    ) -> io::Result<Option<DnsWatcher>> {
        let names = names(&plan.upstreams);
        if names.is_empty() {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spooky-dns".into())
            .spawn(move || watch(names, answers, &*resolver, &changed, &thread_stop))?;
        Ok(Some(DnsWatcher {
            stop,
            thread: Some(thread),
        }))
    }
}

fn watch(
    names: BTreeMap<BackendName, Duration>,
    mut answers: Answers,
    resolver: &dyn Resolver,
    changed: &dyn Fn(&Answers),
    stop: &AtomicBool,
) {
    let start = Instant::now();
    let mut due: Vec<(BackendName, Duration, Instant)> = names
        .into_iter()
        .map(|(name, interval)| (name, interval, start + interval))
        .collect();
    // Names whose last lookup failed, so a failure is logged once, not every interval.
    let mut failing: BTreeSet<BackendName> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut any_changed = false;
        for (name, interval, next) in &mut due {
            if *next > now {
                continue;
            }
            *next = now + *interval;
            match resolve_once(resolver, name) {
                Ok(addresses) => {
                    if failing.remove(name) {
                        log::info!("backend name {name} resolves again");
                    }
                    if answers.get(name) != Some(&addresses) {
                        log::info!("backend name {name} now resolves to {}", list(&addresses));
                        answers.insert(name.clone(), addresses);
                        any_changed = true;
                    }
                }
                Err(e) => {
                    if failing.insert(name.clone()) {
                        let kept = answers.get(name).map_or(0, Vec::len);
                        log::warn!(
                            "cannot resolve backend name {name}: {e}; keeping its last {kept} \
                             address(es)"
                        );
                    }
                }
            }
        }
        if any_changed {
            changed(&answers);
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::plan::{
        BackendPlan, BackendProtocol, Balancing, RoutePlan, UpstreamTimeouts,
        DEFAULT_RESOLVE_INTERVAL,
    };

    fn backend(id: &str, address: &str, name: Option<&str>, weight: u32) -> BackendPlan {
        BackendPlan {
            id: id.into(),
            address: address.parse().unwrap(),
            name: name.map(|host| BackendName {
                host: host.into(),
                port: 8080,
            }),
            weight,
            health_check: None,
            stats_slot: 0,
        }
    }

    fn plan(backends: Vec<BackendPlan>) -> Vec<UpstreamPlan> {
        vec![UpstreamPlan {
            name: "main".into(),
            route: RoutePlan {
                path_prefix: "/".into(),
                host: None,
                method: None,
            },
            balancing: Balancing::RoundRobin,
            timeouts: UpstreamTimeouts::default(),
            retries: 0,
            retry_budget: 0.0,
            protocol: BackendProtocol::Http2,
            tls: None,
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            backends,
        }]
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_name_becomes_one_endpoint_per_address_with_the_weight_split() {
        let configured = plan(vec![
            backend("literal", "10.0.0.1:8080", None, 100),
            backend("named", "0.0.0.0:8080", Some("api.internal"), 100),
        ]);
        let name = configured[0].backends[1].name.clone().unwrap();
        let answers = Answers::from([(name, vec![ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3")])]);
        let expanded = expand_upstreams(&configured, &answers);
        let shown: Vec<(String, String, u32)> = expanded[0]
            .backends
            .iter()
            .map(|b| (b.id.clone(), b.address.to_string(), b.weight))
            .collect();
        assert_eq!(
            shown,
            [
                ("literal".into(), "10.0.0.1:8080".into(), 100),
                ("named".into(), "10.0.1.1:8080".into(), 33),
                ("named".into(), "10.0.1.2:8080".into(), 33),
                ("named".into(), "10.0.1.3:8080".into(), 33),
            ]
        );
    }

    #[test]
    fn an_unresolved_name_has_no_endpoints_and_a_tiny_weight_stays_positive() {
        let configured = plan(vec![
            backend("named", "0.0.0.0:8080", Some("api.internal"), 1),
            backend("other", "0.0.0.0:8080", Some("gone.internal"), 1),
        ]);
        let name = configured[0].backends[0].name.clone().unwrap();
        let answers = Answers::from([(name, vec![ip("10.0.1.1"), ip("::1")])]);
        let expanded = expand_upstreams(&configured, &answers);
        let weights: Vec<u32> = expanded[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1, 1]);
        assert!(expanded[0].backends.iter().all(|b| b.id == "named"));
    }

    struct Fixed(Vec<IpAddr>);

    impl Resolver for Fixed {
        fn resolve(&self, _name: &BackendName) -> io::Result<Vec<IpAddr>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn answers_are_distinct_and_sorted_and_known_names_are_not_looked_up_again() {
        let configured = plan(vec![
            backend("a", "0.0.0.0:8080", Some("a.internal"), 1),
            backend("b", "0.0.0.0:8080", Some("b.internal"), 1),
        ]);
        let resolver = Fixed(vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")]);
        let a = configured[0].backends[0].name.clone().unwrap();
        let known = Answers::from([(a.clone(), vec![ip("192.0.2.1")])]);
        let answers = resolve_new(&resolver, &configured, &known);
        assert_eq!(answers[&a], [ip("192.0.2.1")]);
        let b = configured[0].backends[1].name.clone().unwrap();
        assert_eq!(answers[&b], [ip("10.0.0.1"), ip("10.0.0.2")]);
    }
}
