//! The PROXY protocol v2 header reader (`tollgate_gateway::proxy::proxy_protocol`) on any
//! bytes a balancer, or a client pretending to be one, can send: it never panics, never reads
//! past the length it checked, and an address it reads encodes back to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::proxy::proxy_protocol::{declared_len, encode, parse};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let mut head = [0u8; 16];
    head.copy_from_slice(&data[..16]);
    let Ok(len) = declared_len(&head) else {
        return;
    };
    let rest = &data[16..data.len().min(16 + len)];
    if let Ok(Some(addr)) = parse(&head, rest) {
        let again = encode(addr, addr);
        let mut h2 = [0u8; 16];
        h2.copy_from_slice(&again[..16]);
        match parse(&h2, &again[16..]) {
            Ok(Some(back)) => assert_eq!(back.port(), addr.port()),
            other => panic!("{addr} encoded to {other:?}"),
        }
    }
});
