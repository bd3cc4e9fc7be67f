//! Why a load run could not start or a loader thread stopped, with the underlying error kept.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options contradict each other or name something unusable; the message says which.
    #[error("{0}")]
    Options(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Quic {
        what: &'static str,
        #[source]
        source: quiche::Error,
    },
    #[error("HTTP/3 setup: {0}")]
    Http3(#[source] quiche::h3::Error),
    #[error("HTTP/2 handshake with {server}: {source}")]
    Http2 {
        server: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("no randomness for connection IDs")]
    Random,
    #[error("a loader thread panicked")]
    ThreadPanicked,
}

impl LoadError {
    /// An IO failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LoadError {
        let what = what.into();
        move |source| LoadError::Io { what, source }
    }

    pub fn options(message: impl Into<String>) -> LoadError {
        LoadError::Options(message.into())
    }
}
