//! The CRM adapters' response parsers (`backbone_crm::fuzzing`) on arbitrary bytes: every
//! parser reads the same input, as a body, as the decoded `result` of a Bitrix24 envelope, and
//! as a `Sforce-Limit-Info` header.
//!
//! - Nothing panics.
//! - Every error message an adapter builds, and every response excerpt it keeps, is under
//!   4 KiB, whatever the vendor sent.
//! - Salesforce query records come back only for the shipments asked for.
#![no_main]

use backbone_crm::fuzzing;
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, FieldNames, MappingConfig};
use backbone_sync::ports::{CrmError, ItemResult, ShipmentStates};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const MAX_MESSAGE_BYTES: usize = 4096;

fn mapping() -> &'static CrmMapping {
    static M: OnceLock<CrmMapping> = OnceLock::new();
    M.get_or_init(|| CrmMapping::new(MappingConfig::default()).expect("the default mapping is valid"))
}

/// Kommo keeps mapped values in lead slots: `status_id`, `name`, `cf:<field id>`.
fn kommo_mapping() -> &'static CrmMapping {
    static M: OnceLock<CrmMapping> = OnceLock::new();
    M.get_or_init(|| {
        let fields = FieldNames {
            client_id: "cf:101".into(),
            shipment_id: "cf:102".into(),
            status: "status_id".into(),
            timestamp: "cf:104".into(),
            event_id: "cf:105".into(),
        };
        CrmMapping::new(MappingConfig {
            fields,
            ..MappingConfig::default()
        })
        .expect("the Kommo mapping is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let value: Option<Value> = serde_json::from_slice(data).ok();
    let requested = requested(value.as_ref());

    // Generic REST CRM.
    if let Ok(states) = check(fuzzing::generic_read_one(mapping(), &requested[0], data)) {
        check_states(&states);
    }
    if let Ok(states) = check(fuzzing::generic_read_batch(mapping(), &requested, data)) {
        check_states(&states);
    }
    if let Ok(results) = check(fuzzing::generic_write_results(data)) {
        results.iter().for_each(check_item);
    }

    // Bitrix24: `result` is what the envelope carried; try the input as one, and as the
    // envelope itself.
    if let Some(v) = &value {
        let mut results = vec![v.clone()];
        if let Some(inner) = v.get("result") {
            results.push(inner.clone());
        }
        for result in results {
            let _ = check(fuzzing::bitrix24_list(mapping(), result.clone()));
            let _ = check(fuzzing::bitrix24_batch(result));
        }
    }
    let _ = fuzzing::bitrix24_error(data);

    // Salesforce.
    let _ = fuzzing::salesforce_errors(data);
    if let Ok(records) = check(fuzzing::salesforce_query(mapping(), &requested, data)) {
        for (id, _) in &records {
            assert!(requested.contains(id), "a record of a shipment not asked for");
        }
    }
    let _ = check(fuzzing::salesforce_upsert_results(data));
    if let Ok(header) = std::str::from_utf8(data) {
        if fuzzing::salesforce_api_usage(header).is_some() {
            assert!(header.contains("api-usage="));
        }
    }

    // Kommo.
    if let Some(leads) = fuzzing::kommo_leads(kommo_mapping(), data) {
        let _ = check(leads);
    }
    let _ = fuzzing::kommo_problem(data);
});

/// Shipments to ask for: `s-1`, and every valid one the input names where records name theirs.
fn requested(value: Option<&Value>) -> Vec<ShipmentId> {
    let mut ids = vec![ShipmentId::parse("s-1").expect("a valid id")];
    let Some(value) = value else { return ids };
    let records = ["items", "records"]
        .iter()
        .filter_map(|k| value.get(k)?.as_array())
        .flatten()
        .chain(std::iter::once(value));
    for record in records {
        if let Some(id) = record
            .get("shipmentId")
            .and_then(Value::as_str)
            .and_then(|s| ShipmentId::parse(s).ok())
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

fn check<T>(r: Result<T, CrmError>) -> Result<T, CrmError> {
    if let Err(e) = &r {
        check_error(e);
    }
    r
}

fn check_error(e: &CrmError) {
    assert!(
        e.message.len() < MAX_MESSAGE_BYTES,
        "a {}-byte error message: {}...",
        e.message.len(),
        e.message.chars().take(200).collect::<String>()
    );
}

fn check_states(states: &ShipmentStates) {
    states.unreadable.values().for_each(check_error);
}

fn check_item(item: &ItemResult) {
    if let Err(e) = &item.result {
        check_error(e);
    }
    if let Some(excerpt) = &item.response_excerpt {
        assert!(
            excerpt.len() < MAX_MESSAGE_BYTES,
            "a {}-byte response excerpt",
            excerpt.len()
        );
    }
}
