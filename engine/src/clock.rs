//! The wall clock. [`now_ms`] is the engine's only read of it, so that the logic which needs
//! the time takes it as an argument and a test can hand it any time it likes.
//!
//! (`Instant` for timeouts and jsonwebtoken's `exp` check are the other two readers of time;
//! neither is the wall clock of a message's `ts`.)

#![forbid(unsafe_code)]

/// Milliseconds since the Unix epoch: the `ts` of messages. A clock set before 1970 reads 0.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_time_after_this_code_was_written() {
        // 2026-01-01T00:00:00Z: a clock earlier than that is broken, not old.
        assert!(now_ms() > 1_767_225_600_000);
    }
}
