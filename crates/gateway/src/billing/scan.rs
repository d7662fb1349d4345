//! A streaming scanner over API 3.0 response bodies: it reads the chunks as they pass through
//! the proxy and keeps only what billing needs: `Response.Error.Code`, and for mixed-invoice
//! calls the `Code` and `Type` of every `Response.MixedInvoiceItems[]` entry.
//!
//! Why by hand: segmentation and enhancement answers carry megabytes of base64, so buffering a
//! body to hand it to `serde_json` would cost memory per call; the streaming JSON crates build
//! events (and allocate) for every value. This scanner keeps a fixed-size state (a 64-deep
//! container stack, a 32-byte key buffer, a 128-byte value buffer), jumps over string contents
//! with `memchr`, and never allocates. `tests::agrees_with_serde_json` checks it against
//! `serde_json` on random documents cut into random chunks.

use memchr::memchr2;

const MAX_DEPTH: usize = 64;
const MAX_KEY: usize = 32;
const MAX_VALUE: usize = 128;
const MAX_TYPES: usize = 32;

/// What the scanner concluded about a complete body.
// The tally is inline (half a KiB, once per call, on the stack) so that scanning never
// allocates; boxing it would cost an allocation per call to save stack space we have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// `Response` without `Error`; `invoices` counts recognised (`Code == "OK"`) mixed-invoice
    /// items by `Type` (empty for other interfaces).
    Success { invoices: InvoiceTally },
    /// `Response.Error` is present; `code` is its `Code` (empty if missing or too long).
    Error { code: ErrorCode },
    /// Not a complete API 3.0 JSON body.
    Malformed,
}

/// An error code captured without allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct ErrorCode {
    buf: [u8; MAX_VALUE],
    len: u8,
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Recognised invoices by type. Distinct types beyond the 32nd are counted under `i64::MIN`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InvoiceTally {
    entries: [(i64, u32); MAX_TYPES],
    len: u8,
}

impl InvoiceTally {
    pub fn add(&mut self, invoice_type: i64) {
        let n = usize::from(self.len);
        if let Some(e) = self.entries[..n].iter_mut().find(|e| e.0 == invoice_type) {
            e.1 += 1;
        } else if n < MAX_TYPES {
            self.entries[n] = (invoice_type, 1);
            self.len += 1;
        } else {
            self.add(i64::MIN);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.entries[..usize::from(self.len)].iter().copied()
    }

    pub fn total(&self) -> u32 {
        self.iter().map(|(_, n)| n).sum()
    }
}

/// What a container is, by where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Root,
    Response,
    Error,
    Items,
    Item,
    Other,
}

/// What the next value is, by its key or array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Root,
    Response,
    Error,
    Items,
    Item,
    ErrorCode,
    ItemCode,
    ItemType,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Value,
    KeyOrClose,
    Key,
    Colon,
    AfterValue,
    Str { key: bool, escape: bool },
    Literal,
    End,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    array: bool,
    ctx: Ctx,
}

