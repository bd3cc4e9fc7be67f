//! The optional plain-HTTP listener (`[listen.redirect]`, usually port 80): every request is
//! answered `308 Permanent Redirect` to the same target over `https://`, as Caddy does, so that a
//! user who typed the bare name reaches the TLS listener. `308` rather than `301` keeps the
//! method and body of a non-GET request (RFC 9110 §15.4.9).

use std::net::SocketAddr;
use std::rc::Rc;

use http::header::{HOST, LOCATION};
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::super::Shard;
use super::registry::Registration;
use crate::rt;

/// Where a plain-HTTP request for `uri` (with `host`) is sent: the same host and target over
/// HTTPS on `https_port`, or `None` when the request names no valid host.
pub fn location(host: Option<&HeaderValue>, uri: &Uri, https_port: u16) -> Option<String> {
    // An absolute-form target names the host itself (RFC 9112 §3.2.2).
    let authority = match uri.authority() {
        Some(authority) => authority.clone(),
        None => host?.to_str().ok()?.parse::<Authority>().ok()?,
    };
    if authority.as_str().contains('@') {
        return None;
    }
    let name = authority.host();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

fn respond(request: &Request<Incoming>, https_port: u16) -> Response<String> {
    let mut response = Response::new(String::new());
    match location(request.headers().get(HOST), request.uri(), https_port)
        .and_then(|target| HeaderValue::try_from(target).ok())
    {
        Some(target) => {
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(LOCATION, target);
        }
        None => {
            *response.status_mut() = StatusCode::BAD_REQUEST;
            *response.body_mut() = "a request needs a valid Host to be redirected\n".into();
        }
    }
    response
}

pub async fn accept_loop(shard: Rc<Shard>, listener: rt::TcpListener, https_port: u16) {
    super::accept_until_drain(&shard, listener, "redirect", |stream, registration| {
        serve(stream, registration, https_port, shard.stats.clone())
    })
    .await
}

async fn serve(
    stream: rt::TcpStream,
    registration: Registration,
    https_port: u16,
    stats: std::sync::Arc<crate::stats::ShardStats>,
) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(|request: Request<Incoming>| {
        stats.redirects.incr();
        // Answered at once; counting it resets the connection's idle clock.
        drop(registration.request());
        std::future::ready(Ok::<_, std::convert::Infallible>(respond(
            &request, https_port,
        )))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream.compat()), service);
    if let Err(e) = super::drive_http1(connection, &registration).await {
        log::debug!("redirect connection from {peer:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: Option<&str>, uri: &str, port: u16) -> Option<String> {
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        location(host.as_ref(), &uri.parse().unwrap(), port)
    }

    #[test]
    fn the_same_host_and_target_over_https() {
        assert_eq!(
            target(Some("example.com"), "/a/b?c=d", 443).as_deref(),
            Some("https://example.com/a/b?c=d")
        );
        // The plain-HTTP port in Host is not the HTTPS one.
        assert_eq!(
            target(Some("example.com:80"), "/", 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            target(Some("[2001:db8::1]:80"), "/x", 443).as_deref(),
            Some("https://[2001:db8::1]/x")
        );
        assert_eq!(
            target(Some("ignored.example"), "http://named.example/p", 443).as_deref(),
            Some("https://named.example/p")
        );
    }

    #[test]
    fn no_valid_host_no_redirect() {
        assert_eq!(target(None, "/", 443), None);
        assert_eq!(target(Some("a b"), "/", 443), None);
        assert_eq!(target(Some("user@evil.example"), "/", 443), None);
    }
}
