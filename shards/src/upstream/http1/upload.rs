//! A request body on its way to an HTTP/1.1 backend: the proxy pushes chunks, hyper pulls them.
//!
//! HTTP/1.1 has no flow control of its own; TCP's is the only one. The channel between the
//! request task and hyper holds one chunk: the proxy is granted capacity only once hyper took the
//! previous chunk to write it, so a backend that reads slowly slows the client's upload down
//! instead of filling memory here. Everything runs on the shard's thread, so the channel is a
//! `RefCell` and two wakers.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::upstream::connector::{Upload, UploadClosed};

/// The proxy abandoned the request; hyper then closes the connection, the only way HTTP/1.1 has
/// to tell a backend that a request is cancelled.
#[derive(Debug, thiserror::Error)]
#[error("the proxied request was cancelled")]
pub struct UploadCancelled;

#[derive(Default)]
struct Channel {
    /// The next chunk, until hyper takes it.
    chunk: Option<Bytes>,
    /// The client's trailers, sent after the last chunk.
    trailers: Option<HeaderMap>,
    /// No chunk follows the one queued.
    finished: bool,
    cancelled: bool,
    /// hyper dropped the body: the connection no longer writes it.
    dropped: bool,
    /// hyper, waiting for the next frame.
    consumer: Option<Waker>,
    /// The request task, waiting for room.
    producer: Option<Waker>,
}

impl Channel {
    fn wake_consumer(&mut self) {
        if let Some(waker) = self.consumer.take() {
            waker.wake();
        }
    }
}

/// Creates a body and the upload that feeds it; `has_body: false` gives a body that is empty.
pub fn channel(has_body: bool) -> (UploadBody, H1Upload) {
    let channel = Rc::new(RefCell::new(Channel {
        finished: !has_body,
        ..Channel::default()
    }));
    (
        UploadBody {
            channel: channel.clone(),
        },
        H1Upload { channel },
    )
}

/// hyper's side: the request body.
pub struct UploadBody {
    channel: Rc<RefCell<Channel>>,
}

/// The proxy's side.
pub struct H1Upload {
    channel: Rc<RefCell<Channel>>,
}

impl H1Upload {
    /// A handle that tells whether hyper wrote the whole body out, after the upload is gone.
    pub fn watch(&self) -> UploadWatch {
        UploadWatch {
            channel: self.channel.clone(),
        }
    }
}

/// Tells the response side whether the request body went out whole.
pub struct UploadWatch {
    channel: Rc<RefCell<Channel>>,
}

