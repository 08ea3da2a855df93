//! WebSocket framing (RFC 6455) for a connection that owns no buffer while idle.
//!
//! tungstenite parses and formats the frame headers; this module decides where the bytes
//! live. Bytes arrive in a buffer the shard lends for one read; only a frame that arrives in
//! pieces is copied into the connection's own `partial` vector, which is empty (and
//! unallocated) again once the frame completes. Outbound frames are encoded once into
//! `Bytes` and shared by every subscriber of a shard.

#![forbid(unsafe_code)]

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes used by the server (PROTOCOL.md, "Guarantees").
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// sokdo's own (private range 4000–4999, docs/PROTOCOL.md): the token's `exp` passed
    /// without a `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// One complete message or control frame from the client, payload unmasked.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A whole text message, checked to be UTF-8.
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    Close(Option<u16>),
}

/// Why a connection must be closed while decoding; carries the close code to send.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message larger than frame_bytes_max")]
    TooBig,
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
}

impl DecodeError {
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::TooBig => close::TOO_BIG,
            DecodeError::Protocol(_) => close::PROTOCOL_ERROR,
            DecodeError::InvalidPayload(_) => close::INVALID_PAYLOAD,
        }
    }
}

/// Incremental decoder. Holds bytes only while a frame or a fragmented message is
/// incomplete.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Vec<u8>,
    fragments: Vec<u8>,
    /// Bytes at the start of a fragmented text message's `fragments` known to be UTF-8: each
    /// fragment is checked as it arrives, so a message that cannot become UTF-8 fails at
    /// its first bad fragment (RFC 6455 §8.1, Autobahn 6.x "fail fast"), not at its end.
    fragments_utf8: usize,
    fragmented: Option<Data>,
}

impl Decoder {
    /// Decodes every complete frame in `input`, calling `on_frame` for each message. A
    /// `false` from `on_frame` stops decoding (the connection is closing). Leftover bytes
    /// of an incomplete frame are kept for the next call.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        message_bytes_max: usize,
        on_frame: &mut dyn FnMut(Inbound<'_>) -> bool,
    ) -> Result<(), DecodeError> {
        if self.partial.is_empty() {
            let used = self.decode_all(input, message_bytes_max, on_frame)?;
            if used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.partial);
            pending.extend_from_slice(input);
            let used = self.decode_all(&mut pending, message_bytes_max, on_frame)?;
            pending.drain(..used);
            if !pending.is_empty() {
                self.partial = pending;
            }
        }
        Ok(())
    }

    fn decode_all(
        &mut self,
        buf: &mut [u8],
        message_bytes_max: usize,
        on_frame: &mut dyn FnMut(Inbound<'_>) -> bool,
    ) -> Result<usize, DecodeError> {
        let mut at = 0;
        while at < buf.len() {
            let mut cursor = Cursor::new(&buf[at..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => return Err(DecodeError::Protocol("bad frame header")),
            };
            if len > message_bytes_max as u64 {
                return Err(DecodeError::TooBig);
            }
            let header_len = cursor.position() as usize;
            let len = len as usize;
            if buf.len() - at - header_len < len {
                break;
            }
            let payload = &mut buf[at + header_len..at + header_len + len];
            at += header_len + len;
            let Some(mask) = header.mask else {
                return Err(DecodeError::Protocol("client frames must be masked"));
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(DecodeError::Protocol("reserved bits set"));
            }
            unmask(payload, mask);
            if !self.dispatch(&header, payload, message_bytes_max, on_frame)? {
                return Ok(buf.len());
            }
        }
        Ok(at)
    }

    fn dispatch(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        message_bytes_max: usize,
        on_frame: &mut dyn FnMut(Inbound<'_>) -> bool,
    ) -> Result<bool, DecodeError> {
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(DecodeError::Protocol("bad control frame"));
                }
                Ok(on_frame(match control {
                    Control::Ping => Inbound::Ping(payload),
                    Control::Pong => Inbound::Pong,
                    Control::Close => Inbound::Close(close_code_of(payload)?),
                    Control::Reserved(_) => return Err(DecodeError::Protocol("reserved opcode")),
                }))
            }
            OpCode::Data(Data::Continue) => {
                let Some(kind) = self.fragmented else {
                    return Err(DecodeError::Protocol("continuation without a message"));
                };
                if self.fragments.len() + payload.len() > message_bytes_max {
                    return Err(DecodeError::TooBig);
                }
                self.fragments.extend_from_slice(payload);
                if !header.is_final {
                    self.check_fragments_utf8(kind)?;
                    return Ok(true);
                }
                self.fragmented = None;
                self.fragments_utf8 = 0;
                let whole = std::mem::take(&mut self.fragments);
                Ok(on_frame(data_frame(kind, &whole)?))
            }
            OpCode::Data(kind @ (Data::Text | Data::Binary)) => {
                if self.fragmented.is_some() {
                    return Err(DecodeError::Protocol("new message inside a fragmented one"));
                }
                if header.is_final {
                    return Ok(on_frame(data_frame(kind, payload)?));
                }
                self.fragmented = Some(kind);
                self.fragments.extend_from_slice(payload);
                self.check_fragments_utf8(kind)?;
                Ok(true)
            }
            OpCode::Data(Data::Reserved(_)) => Err(DecodeError::Protocol("reserved opcode")),
        }
    }
}

