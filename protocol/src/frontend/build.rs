//! Frontend messages the proxy sends to backends itself (session sync, cancel,
//! cleanup of renamed statements). Static messages cost no allocation.

use crate::decode::{check_name, put_cstr, write_message, DecodeError};
use crate::startup::{CANCEL_REQUEST_CODE, MAX_CANCEL_KEY_LEN, PROTOCOL_3_0};
use bytes::{Bytes, BytesMut};

/// Simple Query. Fails if `sql` contains NUL (it would end the string early and desync
/// the stream).
pub fn build_query(sql: &str) -> Result<Bytes, DecodeError> {
    check_name(sql)?;
    let mut buf = BytesMut::with_capacity(sql.len() + 6);
    write_message(&mut buf, Some(b'Q'), |b| put_cstr(b, sql.as_bytes()));
    Ok(buf.freeze())
}

pub fn build_sync() -> Bytes {
    Bytes::from_static(b"S\0\0\0\x04")
}

pub fn build_flush() -> Bytes {
    Bytes::from_static(b"H\0\0\0\x04")
}

pub fn build_terminate() -> Bytes {
    Bytes::from_static(b"X\0\0\0\x04")
}

/// CancelRequest with a 3.0 (4-byte) or 3.2 (up to 256-byte) key. Longer keys are
/// truncated to the protocol maximum; the server would ignore them anyway.
pub fn build_cancel_request(pid: u32, key: &[u8]) -> Bytes {
    let key = key.get(..MAX_CANCEL_KEY_LEN).unwrap_or(key);
    let mut buf = BytesMut::with_capacity(12 + key.len());
    write_message(&mut buf, None, |b| {
        b.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(key);
    });
    buf.freeze()
}

/// Run statement `name` (no parameters, text results) through the unnamed portal, up
/// to and including its Sync; with `sql`, prepare it first in the same batch. For the
/// proxy's own small queries: a prepared statement skips parsing and planning.
pub fn build_run_prepared(name: &str, sql: Option<&str>) -> Result<Bytes, DecodeError> {
    check_name(name)?;
    let mut buf = BytesMut::with_capacity(64 + sql.map_or(0, str::len));
    if let Some(sql) = sql {
        check_name(sql)?;
        write_message(&mut buf, Some(b'P'), |b| {
            put_cstr(b, name.as_bytes());
            put_cstr(b, sql.as_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        });
    }
    write_message(&mut buf, Some(b'B'), |b| {
        put_cstr(b, b"");
        put_cstr(b, name.as_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no parameters, text
    });
    write_message(&mut buf, Some(b'E'), |b| {
        put_cstr(b, b"");
        b.extend_from_slice(&0u32.to_be_bytes());
    });
    buf.extend_from_slice(&build_sync());
    Ok(buf.freeze())
}

/// Close of a prepared statement (kind 'S').
pub fn build_close_statement(name: &str) -> Result<Bytes, DecodeError> {
    check_name(name)?;
    let mut buf = BytesMut::with_capacity(name.len() + 7);
    write_message(&mut buf, Some(b'C'), |b| {
        b.extend_from_slice(b"S");
        put_cstr(b, name.as_bytes());
    });
    Ok(buf.freeze())
}

/// StartupMessage for protocol 3.0 with the given parameters (must include `user`).
pub fn build_startup(params: &[(&str, &str)]) -> Result<Bytes, DecodeError> {
    for (k, v) in params {
        check_name(k)?;
        check_name(v)?;
    }
    let mut buf = BytesMut::with_capacity(64);
    write_message(&mut buf, None, |b| {
        b.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in params {
            put_cstr(b, k.as_bytes());
            put_cstr(b, v.as_bytes());
        }
        b.extend_from_slice(&[0]);
    });
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::{parse_startup, StartupRequest};

    /// Our builders must agree with postgres-protocol's, the reference encoder.
    #[test]
    fn match_postgres_protocol() {
        use postgres_protocol::message::frontend as pp;
        let mut b = BytesMut::new();
        pp::query("select 1", &mut b).unwrap();
        assert_eq!(build_query("select 1").unwrap(), b.split().freeze());
        pp::sync(&mut b);
        assert_eq!(build_sync(), b.split().freeze());
        pp::flush(&mut b);
        assert_eq!(build_flush(), b.split().freeze());
        pp::terminate(&mut b);
        assert_eq!(build_terminate(), b.split().freeze());
        pp::close(b'S', "s1", &mut b).unwrap();
        assert_eq!(build_close_statement("s1").unwrap(), b.split().freeze());
        let run = |b: &mut BytesMut| {
            type Boxed = Box<dyn std::error::Error + Sync + Send>;
            let no_param =
                |_: (), _: &mut BytesMut| -> Result<_, Boxed> { Ok(postgres_protocol::IsNull::No) };
            let none = std::iter::empty::<i16>;
            pp::bind("", "s1", none(), std::iter::empty(), no_param, none(), b)
                .map_err(|_| ())
                .unwrap();
            pp::execute("", 0, b).unwrap();
            pp::sync(b);
        };
        pp::parse("s1", "select 1", std::iter::empty(), &mut b).unwrap();
        run(&mut b);
        assert_eq!(
            build_run_prepared("s1", Some("select 1")).unwrap(),
            b.split().freeze()
        );
        run(&mut b);
        assert_eq!(build_run_prepared("s1", None).unwrap(), b.split().freeze());
        pp::cancel_request(7, 0x01020304, &mut b);
        assert_eq!(build_cancel_request(7, &[1, 2, 3, 4]), b.split().freeze());
        pp::startup_message([("user", "u"), ("database", "d")], &mut b).unwrap();
        assert_eq!(
            build_startup(&[("user", "u"), ("database", "d")]).unwrap(),
            b.split().freeze()
        );
    }

    #[test]
    fn nul_rejected_and_startup_roundtrip() {
        assert_eq!(build_query("a\0"), Err(DecodeError::NulInName));
        assert_eq!(
            build_startup(&[("user", "a\0")]),
            Err(DecodeError::NulInName)
        );
        let s = build_startup(&[("user", "u")]).unwrap();
        let Ok(Some(StartupRequest::Startup(m))) =
            parse_startup(&mut BytesMut::from(&s[..]), 10_000)
        else {
            panic!("startup did not round-trip");
        };
        assert_eq!(m.user(), "u");
        let c = build_cancel_request(1, &[9; 300]);
        assert_eq!(
            parse_startup(&mut BytesMut::from(&c[..]), 10_000),
            Ok(Some(StartupRequest::Cancel {
                pid: 1,
                key: vec![9; 256]
            }))
        );
    }
}
