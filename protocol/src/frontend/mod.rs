//! Client → server messages: borrowing decoders for the few the proxy inspects,
//! rewriters for statement names, and builders for talking to backends.
//!
//! Decoders follow PostgreSQL's own strictness (every string NUL-terminated, no
//! trailing bytes), so anything they accept the server would accept too.

mod build;
mod rewrite;

pub use build::*;
pub use rewrite::*;

use crate::decode::{expect_tag, DecodeError, Reader};
use crate::frame::Frame;

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const CLOSE: u8 = b'C';
pub const EXECUTE: u8 = b'E';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const TERMINATE: u8 = b'X';
pub const PASSWORD: u8 = b'p';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const FUNCTION_CALL: u8 = b'F';

/// The SQL text of a simple Query ('Q').
///
/// Text is UTF-8 only when client_encoding is; for other encodings use [`query_bytes`].
pub fn query(frame: &Frame) -> Result<&str, DecodeError> {
    std::str::from_utf8(query_bytes(frame)?)
        .map_err(|_| DecodeError::InvalidUtf8 { field: "query" })
}

/// The SQL text of a simple Query ('Q') as sent, whatever the client encoding.
pub fn query_bytes(frame: &Frame) -> Result<&[u8], DecodeError> {
    expect_tag(frame, QUERY)?;
    let mut r = Reader::new(frame.body());
    let q = r.cstr_bytes("query")?;
    r.end()?;
    Ok(q)
}

/// The SQL text of a Query that [`query_bytes`] (or [`query`]) already accepted, without
/// scanning it again for its terminator: the body less its last byte.
pub fn query_bytes_accepted(frame: &Frame) -> &[u8] {
    let body = frame.body();
    body.get(..body.len().saturating_sub(1)).unwrap_or_default()
}

/// A decoded Parse ('P') message. Parameter types stay a raw slice: the proxy only
/// needs them to replay the Parse byte-for-byte on another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Empty for the unnamed statement.
    pub name: &'a str,
    pub sql: &'a str,
    pub param_count: u16,
    /// `param_count` big-endian OIDs, 4 bytes each.
    pub param_types: &'a [u8],
}

impl Parse<'_> {
    pub fn param_type(&self, i: usize) -> Option<u32> {
        let b = self
            .param_types
            .get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn param_types(&self) -> impl Iterator<Item = u32> + '_ {
        self.param_types
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub fn parse(frame: &Frame) -> Result<Parse<'_>, DecodeError> {
    expect_tag(frame, PARSE)?;
    let mut r = Reader::new(frame.body());
    let name = r.cstr("statement name")?;
    let sql = r.cstr("query")?;
    let param_count = r.u16("parameter count")?;
    let param_types = r.take(usize::from(param_count) * 4, "parameter types")?;
    r.end()?;
    Ok(Parse {
        name,
        sql,
        param_count,
        param_types,
    })
}

/// A Bind ('B') message: only the names are decoded; formats and values are forwarded
/// untouched and never parsed on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// Everything after the statement name, as received.
    pub rest: &'a [u8],
}

pub fn bind(frame: &Frame) -> Result<Bind<'_>, DecodeError> {
    expect_tag(frame, BIND)?;
    let mut r = Reader::new(frame.body());
    let portal = r.cstr("portal name")?;
    let statement = r.cstr("statement name")?;
    let rest = r.remaining();
    // Every Bind has at least the three int16 counts.
    if rest.len() < 6 {
        return Err(DecodeError::Truncated {
            field: "bind parameters",
        });
    }
    Ok(Bind {
        portal,
        statement,
        rest,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// b'S'
    Statement,
    /// b'P'
    Portal,
}

impl ObjectKind {
    pub fn as_byte(self) -> u8 {
        match self {
            ObjectKind::Statement => b'S',
            ObjectKind::Portal => b'P',
        }
    }
}

/// What a Describe ('D') or Close ('C') refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: ObjectKind,
    pub name: &'a str,
}

