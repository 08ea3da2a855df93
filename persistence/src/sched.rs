//! The sink thread's scheduling class: `SCHED_IDLE` while it keeps up, the policy it was
//! started with once it falls behind ([`Config::sink_idle_lag_ms`](crate::Config)).
//!
//! Write-behind is nobody's wait: a `send` is answered once the log holds it, and reads merge
//! the backlog with the store. But on a core it shares with a shard, each redb commit is a
//! burst of a few ms of CPU, and a shard woken meanwhile waits for it: at seed 002's load
//! those bursts were the p99 (docs/BENCHMARKS.md). As `SCHED_IDLE` the sink runs only in
//! time the shards leave. A shard that keeps its core busy would starve it (Linux still
//! gives an idle thread a sliver, weight 3 against 1,024), the backlog would age and the log
//! fill up; so once the oldest record waiting has waited the configured lag, the sink takes
//! its normal policy back until it has caught up (below half the lag).
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
    std::thread::spawn(move || {
        Policy::IDLE.apply()?;
        normal.apply()
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the probe thread panicked")))
}

/// Whether the sink should run idle next, given whether it does now and how long the oldest
/// record waiting for it has waited: idle until it reaches `lag`, normal until it is back
/// below half of it (so one batch at the edge does not flip it every time).
pub(crate) fn next_idle(idle: bool, waited: Duration, lag: Duration) -> bool {
    if idle {
        waited < lag
    } else {
        waited < lag / 2
    }
}

/// The sink thread's side: its normal policy and whether it runs idle now.
pub(crate) struct Priority {
    /// `None`: never idle (turned off, already idle by inheritance, or not permitted).
    normal: Option<Policy>,
    lag: Duration,
    idle: bool,
}

impl Priority {
    /// On the sink thread, before its first batch: goes idle if `lag_ms` > 0 and the thread
    /// may come back.
    pub(crate) fn start(lag_ms: u64) -> Priority {
        let off = Priority {
            normal: None,
            lag: Duration::from_millis(lag_ms),
            idle: false,
        };
        if lag_ms == 0 {
            return off;
        }
        let normal = match Policy::current() {
            // Started idle (the whole process under `chrt -i`): nothing to adapt.
            Ok(p) if p == Policy::IDLE => return off,
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "the sink's scheduling policy is unknown: it stays as it is");
                return off;
            }
        };
        if let Err(e) = can_return_from_idle(normal).and_then(|()| Policy::IDLE.apply()) {
            tracing::warn!(
                error = %e,
                "--sink-idle-lag-ms: the sink stays a normal thread, as it could not leave \
                 SCHED_IDLE again (needs CAP_SYS_NICE, or RLIMIT_NICE >= 20: systemd LimitNICE=+0)"
            );
            return off;
        }
        Priority {
            normal: Some(normal),
            idle: true,
            ..off
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.idle
    }

    /// Given how long the oldest record waiting has `waited` (zero: none waits), changes the
    /// thread's policy if [`next_idle`] says so; true if it left `SCHED_IDLE`.
    pub(crate) fn adapt(&mut self, waited: Duration) -> bool {
        let Some(normal) = self.normal else {
            return false;
        };
        let idle = next_idle(self.idle, waited, self.lag);
        if idle == self.idle {
            return false;
        }
        let to = if idle { Policy::IDLE } else { normal };
        match to.apply() {
            Ok(()) => {
                self.idle = idle;
                !idle
            }
            Err(e) => {
                // Checked at start; should it fail now, stay as we are and stop adapting.
                tracing::warn!(error = %e, "the sink could not change its scheduling policy");
                self.normal = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_until_the_lag_then_normal_until_below_half_of_it() {
        let lag = Duration::from_millis(1000);
        let ms = Duration::from_millis;
        assert!(next_idle(true, ms(999), lag));
        assert!(
            !next_idle(true, ms(1000), lag),
            "reaching the lag raises it"
        );
        assert!(!next_idle(false, ms(600), lag), "above half: stays normal");
        assert!(!next_idle(false, ms(500), lag));
        assert!(next_idle(false, ms(499), lag), "below half: idle again");
    }

    #[test]
    fn a_thread_goes_idle_and_back_and_reads_its_own_policy() {
        // Run on a thread of its own: the test harness's thread keeps its policy.
        std::thread::spawn(|| {
            let normal = Policy::current().unwrap();
            if normal == Policy::IDLE {
                return; // the test process runs under `chrt -i`: nothing to check.
            }
            let mut p = Priority::start(1000);
            assert!(
                p.idle(),
                "root, or a permitted RLIMIT_NICE, may go idle and back"
            );
            assert_eq!(Policy::current().unwrap(), Policy::IDLE);
            assert!(p.adapt(Duration::from_millis(1500)), "raised");
            assert_eq!(Policy::current().unwrap(), normal);
            assert!(
                !p.adapt(Duration::from_millis(100)),
                "lowered, not raised"
            );
            assert_eq!(Policy::current().unwrap(), Policy::IDLE);
            let off = Priority::start(0);
            assert!(!off.idle());
        })
        .join()
        .unwrap();
    }
}
