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
        command: "test".into(),
    };
    let report = matrix::run(&options).unwrap();
    for section in [
        "small-max",
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
        let spooky_row = report[start..]
            .lines()
            .find(|l| l.starts_with("| spooky |"))
            .unwrap_or_else(|| panic!("no spooky row in {section}"));
        let cells: Vec<&str> = spooky_row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], "0", "errors in {section}: {spooky_row}");
        if section != "idle-connections" {
            assert_ne!(
                cells[2], "0",
                "nothing completed in {section}: {spooky_row}"
            );
        }
    }
    assert!(report.contains("| RSS per idle QUIC connection (40 connections) |"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["sections"].as_array().unwrap().len(), 6);
}
