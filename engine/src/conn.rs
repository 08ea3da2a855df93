//! One client connection: its small state in the shard's slab ([`ConnEntry`]) and the task
//! that moves its bytes ([`ConnDriver`]).
//!
//! Memory is the point of this file. An idle connection holds its socket, a slab entry of a
//! few hundred bytes and a parked task — no read buffer, no write buffer. A read borrows the
//! shard's one read buffer for the duration of a non-blocking `recv`; glommio's stream only
//! waits for readiness while pending, so nothing is pinned while a client is quiet. Outbound
//! frames are `Bytes` shared by every subscriber of the shard; a connection's queue holds
//! references, bounded by `outbound_queue_bytes_max`, and all of them go out in one
//! `sendmsg` (scatter-gather, non-blocking) per turn of the task.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::shard::Shard;
use crate::ws::Decoder;

/// Size of the read buffer each shard lends to one read at a time.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Frames handed to one `sendmsg`.
const IOVECS_PER_WRITE_MAX: usize = 64;
/// Reads a task does before it yields to the other tasks of its shard.
const READS_PER_POLL_MAX: usize = 8;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF_BYTES]);
}

/// A connection named across shards: its slab key and a generation, so a reply for a
/// connection that has gone never reaches the next one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub key: u32,
    pub id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Http,
    /// Upgraded and authenticated, waiting in the admission queue.
    Queued,
    /// Upgraded, authenticated and admitted.
    Open,
    /// An HTTP API call waiting for its reply.
    Api,
    /// A close frame or a final HTTP response is queued; no new frames are accepted.
    Closing,
}

/// A connection's state in the shard's slab.
pub struct ConnEntry {
    pub id: u64,
    pub phase: Phase,
    pub user: Rc<str>,
    pub name: Option<Rc<str>>,
    /// Rooms this connection receives, each with its index in the shard's subscriber list.
    pub rooms: Vec<(Arc<str>, u32)>,
    pub out: Outbound,
    pub waker: Option<Waker>,
    pub opened_at: Instant,
    pub last_recv: Instant,
    pub last_ping: Instant,
    /// When a closing connection is dropped whatever it has read.
    pub close_deadline: Option<Instant>,
    /// The peer sent a close frame, or this is a plain HTTP response: end once flushed.
    pub end_when_flushed: bool,
    /// Drop the socket at the next poll (timeouts).
    pub kill: bool,
    /// Requests answered with an error so far.
    pub errors: u32,
    /// The last `typing` notice (rate limit).
    pub last_typing: Option<Instant>,
    /// HTTP status of a successful reply to this connection's API call.
    pub api_ok_status: u16,
    /// Counted in the shard's admitted connections.
    pub admitted: bool,
    /// The admission-queue position last told to the client.
    pub queue_position: u32,
}

impl ConnEntry {
    pub fn new(id: u64, now: Instant) -> ConnEntry {
        ConnEntry {
            id,
            phase: Phase::Http,
            user: Rc::from(""),
            name: None,
            rooms: Vec::new(),
            out: Outbound::default(),
            waker: None,
            opened_at: now,
            last_recv: now,
            last_ping: now,
            close_deadline: None,
            end_when_flushed: false,
            kill: false,
            errors: 0,
            last_typing: None,
            api_ok_status: 200,
            admitted: false,
            queue_position: 0,
        }
    }

    pub fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    pub fn room_index(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|(r, _)| &**r == room)
    }
}

/// A connection's queue of encoded frames.
#[derive(Default)]
pub struct Outbound {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Bytes of the front frame already on the wire.
    front_written: usize,
}

impl Outbound {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops every frame not yet started (a half-written frame must finish, or the stream
    /// is corrupt). Returns the bytes dropped.
    pub fn drop_unsent(&mut self) -> usize {
        let keep = usize::from(self.front_written > 0);
        let dropped: usize = self.frames.drain(keep..).map(|f| f.len()).sum();
        self.bytes -= dropped;
        dropped
    }

    /// Writes as much as the socket takes in one `sendmsg`. Returns the bytes written;
    /// `WouldBlock` when the socket took nothing.
    fn write_to(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOVECS_PER_WRITE_MAX];
        let mut count = 0;
        for (i, frame) in self.frames.iter().take(IOVECS_PER_WRITE_MAX).enumerate() {
            let skip = if i == 0 { self.front_written } else { 0 };
            iov[i] = libc::iovec {
                iov_base: frame[skip..].as_ptr() as *mut libc::c_void,
                iov_len: frame.len() - skip,
            };
            count += 1;
        }
        let written = sendmsg(fd, &iov[..count])?;
        self.advance(written);
        Ok(written)
    }

