//! Every shipped scenario parses and resolves against the demo config the way its comments
//! say: the groups, limits and refusals it is meant to exercise.

use std::path::{Path, PathBuf};

use tollgate_loadtest::plan::{self, Expected, GatewayConfig, Overrides, Plan};
use tollgate_loadtest::scenario::{Load, Scenario};

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn plan_of(name: &str) -> Plan {
    let s = Scenario::load(&scenario_dir().join(format!("{name}.toml"))).unwrap();
    assert_eq!(s.name, name);
    assert!(!s.description.is_empty(), "{name} has no description");
    plan::resolve(
        &s,
        &GatewayConfig::embedded().unwrap(),
        Overrides::default(),
    )
    .unwrap()
}

fn expected_of<'a>(p: &'a Plan, account: &str, group: &str) -> &'a Expected {
    &p.groups
        .iter()
        .find(|g| g.account == account && g.group == group)
        .unwrap_or_else(|| panic!("no group {account} {group} in {}", p.scenario))
        .expected
}

#[test]
fn every_scenario_file_resolves_against_the_demo_config() {
    let mut names = vec![];
    for entry in std::fs::read_dir(scenario_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap();
            plan::resolve(
                &s,
                &GatewayConfig::embedded().unwrap(),
                Overrides::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            names.push(s.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "generator-capacity",
            "many-tenants",
            "mixed-production",
            "overload-one-group",
            "slow-concurrency"
        ]
    );
}

#[test]
fn overload_one_group_offers_ten_times_the_quota() {
    let p = plan_of("overload-one-group");
    assert_eq!(p.groups.len(), 1);
    assert_eq!(p.groups[0].expected, Expected::Rate { qps: 20, burst: 20 });
    assert_eq!(p.streams[0].load, Load::Open { rate: 200.0 });
}

#[test]
fn many_tenants_covers_sub_accounts_overlays_modes_and_refusals() {
    let p = plan_of("many-tenants");
    let rate = |qps| Expected::Rate { qps, burst: qps };
    assert_eq!(
        expected_of(&p, "demo-main", "ocr.GeneralBasicOCR"),
        &rate(20)
    );
    assert_eq!(
        expected_of(&p, "demo-sub-a", "ocr.GeneralBasicOCR"),
        &rate(20)
    );
    assert_eq!(
        expected_of(&p, "demo-sub-b", "ocr.GeneralBasicOCR"),
        &rate(20)
    );
    assert_eq!(
        expected_of(&p, "demo-qps-mode", "ocr.GeneralBasicOCR"),
        &rate(100)
    );
    assert_eq!(expected_of(&p, "demo-qps-mode", "bda.segment"), &rate(30));
    for (account, code) in [
        ("demo-arrears", "ResourceUnavailable.InArrears"),
        ("demo-not-activated", "FailedOperation.UnOpenError"),
        (
            "demo-packs-exhausted",
            "ResourceUnavailable.ResourcePackageRunOut",
        ),
    ] {
        assert_eq!(
            expected_of(&p, account, "ocr.GeneralBasicOCR"),
            &Expected::Refused { code: code.into() },
            "{account}"
        );
    }
    assert_eq!(
        expected_of(&p, "demo-packs-exhausted", "ocr.IDCardOCR"),
        &rate(20)
    );
}

#[test]
fn slow_concurrency_targets_the_ten_in_flight_group() {
    let p = plan_of("slow-concurrency");
    for g in &p.groups {
        assert_eq!(g.group, "facefusion.fuse_ultra");
        assert_eq!(g.expected, Expected::Concurrency { max_in_flight: 10 });
    }
    assert!(
        p.streams
            .iter()
            .all(|s| s.headers.iter().any(|(k, _)| k == "x-stub-latency-ms"))
    );
    assert!(
        p.streams
            .iter()
            .any(|s| matches!(s.load, Load::Closed { workers: 8 }))
    );
}

#[test]
fn mixed_production_spreads_its_rate_over_ocr_face_fusion_and_segmentation() {
    let p = plan_of("mixed-production");
    let total: f64 = p
        .streams
        .iter()
        .map(|s| match s.load {
            Load::Open { rate } => rate,
            Load::Closed { .. } => 0.0,
        })
        .sum();
    assert!((total - 150.0).abs() < 1e-9, "{total}");
    let services: std::collections::BTreeSet<&str> =
        p.streams.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["bda", "facefusion", "ocr"]
    );
    assert_eq!(
        expected_of(&p, "demo-main", "ocr.GeneralAccurateOCR"),
        &Expected::Rate { qps: 10, burst: 10 }
    );
}
