//! A token bucket small enough for every connection (requests per second, pings per
//! second). It stores what was *spent*, not what is left, so a new bucket is full without
//! knowing its size: the size and the rate come from the configuration at each call, and a
//! connection carries 16 bytes per bucket. Pure: the caller passes the clock.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
pub struct Bucket {
    /// Tokens taken and not yet refilled, at `at`.
    spent: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes one token from a bucket of `burst` tokens refilled at `per_s` a second.
    /// `Err(wait)`: empty; a token is back after `wait`. `per_s` 0: no limit.
    pub fn take(&mut self, per_s: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        if per_s == 0 {
            return Ok(());
        }
        let rate = f64::from(per_s);
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.spent = (self.spent - elapsed * rate).max(0.0);
        self.at = Some(now);
        let burst = f64::from(burst.max(1));
        if self.spent + 1.0 <= burst {
            self.spent += 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((self.spent + 1.0 - burst) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a new bucket lets `burst` through at once, then one per 1/rate; the wait it
    /// names is until the next token; 0 is no limit.
    #[test]
    fn burst_then_rate() {
        let t = Instant::now();
        let mut b = Bucket::default();
        for _ in 0..5 {
            assert_eq!(b.take(10, 5, t), Ok(()));
        }
        let wait = b.take(10, 5, t).unwrap_err();
        assert_eq!(wait.as_millis(), 100);
        let later = t + Duration::from_millis(150);
        assert_eq!(b.take(10, 5, later), Ok(()), "a token came back");
        assert!(b.take(10, 5, later).is_err(), "only one");
        let much_later = t + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.take(10, 5, much_later), Ok(()), "full again, not fuller");
        }
        assert!(b.take(10, 5, much_later).is_err());

        let mut off = Bucket::default();
        for _ in 0..1000 {
            assert_eq!(off.take(0, 1, t), Ok(()));
        }
    }
}
