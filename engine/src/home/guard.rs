//! Room password guessing, refused cheaply at the room's home before any argon2 runs:
//! wrong passwords are counted per (room, user) and per client address
//! (`--room-password-failures-max`, `--room-password-failures-per-ip-max`, in
//! `--auth-failure-window-ms`), each user has at most one check in flight on this shard, and
//! the shard runs at most `--password-checks-in-flight-max` checks at once. So one guesser
//! holds at most one place on the blocking pool, and a flood is refused, not queued ahead of
//! everyone else's joins. Pure: time is passed in.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::throttle::Failures;
use crate::wire::protocol::{ErrorCode, ProtoError};

/// The guard's bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PasswordRules {
    pub failures_max: u32,
    pub failures_per_ip_max: u32,
    pub window: Duration,
    pub checks_in_flight_max: u32,
}

/// Keys tracked at most by each failure count (memory stays bounded under any flood).
const KEYS_MAX: usize = 100_000;

#[derive(Debug)]
pub(super) struct PasswordGuard {
    by_room_user: Failures<(Arc<str>, String)>,
    by_ip: Failures<IpAddr>,
    /// Checks in flight per user.
    checking: HashMap<String, u32>,
    in_flight: u32,
    in_flight_max: u32,
}

impl PasswordGuard {
    pub(super) fn new(rules: PasswordRules) -> PasswordGuard {
        PasswordGuard {
            by_room_user: Failures::new(rules.failures_max, rules.window, KEYS_MAX),
            by_ip: Failures::new(rules.failures_per_ip_max, rules.window, KEYS_MAX),
            checking: HashMap::new(),
            in_flight: 0,
            in_flight_max: rules.checks_in_flight_max,
        }
    }

    /// Admits a check of `user`'s password for `room`, or refuses it: `rate_limited` (too
    /// many failures, or a check of this user running) or `unavailable` (the shard's checks
    /// are all taken). An admitted check must end with [`PasswordGuard::checked`].
    pub(super) fn admit(
        &mut self,
        room: &Arc<str>,
        user: &str,
        peer: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), ProtoError> {
        let key = (room.clone(), user.to_owned());
        let wait = self
            .by_room_user
            .retry_after(&key, now)
            .or_else(|| peer.and_then(|ip| self.by_ip.retry_after(&ip, now)));
        if let Some(wait) = wait {
            return Err(ProtoError::rate_limited(
                "too many wrong room passwords: wait before trying again",
                wait,
            ));
        }
        if self.checking.contains_key(user) {
            return Err(ProtoError::rate_limited(
                "a password check of yours is running: wait for its answer",
                Duration::from_millis(100),
            ));
        }
        if self.in_flight >= self.in_flight_max {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "too many password checks at once: retry shortly",
            ));
        }
        self.in_flight += 1;
        *self.checking.entry(key.1).or_default() += 1;
        Ok(())
    }

    /// The end of an admitted check: a wrong password counts against the room and user and
    /// the address; the right one forgets the room and user's failures.
    pub(super) fn checked(
        &mut self,
        room: &Arc<str>,
        user: &str,
        peer: Option<IpAddr>,
        matches: bool,
        now: Instant,
    ) {
        debug_assert!(self.in_flight > 0, "a check ends that was admitted");
        self.in_flight -= 1;
        if let Some(n) = self.checking.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.checking.remove(user);
            }
        }
        let key = (room.clone(), user.to_owned());
        if matches {
            self.by_room_user.forget(&key);
            return;
        }
        self.by_room_user.failed(key, now);
        if let Some(ip) = peer {
            self.by_ip.failed(ip, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> PasswordGuard {
        PasswordGuard::new(PasswordRules {
            failures_max: 2,
            failures_per_ip_max: 3,
            window: Duration::from_secs(60),
            checks_in_flight_max: 2,
        })
    }

    fn code(r: Result<(), ProtoError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn wrong_passwords_lock_the_room_and_user_then_the_address() {
        let (mut g, t) = (guard(), Instant::now());
        let (den, ip) = (Arc::<str>::from("den"), Some(IpAddr::from([127, 0, 0, 2])));
        for _ in 0..2 {
            g.admit(&den, "eve", ip, t).unwrap();
            g.checked(&den, "eve", ip, false, t);
        }
        assert_eq!(
            code(g.admit(&den, "eve", ip, t)),
            Some(ErrorCode::RateLimited)
        );
        assert_eq!(code(g.admit(&den, "bob", None, t)), None, "another user");
        g.checked(&den, "bob", None, true, t);
        let lab = Arc::<str>::from("lab");
        g.admit(&lab, "eve", ip, t).unwrap();
        g.checked(&lab, "eve", ip, false, t);
        let err = g.admit(&lab, "mallory", ip, t).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::RateLimited,
            "the address reached its bound"
        );
        assert_eq!(err.retry_after_ms, Some(60_000));
        let later = t + Duration::from_secs(60);
        assert_eq!(
            code(g.admit(&den, "eve", ip, later)),
            None,
            "after the window"
        );
    }

    #[test]
    fn one_check_per_user_and_a_bound_per_shard() {
        let (mut g, t) = (guard(), Instant::now());
        let den = Arc::<str>::from("den");
        g.admit(&den, "eve", None, t).unwrap();
        assert_eq!(
            code(g.admit(&den, "eve", None, t)),
            Some(ErrorCode::RateLimited)
        );
        g.admit(&den, "bob", None, t).unwrap();
        assert_eq!(
            code(g.admit(&den, "ann", None, t)),
            Some(ErrorCode::Unavailable)
        );
        g.checked(&den, "eve", None, true, t);
        g.admit(&den, "ann", None, t).unwrap();
    }
}
