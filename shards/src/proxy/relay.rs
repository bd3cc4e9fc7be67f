//! Body relay between a client stream and a backend exchange, in both directions, with
//! backpressure end to end.
//!
//! A request body byte is read from the client only once the backend granted send capacity for
//! it, and a response chunk's credit goes back to the backend only once the client took it. So a
//! stream holds at most one backend window plus one client window, whatever the body size.

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;

use super::decision::{AttemptFailure, Outcome};
use crate::http::{Abort, BodyRead, Downstream, ReadError};
use crate::rt;
use crate::stats::ShardStats;
use crate::upstream::connector::{
    BodyFailure, PendingResponse, ResponseBody, ResponseHead, Upload,
};

/// Largest request body chunk moved in one step.
const UPLOAD_CHUNK: usize = 64 * 1024;

fn abort_for(failure: BodyFailure) -> Abort {
    match failure {
        BodyFailure::Cancelled => Abort::Cancelled,
        BodyFailure::Broken => Abort::Internal,
    }
}

/// Waits up to `header_timeout` for the response head, then relays the response. `latency`
/// receives the time to response headers.
pub async fn response<D: Downstream, P: PendingResponse>(
    downstream: &D,
    pending: P,
    header_timeout: Duration,
    body_idle: Duration,
    latency: &Cell<Option<Duration>>,
) -> Result<Outcome, AttemptFailure> {
    let sent_at = Instant::now();
    let (head, body) = match rt::within(header_timeout, pending.head()).await {
        None => return Err(AttemptFailure::Timeout),
        Some(Err(failure)) => return Err(AttemptFailure::Exchange(failure)),
        Some(Ok(response)) => response,
    };
    latency.set(Some(sent_at.elapsed()));
    Ok(response_body(downstream, head, body, body_idle).await)
}

async fn response_body<D: Downstream, B: ResponseBody>(
    downstream: &D,
    head: ResponseHead,
    mut body: B,
    body_idle: Duration,
) -> Outcome {
    let status = head.status;
    let end_now = body.is_end();
    if downstream
        .send_head(status, &head.headers, end_now)
        .await
        .is_err()
    {
        return Outcome::ClientGone;
    }
    if end_now {
        return Outcome::Responded(status);
    }
    // The backend's next item when it was already there as the last chunk went out.
    let mut ahead = None;
    loop {
        let next = match ahead.take() {
            Some(next) => Some(next),
            None => rt::within(body_idle, body.next_chunk()).await,
        };
        let chunk = match next {
            Some(Some(Ok(chunk))) => chunk,
            Some(None) => break,
            Some(Some(Err(failure))) => {
                downstream.abort(abort_for(failure));
                return Outcome::Reset;
            }
            None => {
                log::debug!("backend response body idle for {body_idle:?}");
                downstream.abort(Abort::Internal);
                return Outcome::Reset;
            }
        };
        // An empty DATA frame (often the one carrying END_STREAM) has nothing to forward.
        if chunk.is_empty() {
            continue;
        }
        // When the backend's stream already ended behind this chunk (many servers end it with
        // an empty DATA frame of its own), the chunk ends the client's stream too: one frame
        // and one write, not a second, empty one just to carry the end.
        ahead = ready_next(&mut body).await;
        let last = matches!(ahead, Some(None)) && body.is_end();
        let len = chunk.len();
        if downstream.write_body(chunk, last).await.is_err() {
            return Outcome::ClientGone;
        }
        body.release(len);
        if last {
            return Outcome::Responded(status);
        }
    }
    let finished = match body.trailers().await {
        Ok(Some(trailers)) => downstream.send_trailers(&trailers).await,
        Ok(None) => downstream.write_body(Bytes::new(), true).await,
        Err(failure) => {
            downstream.abort(abort_for(failure));
            return Outcome::Reset;
        }
    };
    match finished {
        Ok(()) => Outcome::Responded(status),
        Err(_) => Outcome::ClientGone,
    }
}

/// The body's next item if it is there without waiting, passing over empty chunks; `None` when
/// it is not there yet.
async fn ready_next<B: ResponseBody>(body: &mut B) -> Option<Option<Result<Bytes, BodyFailure>>> {
    loop {
        match future::poll_once(body.next_chunk()).await {
            Some(Some(Ok(chunk))) if chunk.is_empty() => continue,
            ready => return ready,
        }
    }
}

/// Streams the request body to the backend. Returns an outcome only when the request must end
/// (the client went away, stalled, or sent a malformed body); a finished upload returns `Ok`.
pub async fn upload<D: Downstream, U: Upload>(
    downstream: &D,
    upload: &mut U,
    content_length: Option<u64>,
    body_started: &Cell<bool>,
    body_idle: Duration,
    stats: &ShardStats,
) -> Result<(), Outcome> {
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    let mut sent: u64 = 0;
    loop {
        // The backend stream is gone: the response side reports why.
        let Some(capacity) = upload.capacity(UPLOAD_CHUNK).await else {
            return Ok(());
        };
        let Some(read) = rt::within(body_idle, downstream.read_body(&mut buf[..capacity])).await
        else {
            log::debug!("client upload idle for {body_idle:?}");
            upload.cancel();
            downstream.abort(Abort::Cancelled);
            return Err(Outcome::Reset);
        };
        match read {
            Err(ReadError::Gone) => return Err(Outcome::ClientGone),
            Err(ReadError::Malformed(_)) => return Err(malformed(downstream, upload, stats)),
            Err(ReadError::TooLarge) => {
                upload.cancel();
                return Err(Outcome::BodyTooLarge);
            }
            Ok(BodyRead::Data(0)) => {}
            Ok(BodyRead::Data(n)) => {
                body_started.set(true);
                sent += n as u64;
                if content_length.is_some_and(|declared| sent > declared) {
                    return Err(malformed(downstream, upload, stats));
                }
                if upload.send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                    return Ok(());
                }
            }
            Ok(BodyRead::End(trailers)) => {
                if content_length.is_some_and(|declared| sent != declared) {
                    return Err(malformed(downstream, upload, stats));
                }
                upload.finish(trailers);
                return Ok(());
            }
        }
    }
}

/// The body disagrees with content-length, or the trailers are malformed (RFC 9114 §4.1.2).
fn malformed<D: Downstream, U: Upload>(
    downstream: &D,
    upload: &mut U,
    stats: &ShardStats,
) -> Outcome {
    stats.malformed_requests.incr();
    upload.cancel();
    downstream.abort(Abort::Malformed);
    Outcome::Reset
}
