//! Settlement: every worked example of the seeds, tier boundaries, pack order and validity,
//! and a property test of unit conservation.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate};
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tollgate_core::catalog::Catalog;
use tollgate_core::config::Source;
use tollgate_core::entitlement::overlay::{OverlayClass, OverlayPack};
use tollgate_gateway::billing::{self, Outcome, Scanner};
use tollgate_settlement::prices::{Price, PriceBook};
use tollgate_settlement::quote::{self, Term};
use tollgate_settlement::rating::{MonthStatement, PriceSource, rate_month};
use tollgate_settlement::{Month, OwnerBilling, PurchasedPack, UsageCount, statement};

struct World {
    catalog: Catalog,
    book: PriceBook,
}

fn world() -> World {
    let catalog = tollgate_core::catalog::Catalog::embedded();
    let book = tollgate_settlement::config::load_prices(
        &Source::Embedded {
            name: "pricing.toml",
            text: tollgate_settlement::EMBEDDED_PRICING,
        },
        tollgate_settlement::EMBEDDED_PRICING,
        &catalog,
    )
    .unwrap();
    World { catalog, book }
}

fn t(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn month(s: &str) -> Month {
    Month::from_str(s).unwrap()
}

impl World {
    fn usage(&self, item: &str, interface: &str, at: &str, units: u64) -> UsageCount {
        UsageCount {
            item: self
                .catalog
                .item_by_key(item)
                .unwrap_or_else(|| panic!("{item}"))
                .id,
            interface: Arc::from(interface),
            hour_start: t(at).timestamp(),
            first_at_ms: t(at).timestamp() * 1000,
            units,
            unresolved_library: None,
        }
    }

    fn pack(&self, id: &str, item: &str, size: u64, at: &str, paid: Decimal) -> PurchasedPack {
        PurchasedPack {
            id: id.into(),
            item: self.catalog.item_by_key(item).unwrap().id,
            size,
            purchased_at: t(at),
            price_paid: paid,
        }
    }

    fn rate(&self, owner: &OwnerBilling, usage: &[UsageCount], m: &str) -> MonthStatement {
        rate_month(&self.catalog, &self.book, owner, usage, month(m)).unwrap()
    }

    /// The month of one item with `units` calls on the 10th at noon and nothing else.
    fn one_item(
        &self,
        item: &str,
        interface: &str,
        units: u64,
        packs: Vec<PurchasedPack>,
    ) -> MonthStatement {
        let owner = OwnerBilling {
            uin: 1,
            packs,
            ..Default::default()
        };
        self.rate(
            &owner,
            &[self.usage(item, interface, "2026-07-10T12:00:00+08:00", units)],
            "2026-07",
        )
    }
}

fn line<'s>(s: &'s MonthStatement, item: &str) -> &'s tollgate_settlement::rating::ItemLine {
    s.lines
        .iter()
        .find(|l| l.item == item)
        .unwrap_or_else(|| panic!("no line for {item}"))
}

// ------------------------------------------------------------------------ OCR worked examples

/// 预付费示例一: 300,000 ID-card calls in a year → 3 packs of 100,000 at the example's 3,500.
#[test]
fn ocr_prepaid_example_1() {
    let w = world();
    let q = quote::prepaid(
        &w.book,
        &w.catalog,
        "ocr.id_card",
        100_000,
        3,
        Some(dec!(3500)),
    )
    .unwrap();
    assert_eq!(q.amount, dec!(10500));
}

/// 预付费示例二: 2,500 bank-card calls, one 1,000 pack bought at 84 → (2500−1000−1000)×0.15+84 = 159.
#[test]
fn ocr_prepaid_example_2() {
    let w = world();
    let pack = w.pack(
        "p1",
        "ocr.bank_card",
        1000,
        "2026-07-01T09:00:00+08:00",
        dec!(84),
    );
    let s = w.one_item("ocr.bank_card", "BankCardOCR", 2500, vec![pack]);
    let l = line(&s, "ocr.bank_card");
    assert_eq!(
        (l.free_units, l.prepaid_units, l.postpaid_units),
        (1000, 1000, 500)
    );
    assert_eq!(l.unit_price, Some(dec!(0.15)));
    assert_eq!(l.amount, Some(dec!(75.00)));
    assert_eq!(s.purchases_total, dec!(84));
    assert_eq!(s.total, dec!(159.00));
}

