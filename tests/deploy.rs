//! The deploy kit: the systemd template unit passes `systemd-analyze verify`, `scripts/install.sh`
//! lays out the expected files with the expected modes (idempotently), `scripts/tune-kernel.sh
//! --dry-run` reports without changing anything, and the kernel settings cover what the binary
//! asks for.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const UNIT: &str = "deploy/systemd/spooky@.service";
const SYSCTL: &str = "deploy/sysctl.d/99-spooky.conf";
/// What the shard sockets ask for as SO_RCVBUF and SO_SNDBUF (`shards/src/net/reuseport.rs`).
const SOCKET_BUFFER_BYTES: u64 = 8 * 1024 * 1024;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// A fresh empty directory under the system temp dir, unique per test and per run.
fn scratch(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "spooky-deploy-{name}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `Key=value` lines of the unit (comments and sections left out).
fn unit_settings() -> Vec<(String, String)> {
    read(UNIT)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_values(key: &str) -> Vec<String> {
    unit_settings()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !on_path("systemd-analyze") {
        println!("SKIPPED: systemd-analyze is not installed, the unit file was not verified");
        return;
    }
    let dir = scratch("verify");
    // verify checks that the executables exist, so the copy points at the binary cargo built.
    let unit = read(UNIT).replace("/usr/local/bin/spooky", env!("CARGO_BIN_EXE_spooky"));
    fs::write(dir.join("spooky@.service"), unit).unwrap();
    // A template is verified through an instance; the instance name is a CPU range.
    let instance = dir.join("spooky@0-1.service");
    symlink("spooky@.service", &instance).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .current_dir(&dir)
        .output()
        .expect("run systemd-analyze verify");
    let all = text(&out);
    let ours: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("spooky@") || l.contains(dir.to_str().unwrap()))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complains about the unit:\n{all}"
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{all}"
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn unit_runs_the_instance_cores_and_keeps_io_uring_allowed() {
    let exec_start = unit_values("ExecStart");
    assert_eq!(
        exec_start,
        ["/usr/local/bin/spooky --cores %i --config /etc/spooky/config.toml"]
    );
    let pre = unit_values("ExecStartPre");
    assert_eq!(pre.len(), 2, "{pre:?}");
    assert!(pre[0].ends_with("--check") && pre[0].contains("--config /etc/spooky/config.toml"));
    // The steering map directory is optional: its step must not fail the start.
    assert!(pre[1].starts_with("-+") && pre[1].ends_with("/sys/fs/bpf/spooky"));
    assert_eq!(unit_values("CPUAffinity"), ["%i"]);
    assert_eq!(unit_values("User"), ["spooky"]);
    assert_eq!(unit_values("LimitNOFILE"), ["1048576"]);
    assert_eq!(unit_values("LimitMEMLOCK").len(), 1);
    assert_eq!(
        unit_values("AmbientCapabilities"),
        ["CAP_NET_BIND_SERVICE CAP_BPF"]
    );
    assert_eq!(
        unit_values("CapabilityBoundingSet"),
        ["CAP_NET_BIND_SERVICE CAP_BPF"]
    );
    // bpf(2) is denied by ~@privileged and must be allowed again after it.
    let filters = unit_values("SystemCallFilter");
    assert_eq!(
        filters.last().map(String::as_str),
        Some("bpf"),
        "{filters:?}"
    );

    // An allow-list filter must keep io_uring; a deny-list must not take it (or CPU pinning) away.
    for filter in unit_values("SystemCallFilter") {
        if let Some(denied) = filter.strip_prefix('~') {
            for forbidden in ["io_uring", "@aio", "@resources", "sched_setaffinity"] {
                assert!(!denied.contains(forbidden), "SystemCallFilter={filter}");
            }
        } else if filter != "bpf" {
            for needed in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
                assert!(
                    filter.split_whitespace().any(|s| s == needed),
                    "SystemCallFilter={filter} lacks {needed}"
                );
            }
        }
    }
}

#[test]
fn sysctl_maxima_admit_the_socket_buffers_spooky_asks_for() {
    let conf = read(SYSCTL);
    let value = |key: &str| -> u64 {
        conf.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .unwrap_or_else(|| panic!("{SYSCTL} does not set {key}"))
            .1
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("net.core.rmem_max") >= SOCKET_BUFFER_BYTES);
    assert!(value("net.core.wmem_max") >= SOCKET_BUFFER_BYTES);
    // Conntrack keys exist only with the module loaded: they stay commented out.
    assert!(conf
        .lines()
        .all(|l| l.trim_start().starts_with('#') || !l.contains("nf_conntrack")));
}

/// Fake `systemctl`, `useradd`, `groupadd` first on PATH: a staged install must call none of them.
fn tripwire_path(dir: &Path) -> (PathBuf, std::ffi::OsString) {
    let bin = dir.join("tripwire-bin");
    let marker = dir.join("tripwire-called");
    fs::create_dir_all(&bin).unwrap();
    for tool in ["systemctl", "useradd", "groupadd"] {
        let script = bin.join(tool);
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho {tool} \"$@\" >> '{}'\nexit 1\n",
                marker.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    (marker, std::env::join_paths(paths).unwrap())
}

fn install(prefix: &Path, path: &std::ffi::OsStr) -> Output {
    Command::new(repo().join("scripts/install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--no-build")
        .env("SPOOKY_BIN", env!("CARGO_BIN_EXE_spooky"))
        .env("PATH", path)
        .output()
        .expect("run scripts/install.sh")
}

#[test]
fn install_lays_out_files_under_a_prefix_and_is_idempotent() {
    let dir = scratch("install");
    let prefix = dir.join("root");
    let (marker, path) = tripwire_path(&dir);

    let out = install(&prefix, &path);
    assert!(out.status.success(), "{}", text(&out));
    let expected = [
        ("usr/local/bin/spooky", 0o755),
        ("etc/spooky", 0o750),
        ("etc/spooky/certs", 0o750),
        ("etc/spooky/config.toml", 0o640),
        ("etc/systemd/system/spooky@.service", 0o644),
        ("etc/sysctl.d/99-spooky.conf", 0o644),
        ("etc/security/limits.d/spooky.conf", 0o644),
    ];
    for (relative, want) in expected {
        let path = prefix.join(relative);
        assert_eq!(mode(&path), want, "mode of {}", path.display());
    }
    assert_eq!(
        fs::read(prefix.join("usr/local/bin/spooky")).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_spooky")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(prefix.join("etc/systemd/system/spooky@.service")).unwrap(),
        read(UNIT)
    );
    assert_eq!(
        fs::read_to_string(prefix.join("etc/spooky/config.toml")).unwrap(),
        read("deploy/config.example.toml")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("systemctl enable --now spooky@0-3"),
        "{stdout}"
    );

    // A second run changes nothing and keeps an operator's edits to the configuration.
    let config = prefix.join("etc/spooky/config.toml");
    let edited = format!(
        "{}\n# edited by the operator\n",
        read("deploy/config.example.toml")
    );
    fs::write(&config, &edited).unwrap();
    let again = install(&prefix, &path);
    assert!(again.status.success(), "{}", text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("kept existing"), "{stdout}");
    assert!(
        !stdout.contains("created") && !stdout.contains("updated"),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);

    assert!(
        !marker.exists(),
        "a staged install ran: {}",
        fs::read_to_string(&marker).unwrap_or_default()
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn tune_kernel_dry_run_reports_and_changes_nothing() {
    if !on_path("sysctl") {
        println!("SKIPPED: sysctl (procps) is not installed");
        return;
    }
    let dir = scratch("tune");
    let state = dir.join("state/sysctl-before.conf");
    let persist_dir = dir.join("sysctl.d");
    let out = Command::new(repo().join("scripts/tune-kernel.sh"))
        .args(["--dry-run", "--persist"])
        .env("SPOOKY_SYSCTL_STATE", &state)
        .env("SPOOKY_SYSCTL_DIR", &persist_dir)
        .output()
        .expect("run scripts/tune-kernel.sh");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("net.core.rmem_max"), "{stdout}");
    assert!(stdout.contains("dry run"), "{stdout}");
    assert!(!state.exists(), "a dry run saved state");
    assert!(!persist_dir.exists(), "a dry run installed the file");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn scripts_are_shellcheck_clean() {
    if !on_path("shellcheck") {
        println!("SKIPPED: shellcheck is not installed");
        return;
    }
    let out = Command::new("shellcheck")
        .args([
            "-x",
            "scripts/install.sh",
            "scripts/tune-kernel.sh",
            "scripts/setup.sh",
            "scripts/test.sh",
            "scripts/demo.sh",
            "scripts/fuzz.sh",
            "bench/run.sh",
            "bench/soak.sh",
            "bench/peers.sh",
            "bench/instructions.sh",
        ])
        .current_dir(repo())
        .output()
        .expect("run shellcheck");
    assert!(out.status.success(), "{}", text(&out));
}

/// Runs `missing_packages` from `scripts/setup.sh` against a fake root and a fake `ldconfig -p`
/// listing, with a PATH holding only stubs for the named commands. Returns the packages it asks for.
fn packages_setup_asks_for(root: &Path, ldconfig_lines: &[&str], commands: &[&str]) -> Vec<String> {
    let bin = root.join("fake-bin");
    fs::create_dir_all(&bin).unwrap();
    for command in commands {
        let stub = bin.join(command);
        fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let listing = root.join("ldconfig-p.txt");
    fs::write(&listing, ldconfig_lines.join("\n")).unwrap();
    let out = Command::new("/bin/bash")
        .arg("-c")
        .arg("source scripts/setup.sh && missing_packages \"$1\" \"$2\"")
        .arg("test")
        .arg(root)
        .arg(&listing)
        .current_dir(repo())
        .env_clear()
        .env("PATH", &bin)
        .output()
        .expect("run scripts/setup.sh");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

const BUILD_COMMANDS: [&str; 4] = ["cmake", "git", "cc", "c++"];
const LIBCLANG_CPP_ONLY: &str =
    "\tlibclang-cpp.so.14 (libc6,x86-64) => /lib/x86_64-linux-gnu/libclang-cpp.so.14";

#[test]
fn setup_asks_for_libclang_dev_when_only_libclang_cpp_is_present() {
    let root = scratch("setup-cpp-only");
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&lib).unwrap();
    fs::write(lib.join("libclang-cpp.so.14"), "").unwrap();
    fs::create_dir_all(root.join("usr/lib/llvm-14/lib")).unwrap();
    fs::write(root.join("usr/lib/llvm-14/lib/libclang-cpp.so.14"), "").unwrap();
    let asked = packages_setup_asks_for(&root, &[LIBCLANG_CPP_ONLY], &BUILD_COMMANDS);
    assert_eq!(asked, ["libclang-dev"]);
    fs::remove_dir_all(&root).ok();
}

#[test]
fn setup_asks_for_nothing_when_libclang_so_1_is_present() {
    let root = scratch("setup-libclang1");
    let lib = root.join("usr/lib/llvm-14/lib");
    fs::create_dir_all(&lib).unwrap();
    fs::write(lib.join("libclang.so.1"), "").unwrap();
    let asked = packages_setup_asks_for(&root, &[LIBCLANG_CPP_ONLY], &BUILD_COMMANDS);
    assert!(asked.is_empty(), "asked for {asked:?}");
    fs::remove_dir_all(&root).ok();
}

#[test]
fn setup_finds_libclang_through_the_linker_cache_and_asks_for_missing_tools() {
    let root = scratch("setup-ldcache");
    let listing = [
        LIBCLANG_CPP_ONLY,
        "\tlibclang-14.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libclang-14.so.1",
    ];
    let asked = packages_setup_asks_for(&root, &listing, &["cc"]);
    assert_eq!(asked, ["cmake", "git", "build-essential"]);
    fs::remove_dir_all(&root).ok();
    let bare = scratch("setup-bare");
    let asked = packages_setup_asks_for(&bare, &[LIBCLANG_CPP_ONLY], &[]);
    assert_eq!(asked, ["cmake", "git", "build-essential", "libclang-dev"]);
    fs::remove_dir_all(&bare).ok();
}
