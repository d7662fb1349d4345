//! Hop-by-hop header fields (RFC 9110 section 7.6.1): what belongs to one connection and is
//! never handed on, in either direction. A call's fields go to the backend minus these (and
//! minus what the gateway sets itself, see `forward`); an answer's go to the client minus
//! these (`http1::parse_head`).

/// The fields that are hop-by-hop whatever `Connection` says.
pub const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Whether `name` (in any case) is one of [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// What the `Connection` fields of a message say: whether the connection closes after it,
/// and which other fields they name (those are hop-by-hop too).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionField<'h> {
    /// The `close` option is present.
    pub close: bool,
    /// The values of every `Connection` field, unparsed (there is almost always at most one).
    values: [&'h [u8]; 4],
    n_values: usize,
    /// More `Connection` fields than `values` holds: every field counts as named.
    overflow: bool,
}

impl<'h> ConnectionField<'h> {
    /// Reads the `Connection` fields among `fields` (name, value).
    pub fn of(fields: impl Iterator<Item = (&'h [u8], &'h [u8])>) -> ConnectionField<'h> {
        let mut c = ConnectionField::default();
        for (name, value) in fields {
            if !name.eq_ignore_ascii_case(b"connection") {
                continue;
            }
            if c.n_values == c.values.len() {
                c.overflow = true;
                continue;
            }
            c.values[c.n_values] = value;
            c.n_values += 1;
            c.close |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        c
    }

    /// Reads the `Connection` fields of a header map.
    pub fn of_map(headers: &'h http::HeaderMap) -> ConnectionField<'h> {
        ConnectionField::of(
            headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| (&b"connection"[..], v.as_bytes())),
        )
    }

    /// True if a `Connection` field names `name` (the `keep-alive` and `close` options name
    /// no field that is not hop-by-hop already).
    pub fn names(&self, name: &[u8]) -> bool {
        if self.n_values == 0 {
            return false;
        }
        self.overflow || self.tokens().any(|t| t.eq_ignore_ascii_case(name))
    }

    /// Every token of every `Connection` field.
    pub fn tokens(&self) -> impl Iterator<Item = &'h [u8]> + '_ {
        self.values[..self.n_values].iter().flat_map(|v| tokens(v))
    }
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_fields_name_fields_and_say_close() {
        let fields: [(&[u8], &[u8]); 3] = [
            (b"Connection", b"keep-alive, X-Custom"),
            (b"connection", b" Close "),
            (b"x-custom", b"1"),
        ];
        let c = ConnectionField::of(fields.iter().copied());
        assert!(c.close);
        assert!(c.names(b"x-custom") && c.names(b"X-CUSTOM"));
        assert!(!c.names(b"x-other"));
        let none = ConnectionField::of(std::iter::empty());
        assert!(!none.close && !none.names(b"x-custom"));
        assert!(is_hop_by_hop(b"Transfer-Encoding") && !is_hop_by_hop(b"content-type"));
    }
}
