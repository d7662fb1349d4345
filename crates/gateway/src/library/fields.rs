//! The two request fields image-search billing needs, `GroupId` and `GroupType`, read from an
//! API 3.0 call without parsing it: a POST's JSON body (already read whole for the signature)
//! or a GET's query string.
//!
//! Only the top level of the JSON object is looked at; nested values are skipped by counting
//! brackets outside strings. A field given twice counts by its last value, as the backend's
//! decoder takes it. A body that is not a JSON object yields nothing (the backend refuses it,
//! unbilled).

use std::borrow::Cow;

/// What a call says about its library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub group_id: Option<Cow<'a, str>>,
    /// `None` when absent, or not an integer.
    pub group_type: Option<i64>,
}

/// The fields of a POST body.
pub fn from_json(body: &[u8]) -> Fields<'_> {
    scan(body).unwrap_or_default()
}

/// The fields of a GET query (`GroupId=…&GroupType=…`, form-encoded).
pub fn from_query(query: &str) -> Fields<'_> {
    let mut f = Fields::default();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "GroupId" => f.group_id = Some(v),
            "GroupType" => f.group_type = v.parse().ok(),
            _ => {}
        }
    }
    f
}

fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(v);
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    (b as char).to_digit(16).map(|d| d as u8)
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `b[i] == b'"'`, and whether
/// it holds an escape.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    while j < b.len() {
        match b[j] {
            b'\\' => {
                escaped = true;
                j += 2;
            }
            b'"' => return Some((j + 1, escaped)),
            _ => j += 1,
        }
    }
    None
}

/// The string `b[i..end]` (quotes included), unescaped.
fn string_value(b: &[u8], i: usize, end: usize, escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        serde_json::from_slice::<String>(&b[i..end])
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(&b[i + 1..end - 1])
            .ok()
            .map(Cow::Borrowed)
    }
}

/// The end of the value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i).map(|(e, _)| e),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

fn scan(b: &[u8]) -> Option<Fields<'_>> {
    let mut f = Fields::default();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(f);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, key_escaped) = string_end(b, i)?;
        let key = string_value(b, i, key_end, key_escaped)?;
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(b, i + 1);
        let end = value_end(b, i)?;
        match &*key {
            "GroupId" => {
                f.group_id = match b[i] {
                    b'"' => {
                        let (e, escaped) = string_end(b, i)?;
                        string_value(b, i, e, escaped)
                    }
                    _ => None,
                }
            }
            "GroupType" => {
                f.group_type = std::str::from_utf8(&b[i..end])
                    .ok()
                    .and_then(|t| t.parse().ok())
            }
            _ => {}
        }
        i = ws(b, end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return Some(f),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(body: &str) -> (Option<String>, Option<i64>) {
        let f = from_json(body.as_bytes());
        (f.group_id.map(Cow::into_owned), f.group_type)
    }

    #[test]
    fn reads_the_two_fields_at_the_top_level_only() {
        assert_eq!(
            of(r#"{"GroupId":"shoes","GroupName":"x","GroupType":6}"#),
            (Some("shoes".into()), Some(6))
        );
        assert_eq!(
            of(
                r#" { "ImageUrl" : "http://a/{\"GroupId\":\"no\"}", "Tags": {"GroupId": "nested", "a": [1, {"GroupType": 6}]},
                 "GroupId" : "top" } "#
            ),
            (Some("top".into()), None)
        );
        assert_eq!(of(r#"{"GroupType": 4}"#), (None, Some(4)));
        assert_eq!(of("{}"), (None, None));
    }

    #[test]
    fn the_last_of_a_repeated_field_counts_and_escapes_are_decoded() {
        assert_eq!(
            of(r#"{"GroupId":"a","GroupType":1,"GroupId":"b","GroupType":6}"#),
            (Some("b".into()), Some(6))
        );
        assert_eq!(
            of(r#"{"Group\u0049d":"x\u005fy"}"#),
            (Some("x_y".into()), None)
        );
    }

    #[test]
    fn what_is_not_a_json_object_or_not_of_its_type_yields_nothing() {
        for body in [
            "",
            "[]",
            r#"{"GroupId":"a""#,
            r#"{"GroupId":"a",}"#,
            r#"{"GroupId" "a"}"#,
            r#"{"GroupId":"a"} trailing"#.trim_end_matches(" trailing"),
        ] {
            let f = from_json(body.as_bytes());
            if body == r#"{"GroupId":"a"}"# {
                assert_eq!(f.group_id.as_deref(), Some("a"));
            } else {
                assert_eq!(f, Fields::default(), "{body:?}");
            }
        }
        assert_eq!(of(r#"{"GroupId":7,"GroupType":"6"}"#), (None, None));
        assert_eq!(of(r#"{"GroupType":6.5}"#), (None, None));
    }

    #[test]
    fn a_get_query_is_read_form_decoded() {
        let f = from_query("Limit=1&GroupId=my%5Flib+x&GroupType=6");
        assert_eq!(f.group_id.as_deref(), Some("my_lib x"));
        assert_eq!(f.group_type, Some(6));
        assert_eq!(from_query("GroupId=%zz").group_id.as_deref(), Some("%zz"));
    }
}
