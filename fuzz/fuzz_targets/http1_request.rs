//! The own HTTP/1.1 codec's request parser (`proxy::head::RawHead::parse`): arbitrary bytes
//! at the front of a connection's read buffer.
//!
//! Nothing may panic; a call it does not take (hyper's, or not all there yet) leaves the
//! buffer as it was, byte for byte (hyper reads the same bytes); a call it takes consumes
//! exactly its head and declared body, and its fields are httparse's, names lower-cased.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tollgate_gateway::proxy::head::{MAX_FIELDS, Parsed, RawHead, ReqHead};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut head = RawHead::default();
    match RawHead::parse(&mut buf, 64 * 1024, &mut head) {
        Parsed::Other | Parsed::Partial | Parsed::BodyPartial => assert_eq!(&buf[..], data),
        Parsed::Call(body) => {
            let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut req = httparse::Request::new(&mut slots);
            let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
                panic!("taken, but not a complete head to httparse");
            };
            assert_eq!(body.len(), head.body_len);
            assert_eq!(&body[..], &data[len..len + head.body_len]);
            assert_eq!(&buf[..], &data[len + head.body_len..]);
            let fields: Vec<_> = head.fields().collect();
            assert_eq!(fields.len(), req.headers.len());
            for ((name, value), h) in fields.iter().zip(req.headers.iter()) {
                assert!(name.eq_ignore_ascii_case(h.name.as_bytes()));
                assert!(!name.iter().any(u8::is_ascii_uppercase));
                assert_eq!(*value, h.value);
            }
            let r = ReqHead::Raw(&head);
            assert_eq!(r.path_and_query(), req.path.unwrap());
            assert_eq!(r.method().as_str(), req.method.unwrap());
            for (name, _) in &fields {
                let name = std::str::from_utf8(name).unwrap();
                let first = fields
                    .iter()
                    .find(|(n, _)| n == &name.as_bytes())
                    .unwrap()
                    .1;
                assert_eq!(r.get(name), Some(first), "{name}");
            }
        }
    }
});
