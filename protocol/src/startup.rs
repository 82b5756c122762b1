//! The untagged first message a client sends (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest). It has no tag byte, so it needs its own framing.

use crate::decode::Reader;
use crate::frame::advance;
use bytes::BytesMut;

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol 3.0; 3.x is this plus the minor version.
pub const PROTOCOL_3_0: u32 = 196_608;
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: a client cannot make us buffer more than
/// this before authenticating.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Protocol 3.2 allows cancel keys up to 256 bytes; 3.0 uses exactly 4.
pub const MAX_CANCEL_KEY_LEN: usize = 256;
/// Prefix of protocol options (as opposed to GUC parameters) in a startup message.
pub const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    SslRequest,
    GssEncRequest,
    Cancel { pid: u32, key: Vec<u8> },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// GUC-style parameters (`user`, `database`, `options`, `application_name`, ...), in
    /// the order sent, `_pq_.` options excluded.
    pub params: Vec<(String, String)>,
    /// `_pq_.` protocol options the client asked for (full names). The proxy supports
    /// none yet, so it lists them in NegotiateProtocolVersion.
    pub protocol_options: Vec<String>,
}

impl StartupMessage {
    /// Last value wins on duplicates, matching how PostgreSQL applies them in order.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `user` is mandatory, so this never fails on a parsed message.
    pub fn user(&self) -> &str {
        self.get("user").unwrap_or("")
    }

    /// PostgreSQL defaults the database name to the user name.
    pub fn database(&self) -> &str {
        self.get("database").unwrap_or_else(|| self.user())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    InvalidLength(u32),
    /// Answer with SQLSTATE 0A000 (feature_not_supported), as PostgreSQL does.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("invalid cancel key length {0}")]
    InvalidCancelKey(usize),
    #[error("startup packet: {0}")]
    Malformed(&'static str),
    #[error("startup packet: parameter {0:?} is not valid UTF-8")]
    InvalidUtf8(String),
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,
}

/// Cuts and decodes the first message of a connection. `Ok(None)` = need more bytes.
/// After SSLRequest/GSSENCRequest the client sends another startup message, so call
/// this again.
pub fn parse_startup(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<StartupRequest>, StartupError> {
    let Some(h) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let max = max_len.min(MAX_STARTUP_LEN);
    if len < 8 || len as usize > max {
        return Err(StartupError::InvalidLength(len));
    }
    let len = len as usize;
    let Some(packet) = buf.get(4..len) else {
        buf.reserve(len - buf.len());
        return Ok(None);
    };
    let req = decode_packet(packet)?;
    advance(buf, len);
    Ok(Some(req))
}

fn decode_packet(packet: &[u8]) -> Result<StartupRequest, StartupError> {
    let mut r = Reader::new(packet);
    let code = r
        .u32("code")
        .map_err(|_| StartupError::Malformed("missing protocol code"))?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            r.end()
                .map_err(|_| StartupError::InvalidLength(packet.len() as u32 + 4))?;
            Ok(if code == SSL_REQUEST_CODE {
                StartupRequest::SslRequest
            } else {
                StartupRequest::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            let pid = r
                .u32("pid")
                .map_err(|_| StartupError::Malformed("cancel request without pid"))?;
            let key = r.remaining();
            if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LEN {
                return Err(StartupError::InvalidCancelKey(key.len()));
            }
            Ok(StartupRequest::Cancel {
                pid,
                key: key.to_vec(),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedVersion { major, minor });
            }
            decode_params(r.remaining(), major, minor).map(StartupRequest::Startup)
        }
    }
}

fn decode_params(mut rest: &[u8], major: u16, minor: u16) -> Result<StartupMessage, StartupError> {
    let mut msg = StartupMessage {
        major,
        minor,
        params: Vec::new(),
        protocol_options: Vec::new(),
    };
    loop {
        let name = take_cstr(&mut rest, "missing terminator")?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest, "parameter without a value")?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| StartupError::InvalidUtf8(String::from_utf8_lossy(name).into_owned()))?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| StartupError::InvalidUtf8(name.clone()))?;
        if name.starts_with(PROTOCOL_OPTION_PREFIX) {
            msg.protocol_options.push(name);
        } else {
            msg.params.push((name, value));
        }
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed("expected terminator as last byte"));
    }
    if msg.get("user").is_none_or(str::is_empty) {
        return Err(StartupError::MissingUser);
    }
    Ok(msg)
}

