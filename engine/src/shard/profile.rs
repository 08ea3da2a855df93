//! `GET /debug/pprof/profile` on a shard: the claim, then the sampling started on the
//! blocking pool, a timer for the window, and the rendering on the blocking pool again. The
//! shard only awaits: it keeps serving its connections throughout (docs/PROFILING.md).
#![forbid(unsafe_code)]

use std::time::Duration;

use super::offload::off_shard;
use super::tasks::spawn_task;
use super::Shard;
use crate::conn::Phase;
use crate::profiler::{self, Claim};
use crate::wire::http::ProfileRequest;
use crate::wire::response;

impl Shard {
    /// Profiles the process for `request.seconds`, then answers connection `key`; 409 while
    /// another profile runs.
    pub(super) fn on_profile(&mut self, key: usize, request: ProfileRequest) {
        let Some(claim) = Claim::take() else {
            let busy = "a profile is already running: one at a time, retry when it is done\n";
            return self.respond_http(key, response::plain(409, busy));
        };
        self.metrics.debug_profiles.inc();
        self.metrics.debug_profile_running.set(1);
        let window = Duration::from_secs(request.seconds);
        // No deadline while the profile runs: the task below is its own bound (the window,
        // then the rendering, which takes seconds for a large debug build). A client that
        // leaves is noticed by its socket.
        let entry = &mut self.conns[key];
        entry.phase = Phase::Api;
        entry.close_deadline = None;
        let (me, conn, metrics) = (self.me.clone(), self.conn_ref(key), self.metrics.clone());
        spawn_task(async move {
            let answer = match off_shard(move || profiler::start(claim, request)).await {
                Err(why) => response::plain(500, &format!("{why}\n")),
                Ok(sampling) => {
                    glommio::timer::sleep(window).await;
                    match off_shard(move || sampling.finish()).await {
                        Ok(r) => response::response(200, r.content_type, &r.body, r.headers),
                        Err(why) => response::plain(500, &format!("{why}\n")),
                    }
                }
            };
            metrics.debug_profile_running.set(0);
            let Some(shard) = me.upgrade() else { return };
            let mut shard = shard.borrow_mut();
            let Some(key) = shard.live(conn) else { return };
            shard.respond_http(key, answer);
        })
        .detach();
    }
}
