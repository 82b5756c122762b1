//! Property tests: no decoder panics on any input, framing does not depend on how the
//! bytes were chunked, and rewriters change only the name.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::{backend, frontend, parse_frame, parse_startup, peek_frame, Frame, FrameError};

const MAX: usize = 4096;

/// Runs every decoder and rewriter the proxy may apply to a client or server frame.
fn exercise(f: &Frame) {
    let _ = frontend::query(f);
    let _ = frontend::query_bytes(f);
    let _ = frontend::parse(f).map(|p| {
        (
            p.param_types().count(),
            p.param_type(0),
            p.param_type(usize::MAX),
        )
    });
    let _ = frontend::bind(f);
    let _ = frontend::describe(f);
    let _ = frontend::close(f);
    let _ = frontend::execute(f);
    let _ = frontend::password_message(f);
    let _ = frontend::sasl_initial_response(f);
    let _ = frontend::sasl_response(f);
    let _ = frontend::rewrite_parse_name(f, "pgrelay_1");
    let _ = frontend::rewrite_bind_statement(f, "pgrelay_1");
    let _ = frontend::rewrite_describe_or_close_name(f, "pgrelay_1");
    let _ = backend::ready_for_query_status(f);
    let _ = backend::error_fields(f).map(|e| (e.is_fatal(), e.message_lossy().len()));
    let _ = backend::parameter_status(f);
    let _ = backend::backend_key_data(f);
    let _ = backend::authentication(f);
}

/// Frames the whole stream, feeding it in the given chunk sizes; stops at the first error.
fn frame_all(input: &[u8], chunks: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        loop {
            match parse_frame(&mut buf, MAX) {
                Ok(Some(f)) => {
                    exercise(&f);
                    out.push(f)
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        if pos >= input.len() {
            return (out, None);
        }
        let n = sizes.next().unwrap_or(1).max(1).min(input.len() - pos);
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
    }
}

/// Mostly well-framed streams of the message types the decoders know, with random
/// bodies, so the decoders (not just the framer) see lots of inputs.
fn framed_stream() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop::sample::select(b"QPBDCEpSZRKNXHdcfv123".to_vec());
    prop::collection::vec((tag, prop::collection::vec(any::<u8>(), 0..40)), 0..12).prop_map(
        |msgs| {
            let mut v = Vec::new();
            for (t, body) in msgs {
                v.extend_from_slice(Frame::from_parts(t, &body).unwrap().as_bytes());
            }
            v
        },
    )
}

fn any_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..300), framed_stream()]
}