fn take_cstr<'a>(rest: &mut &'a [u8], why: &'static str) -> Result<&'a [u8], StartupError> {
    let nul = memchr::memchr(0, rest).ok_or(StartupError::Malformed(why))?;
    let (s, tail) = rest.split_at(nul);
    *rest = tail.get(1..).unwrap_or(&[]);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn run(bytes: &[u8]) -> Result<Option<StartupRequest>, StartupError> {
        parse_startup(&mut BytesMut::from(bytes), 100_000)
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            run(&packet(SSL_REQUEST_CODE, b"")),
            Ok(Some(StartupRequest::SslRequest))
        );
        assert_eq!(
            run(&packet(GSSENC_REQUEST_CODE, b"")),
            Ok(Some(StartupRequest::GssEncRequest))
        );
        assert_eq!(
            run(&packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4])),
            Ok(Some(StartupRequest::Cancel {
                pid: 7,
                key: vec![1, 2, 3, 4]
            }))
        );
        let long_key = [[0u8, 0, 0, 9].as_slice(), &[5u8; 32]].concat();
        assert_eq!(
            run(&packet(CANCEL_REQUEST_CODE, &long_key)),
            Ok(Some(StartupRequest::Cancel {
                pid: 9,
                key: vec![5; 32]
            }))
        );
    }

    #[test]
    fn startup_ok_and_consumes_exactly() {
        let mut bytes = packet(PROTOCOL_3_0 + 2, b"user\0app\0database\0db\0_pq_.x\0y\0\0");
        bytes.extend_from_slice(b"Qrest");
        let mut buf = BytesMut::from(bytes.as_slice());
        let Some(StartupRequest::Startup(m)) = parse_startup(&mut buf, 10_000).unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!((m.major, m.minor), (3, 2));
        assert_eq!(m.user(), "app");
        assert_eq!(m.database(), "db");
        assert_eq!(m.get("nope"), None);
        assert_eq!(m.protocol_options, vec!["_pq_.x".to_string()]);
        assert_eq!(m.params.len(), 2);
        assert_eq!(&buf[..], b"Qrest");
    }

    #[test]
    fn incomplete_waits() {
        let full = packet(PROTOCOL_3_0, b"user\0a\0\0");
        for cut in 0..full.len() {
            assert_eq!(run(&full[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn errors() {
        let cases: Vec<(&str, Vec<u8>, StartupError)> = vec![
            ("len 4", vec![0, 0, 0, 4], StartupError::InvalidLength(4)),
            (
                "len huge",
                vec![0, 1, 0, 0],
                StartupError::InvalidLength(65536),
            ),
            (
                "ssl with extra",
                packet(SSL_REQUEST_CODE, b"x"),
                StartupError::InvalidLength(9),
            ),
            (
                "major 2",
                packet(2 << 16, b"user\0a\0\0"),
                StartupError::UnsupportedVersion { major: 2, minor: 0 },
            ),
            (
                "major 4",
                packet(4 << 16 | 1, b""),
                StartupError::UnsupportedVersion { major: 4, minor: 1 },
            ),
            (
                "cancel short key",
                packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 1, 1, 2]),
                StartupError::InvalidCancelKey(2),
            ),
            (
                "cancel no pid",
                packet(CANCEL_REQUEST_CODE, &[0, 0]),
                StartupError::Malformed("cancel request without pid"),
            ),
            (
                "cancel key 257",
                packet(CANCEL_REQUEST_CODE, &[0u8; 261]),
                StartupError::InvalidCancelKey(257),
            ),
            (
                "no terminator",
                packet(PROTOCOL_3_0, b"user\0a\0"),
                StartupError::Malformed("missing terminator"),
            ),
            (
                "no final nul",
                packet(PROTOCOL_3_0, b"user\0a"),
                StartupError::Malformed("parameter without a value"),
            ),
            (
                "odd",
                packet(PROTOCOL_3_0, b"user\0a\0db\0"),
                StartupError::Malformed("parameter without a value"),
            ),
            (
                "trailing",
                packet(PROTOCOL_3_0, b"user\0a\0\0x"),
                StartupError::Malformed("expected terminator as last byte"),
            ),
            (
                "no user",
                packet(PROTOCOL_3_0, b"database\0a\0\0"),
                StartupError::MissingUser,
            ),
            (
                "empty user",
                packet(PROTOCOL_3_0, b"user\0\0\0"),
                StartupError::MissingUser,
            ),
            (
                "bad utf8 value",
                packet(PROTOCOL_3_0, b"user\0\xff\0\0"),
                StartupError::InvalidUtf8("user".into()),
            ),
            (
                "bad utf8 name",
                packet(PROTOCOL_3_0, b"\xff\0a\0\0"),
                StartupError::InvalidUtf8("\u{fffd}".into()),
            ),
        ];
        for (name, bytes, err) in cases {
            assert_eq!(run(&bytes), Err(err), "{name}");
        }
    }

    #[test]
    fn max_len_is_respected() {
        let p = packet(PROTOCOL_3_0, b"user\0a\0\0");
        assert_eq!(
            parse_startup(&mut BytesMut::from(p.as_slice()), 10),
            Err(StartupError::InvalidLength(16))
        );
    }
}
