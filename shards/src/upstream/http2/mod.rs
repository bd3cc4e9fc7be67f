//! The [`Connector`] for HTTP/2 backends, cleartext (h2c with prior knowledge) or over TLS
//! (h2): one exchange is one h2 stream on a pooled connection ([`pool`]).
//!
//! Dropping an exchange's handles resets its h2 stream with CANCEL, which is how a client's
//! cancel reaches the backend.

pub mod pool;

use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;

use super::connector::{
    BodyFailure, Connector, ExchangeFailure, PendingResponse, ResponseBody, ResponseHead, Upload,
    UploadClosed,
};
use crate::http::RequestHead;
use pool::{Http2Pool, Lease};

/// A request sent, its response not yet here. Holds the stream's slot on its connection.
pub struct H2Pending {
    response: ResponseFuture,
    lease: Lease,
}

pub struct H2Body {
    body: RecvStream,
    _lease: Lease,
}

pub struct H2Upload {
    send: SendStream<Bytes>,
}

impl Connector for Rc<Http2Pool> {
    type Pending = H2Pending;
    type Upload = H2Upload;

    async fn open(
        &self,
        head: &RequestHead,
        has_body: bool,
    ) -> Result<(H2Pending, H2Upload), ExchangeFailure> {
        let (mut sender, lease) = self.acquire().await.map_err(|_| ExchangeFailure::Connect)?;
        let mut request = http::Request::new(());
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        *request.headers_mut() = head.headers.clone();
        *request.version_mut() = http::Version::HTTP_2;
        match sender.send_request(request, !has_body) {
            Ok((response, send)) => Ok((H2Pending { response, lease }, H2Upload { send })),
            Err(e) => {
                // Nothing was written for this stream: the connection was already unusable.
                log::debug!("h2 send_request failed: {e}");
                lease.mark_broken();
                Err(ExchangeFailure::Refused)
            }
        }
    }
}

impl PendingResponse for H2Pending {
    type Body = H2Body;

    async fn head(self) -> Result<(ResponseHead, H2Body), ExchangeFailure> {
        match self.response.await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let head = ResponseHead {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                };
                Ok((
                    head,
                    H2Body {
                        body,
                        _lease: self.lease,
                    },
                ))
            }
            Err(e) => {
                log::debug!("backend failed before responding: {e}");
                // RFC 9113 §8.7: a refused stream, or one above a GOAWAY's last stream, was not
                // processed.
                if e.reason() == Some(Reason::REFUSED_STREAM) || e.is_go_away() {
                    Err(ExchangeFailure::Refused)
                } else {
                    Err(ExchangeFailure::Broken)
                }
            }
        }
    }
}

fn body_failure(e: &h2::Error) -> BodyFailure {
    log::debug!("backend response body failed: {e}");
    if e.reason() == Some(Reason::CANCEL) {
        BodyFailure::Cancelled
    } else {
        BodyFailure::Broken
    }
}

impl ResponseBody for H2Body {
    fn is_end(&self) -> bool {
        self.body.is_end_stream()
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyFailure>> {
        Some(self.body.data().await?.map_err(|e| body_failure(&e)))
    }

    fn release(&mut self, n: usize) {
        let _ = self.body.flow_control().release_capacity(n);
    }

    async fn trailers(&mut self) -> Result<Option<HeaderMap>, BodyFailure> {
        self.body.trailers().await.map_err(|e| body_failure(&e))
    }
}

impl Upload for H2Upload {
    async fn capacity(&mut self, want: usize) -> Option<usize> {
        loop {
            self.send.reserve_capacity(want);
            match self.send.capacity() {
                0 => match poll_fn(|cx| self.send.poll_capacity(cx)).await {
                    Some(Ok(0)) => continue,
                    Some(Ok(n)) => return Some(n.min(want)),
                    _ => return None,
                },
                n => return Some(n.min(want)),
            }
        }
    }

    fn send(&mut self, data: Bytes) -> Result<(), UploadClosed> {
        self.send.send_data(data, false).map_err(|_| UploadClosed)
    }

    fn finish(&mut self, trailers: Option<HeaderMap>) {
        let ended = match trailers {
            Some(map) => self.send.send_trailers(map),
            None => self.send.send_data(Bytes::new(), true),
        };
        if let Err(e) = ended {
            log::debug!("ending upload failed: {e}");
        }
    }

    fn cancel(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }
}
