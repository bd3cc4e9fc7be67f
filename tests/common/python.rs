//! Independent backends written in Python (bench/python), run from the virtual environment that
//! `scripts/setup.sh --with-test-tools` builds under target/test-python. A missing environment
//! fails the test with the command that builds it: these tests must not pass by skipping.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment's interpreter.
pub fn python() -> PathBuf {
    let python = repo().join("target/test-python/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --with-test-tools",
        python.display()
    );
    python
}

/// A Python server process that printed `listening PORT`; killed when dropped.
pub struct PythonServer {
    child: Child,
    pub addr: SocketAddr,
}

impl PythonServer {
    /// Starts `bench/python/SCRIPT` and waits (at most 30 s) for it to say where it listens.
    pub fn start(script: &str) -> PythonServer {
        let mut child = Command::new(python())
            .arg(repo().join("bench/python").join(script))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>());
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(port)) => port,
            other => {
                let _ = child.kill();
                panic!("{script} did not report its port: {other:?}");
            }
        };
        PythonServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