/// 后付费示例一至四.
#[test]
fn ocr_postpaid_examples() {
    let w = world();
    for (item, action, calls, total) in [
        ("ocr.id_card", "IDCardOCR", 900, dec!(0)),
        ("ocr.driving_license", "DriverLicenseOCR", 9_000, dec!(1200)),
        ("ocr.general_basic", "GeneralBasicOCR", 90_000, dec!(8900)),
        ("ocr.bank_card", "BankCardOCR", 900_000, dec!(53940)),
    ] {
        let s = w.one_item(item, action, calls, vec![]);
        assert_eq!(s.total, total, "{item} with {calls} calls");
        assert_eq!(line(&s, item).postpaid_units, calls.saturating_sub(1000));
    }
}

/// QPS 叠加包示例一: ID card (class A) to 100 QPS for Jul 1–5: 80 more at 13/QPS/day = 5,200.
#[test]
fn ocr_qps_overlay_example() {
    let w = world();
    let term = Term::Days {
        start: NaiveDate::from_ymd_opt(2026, 7, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2026, 7, 5).unwrap(),
    };
    let q = quote::overlay(
        &w.book,
        &w.catalog,
        "ocr.IDCardOCR",
        80,
        term,
        t("2026-06-20T10:00:00+08:00"),
        &[],
    )
    .unwrap();
    assert_eq!(
        (q.unit_price, q.periods, q.amount),
        (dec!(13), 5, dec!(5200))
    );
    // The quote refuses what the gateway would refuse: the cap check is the same code.
    let held = [OverlayPack {
        qps: 50,
        start: NaiveDate::from_ymd_opt(2026, 7, 3).unwrap(),
        end: NaiveDate::from_ymd_opt(2026, 7, 4).unwrap(),
        purchased_at: t("2026-06-01T10:00:00+08:00"),
    }];
    let e = quote::overlay(
        &w.book,
        &w.catalog,
        "ocr.IDCardOCR",
        80,
        term,
        t("2026-06-20T10:00:00+08:00"),
        &held,
    )
    .unwrap_err();
    assert!(e.to_string().contains("exceeded on 2026-07-03"), "{e}");
    // Monthly: 10 QPS of class C for 2 months at 1,120/QPS/month.
    let monthly = Term::Months {
        start: NaiveDate::from_ymd_opt(2026, 8, 1).unwrap(),
        months: 2,
    };
    let q = quote::overlay(
        &w.book,
        &w.catalog,
        "ocr.VatInvoiceOCR",
        10,
        monthly,
        t("2026-07-20T10:00:00+08:00"),
        &[],
    )
    .unwrap();
    assert_eq!(q.amount, dec!(22400));
}

