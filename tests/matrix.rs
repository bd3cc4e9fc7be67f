//! The benchmark matrix end to end, shortened: every scenario runs against the real `spooky`
//! binary and the real backend, and the report has every section with error-free Spooky rows.
//! (Timings are not asserted: speed is the report's business, not a test's.)

mod common;

use std::path::PathBuf;
use std::time::Duration;

use spooky_bench::matrix::{self, MatrixOptions};

#[test]
fn matrix_runs_every_scenario_and_writes_the_report() {
    let spooky = PathBuf::from(env!("CARGO_BIN_EXE_spooky"));
    // Built by the same workspace test run, next to the spooky binary.
    let bench = spooky.with_file_name("spooky-bench");
    assert!(bench.is_file(), "{} is not built", bench.display());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy_cpu = cpus - 1;
    let mut load_cpus: Vec<usize> = (0..cpus).filter(|c| *c != proxy_cpu).collect();
    if load_cpus.is_empty() {
        load_cpus.push(proxy_cpu);
    }
    let out = common::scratch_dir("matrix");
    let options = MatrixOptions {
        spooky,
        bench,
        out_dir: out.clone(),
        duration: Duration::from_secs(1),
        proxy_cpu,
        load_cpus,
        idle_connections: 40,
        skip_caddy: true,
        haproxy: None,
        nginx: None,
        command: "test".into(),
    };
    let report = matrix::run(&options).unwrap();
    for section in [
        "small-max",
        "small-2000",
        "small-half-rate",
        "download-100MB",
        "upload-10MB",
        "handshakes",
        "idle-connections",
    ] {
        let heading = format!("## {section}\n");
        let start = report
            .find(&heading)
            .unwrap_or_else(|| panic!("{section} missing"));
        let table = &report[start + heading.len()..];
        let table = &table[..table.find("\n## ").unwrap_or(table.len())];
        // HTTP/3 everywhere; HTTP/2 over TLS where the scenario is not about QUIC connections.
        let over_tcp = !matches!(section, "handshakes" | "idle-connections");
        for (target, expected) in [
            ("spooky", true),
            ("spooky-h2", over_tcp),
            ("spooky-http1", over_tcp),
        ] {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {target} |")));
            assert_eq!(
                row.is_some(),
                expected,
                "{target} row in {section}:\n{table}"
            );
            let Some(row) = row else { continue };
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[3], "0", "errors in {section}: {row}");
            if section != "idle-connections" {
                assert_ne!(cells[2], "0", "nothing completed in {section}: {row}");
            }
        }
    }
    assert!(
        report.contains("over HTTP/2+TLS on TCP (max rate) |"),
        "{report}"
    );
    assert!(report.contains("| RSS per idle QUIC connection (40 connections) |"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["sections"].as_array().unwrap().len(), 7);
}
