//! The real `spooky` binary as a child process, for tests that signal it, restart it or run
//! several on one port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spooky_bench::client::{ClientOptions, Verify};

use super::{eventually, free_port, http_get, scratch_dir};

/// A `spooky` process started from a configuration file.
pub struct SpookyProcess {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    pub ca: PathBuf,
}

impl SpookyProcess {
    pub fn start(label: &str, port: u16, body: &str) -> SpookyProcess {
        let dir = scratch_dir(label);
        let certs = spooky::selfsigned::generate(&dir).unwrap();
        Self::start_with(dir, certs, port, body)
    }

    /// Like `start`, with given certificates (processes sharing a port must share them).
    pub fn start_with(
        dir: PathBuf,
        certs: spooky::selfsigned::GeneratedCerts,
        port: u16,
        body: &str,
    ) -> SpookyProcess {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        Self::start_listening(dir, certs, listen, body)
    }

    /// Like `start_with`, listening on `listen` instead of 127.0.0.1.
    pub fn start_listening(
        dir: PathBuf,
        certs: spooky::selfsigned::GeneratedCerts,
        listen: SocketAddr,
        body: &str,
    ) -> SpookyProcess {
        let (ip, port) = (listen.ip(), listen.port());
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\naddress = \"{ip}\"\nport = {port}\ntls = {{ cert = {:?}, key = {:?} }}\n\n\
                 [admin]\naddress = \"{admin}\"\n\n{body}",
                certs.cert_chain.display().to_string(),
                certs.private_key.display().to_string()
            ),
        )
        .unwrap();
        let log = dir.join("spooky.log");
        let child = Command::new(env!("CARGO_BIN_EXE_spooky"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start spooky");
        let process = SpookyProcess {
            child,
            listen,
            admin,
            config,
            log,
            ca: certs.ca,
        };
        assert!(
            eventually(Duration::from_secs(15), || http_get(admin, "/health/live")
                .is_ok_and(|(status, _)| status == 200)),
            "spooky did not come up: {}",
            process.log_text()
        );
        process
    }

    pub fn client_options(&self, timeout: Duration) -> ClientOptions {
        ClientOptions {
            server: self.listen,
            server_name: "localhost".into(),
            verify: Verify::Ca(self.ca.clone()),
            timeout,
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {}", self.child.id());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for SpookyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
