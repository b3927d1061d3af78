//! The org's sObject: its fields, their kinds, and `describe`.

use super::{json_response, not_found, version, with_usage};
use crate::Sim;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const READ_ONLY: [&str; 4] = ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"];

/// The org's sObject that keeps shipments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SalesforceSchema {
    pub sobject: String,
    /// The External ID field (text, unique).
    pub external_id_field: String,
    /// Other text fields; `Name` is always there.
    pub text_fields: Vec<String>,
    /// Date-time fields.
    pub datetime_fields: Vec<String>,
    /// The field read back as the status (`Sim::status_of`).
    pub status_field: String,
    /// The field that carries the event id (for counting repeated writes).
    pub event_field: String,
}

impl Default for SalesforceSchema {
    fn default() -> Self {
        Self {
            sobject: "Shipment__c".into(),
            external_id_field: "Shipment_Id__c".into(),
            text_fields: vec!["Client_Id__c".into(), "Status__c".into(), "Event_Id__c".into()],
            datetime_fields: vec!["Status_At__c".into()],
            status_field: "Status__c".into(),
            event_field: "Event_Id__c".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Id,
    Text,
    DateTime,
}

impl SalesforceSchema {
    /// A field's API name as the schema spells it, and its kind (names are case-insensitive).
    pub(super) fn field(&self, name: &str) -> Option<(String, Kind, bool)> {
        let read_only = READ_ONLY.iter().find(|f| f.eq_ignore_ascii_case(name)).map(|f| {
            let kind = if *f == "Id" { Kind::Id } else { Kind::DateTime };
            ((*f).to_owned(), kind, true)
        });
        read_only.or_else(|| {
            std::iter::once(&self.external_id_field)
                .chain(&self.text_fields)
                .chain(std::iter::once(&"Name".to_owned()))
                .find(|f| f.eq_ignore_ascii_case(name))
                .map(|f| (f.clone(), Kind::Text, false))
                .or_else(|| {
                    self.datetime_fields
                        .iter()
                        .find(|f| f.eq_ignore_ascii_case(name))
                        .map(|f| (f.clone(), Kind::DateTime, false))
                })
        })
    }

    fn all_fields(&self) -> Vec<(String, Kind, bool)> {
        let mut out: Vec<(String, Kind, bool)> = READ_ONLY
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    if *f == "Id" { Kind::Id } else { Kind::DateTime },
                    true,
                )
            })
            .collect();
        out.push(("Name".into(), Kind::Text, false));
        out.push((self.external_id_field.clone(), Kind::Text, false));
        out.extend(self.text_fields.iter().map(|f| (f.clone(), Kind::Text, false)));
        out.extend(
            self.datetime_fields
                .iter()
                .map(|f| (f.clone(), Kind::DateTime, false)),
        );
        out
    }
}

pub(super) async fn describe(
    State(sim): State<Sim>,
    Path((v, sobject)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let schema = &sim.schemas().salesforce;
    if version(&v).is_none() || !sobject.eq_ignore_ascii_case(&schema.sobject) {
        return with_usage(not_found(), usage);
    }
    let fields: Vec<Value> = schema
        .all_fields()
        .into_iter()
        .map(|(name, kind, read_only)| {
            let external = name == schema.external_id_field;
            let ty = match kind {
                Kind::Id => "id",
                Kind::Text => "string",
                Kind::DateTime => "datetime",
            };
            json!({"name": name, "label": name, "type": ty, "externalId": external, "unique": external,
                "idLookup": external || kind == Kind::Id, "updateable": !read_only,
                "createable": !read_only, "nillable": !read_only, "length": if kind == Kind::Text { 255 } else { 0 }})
        })
        .collect();
    with_usage(
        json_response(
            StatusCode::OK,
            "application/json",
            &json!({"name": schema.sobject, "label": schema.sobject, "custom": true,
                "createable": true, "updateable": true, "queryable": true, "fields": fields}),
        ),
        usage,
    )
}
