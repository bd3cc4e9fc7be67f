//! The soak mode end to end, shortened to half a minute with a 10 s period: the real `spooky`
//! binary, two real backends, one killed and restored each period, reloads, churning HTTP/3
//! clients; the CSV, chart and summary it writes say what happened.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use spooky_bench::chart::png;
use spooky_bench::soak::{self, SoakOptions};

#[test]
fn soak_kills_reloads_and_records_it_all() {
    let spooky = PathBuf::from(env!("CARGO_BIN_EXE_spooky"));
    let bench = spooky.with_file_name("spooky-bench");
    assert!(bench.is_file(), "{} is not built", bench.display());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy_cpu = cpus - 1;
    let mut load_cpus: Vec<usize> = (0..cpus).filter(|c| *c != proxy_cpu).collect();
    if load_cpus.is_empty() {
        load_cpus.push(proxy_cpu);
    }
    let out = common::scratch_dir("soak");
    let options = SoakOptions {
        spooky,
        bench,
        out_dir: out.clone(),
        duration: Duration::from_secs(30),
        period: Duration::from_secs(10),
        rate: 200.0,
        proxy_cpu,
        load_cpus,
        command: "test".into(),
    };
    let summary = soak::run(&options).unwrap();

    // Reloads at 10 s and 20 s, each applied; kills at 5, 15 and 25 s.
    assert!(
        summary.contains("| reloads sent / applied | 2 / 2 |"),
        "{summary}"
    );
    assert!(summary.contains("| backend outages | 3 |"), "{summary}");
    assert!(
        summary.contains("| RSS growth after warm-up | "),
        "{summary}"
    );

    let csv = std::fs::read_to_string(out.join("soak.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "seconds,rss_bytes,quic_connections,requests,errors,served,served_5xx,\
             config_generation,backend_b_up"
        )
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    // One sample a second (a twelfth of the period, at least 1 s), plus the last.
    assert!((28..=33).contains(&rows.len()), "{} samples", rows.len());
    let last = rows.last().unwrap();
    assert_eq!(last[7], 3.0, "configuration generation after two reloads");
    let down = rows.iter().filter(|r| r[8] == 0.0).count();
    assert!(
        (3..=9).contains(&down),
        "{down} samples with backend b down"
    );
    assert_eq!(last[8], 1.0, "backend b restored at the end");
    assert!(rows.iter().all(|r| r[1] > 1e6), "RSS sampled every time");
    assert!(rows[5..].iter().all(|r| r[2] >= 1.0), "connections open");
    let (requests, errors, served) = (last[3], last[4], last[5]);
    assert!(requests > 3000.0, "{requests} requests completed");
    assert!(served >= requests, "Spooky counted {served} of {requests}");
    // Killing a backend may cost a response that was on its way (an upload cannot be retried);
    // anything more means failover is broken.
    assert!(errors <= requests / 100.0, "{errors} errors for {requests}");

    let chart = std::fs::read(out.join("soak.png")).unwrap();
    assert_eq!(chart[..8], png::SIGNATURE);
    assert_eq!(&chart[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(chart[16..20].try_into().unwrap()), 1000);
    let md = std::fs::read_to_string(out.join("soak.md")).unwrap();
    assert_eq!(md, summary);
}
