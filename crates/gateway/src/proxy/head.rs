//! A call's request head as the request path reads it: either hyper's (`http::request::Parts`,
//! for HTTP/2 and for every HTTP/1.1 call the gateway's own codec leaves to hyper), or a
//! [`RawHead`] parsed by that codec (`server_h1`), read straight from the bytes the client sent,
//! with no header map built, hashed or dropped per call.
//!
//! [`ReqHead`] gives both the same face: the method, the target, a field by name, every field
//! in order. What a `RawHead` holds is narrower than what hyper accepts, by construction (see
//! [`RawHead::parse`]): anything outside it is left to hyper, so the request path's checks
//! behave the same whichever codec read the call.

use bytes::{Bytes, BytesMut};
use http::Method;
use http::header::{self, HeaderName};
use http::request::Parts;

use super::hop::ConnectionField;

/// The most header fields a call read by the gateway's own codec may have.
pub const MAX_FIELDS: usize = 32;

/// The fields the request path looks up by name, found once when the head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    Authorization,
    Action,
    Version,
    Timestamp,
    Region,
    ContentSha256,
    Token,
    ContentType,
    Host,
    ContentLength,
    Connection,
}

/// How many [`Field`]s there are.
const KNOWN: usize = 11;

impl Field {
    /// Its name, lower-case.
    pub fn name(self) -> &'static HeaderName {
        static NAMES: [HeaderName; KNOWN] = [
            header::AUTHORIZATION,
            HeaderName::from_static("x-tc-action"),
            HeaderName::from_static("x-tc-version"),
            HeaderName::from_static("x-tc-timestamp"),
            HeaderName::from_static("x-tc-region"),
            HeaderName::from_static("x-tc-content-sha256"),
            HeaderName::from_static("x-tc-token"),
            header::CONTENT_TYPE,
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONNECTION,
        ];
        &NAMES[self as usize]
    }

    /// The field a lower-case name is, if it is one of these.
    fn of(name: &[u8]) -> Option<Field> {
        Some(match name {
            b"authorization" => Field::Authorization,
            b"x-tc-action" => Field::Action,
            b"x-tc-version" => Field::Version,
            b"x-tc-timestamp" => Field::Timestamp,
            b"x-tc-region" => Field::Region,
            b"x-tc-content-sha256" => Field::ContentSha256,
            b"x-tc-token" => Field::Token,
            b"content-type" => Field::ContentType,
            b"host" => Field::Host,
            b"content-length" => Field::ContentLength,
            b"connection" => Field::Connection,
            _ => return None,
        })
    }
}

/// A request head read by the gateway's own HTTP/1.1 codec: the head's bytes (field names
/// lower-cased in place, as hyper's header map holds them), and where each piece is in them.
pub struct RawHead {
    bytes: Bytes,
    method: Method,
    /// The request target (`/` or `/?query`).
    target: (u32, u32),
    /// Each field's name and value, in the order sent.
    fields: [(u32, u32, u32, u32); MAX_FIELDS],
    n_fields: u8,
    /// Where each [`Field`] is in `fields`, plus one (0: absent).
    known: [u8; KNOWN],
    /// The call's body length (`Content-Length`; 0 without one).
    pub body_len: usize,
    /// The client asked for the connection to close after this call (`Connection: close`).
    pub close: bool,
}

/// What [`RawHead::parse`] made of the front of a connection's read buffer.
pub enum Parsed {
    /// A whole call: its head is in the `RawHead` given, its body here (both split off the
    /// buffer).
    Call(Bytes),
    /// The head is not all there yet.
    Partial,
    /// The head is, and is the own codec's; the body it declares is not all there yet.
    BodyPartial,
    /// A call the gateway's own codec does not read: hyper reads it (and the rest of the
    /// connection), from the same bytes.
    Other,
}

impl Default for RawHead {
    fn default() -> RawHead {
        RawHead {
            bytes: Bytes::new(),
            method: Method::GET,
            target: (0, 0),
            fields: [(0, 0, 0, 0); MAX_FIELDS],
            n_fields: 0,
            known: [0; KNOWN],
            body_len: 0,
            close: false,
        }
    }
}

