//! Peer links: plain TCP on the cluster port (the number of `--cluster-listen`).
//!
//! Each instance dials every peer it sees and only *sends* on that connection; it only
//! *receives* on the connections its peers dialled (two connections per pair, no
//! tie-break). The dialler's first frame is [`Frame::Hello`]; the acceptor refuses (closes,
//! logs) another protocol version, a node id that is not an active member of its view, or
//! a boot that is not the one its view holds for that node.
//!
//! Threads, none of them a shard: one acceptor; one reader per accepted connection, which
//! decodes frames and hands them to the cluster thread's channel (a blocking send: a busy
//! cluster thread slows the peer down through TCP, it never grows a buffer here); one writer
//! per outbound link, which dials with a bounded backoff and writes what its bounded queue
//! holds. The cluster thread never blocks on a link: it `try_send`s, and a link whose queue
//! is full is **dropped** (the writer discards its queue and closes) and a new one dialled:
//! the peer is resynchronised by the protocol (appends resent on ticks, deliveries replayed
//! from the owner's log), never by a queue that grows.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use sokdo_replication::frame::{self, Frame};
use sokdo_replication::membership::MemberState;

use super::{Cluster, Event};

/// Longest a dial waits for the peer's TCP handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// First retry after a failed dial; doubled up to `--cluster-link-backoff-max-ms`.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// Longest an accepted connection may take to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from a link at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One peer's link figures (`/cluster`, `sokdo_cluster_link_*`), both directions.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub node_id: String,
    /// The outbound connection is established (Hello sent).
    pub out_up: AtomicBool,
    /// Inbound connections from this peer open now.
    pub in_open: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Outbound links dropped because their queue was full.
    pub drops: AtomicU64,
    /// Outbound connections established.
    pub connects: AtomicU64,
}

impl LinkStats {
    pub fn json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "node_id": self.node_id,
            "out": {
                "up": self.out_up.load(Ordering::Relaxed),
                "frames": n(&self.frames_out),
                "bytes": n(&self.bytes_out),
                "connects": n(&self.connects),
                "drops": n(&self.drops),
            },
            "in": {
                "open": n(&self.in_open),
                "frames": n(&self.frames_in),
                "bytes": n(&self.bytes_in),
            },
        })
    }
}

/// The outbound side of one peer, owned by the cluster thread.
pub struct Link {
    pub addr: SocketAddr,
    pub boot: u64,
    tx: Sender<Arc<Vec<u8>>>,
    /// Set when the link is dropped: its writer stops and discards its queue.
    abandoned: Arc<AtomicBool>,
    stats: Arc<LinkStats>,
}

impl Link {
    /// Starts the writer thread of a link to `addr` (the peer `boot` of `stats.node_id`).
    pub fn open(
        cluster: &Arc<Cluster>,
        addr: SocketAddr,
        boot: u64,
        stats: Arc<LinkStats>,
    ) -> Link {
        let (tx, rx) = crossbeam_channel::bounded(cluster.limits.link_queue_frames);
        let abandoned = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            cluster: cluster.clone(),
            addr,
            rx,
            abandoned: abandoned.clone(),
            stats: stats.clone(),
        };
        let name = format!("cluster-link-{}", stats.node_id);
        if let Err(e) = std::thread::Builder::new()
            .name(name)
            .spawn(move || writer.run())
        {
            tracing::warn!(peer = %stats.node_id, "cannot start a link writer thread: {e}");
        }
        Link {
            addr,
            boot,
            tx,
            abandoned,
            stats,
        }
    }

    /// Queues `bytes` (an encoded frame). `false`: the queue was full, and the link must be
    /// dropped and dialled again.
    pub fn send(&self, bytes: Arc<Vec<u8>>) -> bool {
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.stats.drops.fetch_add(1, Ordering::Relaxed);
                false
            }
            // The writer could not start: nothing can be sent; the protocol resends later.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

struct Writer {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
    rx: Receiver<Arc<Vec<u8>>>,
    abandoned: Arc<AtomicBool>,
    stats: Arc<LinkStats>,
}

impl Writer {
    fn run(self) {
        let mut backoff = BACKOFF_FIRST;
        let backoff_max = self.cluster.limits.link_backoff_max;
        let mut warned = false;
        while !self.over() {
            match self.dial() {
                Ok(stream) => {
                    backoff = BACKOFF_FIRST;
                    warned = false;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.stats.out_up.store(true, Ordering::Relaxed);
                    tracing::info!(peer = %self.stats.node_id, addr = %self.addr, "cluster link up");
                    self.changed();
                    let why = self.write_until_broken(stream);
                    self.stats.out_up.store(false, Ordering::Relaxed);
                    if !self.over() {
                        tracing::info!(peer = %self.stats.node_id, "cluster link down: {why}");
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::info!(peer = %self.stats.node_id, addr = %self.addr, "cluster link: cannot dial yet: {e}");
                        warned = true;
                    }
                    // Frames queued while the peer cannot be reached are discarded: the
                    // protocol resends what matters once it answers again.
                    while self.rx.try_recv().is_ok() {}
                    let _ = crossbeam_channel::after(backoff).recv();
                    backoff = (backoff * 2).min(backoff_max);
                }
            }
        }
    }