fn cstr() -> impl Strategy<Value = String> {
    "[^\0]{0,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn framing_is_chunking_independent(input in any_stream(), chunks in prop::collection::vec(1usize..17, 1..8)) {
        let whole = frame_all(&input, &[usize::MAX]);
        let bytewise = frame_all(&input, &[1]);
        let chunked = frame_all(&input, &chunks);
        prop_assert_eq!(&whole, &bytewise);
        prop_assert_eq!(&whole, &chunked);
        // Frames are exactly the input, in order, when nothing failed.
        if whole.1.is_none() {
            let joined: Vec<u8> = whole.0.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
            prop_assert_eq!(&joined[..], &input[..joined.len()]);
        }
    }

    #[test]
    fn peeking_agrees_with_framing(input in any_stream()) {
        // Walking the stream by peeked lengths finds the same messages, and the same
        // error, as cutting frames out of it.
        let (frames, err) = frame_all(&input, &[usize::MAX]);
        let mut buf = BytesMut::from(&input[..]);
        let mut cut = Vec::new();
        let peek_err = loop {
            match peek_frame(&buf, MAX) {
                Ok(Some(p)) => {
                    let f = p.cut(&mut buf).expect("the peeked message is at the front");
                    prop_assert_eq!((f.tag(), f.len()), (p.tag(), p.len()));
                    cut.push(f);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        prop_assert_eq!(cut, frames);
        prop_assert_eq!(peek_err, err);
    }

    #[test]
    fn startup_never_panics_and_is_chunking_independent(input in prop::collection::vec(any::<u8>(), 0..200), split in 0usize..200) {
        let whole = parse_startup(&mut BytesMut::from(&input[..]), 10_000);
        let split = split.min(input.len());
        let mut buf = BytesMut::from(&input[..split]);
        let first = parse_startup(&mut buf, 10_000);
        let result = match first {
            Ok(None) => {
                buf.extend_from_slice(&input[split..]);
                parse_startup(&mut buf, 10_000)
            }
            other => other,
        };
        // A prefix may already be decisive (an error in the header); otherwise equal.
        if whole.is_ok() {
            prop_assert_eq!(whole, result);
        }
    }

    #[test]
    fn startup_from_params_roundtrips(params in prop::collection::vec(("[a-z_]{1,8}", cstr()), 0..5), user in "[a-z]{1,8}") {
        let mut all: Vec<(&str, &str)> = vec![("user", user.as_str())];
        all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let bytes = frontend::build_startup(&all).unwrap();
        match parse_startup(&mut BytesMut::from(&bytes[..]), 10_000) {
            Ok(Some(protocol::StartupRequest::Startup(m))) => {
                let got: Vec<(&str, &str)> = m.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let want: Vec<(&str, &str)> = all.iter().copied().filter(|(k, _)| !k.starts_with("_pq_.")).collect();
                prop_assert_eq!(got, want);
            }
            // Long parameter lists may exceed nothing here, so anything else is a bug.
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn rewrite_parse_roundtrip(name in cstr(), sql in cstr(), types in prop::collection::vec(any::<u32>(), 0..5), new in cstr()) {
        let mut body = Vec::new();
        for s in [&name, &sql] { body.extend_from_slice(s.as_bytes()); body.push(0); }
        body.extend_from_slice(&(types.len() as u16).to_be_bytes());
        for t in &types { body.extend_from_slice(&t.to_be_bytes()); }
        let f = Frame::from_parts(b'P', &body).unwrap();
        let out = reframe(frontend::rewrite_parse_name(&f, &new).unwrap());
        let (a, b) = (frontend::parse(&f).unwrap(), frontend::parse(&out).unwrap());
        prop_assert_eq!(b.name, new.as_str());
        prop_assert_eq!((a.sql, a.param_count, a.param_types), (b.sql, b.param_count, b.param_types));
        prop_assert_eq!(b.param_types().collect::<Vec<_>>(), types);
    }

    #[test]
    fn rewrite_bind_roundtrip(portal in cstr(), stmt in cstr(), rest in prop::collection::vec(any::<u8>(), 6..40), new in cstr()) {
        let mut body = Vec::new();
        for s in [&portal, &stmt] { body.extend_from_slice(s.as_bytes()); body.push(0); }
        body.extend_from_slice(&rest);
        let f = Frame::from_parts(b'B', &body).unwrap();
        let out = reframe(frontend::rewrite_bind_statement(&f, &new).unwrap());
        let b = frontend::bind(&out).unwrap();
        prop_assert_eq!((b.portal, b.statement, b.rest), (portal.as_str(), new.as_str(), &rest[..]));
    }

    #[test]
    fn rewrite_describe_close_roundtrip(tag in prop::sample::select(vec![b'D', b'C']), kind in prop::sample::select(vec![b'S', b'P']), name in cstr(), new in cstr()) {
        let mut body = vec![kind];
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        let f = Frame::from_parts(tag, &body).unwrap();
        let out = reframe(frontend::rewrite_describe_or_close_name(&f, &new).unwrap());
        let decode = if tag == b'D' { frontend::describe } else { frontend::close };
        let (a, b) = (decode(&f).unwrap(), decode(&out).unwrap());
        prop_assert_eq!(out.tag(), tag);
        prop_assert_eq!((a.kind, b.name), (b.kind, new.as_str()));
    }
}

fn reframe(b: Bytes) -> Frame {
    let mut m = BytesMut::from(&b[..]);
    let f = parse_frame(&mut m, usize::MAX).unwrap().unwrap();
    assert!(m.is_empty(), "length field disagrees with content");
    f
}
