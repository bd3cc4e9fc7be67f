//! Starting and stopping the shards of one process.
//!
//! Sockets are bound here, before any shard starts, so that an address in use fails startup with
//! a clear message and a port of 0 resolves to one port every shard shares. Each shard then runs
//! pinned to its CPU until the coordinator tells it to stop.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shards::net::handoff::{self, Inboxes};
use shards::net::steering::Steering;
use shards::plan::{ProxyPlan, SteeringMode};
use shards::{ShardSpec, ShardStats, ShardThread};

use crate::admin::{self, AdminView, SharedView};
use crate::coordinator::Coordinator;
use crate::dns::{self, Answers, DnsResolver, DnsWatcher, Resolver};
use crate::health::HealthChecker;
use crate::watchdog::Watchdog;

/// What a process serves, and on which CPUs.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    /// One shard per entry, pinned to that CPU.
    pub cores: Vec<usize>,
    pub plan: ProxyPlan,
}

#[derive(Debug)]
pub enum StartError {
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    Tls(shards::quic::config::ConfigError),
    Shard {
        index: usize,
        source: shards::ShardError,
    },
    Random,
    TooManyBackends,
    HealthChecker(io::Error),
    Inbox(io::Error),
    Steering(shards::net::steering::SteeringError),
    Watchdog(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { address, source } => {
                write!(f, "cannot bind UDP and TCP {address}: {source}")
            }
            StartError::Tls(source) => write!(f, "{source}"),
            StartError::Shard { index, source } => write!(f, "shard {index}: {source}"),
            StartError::Random => f.write_str("no randomness available for connection IDs"),
            StartError::HealthChecker(e) => write!(f, "cannot start health checks: {e}"),
            StartError::Inbox(e) => write!(f, "cannot bind the shards' hand-off sockets: {e}"),
            StartError::Watchdog(e) => write!(f, "cannot start the shard watchdog: {e}"),
            StartError::Steering(e) => write!(
                f,
                "quic.steering = \"bpf\" but kernel steering failed: {e} (set quic.steering = \"auto\" \
                 to fall back to hashing)"
            ),
            StartError::TooManyBackends => write!(
                f,
                "more than {} backends would be configured",
                shards::plan::MAX_BACKENDS
            ),
        }
    }
}

impl std::error::Error for StartError {}

struct ShardHandle {
    cpu: usize,
    stats: Arc<ShardStats>,
    thread: Option<ShardThread>,
}

/// A started proxy. Dropping it stops the shards.
pub struct RunningProxy {
    local_addr: SocketAddr,
    shards: Vec<ShardHandle>,
    coordinator: Arc<Mutex<Coordinator>>,
    /// What the shards were last told; the DNS watcher updates it too.
    published: Arc<Mutex<Publication>>,
    /// Re-resolves the configuration's backend names; replaced on reload.
    dns: Option<DnsWatcher>,
    resolver: Arc<dyn Resolver>,
    view: SharedView,
    /// The configured listen address (port as configured, possibly 0) and current plan (before
    /// its backend names are resolved), to compare a reload against.
    listen: SocketAddr,
    plan: ProxyPlan,
    /// Kernel steering by connection ID, when it is in place.
    steering: Option<Steering>,
    /// Wakes shards that stall; stopped before the shards are joined.
    watchdog: Option<Watchdog>,
    /// Keeps the TCP port ours while the shards' listeners come and go.
    _tcp_reservation: socket2::Socket,
    /// The redirect listener's address as configured, and its reservation with the port
    /// resolved.
    redirect_configured: Option<SocketAddr>,
    _redirect_reservation: Option<socket2::Socket>,
}

/// The configured plan, the current answers for its backend names, and the health checks of
/// the plan made of both, which is what the shards run.
struct Publication {
    configured: ProxyPlan,
    answers: Answers,
    health: Option<HealthChecker>,
    coordinator: Arc<Mutex<Coordinator>>,
}

