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

/// A histogram of an exposition, its series summed (several shards, several processes):
/// per bucket upper bound (`le`, ascending, `+Inf` last) the cumulative count, and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
}

impl Histogram {
    /// `name`'s buckets and sum in `text`; `None` when it has no `name_bucket`.
    pub fn read(text: &str, name: &str) -> Option<Histogram> {
        let (bucket, sum_name) = (format!("{name}_bucket"), format!("{name}_sum"));
        let mut h = Histogram::default();
        for (n, labels, v) in samples(text) {
            if n == sum_name {
                h.sum += v;
            } else if n == bucket {
                let le = labels.split(',').find_map(|l| l.strip_prefix("le="))?;
                let le = le.trim_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += v,
                    None => h.buckets.push((le, v)),
                }
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        (!h.buckets.is_empty()).then_some(h)
    }

    /// Whether `other` has the same bucket bounds (an empty one matches any: a start).
    fn same_bounds(&self, other: &Histogram) -> bool {
        self.buckets.is_empty()
            || (self.buckets.len() == other.buckets.len()
                && self
                    .buckets
                    .iter()
                    .zip(&other.buckets)
                    .all(|(a, b)| a.0 == b.0))
    }

    /// Adds another process's reading; `None` when its bounds differ (another build).
    pub fn add(&mut self, other: &Histogram) -> Option<()> {
        if !self.same_bounds(other) {
            return None;
        }
        if self.buckets.is_empty() {
            self.buckets = other.buckets.iter().map(|(le, _)| (*le, 0.0)).collect();
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
        self.sum += other.sum;
        Some(())
    }

    /// What was observed between `earlier` and this reading; `None` when the bounds
    /// differ or a count went down (the server restarted between the two).
    pub fn since(&self, earlier: &Histogram) -> Option<Histogram> {
        if earlier.buckets.len() != self.buckets.len() || !self.same_bounds(earlier) {
            return None;
        }
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for ((le, now), (_, then)) in self.buckets.iter().zip(&earlier.buckets) {
            if now < then {
                return None;
            }
            buckets.push((*le, now - then));
        }
        let sum = self.sum - earlier.sum;
        (sum >= 0.0).then_some(Histogram { buckets, sum })
    }

    /// Observations (the `+Inf` bucket).
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, c)| *c)
    }

    /// The upper bound of the bucket holding the `q`-quantile (`None`: nothing observed;
    /// infinite when it is above the largest bound).
    pub fn quantile_le(&self, q: f64) -> Option<f64> {
        let rank = q * self.count();
        let at = self.buckets.iter().find(|(_, c)| *c >= rank && *c > 0.0)?;
        Some(at.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{samples, sum, Histogram};

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

    const HIST: &str = "\
sokdo_wal_commit_seconds_sum 0.5
sokdo_wal_commit_seconds_count 10
sokdo_wal_commit_seconds_bucket{le=\"0.001\"} 4
sokdo_wal_commit_seconds_bucket{le=\"0.002\"} 9
sokdo_wal_commit_seconds_bucket{le=\"+Inf\"} 10
";

    #[test]
    fn a_histogram_is_read_summed_over_processes_and_differenced() {
        let one = Histogram::read(HIST, "sokdo_wal_commit_seconds").unwrap();
        assert_eq!(
            one.buckets,
            [(0.001, 4.0), (0.002, 9.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!((one.sum, one.count()), (0.5, 10.0));
        assert_eq!(one.quantile_le(0.4), Some(0.001));
        assert_eq!(one.quantile_le(0.5), Some(0.002));
        assert_eq!(one.quantile_le(0.99), Some(f64::INFINITY));
        let mut two = Histogram::default();
        two.add(&one).unwrap();
        two.add(&one).unwrap();
        assert_eq!((two.count(), two.sum), (20.0, 1.0));
        assert_eq!(two.since(&one), Some(one.clone()));
        assert_eq!(Histogram::read(TEXT, "sokdo_wal_commit_seconds"), None);
        let empty = one.since(&one).unwrap();
        assert_eq!((empty.count(), empty.quantile_le(0.5)), (0.0, None));
        // A restart between the readings (counts went down), other bounds: no figures.
        assert_eq!(one.since(&two), None);
        let other = Histogram::read(&HIST.replace("0.002", "0.004"), "sokdo_wal_commit_seconds");
        let other = other.unwrap();
        assert_eq!(other.since(&one), None);
        assert_eq!(two.add(&other), None);
    }

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
