//! What the proxy needs from a backend connection, whatever protocol reaches it.
//!
//! A [`Connector`] opens one exchange per request attempt: the request head goes out at once, then
//! the proxy streams the request body into the [`Upload`] while it waits on the
//! [`PendingResponse`] and relays the [`ResponseBody`]. Cleartext HTTP/2 implements it today
//! ([`super::pool`]); HTTP/1.1 and TLS backends plug in beside it.
//!
//! Flow control is part of the contract, because it is what bounds a stream's memory: an upload
//! asks for [`Upload::capacity`] before taking bytes from the client, and a response chunk's
//! credit is returned with [`ResponseBody::release`] only once the client took it.

use bytes::Bytes;
use http::HeaderMap;

use crate::http::RequestHead;

/// Why an exchange produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeFailure {
    /// No connection could be made: the backend never saw the request.
    Connect,
    /// The backend refused the request (REFUSED_STREAM, or GOAWAY before it): not processed.
    Refused,
    /// The backend failed after it may have started processing the request.
    Broken,
}

/// Why a response body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The backend cancelled the stream.
    Cancelled,
    /// The stream or connection broke.
    Broken,
}

/// The backend stream no longer takes body bytes; the response side reports why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadClosed;

/// A response's status and fields.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: HeaderMap,
}

#[allow(async_fn_in_trait)] // used generically on the shard's thread, never as `dyn`
pub trait Connector {
    type Pending: PendingResponse;
    type Upload: Upload;
    /// Sends `head`; `has_body` says whether a body (or trailers) will follow through the upload.
    async fn open(
        &self,
        head: &RequestHead,
        has_body: bool,
    ) -> Result<(Self::Pending, Self::Upload), ExchangeFailure>;
}

#[allow(async_fn_in_trait)]
pub trait PendingResponse {
    type Body: ResponseBody;
    /// Waits for the response head.
    async fn head(self) -> Result<(ResponseHead, Self::Body), ExchangeFailure>;
}

#[allow(async_fn_in_trait)]
pub trait ResponseBody {
    /// Whether nothing follows what was returned so far: the head ended the stream, or the last
    /// chunk did, with no trailers. A body that learns its end only when asked for the next
    /// chunk says `false` until then.
    fn is_end(&self) -> bool;
    /// The next body chunk; `None` once the body is complete.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyFailure>>;
    /// Returns flow-control credit for `n` bytes the client has taken.
    fn release(&mut self, n: usize);
    /// The trailers, after the last chunk.
    async fn trailers(&mut self) -> Result<Option<HeaderMap>, BodyFailure>;
}

#[allow(async_fn_in_trait)]
pub trait Upload {
    /// Waits until the backend can take up to `want` more bytes; returns how many (`None`: the
    /// backend stream is gone, and the response side reports why).
    async fn capacity(&mut self, want: usize) -> Option<usize>;
    /// Sends body bytes within the capacity granted.
    fn send(&mut self, data: Bytes) -> Result<(), UploadClosed>;
    /// Ends the body, with trailers if the client sent any.
    fn finish(&mut self, trailers: Option<HeaderMap>);
    /// Abandons the request: the backend learns it was cancelled.
    fn cancel(&mut self);
}
