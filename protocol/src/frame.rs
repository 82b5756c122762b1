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
    let total = len_usize + 1;
    if buf.len() < total {
        // Reserve only a bounded step: a 5-byte header must not make us allocate the
        // whole claimed length before the peer has actually sent it.
        buf.reserve((total - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    let bytes = buf.split_to(total).freeze();
    Ok(Some(Frame { bytes }))
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
