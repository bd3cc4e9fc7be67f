//! The built-in backend used by `spooky --demo`.
//!
//! A small cleartext HTTP/2 server on its own glommio executor, so a newcomer can see a request go
//! through Spooky without setting anything else up. It answers every request with a short text
//! page describing what it received.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use shards::rt::{self, TcpListener, TcpStream};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Starts the demo backend on `listen` (port 0 picks one) and returns the bound address.
pub fn start(listen: SocketAddr) -> io::Result<SocketAddr> {
    // The listener is bound inside the executor: glommio's sockets are made on their own thread.
    let (bound, address) = std::sync::mpsc::channel();
    rt::start_unbound("spooky-demo-backend", move || async move {
        let listener = match TcpListener::bind(listen) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = bound.send(Err(io::Error::from(e)));
                return;
            }
        };
        let _ = bound.send(listener.local_addr().map_err(io::Error::from));
        serve(listener).await
    })
    .map_err(|e| io::Error::other(e.to_string()))?;
    address
        .recv()
        .map_err(|_| io::Error::other("the demo backend thread ended before binding"))?
}

async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                rt::spawn(connection(stream));
            }
            Err(e) => log::warn!("demo backend accept: {e}"),
        }
    }
}

async fn connection(stream: TcpStream) {
    let mut h2 = match h2::server::handshake(stream.compat()).await {
        Ok(connection) => connection,
        Err(e) => {
            log::debug!("demo backend handshake: {e}");
            return;
        }
    };
    while let Some(Ok((request, respond))) = h2.accept().await {
        rt::spawn(answer(request, respond));
    }
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, mut body) = request.into_parts();
    let mut received = 0usize;
    while let Some(Ok(chunk)) = body.data().await {
        received += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let text = format!(
        "Hello from Spooky's built-in demo backend.\n\
         You sent {} {}; Spooky forwarded it to this backend over HTTP/2.\n\
         Request body: {received} bytes. Forwarded for: {}.\n",
        parts.method,
        parts.uri.path(),
        parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
    );
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", text.len())
        .body(())
        .expect("static response parts are valid");
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from(text), true);
    }
}
