//! The PROXY protocol, version 2 (HAProxy's binary header), for a listener behind a TCP load
//! balancer or TLS terminator: the client's address travels in a header before the first
//! byte of HTTP, so `X-Forwarded-For` (and the logs) name the client, not the balancer.
//!
//! With `listen.proxy_protocol` on for a listener, every connection must open with the
//! header; one that does not is closed (a client must not reach the gateway around the
//! balancer and claim any address it likes). `LOCAL` headers (the balancer's own health
//! checks) and address families other than TCP over IPv4/IPv6 keep the connection's own
//! peer address. TLVs are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The most address and TLV bytes a header may carry (a balancer's TLVs fit many times over).
pub const MAX_LEN: usize = 1024;

/// Why a connection's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY v2 signature")]
    Signature,
    #[error("version {0} (only 2)")]
    Version(u8),
    #[error("command {0:#x}")]
    Command(u8),
    #[error("{0} bytes of addresses and TLVs (at most {MAX_LEN})")]
    TooLong(usize),
    #[error("addresses of family {family:#x} need {need} bytes, the header has {got}")]
    Short { family: u8, need: usize, got: usize },
    #[error("{0}")]
    Io(String),
    #[error("no header within {0:?}")]
    Timeout(Duration),
}

/// The client's address as the header gives it: `Some` for a proxied TCP connection, `None`
/// for `LOCAL` or an address family that is not TCP over IP (the socket's peer stands).
pub fn parse(head: &[u8; 16], rest: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyError::Signature);
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    let family = head[13];
    match command {
        0x0 => return Ok(None),
        0x1 => {}
        c => return Err(ProxyError::Command(c)),
    }
    let need = match family {
        0x11 => 12,
        0x21 => 36,
        _ => return Ok(None),
    };
    if rest.len() < need {
        return Err(ProxyError::Short {
            family,
            need,
            got: rest.len(),
        });
    }
    let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
    Ok(Some(match family {
        0x11 => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3])),
            port(8),
        ),
        _ => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&rest[..16]);
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port(32))
        }
    }))
}

/// The length field of a header's first 16 bytes, checked against [`MAX_LEN`].
pub fn declared_len(head: &[u8; 16]) -> Result<usize, ProxyError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyError::Signature);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_LEN {
        return Err(ProxyError::TooLong(len));
    }
    Ok(len)
}

/// Reads a connection's header (exactly its bytes, nothing of what follows) within `timeout`.
pub async fn read(
    stream: &mut tokio::net::TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    let read = async {
        let mut head = [0u8; 16];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        let len = declared_len(&head)?;
        let mut rest = vec![0u8; len];
        stream
            .read_exact(&mut rest)
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        parse(&head, &rest)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

/// A v2 header for `src` → `dst` (tests, and the load-test kit's balancer stand-in).
pub fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(h: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut head = [0u8; 16];
        head.copy_from_slice(&h[..16]);
        (head, h[16..].to_vec())
    }

    #[test]
    fn proxied_tcp_addresses_round_trip() {
        for (src, dst) in [
            ("203.0.113.7:51234", "10.0.0.2:80"),
            ("[2001:db8::7]:51234", "[2001:db8::1]:443"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let (head, rest) = split(&encode(src, dst));
            assert_eq!(declared_len(&head).unwrap(), rest.len());
            assert_eq!(parse(&head, &rest), Ok(Some(src)));
        }
    }

    #[test]
    fn local_and_other_families_keep_the_peer_and_bad_headers_are_refused() {
        let (mut head, rest) = split(&encode(
            "1.2.3.4:5".parse().unwrap(),
            "6.7.8.9:10".parse().unwrap(),
        ));
        let mut local = head;
        local[12] = 0x20;
        assert_eq!(parse(&local, &rest), Ok(None));
        let mut unix = head;
        unix[13] = 0x31;
        assert_eq!(parse(&unix, &rest), Ok(None));
        assert_eq!(
            parse(&head, &rest[..8]).unwrap_err().to_string(),
            "addresses of family 0x11 need 12 bytes, the header has 8"
        );
        head[12] = 0x11;
        assert_eq!(parse(&head, &rest), Err(ProxyError::Version(1)));
        let mut http = [0u8; 16];
        http.copy_from_slice(b"POST / HTTP/1.1\r");
        assert_eq!(declared_len(&http), Err(ProxyError::Signature));
        let mut long = split(&encode(
            "1.2.3.4:5".parse().unwrap(),
            "6.7.8.9:10".parse().unwrap(),
        ))
        .0;
        long[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(declared_len(&long), Err(ProxyError::TooLong(4000)));
    }
}
