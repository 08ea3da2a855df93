//! The task of one connection: read, flush, park. It knows the shard only as a
//! [`ConnHost`].
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::ConnHost;
use crate::wire::ws::Decoder;

/// Size of the read buffer each shard lends to one read at a time: one read takes what a
/// busy client sent in a turn (a burst of small requests) and the largest frame's worth of
/// a slow one, while ten thousand idle connections hold none.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reads a task does before it yields to the other tasks of its shard.
const READS_PER_POLL_MAX: usize = 8;
/// Bytes a task reads (and so requests it executes) before it yields: one full buffer.
/// glommio switches task queues (and fires timers) only between tasks, so this bounds how
/// long one client that keeps sending holds the shard: 512 KiB of pipelined `send`s in one
/// turn, measured before this bound, held a debug build's shard past half a second, and
/// heartbeats and idle timeouts waited (`stress::timers_fire_…`).
const READ_BYTES_PER_POLL_MAX: usize = READ_BUF_BYTES;

/// Bytes one flush writes before the task reads and, if the client sent nothing, yields
/// (the task runs again at once: `Step::More`). Without a bound, one subscriber that reads as
/// fast as the shard writes kept its task in a single flush for over a second (64 MB
/// queued), and the shard's timers and other connections waited (`stress::timers_fire_…`).
/// 1 MiB is above a saturated fan-out's usual backlog per connection: 128 KiB, tried first,
/// cost ~10 % of deliveries/s at saturation in extra polls (docs/BENCHMARKS.md).
const FLUSH_BYTES_MAX: usize = 1024 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF_BYTES]);
}

/// The task of one connection.
pub struct ConnDriver<H: ConnHost> {
    host: Rc<RefCell<H>>,
    stream: TcpStream,
    key: usize,
    decoder: Decoder,
    /// The HTTP request head while it arrives in pieces; empty afterwards.
    head: Vec<u8>,
}

enum Step {
    Continue,
    /// A flush stopped at its budget with frames still queued: the task must run again
    /// without waiting for the socket.
    More,
    /// Read this many bytes (and handed them to the host).
    Read(usize),
    Pending,
    End,
}

impl<H: ConnHost> ConnDriver<H> {
    pub fn new(host: Rc<RefCell<H>>, stream: TcpStream, key: usize) -> ConnDriver<H> {
        ConnDriver {
            host,
            stream,
            key,
            decoder: Decoder::default(),
            head: Vec::new(),
        }
    }

    /// Sends what is queued, up to `FLUSH_BYTES_MAX`. Registers for writability when the
    /// socket is full.
    fn flush(&mut self, cx: &mut Context<'_>) -> Step {
        let fd = self.stream.as_raw_fd();
        let mut host = self.host.borrow_mut();
        let mut budget = FLUSH_BYTES_MAX;
        loop {
            let entry = host.entry(self.key);
            if entry.out.is_empty() {
                return Step::Continue;
            }
            if budget == 0 {
                return Step::More;
            }
            match entry.out.write_to(fd) {
                Ok(n) => {
                    host.written(n);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Let glommio watch for writability: it first retries the front frame
                    // itself, so account for whatever it manages to send.
                    let front = entry.out.front_unwritten().expect("queue is not empty");
                    return match Pin::new(&mut self.stream).poll_write(cx, front) {
                        Poll::Pending => {
                            entry.out.refused();
                            Step::Pending
                        }
                        Poll::Ready(Ok(n)) => {
                            entry.out.advance(n);
                            host.written(n);
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
                let mut host = self.host.borrow_mut();
                host.on_bytes(self.key, &mut self.head, &mut self.decoder, &mut buf[..n]);
                Step::Read(n)
            }
        };
        READ_BUF.with(|b| *b.borrow_mut() = buf);
        step
    }

    fn should_end(&self) -> bool {
        let mut host = self.host.borrow_mut();
        let entry = host.entry(self.key);
        entry.kill || (entry.end_when_flushed && entry.out.is_empty())
    }

    /// Parks until woken (readable, writable, or by the shard).
    fn wait(&self, cx: &Context<'_>, flushed: &Step) -> Poll<()> {
        self.park(cx);
        if let Step::More = flushed {
            // Nothing wakes a task for frames it already holds: run again.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn reading_paused(&self) -> bool {
        self.host.borrow_mut().entry(self.key).reading_paused()
    }

    fn park(&self, cx: &Context<'_>) {
        let mut host = self.host.borrow_mut();
        let entry = host.entry(self.key);
        match &entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
    }
}

impl<H: ConnHost> Future for ConnDriver<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut read = 0;
        for _ in 0..READS_PER_POLL_MAX {
            if this.should_end() {
                return Poll::Ready(());
            }
            let flushed = this.flush(cx);
            if let Step::End = flushed {
                return Poll::Ready(());
            }
            if this.should_end() {
                return Poll::Ready(());
            }
            if this.reading_paused() {
                // Requests read earlier wait for answers (`order`): their release wakes us.
                return this.wait(cx, &flushed);
            }
            match this.read(cx) {
                Step::End => return Poll::Ready(()),
                Step::Pending => return this.wait(cx, &flushed),
                Step::Read(n) => {
                    read += n;
                    if read >= READ_BYTES_PER_POLL_MAX {
                        break;
                    }
                }
                Step::Continue | Step::More => unreachable!("a read reads, waits or ends"),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<H: ConnHost> Drop for ConnDriver<H> {
    fn drop(&mut self) {
        // Runs when the task ends and when a draining executor drops it: either way the
        // shard forgets the connection and tells the homes of its rooms.
        // The host is never borrowed while one of its tasks is dropped: tasks end in their
        // own poll, and a draining executor drops them after the shard's tasks returned.
        let host = self.host.try_borrow_mut();
        debug_assert!(
            host.is_ok(),
            "a connection task dropped while its shard is borrowed"
        );
        if let Ok(mut host) = host {
            host.forget(self.key);
        }
    }
}
