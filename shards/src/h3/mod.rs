//! HTTP/3 on the shard's QUIC endpoint: one [`session::H3Session`] per connection (events,
//! admission, GOAWAY) and one [`stream::H3Stream`] per request (the proxy's
//! [`crate::http::Downstream`] for HTTP/3).
//!
//! [`Connections`] is the state both share on the shard's thread: the endpoint, and the two
//! signals request streams leave for the shard's driver (send what was written; poll the events
//! of connections whose bodies were read). `RefCell` borrows of the endpoint never cross an
//! await and never nest: streams borrow it inside one poll, the driver between polls.

pub mod session;
pub mod stream;

use std::cell::RefCell;

use crate::quic::cid::ServerCid;
use crate::quic::Endpoint;
use crate::rt::Notify;

pub use session::{H3Session, NewRequest, Polled};
pub use stream::{H3Stream, StreamKey};

pub struct Connections {
    pub endpoint: RefCell<Endpoint<H3Session>>,
    /// Set when a stream wrote or read: the flusher sends what connections have queued.
    pub flush_needed: Notify,
    /// Connections whose request bodies were read since the driver last polled their events.
    repoll: RefCell<Vec<ServerCid>>,
}

impl Connections {
    pub fn new(endpoint: Endpoint<H3Session>) -> Self {
        Connections {
            endpoint: RefCell::new(endpoint),
            flush_needed: Notify::default(),
            repoll: RefCell::new(Vec::new()),
        }
    }

    /// Asks the driver to poll `cid`'s HTTP/3 events before its next send.
    pub fn repoll(&self, cid: ServerCid) {
        let mut repoll = self.repoll.borrow_mut();
        if !repoll.contains(&cid) {
            repoll.push(cid);
        }
        drop(repoll);
        self.flush_needed.notify();
    }

    /// Takes the connections to poll again, leaving the (reused) list in `into`.
    pub fn take_repoll(&self, into: &mut Vec<ServerCid>) {
        into.clear();
        std::mem::swap(&mut *self.repoll.borrow_mut(), into);
    }
}
