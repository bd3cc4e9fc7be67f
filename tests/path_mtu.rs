//! Path MTU discovery over a real network path: a client in its own network namespace behind a
//! veth pair with a 1,500-byte MTU, downloading through the spooky binary, first over a clean
//! path, then through a black hole that silently drops every datagram over 1,400 bytes (no ICMP,
//! as a broken tunnel or firewall would).
//!
//! Needs root (network namespaces), iproute2, nftables (the black hole) and ethtool (segmentation
//! and receive coalescing off on the veth pair, so that the rule sees each datagram's own length);
//! `scripts/setup.sh --with-test-tools` installs the last two.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};

use common::process::SpookyProcess;
use common::{free_port, http_get, scratch_dir, start_backend};

const DOWNLOAD: u64 = 8 * 1024 * 1024;

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A namespace with one end of a veth pair; the other end stays in ours. Removed on drop.
struct ClientNamespace {
    name: String,
    host_link: String,
    host_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
}

impl ClientNamespace {
    /// `None` (with a note on stderr) when not running as root.
    fn create() -> Option<ClientNamespace> {
        // /proc/self belongs to the process's effective user.
        let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        if euid != 0 {
            eprintln!("skipped: network namespaces need root");
            return None;
        }
        let id = std::process::id() % 100_000;
        let subnet = (std::process::id() % 250) as u8;
        let ns = ClientNamespace {
            name: format!("spooky-pmtu-{id}"),
            host_link: format!("pm{id}h"),
            host_ip: Ipv4Addr::new(10, 79, subnet, 1),
            client_ip: Ipv4Addr::new(10, 79, subnet, 2),
        };
        let client_link = format!("pm{id}c");
        let (name, host, client) = (&ns.name, &ns.host_link, &client_link);
        run("ip", &["netns", "add", name]);
        run(
            "ip",
            &["link", "add", host, "type", "veth", "peer", "name", client],
        );
        run("ip", &["link", "set", client, "netns", name]);
        run(
            "ip",
            &["addr", "add", &format!("{}/24", ns.host_ip), "dev", host],
        );
        run("ip", &["link", "set", host, "mtu", "1500", "up"]);
        ns.exec(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", ns.client_ip),
                "dev",
                client,
            ],
        );
        ns.exec("ip", &["link", "set", client, "mtu", "1500", "up"]);
        ns.exec("ip", &["link", "set", "lo", "up"]);
        // Segmented sends and coalesced receives would show the filter one large packet.
        run("ethtool", &["-K", host, "tx-udp-segmentation", "off"]);
        ns.exec(
            "ethtool",
            &["-K", client, "gro", "off", "rx-udp-gro-forwarding", "off"],
        );
        Some(ns)
    }

    fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Drops, silently, every datagram from `port` longer than `max_ip_length` bytes (IP
    /// header included) on its way into the namespace.
    fn black_hole(&self, port: u16, max_ip_length: usize) {
        self.exec("nft", &["add", "table", "inet", "hole"]);
        self.exec(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                "hole",
                "in",
                "{ type filter hook input priority 0; }",
            ],
        );
        let rule = format!("udp sport {port} meta length gt {max_ip_length} counter drop");
        let mut args = vec!["add", "rule", "inet", "hole", "in"];
        args.extend(rule.split(' '));
        self.exec("nft", &args);
    }

    /// Datagrams the black hole dropped.
    fn dropped(&self) -> u64 {
        let listing = self.exec("nft", &["list", "table", "inet", "hole"]);
        let text = String::from_utf8_lossy(&listing.stdout).into_owned();
        let packets = text
            .split("packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no counter in {text}"));
        packets.parse().unwrap()
    }
}

impl Drop for ClientNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The load generator this test suite was built with (target/<profile>/spooky-bench).
fn load_generator() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let exe = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("spooky-bench");
    assert!(exe.exists(), "{} was not built", exe.display());
    exe
}

