//! Protocol upgrades towards an HTTP/1.1 backend (RFC 9110 §7.8), for WebSocket (RFC 6455 §4):
//! the client's upgrade request goes out on a connection of its own, never a pooled one, since
//! a `101 Switching Protocols` turns that connection into the tunnel. Any other answer (a `403`,
//! a `426`) is a plain response the client gets as it is; its body is small by nature and is
//! read whole, up to [`MAX_REFUSAL_BODY`].
//!
//! hyper hands an upgraded connection back through `without_shutdown` and `into_parts`, which
//! need no `Send` IO (its `upgrade::on` path does, and glommio's sockets are not `Send`).

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use http_body::Body;
use hyper_util::rt::TokioIo;

use super::fields;
use super::upload;
use crate::http::RequestHead;
use crate::rt;
use crate::upstream::dial::{BackendStream, DialError, Dialer};

/// The most of a refusal's body that is passed on; a longer one fails the upgrade.
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Why the upgrade request got no answer the client can be given.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("no answer to the upgrade request within {0:?}")]
    TimedOut(Duration),
    #[error("HTTP/1.1 exchange: {0}")]
    Http(#[source] hyper::Error),
    #[error("the refusal's body is longer than {MAX_REFUSAL_BODY} bytes")]
    RefusalTooLong,
}

/// What the backend answered.
pub enum Upgrade {
    /// `101`: the backend now speaks `protocol` on `io`; `early` is what it sent right after
    /// its response, already read.
    Switched {
        headers: HeaderMap,
        protocol: HeaderValue,
        io: BackendStream,
        early: Bytes,
    },
    /// Anything else, to pass on as the response.
    Refused {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// Sends `head` to the backend as an upgrade to `protocol` and waits (at most `timeout`) for
/// its answer.
pub async fn upgrade(
    dialer: &Dialer,
    head: &RequestHead,
    protocol: &HeaderValue,
    timeout: Duration,
) -> Result<Upgrade, UpgradeError> {
    rt::within(timeout, exchange(dialer, head, protocol))
        .await
        .unwrap_or(Err(UpgradeError::TimedOut(timeout)))
}

async fn exchange(
    dialer: &Dialer,
    head: &RequestHead,
    protocol: &HeaderValue,
) -> Result<Upgrade, UpgradeError> {
    let stream = dialer.dial().await?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, upload::UploadBody>(TokioIo::new(stream))
        .await
        .map_err(UpgradeError::Http)?;
    let parts = rt::spawn_joined(connection.without_shutdown());
    let (body, _upload) = upload::channel(false);
    let mut request = fields::request(head, false, body);
    request
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    request.headers_mut().insert(UPGRADE, protocol.clone());
    let response = sender
        .send_request(request)
        .await
        .map_err(UpgradeError::Http)?;
    let (mut response, mut incoming) = response.into_parts();
    if response.status != http::StatusCode::SWITCHING_PROTOCOLS {
        let mut body = BytesMut::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx)).await {
            if let Ok(data) = frame.map_err(UpgradeError::Http)?.into_data() {
                if body.len() + data.len() > MAX_REFUSAL_BODY {
                    return Err(UpgradeError::RefusalTooLong);
                }
                body.extend_from_slice(&data);
            }
        }
        fields::strip_hop_by_hop(&mut response.headers);
        return Ok(Upgrade::Refused {
            status: response.status.as_u16(),
            headers: response.headers,
            body: body.freeze(),
        });
    }
    let protocol = response
        .headers
        .get(UPGRADE)
        .cloned()
        .unwrap_or_else(|| protocol.clone());
    drop(sender);
    let parts = parts.await.map_err(UpgradeError::Http)?;
    fields::strip_hop_by_hop(&mut response.headers);
    Ok(Upgrade::Switched {
        headers: response.headers,
        protocol,
        io: parts.io.into_inner(),
        early: parts.read_buf,
    })
}
