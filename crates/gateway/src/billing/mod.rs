//! Billability: from an admitted call's response, is it billable, and how many units against
//! which billing items (docs/domain.md, "Billing")?
//!
//! 1. A success is billable; an error is billable only if its code is on the service's list
//!    (`billable_error_codes` in the catalog; the OCR seed's 错误码计费说明).
//! 2. One unit per billable call, except `MixedInvoiceOCR`: one unit per recognised invoice
//!    (`Code == "OK"`), against 通用票据识别（大票） for types 3 and 12 and 通用票据识别（小票）
//!    for every other type; classification itself is free.
//! 3. Interfaces with `units = "none"` (free beta, management calls) are never billable.
//! 4. A response that is not HTTP 200 or not a complete API 3.0 JSON body is not billable.

pub mod scan;

pub use scan::{Scanned, Scanner};
use tollgate_core::catalog::{BillingItemId, Catalog, Service, UnitRule};

/// Units of one call against at most two billing items (the mixed-invoice case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Units {
    entries: [(BillingItemId, u32); 2],
    len: u8,
}

impl Units {
    pub fn one(item: BillingItemId) -> Units {
        let mut u = Units::default();
        u.add(item, 1);
        u
    }

    pub fn add(&mut self, item: BillingItemId, n: u32) {
        if n == 0 {
            return;
        }
        let len = usize::from(self.len);
        if let Some(e) = self.entries[..len].iter_mut().find(|e| e.0 == item) {
            e.1 += n;
        } else {
            assert!(len < 2, "a call bills at most two items");
            self.entries[len] = (item, n);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (BillingItemId, u32)> + '_ {
        self.entries[..usize::from(self.len)].iter().copied()
    }

    pub fn total(&self) -> u32 {
        self.iter().map(|(_, n)| n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The billing outcome of one admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Billable with these units (a billable call may still count zero units, e.g. a mixed
    /// invoice call that recognised nothing).
    Billable(Units),
    /// Answered, not billable (an unbillable error code, or a never-billed interface).
    Unbillable,
    /// The backend's answer was not a valid API 3.0 response.
    UpstreamError,
}

/// Decides the outcome of a call whose unit rule is `rule` (`None` for an unlisted action,
/// which bills one unit against the service's `.unlisted` item).
pub fn decide(
    catalog: &Catalog,
    service: &Service,
    rule: Option<UnitRule>,
    http_status: u16,
    scanned: &Scanned,
) -> Outcome {
    if http_status != 200 {
        return Outcome::UpstreamError;
    }
    let rule = rule.unwrap_or(UnitRule::PerCall(service.unlisted_item));
    match (scanned, rule) {
        (Scanned::Malformed, _) => Outcome::UpstreamError,
        (_, UnitRule::None) => Outcome::Unbillable,
        (Scanned::Error { code }, rule) => {
            if !service.billable_error_codes.contains(code.as_str()) {
                return Outcome::Unbillable;
            }
            // A billable error of a mixed-invoice call recognised no invoice; it counts one
            // call against the small-ticket item, the item the classification step belongs to.
            let item = match rule {
                UnitRule::PerCall(item) => item,
                _ => catalog.mixed_invoice.small,
            };
            Outcome::Billable(Units::one(item))
        }
        (Scanned::Success { .. }, UnitRule::PerCall(item)) => Outcome::Billable(Units::one(item)),
        (Scanned::Success { invoices }, UnitRule::MixedInvoice) => {
            let mut units = Units::default();
            for (invoice_type, n) in invoices.iter() {
                units.add(catalog.mixed_invoice.item_for_type(invoice_type), n);
            }
            Outcome::Billable(units)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::embedded()
    }

    fn check(
        service: &str,
        action: &str,
        status: u16,
        body: &str,
        want: &[(&str, u32)],
        want_billable: bool,
    ) {
        let c = catalog();
        let svc = c.service_by_name(service).unwrap();
        let rule = svc.actions.get(action).map(|id| c.interface(*id).units);
        let mut s = Scanner::new();
        s.feed(body.as_bytes());
        let outcome = decide(&c, svc, rule, status, &s.finish());
        let got: Vec<(String, u32)> = match outcome {
            Outcome::Billable(u) => u
                .iter()
                .map(|(i, n)| (c.item(i).key.to_string(), n))
                .collect(),
            _ => vec![],
        };
        let want: Vec<(String, u32)> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        assert_eq!(got, want, "{service}.{action}: {body}");
        assert_eq!(
            matches!(outcome, Outcome::Billable(_)),
            want_billable,
            "{service}.{action}: {body}"
        );
    }

    const OK: &str = r#"{"Response":{"RequestId":"r"}}"#;

    fn err(code: &str) -> String {
        format!(r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"m"}},"RequestId":"r"}}}}"#)
    }

