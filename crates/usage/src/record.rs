//! How a usage record is encoded as a spool payload, and read back by the sealer.
//!
//! A payload is one tag byte and the record: tag `0x02` is followed by the record in postcard
//! (a compact serde format with a stable wire specification: fixed field order, varint
//! integers, length-prefixed strings). Tag `0x01` is the same record without its last field
//! (`unresolved_library`), as spools before it were written; spools older still hold JSON
//! objects, whose first byte is `{`. Both are still read, so an upgrade never strands
//! unshipped records.
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

/// The tag of a postcard-encoded record without `unresolved_library` (older spools).
const POSTCARD_V1: u8 = 0x01;
/// The tag of a postcard-encoded record.
const POSTCARD_V2: u8 = 0x02;

/// The payload of `record`: its tag, then the record.
pub fn to_payload(record: &UsageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(POSTCARD_V2);
    // Only a writer error could fail, and a Vec does not fail. (Postcard writes every field,
    // `skip_serializing_if` being a JSON-only concern here: see `Wire`.)
    postcard::to_extend(&Wire::from(record), out).expect("a usage record encodes into a Vec")
}

/// A record as postcard writes it: every field, in order (serde's `skip_serializing_if` on
/// [`UsageRecord`] keeps JSON lines short, and would make postcard's fixed layout ambiguous).
#[derive(serde::Serialize)]
struct Wire<'a> {
    request_id: &'a str,
    owner_uin: u64,
    uin: u64,
    service: &'a str,
    action: &'a str,
    billing_item: &'a str,
    units: u32,
    time_unix_ms: i64,
    unresolved_library: Option<&'a str>,
}

impl<'a> From<&'a UsageRecord> for Wire<'a> {
    fn from(r: &'a UsageRecord) -> Wire<'a> {
        Wire {
            request_id: &r.request_id,
            owner_uin: r.owner_uin,
            uin: r.uin,
            service: &r.service,
            action: &r.action,
            billing_item: &r.billing_item,
            units: r.units,
            time_unix_ms: r.time_unix_ms,
            unresolved_library: r.unresolved_library.as_deref(),
        }
    }
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
    #[serde(borrow, default)]
    pub unresolved_library: Option<Cow<'a, str>>,
}

/// A record of tag `0x01`: every field but the last.
#[derive(Deserialize)]
struct ViewV1<'a> {
    #[serde(borrow)]
    request_id: Cow<'a, str>,
    owner_uin: u64,
    uin: u64,
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    billing_item: Cow<'a, str>,
    units: u32,
    time_unix_ms: i64,
}

impl<'a> From<ViewV1<'a>> for RecordView<'a> {
    fn from(v: ViewV1<'a>) -> RecordView<'a> {
        RecordView {
            request_id: v.request_id,
            owner_uin: v.owner_uin,
            uin: v.uin,
            service: v.service,
            action: v.action,
            billing_item: v.billing_item,
            units: v.units,
            time_unix_ms: v.time_unix_ms,
            unresolved_library: None,
        }
    }
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

/// A decoded record that used every byte of its payload.
fn whole<'a>((view, rest): (RecordView<'a>, &[u8])) -> Result<RecordView<'a>, DecodeError> {
    if rest.is_empty() {
        Ok(view)
    } else {
        Err(DecodeError::Postcard(
            postcard::Error::DeserializeBadEncoding,
        ))
    }
}

/// Decodes a payload of any of the encodings.
pub fn decode(payload: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    match payload.first() {
        None => Err(DecodeError::Empty),
        Some(&POSTCARD_V2) => whole(postcard::take_from_bytes(&payload[1..])?),
        Some(&POSTCARD_V1) => {
            let (view, rest) = postcard::take_from_bytes::<ViewV1<'_>>(&payload[1..])?;
            whole((view.into(), rest))
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
            unresolved_library: None,
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
            unresolved_library: r.unresolved_library.as_deref().map(Cow::Borrowed),
        }
    }

    #[test]
    fn a_record_round_trips_and_borrows_its_strings() {
        let r = record();
        let payload = to_payload(&r);
        assert_eq!(payload[0], POSTCARD_V2);
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
    fn an_unresolved_library_round_trips_and_older_records_have_none() {
        let mut r = record();
        r.unresolved_library = Some(Arc::from("shoes_2026"));
        let payload = to_payload(&r);
        let view = decode(&payload).unwrap();
        assert_eq!(view.unresolved_library.as_deref(), Some("shoes_2026"));
        assert_eq!(view, view_of(&r));
        // A record a gateway wrote before the field existed: tag 0x01, eight fields.
        let plain = record();
        let mut v1 = vec![POSTCARD_V1];
        v1.extend(
            postcard::to_extend(
                &(
                    &plain.request_id,
                    plain.owner_uin,
                    plain.uin,
                    &*plain.service,
                    &*plain.action,
                    &*plain.billing_item,
                    plain.units,
                    plain.time_unix_ms,
                ),
                Vec::new(),
            )
            .unwrap(),
        );
        assert_eq!(decode(&v1).unwrap(), view_of(&plain));
        // JSON lines leave the field out when there is none.
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("unresolved")
        );
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
