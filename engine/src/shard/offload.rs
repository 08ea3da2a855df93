//! Work that must not run on a shard (argon2, the account store) goes to the executor's
//! blocking pool; the continuation comes back to the shard as a task of its own.
#![forbid(unsafe_code)]

use super::tasks::spawn_task;
use super::Shard;
use crate::home::Offload;
use crate::mesh::msg::Outgoing;

impl Shard {
    /// Runs what a home handed back, then gives the result to the home.
    pub(super) fn offload(&mut self, offload: Offload) {
        match offload {
            Offload::VerifyPassword(check) => {
                let me = self.me.clone();
                let (password, hash) = (check.password.clone(), check.hash.clone());
                spawn_task(async move {
                    let verify = move || crate::password::verify(&password, &hash);
                    let matches = off_shard(verify).await;
                    let Some(shard) = me.upgrade() else { return };
                    let mut shard = shard.borrow_mut();
                    let mut out = Outgoing::default();
                    shard
                        .homes
                        .join_verified(check, matches, Shard::now(), &mut out);
                    shard.apply_outgoing(out);
                })
                .detach();
            }
        }
    }
}

thread_local! {
    /// Calls of this shard's thread still on the blocking pool.
    static IN_FLIGHT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` on the executor's blocking pool.
pub(super) async fn off_shard<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            IN_FLIGHT.with(|n| n.set(n.get() - 1));
        }
    }
    IN_FLIGHT.with(|n| n.set(n.get() + 1));
    let _done = Done;
    glommio::executor().spawn_blocking(f).await
}

/// Calls of this thread's `off_shard` not finished yet. A shard's drain waits for them:
/// glommio's pool thread panics if it finishes a job after its executor is gone.
pub(super) fn in_flight() -> usize {
    IN_FLIGHT.with(|n| n.get())
}
