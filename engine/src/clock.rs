//! The wall clock, read in one place: `ts` fields of messages and rooms. Everything that
//! measures durations uses `Instant` instead; pure modules take time as an argument.
#![forbid(unsafe_code)]

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
