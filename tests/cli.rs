//! The `spooky` binary's command line: `--check` exit codes and messages, and that a bad
//! configuration stops the process before anything binds.

mod common;

use std::process::Command;

fn spooky(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spooky"))
        .args(args)
        .output()
        .expect("run spooky")
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let certs = spooky::selfsigned::generate(dir).unwrap();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1\"\nport = 0\ntls = {{ cert = {:?}, key = {:?} }}\n\n{body}",
        certs.cert_chain.display().to_string(),
        certs.private_key.display().to_string(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const VALID_POOL: &str = "[upstream.web]\nroute = { path_prefix = \"/\" }\n\
    [[upstream.web.backends]]\nid = \"web-1\"\naddress = \"127.0.0.1:9\"\n";

#[test]
fn check_accepts_a_valid_file() {
    let dir = common::scratch_dir("cli-valid");
    let path = write_config(&dir, VALID_POOL);
    let out = spooky(&["--config", path.to_str().unwrap(), "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn check_rejects_an_unknown_key_naming_its_path() {
    let dir = common::scratch_dir("cli-unknown");
    let path = write_config(
        &dir,
        &VALID_POOL.replace("id = \"web-1\"", "id = \"web-1\"\nwieght = 3"),
    );
    let out = spooky(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream.web.backends[0].wieght"),
        "{stderr}"
    );
}

#[test]
fn running_with_a_bad_file_exits_non_zero_without_serving() {
    let dir = common::scratch_dir("cli-bad-run");
    let path = write_config(&dir, &VALID_POOL.replace("127.0.0.1:9", "not-an-address"));
    let out = spooky(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream.web.backends[0].address"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let out = spooky(&["--config", "/nonexistent/spooky.toml", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/spooky.toml"));
}

#[test]
fn usage_errors_exit_2() {
    let out = spooky(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn cores_flag_replaces_the_files_cpus_for_systemd_instances() {
    let dir = common::scratch_dir("cli-cores");
    // CPU 1000 exists on no test machine: the file alone is rejected...
    let path = write_config(&dir, &format!("[runtime]\ncores = [1000]\n\n{VALID_POOL}"));
    let out = spooky(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtime.cores"));
    // ...but an instance's --cores list is what counts.
    let out = spooky(&[
        "--cores",
        "0",
        "--config",
        path.to_str().unwrap(),
        "--check",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = spooky(&[
        "--cores",
        "1000",
        "--config",
        path.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cores"));
}