impl UploadWatch {
    /// Whether hyper took the whole body to write (or there was none). hyper stops asking, and
    /// drops the body, once it wrote as many bytes as `content-length` declared: a body hyper
    /// let go of with nothing left queued counts as written. (hyper also drops it when the
    /// connection fails, but then the exchange fails and the connection is not reused anyway.)
    pub fn drained(&self) -> bool {
        let channel = self.channel.borrow();
        !channel.cancelled
            && channel.chunk.is_none()
            && channel.trailers.is_none()
            && (channel.finished || channel.dropped)
    }
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = UploadCancelled;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadCancelled>>> {
        let mut channel = self.channel.borrow_mut();
        if channel.cancelled {
            return Poll::Ready(Some(Err(UploadCancelled)));
        }
        if let Some(chunk) = channel.chunk.take() {
            if let Some(waker) = channel.producer.take() {
                waker.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = channel.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if channel.finished {
            return Poll::Ready(None);
        }
        channel.consumer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let channel = self.channel.borrow();
        channel.finished && channel.chunk.is_none() && channel.trailers.is_none()
    }
}

impl Drop for UploadBody {
    fn drop(&mut self) {
        let mut channel = self.channel.borrow_mut();
        channel.dropped = true;
        if let Some(waker) = channel.producer.take() {
            waker.wake();
        }
    }
}

/// An upload dropped before it finished (the response came first, or the request was given up)
/// cancels, so that hyper stops waiting for the rest and closes the connection.
impl Drop for H1Upload {
    fn drop(&mut self) {
        let mut channel = self.channel.borrow_mut();
        if !channel.finished && !channel.dropped {
            channel.cancelled = true;
            channel.wake_consumer();
        }
    }
}

impl Upload for H1Upload {
    async fn capacity(&mut self, want: usize) -> Option<usize> {
        std::future::poll_fn(|cx| {
            let mut channel = self.channel.borrow_mut();
            if channel.dropped || channel.cancelled {
                return Poll::Ready(None);
            }
            if channel.chunk.is_some() {
                channel.producer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Some(want))
        })
        .await
    }

    fn send(&mut self, data: Bytes) -> Result<(), UploadClosed> {
        let mut channel = self.channel.borrow_mut();
        if channel.dropped || channel.cancelled || channel.finished {
            return Err(UploadClosed);
        }
        channel.chunk = Some(data);
        channel.wake_consumer();
        Ok(())
    }

    fn finish(&mut self, trailers: Option<HeaderMap>) {
        let mut channel = self.channel.borrow_mut();
        channel.trailers = trailers;
        channel.finished = true;
        channel.wake_consumer();
    }

    fn cancel(&mut self) {
        let mut channel = self.channel.borrow_mut();
        channel.cancelled = true;
        channel.wake_consumer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Waker;

    fn poll(body: &mut UploadBody) -> Poll<Option<Result<Frame<Bytes>, UploadCancelled>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    fn capacity(upload: &mut H1Upload) -> Poll<Option<usize>> {
        let future = std::pin::pin!(upload.capacity(100));
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn one_chunk_is_held_until_hyper_takes_it() {
        let (mut body, mut upload) = channel(true);
        assert_eq!(capacity(&mut upload), Poll::Ready(Some(100)));
        upload.send(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(capacity(&mut upload), Poll::Pending);
        match poll(&mut body) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "abc"),
            _ => panic!("the chunk was not handed over"),
        }
        assert_eq!(capacity(&mut upload), Poll::Ready(Some(100)));
        assert!(poll(&mut body).is_pending());
        assert!(!upload.watch().drained());
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        upload.finish(Some(trailers));
        assert!(
            !upload.watch().drained(),
            "the trailers are still to be written"
        );
        match poll(&mut body) {
            Poll::Ready(Some(Ok(frame))) => {
                assert_eq!(frame.into_trailers().unwrap()["x-sum"], "1")
            }
            _ => panic!("the trailers were not handed over"),
        }
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(upload.watch().drained());
    }

    #[test]
    fn no_body_is_an_empty_drained_stream() {
        let (body, upload) = channel(false);
        assert!(body.is_end_stream());
        assert!(upload.watch().drained());
    }

    #[test]
    fn cancel_fails_the_body_and_a_dropped_body_closes_the_upload() {
        let (mut body, mut upload) = channel(true);
        upload.cancel();
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(UploadCancelled)))
        ));
        let (body, mut upload) = channel(true);
        drop(body);
        assert_eq!(capacity(&mut upload), Poll::Ready(None));
        assert!(upload.send(Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn a_body_hyper_dropped_after_its_declared_length_counts_as_written() {
        let (mut body, mut upload) = channel(true);
        upload.send(Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        let watch = upload.watch();
        drop(body);
        assert_eq!(capacity(&mut upload), Poll::Ready(None));
        drop(upload);
        assert!(watch.drained());
        let (body, mut upload) = channel(true);
        upload.send(Bytes::from_static(b"abc")).unwrap();
        let watch = upload.watch();
        drop(body);
        assert!(!watch.drained(), "a chunk hyper never took was not written");
    }

    #[test]
    fn an_upload_dropped_unfinished_cancels_and_a_finished_one_does_not() {
        let (mut body, upload) = channel(true);
        drop(upload);
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(UploadCancelled)))
        ));
        let (mut body, mut upload) = channel(true);
        upload.finish(None);
        drop(upload);
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }
}