impl Publication {
    /// Sends the shards the plan for the current configuration and answers, and restarts the
    /// health checks for it (a new configuration generation, as a reload).
    fn publish(&mut self) -> Result<(), StartError> {
        let plan = dns::expand(&self.configured, &self.answers);
        let generation = lock(&self.coordinator).publish_plan(&plan);
        // Stop the old checks first, so no report of the old shape races the new plan.
        self.health = None;
        self.health = Some(
            HealthChecker::start(&plan, generation, self.coordinator.clone())
                .map_err(StartError::HealthChecker)?,
        );
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Starts watching the names of `published`'s configuration; each change is published.
fn watch_names(
    published: &Arc<Mutex<Publication>>,
    resolver: &Arc<dyn Resolver>,
    ttls: dns::Ttls,
) -> Result<Option<DnsWatcher>, StartError> {
    let (plan, answers) = {
        let p = lock(published);
        (p.configured.clone(), p.answers.clone())
    };
    let target = Arc::downgrade(published);
    DnsWatcher::start(&plan, answers, ttls, resolver.clone(), move |answers| {
        let Some(published) = target.upgrade() else {
            return;
        };
        let mut published = lock(&published);
        published.answers = answers.clone();
        if let Err(e) = published.publish() {
            log::error!("backend endpoints changed but could not be applied: {e}");
        }
    })
    .map_err(StartError::HealthChecker)
}

impl RunningProxy {
    /// Starts the shards; backend names are resolved by [`DnsResolver`].
    pub fn start(settings: ProxySettings) -> Result<Self, StartError> {
        Self::start_with_resolver(settings, DnsResolver::system_or_getaddrinfo())
    }

    /// Starts the shards, resolving backend names with `resolver` (tests change its answers).
    pub fn start_with_resolver(
        mut settings: ProxySettings,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Self, StartError> {
        // Validate TLS material once, here, so a bad file fails startup instead of every shard.
        shards::quic::config::quic_config(&settings.plan).map_err(StartError::Tls)?;
        warn_unverified_backends(&settings.plan);
        let (answers, ttls) =
            dns::resolve_new(&*resolver, &settings.plan.upstreams, &Answers::new());
        let (sockets, tcp_reservation) =
            shards::net::reuseport::bind_udp_and_tcp(settings.listen, settings.cores.len())
                .map_err(|source| StartError::Bind {
                    address: settings.listen,
                    source,
                })?;
        let local_addr = sockets[0].local_addr().map_err(|source| StartError::Bind {
            address: settings.listen,
            source,
        })?;
        let redirect_configured = settings.plan.redirect;
        let redirect_reservation = match redirect_configured {
            None => None,
            Some(address) => {
                let bind_error = |source| StartError::Bind { address, source };
                let socket = shards::net::reuseport::reserve_tcp(address).map_err(bind_error)?;
                let resolved = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(address);
                settings.plan.redirect = Some(resolved);
                Some(socket)
            }
        };
        let steering = start_steering(&sockets, &settings)?;
        let inbox_sockets = handoff::bind_inboxes(sockets.len()).map_err(StartError::Inbox)?;
        let mut inbox_addrs = Vec::new();
        for (inbox, cpu) in inbox_sockets.iter().zip(&settings.cores) {
            inbox_addrs.push((*cpu as u16, inbox.local_addr().map_err(StartError::Inbox)?));
        }
        let inboxes = Inboxes::new(inbox_addrs);
        let cid_secret = random_secret()?;
        let running_plan = dns::expand(&settings.plan, &answers);
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        let shard_sockets = sockets.into_iter().zip(inbox_sockets);
        for (index, ((socket, inbox), cpu)) in shard_sockets.zip(&settings.cores).enumerate() {
            let (sender, receiver) = crossbeam_channel::unbounded();
            let stats = Arc::new(ShardStats::new());
            let thread = shards::spawn(ShardSpec {
                index,
                cpu: *cpu,
                socket,
                plan: running_plan.clone(),
                control: receiver,
                stats: stats.clone(),
                cid_secret,
                inbox,
                inboxes: inboxes.clone(),
            })
            .map_err(|source| StartError::Shard { index, source })?;
            senders.push(sender);
            handles.push(ShardHandle {
                cpu: *cpu,
                stats,
                thread: Some(thread),
            });
        }
        let view = Arc::new(Mutex::new(AdminView {
            shards: handles.iter().map(|h| h.stats.clone()).collect(),
            plan: running_plan.clone(),
            healthy: Vec::new(),
            config_generation: 1,
        }));
        let coordinator = Arc::new(Mutex::new(Coordinator::new(
            senders,
            view.clone(),
            &running_plan,
        )));
        let health = HealthChecker::start(&running_plan, 1, coordinator.clone())
            .map_err(StartError::HealthChecker)?;
        let published = Arc::new(Mutex::new(Publication {
            configured: settings.plan.clone(),
            answers,
            health: Some(health),
            coordinator: coordinator.clone(),
        }));
        let dns = watch_names(&published, &resolver, ttls)?;
        let watchdog = Watchdog::start(handles.iter().map(|h| h.stats.clone()).collect())
            .map_err(StartError::Watchdog)?;
        Ok(RunningProxy {
            local_addr,
            shards: handles,
            coordinator,
            published,
            dns,
            resolver,
            view,
            listen: settings.listen,
            plan: settings.plan,
            steering,
            watchdog: Some(watchdog),
            _tcp_reservation: tcp_reservation,
            redirect_configured,
            _redirect_reservation: redirect_reservation,
        })
    }

    /// Ends the process when a shard stays stalled for `limit` (see `crate::watchdog`).
    pub fn exit_on_stall(&self, limit: Duration) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.exit_after(limit);
        }
    }

    /// Whether the kernel steers packets by connection ID (see `shards::steering`).
    pub fn kernel_steering(&self) -> bool {
        self.steering.is_some()
    }

    /// The plain-HTTP redirect listener's address (port resolved if 0 was configured).
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.plan.redirect
    }

