//! The request classifier: `Authorization` credential scope → service, `X-TC-Action` →
//! interface group, the `Connection` field's tokens, against the embedded catalog.
//!
//! Nothing may panic. An action that classifies as listed is exactly a listed action; one
//! refused as a case variant differs from the listed action only by case; every unlisted
//! action of a service shares that service's one quota key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_core::catalog::{Route, RouteError};
use tollgate_core::config::{Loaded, Sources, load};
use tollgate_gateway::proxy::hop::ConnectionField;

fn loaded() -> &'static Loaded {
    static L: OnceLock<std::sync::Arc<Loaded>> = OnceLock::new();
    L.get_or_init(|| load(&Sources::embedded()).expect("embedded config"))
}

fuzz_target!(|data: &[u8]| {
    let catalog = &loaded().catalog;
    let (head, rest) = data.split_at(data.len().min(1));
    let action = String::from_utf8_lossy(rest);
    if let Ok(auth) = std::str::from_utf8(rest) {
        let _ = tollgate_gateway::auth::parse_authorization(auth);
    }
    let fields = [(&b"connection"[..], rest)];
    let c = ConnectionField::of(fields.iter().copied());
    for t in c.tokens() {
        assert!(c.names(t));
    }
    let service =
        &catalog.services[usize::from(head.first().copied().unwrap_or(0)) % catalog.services.len()];
    match catalog.route(service, &action) {
        Ok(Route::Listed { interface, group }) => {
            assert_eq!(&*interface.action, &*action);
            assert_eq!(interface.group, group.id);
        }
        Ok(Route::Unlisted { key, .. }) => {
            assert_eq!(key, service.unlisted_key);
            assert!(tollgate_core::catalog::is_action_name(&action));
        }
        Err(RouteError::CaseVariant(listed)) => {
            assert!(listed.eq_ignore_ascii_case(&action));
            assert_ne!(&*listed, &*action);
        }
        Err(RouteError::Malformed) => assert!(!tollgate_core::catalog::is_action_name(&action)),
    }
});
