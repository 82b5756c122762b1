//! Messages the proxy itself sends to clients: errors, the authentication exchange and
//! the session preamble. Fixed messages are `Bytes::from_static` (no allocation).

use super::TxStatus;
use crate::decode::{put_cstr, write_message};
use crate::startup::PROTOCOL_3_0;
use bytes::{Bytes, BytesMut};

/// Severity of an error or notice the proxy generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    /// The proxy closes the connection after sending it.
    Fatal,
    Warning,
    Notice,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// Contents of an ErrorResponse/NoticeResponse built by the proxy.
///
/// ```
/// use protocol::{error_response, ErrorMessage, sqlstate};
/// let bytes = error_response(
///     &ErrorMessage::fatal(sqlstate::INVALID_PASSWORD, "password authentication failed for user \"app\""),
/// );
/// assert_eq!(bytes[0], b'E');
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMessage<'a> {
    pub severity: Severity,
    /// SQLSTATE, see [`crate::sqlstate`].
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> ErrorMessage<'a> {
    pub fn new(severity: Severity, code: &'a str, message: &'a str) -> Self {
        ErrorMessage {
            severity,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: &'a str, message: &'a str) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub fn fatal(code: &'a str, message: &'a str) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }
}

/// ErrorResponse ('E'). Texts may carry user input (database names...), so NUL bytes
/// are dropped rather than allowed to cut a field short and desync the client.
pub fn error_response(e: &ErrorMessage<'_>) -> Bytes {
    fields_message(b'E', e)
}

/// NoticeResponse ('N'); same layout as [`error_response`].
pub fn notice_response(e: &ErrorMessage<'_>) -> Bytes {
    fields_message(b'N', e)
}

fn fields_message(tag: u8, e: &ErrorMessage<'_>) -> Bytes {
    let cap = 32
        + e.code.len()
        + e.message.len()
        + e.detail.map_or(0, str::len)
        + e.hint.map_or(0, str::len);
    let mut buf = BytesMut::with_capacity(cap);
    write_message(&mut buf, Some(tag), |b| {
        let mut field = |kind: u8, text: &str| {
            b.extend_from_slice(&[kind]);
            for chunk in text.as_bytes().split(|c| *c == 0) {
                b.extend_from_slice(chunk);
            }
            b.extend_from_slice(&[0]);
        };
        field(b'S', e.severity.as_str());
        field(b'V', e.severity.as_str());
        field(b'C', e.code);
        field(b'M', e.message);
        if let Some(d) = e.detail {
            field(b'D', d);
        }
        if let Some(h) = e.hint {
            field(b'H', h);
        }
        b.extend_from_slice(&[0]);
    });
    buf.freeze()
}

pub fn auth_ok() -> Bytes {
    Bytes::from_static(b"R\0\0\0\x08\0\0\0\0")
}

pub fn auth_cleartext() -> Bytes {
    Bytes::from_static(b"R\0\0\0\x08\0\0\0\x03")
}

pub fn auth_md5(salt: [u8; 4]) -> Bytes {
    let mut v = b"R\0\0\0\x0c\0\0\0\x05".to_vec();
    v.extend_from_slice(&salt);
    Bytes::from(v)
}

/// AuthenticationSASL listing `mechanisms` (the proxy offers only SCRAM-SHA-256).
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    let mut buf = BytesMut::with_capacity(32);
    write_message(&mut buf, Some(b'R'), |b| {
        b.extend_from_slice(&10u32.to_be_bytes());
        for m in mechanisms
            .iter()
            .filter(|m| !m.is_empty() && !m.contains('\0'))
        {
            put_cstr(b, m.as_bytes());
        }
        b.extend_from_slice(&[0]);
    });
    buf.freeze()
}

pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    auth_with_data(11, data)
}

pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    auth_with_data(12, data)
}

fn auth_with_data(code: u32, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(9 + data.len());
    write_message(&mut buf, Some(b'R'), |b| {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(data);
    });
    buf.freeze()
}

/// ParameterStatus ('S') (named `build_` because `parameter_status` is the decoder). NUL bytes are dropped, as in [`error_response`].
pub fn build_parameter_status(name: &str, value: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(7 + name.len() + value.len());
    write_message(&mut buf, Some(b'S'), |b| {
        for s in [name, value] {
            for chunk in s.as_bytes().split(|c| *c == 0) {
                b.extend_from_slice(chunk);
            }
            b.extend_from_slice(&[0]);
        }
    });
    buf.freeze()
}

/// BackendKeyData ('K') (`build_` as above): the key is 4 bytes for 3.0 clients, up to 256 for 3.2.
pub fn build_backend_key_data(pid: u32, key: &[u8]) -> Bytes {
    let key = key.get(..crate::startup::MAX_CANCEL_KEY_LEN).unwrap_or(key);
    let mut buf = BytesMut::with_capacity(9 + key.len());
    write_message(&mut buf, Some(b'K'), |b| {
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(key);
    });
    buf.freeze()
}

