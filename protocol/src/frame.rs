//! Cutting whole tagged messages out of a byte stream.
//!
//! The proxy owns framing (rather than using a general-purpose protocol crate) so that
//! malformed lengths become typed errors instead of panics, and so that forwarded
//! messages are the exact bytes received: a [`Frame`] is a zero-copy `Bytes` view.

use bytes::{Buf, Bytes, BytesMut};

/// Tag byte plus the 4-byte length field.
pub const HEADER_LEN: usize = 5;

/// Most buffer growth a single header may trigger while waiting for its body.
const RESERVE_STEP: usize = 64 * 1024;

/// One whole tagged message: tag byte + 4-byte length + body, as received.
///
/// Invariant (upheld by every constructor): at least [`HEADER_LEN`] bytes, and the length
/// field equals `len() - 1`. Decoders rely on it, so it is never built from raw bytes
/// without going through [`parse_frame`] or [`Frame::from_parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Builds a frame from a tag and body, e.g. for tests or messages the proxy makes
    /// itself. Fails only if the body cannot be described by a 32-bit length.
    pub fn from_parts(tag: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let len = body
            .len()
            .checked_add(4)
            .and_then(|l| u32::try_from(l).ok())
            .filter(|l| *l <= i32::MAX as u32)
            .ok_or(FrameError::TooLarge {
                tag,
                len: u32::MAX,
                max: i32::MAX as usize,
            })?;
        let mut buf = BytesMut::with_capacity(HEADER_LEN + body.len());
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(body);
        Ok(Frame {
            bytes: buf.freeze(),
        })
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.bytes.first().copied().unwrap_or(0)
    }

    /// Everything after the length field.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or(&[])
    }

    /// The exact bytes received, for forwarding unchanged.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The exact bytes received, without a refcount bump.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Total length on the wire, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true for a valid frame (the header is always there); present for clippy's
    /// `len_without_is_empty` and symmetry with `Bytes`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Why the front of a stream is not a valid message. Both are fatal for the connection:
/// after a bad length there is no way to find the next message boundary.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field counts itself, so anything below 4 is impossible.
    #[error("message {tag:#04x} has invalid length {len} (below 4)")]
    TooShort { tag: u8, len: u32 },
    /// Rejected before buffering the body so a peer cannot make us allocate `len` bytes.
    #[error("message {tag:#04x} has length {len}, above the limit of {max}")]
    TooLarge { tag: u8, len: u32, max: usize },
}

/// Cuts one message from the front of `buf` if a whole one is there.
///
/// `Ok(None)` means more bytes are needed; `buf` is then untouched (but may have had
/// capacity reserved for the rest of the message). `max_len` bounds the length field
/// (which counts itself but not the tag byte). The length is validated as soon as the
/// header is complete, so an oversized message is rejected at once rather than after
/// buffering it.
pub fn parse_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let total = checked_total(header, max_len)?;
    if buf.len() < total {
        // Reserve only a bounded step: a 5-byte header must not make us allocate the
        // whole claimed length before the peer has actually sent it.
        buf.reserve((total - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    let bytes = buf.split_to(total).freeze();
    Ok(Some(Frame { bytes }))
}

/// The whole message at the front of `buf`, found without cutting it out: a caller that
/// only forwards can copy a run of messages at once instead of making a [`Frame`] of
/// each. `Ok(None)` when the message is not all there (then [`parse_frame`] reserves
/// room for it). Validates the length exactly as [`parse_frame`] does.
pub fn peek_frame(buf: &[u8], max_len: usize) -> Result<Option<Peeked>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = checked_total(header, max_len)?;
    let mut h = [0; HEADER_LEN];
    h.copy_from_slice(header);
    Ok((buf.len() >= len).then_some(Peeked { header: h, len }))
}

/// A whole, valid message seen at the front of a buffer by [`peek_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked {
    header: [u8; HEADER_LEN],
    len: usize,
}

impl Peeked {
    pub fn tag(&self) -> u8 {
        self.header[0]
    }

    /// Length on the wire, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (the header is always there); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cuts the message out of `buf`, whose front it must still be (`None` otherwise):
    /// the length was validated when it was peeked.
    pub fn cut(self, buf: &mut BytesMut) -> Option<Frame> {
        if buf.len() < self.len || buf.get(..HEADER_LEN) != Some(&self.header[..]) {
            return None;
        }
        Some(Frame {
            bytes: buf.split_to(self.len).freeze(),
        })
    }
}

