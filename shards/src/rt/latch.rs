//! A one-way, many-waiter signal for the shard's own tasks: once set, it stays set, and every
//! task waiting on it wakes. [`super::Notify`] wakes one waiter and rearms; draining must reach
//! every accept loop of the shard.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    /// One per waiting task; a task that polls again is not added twice.
    waiters: RefCell<Vec<Waker>>,
}

impl Latch {
    pub fn set(&self) {
        if self.set.replace(true) {
            return;
        }
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Returns once [`Latch::set`] has been called.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