impl RawHead {
    /// Parses a whole call at the front of `buf` if it is one the gateway's own codec reads:
    ///
    /// - HTTP/1.1, `POST` or `GET`, an origin-form target of `/` with at most a query of
    ///   plain URI characters;
    /// - at most [`MAX_FIELDS`] fields, none of the request path's single-valued ones (nor
    ///   `Content-Length`, `Connection`) twice, no `Transfer-Encoding`, `Expect`, `Upgrade`,
    ///   `TE` or `Trailer`, and a `Connection` of `keep-alive` and `close` options only;
    /// - a `Content-Length` of decimal digits (or none: no body), head and body together at
    ///   most `max_call` bytes, the body whole in `buf`.
    ///
    /// Anything else — malformed heads included, whose answer is hyper's — is [`Parsed::Other`].
    ///
    /// The head is read into `head` (one per connection, reused call after call); it is
    /// complete only when [`Parsed::Call`] is returned.
    pub fn parse(buf: &mut BytesMut, max_call: usize, head: &mut RawHead) -> Parsed {
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        if req.version != Some(1) {
            return Parsed::Other;
        }
        let method = match req.method {
            Some("POST") => Method::POST,
            Some("GET") => Method::GET,
            _ => return Parsed::Other,
        };
        let Some(target) = req.path.filter(|t| plain_target(t.as_bytes())) else {
            return Parsed::Other;
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let target = (
            at(target.as_bytes()),
            at(target.as_bytes()) + target.len() as u32,
        );
        head.bytes = Bytes::new();
        head.method = method;
        head.target = target;
        head.n_fields = 0;
        head.known = [0; KNOWN];
        head.body_len = 0;
        head.close = false;
        for (i, h) in req.headers.iter().enumerate() {
            let (name, value) = (h.name.as_bytes(), h.value);
            let (name_at, value_at) = (at(name), at(value));
            head.fields[i] = (
                name_at,
                name_at + name.len() as u32,
                value_at,
                value_at + value.len() as u32,
            );
            // Nothing is changed in `buf` until the call is known to be the own codec's:
            // hyper reads every other one from the same bytes.
            let mut lower = [0u8; 20];
            let Some(lower) = lower.get_mut(..name.len()) else {
                continue;
            };
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            if matches!(
                &*lower,
                b"transfer-encoding" | b"expect" | b"upgrade" | b"te" | b"trailer"
            ) {
                return Parsed::Other;
            }
            let Some(field) = Field::of(lower) else {
                continue;
            };
            if head.known[field as usize] != 0 {
                // A second value of a field the path reads once: hyper's path refuses it.
                return Parsed::Other;
            }
            head.known[field as usize] = i as u8 + 1;
            match field {
                Field::ContentLength => {
                    let Some(n) = decimal(value) else {
                        return Parsed::Other;
                    };
                    head.body_len = n;
                }
                Field::Connection => {
                    let mut close = false;
                    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                            // A field named hop-by-hop: hyper's path sorts that out.
                            return Parsed::Other;
                        }
                    }
                    head.close = close;
                }
                _ => {}
            }
        }
        head.n_fields = req.headers.len() as u8;
        if head.body_len > max_call.saturating_sub(len) {
            return Parsed::Other;
        }
        if buf.len() - len < head.body_len {
            return Parsed::BodyPartial;
        }
        // Names lower-cased where they lie, as hyper's header map holds them.
        for &(name_start, name_end, _, _) in &head.fields[..usize::from(head.n_fields)] {
            buf[name_start as usize..name_end as usize].make_ascii_lowercase();
        }
        head.bytes = buf.split_to(len).freeze();
        let body = buf.split_to(head.body_len).freeze();
        Parsed::Call(body)
    }

    /// Lets go of the head's bytes (they share the connection's read buffer, which can then
    /// make room for the next call in place).
    pub fn release(&mut self) {
        self.bytes = Bytes::new();
    }

    fn slice(&self, start: u32, end: u32) -> &[u8] {
        &self.bytes[start as usize..end as usize]
    }

    fn target(&self) -> &str {
        // Checked to be plain ASCII when parsed.
        std::str::from_utf8(self.slice(self.target.0, self.target.1)).unwrap_or("/")
    }

    /// A known field's value.
    pub fn field(&self, field: Field) -> Option<&[u8]> {
        let i = self.known[field as usize];
        (i != 0).then(|| {
            let (_, _, start, end) = self.fields[usize::from(i) - 1];
            self.slice(start, end)
        })
    }

    /// Any field's value, by lower-case name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        if let Some(field) = Field::of(name.as_bytes()) {
            return self.field(field);
        }
        self.fields()
            .find(|&(n, _)| n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every field (lower-case name, value), in the order sent.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields[..usize::from(self.n_fields)]
            .iter()
            .map(|&(ns, ne, vs, ve)| (self.slice(ns, ne), self.slice(vs, ve)))
    }
}