pub fn describe(frame: &Frame) -> Result<Target<'_>, DecodeError> {
    expect_tag(frame, DESCRIBE)?;
    target(frame)
}

pub fn close(frame: &Frame) -> Result<Target<'_>, DecodeError> {
    expect_tag(frame, CLOSE)?;
    target(frame)
}

fn target(frame: &Frame) -> Result<Target<'_>, DecodeError> {
    let mut r = Reader::new(frame.body());
    let kind = match r.u8("kind")? {
        b'S' => ObjectKind::Statement,
        b'P' => ObjectKind::Portal,
        other => {
            return Err(DecodeError::InvalidValue {
                field: "describe/close kind",
                value: i64::from(other),
            })
        }
    };
    let name = r.cstr("name")?;
    r.end()?;
    Ok(Target { kind, name })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: &'a str,
    /// Zero (or, as PostgreSQL treats it, negative) means no limit.
    pub max_rows: i32,
}

pub fn execute(frame: &Frame) -> Result<Execute<'_>, DecodeError> {
    expect_tag(frame, EXECUTE)?;
    let mut r = Reader::new(frame.body());
    let portal = r.cstr("portal name")?;
    let max_rows = r.u32("max rows")? as i32;
    r.end()?;
    Ok(Execute { portal, max_rows })
}

/// PasswordMessage ('p') as a cleartext or MD5 response: the password string.
pub fn password_message(frame: &Frame) -> Result<&[u8], DecodeError> {
    expect_tag(frame, PASSWORD)?;
    let mut r = Reader::new(frame.body());
    let p = r.cstr_bytes("password")?;
    r.end()?;
    Ok(p)
}

/// SASLInitialResponse ('p'): the chosen mechanism and its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    /// `None` when the client sent length -1.
    pub data: Option<&'a [u8]>,
}

pub fn sasl_initial_response(frame: &Frame) -> Result<SaslInitialResponse<'_>, DecodeError> {
    expect_tag(frame, PASSWORD)?;
    let mut r = Reader::new(frame.body());
    let mechanism = r.cstr("mechanism")?;
    let len = r.u32("data length")? as i32;
    let data = match len {
        -1 => None,
        n if n < 0 => {
            return Err(DecodeError::InvalidValue {
                field: "SASL data length",
                value: i64::from(n),
            })
        }
        n => Some(r.take(n as usize, "SASL data")?),
    };
    r.end()?;
    Ok(SaslInitialResponse { mechanism, data })
}

