//! The shard's runtime: the only module that names glommio.
//!
//! Everything above it spawns tasks, sleeps, races a future against a deadline and turns socket
//! descriptors into runtime sockets through these few functions, so the protocol layers stay
//! runtime-free and the rules glommio imposes are written down once, here:
//! - a task polled again while a datagram operation is pending leaks one waker reference per poll
//!   (`Source::collect_rw`, glommio 0.9), so a socket read must live in a task nothing else wakes
//!   ([`spawn`] it alone);
//! - glommio sockets are `!Send`, so they are made from descriptors inside the executor
//!   ([`udp_socket`]);
//! - `io_memory` is kept small ([`IO_MEMORY`]) to fit an unprivileged memlock limit;
//! - backend streams reach h2 and hyper through [`TokioTcp`], which reads without zeroing the
//!   caller's buffer each time.

mod latch;
mod notify;
mod tcp_io;

use std::future::Future;
use std::net::UdpSocket as StdUdpSocket;
use std::time::Duration;

pub use glommio::net::{TcpListener, TcpStream, UdpSocket};
pub use latch::Latch;
pub use notify::Notify;
pub use tcp_io::TokioTcp;

/// Memory glommio registers for io_uring buffers per shard. Kept small: the default asks for more
/// than an unprivileged memlock limit allows, and our large buffers are our own.
pub const IO_MEMORY: usize = 1 << 20;

/// A running executor thread, pinned to one CPU.
pub type ExecutorThread<T> = glommio::ExecutorJoinHandle<T>;

/// Why an executor could not start or its thread ended abnormally.
pub type ExecutorError = glommio::GlommioError<()>;

/// Starts `run` on a new thread named `name`, pinned to `cpu`, as the thread's only executor.
pub fn start_pinned<T, F, Fut>(
    name: &str,
    cpu: usize,
    run: F,
) -> Result<ExecutorThread<T>, ExecutorError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(name)
        .io_memory(IO_MEMORY)
        .spawn(run)
}

/// Starts `run` on a new thread named `name` with its own executor, on whatever CPU the kernel
/// picks (the coordinator's helpers: health checks, the demo backend).
pub fn start_unbound<T, F, Fut>(name: &str, run: F) -> Result<ExecutorThread<T>, ExecutorError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(IO_MEMORY)
        .spawn(run)
}

/// Runs `task` on this shard's executor, detached: it lives until it returns.
pub fn spawn(task: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(task).detach();
}

/// [`spawn`] for a large future, such as a request's: boxed first, because glommio moves a
/// spawned future by value through several calls before it reaches the task's own allocation,
/// and copying a future of a kilobyte that many times costs more than one allocation.
pub fn spawn_boxed(task: impl Future<Output = ()> + 'static) {
    spawn(Box::pin(task));
}

/// Runs `task` on this shard's executor and returns a handle to await its result.
pub fn spawn_joined<T: 'static>(
    task: impl Future<Output = T> + 'static,
) -> impl Future<Output = T> {
    glommio::spawn_local(task)
}

pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// `work`'s output, or `None` when `limit` passes first (`work` is then dropped).
pub async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// Lets every other runnable task of the shard run before this one continues.
pub async fn yield_now() {
    glommio::executor().yield_now().await;
}

/// A TCP listener on `addr` with `SO_REUSEPORT` (glommio sets it), so that every shard binds
/// its own on the port the UDP sockets share.
pub fn tcp_listener(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(std::io::Error::from)
}

/// A runtime UDP socket over `socket`'s descriptor, for waiting until datagrams arrive.
pub fn udp_socket(socket: StdUdpSocket) -> UdpSocket {
    UdpSocket::from(socket2_glommio::Socket::from(socket))
}
