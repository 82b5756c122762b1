//! Renaming client prepared statements to proxy-wide names, so that statements from
//! many clients can share backends. Everything but the name is copied byte for byte.

use super::{bind, describe, parse, CLOSE, DESCRIBE};
use crate::decode::{check_name, put_cstr, write_message, DecodeError};
use crate::frame::Frame;
use bytes::{Bytes, BytesMut};

/// Parse ('P') with statement `name`; SQL and parameter types unchanged.
pub fn rewrite_parse_name(frame: &Frame, name: &str) -> Result<Bytes, DecodeError> {
    check_name(name)?;
    let p = parse(frame)?;
    // Everything after the old name, i.e. the SQL, its NUL and the parameter types.
    let tail = frame.body().get(p.name.len() + 1..).unwrap_or(&[]);
    Ok(rebuild(frame.tag(), &[], name, tail))
}

/// Bind ('B') targeting statement `statement`; portal, formats and values unchanged.
pub fn rewrite_bind_statement(frame: &Frame, statement: &str) -> Result<Bytes, DecodeError> {
    built(frame.len() + statement.len(), |buf| {
        write_bind_statement(frame, statement, buf)
    })
}

/// [`rewrite_bind_statement`], appended to `out` (nothing is appended on error): the
/// data path renames every Bind of a prepared statement, so without allocating.
pub fn write_bind_statement(
    frame: &Frame,
    statement: &str,
    out: &mut BytesMut,
) -> Result<(), DecodeError> {
    check_name(statement)?;
    let b = bind(frame)?;
    write_message(out, Some(frame.tag()), |buf| {
        put_cstr(buf, b.portal.as_bytes());
        put_cstr(buf, statement.as_bytes());
        buf.extend_from_slice(b.rest);
    });
    Ok(())
}

/// Describe ('D') or Close ('C') with `name`; the tag and kind byte unchanged. Meant for
/// statement targets, but portals are renamed the same way if asked.
pub fn rewrite_describe_or_close_name(frame: &Frame, name: &str) -> Result<Bytes, DecodeError> {
    built(frame.len() + name.len(), |buf| {
        write_describe_or_close_name(frame, name, buf)
    })
}

/// [`rewrite_describe_or_close_name`], appended to `out` (nothing on error).
pub fn write_describe_or_close_name(
    frame: &Frame,
    name: &str,
    out: &mut BytesMut,
) -> Result<(), DecodeError> {
    check_name(name)?;
    let t = match frame.tag() {
        DESCRIBE => describe(frame)?,
        CLOSE => super::close(frame)?,
        got => {
            return Err(DecodeError::WrongTag {
                expected: DESCRIBE as char,
                got: got as char,
            })
        }
    };
    write_message(out, Some(frame.tag()), |buf| {
        buf.extend_from_slice(&[t.kind.as_byte()]);
        put_cstr(buf, name.as_bytes());
    });
    Ok(())
}

/// A message written by `write` into a buffer of its own.
fn built(
    capacity: usize,
    write: impl FnOnce(&mut BytesMut) -> Result<(), DecodeError>,
) -> Result<Bytes, DecodeError> {
    let mut buf = BytesMut::with_capacity(capacity);
    write(&mut buf)?;
    Ok(buf.freeze())
}

fn rebuild(tag: u8, head: &[u8], name: &str, tail: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + head.len() + name.len() + 1 + tail.len());
    write_message(&mut buf, Some(tag), |b| {
        b.extend_from_slice(head);
        put_cstr(b, name.as_bytes());
        b.extend_from_slice(tail);
    });
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::super::{bind, close, describe, parse};
    use super::*;

    fn f(tag: u8, body: &[u8]) -> Frame {
        Frame::from_parts(tag, body).unwrap()
    }

    fn reframe(b: Bytes) -> Frame {
        let mut m = BytesMut::from(&b[..]);
        let fr = crate::parse_frame(&mut m, usize::MAX).unwrap().unwrap();
        assert!(m.is_empty());
        fr
    }

    #[test]
    fn rewrites_keep_everything_else() {
        let p = f(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17");
        let out = reframe(rewrite_parse_name(&p, "pgrelay_42").unwrap());
        assert_eq!(
            out.as_bytes().as_ref(),
            b"P\0\0\0\x1fpgrelay_42\0select $1\0\0\x01\0\0\0\x17"
        );
        let (a, b) = (parse(&p).unwrap(), parse(&out).unwrap());
        assert_eq!(
            (b.name, b.sql, b.param_types),
            ("pgrelay_42", a.sql, a.param_types)
        );

        let bd = f(b'B', b"portal\0s1\0\0\0\0\x01\0\0\0\x011\0\0");
        let out = reframe(rewrite_bind_statement(&bd, "").unwrap());
        let (a, b) = (bind(&bd).unwrap(), bind(&out).unwrap());
        assert_eq!((b.portal, b.statement, b.rest), (a.portal, "", a.rest));

        let d = reframe(rewrite_describe_or_close_name(&f(b'D', b"Ss1\0"), "x").unwrap());
        assert_eq!(describe(&d).unwrap().name, "x");
        let c = reframe(rewrite_describe_or_close_name(&f(b'C', b"Ps1\0"), "y").unwrap());
        assert_eq!(
            close(&c).unwrap(),
            super::super::Target {
                kind: super::super::ObjectKind::Portal,
                name: "y"
            }
        );
    }

    #[test]
    fn rewrite_errors() {
        assert_eq!(
            rewrite_parse_name(&f(b'P', b"s\0q\0\0\0"), "a\0b"),
            Err(DecodeError::NulInName)
        );
        assert_eq!(
            rewrite_parse_name(&f(b'P', b"s\0"), "a"),
            Err(DecodeError::MissingNul { field: "query" })
        );
        assert_eq!(
            rewrite_describe_or_close_name(&f(b'Q', b"x\0"), "a"),
            Err(DecodeError::WrongTag {
                expected: 'D',
                got: 'Q'
            })
        );
        assert_eq!(
            rewrite_bind_statement(&f(b'B', b"\0"), "a"),
            Err(DecodeError::MissingNul {
                field: "statement name"
            })
        );
    }
}