pub fn ready_for_query(status: TxStatus) -> Bytes {
    Bytes::from_static(match status {
        TxStatus::Idle => b"Z\0\0\0\x05I",
        TxStatus::InTransaction => b"Z\0\0\0\x05T",
        TxStatus::Failed => b"Z\0\0\0\x05E",
    })
}

pub fn parse_complete() -> Bytes {
    Bytes::from_static(b"1\0\0\0\x04")
}

pub fn bind_complete() -> Bytes {
    Bytes::from_static(b"2\0\0\0\x04")
}

pub fn close_complete() -> Bytes {
    Bytes::from_static(b"3\0\0\0\x04")
}

/// NegotiateProtocolVersion ('v'). Like PostgreSQL, the first field carries the full
/// version code (3 << 16 | minor), which is what libpq and other clients read.
pub fn negotiate_protocol_version(newest_minor: u32, unrecognized: &[String]) -> Bytes {
    let mut buf =
        BytesMut::with_capacity(16 + unrecognized.iter().map(|s| s.len() + 1).sum::<usize>());
    write_message(&mut buf, Some(b'v'), |b| {
        b.extend_from_slice(&(PROTOCOL_3_0 | (newest_minor & 0xffff)).to_be_bytes());
        let opts = || unrecognized.iter().filter(|s| !s.contains('\0'));
        b.extend_from_slice(&u32::try_from(opts().count()).unwrap_or(0).to_be_bytes());
        for s in opts() {
            put_cstr(b, s.as_bytes());
        }
    });
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::super::{
        authentication, backend_key_data as decode_key, error_fields,
        parameter_status as decode_status, AuthRequest,
    };
    use super::*;
    use crate::Frame;

    fn frame(b: Bytes) -> Frame {
        let mut m = BytesMut::from(&b[..]);
        let f = crate::parse_frame(&mut m, usize::MAX).unwrap().unwrap();
        assert!(m.is_empty(), "length field disagrees with content");
        f
    }

    #[test]
    fn error_roundtrip() {
        let e = ErrorMessage::fatal("28P01", "bad\0 password")
            .with_detail("d")
            .with_hint("h");
        let f = frame(error_response(&e));
        let d = error_fields(&f).unwrap();
        assert_eq!(
            (d.severity, d.severity_raw, d.code),
            (Some("FATAL"), Some("FATAL"), Some("28P01"))
        );
        assert_eq!(d.message, Some(&b"bad password"[..]));
        assert_eq!((d.detail, d.hint), (Some(&b"d"[..]), Some(&b"h"[..])));
        let n = frame(notice_response(&ErrorMessage::new(
            Severity::Warning,
            "01000",
            "w",
        )));
        assert_eq!(n.tag(), b'N');
        assert_eq!(error_fields(&n).unwrap().severity, Some("WARNING"));
    }

    #[test]
    fn auth_roundtrip() {
        let cases = vec![
            (auth_ok(), AuthRequest::Ok),
            (auth_cleartext(), AuthRequest::CleartextPassword),
            (
                auth_md5(*b"salt"),
                AuthRequest::Md5Password { salt: *b"salt" },
            ),
            (
                auth_sasl(&["SCRAM-SHA-256"]),
                AuthRequest::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256"],
                },
            ),
            (
                auth_sasl_continue(b"r=1"),
                AuthRequest::SaslContinue(b"r=1"),
            ),
            (auth_sasl_final(b"v=2"), AuthRequest::SaslFinal(b"v=2")),
        ];
        for (bytes, want) in cases {
            let f = frame(bytes);
            assert_eq!(authentication(&f).unwrap(), want);
        }
    }

    #[test]
    fn misc_roundtrip() {
        assert_eq!(
            decode_status(&frame(build_parameter_status("a", "b"))),
            Ok(("a", "b"))
        );
        assert_eq!(
            decode_key(&frame(build_backend_key_data(5, b"wxyz"))),
            Ok((5, b"wxyz".to_vec()))
        );
        for (b, tag) in [
            (parse_complete(), b'1'),
            (bind_complete(), b'2'),
            (close_complete(), b'3'),
        ] {
            let f = frame(b);
            assert_eq!((f.tag(), f.body()), (tag, &b""[..]));
        }
        let v = frame(negotiate_protocol_version(
            0,
            &["_pq_.a".into(), "_pq_.b".into()],
        ));
        assert_eq!(v.body(), b"\0\x03\0\0\0\0\0\x02_pq_.a\0_pq_.b\0");
    }
}
