//! The config loader: arbitrary text as each file the gateway reads (`tollgate.toml`, the
//! catalog, the entitlements, the credentials, the stub's settings, the pricing).
//!
//! Nothing may panic: every refusal is a `ConfigError` naming a key. The first byte picks the
//! file; the entitlements and credentials are checked against the embedded catalog and
//! entitlements.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_core::config::{self, Loaded, Source, Sources};

fn loaded() -> &'static Loaded {
    static L: OnceLock<std::sync::Arc<Loaded>> = OnceLock::new();
    L.get_or_init(|| config::load(&Sources::embedded()).expect("embedded config"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let l = loaded();
    let source = Source::File("fuzz.toml".into());
    let check = |e: config::ConfigError| {
        assert!(!e.key.is_empty(), "{e}");
    };
    match which % 6 {
        0 => tollgate_gateway::settings::parse(&source, text)
            .err()
            .map(check),
        1 => config::catalog::load(&source, text).err().map(check),
        2 => config::entitlements::load_entitlements(&source, text, &l.catalog)
            .err()
            .map(check),
        3 => config::entitlements::load_credentials(&source, text, &l.entitlements)
            .err()
            .map(check),
        4 => tollgate_stub::settings::parse(&source, text)
            .err()
            .map(check),
        _ => tollgate_settlement::config::load_prices(&source, text, &l.catalog)
            .err()
            .map(check),
    };
});
