//! A bounds-checked cursor over a message body, shared by all decoders so that no
//! decoder indexes untrusted bytes directly.

use crate::frame::Frame;

/// Why a message body does not decode. Unlike [`crate::FrameError`] these leave the
/// stream in sync (the frame was cut correctly), so the caller may answer with an
/// ErrorResponse and carry on or close, as PostgreSQL would.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("expected message {expected:?}, got {got:?}")]
    WrongTag { expected: char, got: char },
    #[error("{field}: missing NUL terminator")]
    MissingNul { field: &'static str },
    #[error("{field}: not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field}: message ends early")]
    Truncated { field: &'static str },
    #[error("{0} unexpected bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("invalid {field} value {value}")]
    InvalidValue { field: &'static str, value: i64 },
    #[error("name contains a NUL byte")]
    NulInName,
}

pub(crate) fn expect_tag(frame: &Frame, tag: u8) -> Result<(), DecodeError> {
    if frame.tag() == tag {
        Ok(())
    } else {
        Err(DecodeError::WrongTag {
            expected: tag as char,
            got: frame.tag() as char,
        })
    }
}

pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Reader { rest: body }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn cstr_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let nul = memchr::memchr(0, self.rest).ok_or(DecodeError::MissingNul { field })?;
        let (s, rest) = self.rest.split_at(nul);
        self.rest = rest.get(1..).unwrap_or(&[]);
        Ok(s)
    }

    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.cstr_bytes(field)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?.first().copied().unwrap_or(0))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.rest.len()))
        }
    }
}

/// Appends `tag`, a placeholder length, runs `body`, then patches the length. Callers
/// guarantee bodies far below 2 GiB (names, SQL already bounded by framing), so the
/// saturating conversion never actually saturates.
pub(crate) fn write_message(
    buf: &mut bytes::BytesMut,
    tag: Option<u8>,
    body: impl FnOnce(&mut bytes::BytesMut),
) {
    if let Some(t) = tag {
        buf.extend_from_slice(&[t]);
    }
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    if let Some(slot) = buf.get_mut(start..start + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

pub(crate) fn put_cstr(buf: &mut bytes::BytesMut, s: &[u8]) {
    buf.extend_from_slice(s);
    buf.extend_from_slice(&[0]);
}

pub(crate) fn check_name(name: &str) -> Result<(), DecodeError> {
    if name.as_bytes().contains(&0) {
        Err(DecodeError::NulInName)
    } else {
        Ok(())
    }
}
