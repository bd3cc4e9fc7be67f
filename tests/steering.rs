//! Packets reach the shard that owns their connection. A client whose source port changes
//! mid-connection (NAT rebinding) keeps its connection, whether the kernel steers by connection
//! ID or shards hand packets to each other; and when one of several processes sharing the port
//! restarts, the other processes' connections carry on.
//!
//! Kernel steering needs root (for `bpf(2)`) and a bpffs; each test that uses it mounts its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::SpookyProcess;
use common::{free_port, pool, start_backend, Proxy};
use spooky_bench::backend::pattern_sha256;
use spooky_bench::client::{H3Client, Request};

/// The steering key (owning CPU) in the connection ID the server issued.
fn owner_key(client: &H3Client) -> u16 {
    let cid = client.server_cid();
    u16::from_be_bytes([cid[0], cid[1]])
}

fn handed_off(proxy: &Proxy) -> u64 {
    proxy
        .running
        .shard_stats()
        .iter()
        .map(|s| s.datagrams_handed_off.get())
        .sum()
}

fn accepted(proxy: &Proxy) -> u64 {
    proxy
        .running
        .shard_stats()
        .iter()
        .map(|s| s.connections_accepted.get())
        .sum()
}

fn get_checked(client: &mut H3Client, size: u64) {
    let response = client
        .request(Request::get(&format!("/bytes/{size}")).keep_body(false))
        .expect("request on the moved connection");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_sha256, pattern_sha256(size));
}

