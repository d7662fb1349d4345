//! TC3-HMAC-SHA256: the `Authorization` parser and the verifier, on arbitrary input.
//!
//! The input is split into an `Authorization` value, a timestamp, a query and a body. Nothing
//! may panic; a call the fuzzer signs itself (with a known key over its own parts) must
//! verify, and must stop verifying when one byte of its body changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::tc3::Signer;
use tollgate_gateway::auth::{
    AuthRequest, Credential, Credentials, authenticate, parse_authorization,
};

const NOW: i64 = 1_795_347_128;

fn credentials() -> Credentials {
    let mut m = rustc_hash_map();
    m.insert(
        "AKIDfuzz".into(),
        Credential {
            secret_key: b"fuzz-secret-key".to_vec().into_boxed_slice(),
            uin: 7,
            expires_unix: None,
        },
    );
    Credentials::new(m)
}

fn rustc_hash_map() -> tollgate_gateway::auth::CredentialMap {
    tollgate_gateway::auth::CredentialMap::default()
}

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.splitn(4, |&b| b == 0).collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or(b"");
    let creds = credentials();
    // Arbitrary Authorization, headers and body.
    if let Ok(text) = std::str::from_utf8(get(0))
        && let Ok(auth) = parse_authorization(text)
    {
        let _ = authenticate(
            &creds,
            AuthRequest {
                authorization: &auth,
                method: "POST",
                query: get(2),
                header: |name: &str| match name {
                    "content-type" => Some(&b"application/json"[..]),
                    "host" => Some(get(1)),
                    _ => None,
                },
                timestamp: Some(get(1)),
                payload: Some(get(3)),
            },
            NOW,
            300,
        );
    }
    // A call signed over the fuzzer's parts verifies, and a changed body does not.
    let host = String::from_utf8_lossy(get(1)).into_owned();
    if host.bytes().any(|b| b.is_ascii_control()) {
        return;
    }
    let query = get(2);
    let body = get(3);
    let authorization = Signer {
        secret_id: "AKIDfuzz",
        secret_key: "fuzz-secret-key",
        service: "ocr",
        host: &host,
        content_type: "application/json",
        method: "POST",
        query,
        payload: body,
        timestamp: NOW,
    }
    .authorization();
    let auth = parse_authorization(&authorization).expect("our own signature parses");
    let timestamp = NOW.to_string();
    let verify = |payload: &[u8]| {
        authenticate(
            &creds,
            AuthRequest {
                authorization: &auth,
                method: "POST",
                query,
                header: |name: &str| match name {
                    "content-type" => Some(&b"application/json"[..]),
                    "host" => Some(host.as_bytes()),
                    _ => None,
                },
                timestamp: Some(timestamp.as_bytes()),
                payload: Some(payload),
            },
            NOW,
            300,
        )
    };
    // Header values are trimmed in the canonical request, as the SDK does: a host with
    // surrounding blanks is not the same string on both sides.
    if host.trim() == host {
        assert_eq!(verify(body), Ok(7));
        let mut changed = body.to_vec();
        match changed.first_mut() {
            Some(b) => *b ^= 1,
            None => changed.push(b'x'),
        }
        assert!(verify(&changed).is_err());
    }
});