/// The scanner. Feed it every chunk in order, then call [`Scanner::finish`].
#[derive(Clone)]
pub struct Scanner {
    state: State,
    stack: [Frame; MAX_DEPTH],
    /// Containers open; frames beyond `MAX_DEPTH` are not stored (they are all `Other`).
    depth: usize,
    slot: Slot,
    key: [u8; MAX_KEY],
    key_len: usize,
    capture: [u8; MAX_VALUE],
    capture_len: usize,
    capture_overflow: bool,
    saw_response: bool,
    error: Option<ErrorCode>,
    item_code_ok: bool,
    item_type: Option<i64>,
    invoices: InvoiceTally,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            state: State::Value,
            stack: [Frame {
                array: false,
                ctx: Ctx::Other,
            }; MAX_DEPTH],
            depth: 0,
            slot: Slot::Root,
            key: [0; MAX_KEY],
            key_len: 0,
            capture: [0; MAX_VALUE],
            capture_len: 0,
            capture_overflow: false,
            saw_response: false,
            error: None,
            item_code_ok: false,
            item_type: None,
            invoices: InvoiceTally::default(),
        }
    }

    /// Scans one chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Failed | State::End if !chunk[i].is_ascii_whitespace() => {
                    self.state = State::Failed;
                    return;
                }
                State::Str { key, escape } => {
                    if escape {
                        self.push_str_byte(key, chunk[i]);
                        self.state = State::Str { key, escape: false };
                        i += 1;
                        continue;
                    }
                    // Jump to the next quote or backslash; everything before it is content.
                    match memchr2(b'"', b'\\', &chunk[i..]) {
                        None => {
                            self.push_str_bytes(key, &chunk[i..]);
                            return;
                        }
                        Some(off) => {
                            self.push_str_bytes(key, &chunk[i..i + off]);
                            i += off;
                            if chunk[i] == b'\\' {
                                self.push_str_byte(key, b'\\');
                                self.state = State::Str { key, escape: true };
                            } else {
                                self.end_string(key);
                            }
                            i += 1;
                        }
                    }
                }
                State::Literal => {
                    let b = chunk[i];
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        if self.slot == Slot::ItemType {
                            self.push_capture(b);
                        }
                        i += 1;
                    } else {
                        self.end_literal();
                        // Re-examine `b` as the byte after the value.
                    }
                }
                _ => {
                    self.structural(chunk[i]);
                    i += 1;
                }
            }
        }
    }

    /// The verdict once the whole body has been fed.
    pub fn finish(mut self) -> Scanned {
        if self.state == State::Literal {
            self.end_literal();
        }
        if self.state != State::End || !self.saw_response {
            return Scanned::Malformed;
        }
        match self.error {
            Some(code) => Scanned::Error { code },
            None => Scanned::Success {
                invoices: self.invoices,
            },
        }
    }

    fn structural(&mut self, b: u8) {
        if b.is_ascii_whitespace() {
            return;
        }
        match self.state {
            State::Value => self.begin_value(b),
            State::KeyOrClose if b == b'}' => self.close(false),
            State::KeyOrClose | State::Key if b == b'"' => {
                self.key_len = 0;
                self.state = State::Str {
                    key: true,
                    escape: false,
                };
            }
            State::Colon if b == b':' => self.state = State::Value,
            State::AfterValue => match (b, self.top().map(|f| f.array)) {
                (b',', Some(false)) => self.state = State::Key,
                (b',', Some(true)) => {
                    self.slot = self.array_slot();
                    self.state = State::Value;
                }
                (b'}', Some(false)) => self.close(false),
                (b']', Some(true)) => self.close(true),
                _ => self.state = State::Failed,
            },
            _ => self.state = State::Failed,
        }
    }

    fn begin_value(&mut self, b: u8) {
        match b {
            b'{' => {
                let ctx = match self.slot {
                    Slot::Root => Ctx::Root,
                    Slot::Response => {
                        self.saw_response = true;
                        Ctx::Response
                    }
                    Slot::Error => {
                        self.error.get_or_insert(ErrorCode {
                            buf: [0; MAX_VALUE],
                            len: 0,
                        });
                        Ctx::Error
                    }
                    Slot::Item => {
                        self.item_code_ok = false;
                        self.item_type = None;
                        Ctx::Item
                    }
                    _ => Ctx::Other,
                };
                self.open(false, ctx);
                self.state = State::KeyOrClose;
            }
            b'[' => {
                let ctx = if self.slot == Slot::Items {
                    Ctx::Items
                } else {
                    Ctx::Other
                };
                self.open(true, ctx);
                self.slot = self.array_slot();
                self.state = State::Value;
            }
            b']' if self.top().is_some_and(|f| f.array) => self.close(true),
            b'"' => {
                self.capture_len = 0;
                self.capture_overflow = false;
                self.state = State::Str {
                    key: false,
                    escape: false,
                };
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                self.capture_len = 0;
                self.capture_overflow = false;
                if self.slot == Slot::ItemType {
                    self.push_capture(b);
                }
                self.state = State::Literal;
            }
            _ => self.state = State::Failed,
        }
    }

    fn top(&self) -> Option<Frame> {
        match self.depth {
            0 => None,
            d if d <= MAX_DEPTH => Some(self.stack[d - 1]),
            _ => Some(Frame {
                // Beyond the stored depth only the container kind matters, and an `Other`
                // container's values are never captured; we still need array-or-object to
                // parse commas, so deep documents are refused rather than guessed at.
                array: false,
                ctx: Ctx::Other,
            }),
        }
    }

    fn open(&mut self, array: bool, ctx: Ctx) {
        if self.depth >= MAX_DEPTH {
            self.state = State::Failed;
            self.depth += 1;
            return;
        }
        self.stack[self.depth] = Frame { array, ctx };
        self.depth += 1;
    }

    fn close(&mut self, array: bool) {
        match self.top() {
            Some(f) if f.array == array => {
                if f.ctx == Ctx::Item && self.item_code_ok {
                    // An item without Type counts as "other" (-1), a small ticket.
                    self.invoices.add(self.item_type.unwrap_or(-1));
                }
                self.depth -= 1;
                self.state = if self.depth == 0 {
                    State::End
                } else {
                    State::AfterValue
                };
            }
            _ => self.state = State::Failed,
        }
    }

    fn array_slot(&self) -> Slot {
        match self.top() {
            Some(Frame {
                array: true,
                ctx: Ctx::Items,
            }) => Slot::Item,
            _ => Slot::Other,
        }
    }

    fn push_capture(&mut self, b: u8) {
        if self.capture_len < MAX_VALUE {
            self.capture[self.capture_len] = b;
            self.capture_len += 1;
        } else {
            self.capture_overflow = true;
        }
    }

    fn capturing(&self) -> bool {
        matches!(self.slot, Slot::ErrorCode | Slot::ItemCode)
    }

    fn push_str_byte(&mut self, key: bool, b: u8) {
        if key {
            if self.key_len < MAX_KEY {
                self.key[self.key_len] = b;
            }
            self.key_len += 1;
        } else if self.capturing() {
            self.push_capture(b);
        }
    }

    fn push_str_bytes(&mut self, key: bool, bytes: &[u8]) {
        if key {
            // A key longer than MAX_KEY is none the scanner looks for: its length is still
            // counted (so it is known to be too long), its bytes past MAX_KEY are not kept.
            let start = self.key_len.min(MAX_KEY);
            let room = (MAX_KEY - start).min(bytes.len());
            self.key[start..start + room].copy_from_slice(&bytes[..room]);
            self.key_len += bytes.len();
        } else if self.capturing() {
            let room = MAX_VALUE.saturating_sub(self.capture_len).min(bytes.len());
            self.capture[self.capture_len..self.capture_len + room].copy_from_slice(&bytes[..room]);
            self.capture_len += room;
            if room < bytes.len() {
                self.capture_overflow = true;
            }
        }
    }

    fn end_string(&mut self, key: bool) {
        if key {
            let k: &[u8] = if self.key_len <= MAX_KEY {
                &self.key[..self.key_len]
            } else {
                b""
            };
            let ctx = self.top().map(|f| f.ctx).unwrap_or(Ctx::Other);
            self.slot = match (ctx, k) {
                (Ctx::Root, b"Response") => Slot::Response,
                (Ctx::Response, b"Error") => Slot::Error,
                (Ctx::Response, b"MixedInvoiceItems") => Slot::Items,
                (Ctx::Error, b"Code") => Slot::ErrorCode,
                (Ctx::Item, b"Code") => Slot::ItemCode,
                (Ctx::Item, b"Type") => Slot::ItemType,
                _ => Slot::Other,
            };
            self.state = State::Colon;
            return;
        }
        let value = &self.capture[..self.capture_len];
        match self.slot {
            Slot::ErrorCode => {
                if let Some(code) = self.error.as_mut() {
                    code.len = 0;
                    if self.capture_overflow {
                        // Too long to be a vendor code: recorded as no code.
                    } else if !value.contains(&b'\\') {
                        code.buf[..value.len()].copy_from_slice(value);
                        code.len = value.len() as u8;
                    } else if let Some(decoded) = decode_escaped(value) {
                        // Vendor codes never contain escapes; decoding (and its allocation)
                        // happens only for such odd bodies.
                        let d = decoded.as_bytes();
                        if d.len() <= MAX_VALUE {
                            code.buf[..d.len()].copy_from_slice(d);
                            code.len = d.len() as u8;
                        }
                    }
                }
            }
            Slot::ItemCode => self.item_code_ok = !self.capture_overflow && value == b"OK",
            _ => {}
        }
        self.state = State::AfterValue;
    }

    fn end_literal(&mut self) {
        if self.slot == Slot::ItemType && !self.capture_overflow {
            self.item_type = std::str::from_utf8(&self.capture[..self.capture_len])
                .ok()
                .and_then(|s| s.parse().ok());
        }
        self.state = if self.depth == 0 {
            State::End
        } else {
            State::AfterValue
        };
    }
}

