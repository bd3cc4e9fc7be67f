//! A single-waiter, single-threaded wake-up signal for the shard's own tasks.
//!
//! Everything in a shard runs on one thread, so a `Cell` and a stored `Waker` are all that is
//! needed; no atomics, no locks.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiter, or makes its next `wait` return at once.
    pub fn notify(&self) {
        if self.pending.replace(true) {
            return;
        }
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Returns once `notify` has been called since the last return.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                return Poll::Ready(());
            }
            *self.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