    /// Tells the cluster thread (a full channel: it is busy, and the next change tells it).
    fn changed(&self) {
        let node = self.stats.node_id.clone();
        let _ = self
            .cluster
            .port
            .events
            .try_send(Event::LinkChanged { node });
    }

    fn over(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst) || self.cluster.stopping()
    }

    fn dial(&self) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&self.addr, DIAL_TIMEOUT)?;
        stream.set_nodelay(true)?;
        let hello = Frame::Hello {
            version: frame::PROTOCOL_VERSION,
            node_id: self.cluster.node_id.clone(),
            boot_id: self.cluster.boot,
        };
        let bytes = frame::encode(&hello).map_err(std::io::Error::other)?;
        stream.write_all(&bytes)?;
        Ok(stream)
    }

    fn write_until_broken(&self, mut stream: TcpStream) -> String {
        loop {
            let bytes = match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(bytes) => bytes,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.over() {
                        return "closed".into();
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return "closed".into(),
            };
            if self.over() {
                return "dropped".into();
            }
            if let Err(e) = stream.write_all(&bytes) {
                return e.to_string();
            }
            self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_out
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Starts the acceptor on the already bound listener.
pub fn accept(cluster: Arc<Cluster>, listener: TcpListener, events: Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("cluster-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if cluster.stopping() {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (cluster, events) = (cluster.clone(), events.clone());
                let _ = std::thread::Builder::new()
                    .name("cluster-read".into())
                    .spawn(move || read_link(&cluster, stream, &events));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the cluster link acceptor: {e}");
    }
}

/// One accepted connection: its `Hello`, then frames until it breaks or the peer is gone.
fn read_link(cluster: &Cluster, mut stream: TcpStream, events: &Sender<Event>) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let node = match read_hello(cluster, &mut stream, &mut buf, &mut chunk) {
        Ok(node) => node,
        Err(why) => {
            tracing::warn!(peer = ?peer, "cluster link refused: {why}");
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let stats = cluster.link_stats(&node);
    if let Some(s) = &stats {
        s.in_open.fetch_add(1, Ordering::Relaxed);
    }
    let why = read_frames(
        &node,
        &mut stream,
        &mut buf,
        &mut chunk,
        stats.as_deref(),
        events,
    );
    if let Some(s) = &stats {
        s.in_open.fetch_sub(1, Ordering::Relaxed);
    }
    if !cluster.stopping() {
        tracing::info!(peer = %node, "cluster link from the peer closed: {why}");
        let _ = events.send(Event::LinkChanged { node });
    }
}

/// Reads until one whole frame is in `buf`; returns it with the bytes it took.
fn next_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<(Frame, usize), String> {
    loop {
        match frame::decode(buf) {
            Ok(Some((f, used))) => {
                buf.drain(..used);
                return Ok((f, used));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream.read(chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("end of stream".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_hello(
    cluster: &Cluster,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<String, String> {
    let (hello, _) = next_frame(stream, buf, chunk)?;
    let (node, boot) = frame::check_hello(&hello).map_err(|e| e.to_string())?;
    // The dialler may have learnt of this instance before this instance learnt of it (or
    // of its new boot): the membership catches up within a few probe periods.
    let deadline = std::time::Instant::now() + HELLO_TIMEOUT;
    let known = |view: &super::View| {
        view.members
            .iter()
            .find(|m| m.identity.node_id == node && !m.is_self && m.state != MemberState::Down)
            .map(|m| m.identity.boot)
    };
    let mut view = cluster.view();
    while known(&view) != Some(boot) && std::time::Instant::now() < deadline {
        let _ = crossbeam_channel::after(Duration::from_millis(20)).recv();
        view = cluster.view();
    }
    let member = view
        .members
        .iter()
        .find(|m| m.identity.node_id == node && !m.is_self && m.state != MemberState::Down);
    match member {
        None => Err(format!(
            "`{node}` is not an active member of this instance's view"
        )),
        Some(m) if m.identity.boot != boot => Err(format!(
            "`{node}` says boot {boot:016x}, this instance's view has {:016x}",
            m.identity.boot
        )),
        Some(_) => Ok(node.to_owned()),
    }
}

fn read_frames(
    node: &str,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    stats: Option<&LinkStats>,
    events: &Sender<Event>,
) -> String {
    loop {
        let (frame, used) = match next_frame(stream, buf, chunk) {
            Ok(f) => f,
            Err(why) => return why,
        };
        if let Some(s) = stats {
            s.frames_in.fetch_add(1, Ordering::Relaxed);
            s.bytes_in.fetch_add(used as u64, Ordering::Relaxed);
        }
        let event = Event::Frame {
            from: node.to_owned(),
            frame,
        };
        if events.send(event).is_err() {
            return "the cluster thread ended".into();
        }
    }
}
