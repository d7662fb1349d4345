//! The HTTP/1.1 answer codec (`proxy::http1`): a backend's bytes, cut into reads at
//! fuzzer-chosen points, through `parse_head` and `decode_body`.
//!
//! Nothing may panic or loop. A body framed by `Content-Length` yields exactly that many bytes
//! or fails; a chunked body never yields more bytes than were read; the head's fields never
//! include a hop-by-hop one, and each is a valid header-map entry.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use tollgate_gateway::proxy::http1::{BodyState, Decoded, at_close, decode_body, parse_head};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size (1..=256) and the method.
    let Some((&knob, wire)) = data.split_first() else {
        return;
    };
    let piece = usize::from(knob % 128) + 1;
    let method = if knob & 0x80 != 0 {
        Method::HEAD
    } else {
        Method::POST
    };
    let mut reads = wire.chunks(piece);
    let mut buf = BytesMut::new();
    let head = loop {
        match parse_head(&mut buf, &method) {
            Ok(Some(head)) => break head,
            Ok(None) => match reads.next() {
                Some(r) => buf.extend_from_slice(r),
                None => return,
            },
            Err(_) => return,
        }
        if buf.len() > tollgate_gateway::proxy::http1::MAX_HEAD_BYTES {
            return;
        }
    };
    let mut lines = 0;
    head.fields.each(|name, _| {
        lines += 1;
        assert!(!tollgate_gateway::proxy::hop::is_hop_by_hop(name));
    });
    let declared = match head.body {
        BodyState::Length(n) => Some(n),
        _ => None,
    };
    let mut state = head.body;
    // Every field kept is one a header map takes as it is (hyper's codecs build one).
    assert_eq!(head.fields.into_header_map(0).len(), lines);
    let mut got: u64 = 0;
    let mut steps = 0usize;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "the decoder does not progress");
        match decode_body(&mut buf, &mut state) {
            Decoded::Data(d) => {
                assert!(!d.is_empty());
                got += d.len() as u64;
            }
            Decoded::End => break,
            Decoded::Error(_) => return,
            Decoded::More(_) => match reads.next() {
                Some(r) => buf.extend_from_slice(r),
                None => {
                    if at_close(&mut state).is_some() {
                        return;
                    }
                    break;
                }
            },
        }
    }
    if let Some(n) = declared {
        assert_eq!(got, n);
    }
    assert!(got <= wire.len() as u64);
});