    fn front_unwritten(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f[self.front_written..])
    }

    fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let front_left = self.frames[0].len() - self.front_written;
            if written < front_left {
                self.front_written += written;
                return;
            }
            written -= front_left;
            self.frames.pop_front();
            self.front_written = 0;
        }
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            // An idle connection keeps no queue storage.
            self.frames = VecDeque::new();
        }
    }
}

/// Non-blocking scatter-gather send of `iov` on a stream socket.
fn sendmsg(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: `msghdr` is plain data; a zeroed one has no address and no control data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    // SAFETY: every iovec points into a `Bytes` that `Outbound` keeps alive for the call,
    // and `fd` is the open socket of the stream the caller owns.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The task of one connection.
pub struct ConnDriver {
    shard: Rc<RefCell<Shard>>,
    stream: TcpStream,
    key: usize,
    decoder: Decoder,
    /// The HTTP request head while it arrives in pieces; empty afterwards.
    head: Vec<u8>,
}

enum Step {
    Continue,
    Pending,
    End,
}

impl ConnDriver {
    pub fn new(shard: Rc<RefCell<Shard>>, stream: TcpStream, key: usize) -> ConnDriver {
        ConnDriver {
            shard,
            stream,
            key,
            decoder: Decoder::default(),
            head: Vec::new(),
        }
    }

    /// Sends what is queued. Registers for writability when the socket is full.
    fn flush(&mut self, cx: &mut Context<'_>) -> Step {
        let fd = self.stream.as_raw_fd();
        let mut shard = self.shard.borrow_mut();
        loop {
            let entry = &mut shard.conns[self.key];
            if entry.out.is_empty() {
                return Step::Continue;
            }
            match entry.out.write_to(fd) {
                Ok(n) => shard.note_written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Let glommio watch for writability: it first retries the front frame
                    // itself, so account for whatever it manages to send.
                    let front = entry.out.front_unwritten().expect("queue is not empty");
                    return match Pin::new(&mut self.stream).poll_write(cx, front) {
                        Poll::Pending => Step::Pending,
                        Poll::Ready(Ok(n)) => {
                            entry.out.advance(n);
                            shard.note_written(n);
                            continue;
                        }
                        Poll::Ready(Err(_)) => Step::End,
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Step::End,
            }
        }
    }

    /// Reads once into the shard's buffer and hands the bytes to the shard.
    fn read(&mut self, cx: &mut Context<'_>) -> Step {
        let mut buf = READ_BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        if buf.is_empty() {
            buf = vec![0; READ_BUF_BYTES];
        }
        let step = match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Pending => Step::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Step::End,
            Poll::Ready(Ok(n)) => {
                let mut shard = self.shard.borrow_mut();
                shard.on_bytes(self.key, &mut self.head, &mut self.decoder, &mut buf[..n]);
                Step::Continue
            }
        };
        READ_BUF.with(|b| *b.borrow_mut() = buf);
        step
    }

    fn should_end(&self) -> bool {
        let shard = self.shard.borrow();
        let entry = &shard.conns[self.key];
        entry.kill || (entry.end_when_flushed && entry.out.is_empty())
    }

    fn park(&self, cx: &Context<'_>) {
        let mut shard = self.shard.borrow_mut();
        let entry = &mut shard.conns[self.key];
        match &entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
    }
}

impl Future for ConnDriver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..READS_PER_POLL_MAX {
            if this.should_end() {
                return Poll::Ready(());
            }
            if let Step::End = this.flush(cx) {
                return Poll::Ready(());
            }
            if this.should_end() {
                return Poll::Ready(());
            }
            match this.read(cx) {
                Step::End => return Poll::Ready(()),
                Step::Pending => {
                    this.park(cx);
                    return Poll::Pending;
                }
                Step::Continue => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for ConnDriver {
    fn drop(&mut self) {
        // Runs when the task ends and when a draining executor drops it: either way the
        // shard forgets the connection and tells the homes of its rooms.
        if let Ok(mut shard) = self.shard.try_borrow_mut() {
            shard.remove_conn(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_keep_the_stream_intact() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"hello "));
        out.push(Bytes::from_static(b"world"));
        out.advance(3);
        assert_eq!(out.bytes(), 8);
        assert_eq!(out.drop_unsent(), 5, "half-written front frame is kept");
        out.push(Bytes::from_static(b"!"));
        assert_eq!(out.write_to(a.as_raw_fd()).unwrap(), 4);
        assert!(out.is_empty());
        let mut got = [0u8; 4];
        io::Read::read_exact(&mut &b, &mut got).unwrap();
        assert_eq!(&got, b"lo !");
    }
}