/// A bpffs mounted on a scratch directory, unmounted on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    /// `None` (with a note on stderr) when not running as root: loading BPF needs privileges.
    fn mount(label: &str) -> Option<Bpffs> {
        // /proc/self belongs to the process's effective user.
        let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        if euid != 0 {
            eprintln!("skipped: kernel steering needs root to load BPF");
            return None;
        }
        let dir = common::scratch_dir(label);
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a bpffs on {} failed",
            dir.display()
        );
        Some(Bpffs(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn client_changing_port_keeps_its_connection_through_hand_off() {
    let backend = start_backend("rebind");
    let proxy = Proxy::start(
        "rebind-handoff",
        &format!(
            "[runtime]\ncores = [0, 1]\n\n[quic]\nsteering = \"off\"\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    assert!(!proxy.running.kernel_steering());
    // Each new port hashes to either shard; 24 connections whose new port always hashed to the
    // owner have probability 2^-24.
    let mut connections = 0;
    while handed_off(&proxy) == 0 && connections < 24 {
        let mut client = proxy.client();
        connections += 1;
        get_checked(&mut client, 5000);
        client.rebind().unwrap();
        get_checked(&mut client, 100_000);
        // And again from yet another port.
        client.rebind().unwrap();
        get_checked(&mut client, 300_000);
        client.close();
    }
    assert!(
        handed_off(&proxy) > 0,
        "no new port hashed to the other shard in {connections} connections"
    );
    assert_eq!(
        accepted(&proxy),
        connections,
        "each client kept its one connection"
    );
}

#[test]
fn kernel_steering_sends_a_moved_client_to_its_shard() {
    let Some(bpffs) = Bpffs::mount("steer-bpffs") else {
        return;
    };
    let backend = start_backend("steer");
    let proxy = Proxy::start(
        "rebind-bpf",
        &format!(
            "[runtime]\ncores = [0, 1]\n\n[quic]\nsteering = \"bpf\"\nbpf_pin_dir = {:?}\n\n{}",
            bpffs.path().display().to_string(),
            pool("main", "/", &[&backend], "")
        ),
    );
    assert!(proxy.running.kernel_steering());
    let mut client = proxy.client();
    get_checked(&mut client, 5000);
    for _ in 0..5 {
        client.rebind().unwrap();
        get_checked(&mut client, 100_000);
    }
    assert_eq!(
        handed_off(&proxy),
        0,
        "every packet was steered to its shard by the kernel"
    );
    assert_eq!(accepted(&proxy), 1, "the client kept its one connection");
    drop(proxy);
    // The last process of the group removes the shared map.
    let leftover: Vec<_> = std::fs::read_dir(bpffs.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("spooky_udp_"))
        .collect();
    assert!(leftover.is_empty(), "map still pinned: {leftover:?}");
}

#[test]
fn restarting_one_process_keeps_the_other_processes_connections() {
    let Some(bpffs) = Bpffs::mount("restart-bpffs") else {
        return;
    };
    let port = free_port();
    let backend = start_backend("restart");
    let certs_dir = common::scratch_dir("restart-certs");
    let certs = spooky::selfsigned::generate(&certs_dir).unwrap();
    let config = |cpu: usize| {
        format!(
            "[runtime]\ncores = [{cpu}]\n\n[quic]\nsteering = \"bpf\"\nbpf_pin_dir = {:?}\n\n{}",
            bpffs.path().display().to_string(),
            pool("main", "/", &[&backend], "")
        )
    };
    let start = |label: &str, cpu: usize| {
        SpookyProcess::start_with(
            common::scratch_dir(label),
            certs.clone(),
            port,
            &config(cpu),
        )
    };
    let mut first = start("restart-a", 0);
    let _second = start("restart-b", 1);
    let options = first.client_options(Duration::from_secs(10));

    // New connections spread over both processes; keep some of each (64 tries leave one side
    // short with negligible probability).
    let mut on_second = Vec::new();
    let mut on_first = 0;
    for _ in 0..64 {
        let mut client = H3Client::connect(options.clone()).unwrap();
        get_checked(&mut client, 2000);
        match owner_key(&client) {
            1 => on_second.push(client),
            0 => on_first += 1,
            other => panic!("connection ID names CPU {other}, which no process uses"),
        }
        if on_second.len() >= 4 && on_first >= 1 {
            break;
        }
    }
    assert!(
        on_second.len() >= 4 && on_first >= 1,
        "connections did not spread"
    );

    // Restart the first process: its sockets leave the group and new ones join. With the
    // kernel's plain hash the group's reordering would move the second process's clients.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(15)), Some(0));
    drop(first);
    let _restarted = start("restart-a2", 0);
    for client in &mut on_second {
        client.rebind().unwrap();
        get_checked(client, 50_000);
    }
    // The restarted process serves new connections again.
    let mut served_by_restarted = false;
    for _ in 0..64 {
        let mut client = H3Client::connect(options.clone()).unwrap();
        get_checked(&mut client, 1000);
        if owner_key(&client) == 0 {
            served_by_restarted = true;
            break;
        }
    }
    assert!(served_by_restarted);
}

#[test]
fn client_migrating_with_a_spare_id_keeps_its_connection() {
    let backend = start_backend("migrate");
    let proxy = Proxy::start(
        "migrate",
        &format!(
            "[runtime]\ncores = [0, 1]\n\n[quic]\nsteering = \"off\"\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    let mut client = proxy.client();
    // Several migrations, each to a new address with one of the spare IDs the server offered
    // (the client accepts up to 4 IDs, so 3 spares).
    for round in 0..3 {
        get_checked(&mut client, 20_000);
        assert!(
            common::eventually(Duration::from_secs(5), || {
                // Requests let the client read the server's NEW_CONNECTION_ID frames.
                get_checked(&mut client, 10);
                client.spare_server_ids() > 0
            }),
            "round {round}: the server offered no spare connection ID"
        );
        let before = client.server_cid();
        client.migrate().unwrap();
        get_checked(&mut client, 200_000);
        assert_ne!(
            client.server_cid(),
            before,
            "round {round}: the ID did not change"
        );
        assert_eq!(
            owner_key(&client),
            u16::from_be_bytes([before[0], before[1]]),
            "spare IDs name the same shard"
        );
    }
    assert_eq!(accepted(&proxy), 1, "the client kept its one connection");
}
