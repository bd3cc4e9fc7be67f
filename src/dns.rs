//! Backends given by DNS name (`address = "api.internal:8080"`): resolved by the coordinator,
//! never on a shard thread, and turned into endpoints in the plan the shards run.
//!
//! Each address a name resolves to is one endpoint: a backend of the plan with the configured
//! backend's id, counters, health check and its weight *split* evenly between the endpoints
//! (rounded down, at least 1). Split, not repeated, because the weight is the operator's share
//! for that configured entry: a name that grows from two addresses to ten must not take five
//! times the traffic from the literal backends beside it.
//!
//! A [`DnsWatcher`] re-resolves every name through a [`Resolver`]: [`DnsResolver`] by default,
//! a stub resolver on the system's `/etc/resolv.conf` and `/etc/hosts` that reports each
//! answer's TTL (as Envoy's, HAProxy's and nginx's own resolvers do; getaddrinfo, the fallback,
//! reports none). A name is looked up again after its upstream's `resolve_interval_ms` or its
//! answer's TTL, whichever is shorter (a TTL under a second counts as one second), and the
//! resolver's cache keeps an answer no longer than its TTL. When an answer differs from the last, the runtime publishes a plan with the
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
    fn resolve(&self, name: &BackendName) -> io::Result<Resolved>;
}

/// A resolver's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub addresses: Vec<IpAddr>,
    /// How long the answer may be used, when the resolver knows.
    pub ttl: Option<Duration>,
}

/// getaddrinfo, through the standard library: nsswitch applies, but no TTL is reported.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, name: &BackendName) -> io::Result<Resolved> {
        let addresses = (name.host.as_str(), name.port).to_socket_addrs()?;
        Ok(Resolved {
            addresses: addresses.map(|a| a.ip()).collect(),
            ttl: None,
        })
    }
}

/// A DNS stub resolver (hickory-resolver) on the system's configuration, with TTLs. It runs on
/// a current-thread tokio runtime of its own, driven only by the thread that asks.
pub struct DnsResolver {
    runtime: tokio::runtime::Runtime,
    resolver: hickory_resolver::TokioResolver,
}

impl DnsResolver {
    /// The resolver for `/etc/resolv.conf` and `/etc/hosts`.
    pub fn from_system() -> io::Result<DnsResolver> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let resolver = {
            let _inside = runtime.enter();
            hickory_resolver::Resolver::builder_tokio()
                .map_err(io::Error::other)?
                .build()
        };
        Ok(DnsResolver { runtime, resolver })
    }

    /// [`DnsResolver`], or getaddrinfo when the system's DNS configuration cannot be read.
    pub fn system_or_getaddrinfo() -> Arc<dyn Resolver> {
        match DnsResolver::from_system() {
            Ok(resolver) => Arc::new(resolver),
            Err(e) => {
                log::warn!(
                    "cannot read the system's DNS configuration ({e}); resolving backend names \
                     with getaddrinfo, which reports no TTLs"
                );
                Arc::new(SystemResolver)
            }
        }
    }
}

impl Resolver for DnsResolver {
    fn resolve(&self, name: &BackendName) -> io::Result<Resolved> {
        // As getaddrinfo would: resolv.conf's `search` and `ndots` apply, so a short
        // Kubernetes service name resolves in its namespace.
        let lookup = self
            .runtime
            .block_on(self.resolver.lookup_ip(name.host.as_str()))
            .map_err(io::Error::other)?;
        Ok(Resolved {
            addresses: lookup.iter().collect(),
            ttl: Some(
                lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now()),
            ),
        })
    }
}

/// When a name is looked up again: after the interval, or sooner when its answer's TTL ends.
pub fn next_refresh(interval: Duration, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(ttl) => interval.min(ttl.max(MIN_REFRESH)),
        None => interval,
    }
}