/// SASLResponse ('p'): the whole body is mechanism data.
pub fn sasl_response(frame: &Frame) -> Result<&[u8], DecodeError> {
    expect_tag(frame, PASSWORD)?;
    Ok(frame.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(tag: u8, body: &[u8]) -> Frame {
        Frame::from_parts(tag, body).unwrap()
    }

    #[test]
    fn query_cases() {
        let cases: Vec<(Frame, Result<&str, DecodeError>)> = vec![
            (f(b'Q', b"select 1\0"), Ok("select 1")),
            (f(b'Q', b"\0"), Ok("")),
            (
                f(b'Q', b""),
                Err(DecodeError::MissingNul { field: "query" }),
            ),
            (
                f(b'Q', b"select 1"),
                Err(DecodeError::MissingNul { field: "query" }),
            ),
            (f(b'Q', b"a\0b"), Err(DecodeError::TrailingBytes(1))),
            (
                f(b'Q', b"\xff\0"),
                Err(DecodeError::InvalidUtf8 { field: "query" }),
            ),
            (
                f(b'P', b"a\0"),
                Err(DecodeError::WrongTag {
                    expected: 'Q',
                    got: 'P',
                }),
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(query(&frame), want, "{frame:?}");
            if let Ok(sql) = want {
                assert_eq!(query_bytes_accepted(&frame), sql.as_bytes(), "{frame:?}");
            }
        }
        assert_eq!(query_bytes(&f(b'Q', b"\xff\0")), Ok(&b"\xff"[..]));
    }

    #[test]
    fn parse_cases() {
        let fr = f(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17");
        let p = parse(&fr).unwrap();
        assert_eq!((p.name, p.sql, p.param_count), ("s1", "select $1", 1));
        assert_eq!(p.param_type(0), Some(23));
        assert_eq!(p.param_type(1), None);
        assert_eq!(p.param_types().collect::<Vec<_>>(), vec![23]);
        let bad: Vec<(&[u8], DecodeError)> = vec![
            (
                b"",
                DecodeError::MissingNul {
                    field: "statement name",
                },
            ),
            (b"s\0", DecodeError::MissingNul { field: "query" }),
            (
                b"s\0q\0",
                DecodeError::Truncated {
                    field: "parameter count",
                },
            ),
            (
                b"s\0q\0\0\x02\0\0\0\x17",
                DecodeError::Truncated {
                    field: "parameter types",
                },
            ),
            (b"s\0q\0\0\0x", DecodeError::TrailingBytes(1)),
        ];
        for (body, err) in bad {
            assert_eq!(parse(&f(b'P', body)), Err(err), "{body:?}");
        }
    }

    #[test]
    fn bind_describe_close_execute() {
        let fr = f(b'B', b"p\0s\0\0\0\0\0\0\0");
        let b = bind(&fr).unwrap();
        assert_eq!((b.portal, b.statement, b.rest), ("p", "s", &[0u8; 6][..]));
        assert_eq!(
            bind(&f(b'B', b"p\0s\0\0")),
            Err(DecodeError::Truncated {
                field: "bind parameters"
            })
        );
        assert_eq!(
            describe(&f(b'D', b"Sname\0")),
            Ok(Target {
                kind: ObjectKind::Statement,
                name: "name"
            })
        );
        assert_eq!(
            close(&f(b'C', b"P\0")),
            Ok(Target {
                kind: ObjectKind::Portal,
                name: ""
            })
        );
        assert_eq!(
            close(&f(b'C', b"X\0")),
            Err(DecodeError::InvalidValue {
                field: "describe/close kind",
                value: 88
            })
        );
        assert_eq!(
            describe(&f(b'D', b"")),
            Err(DecodeError::Truncated { field: "kind" })
        );
        assert_eq!(
            describe(&f(b'C', b"S\0")),
            Err(DecodeError::WrongTag {
                expected: 'D',
                got: 'C'
            })
        );
        assert_eq!(
            execute(&f(b'E', b"\0\0\0\0\x05")),
            Ok(Execute {
                portal: "",
                max_rows: 5
            })
        );
        assert_eq!(
            execute(&f(b'E', b"\0\0\0")),
            Err(DecodeError::Truncated { field: "max rows" })
        );
    }

    #[test]
    fn auth_messages() {
        assert_eq!(password_message(&f(b'p', b"secret\0")), Ok(&b"secret"[..]));
        let fr = f(b'p', b"SCRAM-SHA-256\0\0\0\0\x03abc");
        let s = sasl_initial_response(&fr).unwrap();
        assert_eq!((s.mechanism, s.data), ("SCRAM-SHA-256", Some(&b"abc"[..])));
        let fr = f(b'p', b"M\0\xff\xff\xff\xff");
        let s = sasl_initial_response(&fr).unwrap();
        assert_eq!(s.data, None);
        assert_eq!(
            sasl_initial_response(&f(b'p', b"M\0\0\0\0\x09abc")),
            Err(DecodeError::Truncated { field: "SASL data" })
        );
        assert_eq!(
            sasl_initial_response(&f(b'p', b"M\0\xff\xff\xff\xfe")),
            Err(DecodeError::InvalidValue {
                field: "SASL data length",
                value: -2
            })
        );
        assert_eq!(sasl_response(&f(b'p', b"c=biws")), Ok(&b"c=biws"[..]));
    }
}
