//! The image-search field reader (`tollgate_gateway::library::fields`) on any bytes a client
//! can send: it never panics, and wherever `serde_json` reads the body as a JSON object, the
//! two agree on `GroupId` and `GroupType` (`serde_json` keeps a repeated key's last value, as
//! the reader does; an integer `GroupType` reads the same) — the backend decodes the body
//! fully, so a disagreement would bill a call against another library than the one it searched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::library::fields;

fuzz_target!(|data: &[u8]| {
    let f = fields::from_json(data);
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(data) {
        assert_eq!(
            f.group_id.as_deref(),
            m.get("GroupId").and_then(|v| v.as_str()),
            "GroupId of {:?}",
            String::from_utf8_lossy(data)
        );
        // An integer literal reads the same; `-0`, which serde_json reads as a float, is 0.
        let agrees = match m.get("GroupType") {
            Some(v) if v.is_i64() => f.group_type == v.as_i64(),
            Some(v) if v.as_f64() == Some(0.0) => matches!(f.group_type, None | Some(0)),
            _ => f.group_type.is_none(),
        };
        assert!(
            agrees,
            "GroupType of {:?}: {:?}",
            String::from_utf8_lossy(data),
            f.group_type
        );
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = fields::from_query(query);
    }
});
