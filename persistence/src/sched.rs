//! The sink thread's scheduling class: `SCHED_IDLE` while it keeps up, the policy it was
//! started with once it falls behind ([`Config::sink_idle_lag_ms`](crate::Config)).
//!
//! Write-behind is nobody's wait: a `send` is answered once the log holds it, and reads merge
//! the backlog with the store. But on a core it shares with a shard, each redb commit is a
//! burst of a few ms of CPU, and a shard woken meanwhile waits for it: at seed 002's load
//! those bursts were the p99 (docs/BENCHMARKS.md). As `SCHED_IDLE` the sink runs only in
//! time the shards leave. A shard that keeps its core busy would starve it (Linux still
//! gives an idle thread a sliver, weight 3 against 1,024), the backlog would age and the log
//! fill up; so once the oldest record waiting has waited the configured lag, the sink writes
//! as a normal thread until it has caught up (below half the lag). It is idle only *while
//! it writes a batch* (see [`Priority`]).
//!
//! Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or `RLIMIT_NICE` ≥ 20 (systemd: `LimitNICE=+0`).
//! [`Priority::start`] checks that on a throwaway thread first: without it the sink never
//! goes idle (it could not come back) and says so once.

use std::io;
use std::time::Duration;

/// A thread's scheduling policy and static priority, as `sched_setscheduler` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    policy: i32,
    priority: i32,
}

impl Policy {
    pub(crate) const IDLE: Policy = Policy {
        policy: libc::SCHED_IDLE,
        priority: 0,
    };

