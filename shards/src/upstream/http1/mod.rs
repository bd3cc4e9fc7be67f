//! The [`Connector`] for HTTP/1.1 backends: one exchange is one request on a keep-alive
//! connection of the backend's [`pool`], written and read by hyper's client.
//!
//! A connection goes back to the pool only after an exchange that ended cleanly: the whole
//! response read, the whole request body written, and no `Connection: close` from the backend.
//! A backend that answered before it read the body, a body that broke, a client that went away
//! mid-response: each leaves the connection in a state the next request cannot trust, so it is
//! closed (hyper closes a connection whose exchange is dropped unfinished). Cancelling the
//! upload fails the body, and hyper then closes the connection: HTTP/1.1 has no other way to
//! tell a backend that a request is abandoned.

mod fields;
pub mod pool;
pub mod upgrade;
mod upload;

use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;
use hyper::body::Incoming;

use super::connector::{
    BodyFailure, Connector, ExchangeFailure, PendingResponse, ResponseBody, ResponseHead,
};
use crate::http::RequestHead;
use pool::{Http1Connection, Http1Pool};
pub use upload::H1Upload;
use upload::{UploadBody, UploadWatch};

/// A request ready to go out on its connection; hyper writes it once the response is awaited.
pub struct H1Pending {
    pool: Rc<Http1Pool>,
    connection: Http1Connection,
    request: http::Request<UploadBody>,
    upload: UploadWatch,
}

/// What a clean end of the exchange gives back to the pool.
struct Reusable {
    pool: Rc<Http1Pool>,
    connection: Http1Connection,
    upload: UploadWatch,
}

pub struct H1Body {
    body: Incoming,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// `None` once the connection must not carry another request.
    reusable: Option<Reusable>,
}

impl Connector for Rc<Http1Pool> {
    type Pending = H1Pending;
    type Upload = H1Upload;

    async fn open(
        &self,
        head: &RequestHead,
        has_body: bool,
    ) -> Result<(H1Pending, H1Upload), ExchangeFailure> {
        let connection = self.acquire().await.map_err(|_| ExchangeFailure::Connect)?;
        let (body, upload) = upload::channel(has_body);
        let pending = H1Pending {
            pool: self.clone(),
            connection,
            request: fields::request(head, has_body, body),
            upload: upload.watch(),
        };
        Ok((pending, upload))
    }
}

impl PendingResponse for H1Pending {
    type Body = H1Body;

    async fn head(self) -> Result<(ResponseHead, H1Body), ExchangeFailure> {
        let H1Pending {
            pool,
            mut connection,
            request,
            upload,
        } = self;
        match connection.sender.send_request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                let reusable = (!fields::closes_connection(&parts.headers)).then_some(Reusable {
                    pool,
                    connection,
                    upload,
                });
                fields::strip_hop_by_hop(&mut parts.headers);
                let head = ResponseHead {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                };
                let ended = body.is_end_stream();
                Ok((
                    head,
                    H1Body {
                        body,
                        trailers: None,
                        ended,
                        reusable,
                    },
                ))
            }
            Err(e) => {
                log::debug!("http/1.1 backend failed before responding: {e}");
                // Canceled: hyper found the connection closed before it wrote anything.
                if e.is_canceled() {
                    Err(ExchangeFailure::Refused)
                } else {
                    Err(ExchangeFailure::Broken)
                }
            }
        }
    }
}

impl ResponseBody for H1Body {
    fn is_end(&self) -> bool {
        self.ended && self.trailers.is_none()
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyFailure>> {
        loop {
            if self.ended {
                return None;
            }
            match poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                None => self.ended = true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.ended = true;
                    }
                },
                Some(Err(e)) => {
                    log::debug!("http/1.1 backend response body failed: {e}");
                    self.reusable = None;
                    return Some(Err(BodyFailure::Broken));
                }
            }
        }
    }

    /// TCP is HTTP/1.1's only flow control: the next chunk is read only when asked for.
    fn release(&mut self, _n: usize) {}

    async fn trailers(&mut self) -> Result<Option<HeaderMap>, BodyFailure> {
        Ok(self.trailers.take())
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        if !self.ended {
            return;
        }
        if let Some(reusable) = self.reusable.take() {
            // A backend that answered before reading the whole body did not read the rest;
            // those bytes would be taken as the next request.
            if reusable.upload.drained() {
                reusable.pool.release(reusable.connection);
            }
        }
    }
}
