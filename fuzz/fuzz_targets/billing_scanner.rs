//! The billability scanner (`billing::Scanner`): an answer body of arbitrary bytes.
//!
//! Nothing may panic; the verdict does not depend on how the body is cut into chunks (whole,
//! at a fuzzer-chosen point, a byte at a time); and on a body serde_json reads, an error code
//! the scanner reports is the one serde_json finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::billing::scan::{Scanned, Scanner};

fn scan<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Scanned {
    let mut s = Scanner::new();
    for c in chunks {
        s.feed(c);
    }
    s.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = scan(std::iter::once(body));
    let at = usize::from(cut).min(body.len());
    let split = scan([&body[..at], &body[at..]].into_iter());
    let bytes = scan(body.chunks(1));
    assert_eq!(format!("{whole:?}"), format!("{split:?}"));
    assert_eq!(format!("{whole:?}"), format!("{bytes:?}"));
    if let (Scanned::Error { code }, Ok(v)) =
        (&whole, serde_json::from_slice::<serde_json::Value>(body))
        && let Some(expected) = v["Response"]["Error"]["Code"].as_str()
    {
        assert_eq!(code.as_str(), expected);
    }
});
