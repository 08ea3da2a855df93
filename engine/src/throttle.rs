//! Throttles against guessing and floods, pure (time is passed in) so tests drive them
//! without clocks: [`Failures`] counts failed attempts per key in a window and refuses a key
//! that reached its bound until the window has passed; [`Rate`] is a token bucket (one
//! per connection: `rooms` queries).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Failed attempts per key (a user and address, an address, a room and user…).
#[derive(Debug)]
pub struct Failures<K> {
    failures: HashMap<K, (u32, Instant)>,
    failures_max: u32,
    window: Duration,
    keys_max: usize,
}

impl<K: Hash + Eq> Failures<K> {
    /// At most `failures_max` failures of one key per `window`; `keys_max` keys tracked
    /// (past it the expired ones are forgotten, then the oldest half if still full: memory
    /// stays bounded whatever the attacker sends, at the price of forgetting a key early).
    pub fn new(failures_max: u32, window: Duration, keys_max: usize) -> Failures<K> {
        assert!(failures_max > 0 && keys_max > 0);
        Failures {
            failures: HashMap::new(),
            failures_max,
            window,
            keys_max,
        }
    }

    /// How long `key` must wait before its next attempt is heard, if it must.
    pub fn retry_after(&self, key: &K, now: Instant) -> Option<Duration> {
        let (n, since) = self.failures.get(key)?;
        let left = self
            .window
            .checked_sub(now.saturating_duration_since(*since))?;
        (*n >= self.failures_max && !left.is_zero()).then_some(left)
    }

    /// Counts a failed attempt of `key`.
    pub fn failed(&mut self, key: K, now: Instant) {
        if self.failures.len() >= self.keys_max && !self.failures.contains_key(&key) {
            let window = self.window;
            self.failures
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
            if self.failures.len() >= self.keys_max {
                let mut ages: Vec<Instant> = self.failures.values().map(|(_, s)| *s).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                self.failures.retain(|_, (_, since)| *since > cut);
            }
        }
        let entry = self.failures.entry(key).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// Forgets `key`'s failures (after a success).
    pub fn forget(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// Keys tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures.len()
    }
}

/// A token bucket: `per_s` attempts a second, bursts of `per_s`.
#[derive(Debug, Clone)]
pub struct Rate {
    tokens: f64,
    at: Instant,
}

impl Rate {
    pub fn new(per_s: u32, now: Instant) -> Rate {
        Rate {
            tokens: f64::from(per_s),
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, per_s: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_s);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_refuse_after_the_bound_until_the_window_passed() {
        let t = Instant::now();
        let mut f = Failures::new(3, Duration::from_secs(60), 100);
        for _ in 0..2 {
            f.failed("a", t);
        }
        assert_eq!(f.retry_after(&"a", t), None, "two of three");
        f.failed("a", t);
        assert_eq!(f.retry_after(&"a", t), Some(Duration::from_secs(60)));
        assert_eq!(f.retry_after(&"b", t), None, "keys are apart");
        let later = t + Duration::from_secs(60);
        assert_eq!(f.retry_after(&"a", later), None, "the window passed");
        f.failed("a", later);
        assert_eq!(f.retry_after(&"a", later), None, "a fresh window");
        f.forget(&"a");
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn failures_stay_bounded() {
        let t = Instant::now();
        let mut f = Failures::new(1, Duration::from_secs(60), 10);
        for i in 0..1000u32 {
            f.failed(i, t + Duration::from_millis(u64::from(i)));
            assert!(f.len() <= 10);
        }
        assert!(f.retry_after(&999, t + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn rate_allows_its_rate_and_says_when() {
        let t = Instant::now();
        let mut r = Rate::new(2, t);
        assert!(r.take(2, t).is_ok());
        assert!(r.take(2, t).is_ok());
        let wait = r.take(2, t).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(r.take(2, t + Duration::from_millis(500)).is_ok());
    }
}
