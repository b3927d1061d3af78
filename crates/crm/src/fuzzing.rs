//! Entry points into the vendor response parsers, for the fuzz targets in `fuzz/` (feature
//! `fuzzing`, off by default; not a stable API).
//!
//! Each function takes what a vendor answered (a body as bytes, a decoded `result`, a header)
//! and reads it the way the adapter's client does: the same DTOs, the same `transformers`
//! functions, the same error messages. Nothing here speaks HTTP. A fuzz target calls these with
//! arbitrary input and checks that they never panic and that every message they produce stays
//! bounded, whatever the vendor sent.

use crate::wire;
use crate::{bitrix24, generic, kommo, salesforce};
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState};
use backbone_sync::ports::{CrmError, ItemResult, ShipmentStates};
use serde_json::{Map, Value};

/// Generic CRM, `GET /api/v1/shipments/{id}/status`: one record for one requested shipment.
pub fn generic_read_one(
    mapping: &CrmMapping,
    requested: &ShipmentId,
    body: &[u8],
) -> Result<ShipmentStates, CrmError> {
    let obj: Map<String, Value> = wire::parse_json(body, "read status")?;
    let record = generic::transformers::parse_record(mapping, &obj);
    Ok(generic::transformers::gather_states(
        std::slice::from_ref(requested),
        [record],
    ))
}

/// Generic CRM, `POST /api/v1/shipments/status:batchGet`: `{"items": [...]}`.
pub fn generic_read_batch(
    mapping: &CrmMapping,
    requested: &[ShipmentId],
    body: &[u8],
) -> Result<ShipmentStates, CrmError> {
    let items: generic::transformers::Items = wire::parse_json(body, "batch read")?;
    let records = items
        .items
        .iter()
        .map(|obj| generic::transformers::parse_record(mapping, obj));
    Ok(generic::transformers::gather_states(requested, records))
}

/// Generic CRM, `POST /api/v1/shipments/status:batchWrite`: `{"results": [{"status", "error"}]}`,
/// one item result per entry.
pub fn generic_write_results(body: &[u8]) -> Result<Vec<ItemResult>, CrmError> {
    let parsed: generic::transformers::WriteResults = wire::parse_json(body, "batch write")?;
    Ok(parsed
        .results
        .into_iter()
        .map(generic::transformers::WriteResultDto::into_item_result)
        .collect())
}

/// One item of a Bitrix24 `crm.item.list` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitrix24Item {
    pub id: Option<u64>,
    pub shipment: ShipmentId,
    pub state: Option<CrmShipmentState>,
}

/// Bitrix24 `crm.item.list`: the envelope's `result` (`{"items": [...]}`).
pub fn bitrix24_list(mapping: &CrmMapping, result: Value) -> Result<Vec<Bitrix24Item>, CrmError> {
    Ok(bitrix24::transformers::parse_list(result, mapping)?
        .into_iter()
        .map(|i| Bitrix24Item {
            id: i.id,
            shipment: i.shipment,
            state: i.state,
        })
        .collect())
}

/// What the adapter keeps of a Bitrix24 `batch` result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitrix24Batch {
    /// Per command that succeeded: its key and the id of the item it added, if any.
    pub added: Vec<(String, Option<u64>)>,
    /// Per command that failed: its key and the error code the adapter classifies.
    pub refused: Vec<(String, String)>,
}

/// Bitrix24 `batch`: the envelope's `result` (`{"result": {...}, "result_error": {...}}`, where
/// an empty map may come as `[]`).
pub fn bitrix24_batch(result: Value) -> Result<Bitrix24Batch, CrmError> {
    let batch = bitrix24::transformers::parse_batch(result)?;
    let added = batch
        .result
        .iter()
        .map(|(k, v)| (k.clone(), bitrix24::transformers::added_id(v)))
        .collect();
    let refused = batch
        .result_error
        .iter()
        .map(|(k, e)| {
            let dto: bitrix24::transformers::ErrorDto = serde_json::from_value(e.clone()).unwrap_or_default();
            (k.clone(), dto.code())
        })
        .collect();
    Ok(Bitrix24Batch { added, refused })
}

