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
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("usage"), "{stderr}");
    assert!(stderr.contains("--bogus"), "{stderr}");
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

/// `spooky --demo` (the README's first command) starts without a warning and prints a
/// `spooky-bench` command that works as printed from the clone.
#[test]
fn demo_starts_quietly_and_its_suggested_command_works() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;

    let repo = env!("CARGO_MANIFEST_DIR");
    let port = common::free_port().to_string();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_spooky"))
        .args(["--demo", "--port", &port])
        .current_dir(repo)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spooky --demo");
    let (lines, received) = mpsc::channel();
    for pipe in [
        Box::new(demo.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(demo.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
    }
    let mut output = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !output
        .iter()
        .any(|l: &String| l.contains("Stop with Ctrl-C"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => panic!("demo did not start in 60 s:\n{}", output.join("\n")),
        }
    }
    let text = output.join("\n");
    assert!(!text.contains("WARN"), "the demo warned:\n{text}");
    let suggested = output
        .iter()
        .find_map(|l| l.strip_prefix("Try: "))
        .unwrap_or_else(|| panic!("no suggested command:\n{text}"));
    let words: Vec<&str> = suggested.split_whitespace().collect();
    assert!(
        words[0].ends_with("target/release/spooky-bench"),
        "{suggested}"
    );
    let run = Command::new(words[0])
        .args(&words[1..])
        .current_dir(repo)
        .output()
        .expect("run the suggested command");
    // The same request over TCP: HTTP/2 on TLS, with the Alt-Svc that points at HTTP/3.
    let over_tcp = output
        .iter()
        .find_map(|l| l.strip_prefix("Over TCP: "))
        .unwrap_or_else(|| panic!("no TCP command:\n{text}"));
    let words: Vec<&str> = over_tcp.split_whitespace().collect();
    let tcp_run = Command::new(words[0])
        .args(&words[1..])
        .current_dir(repo)
        .output()
        .expect("run the TCP command");
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(run.status.success(), "{suggested}: {run:?}");
    assert!(!run.stdout.is_empty(), "{suggested}: empty response");
    assert!(tcp_run.status.success(), "{over_tcp}: {tcp_run:?}");
    let shown = String::from_utf8_lossy(&tcp_run.stdout);
    assert!(shown.starts_with("HTTP/2 200\n"), "{shown}");
    assert!(
        shown.contains(&format!("alt-svc: h3=\":{port}\"; ma=86400\n")),
        "{shown}"
    );
    assert!(
        shown.contains("Hello from Spooky's built-in demo backend."),
        "{shown}"
    );
}
