//! A server's HTTP endpoints read from outside, as an operator would: `GET` with bounded
//! waits and size, and the samples of a Prometheus text exposition (`/metrics`). A leaf:
//! `soak.rs` samples gauges with it, `cluster.rs` reads the instances' link counters and
//! `/cluster`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A connect gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reading the answer gives up after this long.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read: `/metrics` of a few shards is tens of KiB.
const BODY_BYTES_MAX: u64 = 4 << 20;

/// `GET path` on `addr` (HTTP/1.1, `Connection: close`): the status and the body; `None`
/// on any failure. sokdo answers with a `Content-Length` and closes, so the body is what
/// follows the head.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.take(BODY_BYTES_MAX).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// `GET /metrics`: its text when the answer is 200.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let (status, body) = get(addr, "/metrics")?;
    (status == 200).then_some(body)
}

/// The samples of a Prometheus text exposition: `(name, labels, value)`, the labels as
/// written between the braces (empty without), comments skipped.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            match series.split_once('{') {
                Some((name, labels)) => Some((name, labels.strip_suffix('}')?, value)),
                None => Some((series, "", value)),
            }
        })
}

/// Σ of the samples of `name` whose labels include `label` (empty: every sample).
pub fn sum(text: &str, name: &str, label: &str) -> u64 {
    samples(text)
        .filter(|(n, labels, _)| *n == name && labels.contains(label))
        .map(|(_, _, v)| v)
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::{samples, sum};

    const TEXT: &str = "\
# HELP sokdo_connections open sockets (any phase)
# TYPE sokdo_connections gauge
sokdo_connections{shard=\"0\"} 7
sokdo_connections{shard=\"1\"} 5
sokdo_connections_accepted_total{shard=\"0\"} 99
sokdo_cluster_datagrams_sent_total 40
sokdo_cluster_link_bytes_total{peer=\"n2\",direction=\"out\"} 1000
sokdo_cluster_link_bytes_total{peer=\"n2\",direction=\"in\"} 2000
sokdo_cluster_link_bytes_total{peer=\"n3\",direction=\"out\"} 500
sokdo_inbox_depth{shard=\"0\"} 0.5
# EOF
";

    #[test]
    fn samples_have_their_name_labels_and_value() {
        let all: Vec<_> = samples(TEXT).collect();
        assert_eq!(all.len(), 8, "{all:?}");
        assert_eq!(all[0], ("sokdo_connections", "shard=\"0\"", 7.0));
        assert_eq!(all[3], ("sokdo_cluster_datagrams_sent_total", "", 40.0));
        assert_eq!(all[7], ("sokdo_inbox_depth", "shard=\"0\"", 0.5));
    }

    #[test]
    fn sums_take_the_named_series_and_label_only() {
        let out = "direction=\"out\"";
        assert_eq!(sum(TEXT, "sokdo_cluster_link_bytes_total", out), 1500);
        assert_eq!(sum(TEXT, "sokdo_cluster_link_bytes_total", ""), 3500);
        // Not sokdo_connections_accepted_total.
        assert_eq!(sum(TEXT, "sokdo_connections", ""), 12);
        assert_eq!(sum(TEXT, "sokdo_cluster_datagrams_sent_total", ""), 40);
        assert_eq!(sum(TEXT, "sokdo_nothing", ""), 0);
    }
}
