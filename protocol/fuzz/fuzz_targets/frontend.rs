//! Feeds arbitrary bytes to the startup parser, then frames the rest as a client stream
//! (in chunks whose sizes come from the input) and runs every decoder and rewriter on
//! each frame. Any panic is a bug: the proxy must survive any client.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{backend, frontend, parse_frame, parse_startup, Frame};

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
    for name in ["", "pgrelay_1"] {
        let _ = frontend::rewrite_parse_name(f, name).map(|b| check_reframes(&b));
        let _ = frontend::rewrite_bind_statement(f, name).map(|b| check_reframes(&b));
        let _ = frontend::rewrite_describe_or_close_name(f, name).map(|b| check_reframes(&b));
    }
    let _ = backend::ready_for_query_status(f);
    let _ = backend::error_fields(f).map(|e| (e.is_fatal(), e.message_lossy().len()));
    let _ = backend::parameter_status(f);
    let _ = backend::backend_key_data(f);
    let _ = backend::authentication(f);
}

/// A rewritten message must itself be exactly one valid frame.
fn check_reframes(b: &bytes::Bytes) {
    let mut m = BytesMut::from(&b[..]);
    let f = parse_frame(&mut m, usize::MAX);
    assert!(
        matches!(f, Ok(Some(_))) && m.is_empty(),
        "rewrite produced a bad frame"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 16) + 1;

    let mut buf = BytesMut::from(data);
    let _ = parse_startup(&mut buf, 10_000);

    // Frame the same bytes as a tagged stream, delivered `chunk` bytes at a time.
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match parse_frame(&mut buf, protocol::DEFAULT_MAX_MESSAGE) {
                Ok(Some(f)) => exercise(&f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
