//! Upgrades per client address, against reconnect storms: a token bucket per address
//! (`--connections-per-ip-per-s`, `--connections-per-ip-burst`). Each shard keeps its own
//! buckets and takes its share of the rate and of the burst (÷ shards, the burst rounded
//! up): the kernel spreads one address's connections evenly over the shards (SO_REUSEPORT
//! hashes the source port too), so the instance lets through about the configured figures
//! with no message between shards. Pure: the shard asks and applies.
//!
//! Bounded: at most [`ADDRESSES_MAX`] addresses per shard; a bucket that has filled up again
//! holds no information and is dropped at the next tick. While the table is full, a new
//! address is not limited (its upgrade passes): the table never grows past the bound, and
//! addresses already in it stay limited.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Addresses one shard tracks at once.
pub const ADDRESSES_MAX: usize = 65_536;

#[derive(Debug)]
pub struct IpLimiter {
    /// Tokens per second for this shard; 0: no limit.
    rate_per_s: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    last_expire: Option<Instant>,
}

/// How often `expire` walks the table.
const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Whether an upgrade may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Refused: a token comes back in this many seconds (at least 1), for `Retry-After`.
    Limited {
        retry_after_s: u64,
    },
}

impl IpLimiter {
    /// This shard's share of the instance's figures.
    pub fn for_shard(per_s: u32, burst: u32, shards: u16) -> IpLimiter {
        let shards = u32::from(shards.max(1));
        IpLimiter {
            rate_per_s: f64::from(per_s) / f64::from(shards),
            burst: f64::from(burst.div_ceil(shards).max(1)),
            buckets: HashMap::new(),
            last_expire: None,
        }
    }

    /// One upgrade from `ip`, at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.rate_per_s == 0.0 {
            return Verdict::Pass;
        }
        if self.buckets.len() >= ADDRESSES_MAX && !self.buckets.contains_key(&ip) {
            return Verdict::Pass;
        }
        let (rate, burst) = (self.rate_per_s, self.burst);
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refill(bucket, rate, burst, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Pass
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Verdict::Limited {
                retry_after_s: (wait.ceil() as u64).max(1),
            }
        }
    }

    /// Drops the buckets that have filled up again (they limit nothing); at most once per
    /// `EXPIRE_EVERY`.
    pub fn expire(&mut self, now: Instant) {
        if self.last_expire.is_some_and(|t| now - t < EXPIRE_EVERY) {
            return;
        }
        self.last_expire = Some(now);
        let (rate, burst) = (self.rate_per_s, self.burst);
        self.buckets
            .retain(|_, bucket| refill(bucket, rate, burst, now) < burst);
    }

    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.buckets.len()
    }
}

fn refill(bucket: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n))
    }

    /// Goal: a burst passes, the next is refused with the wait until a token, another
    /// address is not affected, tokens come back at the rate; the shard's share is the
    /// instance's figures over the shards.
    #[test]
    fn a_bucket_per_address() {
        let mut l = IpLimiter::for_shard(2, 6, 2); // per shard: 1/s, burst 3
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(ip(1), t), Verdict::Pass);
        }
        assert_eq!(l.check(ip(1), t), Verdict::Limited { retry_after_s: 1 });
        assert_eq!(l.check(ip(2), t), Verdict::Pass, "another address");
        assert_eq!(
            l.check(ip(1), t + Duration::from_millis(500)),
            Verdict::Limited { retry_after_s: 1 }
        );
        assert_eq!(
            l.check(ip(1), t + Duration::from_millis(1600)),
            Verdict::Pass
        );

        let mut slow = IpLimiter::for_shard(1, 1, 4); // per shard: 0.25/s, burst 1
        assert_eq!(slow.check(ip(1), t), Verdict::Pass);
        assert_eq!(slow.check(ip(1), t), Verdict::Limited { retry_after_s: 4 });
    }

    /// Goal: 0 turns it off; full buckets expire; the table stays within its bound and a
    /// new address passes while it is full.
    #[test]
    fn off_expiry_and_bound() {
        let t = Instant::now();
        let mut off = IpLimiter::for_shard(0, 1, 1);
        for _ in 0..10 {
            assert_eq!(off.check(ip(1), t), Verdict::Pass);
        }
        assert_eq!(off.addresses(), 0);

        let mut l = IpLimiter::for_shard(10, 10, 1);
        for n in 0..ADDRESSES_MAX as u32 {
            assert_eq!(l.check(ip(n), t), Verdict::Pass);
        }
        assert_eq!(l.check(ip(u32::MAX >> 8), t), Verdict::Pass, "full: passes");
        assert_eq!(l.addresses(), ADDRESSES_MAX);
        l.expire(t + Duration::from_millis(50));
        assert_eq!(l.addresses(), ADDRESSES_MAX, "not refilled yet");
        l.expire(t + Duration::from_millis(500));
        assert_eq!(l.addresses(), ADDRESSES_MAX, "at most once a second");
        l.expire(t + Duration::from_millis(1050));
        assert_eq!(l.addresses(), 0, "refilled buckets are dropped");
    }
}
