//! Server → client messages: decoders for the few the proxy inspects, and builders for
//! the ones the proxy sends itself.

mod build;

pub use build::*;

use crate::decode::{expect_tag, DecodeError, Reader};
use crate::frame::Frame;
use crate::startup::MAX_CANCEL_KEY_LEN;

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const PARAMETER_STATUS: u8 = b'S';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const PARSE_COMPLETE: u8 = b'1';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const DATA_ROW: u8 = b'D';

/// Transaction status from ReadyForQuery: whether a backend lease may end here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// b'I': not in a transaction; the backend can go back to the pool.
    Idle,
    /// b'T'
    InTransaction,
    /// b'E': in a failed transaction block (until ROLLBACK).
    Failed,
}

impl TxStatus {
    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

pub fn ready_for_query_status(frame: &Frame) -> Result<TxStatus, DecodeError> {
    expect_tag(frame, READY_FOR_QUERY)?;
    let mut r = Reader::new(frame.body());
    let s = match r.u8("transaction status")? {
        b'I' => TxStatus::Idle,
        b'T' => TxStatus::InTransaction,
        b'E' => TxStatus::Failed,
        other => {
            return Err(DecodeError::InvalidValue {
                field: "transaction status",
                value: i64::from(other),
            })
        }
    };
    r.end()?;
    Ok(s)
}

/// The fields of an ErrorResponse/NoticeResponse the proxy acts on. Text fields are in
/// the session's client_encoding, so they stay bytes (see [`ErrorFields::message_lossy`]);
/// severity and SQLSTATE are ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorFields<'a> {
    /// 'S': localized severity.
    pub severity: Option<&'a str>,
    /// 'V': never-localized severity (PostgreSQL ≥ 9.6); prefer it for decisions.
    pub severity_raw: Option<&'a str>,
    /// 'C': SQLSTATE, e.g. "25006".
    pub code: Option<&'a str>,
    pub message: Option<&'a [u8]>,
    pub detail: Option<&'a [u8]>,
    pub hint: Option<&'a [u8]>,
}

impl ErrorFields<'_> {
    pub fn message_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.message.unwrap_or(b""))
    }

    /// FATAL/PANIC mean the server closes the connection after this message.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity_raw.or(self.severity), Some("FATAL" | "PANIC"))
    }
}

pub fn error_fields(frame: &Frame) -> Result<ErrorFields<'_>, DecodeError> {
    if frame.tag() != NOTICE_RESPONSE {
        expect_tag(frame, ERROR_RESPONSE)?;
    }
    let mut r = Reader::new(frame.body());
    let mut out = ErrorFields::default();
    loop {
        let kind = r.u8("field type")?;
        if kind == 0 {
            break;
        }
        let value = r.cstr_bytes("field value")?;
        let ascii =
            |field| std::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8 { field });
        match kind {
            b'S' => out.severity = Some(ascii("severity")?),
            b'V' => out.severity_raw = Some(ascii("severity")?),
            b'C' => out.code = Some(ascii("code")?),
            b'M' => out.message = Some(value),
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            _ => {}
        }
    }
    r.end()?;
    Ok(out)
}

/// ParameterStatus ('S'): name and value (both are sent in UTF-8-compatible ASCII by
/// every server setting the proxy tracks).
pub fn parameter_status(frame: &Frame) -> Result<(&str, &str), DecodeError> {
    expect_tag(frame, PARAMETER_STATUS)?;
    let mut r = Reader::new(frame.body());
    let name = r.cstr("parameter name")?;
    let value = r.cstr("parameter value")?;
    r.end()?;
    Ok((name, value))
}

/// DataRow ('D') as text columns (NULL as `None`). Only for pgrelay's own queries,
/// whose results are text: client traffic is forwarded without decoding rows.
pub fn data_row_text(frame: &Frame) -> Result<Vec<Option<&str>>, DecodeError> {
    expect_tag(frame, DATA_ROW)?;
    let mut r = Reader::new(frame.body());
    let n = r.u16("column count")?;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = r.u32("column length")? as i32;
        if len < 0 {
            out.push(None);
            continue;
        }
        let bytes = r.take(len as usize, "column value")?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
            field: "column value",
        })?;
        out.push(Some(text));
    }
    r.end()?;
    Ok(out)
}

/// BackendKeyData ('K'): process id and cancel key (4 bytes in 3.0, up to 256 in 3.2).
pub fn backend_key_data(frame: &Frame) -> Result<(u32, Vec<u8>), DecodeError> {
    expect_tag(frame, BACKEND_KEY_DATA)?;
    let mut r = Reader::new(frame.body());
    let pid = r.u32("process id")?;
    let key = r.remaining();
    if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LEN {
        return Err(DecodeError::InvalidValue {
            field: "cancel key length",
            value: key.len() as i64,
        });
    }
    Ok((pid, key.to_vec()))
}

/// An Authentication ('R') request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSS, SSPI...: not supported by the proxy, but decoded so it can say so.
    Other(u32),
}