/// 混贴票据 examples: units per 大票/小票 from the recognised invoices of each call.
#[test]
fn mixed_invoice_examples() {
    let w = world();
    let units_of = |bodies: &[&str]| {
        let svc = w.catalog.service_by_name("ocr").unwrap();
        let rule = Some(
            w.catalog
                .interface_by_name("ocr.MixedInvoiceOCR")
                .unwrap()
                .units,
        );
        let (mut big, mut small) = (0, 0);
        for body in bodies {
            let mut s = Scanner::new();
            s.feed(body.as_bytes());
            let Outcome::Billable(units) = billing::decide(&w.catalog, svc, rule, 200, &s.finish())
            else {
                panic!("billable")
            };
            for (item, n) in units.iter() {
                match &*w.catalog.item(item).key {
                    "ocr.invoice_big" => big += n,
                    "ocr.invoice_small" => small += n,
                    other => panic!("{other}"),
                }
            }
        }
        (big, small)
    };
    let items = |types: &[i64]| {
        let items: Vec<String> = types
            .iter()
            .map(|t| format!(r#"{{"Code":"OK","Type":{t}}}"#))
            .collect();
        format!(
            r#"{{"Response":{{"MixedInvoiceItems":[{}],"RequestId":"r"}}}}"#,
            items.join(",")
        )
    };
    // 示例1: one call, a VAT invoice, a machine-printed invoice and a train ticket.
    assert_eq!(units_of(&[&items(&[3, 8, 2])]), (1, 2));
    // 示例2: ten calls, in all 5 VAT invoices, 2 vehicle-purchase invoices and 9 bus tickets.
    let calls: Vec<String> = vec![
        items(&[3, 3, 9]),
        items(&[3, 9, 9]),
        items(&[12, 9]),
        items(&[3]),
        items(&[12, 9, 9]),
        items(&[3, 9]),
        items(&[9]),
        items(&[9]),
        items(&[]),
        items(&[]),
    ];
    let refs: Vec<&str> = calls.iter().map(String::as_str).collect();
    assert_eq!(units_of(&refs), (7, 9));
}

// ---------------------------------------------------------------- face fusion worked examples

/// 调用次数（资源包）示例一: 3 packs of 100,000 and 2 packs of 10 materials = 30,800.
#[test]
fn face_fusion_prepaid_example_1() {
    let w = world();
    let quotes = [
        quote::prepaid(&w.book, &w.catalog, "facefusion.fuse", 100_000, 3, None).unwrap(),
        quote::prepaid(&w.book, &w.catalog, "facefusion.material", 10, 2, None).unwrap(),
    ];
    assert_eq!(quote::total(&quotes), dec!(30800));
}

/// 调用次数（资源包）示例二: 15,000 calls, one 10,000 pack → 1,500 + (15,000−10,000−1,000)×0.24 = 2,460.
#[test]
fn face_fusion_prepaid_example_2() {
    let w = world();
    let pack = w.pack(
        "ff-10k",
        "facefusion.fuse",
        10_000,
        "2026-07-01T08:00:00+08:00",
        dec!(1500),
    );
    let s = w.one_item("facefusion.fuse", "FuseFace", 15_000, vec![pack]);
    let l = line(&s, "facefusion.fuse");
    assert_eq!(
        (l.free_units, l.prepaid_units, l.postpaid_units),
        (1000, 10_000, 4000)
    );
    assert_eq!(l.amount, Some(dec!(960.00)));
    assert_eq!(s.total, dec!(2460.00));
}

/// 调用次数（后付费）示例一至三.
#[test]
fn face_fusion_postpaid_examples() {
    let w = world();
    for (calls, total) in [
        (500, dec!(0)),
        (90_000, dec!(16020)),
        (20_000_000, dec!(399980)),
    ] {
        let s = w.one_item("facefusion.fuse", "FuseFace", calls, vec![]);
        assert_eq!(s.total, total, "{calls} calls");
    }
}

/// QPS 计费示例一 (60 QPS for 12 months + 2 material packs = 1,440,800) and 二 (30 QPS for
/// 5 days = 16,500).
#[test]
fn face_fusion_qps_examples() {
    let w = world();
    let year = Term::Months {
        start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        months: 12,
    };
    let quotes = [
        quote::qps_mode(&w.book, &w.catalog, "facefusion.fuse", 60, year).unwrap(),
        quote::prepaid(&w.book, &w.catalog, "facefusion.material", 10, 2, None).unwrap(),
    ];
    assert_eq!(quote::total(&quotes), dec!(1440800));
    let days = Term::Days {
        start: NaiveDate::from_ymd_opt(2026, 7, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2026, 7, 5).unwrap(),
    };
    assert_eq!(
        quote::qps_mode(&w.book, &w.catalog, "facefusion.fuse", 30, days)
            .unwrap()
            .amount,
        dec!(16500)
    );
    // At most 300 QPS per group.
    assert!(quote::qps_mode(&w.book, &w.catalog, "facefusion.fuse", 301, days).is_err());
    // Concurrency tasks: 12,000 per task per month, not sold by the day.
    let three_months = Term::Months {
        start: NaiveDate::from_ymd_opt(2026, 7, 1).unwrap(),
        months: 3,
    };
    assert_eq!(
        quote::concurrency(
            &w.book,
            &w.catalog,
            "facefusion.fuse_ultra",
            2,
            three_months
        )
        .unwrap()
        .amount,
        dec!(72000)
    );
    assert!(quote::concurrency(&w.book, &w.catalog, "facefusion.fuse_ultra", 2, days).is_err());
    // Portrait segmentation QPS: 10 QPS is in the 10 ≤ QPS < 50 tier.
    assert_eq!(
        quote::qps_mode(&w.book, &w.catalog, "bda.segment", 10, three_months)
            .unwrap()
            .amount,
        dec!(23400)
    );
}

// ------------------------------------------------------------------------- tier boundaries

/// Postpaid volume on both sides of every boundary, as each table writes it: the unit price
/// the month is charged at (None: 联系商务).
#[test]
fn tier_boundaries_of_every_product() {
    let w = world();
    /// (billing item, interface, [(postpaid volume, unit price reached)]).
    type Case<'a> = (&'a str, &'a str, &'a [(u64, Option<Decimal>)]);
    let cases: &[Case] = &[
        // OCR: 0 ≤ n < 1万 | 1万 ≤ n < 10万 | 10万 ≤ n < 100万 | 100万及以上 (联系商务)
        (
            "ocr.general_basic",
            "GeneralBasicOCR",
            &[
                (9_999, Some(dec!(0.15))),
                (10_000, Some(dec!(0.10))),
                (99_999, Some(dec!(0.10))),
                (100_000, Some(dec!(0.06))),
                (999_999, Some(dec!(0.06))),
                (1_000_000, None),
            ],
        ),
        (
            "ocr.image_text_basic",
            "QrcodeOCR",
            &[
                (9_999, Some(dec!(0.12))),
                (10_000, Some(dec!(0.09))),
                (99_999, Some(dec!(0.09))),
                (100_000, Some(dec!(0.06))),
                (999_999, Some(dec!(0.06))),
                (1_000_000, Some(dec!(0.03))),
            ],
        ),
        (
            "ocr.medical_invoice",
            "RecognizeMedicalInvoiceOCR",
            &[(999_999, Some(dec!(0.6))), (1_000_000, None)],
        ),
        (
            "ocr.card_warn",
            "RecognizeGeneralCardWarn",
            &[(1, Some(dec!(0.08))), (5_000_000, Some(dec!(0.08)))],
        ),
        // Face fusion: 0 ≤ n < 1万 | … | 100万 ≤ n < 1000万 | ≥ 1000万
        (
            "facefusion.fuse",
            "FuseFace",
            &[
                (9_999, Some(dec!(0.24))),
                (10_000, Some(dec!(0.18))),
                (99_999, Some(dec!(0.18))),
                (100_000, Some(dec!(0.12))),
                (999_999, Some(dec!(0.12))),
                (1_000_000, Some(dec!(0.08))),
                (9_999_999, Some(dec!(0.08))),
                (10_000_000, Some(dec!(0.02))),
            ],
        ),
        (
            "facefusion.fuse_pro",
            "FuseFaceUltra",
            &[
                (9_999, Some(dec!(0.60))),
                (10_000, Some(dec!(0.48))),
                (100_000, Some(dec!(0.42))),
                (1_000_000, Some(dec!(0.36))),
                (10_000_000, Some(dec!(0.30))),
            ],
        ),
        // Portrait transformation: 0 < n ≤ 1万 | 1万 < n ≤ 10万 | 10万 < n ≤ 100万 | > 100万
        (
            "ft.swap_gender",
            "SwapGenderPic",
            &[
                (10_000, Some(dec!(0.03))),
                (10_001, Some(dec!(0.025))),
                (100_000, Some(dec!(0.025))),
                (100_001, Some(dec!(0.021))),
                (1_000_000, Some(dec!(0.021))),
                (1_000_001, Some(dec!(0.018))),
            ],
        ),
        (
            "ft.morph",
            "MorphFace",
            &[
                (10_000, Some(dec!(0.098))),
                (10_001, Some(dec!(0.088))),
                (1_000_001, Some(dec!(0.072))),
            ],
        ),
        // Portrait segmentation: 0 < n < 1万 | 1万 ≤ n < 10万 | 10万 ≤ n < 100万 | ≥ 100万
        (
            "bda.segment",
            "SegmentPortraitPic",
            &[
                (9_999, Some(dec!(0.01))),
                (10_000, Some(dec!(0.009))),
                (99_999, Some(dec!(0.009))),
                (100_000, Some(dec!(0.008))),
                (999_999, Some(dec!(0.008))),
                (1_000_000, Some(dec!(0.007))),
            ],
        ),
        // Image analysis, per 1,000 calls: 0-1000千 (不含) | 1000千-3000千 (不含) | 3000千-15000千 (不含) | 15000千以上
        (
            "tiia.label_pro",
            "DetectLabelPro",
            &[
                (999_999, Some(dec!(3))),
                (1_000_000, Some(dec!(2.8))),
                (2_999_999, Some(dec!(2.8))),
                (3_000_000, Some(dec!(2.5))),
                (14_999_999, Some(dec!(2.5))),
                (15_000_000, Some(dec!(2))),
            ],
        ),
        (
            "tiia.envelope",
            "DetectEnvelope",
            &[
                (2_999_999, Some(dec!(7))),
                (3_000_000, Some(dec!(6.5))),
                (9_999_999, Some(dec!(6.5))),
                (10_000_000, Some(dec!(6))),
                (14_999_999, Some(dec!(6))),
                (15_000_000, Some(dec!(5.5))),
            ],
        ),
    ];
    for (item, action, points) in cases {
        let free = w
            .book
            .free_packs
            .iter()
            .filter(|f| f.covers.contains(&w.catalog.item_by_key(item).unwrap().id))
            .map(|f| f.quantity)
            .sum::<u64>();
        for (postpaid, price) in *points {
            let s = w.one_item(item, action, postpaid + free, vec![]);
            let l = line(&s, item);
            assert_eq!(l.postpaid_units, *postpaid, "{item}");
            assert_eq!(
                l.unit_price, *price,
                "{item} at a postpaid volume of {postpaid}"
            );
            match price {
                Some(p) => {
                    let per = if l.price_unit == "per call" {
                        dec!(1)
                    } else {
                        dec!(1000)
                    };
                    // Statements round half away from zero (四舍五入): 10,001 × 0.025 = 250.03.
                    let want = (Decimal::from(*postpaid) * p / per).round_dp_with_strategy(
                        2,
                        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                    );
                    assert_eq!(l.amount, Some(want), "{item} {postpaid}");
                }
                None => {
                    assert_eq!(l.price_source, PriceSource::ContractPriceRequired);
                    assert_eq!(l.amount, None);
                    assert!(s.contract_price_required.contains(&item.to_string()));
                }
            }
        }
    }
}

#[test]
fn a_contract_price_replaces_contact_sales() {
    let w = world();
    let mut owner = OwnerBilling {
        uin: 1,
        ..Default::default()
    };
    let item = w.catalog.item_by_key("ocr.general_basic").unwrap().id;
    owner.contract_prices.insert(item, dec!(0.045));
    let s = w.rate(
        &owner,
        &[w.usage(
            "ocr.general_basic",
            "GeneralBasicOCR",
            "2026-07-10T12:00:00+08:00",
            1_201_000,
        )],
        "2026-07",
    );
    let l = line(&s, "ocr.general_basic");
    assert_eq!(l.price_source, PriceSource::Contract);
    assert_eq!(l.amount, Some(dec!(54000.00)));
    assert!(s.contract_price_required.is_empty());
}

// ------------------------------------------------------------------------------------ packs

#[test]
fn two_prepaid_packs_are_consumed_in_purchase_order() {
    let w = world();
    let owner = OwnerBilling {
        uin: 1,
        packs: vec![
            w.pack(
                "later",
                "ocr.general_basic",
                1000,
                "2026-06-10T10:00:00+08:00",
                dec!(120),
            ),
            w.pack(
                "earlier",
                "ocr.general_basic",
                1000,
                "2026-06-05T10:00:00+08:00",
                dec!(120),
            ),
        ],
        ..Default::default()
    };
    let s = w.rate(
        &owner,
        &[w.usage(
            "ocr.general_basic",
            "GeneralBasicOCR",
            "2026-07-03T12:00:00+08:00",
            2500,
        )],
        "2026-07",
    );
    let l = line(&s, "ocr.general_basic");
    let draws: Vec<(&str, u64)> = l
        .covered
        .iter()
        .map(|d| (d.pack.as_str(), d.units))
        .collect();
    assert_eq!(
        draws,
        vec![
            ("ocr.general_basic.monthly@2026-07", 1000),
            ("earlier", 1000),
            ("later", 500)
        ]
    );
    let later = s.balances.iter().find(|b| b.pack == "later").unwrap();
    assert_eq!(later.remaining, 500);
    assert!(
        s.events
            .iter()
            .any(|e| e.pack == "earlier" && format!("{:?}", e.kind) == "Exhausted")
    );
    // Bought in June: not a purchase of July.
    assert!(s.purchases.is_empty());
}

#[test]
fn a_pack_expiring_mid_month_covers_only_until_it_expires() {
    let w = world();
    // Bought 2025-03-15 10:00: valid until 24:00 of 2026-03-15.
    let owner = OwnerBilling {
        uin: 1,
        packs: vec![w.pack(
            "p",
            "ocr.general_basic",
            10_000,
            "2025-03-15T10:00:00+08:00",
            dec!(800),
        )],
        ..Default::default()
    };
    let usage = [
        w.usage(
            "ocr.general_basic",
            "GeneralBasicOCR",
            "2026-03-15T23:00:00+08:00",
            3000,
        ),
        w.usage(
            "ocr.general_basic",
            "GeneralBasicOCR",
            "2026-03-16T00:00:00+08:00",
            3000,
        ),
    ];
    let s = w.rate(&owner, &usage, "2026-03");
    let l = line(&s, "ocr.general_basic");
    assert_eq!(
        (l.free_units, l.prepaid_units, l.postpaid_units),
        (1000, 2000, 3000)
    );
    assert!(
        !s.balances.iter().any(|b| b.pack == "p"),
        "expired packs have no balance"
    );
}

#[test]
fn a_monthly_free_pack_does_not_carry_over() {
    let w = world();
    let owner = OwnerBilling {
        uin: 1,
        ..Default::default()
    };
    let usage = [
        w.usage(
            "ocr.general_basic",
            "GeneralBasicOCR",
            "2026-06-10T12:00:00+08:00",
            300,
        ),
        w.usage(
            "ocr.general_basic",
            "GeneralBasicOCR",
            "2026-07-10T12:00:00+08:00",
            1500,
        ),
    ];
    let june = w.rate(&owner, &usage, "2026-06");
    assert_eq!(line(&june, "ocr.general_basic").postpaid_units, 0);
    let july = w.rate(&owner, &usage, "2026-07");
    let l = line(&july, "ocr.general_basic");
    assert_eq!((l.free_units, l.postpaid_units), (1000, 500));
    assert_eq!(july.total, dec!(75.00));
}

#[test]
fn a_shared_billing_item_is_drawn_by_two_interfaces() {
    let w = world();
    let owner = OwnerBilling {
        uin: 1,
        ..Default::default()
    };
    let usage = [
        w.usage(
            "ocr.driving_license",
            "DriverLicenseOCR",
            "2026-07-01T12:00:00+08:00",
            600,
        ),
        w.usage(
            "ocr.driving_license",
            "VehicleLicenseOCR",
            "2026-07-02T12:00:00+08:00",
            700,
        ),
    ];
    let s = w.rate(&owner, &usage, "2026-07");
    let l = line(&s, "ocr.driving_license");
    assert_eq!((l.usage, l.free_units, l.postpaid_units), (1300, 1000, 300));
    assert_eq!(l.by_interface["DriverLicenseOCR"], 600);
    assert_eq!(l.by_interface["VehicleLicenseOCR"], 700);
    // A free pack shared by two billing items (通用图像标签 + 图像标签) is drawn in time order.
    let usage = [
        w.usage(
            "tiia.label_pro",
            "DetectLabelPro",
            "2026-07-01T12:00:00+08:00",
            6000,
        ),
        w.usage(
            "tiia.label",
            "DetectLabel",
            "2026-07-02T12:00:00+08:00",
            6000,
        ),
    ];
    let s = w.rate(&owner, &usage, "2026-07");
    assert_eq!(line(&s, "tiia.label_pro").free_units, 6000);
    assert_eq!(line(&s, "tiia.label").free_units, 4000);
    assert_eq!(line(&s, "tiia.label").postpaid_units, 2000);
}

#[test]
fn one_time_free_packs_carry_over_and_expire() {
    let w = world();
    let owner = OwnerBilling {
        uin: 1,
        activations: [(
            w.catalog.service_by_name("ocr").unwrap().id,
            t("2026-01-15T10:00:00+08:00"),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let usage = [
        w.usage(
            "ocr.formula",
            "RecognizeFormulaOCR",
            "2026-01-20T12:00:00+08:00",
            600,
        ),
        w.usage(
            "ocr.formula",
            "RecognizeFormulaOCR",
            "2026-02-20T12:00:00+08:00",
            600,
        ),
        w.usage(
            "ocr.formula",
            "RecognizeFormulaOCR",
            "2027-01-20T12:00:00+08:00",
            100,
        ),
    ];
    let feb = w.rate(&owner, &usage, "2026-02");
    let l = line(&feb, "ocr.formula");
    assert_eq!((l.free_units, l.postpaid_units), (400, 200));
    assert_eq!(l.amount, Some(dec!(20.00)));
    // A year after activation the one-time pack is gone (it was used up anyway); the 50-call
    // VAT-verification pack lasts five years.
    let next_year = w.rate(&owner, &usage, "2027-01");
    assert_eq!(line(&next_year, "ocr.formula").postpaid_units, 100);
    let verify = [w.usage(
        "ocr.vat_verify",
        "VatInvoiceVerifyNew",
        "2030-12-20T12:00:00+08:00",
        60,
    )];
    let s = w.rate(&owner, &verify, "2030-12");
    assert_eq!(line(&s, "ocr.vat_verify").free_units, 50);
    let s = w.rate(
        &owner,
        &[w.usage(
            "ocr.vat_verify",
            "VatInvoiceVerifyNew",
            "2031-01-20T12:00:00+08:00",
            60,
        )],
        "2031-01",
    );
    assert_eq!(line(&s, "ocr.vat_verify").free_units, 0);
}

#[test]
fn statements_render_for_people_and_machines() {
    let w = world();
    let pack = w.pack(
        "p1",
        "ocr.bank_card",
        1000,
        "2026-07-01T09:00:00+08:00",
        dec!(84),
    );
    let s = w.one_item("ocr.bank_card", "BankCardOCR", 2500, vec![pack]);
    let table = statement::to_table(&s);
    assert!(
        table.contains("ocr.bank_card") && table.contains("Total 159.00"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&statement::to_json(&s)).unwrap();
    assert_eq!(json["total"], "159.00");
    assert_eq!(json["lines"][0]["amount"], "75.00");
    let csv = statement::to_csv(&s);
    assert!(
        csv.lines()
            .any(|l| l.starts_with("1,2026-07,item,ocr.bank_card,") && l.ends_with(",75.00,0")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l == "1,2026-07,total,,,,,,,,,,,159.00,0"),
        "{csv}"
    );
}

// ------------------------------------------------------------- the catalog against the seeds

/// Rows copied verbatim from the seeds; the price book must say the same.
#[test]
fn the_price_book_matches_the_seed_tables() {
    let w = world();
    let prepaid_rows = [
        // 003 (OCR) 预付费: 1000次 1万次 10万次 100万次 1000万次
        (
            "ocr.general_basic",
            "通用印刷体识别	通用印刷体识别	120元	800元	5000元	30000元	200000元",
        ),
        (
            "ocr.medical_invoice",
            "医疗票据识别	医疗票据识别	450元	4000元	30000元	250000元	2000000元",
        ),
        (
            "ocr.formula",
            "公式识别	公式识别	84元	720元	6000元	50000元	400000元",
        ),
        (
            "ocr.vat_verify",
            "增值税发票核验 (新版)	增值税发票核验	280元	2600元	24000元	220000元	联系商务",
        ),
        // 004 (face fusion)
        (
            "facefusion.fuse_pro",
            "图片人脸融合（专业版）相关接口 500元 4000元 35000元 300000元 2500000元",
        ),
        // 001 (portrait transformation): 1千次 1万次 10万次 100万次 1000万次
        (
            "ft.cartoon",
            "人像动漫化	90元	720元	6480元	58500元	522000元",
        ),
    ];
    let sizes = [1000u64, 10_000, 100_000, 1_000_000, 10_000_000];
    for (item, row) in prepaid_rows {
        let cells: Vec<Option<Decimal>> = row
            .split(['\t', ' '])
            .filter(|c| c.ends_with('元') || *c == "联系商务")
            .map(|c| c.strip_suffix('元').map(|n| Decimal::from_str(n).unwrap()))
            .collect();
        let offers = &w.book.prepaid[&w.catalog.item_by_key(item).unwrap().id];
        for (size, cell) in sizes.iter().zip(cells) {
            let offer = offers.iter().find(|o| o.size == *size).unwrap();
            let want = cell.map_or(Price::ContactSales, Price::List);
            assert_eq!(offer.price, want, "{item} {size}");
        }
    }
    let postpaid_rows = [
        (
            "ocr.general_accurate",
            "通用印刷体识别（高精度版）	通用印刷体识别（高精度版）	0.50元/次	0.35元/次	0.20元/次	联系商务",
        ),
        (
            "ocr.invoice_small",
            "完税证明识别	通用票据识别（小票）	0.10元/次	0.07元/次	0.04元/次	联系商务",
        ),
        (
            "ocr.image_text_basic",
            "智能扫码	二维码和条形码识别	图片文字识别 (基础版)	0.12元/次	0.09元/次	0.06元/次	0.03元/次",
        ),
        (
            "ft.morph",
            "人像渐变	0.098元/次	0.088元/次	0.078元/次	0.072元/次",
        ),
        (
            "bda.segment",
            "人像分割计费标准	0.01元/次	0.009元/次	0.008元/次	0.007元/次",
        ),
        (
            "facefusion.fuse",
            "0.24元/次 0.18元/次 0.12元/次 0.08元/次 0.02元/次",
        ),
        ("tiia.car_pro", "75元/千次 45元/千次 35元/千次 30元/千次"),
    ];
    for (item, row) in postpaid_rows {
        let cells: Vec<Price> = row
            .split(['\t', ' '])
            .filter(|c| c.contains("元/") || *c == "联系商务")
            .map(|c| match c.split_once('元') {
                Some((n, _)) => Price::List(Decimal::from_str(n).unwrap()),
                None => Price::ContactSales,
            })
            .collect();
        let table = &w.book.postpaid[&w.catalog.item_by_key(item).unwrap().id];
        let got: Vec<Price> = table.tiers.iter().map(|t| t.price).collect();
        assert_eq!(got, cells, "{item}");
    }
    // QPS 叠加包 C类: 0<=QPS<10 60元/QPS/日 1200元/QPS/月, 10<=QPS<100 55/1120, QPS>=100 48/960.
    let c = &w.book.overlay[&OverlayClass::C];
    let got: Vec<_> = c
        .tiers
        .iter()
        .map(|t| (t.up_to, t.per_day, t.per_month))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(10), Some(dec!(60)), Some(dec!(1200))),
            (Some(100), Some(dec!(55)), Some(dec!(1120))),
            (None, Some(dec!(48)), Some(dec!(960)))
        ]
    );
    // Every interface that bills per call has a postpaid table.
    for f in &w.catalog.interfaces {
        if let tollgate_core::catalog::UnitRule::PerCall(item) = f.units {
            assert!(
                w.book.postpaid.contains_key(&item),
                "{} has no postpaid prices",
                w.catalog.item(item).key
            );
        }
    }
}

// ------------------------------------------------------------------------- property

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For random usage and packs: free + prepaid + postpaid = usage for every item in every
    /// month, and no pack ever covers more than its size across all months.
    #[test]
    fn units_are_conserved_and_no_pack_goes_negative(
        usage in prop::collection::vec((0usize..4, 0i64..(90 * 24), 1u64..4000), 1..60),
        packs in prop::collection::vec((0usize..4, 0i64..(90 * 24), prop::sample::select(vec![1000u64, 10_000])), 0..5),
    ) {
        let w = world();
        let items = ["ocr.general_basic", "ocr.driving_license", "ocr.formula", "tiia.label"];
        let actions = ["GeneralBasicOCR", "DriverLicenseOCR", "RecognizeFormulaOCR", "DetectLabel"];
        let start = t("2026-05-01T00:00:00+08:00").timestamp();
        let usage: Vec<UsageCount> = usage
            .iter()
            .map(|(i, h, n)| UsageCount {
                item: w.catalog.item_by_key(items[*i]).unwrap().id,
                interface: Arc::from(actions[*i]),
                hour_start: start + h * 3600,
                first_at_ms: (start + h * 3600) * 1000,
                units: *n,
                unresolved_library: None,
            })
            .collect();
        let owner = OwnerBilling {
            uin: 1,
            packs: packs
                .iter()
                .enumerate()
                .filter(|(_, (i, _, _))| items[*i] != "tiia.label")
                .map(|(k, (i, h, size))| PurchasedPack {
                    id: format!("p{k}"),
                    item: w.catalog.item_by_key(items[*i]).unwrap().id,
                    size: *size,
                    purchased_at: DateTime::from_timestamp(start + h * 3600, 0).unwrap().with_timezone(&tollgate_core::clock::beijing()),
                    price_paid: dec!(1),
                })
                .collect(),
            ..Default::default()
        };
        let mut drawn: std::collections::HashMap<String, u64> = Default::default();
        for m in ["2026-05", "2026-06", "2026-07"] {
            let s = w.rate(&owner, &usage, m);
            let mut total_usage = 0;
            for l in &s.lines {
                prop_assert_eq!(l.free_units + l.prepaid_units + l.postpaid_units, l.usage, "{}", l.item);
                prop_assert_eq!(l.by_interface.values().sum::<u64>(), l.usage);
                total_usage += l.usage;
                for d in &l.covered {
                    *drawn.entry(d.pack.clone()).or_default() += d.units;
                }
                prop_assert!(l.amount.is_none_or(|a| a >= Decimal::ZERO));
            }
            let month = Month::from_str(m).unwrap();
            let expected: u64 = usage.iter().filter(|u| u.hour_start >= month.start() && u.hour_start < month.end()).map(|u| u.units).sum();
            prop_assert_eq!(total_usage, expected);
        }
        for p in &owner.packs {
            prop_assert!(drawn.get(&p.id).copied().unwrap_or(0) <= p.size, "{} over-drawn", p.id);
        }
        for (pack, n) in &drawn {
            if let Some(def) = w.book.free_packs.iter().find(|f| pack.starts_with(&format!("{}@", f.id)) || *pack == f.id) {
                prop_assert!(*n <= def.quantity, "{} over-drawn", pack);
            }
        }
    }
}