    /// The calling thread's.
    pub(crate) fn current() -> io::Result<Policy> {
        // SAFETY: a query of the calling thread (pid 0).
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the same thread; `param` is a valid `sched_param` for the call to fill.
        if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Policy {
            policy,
            priority: param.sched_priority,
        })
    }

    /// `SCHED_IDLE`, whatever flags (`SCHED_RESET_ON_FORK`) come with it.
    fn is_idle(self) -> bool {
        self.policy & !libc::SCHED_RESET_ON_FORK == libc::SCHED_IDLE
    }

    /// Puts the calling thread (not the process: Linux schedules threads) in this policy.
    pub(crate) fn apply(self) -> io::Result<()> {
        let param = libc::sched_param {
            sched_priority: self.priority,
        };
        // SAFETY: pid 0 is the calling thread; `param` lives for the call.
        match unsafe { libc::sched_setscheduler(0, self.policy, &param) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

/// Whether a thread of this process may go to `SCHED_IDLE` and come back to `normal`: tried
/// on a thread of its own, so a refusal strands nobody in `SCHED_IDLE`.
fn can_return_from_idle(normal: Policy) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sokdo-sink-probe".into())
        .spawn(move || {
            Policy::IDLE.apply()?;
            normal.apply()
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the probe thread panicked")))
}

/// Whether the sink keeps up next, given whether it does now and how long the oldest record
/// waiting for it has waited: it keeps up until that reaches `lag`, and is behind until it
/// is back below half of it (so one batch at the edge does not flip it every time).
pub(crate) fn next_keeps_up(keeps_up: bool, waited: Duration, lag: Duration) -> bool {
    if keeps_up {
        waited < lag
    } else {
        waited < lag / 2
    }
}

/// The sink thread's side. The thread is `SCHED_IDLE` only while it writes a batch, and
/// only while it keeps up: between batches it takes the backlog's lock, which the log
/// thread needs before it may complete any ticket — an idle thread preempted while holding
/// it would hold every `ok` until the shards leave it the CPU.
pub(crate) struct Priority {
    /// `None`: never idle (turned off, started idle, or not permitted).
    normal: Option<Policy>,
    lag: Duration,
    keeps_up: bool,
    /// Idle now, and the last try to leave it failed (tried again at every batch).
    stuck: bool,
}

impl Priority {
    /// On the sink thread, before its first batch: adapts if `lag_ms` > 0 and the thread
    /// may leave `SCHED_IDLE` again. Never fails: where it may not, the sink stays as it is.
    pub(crate) fn start(lag_ms: u64) -> Priority {
        let off = Priority {
            normal: None,
            lag: Duration::from_millis(lag_ms),
            keeps_up: false,
            stuck: false,
        };
        if lag_ms == 0 {
            return off;
        }
        let normal = match Policy::current() {
            // Started idle (the whole process under `chrt -i`): nothing to adapt.
            Ok(p) if p.is_idle() => return off,
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "the sink's scheduling policy is unknown: it stays as it is");
                return off;
            }
        };
        if let Err(e) = can_return_from_idle(normal) {
            tracing::warn!(
                error = %e,
                "--sink-idle-lag-ms: the sink stays a normal thread, as it could not leave \
                 SCHED_IDLE again (needs CAP_SYS_NICE, or RLIMIT_NICE >= 20: systemd LimitNICE=+0)"
            );
            return off;
        }
        Priority {
            normal: Some(normal),
            keeps_up: true,
            ..off
        }
    }

    /// Whether the sink keeps up: its batches are written as `SCHED_IDLE`.
    pub(crate) fn keeps_up(&self) -> bool {
        self.normal.is_some() && self.keeps_up
    }

    /// Before a batch is written, the oldest record waiting having `waited`: goes idle for
    /// the write if the sink keeps up and is not `closing` (a drain must not starve).
    /// Returns (went idle, behind: the batch is written as a normal thread for the lag).
    pub(crate) fn enter(&mut self, waited: Duration, closing: bool) -> (bool, bool) {
        let Some(normal) = self.normal else {
            return (false, false);
        };
        if self.stuck && !self.restore(normal) {
            return (false, true);
        }
        self.keeps_up = next_keeps_up(self.keeps_up, waited, self.lag);
        if !self.keeps_up || closing {
            return (false, !self.keeps_up);
        }
        match Policy::IDLE.apply() {
            Ok(()) => (true, false),
            Err(e) => {
                tracing::warn!(error = %e, "the sink could not go SCHED_IDLE: it stays a normal thread");
                self.normal = None;
                (false, false)
            }
        }
    }

    /// After the write: the policy it was started with again, before the backlog's lock.
    pub(crate) fn leave(&mut self, went_idle: bool) {
        if let (true, Some(normal)) = (went_idle, self.normal) {
            self.restore(normal);
        }
    }

    /// Back to `normal`; on failure stays marked stuck (and says so once), to try again.
    fn restore(&mut self, normal: Policy) -> bool {
        match normal.apply() {
            Ok(()) => {
                self.stuck = false;
                true
            }
            Err(e) => {
                if !self.stuck {
                    tracing::error!(error = %e, "the sink could not leave SCHED_IDLE: retrying at every batch");
                }
                self.stuck = true;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_until_the_lag_then_behind_until_below_half_of_it() {
        let lag = Duration::from_millis(1000);
        let ms = Duration::from_millis;
        assert!(next_keeps_up(true, ms(999), lag));
        assert!(
            !next_keeps_up(true, ms(1000), lag),
            "reaching the lag: behind"
        );
        assert!(
            !next_keeps_up(false, ms(600), lag),
            "above half: still behind"
        );
        assert!(!next_keeps_up(false, ms(500), lag));
        assert!(
            next_keeps_up(false, ms(499), lag),
            "below half: keeps up again"
        );
    }

    /// Idle only for the write, and only while keeping up; closing writes at full speed.
    #[test]
    fn a_batch_is_written_idle_while_the_sink_keeps_up_and_normal_otherwise() {
        // On a thread of its own: the test harness's thread keeps its policy.
        std::thread::spawn(|| {
            let normal = Policy::current().unwrap();
            if normal.is_idle() {
                return; // the test process runs under `chrt -i`: nothing to adapt.
            }
            let mut p = Priority::start(1000);
            if can_return_from_idle(normal).is_err() {
                // Not permitted here: the sink never goes idle, and says it does not.
                assert!(!p.keeps_up());
                assert_eq!(p.enter(Duration::ZERO, false), (false, false));
                return;
            }
            assert!(p.keeps_up());
            assert_eq!(Policy::current().unwrap(), normal, "normal between batches");
            assert_eq!(p.enter(Duration::from_millis(60), false), (true, false));
            assert!(Policy::current().unwrap().is_idle(), "idle for the write");
            p.leave(true);
            assert_eq!(Policy::current().unwrap(), normal, "normal for the backlog");
            assert_eq!(p.enter(Duration::from_millis(1500), false), (false, true));
            assert!(!p.keeps_up());
            assert_eq!(Policy::current().unwrap(), normal, "behind: written normal");
            assert_eq!(
                p.enter(Duration::from_millis(60), true),
                (false, false),
                "closing"
            );
            assert!(p.keeps_up());
            assert_eq!(Policy::current().unwrap(), normal);
            assert!(!Priority::start(0).keeps_up(), "0 turns it off");
        })
        .join()
        .unwrap();
    }
}
