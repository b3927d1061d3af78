//! Per-vendor figures of the crm-sync benchmark: what each CRM adapter's client-side limit
//! allows, and the ceiling in events/s that limit implies for the request pattern the adapter
//! uses when every event is a shipment the CRM has not seen yet (the first-sight path).
//!
//! The limits are the adapters' defaults (`crates/crm/src/{bitrix24,kommo,salesforce}`); the
//! request pattern per chunk of `n` shipments is what the adapters send for new shipments.

use crate::report::round;
use serde_json::{json, Value};

/// The vendors the benchmark knows, by `crm.vendor` name.
pub const VENDORS: [&str; 4] = ["generic", "bitrix24", "salesforce", "kommo"];

/// Most shipments per CRM call of crm-sync's engine (`pipeline.crm_batch_limit` default).
pub const CRM_BATCH_LIMIT: usize = 500;

/// A vendor's client-side limit as the adapter enforces it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Requests at once (leaky-bucket burst).
    pub burst: u32,
    /// Requests per second once the burst is spent.
    pub per_second: f64,
    /// Most records in one write request.
    pub records_per_write: usize,
}

/// The limit the adapter enforces, `None` for the generic API (no client-side limit).
pub fn limit(vendor: &str) -> Option<Limit> {
    match vendor {
        // Leaky bucket 50 at once, 2/s (standard plans); `batch` of at most 50 commands.
        "bitrix24" => Some(Limit {
            burst: 50,
            per_second: 2.0,
            records_per_write: 50,
        }),
        // Client-side 10 at once, 10/s; collections upsert of at most 200 records; the daily
        // quota is watched through Sforce-Limit-Info (pause at 90 %), not a rate.
        "salesforce" => Some(Limit {
            burst: 10,
            per_second: 10.0,
            records_per_write: 200,
        }),
        // 7 requests/s, no burst; at most 50 leads per add/update call (the adapter default).
        "kommo" => Some(Limit {
            burst: 1,
            per_second: 7.0,
            records_per_write: 50,
        }),
        _ => None,
    }
}

/// The batch size the benchmark gives crm-sync for a vendor unless told otherwise: the records
/// of one write request, so outcomes are committed once per write call and a window of seconds
/// sees several commits even at a few events/s. The generic API keeps crm-sync's default.
pub fn default_max_batch(vendor: &str) -> Option<usize> {
    limit(vendor).map(|l| l.records_per_write)
}

/// Requests the adapter sends for one engine chunk of `n` shipments new to the CRM.
pub fn requests_per_chunk(vendor: &str, n: usize) -> Option<usize> {
    let pages = |size: usize| n.div_ceil(size);
    match vendor {
        // read_states: crm.item.list per 50; write: one `batch` per 50 (what the read did not
        // find is created without another lookup, `crate::ABSENT_FOR` in the adapter).
        "bitrix24" => Some(pages(50) + pages(50)),
        // read_states: one SOQL query per 200; write: one collections upsert per 200.
        "salesforce" => Some(pages(200) + pages(200)),
        // read_states: one `query=` search per unknown shipment; write: one POST per 50 (what
        // the search did not find is created without searching again).
        "kommo" => Some(n + pages(50)),
        _ => None,
    }
}

/// Records per request and the ceiling in events/s for chunks of `n` shipments.
pub fn ceiling(vendor: &str, n: usize) -> Option<(f64, f64)> {
    let l = limit(vendor)?;
    let per_request = n as f64 / requests_per_chunk(vendor, n)? as f64;
    Some((per_request, l.per_second * per_request))
}

/// The `limit` object of the report.
pub fn limit_json(vendor: &str, chunk: usize) -> Value {
    let Some(l) = limit(vendor) else {
        return json!({"client_side": "none (the generic API has no documented rate limit)"});
    };
    let (per_request, ceiling) = ceiling(vendor, chunk).unwrap_or((f64::NAN, f64::NAN));
    let text = match vendor {
        "bitrix24" => "leaky bucket, burst 50 requests, drains 2 requests/s; batch of at most 50 commands",
        "salesforce" => "client-side 10 requests/s (burst 10); collections upsert of at most 200 records; Sforce-Limit-Info api-usage watched, calls pause at 90% of the daily quota (crm-sim sets none)",
        "kommo" => "7 requests/s, no burst; at most 50 leads per add/update call",
        _ => "",
    };
    json!({
        "client_side": text,
        "requests_per_s": l.per_second,
        "burst_requests": l.burst,
        "records_per_write_request": l.records_per_write,
        "engine_chunk_shipments": chunk,
        "requests_per_chunk_new_shipments": requests_per_chunk(vendor, chunk),
        "records_per_request_new_shipments": round(per_request, 3),
        "ceiling_events_per_s": round(ceiling, 2),
        "ceiling_writes_only_events_per_s": round(l.per_second * l.records_per_write as f64, 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_follow_the_request_pattern() {
        let (per, c) = ceiling("bitrix24", 50).unwrap();
        assert!((per - 25.0).abs() < 1e-9 && (c - 50.0).abs() < 1e-9);
        let (per, c) = ceiling("salesforce", 200).unwrap();
        assert!((per - 100.0).abs() < 1e-9 && (c - 1000.0).abs() < 1e-9);
        let (per, c) = ceiling("kommo", 50).unwrap();
        assert!((per - 50.0 / 51.0).abs() < 1e-9 && (c - 350.0 / 51.0).abs() < 1e-9);
        assert_eq!(requests_per_chunk("salesforce", 500), Some(6));
        assert!(ceiling("generic", 500).is_none());
    }
}
