//! Stateful stand-ins for each vendor's API, answering in the documented request and response
//! shapes, so one contract suite can drive every adapter through the same scenarios.
//! A write whose status is `refuse` is refused by the fake in the vendor's per-item error shape.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;
use wiremock::{Request, Respond, ResponseTemplate};

pub const REFUSED_STATUS: &str = "refuse";

fn json_body(req: &Request) -> Value {
    serde_json::from_slice(&req.body).unwrap_or(Value::Null)
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

// ---------------------------------------------------------------------------------------------
// Generic REST CRM

#[derive(Default)]
pub struct GenericFake {
    pub records: Mutex<BTreeMap<String, Map<String, Value>>>,
}

impl Respond for GenericFake {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let path = req.url.path().to_owned();
        let mut records = self.records.lock().unwrap();
        let write = |records: &mut BTreeMap<String, Map<String, Value>>, item: &Value| -> u16 {
            let obj = item.as_object().cloned().unwrap_or_default();
            if obj.get("status").and_then(Value::as_str) == Some(REFUSED_STATUS) {
                return 422;
            }
            let id = obj["shipmentId"].as_str().unwrap_or_default().to_owned();
            records.insert(id, obj);
            200
        };
        if path.ends_with("status:batchGet") {
            let ids = json_body(req)["shipmentIds"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let items: Vec<Value> = ids
                .iter()
                .filter_map(|i| records.get(i.as_str()?).cloned().map(Value::Object))
                .collect();
            return ResponseTemplate::new(200).set_body_json(json!({"items": items}));
        }
        if path.ends_with("status:batchWrite") {
            let items = json_body(req)["items"].as_array().cloned().unwrap_or_default();
            let results: Vec<Value> = items
                .iter()
                .map(|i| {
                    let status = write(&mut records, i);
                    if status == 200 {
                        json!({"status": 200})
                    } else {
                        json!({"status": status, "error": {"code": "unknown_status", "message": "refused"}})
                    }
                })
                .collect();
            return ResponseTemplate::new(200).set_body_json(json!({"results": results}));
        }
        let id = path
            .trim_start_matches("/api/v1/shipments/")
            .trim_end_matches("/status");
        let id = percent_decode(id);
        match req.method.as_str() {
            "GET" => match records.get(&id) {
                Some(r) => ResponseTemplate::new(200).set_body_json(r),
                None => ResponseTemplate::new(404),
            },
            _ => ResponseTemplate::new(write(&mut records, &json_body(req)))
                .set_body_json(json!({"code": "unknown_status"})),
        }
    }
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Bitrix24: crm.item.list, batch of crm.item.add / crm.item.update

#[derive(Default)]
pub struct Bitrix24Fake {
    /// Items by id: `originatorId`, `originId` and the mapped fields.
    pub items: Mutex<BTreeMap<u64, Map<String, Value>>>,
    /// `crm.item.add` commands executed.
    pub adds: Mutex<u32>,
}

impl Bitrix24Fake {
    fn envelope(result: Value) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({"result": result,
            "time": {"start": 1.0, "finish": 1.1, "duration": 0.1, "processing": 0.05,
                     "date_start": "2026-11-01T10:00:00+00:00", "date_finish": "2026-11-01T10:00:00+00:00",
                     "operating_reset_at": 1_793_527_800, "operating": 0}}))
    }
}

