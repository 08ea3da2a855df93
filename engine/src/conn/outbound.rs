//! A connection's queue of encoded frames, and the one `sendmsg` that writes them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Frames handed to one `sendmsg`. DESIGN.md measured the cost of few frames per write
/// (8 per write: 1.6 M deliveries/s; 32: 6.4 M); 64 iovecs (1 KiB, on the stack) leave a
/// burst room to go out in one call.
const IOVECS_PER_WRITE_MAX: usize = 64;

/// A connection's queue of encoded frames.
#[derive(Default)]
pub struct Outbound {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Bytes of the front frame already on the wire.
    front_written: usize,
    /// Bytes the socket has accepted since the connection opened.
    written_total: u64,
    /// The socket refused the last write (full): set by the writer, cleared by progress.
    refused: bool,
    /// What the last [`Outbound::stalled_for`] saw: `written_total` then, and since when
    /// the socket has refused the queue without accepting a byte.
    seen_written: u64,
    stalled_since: Option<Instant>,
    /// A frame was queued since the last [`Outbound::trim_idle`].
    used: bool,
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
        self.used = true;
        self.frames.push_back(frame);
    }

    /// Frees the storage of a queue that is empty and took no frame since the previous
    /// call: called once per tick by the shard (never by the writer), so an idle connection
    /// holds no queue after two ticks (issue 14's idle-connection budget), and a busy one,
    /// which receives something every tick, does not free and grow its queue again for every
    /// burst (that was three allocations per subscriber per burst of 16: `shard::fanout`'s
    /// allocation test). Returns true when it freed.
    pub fn trim_idle(&mut self) -> bool {
        let used = std::mem::take(&mut self.used);
        if used || !self.frames.is_empty() || self.frames.capacity() == 0 {
            return false;
        }
        self.frames = VecDeque::new();
        true
    }

    /// The writer found the socket full (`EAGAIN`): from now until a byte goes out, the
    /// queue waits on the client, not on the shard.
    pub(super) fn refused(&mut self) {
        self.refused = true;
    }

    /// How long the socket has refused the queue without accepting any byte, sampled by
    /// the shard's ticker: a queue that is empty or not refused, or that the socket took
    /// bytes from since the previous call, starts a new period at `now`. So a stall is seen
    /// within one tick of its start; frames waiting for the shard's writer to get its turn
    /// (a burst, a busy shard) are not a stall, nor is a client that reads, however slowly.
    /// O(1); the write path only counts bytes and sets a flag.
    ///
    /// `late`: how long the shard itself did not run before this call (a stall of its
    /// thread). Its writer did not run either, so the socket taking nothing meanwhile says
    /// nothing of the client, which may have read everything: the period is moved on by
    /// it, as the idle clock is.
    pub fn stalled_for(&mut self, now: Instant, late: Duration) -> Duration {
        let progressed = self.written_total != self.seen_written;
        self.seen_written = self.written_total;
        if self.frames.is_empty() || !self.refused {
            self.stalled_since = None;
            return Duration::ZERO;
        }
        if progressed || self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
        if let Some(since) = self.stalled_since.filter(|_| !late.is_zero()) {
            self.stalled_since = Some((since + late).min(now));
        }
        now.saturating_duration_since(self.stalled_since.unwrap_or(now))
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
    pub(crate) fn write_to(&mut self, fd: RawFd) -> io::Result<usize> {
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

    pub(super) fn front_unwritten(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f[self.front_written..])
    }

    pub(super) fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        self.written_total += written as u64;
        if written > 0 {
            self.refused = false;
        }
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
    }
}

