//! What the benches and the allocation test share: a gateway on the embedded demo config
//! (no listener: its request path is driven directly) and signed calls for it.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use tollgate_core::clock::{Clock, FakeClock};
use tollgate_core::tc3::Signer;
use tollgate_gateway::admission::{Admission, LocalStore};
use tollgate_gateway::metering::NoSink;
use tollgate_gateway::metrics::Metrics;
use tollgate_gateway::proxy::Gateway;
use tollgate_gateway::settings::Settings;

/// The demo accounts' credentials (config/credentials.toml).
pub const MAIN: (&str, &str) = (
    "AKIDTollgateDemoMain000000000000001",
    "TollgateDemoMainSecretKey0000001",
);
pub const SUB_A: (&str, &str) = (
    "AKIDTollgateDemoSubA000000000000002",
    "TollgateDemoSubASecretKey0000002",
);
pub const QPS_MODE: (&str, &str) = (
    "AKIDTollgateDemoQpsMode00000000010",
    "TollgateDemoQpsModeSecretKey0010",
);

/// The gateway of `tollgate demo` (embedded settings and files), on a fake clock, metering
/// nowhere.
pub fn demo_gateway(clock: Arc<FakeClock>) -> Arc<Gateway> {
    let settings = Arc::new(Settings::embedded());
    let loaded = tollgate_core::config::load(&settings.sources).expect("embedded config");
    let admission = Admission::new(Arc::new(LocalStore::new()), settings.burst_millis);
    Gateway::new(
        settings,
        loaded,
        admission,
        clock as Arc<dyn Clock>,
        Arc::new(NoSink),
        Arc::new(Metrics::new()),
    )
}

/// A `POST /` of `action` on `service`, signed as the SDK signs it at `unix_seconds`.
pub fn signed_call(
    credential: (&str, &str),
    service: &str,
    action: &str,
    body: &Bytes,
    unix_seconds: i64,
) -> Parts {
    let host = "127.0.0.1:18080";
    let authorization = Signer {
        secret_id: credential.0,
        secret_key: credential.1,
        service,
        host,
        content_type: "application/json",
        method: "POST",
        query: b"",
        payload: body,
        timestamp: unix_seconds,
    }
    .authorization();
    let (parts, ()) = http::Request::post("/")
        .header("host", host)
        .header("content-type", "application/json")
        .header("x-tc-action", action)
        .header("x-tc-version", "2018-11-19")
        .header("x-tc-timestamp", unix_seconds.to_string())
        .header("x-tc-region", "ap-guangzhou")
        .header("authorization", authorization)
        .header("content-length", body.len().to_string())
        .body(())
        .expect("a valid request")
        .into_parts();
    parts
}
