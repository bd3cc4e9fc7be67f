//! One request's stream as the client drives it: where its body comes from, and what arrives
//! for it (headers, data checked by length and checksum, the end).

use super::*;

/// Where the next request body bytes come from.
pub(super) enum Source {
    Empty,
    Bytes(Vec<u8>, usize),
    Pattern { len: u64, next: u64 },
    File(std::fs::File),
}

impl Source {
    pub(super) fn new(body: &Body) -> Result<Source, ClientError> {
        Ok(match body {
            Body::Empty => Source::Empty,
            Body::Bytes(b) => Source::Bytes(b.clone(), 0),
            Body::Pattern(len) => Source::Pattern { len: *len, next: 0 },
            Body::File(path) => Source::File(std::fs::File::open(path)?),
        })
    }

    pub(super) fn is_empty_body(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Bytes(b, _) => b.is_empty(),
            Source::Pattern { len, .. } => *len == 0,
            Source::File(_) => false,
        }
    }

    /// Fills `chunk` with the next bytes; an empty chunk means the body is done.
    pub(super) fn refill(&mut self, chunk: &mut Vec<u8>) -> Result<(), ClientError> {
        chunk.clear();
        match self {
            Source::Empty => {}
            Source::Bytes(bytes, offset) => {
                let end = (*offset + CHUNK).min(bytes.len());
                chunk.extend_from_slice(&bytes[*offset..end]);
                *offset = end;
            }
            Source::Pattern { len, next } => {
                let end = (*next + CHUNK as u64).min(*len);
                chunk.extend((*next..end).map(pattern_byte));
                *next = end;
            }
            Source::File(file) => {
                chunk.resize(CHUNK, 0);
                let n = file.read(chunk)?;
                chunk.truncate(n);
            }
        }
        Ok(())
    }
}

pub(super) struct Stream {
    pub(super) index: usize,
    pub(super) source: Source,
    pub(super) chunk: Vec<u8>,
    pub(super) chunk_offset: usize,
    pub(super) body_done: bool,
    pub(super) trailers: Vec<(String, String)>,
    pub(super) keep_body: bool,
    pub(super) response: Response,
    pub(super) hasher: Sha256,
    pub(super) headers_seen: bool,
    pub(super) cancel_after: Option<u64>,
}

pub(super) fn on_headers(stream: &mut Stream, list: Vec<quiche::h3::Header>) {
    let pairs = list.iter().map(|h| {
        (
            String::from_utf8_lossy(h.name()).into_owned(),
            String::from_utf8_lossy(h.value()).into_owned(),
        )
    });
    if stream.headers_seen {
        stream.response.trailers.extend(pairs);
        return;
    }
    stream.headers_seen = true;
    for (name, value) in pairs {
        if name == ":status" {
            stream.response.status = value.parse().unwrap_or(0);
        } else {
            stream.response.headers.push((name, value));
        }
    }
}

pub(super) fn on_data(
    h3: &mut quiche::h3::Connection,
    conn: &mut quiche::Connection,
    stream_id: u64,
    stream: &mut Stream,
    buf: &mut [u8],
) -> Option<Result<Response, ClientError>> {
    while let Ok(n) = h3.recv_body(conn, stream_id, buf) {
        stream.hasher.update(&buf[..n]);
        stream.response.body_len += n as u64;
        if stream.keep_body {
            stream.response.body.extend_from_slice(&buf[..n]);
        }
        if let Some(limit) = stream.cancel_after {
            if stream.response.body_len >= limit {
                let _ =
                    conn.stream_shutdown(stream_id, quiche::Shutdown::Read, H3_REQUEST_CANCELLED);
                let _ =
                    conn.stream_shutdown(stream_id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
                return Some(Ok(std::mem::take(&mut stream.response)));
            }
        }
    }
    None
}

pub(super) fn finish(stream: &mut Stream) -> Result<Response, ClientError> {
    let mut response = std::mem::take(&mut stream.response);
    response.body_sha256 = std::mem::take(&mut stream.hasher).finalize().into();
    if !stream.headers_seen {
        return Err(ClientError::Protocol(
            "stream ended without response headers".into(),
        ));
    }
    if let Some(declared) = response
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared != response.body_len {
            return Err(ClientError::Protocol(format!(
                "content-length {declared} but {} body bytes",
                response.body_len
            )));
        }
    }
    Ok(response)
}

pub(super) fn push_body(
    h3: &mut quiche::h3::Connection,
    conn: &mut quiche::Connection,
    stream_id: u64,
    stream: &mut Stream,
) -> Result<(), ClientError> {
    while !stream.body_done {
        if stream.chunk_offset == stream.chunk.len() {
            stream.source.refill(&mut stream.chunk)?;
            stream.chunk_offset = 0;
            if stream.chunk.is_empty() {
                let ended = if stream.trailers.is_empty() {
                    h3.send_body(conn, stream_id, &[], true).map(|_| ())
                } else {
                    let trailers: Vec<quiche::h3::Header> = stream
                        .trailers
                        .iter()
                        .map(|(n, v)| quiche::h3::Header::new(n.as_bytes(), v.as_bytes()))
                        .collect();
                    h3.send_additional_headers(conn, stream_id, &trailers, true, true)
                };
                match ended {
                    Ok(()) => stream.body_done = true,
                    Err(quiche::h3::Error::Done | quiche::h3::Error::StreamBlocked) => {}
                    Err(e) => return Err(ClientError::Protocol(format!("ending body: {e}"))),
                }
                return Ok(());
            }
        }
        match h3.send_body(conn, stream_id, &stream.chunk[stream.chunk_offset..], false) {
            Ok(0) | Err(quiche::h3::Error::Done) => return Ok(()),
            Ok(n) => stream.chunk_offset += n,
            Err(quiche::h3::Error::TransportError(quiche::Error::StreamStopped(_))) => {
                // The server stopped reading our body (it answered early): stop sending.
                stream.body_done = true;
                return Ok(());
            }
            Err(e) => return Err(ClientError::Protocol(format!("send_body: {e}"))),
        }
    }
    Ok(())
}

pub(super) fn fail_all(
    mut results: Vec<Option<Result<Response, ClientError>>>,
    streams: std::collections::HashMap<u64, Stream>,
    queue: VecDeque<(usize, Request, Option<u64>)>,
    error: ClientError,
) -> Vec<Result<Response, ClientError>> {
    let describe = error.to_string();
    let again = |e: &ClientError| match e {
        ClientError::Timeout => ClientError::Timeout,
        _ => ClientError::ConnectionClosed(describe.clone()),
    };
    for (_, stream) in streams {
        results[stream.index].get_or_insert_with(|| Err(again(&error)));
    }
    for (index, _, _) in queue {
        results[index].get_or_insert_with(|| Err(again(&error)));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(again(&error))))
        .collect()
}