/// Bytes wait unread in the receive buffer of socket `fd` (a non-blocking one-byte
/// `recv(MSG_PEEK)`: nothing is taken out). False on an error or at end of stream.
pub(super) fn has_unread(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: the buffer is one live byte of this frame, and `fd` is the open socket of a
    // connection whose entry (and so whose stream) still exists; the call only peeks.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn unread_bytes_are_seen_and_left_in_place() {
        use std::io::{Read, Write};
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        assert!(!has_unread(b.as_raw_fd()), "nothing sent yet");
        a.write_all(b"x").unwrap();
        assert!(has_unread(b.as_raw_fd()));
        assert!(has_unread(b.as_raw_fd()), "a peek takes nothing out");
        let mut buf = [0u8; 4];
        assert_eq!(b.read(&mut buf).unwrap(), 1);
        assert!(!has_unread(b.as_raw_fd()), "read: nothing left");
        drop(a);
        assert!(
            !has_unread(b.as_raw_fd()),
            "end of stream is not unread bytes"
        );
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back_and_a_busy_one_keeps_its_frames() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"one"));
        out.push(Bytes::from_static(b"two"));
        assert!(!out.trim_idle());
        assert_eq!(out.frames.len(), 2, "queued frames are never dropped");
        assert_eq!(out.write_to(a.as_raw_fd()).unwrap(), 6);
        assert!(out.is_empty());
        assert!(out.frames.capacity() > 0, "the writer keeps the queue");
        assert!(
            out.trim_idle(),
            "drained, and nothing came since the last tick"
        );
        assert_eq!(out.frames.capacity(), 0);
        out.push(Bytes::from_static(b"three"));
        assert_eq!(out.bytes(), 5);
        drop(b);
    }

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

    #[test]
    fn a_drained_queue_keeps_its_storage_until_a_tick_passes_without_frames() {
        let mut out = Outbound::default();
        let burst = |out: &mut Outbound| {
            for _ in 0..32 {
                out.push(Bytes::from_static(b"x"));
            }
            let bytes = out.bytes();
            out.advance(bytes);
        };
        burst(&mut out);
        let grown = out.frames.capacity();
        assert!(grown >= 32);
        assert!(!out.trim_idle(), "frames came since the last tick");
        assert_eq!(out.frames.capacity(), grown);
        burst(&mut out);
        assert_eq!(out.frames.capacity(), grown, "the next burst reuses it");
        assert!(!out.trim_idle());
        assert!(out.trim_idle(), "a whole tick without frames: freed");
        assert_eq!(out.frames.capacity(), 0);
        out.push(Bytes::from_static(b"y"));
        assert!(!out.trim_idle(), "a queue with frames is never trimmed");
        assert!(!out.trim_idle(), "however long it waits");
    }

    #[test]
    fn a_stall_is_no_progress_while_frames_wait() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        const ZERO: Duration = Duration::ZERO;
        let mut out = Outbound::default();
        assert_eq!(out.stalled_for(at(0), ZERO), Duration::ZERO, "empty");
        out.push(Bytes::from_static(b"abcdef"));
        assert_eq!(
            out.stalled_for(at(10), ZERO),
            Duration::ZERO,
            "queued, not refused"
        );
        assert_eq!(
            out.stalled_for(at(30), ZERO),
            Duration::ZERO,
            "waits for the writer"
        );
        out.refused();
        assert_eq!(
            out.stalled_for(at(40), ZERO),
            Duration::ZERO,
            "just refused"
        );
        assert_eq!(out.stalled_for(at(60), ZERO), Duration::from_millis(20));
        out.advance(1);
        assert_eq!(out.stalled_for(at(70), ZERO), Duration::ZERO, "progress");
        out.push(Bytes::from_static(b"more"));
        out.refused();
        assert_eq!(out.stalled_for(at(80), ZERO), Duration::ZERO);
        assert_eq!(out.stalled_for(at(130), ZERO), Duration::from_millis(50));
        out.advance(9);
        assert_eq!(out.stalled_for(at(500), ZERO), Duration::ZERO, "drained");
    }

    #[test]
    fn a_stall_of_the_shard_is_not_the_clients() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"abcdef"));
        out.refused();
        assert_eq!(out.stalled_for(at(0), ms(0)), ms(0));
        assert_eq!(out.stalled_for(at(100), ms(0)), ms(100));
        // The shard did not run for 8 s: those 8 s are not counted against the client.
        assert_eq!(out.stalled_for(at(8_200), ms(8_000)), ms(200));
        assert_eq!(out.stalled_for(at(8_300), ms(0)), ms(300));
        // A lateness longer than the period so far only restarts it.
        assert_eq!(out.stalled_for(at(20_000), ms(15_000)), ms(0));
    }
}