impl Decoder {
    /// Checks the fragments of a text message received so far: UTF-8, except that the
    /// last code point may be cut (the next fragment may complete it).
    fn check_fragments_utf8(&mut self, kind: Data) -> Result<(), DecodeError> {
        if kind != Data::Text {
            return Ok(());
        }
        let unchecked = &self.fragments[self.fragments_utf8..];
        self.fragments_utf8 += match std::str::from_utf8(unchecked) {
            Ok(_) => unchecked.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return Err(not_utf8()),
        };
        Ok(())
    }
}

/// A whole message. A text message is checked as a whole even when its fragments were
/// (their check lets the last code point be cut; this one does not).
fn data_frame(kind: Data, payload: &[u8]) -> Result<Inbound<'_>, DecodeError> {
    Ok(match kind {
        Data::Text => Inbound::Text(std::str::from_utf8(payload).map_err(|_| not_utf8())?),
        _ => Inbound::Binary(payload),
    })
}

fn not_utf8() -> DecodeError {
    DecodeError::InvalidPayload("text is not UTF-8")
}

/// The status code of a client's close frame (RFC 6455 §5.5.1, §7.4): none, or one a peer
/// may send, followed by a UTF-8 reason.
fn close_code_of(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(DecodeError::Protocol("one-byte close payload")),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    if !may_be_sent(code) {
        return Err(DecodeError::Protocol("close code a peer must not send"));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(DecodeError::InvalidPayload("close reason is not UTF-8"));
    }
    Ok(Some(code))
}

/// Close codes a peer may put on the wire: the defined ones except those reserved for
/// local use (1004, 1005, 1006, 1015), and the ranges for libraries and applications.
fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XOR-unmasks a client payload in place, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunk of eight")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Encodes one unmasked server frame.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut out = BytesMut::with_capacity(header.len(len) + payload.len());
    let mut writer = (&mut out).writer();
    header
        .format(len, &mut writer)
        .expect("formatting into memory cannot fail");
    out.put_slice(payload);
    out.freeze()
}

pub fn text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

/// Test only: the echo of a binary message (`/autobahn`, shard/echo.rs).
#[cfg(feature = "autobahn")]
pub fn binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), payload)
}

pub fn ping() -> Bytes {
    encode(OpCode::Control(Control::Ping), b"")
}

pub fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

pub fn close_frame(code: u16, reason: &str) -> Bytes {
    debug_assert!(reason.len() <= 123, "close reason must fit a control frame");
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(CloseCode::from(code)).to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OpCode::Control(Control::Close), &payload)
}