impl Respond for Bitrix24Fake {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let method = req
            .url
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        let body = json_body(req);
        let mut items = self.items.lock().unwrap();
        match method {
            "crm.item.list" => {
                let wanted: Vec<String> = body["filter"]["@originId"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let originator = body["filter"]["=originatorId"].clone();
                let select: Vec<String> = body["select"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let found: Vec<Value> = items
                    .iter()
                    .filter(|(_, f)| {
                        f.get("originatorId") == Some(&originator)
                            && f.get("originId")
                                .and_then(Value::as_str)
                                .is_some_and(|o| wanted.iter().any(|w| w == o))
                    })
                    .map(|(id, f)| {
                        let mut out = Map::new();
                        out.insert("id".into(), json!(id));
                        for s in &select {
                            if let Some(v) = f.get(s) {
                                out.insert(s.clone(), v.clone());
                            }
                        }
                        Value::Object(out)
                    })
                    .collect();
                let total = found.len();
                ResponseTemplate::new(200).set_body_json(json!({"result": {"items": found}, "total": total,
                    "time": {"start": 1.0, "finish": 1.1, "duration": 0.1, "operating": 0}}))
            }
            "batch" => {
                let cmds = body["cmd"].as_object().cloned().unwrap_or_default();
                let mut result = Map::new();
                let mut errors = Map::new();
                for (key, cmd) in cmds {
                    let (m, q) = cmd
                        .as_str()
                        .unwrap_or_default()
                        .split_once('?')
                        .unwrap_or_default();
                    let pairs = query_pairs(q);
                    let mut fields = Map::new();
                    let mut id = None;
                    for (k, v) in pairs {
                        if let Some(f) = k.strip_prefix("fields[").and_then(|k| k.strip_suffix(']')) {
                            fields.insert(f.to_owned(), Value::from(v));
                        } else if k == "id" {
                            id = v.parse::<u64>().ok();
                        }
                    }
                    if fields.values().any(|v| v == REFUSED_STATUS) {
                        errors.insert(
                            key,
                            json!({"error": "ERROR_CORE", "error_description": "Stage not found"}),
                        );
                        continue;
                    }
                    match (m, id) {
                        ("crm.item.add", None) => {
                            *self.adds.lock().unwrap() += 1;
                            let new_id = items.keys().max().copied().unwrap_or(0) + 1;
                            items.insert(new_id, fields);
                            result.insert(key, json!({"item": {"id": new_id}}));
                        }
                        ("crm.item.update", Some(id)) => match items.get_mut(&id) {
                            Some(item) => {
                                item.extend(fields);
                                result.insert(key, json!({"item": {"id": id}}));
                            }
                            None => {
                                errors.insert(
                                    key,
                                    json!({"error": "NOT_FOUND", "error_description": "Not found."}),
                                );
                            }
                        },
                        _ => {
                            errors.insert(
                                key,
                                json!({"error": "ERROR_METHOD_NOT_FOUND", "error_description": ""}),
                            );
                        }
                    }
                }
                let errors = if errors.is_empty() {
                    json!([])
                } else {
                    Value::Object(errors)
                };
                Self::envelope(
                    json!({"result": result, "result_error": errors, "result_total": [],
                    "result_next": [], "result_time": {}}),
                )
            }
            _ => ResponseTemplate::new(400).set_body_json(json!({"error": "ERROR_METHOD_NOT_FOUND",
                "error_description": "Method not found!"})),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Salesforce: token, SOQL query, upsert by external id, collections upsert

pub struct SalesforceFake {
    pub instance_url: String,
    /// Records by external id.
    pub records: Mutex<BTreeMap<String, Map<String, Value>>>,
    pub ext: &'static str,
    pub ts: &'static str,
    pub status: &'static str,
}

/// Salesforce's own date-time rendering: `2026-11-01T10:00:00.000+0000`.
fn sf_time(v: &Value) -> Value {
    let Some(t) = v
        .as_str()
        .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
    else {
        return v.clone();
    };
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    Value::from(t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap())
}

impl SalesforceFake {
    fn upsert(&self, ext_value: &str, mut fields: Map<String, Value>) -> Result<bool, Value> {
        if fields.get(self.status).and_then(Value::as_str) == Some(REFUSED_STATUS) {
            return Err(json!({"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "message": "Status is not allowed", "fields": [self.status]}));
        }
        fields.remove("attributes");
        if let Some(ts) = fields.get(self.ts).cloned() {
            fields.insert(self.ts.into(), sf_time(&ts));
        }
        fields.insert(self.ext.into(), Value::from(ext_value));
        let mut records = self.records.lock().unwrap();
        let created = !records.contains_key(ext_value);
        records.entry(ext_value.to_owned()).or_default().extend(fields);
        Ok(created)
    }
}

impl Respond for SalesforceFake {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let path = req.url.path().to_owned();
        if path == "/services/oauth2/token" {
            return ResponseTemplate::new(200).set_body_json(json!({"access_token": "00Dxx!AR.token",
                "instance_url": self.instance_url, "id": "https://login.salesforce.com/id/00D/005",
                "token_type": "Bearer", "issued_at": "1793527200000", "signature": "sig"}));
        }
        if path.ends_with("/query") {
            let q = req
                .url
                .query_pairs()
                .find(|(k, _)| k == "q")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let inside = q
                .split_once("IN (")
                .map(|(_, r)| r.trim_end_matches(')'))
                .unwrap_or_default();
            let ids: Vec<String> = inside
                .split(", ")
                .map(|s| s.trim_matches('\'').to_owned())
                .collect();
            let records = self.records.lock().unwrap();
            let found: Vec<Value> = ids
                .iter()
                .filter_map(|i| records.get(i))
                .map(|r| {
                    let mut r = r.clone();
                    r.insert("attributes".into(), json!({"type": "Shipment__c", "url": "/x"}));
                    Value::Object(r)
                })
                .collect();
            return ResponseTemplate::new(200)
                .set_body_json(json!({"totalSize": found.len(), "done": true, "records": found}));
        }
        let body = json_body(req);
        if path.contains("/composite/sobjects/") {
            let recs = body["records"].as_array().cloned().unwrap_or_default();
            let results: Vec<Value> = recs
                .into_iter()
                .map(|r| {
                    let obj = r.as_object().cloned().unwrap_or_default();
                    let ext_value = obj[self.ext].as_str().unwrap_or_default().to_owned();
                    match self.upsert(&ext_value, obj) {
                        Ok(created) => json!({"id": "a01000000000001AAA", "success": true, "errors": [], "created": created}),
                        Err(e) => json!({"success": false, "errors": [e]}),
                    }
                })
                .collect();
            return ResponseTemplate::new(200).set_body_json(results);
        }
        let ext_value = percent_decode(path.rsplit('/').next().unwrap_or_default());
        match self.upsert(&ext_value, body.as_object().cloned().unwrap_or_default()) {
            Ok(true) => ResponseTemplate::new(201).set_body_json(
                json!({"id": "a01000000000001AAA", "success": true, "errors": [], "created": true}),
            ),
            Ok(false) => ResponseTemplate::new(200).set_body_json(
                json!({"id": "a01000000000001AAA", "success": true, "errors": [], "created": false}),
            ),
            Err(e) => ResponseTemplate::new(400).set_body_json(json!([{"message": e["message"],
                "errorCode": e["statusCode"], "fields": e["fields"]}])),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kommo: leads search, add and update

#[derive(Default)]
pub struct KommoFake {
    pub leads: Mutex<BTreeMap<u64, Value>>,
    pub posts: Mutex<u32>,
}

fn cf_values(lead: &Value) -> Vec<String> {
    lead["custom_fields_values"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["values"][0]["value"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn merge_custom(into: &mut Value, from: &Value) {
    let mut current: BTreeMap<u64, Value> = into["custom_fields_values"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| (c["field_id"].as_u64().unwrap_or(0), c.clone()))
                .collect()
        })
        .unwrap_or_default();
    for c in from["custom_fields_values"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        current.insert(c["field_id"].as_u64().unwrap_or(0), c);
    }
    into["custom_fields_values"] = Value::from(current.into_values().collect::<Vec<_>>());
    for k in ["name", "status_id", "pipeline_id"] {
        if let Some(v) = from.get(k) {
            into[k] = v.clone();
        }
    }
}

impl Respond for KommoFake {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut leads = self.leads.lock().unwrap();
        match req.method.as_str() {
            "GET" => {
                let pairs = query_pairs(req.url.query().unwrap_or_default());
                let query = pairs.iter().find(|(k, _)| k == "query").map(|(_, v)| v.clone());
                let ids: Vec<u64> = pairs
                    .iter()
                    .filter(|(k, _)| k == "filter[id][]")
                    .filter_map(|(_, v)| v.parse().ok())
                    .collect();
                let found: Vec<Value> = leads
                    .values()
                    .filter(|l| match &query {
                        Some(q) => cf_values(l).iter().any(|v| v.contains(q.as_str())),
                        None => ids.contains(&l["id"].as_u64().unwrap_or(0)),
                    })
                    .cloned()
                    .collect();
                if found.is_empty() {
                    return ResponseTemplate::new(204);
                }
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/hal+json")
                    .set_body_json(json!({"_page": 1, "_links": {"self": {"href": "/api/v4/leads"}},
                        "_embedded": {"leads": found}}))
            }
            method => {
                let items = json_body(req).as_array().cloned().unwrap_or_default();
                let refused: Vec<Value> = items
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| cf_values(l).iter().any(|v| v == REFUSED_STATUS))
                    .map(|(i, l)| {
                        let rid = l.get("request_id").cloned().unwrap_or(Value::from(i.to_string()));
                        json!({"request_id": rid, "errors": [{"code": "NotSupportedChoice",
                            "path": "custom_fields_values.0.values.0.value",
                            "detail": "The value you selected is not a valid choice."}]})
                    })
                    .collect();
                if !refused.is_empty() {
                    return ResponseTemplate::new(400)
                        .insert_header("content-type", "application/problem+json")
                        .set_body_json(json!({"validation-errors": refused, "title": "Bad Request",
                            "type": "https://httpstatus.es/400", "status": 400,
                            "detail": "Request validation failed"}));
                }
                let mut out = Vec::new();
                for item in items {
                    let id = if method == "POST" {
                        *self.posts.lock().unwrap() += 1;
                        let id = leads.keys().max().copied().unwrap_or(9000) + 1;
                        let mut lead = json!({"id": id, "name": "", "status_id": 0, "pipeline_id": 1,
                            "custom_fields_values": null, "updated_at": 1_793_527_200});
                        merge_custom(&mut lead, &item);
                        leads.insert(id, lead);
                        id
                    } else {
                        let id = item["id"].as_u64().unwrap_or(0);
                        match leads.get_mut(&id) {
                            Some(lead) => merge_custom(lead, &item),
                            None => {
                                return ResponseTemplate::new(400)
                                    .set_body_json(json!({"title": "Bad Request",
                                "status": 400, "detail": "lead not found"}))
                            }
                        }
                        id
                    };
                    out.push(json!({"id": id, "request_id": item.get("request_id").cloned(),
                        "_links": {"self": {"href": format!("/api/v4/leads/{id}")}}}));
                }
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/hal+json")
                    .set_body_json(json!({"_links": {"self": {"href": "/api/v4/leads"}},
                        "_embedded": {"leads": out}}))
            }
        }
    }
}
