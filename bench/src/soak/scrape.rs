//! Reads Spooky's admin endpoint during a soak: one `GET /metrics` over HTTP/1.1, and the few
//! values the soak records, read from the Prometheus text format.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The exposition text of `GET /metrics`, or why it could not be fetched.
pub fn metrics(admin: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .map_err(|e| format!("connecting to the admin endpoint {admin}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("asking {admin} for metrics: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading metrics from {admin}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin} sent no complete HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("{admin} answered {status:?} for /metrics"));
    }
    Ok(body.to_string())
}

/// The sum of every series of `name` whose labels include each of `labels` (`key="value"`);
/// `None` when there is no such series.
pub fn sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let wanted = labels
            .iter()
            .all(|label| series_labels.split(',').any(|l| l == *label));
        if let (true, Ok(value)) = (wanted, value.parse::<f64>()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_matching_series_only() {
        let text = "# HELP spooky_quic_connections_active Open QUIC connections.\n\
                    spooky_quic_connections_active{shard=\"0\"} 12\n\
                    spooky_quic_connections_active{shard=\"1\"} 30\n\
                    spooky_quic_connections_active_total 99\n\
                    spooky_backend_healthy{upstream=\"main\",backend=\"a\"} 1\n\
                    spooky_backend_healthy{upstream=\"main\",backend=\"b\"} 0\n\
                    spooky_config_generation 3\n";
        assert_eq!(sum(text, "spooky_quic_connections_active", &[]), Some(42.0));
        assert_eq!(
            sum(text, "spooky_backend_healthy", &["backend=\"b\""]),
            Some(0.0)
        );
        assert_eq!(sum(text, "spooky_config_generation", &[]), Some(3.0));
        assert_eq!(sum(text, "spooky_missing", &[]), None);
    }
}
