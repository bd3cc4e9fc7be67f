//! Kernel-side steering: every QUIC packet is delivered to the socket of the shard that owns its
//! connection, across every Spooky process sharing the port.
//!
//! Plain `SO_REUSEPORT` picks a socket by hashing the 4-tuple, which breaks as soon as a client's
//! address changes (migration, NAT rebinding) or the group changes size (a process restarts and
//! every other process's connections are rehashed). Classic BPF (`SO_ATTACH_REUSEPORT_CBPF`) can
//! only return a position in the group's socket array, and the kernel reorders that array when a
//! socket leaves, so positions are not stable across restarts either.
//!
//! Instead a small eBPF program (`BPF_PROG_TYPE_SK_REUSEPORT`) reads the steering key from the
//! destination connection ID (see [`crate::quic::cid`]) and selects the socket stored under that key in
//! a `REUSEPORT_SOCKARRAY` map. Keys are CPU numbers, which are unique per host because each
//! process owns its own cores. The map is pinned in bpffs under a name derived from the listen
//! address, so every process of the group shares it; each process attaches an identical program
//! that reads the same map, so whichever attached last steers correctly for all. A socket that
//! closes leaves the map by itself: a restarting process never disturbs the others' entries.
//! Packets whose key has no socket (a client's first Initial, whose ID it chose at random, or a
//! connection of a process that has gone) fall back to the kernel's 4-tuple hash.
//!
//! Loading needs `CAP_BPF` (or root) and a mounted bpffs; without them the caller falls back to
//! hashing plus in-process hand-off ([`super::handoff`]). The program builder ([`program`]) is plain data
//! and unit-tested; the `bpf(2)` calls go through [`crate::sys`].

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;
use std::path::{Path, PathBuf};

mod program;

pub use program::{program, Insn};

/// Highest steering key plus one: the map's size. CPU numbers above this are refused at startup.
pub const MAX_STEERING_KEYS: u32 = 4096;

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT: u32 = 39;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// Why steering could not be set up.
#[derive(Debug)]
pub enum SteeringError {
    KeyTooLarge(usize),
    Map(io::Error),
    Pin {
        path: PathBuf,
        source: io::Error,
    },
    Load {
        source: io::Error,
        verifier_log: String,
    },
    Register {
        key: u16,
        source: io::Error,
    },
    Attach(io::Error),
}

impl fmt::Display for SteeringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SteeringError::KeyTooLarge(cpu) => {
                write!(
                    f,
                    "CPU {cpu} is above the steering limit of {MAX_STEERING_KEYS}"
                )
            }
            SteeringError::Map(e) => write!(f, "cannot create the socket map: {e}"),
            SteeringError::Pin { path, source } => {
                write!(
                    f,
                    "cannot share the socket map at {}: {source}",
                    path.display()
                )
            }
            SteeringError::Load {
                source,
                verifier_log,
            } => {
                write!(f, "cannot load the steering program: {source}")?;
                if !verifier_log.is_empty() {
                    write!(f, " (verifier: {verifier_log})")?;
                }
                Ok(())
            }
            SteeringError::Register { key, source } => {
                write!(f, "cannot register the socket for key {key}: {source}")
            }
            SteeringError::Attach(e) => write!(f, "cannot attach the steering program: {e}"),
        }
    }
}

impl std::error::Error for SteeringError {}

impl SteeringError {
    /// The one-line fix for the operator, when the cause is one we know.
    pub fn remedy(&self, pin_dir: &Path) -> Option<String> {
        let denied = |e: &io::Error| {
            matches!(e.kind(), io::ErrorKind::PermissionDenied)
                || e.raw_os_error() == Some(libc::EPERM)
        };
        match self {
            SteeringError::Map(e) | SteeringError::Attach(e) if denied(e) => {
                Some(CAP_BPF_FIX.into())
            }
            SteeringError::Load { source, .. } if denied(source) => Some(CAP_BPF_FIX.into()),
            SteeringError::Pin { source, .. } => Some(if denied(source) {
                format!("make {} writable by this user", pin_dir.display())
            } else {
                format!(
                    "mount bpffs (`mount -t bpf bpf /sys/fs/bpf`) so that {} can be created",
                    pin_dir.display()
                )
            }),
            SteeringError::KeyTooLarge(_) => {
                Some(format!("run on CPUs numbered below {MAX_STEERING_KEYS}"))
            }
            _ => None,
        }
    }
}

/// What grants the steering program's load: the spooky@ unit has it in AmbientCapabilities.
const CAP_BPF_FIX: &str = "grant CAP_BPF (the spooky@ unit does; by hand: `setcap \
     cap_bpf,cap_net_bind_service+ep` on the binary, or run as root)";

/// Steering in place for one process's sockets. Keeps the map and program alive; the kernel
/// keeps the attached program alive with the group.
pub struct Steering {
    map: OwnedFd,
    _program: OwnedFd,
    pin_path: PathBuf,
    keys: Vec<u16>,
}