    #[test]
    fn success_and_error_codes() {
        check(
            "ocr",
            "GeneralBasicOCR",
            200,
            OK,
            &[("ocr.general_basic", 1)],
            true,
        );
        // The four billable OCR codes of 错误码计费说明.
        for code in [
            "FailedOperation.InvoiceMismatch",
            "ResourceNotFound.NoInvoice",
            "FailedOperation.EmptyImageError",
            "FailedOperation.ImageNoBusinessCard",
        ] {
            check(
                "ocr",
                "BusinessCardOCR",
                200,
                &err(code),
                &[("ocr.business_card", 1)],
                true,
            );
        }
        for code in [
            "FailedOperation.ImageBlur",
            "FailedOperation.OcrFailed",
            "InternalError",
            "RequestLimitExceeded",
            "",
        ] {
            check("ocr", "GeneralBasicOCR", 200, &err(code), &[], false);
        }
        // Billable codes belong to OCR only.
        check(
            "bda",
            "SegmentPortraitPic",
            200,
            &err("FailedOperation.EmptyImageError"),
            &[],
            false,
        );
        check(
            "bda",
            "SegmentCustomizedPortraitPic",
            200,
            OK,
            &[("bda.segment", 1)],
            true,
        );
    }

    #[test]
    fn free_interfaces_unlisted_actions_and_bad_answers() {
        check("tiia", "EnhanceImage", 200, OK, &[], false);
        check("bda", "CreateSegmentationTask", 200, OK, &[], false);
        check("ocr", "SomeNewOCR", 200, OK, &[("ocr.unlisted", 1)], true);
        check("ocr", "GeneralBasicOCR", 502, OK, &[], false);
        check("ocr", "GeneralBasicOCR", 200, "<html>", &[], false);
    }

    /// The seed's 混贴票据 examples: one VAT invoice, one machine-printed invoice and one train
    /// ticket count 1 大票 and 2 小票; an unrecognised ticket counts nothing.
    #[test]
    fn mixed_invoices_by_type() {
        let body = r#"{"Response":{"MixedInvoiceItems":[
            {"Code":"OK","Type":3},{"Code":"OK","Type":8},{"Code":"OK","Type":2},
            {"Code":"FailedOperation.UnsupportedInvioce","Type":3}],"RequestId":"r"}}"#;
        check(
            "ocr",
            "MixedInvoiceOCR",
            200,
            body,
            &[("ocr.invoice_big", 1), ("ocr.invoice_small", 2)],
            true,
        );
        let body = r#"{"Response":{"MixedInvoiceItems":[{"Code":"OK","Type":12},{"Code":"OK","Type":16},{"Code":"OK","Type":-1}],"RequestId":"r"}}"#;
        check(
            "ocr",
            "MixedInvoiceOCR",
            200,
            body,
            &[("ocr.invoice_big", 1), ("ocr.invoice_small", 2)],
            true,
        );
        check(
            "ocr",
            "MixedInvoiceOCR",
            200,
            r#"{"Response":{"MixedInvoiceItems":[],"RequestId":"r"}}"#,
            &[],
            true,
        );
        check(
            "ocr",
            "MixedInvoiceOCR",
            200,
            &err("FailedOperation.EmptyImageError"),
            &[("ocr.invoice_small", 1)],
            true,
        );
    }
}
