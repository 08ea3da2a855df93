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
                    let matches = crate::password::off_shard(verify).await;
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