impl Steering {
    /// Shares (or creates) the group's map under `pin_dir`, registers each socket under its key,
    /// and attaches the steering program to the group.
    pub fn attach(
        sockets: &[&UdpSocket],
        keys: &[usize],
        pin_dir: &Path,
    ) -> Result<Steering, SteeringError> {
        let keys: Vec<u16> = keys
            .iter()
            .map(|&cpu| {
                if cpu < MAX_STEERING_KEYS as usize {
                    Ok(cpu as u16)
                } else {
                    Err(SteeringError::KeyTooLarge(cpu))
                }
            })
            .collect::<Result<_, _>>()?;
        let local = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .ok_or_else(|| SteeringError::Attach(io::Error::other("no bound socket")))?;
        // bpffs allows directories; making ours here spares root users a setup step. Without
        // the permission the pin below fails with a clear error.
        let _ = std::fs::create_dir_all(pin_dir);
        let pin_path = pin_dir.join(pin_name(local));
        let map = open_or_create_map(&pin_path)?;
        let program = load_program(map.as_raw_fd())?;
        for (socket, key) in sockets.iter().zip(&keys) {
            map_update(map.as_raw_fd(), u32::from(*key), socket.as_raw_fd() as u64)
                .map_err(|source| SteeringError::Register { key: *key, source })?;
        }
        sys::set_int_option(
            sockets[0].as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            program.as_raw_fd(),
        )
        .map_err(SteeringError::Attach)?;
        Ok(Steering {
            map,
            _program: program,
            pin_path,
            keys,
        })
    }

    /// Where the shared map is pinned.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Withdraws this process's sockets from the map, and removes the pinned map when no other
    /// process has sockets in it, so a port that is no longer served leaves nothing behind. Call
    /// once the shards have stopped.
    pub fn release(self) {
        for key in &self.keys {
            let _ = map_delete(self.map.as_raw_fd(), u32::from(*key));
        }
        let in_use: Vec<u32> = (0..MAX_STEERING_KEYS)
            .filter(|&key| map_has(self.map.as_raw_fd(), key))
            .collect();
        if in_use.is_empty() {
            let _ = std::fs::remove_file(&self.pin_path);
        } else {
            log::debug!(
                "socket map {} still has sockets for keys {in_use:?}; kept",
                self.pin_path.display()
            );
        }
    }
}

/// The pin file name for a listen address: one map per reuseport group.
pub fn pin_name(addr: SocketAddr) -> String {
    let ip: String = addr
        .ip()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("spooky_udp_{ip}_{}", addr.port())
}

fn open_or_create_map(pin_path: &Path) -> Result<OwnedFd, SteeringError> {
    let path = CString::new(pin_path.as_os_str().as_encoded_bytes())
        .map_err(|e| SteeringError::Map(io::Error::other(e)))?;
    let get = || {
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        sys::bpf(BPF_OBJ_GET, &mut attr).map(sys::fd_from_bpf)
    };
    match get() {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SteeringError::Pin {
                path: pin_path.into(),
                source,
            })
        }
    }
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY) | (4u64 << 32);
    attr[1] = 8 | (u64::from(MAX_STEERING_KEYS) << 32);
    let map = sys::bpf(BPF_MAP_CREATE, &mut attr)
        .map(sys::fd_from_bpf)
        .map_err(SteeringError::Map)?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = map.as_raw_fd() as u64;
    match sys::bpf(BPF_OBJ_PIN, &mut attr) {
        Ok(_) => Ok(map),
        // Another process pinned its map first: use that one, so the group shares one map.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            get().map_err(|source| SteeringError::Pin {
                path: pin_path.into(),
                source,
            })
        }
        Err(source) => Err(SteeringError::Pin {
            path: pin_path.into(),
            source,
        }),
    }
}

fn load_program(map_fd: RawFd) -> Result<OwnedFd, SteeringError> {
    let insns = program(map_fd);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_SK_REUSEPORT) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    // expected_attach_type sits at byte offset 68: the high half of word 8.
    attr[8] = u64::from(BPF_SK_REUSEPORT_SELECT) << 32;
    match sys::bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(sys::fd_from_bpf(fd)),
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(SteeringError::Load {
                source,
                verifier_log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
            })
        }
    }
}

fn map_update(map_fd: RawFd, key: u32, value: u64) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = map_fd as u64;
    attr[1] = (&key as *const u32) as u64;
    attr[2] = (&value as *const u64) as u64;
    sys::bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

fn map_delete(map_fd: RawFd, key: u32) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = map_fd as u64;
    attr[1] = (&key as *const u32) as u64;
    sys::bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(|_| ())
}

fn map_has(map_fd: RawFd, key: u32) -> bool {
    let mut value = 0u64;
    let mut attr = [0u64; 16];
    attr[0] = map_fd as u64;
    attr[1] = (&key as *const u32) as u64;
    attr[2] = (&mut value as *mut u64) as u64;
    sys::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_file_names() {
        assert_eq!(
            pin_name("127.0.0.1:443".parse().unwrap()),
            "spooky_udp_127_0_0_1_443"
        );
        assert_eq!(
            pin_name("[::1]:8443".parse().unwrap()),
            "spooky_udp___1_8443"
        );
    }
}