/// The wire length of the message whose 5-byte header is `header`, if valid.
fn checked_total(header: &[u8], max_len: usize) -> Result<usize, FrameError> {
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::TooShort { tag, len });
    }
    // The wire format is a signed int32, so values above i32::MAX are invalid whatever
    // max_len says.
    let max = max_len.min(i32::MAX as usize);
    let len_usize = len as usize;
    if len_usize > max {
        return Err(FrameError::TooLarge { tag, len, max });
    }
    Ok(len_usize + 1)
}

/// Skips `n` already-inspected bytes; shared by the startup parser.
pub(crate) fn advance(buf: &mut BytesMut, n: usize) {
    buf.advance(n.min(buf.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize) -> (Vec<Frame>, Option<FrameError>, usize) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match parse_frame(&mut buf, max) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return (out, None, buf.len()),
                Err(e) => return (out, Some(e), buf.len()),
            }
        }
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            input: &'static [u8],
            max: usize,
            frames: usize,
            err: Option<FrameError>,
            left: usize,
        }
        let cases = [
            Case {
                name: "empty",
                input: b"",
                max: 100,
                frames: 0,
                err: None,
                left: 0,
            },
            Case {
                name: "partial header",
                input: b"Q\0\0",
                max: 100,
                frames: 0,
                err: None,
                left: 3,
            },
            Case {
                name: "sync",
                input: b"S\0\0\0\x04",
                max: 100,
                frames: 1,
                err: None,
                left: 0,
            },
            Case {
                name: "two + partial",
                input: b"S\0\0\0\x04H\0\0\0\x04Q\0\0\0\x06a",
                max: 100,
                frames: 2,
                err: None,
                left: 6,
            },
            Case {
                name: "len 0 (pgwire panics)",
                input: b"P\0\0\0\0",
                max: 100,
                frames: 0,
                err: Some(FrameError::TooShort { tag: b'P', len: 0 }),
                left: 5,
            },
            Case {
                name: "len 3",
                input: b"Q\0\0\0\x03",
                max: 100,
                frames: 0,
                err: Some(FrameError::TooShort { tag: b'Q', len: 3 }),
                left: 5,
            },
            Case {
                name: "too large before body",
                input: b"Q\0\0\x10\0",
                max: 100,
                frames: 0,
                err: Some(FrameError::TooLarge {
                    tag: b'Q',
                    len: 4096,
                    max: 100,
                }),
                left: 5,
            },
            Case {
                name: "above i32",
                input: b"Q\xff\xff\xff\xff",
                max: usize::MAX,
                frames: 0,
                err: Some(FrameError::TooLarge {
                    tag: b'Q',
                    len: u32::MAX,
                    max: i32::MAX as usize,
                }),
                left: 5,
            },
            Case {
                name: "exactly max",
                input: b"Q\0\0\0\x06a\0",
                max: 6,
                frames: 1,
                err: None,
                left: 0,
            },
        ];
        for c in cases {
            let (f, e, left) = frames(c.input, c.max);
            assert_eq!(f.len(), c.frames, "{}", c.name);
            assert_eq!(e, c.err, "{}", c.name);
            assert_eq!(left, c.left, "{}", c.name);
        }
    }

    #[test]
    fn peeked_cuts_only_its_own_message() {
        let whole = b"Q\0\0\0\x06a\0S\0\0\0\x04";
        let p = peek_frame(whole, 100).unwrap().unwrap();
        assert_eq!((p.tag(), p.len()), (b'Q', 7));
        let cases: [(&[u8], bool); 4] = [
            (whole, true),
            (&whole[..6], false),       // shorter than the message
            (b"Q\0\0\0\x05a\0", false), // another length field
            (&whole[7..], false),       // another message
        ];
        for (bytes, cuts) in cases {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(p.cut(&mut buf).is_some(), cuts, "{bytes:?}");
            assert_eq!(buf.len(), bytes.len() - if cuts { 7 } else { 0 });
        }
        assert_eq!(peek_frame(&whole[..6], 100), Ok(None));
        assert!(peek_frame(b"Q\0\0\0\x02", 100).is_err());
    }

    #[test]
    fn frame_accessors() {
        let (f, _, _) = frames(b"Q\0\0\0\x06a\0", 100);
        let f = &f[0];
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"a\0");
        assert_eq!(f.len(), 7);
        assert_eq!(f, &Frame::from_parts(b'Q', b"a\0").unwrap());
        assert_eq!(f.clone().into_bytes().as_ref(), b"Q\0\0\0\x06a\0");
    }
}