/// The payload of a frame this module encoded (server frames are unmasked).
#[cfg(test)]
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let mut cursor = Cursor::new(frame);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some(_)) => &frame[cursor.position() as usize..],
        _ => &[],
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(client_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes a client frame (masked) the way a browser would.
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    fn decode_split(wire: &[u8], split: usize, max: usize) -> Result<Vec<Vec<u8>>, DecodeError> {
        let mut decoder = Decoder::default();
        let mut texts = Vec::new();
        let mut first = wire[..split].to_vec();
        let mut second = wire[split..].to_vec();
        let mut collect = |f: Inbound<'_>| {
            if let Inbound::Text(t) = f {
                texts.push(t.as_bytes().to_vec());
            }
            true
        };
        decoder.feed(&mut first, max, &mut collect)?;
        decoder.feed(&mut second, max, &mut collect)?;
        assert_eq!(
            decoder.partial.len(),
            0,
            "no bytes left once frames complete"
        );
        Ok(texts)
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let wire = text(b"hi").to_vec();
        let err = decode_split(&wire, wire.len(), 1024).unwrap_err();
        assert_eq!(err.close_code(), close::PROTOCOL_ERROR);
    }

    #[test]
    fn oversized_frame_fails_before_its_payload_arrives() {
        let wire = client_frame(OpCode::Data(Data::Text), true, &[b'a'; 2000], [1, 2, 3, 4]);
        let err = decode_split(&wire, 8, 1000).unwrap_err();
        assert_eq!(err, DecodeError::TooBig);
    }

    #[test]
    fn fragmented_message_is_reassembled() {
        let mask = [9, 8, 7, 6];
        let mut wire = client_frame(OpCode::Data(Data::Text), false, b"hel", mask);
        wire.extend(client_frame(
            OpCode::Control(Control::Ping),
            true,
            b"p",
            mask,
        ));
        wire.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            b"lo",
            mask,
        ));
        assert_eq!(
            decode_split(&wire, 5, 100).unwrap(),
            vec![b"hello".to_vec()]
        );
    }

    /// Goal: Autobahn 6.4.1/6.4.2 (strict): a fragmented text message fails with 1007 at the
    /// first fragment that no continuation can make UTF-8, before the message ends; a code
    /// point cut between fragments is not an error.
    #[test]
    fn fragmented_text_fails_at_its_first_bad_fragment() {
        let mask = [1, 2, 3, 4];
        let text = OpCode::Data(Data::Text);
        let cont = OpCode::Data(Data::Continue);
        let mut decoder = Decoder::default();
        let mut texts = Vec::new();
        let mut feed = |decoder: &mut Decoder, frame: Vec<u8>| {
            let mut frame = frame;
            decoder.feed(&mut frame, 1024, &mut |f| {
                if let Inbound::Text(t) = f {
                    texts.push(t.to_owned());
                }
                true
            })
        };
        // "κό" (U+03BA U+1F79) with U+1F79 (0xe1 0xbd 0xb9) cut after its first byte.
        assert_eq!(
            feed(
                &mut decoder,
                client_frame(text, false, &[0xce, 0xba, 0xe1], mask)
            ),
            Ok(())
        );
        assert_eq!(
            feed(&mut decoder, client_frame(cont, true, &[0xbd, 0xb9], mask)),
            Ok(())
        );
        // Valid, then a code point above U+10FFFF: fails at that fragment.
        assert_eq!(
            feed(&mut decoder, client_frame(text, false, b"ok", mask)),
            Ok(())
        );
        let bad = feed(
            &mut decoder,
            client_frame(cont, false, &[0xf4, 0x90, 0x80, 0x80], mask),
        );
        assert_eq!(bad.map_err(|e| e.close_code()), Err(close::INVALID_PAYLOAD));
        assert_eq!(texts, vec!["\u{3ba}\u{1f79}".to_owned()]);
    }

    /// A whole text message must be UTF-8, its last code point included.
    #[test]
    fn text_that_is_not_utf8_is_invalid_payload() {
        let mask = [5, 6, 7, 8];
        for body in [
            &[0xce, 0xba, 0xe1][..],
            &[0xff][..],
            &[0xed, 0xa0, 0x80][..],
        ] {
            let wire = client_frame(OpCode::Data(Data::Text), true, body, mask);
            let err = decode_split(&wire, wire.len(), 1024).unwrap_err();
            assert_eq!(err.close_code(), close::INVALID_PAYLOAD, "{body:?}");
        }
        let mut wire = client_frame(OpCode::Data(Data::Text), false, &[0xce], mask);
        wire.extend(client_frame(OpCode::Data(Data::Continue), true, &[], mask));
        let err = decode_split(&wire, wire.len(), 1024).unwrap_err();
        assert_eq!(
            err.close_code(),
            close::INVALID_PAYLOAD,
            "cut at the message's end"
        );
    }

    /// Goal: Autobahn's close cases 7.3.2, 7.5.1 and 7.9.x: a close frame with a one-byte
    /// payload, a code a peer must not send, or a reason that is not UTF-8 fails the
    /// connection with 1002 / 1007; valid codes and reasons pass.
    #[test]
    fn close_frames_are_checked() {
        let close = |payload: &[u8]| close_code_of(payload).map_err(|e| e.close_code());
        assert_eq!(close(&[]), Ok(None));
        assert_eq!(close(&[0x03]), Err(close::PROTOCOL_ERROR));
        for bad in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
        ] {
            assert_eq!(
                close(&bad.to_be_bytes()),
                Err(close::PROTOCOL_ERROR),
                "{bad}"
            );
        }
        for good in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1013, 3000, 3999, 4000, 4999,
        ] {
            assert_eq!(close(&good.to_be_bytes()), Ok(Some(good)), "{good}");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
        ]);
        assert_eq!(close(&bad_reason), Err(close::INVALID_PAYLOAD));
        let mut reason = 1000u16.to_be_bytes().to_vec();
        reason.extend_from_slice("잘 가".as_bytes());
        assert_eq!(close(&reason), Ok(Some(1000)));
    }

    #[test]
    fn close_frame_carries_its_code() {
        let frame = close_frame(close::TRY_AGAIN_LATER, "slow consumer");
        assert_eq!(&frame[4..], b"slow consumer");
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1013);
    }

    proptest! {
        #[test]
        fn any_split_of_any_frames_decodes_the_same(
            bodies in proptest::collection::vec(any::<String>(), 1..6),
            mask in any::<[u8; 4]>(),
            split_frac in 0.0f64..1.0,
        ) {
            let bodies: Vec<Vec<u8>> = bodies.into_iter().map(String::into_bytes).collect();
            let mut wire = Vec::new();
            for body in &bodies {
                wire.extend(client_frame(OpCode::Data(Data::Text), true, body, mask));
            }
            let split = (wire.len() as f64 * split_frac) as usize;
            let texts = decode_split(&wire, split, 1 << 16).unwrap();
            prop_assert_eq!(texts, bodies);
        }

        /// UTF-8 cut into fragments anywhere, code points included, decodes to the same text.
        #[test]
        fn text_fragmented_at_any_bytes_decodes_the_same(
            body in any::<String>(),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            mask in any::<[u8; 4]>(),
        ) {
            let bytes = body.as_bytes();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut wire = Vec::new();
            let mut from = 0;
            for (i, &to) in at.iter().chain([bytes.len()].iter()).enumerate() {
                let opcode = if i == 0 { Data::Text } else { Data::Continue };
                let last = i == at.len();
                wire.extend(client_frame(OpCode::Data(opcode), last, &bytes[from..to], mask));
                from = to;
            }
            let texts = decode_split(&wire, wire.len() / 2, 1 << 16).unwrap();
            prop_assert_eq!(texts, vec![bytes.to_vec()]);
        }

        #[test]
        fn encode_then_parse_roundtrips(body in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let frame = text(&body);
            let mut cursor = Cursor::new(&frame[..]);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            prop_assert_eq!(header.opcode, OpCode::Data(Data::Text));
            prop_assert!(header.mask.is_none());
            prop_assert_eq!(len as usize, body.len());
            prop_assert_eq!(&frame[cursor.position() as usize..], &body[..]);
        }
    }
}