/// `/`, or `/?` and a query of characters a URI carries as they are (RFC 3986: unreserved,
/// sub-delims, `:@/?%`): the targets an API 3.0 call has. Anything else is hyper's to judge.
fn plain_target(t: &[u8]) -> bool {
    match t {
        b"/" => true,
        [b'/', b'?', query @ ..] => query
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)),
        _ => false,
    }
}

/// A `Content-Length` value: decimal digits only, at most 19 of them.
fn decimal(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    usize::try_from(n).ok()
}

/// A field value as text, if it is visible ASCII (and spaces, tabs), as
/// `HeaderValue::to_str` takes it.
pub fn visible_ascii(v: &[u8]) -> Option<&str> {
    // Folded without an early exit: the compiler checks many bytes per step (this runs on the
    // `Authorization` value of every call).
    if v.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (0x20..0x7f).contains(&b))
    }) {
        // ASCII is UTF-8.
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// A call's request head, whichever codec read it.
#[derive(Clone, Copy)]
pub enum ReqHead<'a> {
    Hyper(&'a Parts),
    Raw(&'a RawHead),
}

impl<'a> ReqHead<'a> {
    pub fn method(self) -> &'a Method {
        match self {
            ReqHead::Hyper(p) => &p.method,
            ReqHead::Raw(r) => &r.method,
        }
    }

    /// The target's path (`/` for every call the own codec reads).
    pub fn path(self) -> &'a str {
        match self {
            ReqHead::Hyper(p) => p.uri.path(),
            ReqHead::Raw(_) => "/",
        }
    }

    /// The target's query, without `?`.
    pub fn query(self) -> Option<&'a str> {
        match self {
            ReqHead::Hyper(p) => p.uri.query(),
            ReqHead::Raw(r) => r.target().strip_prefix("/?"),
        }
    }

    pub fn path_and_query(self) -> &'a str {
        match self {
            ReqHead::Hyper(p) => p.uri.path_and_query().map_or("/", |p| p.as_str()),
            ReqHead::Raw(r) => r.target(),
        }
    }

    /// The target's authority (HTTP/2's `:authority`; an HTTP/1.1 call has its `Host`).
    pub fn authority(self) -> Option<&'a str> {
        match self {
            ReqHead::Hyper(p) => p.uri.authority().map(|a| a.as_str()),
            ReqHead::Raw(_) => None,
        }
    }

    /// A known field's (first) value.
    pub fn field(self, field: Field) -> Option<&'a [u8]> {
        match self {
            ReqHead::Hyper(p) => p.headers.get(field.name()).map(|v| v.as_bytes()),
            ReqHead::Raw(r) => r.field(field),
        }
    }

    /// Any field's (first) value, by lower-case name.
    pub fn get(self, name: &str) -> Option<&'a [u8]> {
        match self {
            ReqHead::Hyper(p) => p.headers.get(name).map(|v| v.as_bytes()),
            ReqHead::Raw(r) => r.get(name),
        }
    }

    /// Whether any field of this name (lower-case) is present.
    pub fn has(self, name: &HeaderName) -> bool {
        match self {
            ReqHead::Hyper(p) => p.headers.contains_key(name),
            ReqHead::Raw(r) => r.get(name.as_str()).is_some(),
        }
    }

    /// Every field (lower-case name, value), to `each`, in order.
    pub fn each_field(self, mut each: impl FnMut(&'a [u8], &'a [u8])) {
        match self {
            ReqHead::Hyper(p) => {
                for (name, value) in &p.headers {
                    each(name.as_str().as_bytes(), value.as_bytes());
                }
            }
            ReqHead::Raw(r) => {
                for (name, value) in r.fields() {
                    each(name, value);
                }
            }
        }
    }

    /// What the call's `Connection` fields say.
    pub fn connection(self) -> ConnectionField<'a> {
        match self {
            ReqHead::Hyper(p) => ConnectionField::of_map(&p.headers),
            ReqHead::Raw(r) => ConnectionField::of(r.fields()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (
            RawHead::parse(&mut buf, 1 << 16, &mut RawHead::default()),
            buf,
        )
    }

    fn call(bytes: &[u8]) -> (RawHead, Bytes, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let mut head = RawHead::default();
        match (RawHead::parse(&mut buf, 1 << 16, &mut head), buf) {
            (Parsed::Call(body), rest) => (head, body, rest),
            (Parsed::Partial | Parsed::BodyPartial, _) => {
                panic!("partial: {:?}", String::from_utf8_lossy(bytes))
            }
            (Parsed::Other, _) => panic!("other: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn a_plain_call_is_read_with_its_fields_lower_cased() {
        let (head, body, rest) = call(
            b"POST / HTTP/1.1\r\nHost: gw:8080\r\nX-TC-Action: GeneralBasicOCR\r\nContent-Type: application/json\r\nX-Custom: A B\r\nContent-Length: 4\r\n\r\n{}{}GET /?a=1 HTTP/1.1\r\n",
        );
        assert_eq!(head.method, Method::POST);
        assert_eq!(&body[..], b"{}{}");
        assert_eq!(&rest[..], b"GET /?a=1 HTTP/1.1\r\n");
        let h = ReqHead::Raw(&head);
        assert_eq!(h.path_and_query(), "/");
        assert_eq!(h.query(), None);
        assert_eq!(h.field(Field::Host), Some(&b"gw:8080"[..]));
        assert_eq!(h.field(Field::Action), Some(&b"GeneralBasicOCR"[..]));
        assert_eq!(h.get("x-tc-action"), Some(&b"GeneralBasicOCR"[..]));
        assert_eq!(h.get("x-custom"), Some(&b"A B"[..]));
        assert_eq!(h.get("x-absent"), None);
        assert!(h.has(&header::CONTENT_TYPE));
        let mut names = Vec::new();
        h.each_field(|n, _| names.push(String::from_utf8_lossy(n).into_owned()));
        assert_eq!(
            names,
            [
                "host",
                "x-tc-action",
                "content-type",
                "x-custom",
                "content-length"
            ]
        );
        assert!(!head.close);
    }

    #[test]
    fn a_get_with_a_query_and_connection_close() {
        let (head, body, _) =
            call(b"GET /?Action=X&Version=2018-11-19&a=%20 HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert_eq!(head.method, Method::GET);
        assert!(body.is_empty());
        assert_eq!(
            ReqHead::Raw(&head).query(),
            Some("Action=X&Version=2018-11-19&a=%20")
        );
        assert!(head.close);
    }

    #[test]
    fn a_body_not_all_there_is_partial() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345").0,
            Parsed::BodyPartial
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nHost: a").0,
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_outside_the_plain_shape_is_left_to_hyper() {
        let others: [&[u8]; 16] = [
            b"PUT / HTTP/1.1\r\n\r\n",
            b"post / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.0\r\n\r\n",
            b"POST /other HTTP/1.1\r\n\r\n",
            b"POST http://gw/ HTTP/1.1\r\n\r\n",
            b"GET /?a|b HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nX-TC-Action: A\r\nx-tc-action: B\r\n\r\n",
            b"POST / HTTP/1.1\r\nConnection: x-tc-action\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTE: trailers\r\n\r\n",
        ];
        for bytes in others {
            let (parsed, buf) = parse(bytes);
            assert!(
                matches!(parsed, Parsed::Other),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            // Nothing consumed: hyper reads the same bytes.
            assert_eq!(&buf[..], bytes);
        }
        let many: Vec<u8> = [
            &b"POST / HTTP/1.1\r\n"[..],
            &b"x-a: 1\r\n".repeat(MAX_FIELDS + 1),
            b"\r\n",
        ]
        .concat();
        assert!(matches!(parse(&many).0, Parsed::Other));
        // A body that could never fit the buffer: hyper streams it.
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n").0,
            Parsed::Other
        ));
    }

    #[test]
    fn the_same_head_reads_the_same_through_hyper_parts() {
        let bytes =
            b"POST / HTTP/1.1\r\nHost: gw\r\nX-TC-Timestamp: 17\r\nContent-Length: 0\r\n\r\n";
        let (raw, _, _) = call(bytes);
        let parts = http::Request::post("/")
            .header("host", "gw")
            .header("x-tc-timestamp", "17")
            .header("content-length", "0")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        for h in [ReqHead::Raw(&raw), ReqHead::Hyper(&parts)] {
            assert_eq!(h.method(), Method::POST);
            assert_eq!(h.path(), "/");
            assert_eq!(h.path_and_query(), "/");
            assert_eq!(h.field(Field::Timestamp), Some(&b"17"[..]));
            assert_eq!(h.get("host"), Some(&b"gw"[..]));
            assert!(!h.connection().close);
        }
    }
}