pub fn authentication(frame: &Frame) -> Result<AuthRequest<'_>, DecodeError> {
    expect_tag(frame, AUTHENTICATION)?;
    let mut r = Reader::new(frame.body());
    let req = match r.u32("authentication code")? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let s = r.take(4, "md5 salt")?;
            AuthRequest::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr("SASL mechanism")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => return Ok(AuthRequest::SaslContinue(r.remaining())),
        12 => return Ok(AuthRequest::SaslFinal(r.remaining())),
        other => return Ok(AuthRequest::Other(other)),
    };
    r.end()?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(tag: u8, body: &[u8]) -> Frame {
        Frame::from_parts(tag, body).unwrap()
    }

    #[test]
    fn ready_for_query_cases() {
        let cases: Vec<(&[u8], Result<TxStatus, DecodeError>)> = vec![
            (b"I", Ok(TxStatus::Idle)),
            (b"T", Ok(TxStatus::InTransaction)),
            (b"E", Ok(TxStatus::Failed)),
            (
                b"X",
                Err(DecodeError::InvalidValue {
                    field: "transaction status",
                    value: 88,
                }),
            ),
            (
                b"",
                Err(DecodeError::Truncated {
                    field: "transaction status",
                }),
            ),
            (b"II", Err(DecodeError::TrailingBytes(1))),
        ];
        for (body, want) in cases {
            assert_eq!(ready_for_query_status(&f(b'Z', body)), want, "{body:?}");
        }
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            let fr = crate::parse_frame(&mut ready_for_query(s).as_ref().into(), 100)
                .unwrap()
                .unwrap();
            assert_eq!(ready_for_query_status(&fr), Ok(s));
        }
    }

    #[test]
    fn error_fields_cases() {
        let fr = f(
            b'E',
            b"SERREUR\0VERROR\0C25006\0Mcannot execute\0Hh\0Fpostgres.c\0\0",
        );
        let e = error_fields(&fr).unwrap();
        assert_eq!(e.severity, Some("ERREUR"));
        assert_eq!(e.severity_raw, Some("ERROR"));
        assert_eq!(e.code, Some("25006"));
        assert_eq!(e.message_lossy(), "cannot execute");
        assert_eq!(e.hint, Some(&b"h"[..]));
        assert!(!e.is_fatal());
        assert!(error_fields(&f(b'N', b"SFATAL\0\0")).unwrap().is_fatal());
        assert_eq!(
            error_fields(&f(b'E', b"SERROR\0")),
            Err(DecodeError::Truncated {
                field: "field type"
            })
        );
        assert_eq!(
            error_fields(&f(b'E', b"SERROR")),
            Err(DecodeError::MissingNul {
                field: "field value"
            })
        );
        assert_eq!(
            error_fields(&f(b'E', b"\0x")),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            error_fields(&f(b'E', b"C\xff\0\0")),
            Err(DecodeError::InvalidUtf8 { field: "code" })
        );
        assert_eq!(
            error_fields(&f(b'E', b"M\xff\0\0")).unwrap().message,
            Some(&b"\xff"[..])
        );
        assert!(matches!(
            error_fields(&f(b'Z', b"\0")),
            Err(DecodeError::WrongTag { .. })
        ));
    }

    #[test]
    fn status_key_data() {
        assert_eq!(
            parameter_status(&f(b'S', b"TimeZone\0UTC\0")),
            Ok(("TimeZone", "UTC"))
        );
        assert_eq!(
            parameter_status(&f(b'S', b"a\0")),
            Err(DecodeError::MissingNul {
                field: "parameter value"
            })
        );
        assert_eq!(
            backend_key_data(&f(b'K', b"\0\0\0\x07abcd")),
            Ok((7, b"abcd".to_vec()))
        );
        assert_eq!(
            backend_key_data(&f(b'K', &[1u8; 36])),
            Ok((0x01010101, vec![1; 32]))
        );
        assert!(backend_key_data(&f(b'K', b"\0\0\0\x07abc")).is_err());
        assert!(backend_key_data(&f(b'K', &[0u8; 261])).is_err());
    }

    #[test]
    fn authentication_cases() {
        let cases: Vec<(&[u8], Result<AuthRequest<'_>, DecodeError>)> = vec![
            (b"\0\0\0\0", Ok(AuthRequest::Ok)),
            (b"\0\0\0\x03", Ok(AuthRequest::CleartextPassword)),
            (
                b"\0\0\0\x05abcd",
                Ok(AuthRequest::Md5Password { salt: *b"abcd" }),
            ),
            (
                b"\0\0\0\x05abc",
                Err(DecodeError::Truncated { field: "md5 salt" }),
            ),
            (
                b"\0\0\0\x0aSCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0",
                Ok(AuthRequest::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"],
                }),
            ),
            (
                b"\0\0\0\x0aSCRAM-SHA-256\0",
                Err(DecodeError::MissingNul {
                    field: "SASL mechanism",
                }),
            ),
            (b"\0\0\0\x0br=abc", Ok(AuthRequest::SaslContinue(b"r=abc"))),
            (b"\0\0\0\x0cv=xyz", Ok(AuthRequest::SaslFinal(b"v=xyz"))),
            (b"\0\0\0\x07", Ok(AuthRequest::Other(7))),
            (b"\0\0\0\0x", Err(DecodeError::TrailingBytes(1))),
            (
                b"\0\0",
                Err(DecodeError::Truncated {
                    field: "authentication code",
                }),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(authentication(&f(b'R', body)), want, "{body:?}");
        }
    }
}

#[cfg(test)]
mod data_row_tests {
    use super::*;
    use bytes::BytesMut;

    fn frame(body: &[u8]) -> Frame {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"D");
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(body);
        crate::parse_frame(&mut b, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn data_rows_decode_or_refuse() {
        let ok = frame(b"\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff");
        assert_eq!(data_row_text(&ok).unwrap(), vec![Some("hi"), None]);
        for bad in [
            &b"\x00\x01\x00\x00\x00\x09hi"[..],
            b"\x00\x01",
            b"\x00\x00x",
            b"\x00\x01\x00\x00\x00\x01\xff",
        ] {
            assert!(data_row_text(&frame(bad)).is_err(), "{bad:?}");
        }
    }
}
