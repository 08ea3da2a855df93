//! Never half-alive: a process that cannot serve stops answering, so that a load balancer
//! moves its users and a supervisor restarts it.
//!
//! - **A panic on any thread ends the process** ([`install_panic_hook`]): a shard owns its
//!   connections and rooms alone, so a shard that died would leave its listener accepting
//!   sockets nobody answers, and its rooms unreachable from the other shards. The hook logs
//!   the panic with its thread and backtrace, then exits at once with [`EXIT_FATAL`].
//!   Restarting the process replays the write-ahead log, which holds every message
//!   acknowledged with `--durability sync` (with `async`, the last unsynced group may be
//!   lost, as on any crash); docs/ARCHITECTURE.md says why this beats restarting one shard.
//! - **A shard that stops running is reported** ([`Liveness`]): each shard's ticker stamps
//!   the time it last ran; `/healthz`, answered by any shard, is 503 while some shard has
//!   not run for `--stall-timeout-ms` (a shard stuck in a loop or a blocking call). A shard
//!   that finished its drain is not a stall.
//! - A thread that ends when nobody asked it to is as fatal as a panic ([`fatal`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::mesh::ShardId;

/// The exit status of a process that stopped because part of it died (EX_SOFTWARE).
pub const EXIT_FATAL: i32 = 70;

/// Logs the panic with its backtrace and ends the process, whichever thread panicked and
/// whether or not something would have caught the unwind (glommio catches panics of
/// wakers and goes on without the task).
pub fn install_panic_hook() {
    static REPORTING: AtomicBool = AtomicBool::new(false);
    thread_local! {
        static IN_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    std::panic::set_hook(Box::new(|info| {
        if IN_HOOK.replace(true) {
            // This thread panicked while reporting its first panic: stop without a word.
            std::process::abort();
        }
        if REPORTING.swap(true, Ordering::SeqCst) {
            // Another thread is reporting its panic and will end the process: wait for it,
            // so that its report is not cut short.
            loop {
                std::thread::park();
            }
        }
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let message = info.payload_as_str().unwrap_or("(no message)");
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(
            "thread '{}' panicked at {location}: {message}; the process exits ({EXIT_FATAL}) \
             so that it is restarted\n{backtrace}",
            thread.name().unwrap_or("unnamed"),
        );
        exit_now();
    }));
}

/// Logs why the process cannot go on and ends it at once.
pub fn fatal(why: &str) -> ! {
    tracing::error!("fatal: {why}; the process exits ({EXIT_FATAL}) so that it is restarted");
    exit_now()
}

fn exit_now() -> ! {
    // `_exit`, not `exit`: no atexit handlers or stdout flushing that could wait on a lock
    // the dead thread held. The log is on stderr, which is unbuffered.
    // SAFETY: `_exit` has no preconditions; it ends the process.
    unsafe { libc::_exit(EXIT_FATAL) }
}

/// A shard that has finished its drain and stopped on purpose.
const STOPPED: u64 = u64::MAX;

/// When each shard last ran its ticker.
pub struct Liveness {
    epoch: Instant,
    last_run_ms: Vec<AtomicU64>,
    stall_timeout_ms: u64,
}

impl Liveness {
    pub fn new(shards: u16, stall_timeout_ms: u64) -> Liveness {
        Liveness {
            epoch: Instant::now(),
            last_run_ms: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            stall_timeout_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `shard` is running (called from its ticker).
    pub fn ran(&self, shard: ShardId) {
        self.ran_at(shard, self.now_ms());
    }

    /// `shard` finished its drain: it stops running and is not a stall.
    pub fn stopped(&self, shard: ShardId) {
        self.last_run_ms[shard as usize].store(STOPPED, Ordering::Relaxed);
    }

    fn ran_at(&self, shard: ShardId, now_ms: u64) {
        self.last_run_ms[shard as usize].store(now_ms, Ordering::Relaxed);
    }

    /// `Err` names the first shard that has not run for longer than the stall timeout.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(self.now_ms())
    }

    fn check_at(&self, now: u64) -> Result<(), String> {
        let stalled: Vec<String> = self
            .last_run_ms
            .iter()
            .enumerate()
            .filter_map(|(shard, last)| {
                let last = last.load(Ordering::Relaxed);
                let silent_ms = now.saturating_sub(last);
                (last != STOPPED && silent_ms > self.stall_timeout_ms)
                    .then(|| format!("shard {shard} has not run for {silent_ms} ms"))
            })
            .collect();
        if stalled.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} (--stall-timeout-ms {})",
            stalled.join(", "),
            self.stall_timeout_ms
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_stops_running_fails_the_check() {
        let live = Liveness::new(2, 1_000);
        assert_eq!(live.check_at(1_000), Ok(()));
        live.ran_at(0, 1_500);
        let err = live.check_at(1_500).unwrap_err();
        assert_eq!(
            err,
            "shard 1 has not run for 1500 ms (--stall-timeout-ms 1000)"
        );
        live.ran_at(1, 1_600);
        assert_eq!(live.check_at(2_500), Ok(()));
        assert_eq!(
            live.check_at(2_601).unwrap_err(),
            "shard 0 has not run for 1101 ms, shard 1 has not run for 1001 ms \
             (--stall-timeout-ms 1000)"
        );
        live.stopped(0);
        live.stopped(1);
        assert_eq!(live.check_at(1_000_000), Ok(()));
    }
}

/// glommio's stall detector, with a threshold of our own (`--detect-stalls`): a task queue
/// that runs this long past its time slice is logged with the backtrace of what held the
/// shard (glommio's own report, through the `log` bridge). The count of stalls on
/// `/metrics` comes from the ticker instead (`sokdo_stalls_total`: ticks that fired late),
/// because glommio's report type is not nameable outside the crate.
#[derive(Debug)]
pub struct StallReport;

impl StallReport {
    /// Past the slice by this much is a stall: a task that held the shard for over half a
    /// second is a bug in any build, while a debug build's slow turns (tens of ms past the
    /// slice, measured) are not. Each report symbolizes a backtrace, which costs memory and
    /// time, so it must stay rare.
    const OVER_SLICE: std::time::Duration = std::time::Duration::from_millis(500);
}

impl glommio::StallDetectionHandler for StallReport {
    fn threshold(
        &self,
        _queue: glommio::TaskQueueHandle,
        _max_expected_runtime: std::time::Duration,
    ) -> Option<std::time::Duration> {
        Some(Self::OVER_SLICE)
    }
}
