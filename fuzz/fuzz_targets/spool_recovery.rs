//! Spool recovery (`metering::spool::recover`): a segment file of arbitrary bytes, as a crash,
//! a torn write or a bad disk could leave one.
//!
//! Nothing may panic. Recovery is idempotent (a second pass finds no torn bytes and the same
//! records), every record it keeps reads back, and every record payload decodes or is
//! refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::metering::spool;
use tollgate_usage::record;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("segment-00000000000000000001.log"), data).expect("write");
    let first = spool::recover(dir.path()).expect("recovery reads what is there");
    let second = spool::recover(dir.path()).expect("recovery again");
    assert_eq!(second.torn_bytes, 0);
    assert_eq!(second.records, first.records);
    let entries = spool::read_after(dir.path(), 0, u64::MAX).expect("read back");
    assert_eq!(entries.len() as u64, first.records);
    for e in &entries {
        let _ = record::decode(&e.payload);
    }
});