/// A TTL of zero (or a few milliseconds) must not turn into a lookup per tick.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The last good answer for each name: distinct addresses, sorted.
pub type Answers = BTreeMap<BackendName, Vec<IpAddr>>;

/// The TTLs of answers just looked up, for when to look them up again.
pub type Ttls = BTreeMap<BackendName, Duration>;

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

/// Resolves `name` once: its distinct addresses, sorted, and the answer's TTL.
fn resolve_once(
    resolver: &dyn Resolver,
    name: &BackendName,
) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
    match resolver.resolve(name) {
        Ok(resolved) => {
            let distinct: BTreeSet<IpAddr> = resolved.addresses.into_iter().collect();
            if distinct.is_empty() {
                Err("no address".to_string())
            } else {
                Ok((distinct.into_iter().collect(), resolved.ttl))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Answers for every name of `plan`, reusing `known` ones; the others are resolved now (with
/// their TTLs). A name that does not resolve has no endpoints until it does (the watcher keeps
/// trying).
pub fn resolve_new(
    resolver: &dyn Resolver,
    upstreams: &[UpstreamPlan],
    known: &Answers,
) -> (Answers, Ttls) {
    let mut ttls = Ttls::new();
    let answers = names(upstreams)
        .into_keys()
        .filter_map(|name| {
            if let Some(addresses) = known.get(&name) {
                return Some((name, addresses.clone()));
            }
            match resolve_once(resolver, &name) {
                Ok((addresses, ttl)) => {
                    log::info!("backend name {name} resolves to {}", list(&addresses));
                    if let Some(ttl) = ttl {
                        ttls.insert(name.clone(), ttl);
                    }
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
        .collect();
    (answers, ttls)
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
    /// `ttls` are those of answers looked up just now: the first lookup of each such name again
    /// comes at its TTL if that is sooner than its interval.
    pub fn start(
        plan: &ProxyPlan,
        answers: Answers,
        ttls: Ttls,
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
            .spawn(move || watch(names, answers, &ttls, &*resolver, &changed, &thread_stop))?;
        Ok(Some(DnsWatcher {
            stop,
            thread: Some(thread),
        }))
    }
}

fn watch(
    names: BTreeMap<BackendName, Duration>,
    mut answers: Answers,
    ttls: &Ttls,
    resolver: &dyn Resolver,
    changed: &dyn Fn(&Answers),
    stop: &AtomicBool,
) {
    let start = Instant::now();
    let mut due: Vec<(BackendName, Duration, Instant)> = names
        .into_iter()
        .map(|(name, interval)| {
            let first = start + next_refresh(interval, ttls.get(&name).copied());
            (name, interval, first)
        })
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
                Ok((addresses, ttl)) => {
                    *next = now + next_refresh(*interval, ttl);
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
            limits: Default::default(),
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
        fn resolve(&self, _name: &BackendName) -> io::Result<Resolved> {
            Ok(Resolved {
                addresses: self.0.clone(),
                ttl: None,
            })
        }
    }

    #[test]
    fn a_name_is_refreshed_at_its_interval_or_sooner_when_its_ttl_ends() {
        let minute = Duration::from_secs(60);
        assert_eq!(next_refresh(minute, None), minute);
        assert_eq!(
            next_refresh(minute, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_refresh(minute, Some(Duration::from_secs(3600))),
            minute
        );
        assert_eq!(next_refresh(minute, Some(Duration::ZERO)), MIN_REFRESH);
        let short = Duration::from_millis(100);
        assert_eq!(next_refresh(short, Some(Duration::ZERO)), short);
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
        let (answers, ttls) = resolve_new(&resolver, &configured, &known);
        assert!(ttls.is_empty(), "the fixed resolver gives no TTL");
        assert_eq!(answers[&a], [ip("192.0.2.1")]);
        let b = configured[0].backends[1].name.clone().unwrap();
        assert_eq!(answers[&b], [ip("10.0.0.1"), ip("10.0.0.2")]);
    }
}
