//! Rendering a [`MonthStatement`]: a table for people, JSON and CSV for machines.

use std::fmt::Write;

use super::rating::{MonthStatement, PackKind, PriceSource};

/// A readable, itemised statement.
pub fn to_table(s: &MonthStatement) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Statement for owner {} — {} (Beijing time), CNY",
        s.owner_uin, s.month
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<30} {:>10} {:>9} {:>9} {:>10}  {:<28} {:>18} {:>12}",
        "billing item",
        "usage",
        "free",
        "prepaid",
        "postpaid",
        "tier reached",
        "unit price",
        "amount"
    );
    for l in &s.lines {
        let price = match (l.unit_price, l.price_source) {
            (Some(p), PriceSource::Contract) => format!("{p} {} (contract)", short(l.price_unit)),
            (Some(p), _) => format!("{p} {}", short(l.price_unit)),
            (None, PriceSource::ContractPriceRequired) => "联系商务".into(),
            (None, _) => "-".into(),
        };
        let amount = match l.amount {
            Some(a) => format!("{a:.2}"),
            None => "CONTRACT PRICE REQUIRED".into(),
        };
        let _ = writeln!(
            out,
            "{:<30} {:>10} {:>9} {:>9} {:>10}  {:<28} {:>18} {:>12}",
            l.item,
            l.usage,
            l.free_units,
            l.prepaid_units,
            l.postpaid_units,
            l.tier_label.as_deref().unwrap_or("-"),
            price,
            amount
        );
        let _ = writeln!(out, "    {}", l.name);
        if l.overserved_units > 0 {
            let _ = writeln!(
                out,
                "    over-served, not billed (postpaid off, packs used up): {}",
                l.overserved_units
            );
        }
        if l.unresolved_units > 0 {
            let _ = writeln!(
                out,
                "    library type unknown, rated here until it is known: {}",
                l.unresolved_units
            );
        }
        if !l.covered.is_empty() {
            let covered: Vec<String> = l
                .covered
                .iter()
                .map(|d| {
                    let kind = match d.kind {
                        PackKind::Free => "free",
                        PackKind::Prepaid => "prepaid",
                    };
                    format!("{} ({kind}) {}", d.pack, d.units)
                })
                .collect();
            let _ = writeln!(out, "    covered by: {}", covered.join(", "));
        }
        let by: Vec<String> = l
            .by_interface
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "    by interface: {}", by.join(", "));
    }
    if !s.purchases.is_empty() {
        let _ = writeln!(out, "\nPack purchases");
        for p in &s.purchases {
            let _ = writeln!(
                out,
                "  {:<24} {:<30} {:>10}  {}  {:>12.2}",
                p.pack,
                p.item,
                p.size,
                p.purchased_at.format("%Y-%m-%d %H:%M"),
                p.amount
            );
        }
    }
    if !s.balances.is_empty() {
        let _ = writeln!(out, "\nPack balances at the end of the month");
        for b in &s.balances {
            let until = b.valid_until.map_or("never expires".into(), |t| {
                format!("until {}", t.format("%Y-%m-%d %H:%M"))
            });
            let _ = writeln!(
                out,
                "  {:<40} {:>10} of {:<10} {until}",
                b.pack, b.remaining, b.size
            );
        }
    }
    for e in &s.events {
        let _ = writeln!(
            out,
            "  event: {} {:?} at {} ({} left)",
            e.pack,
            e.kind,
            e.at.format("%Y-%m-%d %H:00"),
            e.remaining
        );
    }
    let _ = writeln!(
        out,
        "\nPostpaid {:.2}   Pack purchases {:.2}   Total {:.2}",
        s.postpaid_total, s.purchases_total, s.total
    );
    if s.unresolved_units > 0 {
        let _ = writeln!(
            out,
            "Provisional: {} image-search units went into libraries of unknown type and are rated as same/product search until the type is known.",
            s.unresolved_units
        );
    }
    if !s.contract_price_required.is_empty() {
        let _ = writeln!(
            out,
            "Not included: {} reached a 联系商务 tier and need a contract price.",
            s.contract_price_required.join(", ")
        );
    }
    out
}

fn short(unit: &str) -> &'static str {
    if unit == "per call" {
        "/call"
    } else {
        "/1000 calls"
    }
}

pub fn to_json(s: &MonthStatement) -> String {
    serde_json::to_string_pretty(s).expect("a statement serializes")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One row per billing item, one per pack purchase, one total row.
pub fn to_csv(s: &MonthStatement) -> String {
    let mut out = String::from(
        "owner_uin,month,row,item,name,usage,free_units,prepaid_units,postpaid_units,tier,unit_price,price_unit,price_source,amount,unresolved_units\n",
    );
    for l in &s.lines {
        let source = match l.price_source {
            PriceSource::List => "list",
            PriceSource::Contract => "contract",
            PriceSource::ContractPriceRequired => "contract_price_required",
        };
        let _ = writeln!(
            out,
            "{},{},item,{},{},{},{},{},{},{},{},{},{},{},{}",
            s.owner_uin,
            s.month,
            csv_field(&l.item),
            csv_field(&l.name),
            l.usage,
            l.free_units,
            l.prepaid_units,
            l.postpaid_units,
            csv_field(l.tier_label.as_deref().unwrap_or("")),
            l.unit_price.map(|p| p.to_string()).unwrap_or_default(),
            l.price_unit,
            source,
            l.amount.map(|a| format!("{a:.2}")).unwrap_or_default(),
            l.unresolved_units
        );
    }
    for p in &s.purchases {
        let _ = writeln!(
            out,
            "{},{},purchase,{},{},{},,,,,,,,{:.2},",
            s.owner_uin,
            s.month,
            csv_field(&p.item),
            csv_field(&p.pack),
            p.size,
            p.amount
        );
    }
    let _ = writeln!(
        out,
        "{},{},total,,,,,,,,,,,{:.2},{}",
        s.owner_uin, s.month, s.total, s.unresolved_units
    );
    out
}