/// A refused Bitrix24 call's body: its error code and, for `OPERATION_TIME_LIMIT`, when the
/// method is usable again (unix seconds).
pub fn bitrix24_error(body: &[u8]) -> (String, Option<i64>) {
    let env: bitrix24::transformers::ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    (env.error.code(), env.time.and_then(|t| t.operating_reset_at))
}

/// Salesforce error bodies (`[{"errorCode", "message"}]`): code and message of each.
pub fn salesforce_errors(body: &[u8]) -> Vec<(String, String)> {
    salesforce::transformers::parse_errors(body)
        .into_iter()
        .map(|e| (e.code, e.message))
        .collect()
}

/// Salesforce SOQL query page (`{"records": [...], "done", "nextRecordsUrl"}`): each record of
/// one of `wanted`, with its state when it has a readable one.
pub fn salesforce_query(
    mapping: &CrmMapping,
    wanted: &[ShipmentId],
    body: &[u8],
) -> Result<Vec<(ShipmentId, Option<CrmShipmentState>)>, CrmError> {
    let page: salesforce::transformers::QueryResult = wire::parse_json(body, "Salesforce query")?;
    Ok(page
        .records
        .into_iter()
        .filter_map(|r| salesforce::transformers::parse_record(r, mapping, wanted))
        .collect())
}

/// Salesforce sObject Collections upsert results: success and error codes of each.
pub fn salesforce_upsert_results(body: &[u8]) -> Result<Vec<(bool, Vec<String>)>, CrmError> {
    let results: Vec<salesforce::transformers::UpsertResult> =
        wire::parse_json(body, "Salesforce collections upsert")?;
    Ok(results
        .into_iter()
        .map(|r| (r.success, r.errors.into_iter().map(|e| e.code).collect()))
        .collect())
}

/// `Sforce-Limit-Info` → (used, max) of the org's API requests.
pub fn salesforce_api_usage(header: &str) -> Option<(u64, u64)> {
    salesforce::transformers::api_usage(header)
}

/// What the adapter reads of one Kommo lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KommoLead {
    pub id: u64,
    /// The shipment in the mapping's external-id field (`cf:<field id>`), when valid.
    pub shipment: Option<ShipmentId>,
    pub state: Option<CrmShipmentState>,
    /// `request_id` as text, when the lead carries one (a create's answer).
    pub request_id: Option<String>,
}

/// Kommo `GET`/`POST`/`PATCH /api/v4/leads` answers (`{"_embedded": {"leads": [...]}}`). `None`
/// when `mapping.fields.shipment_id` is not a Kommo custom field (the adapter refuses such a
/// mapping at start-up).
pub fn kommo_leads(mapping: &CrmMapping, body: &[u8]) -> Option<Result<Vec<KommoLead>, CrmError>> {
    let external = kommo::transformers::Slot::parse(&mapping.fields().shipment_id)?;
    let page: Result<kommo::transformers::LeadsPage, CrmError> = wire::parse_json(body, "Kommo leads");
    Some(page.map(|page| {
        page.embedded
            .leads
            .into_iter()
            .map(|lead| KommoLead {
                id: lead.id,
                shipment: lead.shipment(external),
                state: lead.state(mapping),
                request_id: lead.request_id.as_ref().map(kommo::transformers::request_id_text),
            })
            .collect()
    }))
}

/// A Kommo 400 answer (`{"validation-errors": [{"request_id", "errors"}], "detail"}`): the
/// refused request ids with their errors as text, and the detail.
pub fn kommo_problem(body: &[u8]) -> (Vec<(String, String)>, Option<String>) {
    let problem: kommo::transformers::Problem = serde_json::from_slice(body).unwrap_or_default();
    let refused = problem
        .validation_errors
        .iter()
        .map(|v| {
            (
                kommo::transformers::request_id_text(&v.request_id),
                Value::from(v.errors.clone()).to_string(),
            )
        })
        .collect();
    (refused, problem.detail)
}
