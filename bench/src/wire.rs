//! WebSocket on the wire, client side: the upgrade request, masked frames out, and a frame
//! *scanner* in.
//!
//! The scanner is why this is not tungstenite: to measure a server delivering millions of
//! frames per second from one generator core, a subscriber must read 256 KiB at a time and
//! walk frame headers, looking at a payload only as far as the caller needs. A frame that
//! straddles two reads is assembled in a small per-connection buffer, capped so an idle
//! connection holds nothing and a busy one at most `assemble_bytes_max`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// The HTTP/1.1 upgrade request for `path` (which carries its own query string).
pub fn upgrade_request(host: &str, path: &str, key_seed: u64) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key_seed.to_le_bytes().repeat(2));
    let mut req = String::with_capacity(256);
    let _ = write!(
        req,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    req
}

/// What the server answered to the upgrade, once its header block is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Not all of the header block has arrived yet.
    Partial,
    /// 101: the rest of the buffer, from `body_offset`, is WebSocket frames.
    Switched { body_offset: usize },
    /// Any other status (503 when the server is full).
    Refused { status: u16 },
}

pub fn parse_upgrade_response(buf: &[u8]) -> Upgrade {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Upgrade::Partial;
    };
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    if status == 101 {
        Upgrade::Switched {
            body_offset: end + 4,
        }
    } else {
        Upgrade::Refused { status }
    }
}

/// Appends one masked client frame (`opcode`, FIN set) carrying `payload` to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Incremental reader of server (unmasked) frames. It keeps only what a frame split across
/// reads needs: up to 14 header bytes and at most `assemble_bytes_max` payload bytes.
pub struct Scanner {
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    opcode: u8,
    frame_len: usize,
    /// The current frame's payload collected so far when it straddles reads (capped).
    partial: Vec<u8>,
    assemble_bytes_max: usize,
}

impl Scanner {
    pub fn new(assemble_bytes_max: usize) -> Self {
        Scanner {
            header: [0; 14],
            header_len: 0,
            remaining: 0,
            opcode: 0,
            frame_len: 0,
            partial: Vec::new(),
            assemble_bytes_max,
        }
    }

    /// Feeds `data`; calls `on_frame(opcode, payload_prefix, payload_len)` once per complete
    /// frame, where `payload_prefix` is the whole payload or its first `assemble_bytes_max`
    /// bytes. Returns `Err` on a frame the scanner cannot accept (masked, or > 2^48 bytes).
    pub fn feed(
        &mut self,
        mut data: &[u8],
        on_frame: &mut impl FnMut(u8, &[u8], usize),
    ) -> Result<(), &'static str> {
        while !data.is_empty() {
            if self.header_len == usize::MAX {
                // Inside a payload that began in an earlier read.
                let take = self.remaining.min(data.len());
                let room = self.assemble_bytes_max.saturating_sub(self.partial.len());
                self.partial.extend_from_slice(&data[..take.min(room)]);
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    on_frame(self.opcode, &self.partial, self.frame_len);
                    self.partial.clear();
                    self.partial.shrink_to(0);
                    self.header_len = 0;
                }
                continue;
            }
            // Fast path: a whole header and payload within `data`.
            if self.header_len == 0 {
                if let Some((hlen, plen)) = header_lengths(data)? {
                    if data.len() >= hlen + plen {
                        on_frame(data[0] & 0x0F, &data[hlen..hlen + plen], plen);
                        data = &data[hlen + plen..];
                        continue;
                    }
                }
            }
            // Slow path: collect the header byte by byte, then the payload.
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if let Some((hlen, plen)) = header_lengths(&self.header[..self.header_len])? {
                debug_assert_eq!(hlen, self.header_len);
                self.opcode = self.header[0] & 0x0F;
                if plen == 0 {
                    on_frame(self.opcode, &[], 0);
                    self.header_len = 0;
                } else {
                    self.remaining = plen;
                    self.frame_len = plen;
                    self.header_len = usize::MAX;
                }
            }
        }
        Ok(())
    }
}

/// `Some((header_len, payload_len))` once `buf` holds a whole frame header.
fn header_lengths(buf: &[u8]) -> Result<Option<(usize, usize)>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err("server sent a masked frame");
    }
    let (hlen, plen) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as u64),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b))
        }
        126 | 127 => return Ok(None),
        n => (2, n as u64),
    };
    if plen > 1 << 48 {
        return Err("frame length out of range");
    }
    Ok(Some((hlen, plen as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn scanner_counts_frames_split_at_every_byte() {
        let big = vec![b'x'; 300];
        let mut stream = server_frame(OPCODE_TEXT, b"{\"op\":\"msg\"}");
        stream.extend(server_frame(OPCODE_PING, b""));
        stream.extend(server_frame(OPCODE_TEXT, &big));
        for cut in 0..stream.len() {
            let mut s = Scanner::new(64);
            let mut seen = Vec::new();
            let mut f = |op: u8, p: &[u8], _len: usize| seen.push((op, p.len()));
            s.feed(&stream[..cut], &mut f).unwrap();
            s.feed(&stream[cut..], &mut f).unwrap();
            assert_eq!(seen.len(), 3, "cut at {cut}");
            assert_eq!(seen[0], (OPCODE_TEXT, 12));
            assert_eq!(seen[1], (OPCODE_PING, 0));
            assert_eq!(seen[2].0, OPCODE_TEXT);
            assert!(
                seen[2].1 == 300 || seen[2].1 == 64,
                "cut at {cut}: {:?}",
                seen[2]
            );
        }
    }

    #[test]
    fn masked_frames_round_trip() {
        let mut out = Vec::new();
        push_frame(&mut out, OPCODE_TEXT, b"hello", [1, 2, 3, 4]);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn upgrade_response_statuses() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        assert_eq!(
            parse_upgrade_response(ok),
            Upgrade::Switched {
                body_offset: ok.len() - 2
            }
        );
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\n\r\n"),
            Upgrade::Refused { status: 503 }
        );
        assert_eq!(parse_upgrade_response(b"HTTP/1.1 101"), Upgrade::Partial);
    }
}