    /// The UDP address clients reach (port resolved if 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies a new configuration without closing any connection: new requests use the new
    /// routes, pools and balancing, new handshakes the new certificate. Settings that only a
    /// restart can change are left as they are and named in the returned list.
    pub fn reload(&mut self, mut settings: ProxySettings) -> Result<Vec<&'static str>, StartError> {
        shards::quic::config::quic_config(&settings.plan).map_err(StartError::Tls)?;
        warn_unverified_backends(&settings.plan);
        let mut needs_restart = Vec::new();
        if settings.listen != self.listen {
            needs_restart.push("listen.address/listen.port");
        }
        if settings.plan.redirect != self.redirect_configured {
            needs_restart.push("listen.redirect");
        }
        // Shards keep the listener they bound; the plan they get says so.
        settings.plan.redirect = self.plan.redirect;
        if settings.cores != self.shard_cpus() {
            needs_restart.push("runtime (cores/shards)");
        }
        if settings.plan.quic.steering != self.plan.quic.steering
            || settings.plan.quic.bpf_pin_dir != self.plan.quic.bpf_pin_dir
        {
            needs_restart.push("quic.steering/quic.bpf_pin_dir");
        }
        settings
            .plan
            .assign_stats_slots(Some(&self.plan))
            .map_err(|_| StartError::TooManyBackends)?;
        // The watcher of the old names stops before the new plan is published, so no answer
        // for the old configuration lands after it.
        self.dns = None;
        let ttls = {
            let mut published = lock(&self.published);
            // Names still configured keep their answers; new ones are resolved now.
            let (answers, ttls) = dns::resolve_new(
                &*self.resolver,
                &settings.plan.upstreams,
                &published.answers,
            );
            published.answers = answers;
            published.configured = settings.plan.clone();
            published.publish()?;
            ttls
        };
        self.dns = watch_names(&self.published, &self.resolver, ttls)?;
        self.plan = settings.plan;
        Ok(needs_restart)
    }

    /// Starts the admin endpoint (metrics, health) on `address`; returns the bound address.
    pub fn start_admin(&self, address: SocketAddr) -> io::Result<SocketAddr> {
        admin::start(address, self.view.clone())
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<Arc<ShardStats>> {
        self.shards.iter().map(|s| s.stats.clone()).collect()
    }

    /// The CPU each shard is pinned to, in shard order.
    pub fn shard_cpus(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.cpu).collect()
    }

    /// The coordinator, locked. Never held by shards; hold it briefly.
    pub fn coordinator(&self) -> std::sync::MutexGuard<'_, Coordinator> {
        match self.coordinator.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Waits until every shard serves traffic, or `limit` passes.
    pub fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.shards.iter().all(|s| s.stats.running.get() == 1) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops every shard at once (connections closed with H3_NO_ERROR) and waits for their
    /// threads. Returns the first shard error.
    pub fn shutdown(mut self) -> Result<(), shards::ShardError> {
        self.stop()
    }

    /// Stops gracefully: no new connections, GOAWAY on every connection, requests in flight
    /// finish; connections still busy after `timeout` are closed. Returns when every shard stopped.
    pub fn drain(mut self, timeout: Duration) -> Result<(), shards::ShardError> {
        self.stop_checks();
        self.coordinator().drain(Instant::now() + timeout);
        self.join()
    }

    /// Stops the DNS watcher and the health checks: nothing republishes while shards stop.
    fn stop_checks(&mut self) {
        self.dns = None;
        lock(&self.published).health = None;
    }

    fn stop(&mut self) -> Result<(), shards::ShardError> {
        self.stop_checks();
        self.coordinator().shutdown();
        self.join()
    }

    fn join(&mut self) -> Result<(), shards::ShardError> {
        // The watchdog keeps running while shards drain: a shard that stalls then would otherwise
        // hold the stop forever.
        let mut first_error = Ok(());
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                if let Err(e) = thread.join() {
                    if first_error.is_ok() {
                        first_error = Err(e);
                    }
                }
            }
        }
        self.watchdog = None;
        // Our sockets are closed now; the shared map goes if no other process still uses it.
        if let Some(steering) = self.steering.take() {
            steering.release();
        }
        first_error
    }
}