struct Download {
    succeeded: bool,
    bytes_per_datagram: u64,
}

/// One download from the namespace through a spooky started with `quic` settings.
fn download(ns: &ClientNamespace, label: &str, port: u16, quic: &str, timeout_s: u32) -> Download {
    let backend = start_backend(label);
    let body = format!(
        "[quic]\nsteering = \"off\"\n{quic}\n\n[upstream.main]\nroute = {{ path_prefix = \"/\" }}\n\n\
         [[upstream.main.backends]]\nid = \"b\"\naddress = \"{}\"\n",
        backend.addr()
    );
    let listen = SocketAddr::new(IpAddr::V4(ns.host_ip), port);
    let dir = scratch_dir(label);
    let certs = spooky::selfsigned::generate(&dir).unwrap();
    let spooky = SpookyProcess::start_listening(dir, certs, listen, &body);
    let url = format!("https://{listen}/bytes/{DOWNLOAD}");
    let exe = load_generator();
    let timeout = timeout_s.to_string();
    let mut args = vec!["netns", "exec", &ns.name];
    let exe = exe.to_str().unwrap();
    args.extend([exe, "load", &url, "--insecure", "-n", "1", "-t", "1"]);
    args.extend(["--timeout", &timeout]);
    let output = Command::new("ip")
        .args(&args)
        .output()
        .expect("run the load generator");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let succeeded = output.status.success() && report.contains("errors        none");
    let (_, metrics) = http_get(spooky.admin, "/metrics").expect("metrics");
    let total = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    };
    let bytes_per_datagram =
        total("spooky_bytes_sent_total") / total("spooky_datagrams_sent_total").max(1);
    Download {
        succeeded,
        bytes_per_datagram,
    }
}

#[test]
fn discovery_fills_a_real_path_and_finds_its_way_around_a_black_hole() {
    let Some(ns) = ClientNamespace::create() else {
        return;
    };
    let port = free_port();

    // A 1,500-byte Ethernet path carries 1,472 bytes of UDP payload: discovery reaches it one
    // round trip after the handshake (the average counts the handshake and ACK-only packets).
    let clean = download(&ns, "pmtu-clean", port, "", 30);
    assert!(clean.succeeded);
    assert!(
        clean.bytes_per_datagram > 1_400,
        "{} bytes per datagram on a clean 1,500-byte path",
        clean.bytes_per_datagram
    );

    // The path now loses everything over 1,400 bytes of IP packet (1,372 of UDP payload), and no
    // ICMP says so. A fixed size above the hole never gets a full packet through...
    ns.black_hole(port, 1_400);
    let fixed = download(
        &ns,
        "pmtu-fixed",
        port,
        "path_mtu_discovery = false\nmax_udp_payload_size = 1472",
        3,
    );
    assert!(!fixed.succeeded, "the black hole must be real");
    let lost_to_fixed = ns.dropped();
    assert!(lost_to_fixed > 0);

    // ...while discovery loses only its probes (three at each size too large) and settles below
    // the hole: the download completes in datagrams larger than the 1,200 bytes it starts with.
    let discovered = download(&ns, "pmtu-hole", port, "", 30);
    assert!(discovered.succeeded);
    let probes_lost = ns.dropped() - lost_to_fixed;
    eprintln!(
        "clean path: {} bytes per datagram; black hole: {} bytes per datagram, {probes_lost} \
         probes lost (a fixed 1,472 lost {lost_to_fixed} datagrams and failed)",
        clean.bytes_per_datagram, discovered.bytes_per_datagram
    );
    assert!(
        (3..=30).contains(&probes_lost),
        "{probes_lost} datagrams lost to the black hole"
    );
    assert!(
        (1_300..=1_372).contains(&discovered.bytes_per_datagram),
        "{} bytes per datagram below a 1,372-byte hole",
        discovered.bytes_per_datagram
    );
}
