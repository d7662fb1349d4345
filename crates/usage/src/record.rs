//! How a usage record is encoded as a spool payload, and read back by the sealer.
//!
//! A payload is one tag byte and the record: tag `0x01` is followed by the record in postcard
//! (a compact serde format with a stable wire specification: fixed field order, varint
//! integers, length-prefixed strings). Spools written before this encoding hold JSON objects,
//! whose first byte is `{`: they are still read, so an upgrade never strands unshipped records.
//!
//! Why not JSON any more: encoding and decoding a ~220-byte JSON object with escaping checks,
//! twice per billable call, showed in the gateway's profile under load (loadtest/RESULTS.md);
//! postcard costs a fraction of it, and its payloads are less than half the size, which the page cache, the fsync and the
//! sealer's reads all pay for.

use std::borrow::Cow;

use serde::Deserialize;

use crate::UsageRecord;

/// One record as numbered in a gateway's spool: its sequence and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// The tag of a postcard-encoded record.
const POSTCARD_V1: u8 = 0x01;

/// The payload of `record`: its tag, then the record.
pub fn to_payload(record: &UsageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(POSTCARD_V1);
    // Only a writer error could fail, and a Vec does not fail.
    postcard::to_extend(record, out).expect("a usage record encodes into a Vec")
}

/// A spool record as the sealer reads it: every field of [`UsageRecord`] decoded (and so
/// checked), strings borrowed from the payload.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct RecordView<'a> {
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    pub owner_uin: u64,
    pub uin: u64,
    #[serde(borrow)]
    pub service: Cow<'a, str>,
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    #[serde(borrow)]
    pub billing_item: Cow<'a, str>,
    pub units: u32,
    pub time_unix_ms: i64,
}

/// Why a payload is not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("unknown payload tag {0:#04x}")]
    UnknownTag(u8),
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes a payload of either encoding.
pub fn decode(payload: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    match payload.first() {
        None => Err(DecodeError::Empty),
        Some(&POSTCARD_V1) => {
            let (view, rest) = postcard::take_from_bytes(&payload[1..])?;
            if rest.is_empty() {
                Ok(view)
            } else {
                Err(DecodeError::Postcard(
                    postcard::Error::DeserializeBadEncoding,
                ))
            }
        }
        Some(b'{') => Ok(serde_json::from_slice(payload)?),
        Some(&tag) => Err(DecodeError::UnknownTag(tag)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record() -> UsageRecord {
        UsageRecord {
            request_id: "5504a0b7-670e-4a7c-ad6a-139565ded084".into(),
            owner_uin: 200_000_000_008,
            uin: 200_000_000_009,
            service: Arc::from("bda"),
            action: Arc::from("SegmentPortraitPic"),
            billing_item: Arc::from("bda.segment"),
            units: 2,
            time_unix_ms: 1_796_077_771_123,
        }
    }

    fn view_of(r: &UsageRecord) -> RecordView<'_> {
        RecordView {
            request_id: Cow::Borrowed(&r.request_id),
            owner_uin: r.owner_uin,
            uin: r.uin,
            service: Cow::Borrowed(&r.service),
            action: Cow::Borrowed(&r.action),
            billing_item: Cow::Borrowed(&r.billing_item),
            units: r.units,
            time_unix_ms: r.time_unix_ms,
        }
    }

    #[test]
    fn a_record_round_trips_and_borrows_its_strings() {
        let r = record();
        let payload = to_payload(&r);
        assert_eq!(payload[0], POSTCARD_V1);
        let json = serde_json::to_vec(&r).unwrap();
        assert!(
            payload.len() * 2 < json.len() + 40,
            "{} bytes against {} of JSON",
            payload.len(),
            json.len()
        );
        let view = decode(&payload).unwrap();
        assert_eq!(view, view_of(&r));
        assert!(matches!(view.action, Cow::Borrowed(_)));
    }

    #[test]
    fn json_payloads_of_older_spools_still_decode() {
        let r = record();
        assert_eq!(
            decode(&serde_json::to_vec(&r).unwrap()).unwrap(),
            view_of(&r)
        );
    }

    #[test]
    fn damaged_payloads_are_errors_not_guesses() {
        let payload = to_payload(&record());
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"\x07abc"),
            Err(DecodeError::UnknownTag(7))
        ));
        assert!(decode(&payload[..payload.len() - 3]).is_err(), "truncated");
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
        assert!(decode(b"{\"request_id\":1}").is_err());
    }
}