/// Sets up kernel steering as `quic.steering` asks. In `auto` mode a failure (no CAP_BPF, no
/// bpffs) is logged and the process runs on hashing plus hand-off.
fn start_steering(
    sockets: &[std::net::UdpSocket],
    settings: &ProxySettings,
) -> Result<Option<Steering>, StartError> {
    let quic = &settings.plan.quic;
    if quic.steering == SteeringMode::Off {
        return Ok(None);
    }
    let refs: Vec<&std::net::UdpSocket> = sockets.iter().collect();
    match Steering::attach(&refs, &settings.cores, &quic.bpf_pin_dir) {
        Ok(steering) => {
            log::info!(
                "kernel steering by connection ID on (socket map {})",
                steering.pin_path().display()
            );
            Ok(Some(steering))
        }
        Err(e) if quic.steering == SteeringMode::Auto => {
            let fix = e
                .remedy(&quic.bpf_pin_dir)
                .map(|fix| format!("; to fix: {fix}"))
                .unwrap_or_default();
            log::warn!(
                "kernel steering unavailable ({e}){fix}. Meanwhile the kernel's address hash \
                 spreads packets: clients whose address changes are handed between this \
                 process's shards, and a restart of another process on this port can break its \
                 connections here"
            );
            Ok(None)
        }
        Err(e) => Err(StartError::Steering(e)),
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn random_secret() -> Result<[u8; 32], StartError> {
    let mut secret = [0u8; 32];
    let mut file = std::fs::File::open("/dev/urandom").map_err(|_| StartError::Random)?;
    io::Read::read_exact(&mut file, &mut secret).map_err(|_| StartError::Random)?;
    Ok(secret)
}

/// `tls.insecure_skip_verify` is an opt-in the log must show every time it takes effect.
fn warn_unverified_backends(plan: &ProxyPlan) {
    for upstream in &plan.upstreams {
        if upstream
            .tls
            .as_ref()
            .is_some_and(|t| t.skips_verification())
        {
            log::warn!(
                "upstream.{}.tls.insecure_skip_verify = true: the backends' certificates are not \
                 verified; anyone on the path to them can impersonate them",
                upstream.name
            );
        }
    }
}
