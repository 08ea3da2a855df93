//! The tasks of a shard, and the glommio task queues they run in.
//!
//! | queue          | tasks                                   | shares |
//! |----------------|-----------------------------------------|--------|
//! | `sokdo-timers` | the ticker (heartbeats, timeouts, drain); the coalescer (`--write-coalesce-us`) | 1000   |
//! | `sokdo-inbox`  | the inbox: other shards, completions     | 1000   |
//! | `sokdo-conns`  | the accept loop, every connection task, helper continuations | 1000 |
//!
//! glommio runs the queue that has used the least CPU time per share, for at most its
//! preemption slice. The ticker uses almost none, so whenever its timer has fired it is the
//! first queue to run. The inbox and the connections share the core evenly under load:
//! the inbox takes work in (sequencing, fan-out into queues) and the connections put it
//! out (one `sendmsg` each); starving either one only grows the other's backlog.
//!
//! Every queue is `Latency::NotImportant`. glommio 0.9's latency-sensitive queues were
//! tried for the inbox and, on this kernel, sometimes put a shard to sleep with runnable
//! tasks and let it oversleep its own timers (docs/ARCHITECTURE.md, "The inbox task
//! queue"). Timers are kept on time by the ticker's queue being the least used, and a test
//! (`stress::timers_fire_while_fan_out_saturates_the_shard`) checks heartbeats and idle
//! timeouts under saturating fan-out.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, Shares, TaskQueueHandle};
use sokdo_persistence::RoomSnapshot;

use super::Shard;
use crate::conn::ConnDriver;
use crate::instance::Instance;
use crate::mesh::ShardId;

/// Messages (and completions) the inbox applies per batch before it lets other queues run:
/// with ~1 µs per message, a batch stays well inside glommio's time slice.
const INBOX_BATCH_MAX: usize = 256;

thread_local! {
    /// The shard's connection queue, where connection tasks and their helpers run.
    static CONNS: Cell<Option<TaskQueueHandle>> = const { Cell::new(None) };
}

fn queue(name: &str) -> TaskQueueHandle {
    glommio::executor().create_task_queue(Shares::Static(1000), Latency::NotImportant, name)
}

/// Runs shard `id` on the current glommio executor until it has drained.
pub async fn run(
    id: ShardId,
    instance: Arc<Instance>,
    listener: TcpListener,
    rooms: Vec<RoomSnapshot>,
) {
    let conns = queue("sokdo-conns");
    CONNS.set(Some(conns));
    let shard = Rc::new(RefCell::new(Shard::new(id, instance, rooms)));
    shard.borrow_mut().me = Rc::downgrade(&shard);
    // The inbox is a task of its own (its waker belongs to the doorbell alone).
    let _inbox = glommio::spawn_local_into(inbox_loop(shard.clone()), queue("sokdo-inbox"))
        .expect("the task queue was just created");
    let accept = glommio::spawn_local_into(accept_loop(shard.clone(), listener), conns)
        .expect("the task queue was just created");
    let timers = queue("sokdo-timers");
    // Only with a delay: without one, deliveries wake their connections at once.
    let _coalescer = shard.borrow().coalesce.is_on().then(|| {
        glommio::spawn_local_into(coalescer(shard.clone()), timers)
            .expect("the task queue was just created")
    });
    let ticker =
        glommio::spawn_local_into(ticker(shard), timers).expect("the task queue was just created");
    // When the ticker ends the drain, dropping the other tasks' handles cancels them: the
    // listener leaves the SO_REUSEPORT group, the inbox stops.
    futures_lite::future::or(accept, ticker).await;
}

/// Spawns a helper task of the shard (a continuation after the blocking pool, a fault) into
/// the connection queue: `glommio::spawn_local` would put it in whichever queue is running.
pub(super) fn spawn_task<T: 'static>(
    future: impl std::future::Future<Output = T> + 'static,
) -> glommio::Task<T> {
    let queue = CONNS.get().expect("spawn_task runs on a shard");
    glommio::spawn_local_into(future, queue).expect("the shard's connection queue exists")
}