/// Decodes the raw contents of a JSON string that contains escapes.
fn decode_escaped(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn scan_chunks(body: &[u8], cuts: &[usize]) -> Scanned {
        let mut s = Scanner::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.min(body.len()).max(start);
            s.feed(&body[start..c]);
            start = c;
        }
        s.feed(&body[start..]);
        s.finish()
    }

    /// The reference: the same conclusions drawn from a fully parsed document.
    fn reference(body: &[u8]) -> Scanned {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Scanned::Malformed;
        };
        let Some(resp) = v.get("Response").filter(|r| r.is_object()) else {
            return Scanned::Malformed;
        };
        if let Some(err) = resp.get("Error").filter(|e| e.is_object()) {
            let code = err.get("Code").and_then(Value::as_str).unwrap_or("");
            let mut buf = [0u8; MAX_VALUE];
            let len = if code.len() <= MAX_VALUE {
                code.len()
            } else {
                0
            };
            buf[..len].copy_from_slice(&code.as_bytes()[..len]);
            return Scanned::Error {
                code: ErrorCode {
                    buf,
                    len: len as u8,
                },
            };
        }
        let mut invoices = InvoiceTally::default();
        if let Some(items) = resp.get("MixedInvoiceItems").and_then(Value::as_array) {
            for item in items.iter().filter(|i| i.is_object()) {
                if item.get("Code").and_then(Value::as_str) == Some("OK") {
                    invoices.add(item.get("Type").and_then(Value::as_i64).unwrap_or(-1));
                }
            }
        }
        Scanned::Success { invoices }
    }

    fn code(s: &Scanned) -> Option<&str> {
        match s {
            Scanned::Error { code } => Some(code.as_str()),
            _ => None,
        }
    }

    /// Found by the `billing_scanner` fuzz target: a key longer than `MAX_KEY` whose bytes
    /// arrive in more than one piece (a chunk boundary, or an escape) indexed past the key
    /// buffer and panicked.
    #[test]
    fn a_long_key_in_pieces_is_just_a_long_key() {
        let long = "K".repeat(MAX_KEY + 8);
        let body = format!(r#"{{"Response": {{"{long}\n{long}": 1, "RequestId": "r"}}}}"#);
        for cut in [10, 10 + MAX_KEY + 2, body.len() / 2] {
            assert!(matches!(
                scan_chunks(body.as_bytes(), &[cut]),
                Scanned::Success { .. }
            ));
        }
        // The fuzzer's own input.
        let input = b"\x7b\x20\x0a\x22\x5c\x0a\x60\x7b\xff\xff\xff\xff\xff\xff\xff\xff\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\x63\xff\xff\x38\x0a";
        let _ = scan_chunks(input, &[255]);
        let _ = scan_chunks(input, &[]);
    }

    #[test]
    fn reads_success_errors_and_invoices() {
        let ok = br#"{"Response": {"TextDetections": [{"DetectedText": "a\"}b", "Polygon": []}], "RequestId": "r"}}"#;
        assert!(
            matches!(scan_chunks(ok, &[]), Scanned::Success { invoices } if invoices.total() == 0)
        );
        let err = br#"{"Response":{"Error":{"Message":"x","Code":"FailedOperation.ImageBlur"},"RequestId":"r"}}"#;
        assert_eq!(
            code(&scan_chunks(err, &[10, 40])),
            Some("FailedOperation.ImageBlur")
        );
        let mixed = json!({"Response": {"MixedInvoiceItems": [
            {"Code": "OK", "Type": 3, "Rect": {"X": 1}},
            {"Code": "OK", "Type": 2, "SingleInvoiceInfos": {"Code": "nested, ignored"}},
            {"Code": "FailedOperation.UnsupportedInvioce", "Type": 8},
            {"Type": 12, "Code": "OK"},
            {"Code": "OK", "Type": -1},
        ], "RequestId": "r"}});
        let body = serde_json::to_vec(&mixed).unwrap();
        match scan_chunks(&body, &[1, 2, 3, 50]) {
            Scanned::Success { invoices } => {
                let mut got: Vec<_> = invoices.iter().collect();
                got.sort();
                assert_eq!(got, vec![(-1, 1), (2, 1), (3, 1), (12, 1)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_or_foreign_bodies_are_malformed() {
        for body in [
            &br#"{"Response": {"RequestId": "r""#[..],
            br#"{"Response": {"RequestId": "r"}} trailing"#,
            br#"{"NotResponse": {}}"#,
            br#"<html>502</html>"#,
            b"",
        ] {
            assert_eq!(
                scan_chunks(body, &[3]),
                Scanned::Malformed,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn skips_a_large_base64_value_in_many_chunks() {
        let image = "A".repeat(3 << 20);
        let body = format!(
            r#"{{"Response":{{"ResultImage":"{image}","HasForeground":true,"RequestId":"r"}}}}"#
        );
        let cuts: Vec<usize> = (1..200).map(|i| i * 16_411).collect();
        assert!(matches!(
            scan_chunks(body.as_bytes(), &cuts),
            Scanned::Success { .. }
        ));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            (-1000.0f64..1000.0).prop_map(|f| json!(f)),
            "[a-zA-Z\"\\\\/ \u{4e2d}]{0,12}".prop_map(Value::String),
            prop_oneof![Just("OK"), Just("Code"), Just("Type"), Just("Error")]
                .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("Code".to_string()),
                            Just("Type".to_string()),
                            Just("Error".to_string()),
                            Just("MixedInvoiceItems".to_string()),
                            "[a-z]{1,6}"
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn arb_response() -> impl Strategy<Value = Value> {
        let item = (
            prop_oneof![
                Just(json!("OK")),
                Just(json!("FailedOperation.UnKnowError")),
                arb_json()
            ],
            prop_oneof![(-1i64..20).prop_map(|t| json!(t)), arb_json()],
            arb_json(),
        )
            .prop_map(|(c, t, extra)| json!({"Code": c, "Type": t, "Extra": extra}));
        let error = (
            prop_oneof![Just(json!("FailedOperation.EmptyImageError")), arb_json()],
            arb_json(),
        )
            .prop_map(|(c, m)| json!({"Code": c, "Message": m}));
        (
            prop::option::of(error),
            prop::option::of(prop::collection::vec(item, 0..6)),
            arb_json(),
        )
            .prop_map(|(error, items, other)| {
                let mut r = serde_json::Map::new();
                r.insert("Other".into(), other);
                if let Some(items) = items {
                    r.insert("MixedInvoiceItems".into(), Value::Array(items));
                }
                if let Some(e) = error {
                    r.insert("Error".into(), e);
                }
                r.insert("RequestId".into(), json!("req"));
                json!({ "Response": r })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_serde_json(
            doc in arb_response(),
            pretty in any::<bool>(),
            cuts in prop::collection::vec(0usize..4000, 0..8),
        ) {
            let body = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) }.unwrap();
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(scan_chunks(&body, &cuts), reference(&body));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let _ = scan_chunks(&body, &[cut]);
        }
    }
}