async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: TcpListener) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => start_conn(&shard, stream),
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning, and say
                // so at most once a second.
                shard.borrow().metrics.connections_refused.inc();
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(shard = shard.borrow().id, error = %e, "accept failed");
                    last_warning = Some(Instant::now());
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn start_conn(shard: &Rc<RefCell<Shard>>, stream: TcpStream) {
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let Some(handshake_counted) = shard.borrow().handshake_enter(peer) else {
        // Past `--handshakes-per-ip-max`: dropped, so closed, unread.
        return;
    };
    // Small messages must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let key = shard.borrow_mut().add_conn(Instant::now());
    let entry = &mut shard.borrow_mut().conns[key];
    entry.peer = peer;
    entry.handshake_counted = handshake_counted;
    entry.fd = Some(std::os::fd::AsRawFd::as_raw_fd(&stream));
    spawn_task(ConnDriver::new(shard.clone(), stream, key)).detach();
}

/// Applies what other shards and the persistence threads sent, a bounded batch at a time,
/// as long as work keeps coming, and sleeps on the shard's doorbell once a drain finds
/// nothing (`Doorbell::serve`). Runs as a task of its own: its waker must go to the doorbell
/// only (see `mesh::Doorbell`).
async fn inbox_loop(shard: Rc<RefCell<Shard>>) {
    let (id, instance) = {
        let s = shard.borrow();
        (s.id, s.instance.clone())
    };
    let serving = instance.mesh.doorbell(id).serve(|| {
        let mut s = shard.borrow_mut();
        s.outbox.flush(&instance.mesh);
        let mut popped = 0;
        while popped < INBOX_BATCH_MAX {
            let Some(completion) = instance.completions.pop(id) else {
                break;
            };
            s.on_completion(completion);
            popped += 1;
        }
        if let Some(cluster) = &instance.cluster {
            while popped < INBOX_BATCH_MAX {
                let Some(msg) = cluster.port.pop(id) else {
                    break;
                };
                s.on_cluster(msg);
                popped += 1;
            }
        }
        let popped = popped
            + instance
                .mesh
                .drain(id, INBOX_BATCH_MAX, |_, msg| s.apply(msg));
        Some(popped)
    });
    serving.await;
}

/// Wakes the connections whose delayed deliveries are due (`coalesce`): sleeps until the
/// oldest deadline, or until a delivery makes one.
async fn coalescer(shard: Rc<RefCell<Shard>>) {
    loop {
        let at =
            futures_lite::future::poll_fn(|cx| shard.borrow_mut().coalesce.poll_next_due(cx)).await;
        let now = Instant::now();
        if at > now {
            glommio::timer::sleep(at - now).await;
        }
        let mut s = shard.borrow_mut();
        let Shard {
            coalesce, conns, ..
        } = &mut *s;
        coalesce.wake_due(conns, Instant::now());
    }
}

/// A tick this much later than asked counts as a stall of the shard (`sokdo_stalls_total`):
/// something held the core while heartbeats and timeouts waited.
const TICK_LATE: Duration = Duration::from_millis(50);

async fn ticker(shard: Rc<RefCell<Shard>>) {
    let tick = shard.borrow().tick;
    loop {
        shard.borrow().instance.liveness.ran(shard.borrow().id);
        let asked = Instant::now();
        glommio::timer::sleep(tick).await;
        let now = Instant::now();
        // The shard did not run for this long past its tick: it read nothing and sent no
        // ping meanwhile, so that time does not count against its clients' idleness.
        let mut late = (now - asked).saturating_sub(tick);
        if late > TICK_LATE {
            shard.borrow().metrics.stalls.inc();
        } else {
            late = Duration::ZERO;
        }
        if shard.borrow_mut().on_tick(now, late) {
            let s = shard.borrow();
            s.instance.liveness.stopped(s.id);
            tracing::info!(shard = s.id, left = s.conns.len(), "drained");
            return;
        }
    }
}
