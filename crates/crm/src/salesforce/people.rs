//! [`ClientCrm`] for Salesforce: every write is an upsert by an External ID field, so a retry
//! never creates a second record and the CRM ids a caller holds (`existing`) are not needed.
//! Calls go through the adapter's token, limiter and quota pause; writes carry
//! `Sforce-Call-Options: client=...` (so our own changes can be told apart) and `X-Request-Id`.

use super::people_wire as pw;
use super::SalesforceCrm;
use crate::cards;
use async_trait::async_trait;
use backbone_sync::clients::{
    Card, ClientCrm, ClientId, CrmContact, CrmTask, Field, Interaction, Task, WriteContext,
};
use backbone_sync::ports::CrmError;
use reqwest::Method;
use serde_json::Value as Json;

const CONTACT: &str = "Contact";
const TASK: &str = "Task";

impl SalesforceCrm {
    /// `/services/data/vXX.X/sobjects/{object}/{field}/{value}`, or `/{object}/{Id}` without a
    /// field; the value is one percent-encoded segment.
    fn record_path(&self, object: &str, field: Option<&str>, value: &str) -> String {
        let prefix = match field {
            Some(f) => format!("/sobjects/{object}/{f}"),
            None => format!("/sobjects/{object}"),
        };
        self.data_path(&cards::path(&prefix, &[value]))
    }

    fn several(object: &str, field: &str) -> CrmError {
        CrmError::from_status(
            300,
            None,
            format!("several Salesforce {object} records carry this {field}: an operator must merge them"),
        )
    }

    /// One record: `None` on 404 (unknown, or deleted).
    async fn read_record(&self, path: &str, object: &str, field: &str) -> Result<Option<Json>, CrmError> {
        let what = format!("Salesforce {object} read");
        let reply = self
            .call_as(Method::GET, path, None, Some(&cards::fresh_request_id()))
            .await?;
        match reply.status.as_u16() {
            200 => reply.json(&what).map(Some),
            404 => Ok(None),
            300 => Err(Self::several(object, field)),
            status => Err(pw::refusal(status, reply.retry_after(), &reply.body, &what)),
        }
    }

    /// Upserts by `field` = `value`; returns the record's Id.
    async fn upsert(
        &self,
        object: &str,
        field: &str,
        value: &str,
        body: &Json,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let what = format!("Salesforce {object} upsert");
        let path = self.record_path(object, Some(field), value);
        let reply = self
            .call_as(Method::PATCH, &path, Some(body), Some(ctx.request_id))
            .await?;
        let status = reply.status.as_u16();
        match status {
            200 | 201 | 204 => {}
            300 => return Err(Self::several(object, field)),
            _ => return Err(pw::refusal(status, reply.retry_after(), &reply.body, &what)),
        }
        if let Some(id) = pw::upserted_id(status, &reply.body, &what)? {
            return Ok(id);
        }
        // 204 (API versions before 46.0) says nothing of the record: read it by the same id.
        let record = self
            .read_record(&path, object, field)
            .await?
            .ok_or_else(|| CrmError::transient(format!("{what}: the record is not readable yet")))?;
        record
            .get("Id")
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| CrmError::permanent(format!("{what}: the record has no Id")))
    }
}

#[async_trait]
impl ClientCrm for SalesforceCrm {
    #[tracing::instrument(name = "crm.read_contact", skip_all, fields(vendor = "salesforce"))]
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError> {
        let f = &self.cfg.contact_fields;
        let path = self.record_path(CONTACT, Some(&f.client_id), client.as_str());
        let Some(obj) = self.read_record(&path, CONTACT, &f.client_id).await? else {
            return Ok(None);
        };
        let contact = pw::contact(f, &obj)?;
        // External ids match without regard to case: `C-1` is found for `c-1`, and an upsert
        // for `c-1` would change that other client's contact.
        if contact.client_id.as_ref() != Some(client) {
            return Err(CrmError::permanent(format!(
                "the Salesforce Contact found by {} carries another client id (ids differing in case only collide)",
                f.client_id
            )));
        }
        Ok(Some(contact))
    }

    #[tracing::instrument(name = "crm.read_contact_by_crm_id", skip_all, fields(vendor = "salesforce"))]
    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError> {
        let path = self.record_path(CONTACT, None, crm_id);
        match self.read_record(&path, CONTACT, "Id").await? {
            Some(obj) => pw::contact(&self.cfg.contact_fields, &obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.write_contact", skip_all, fields(vendor = "salesforce", fields = fields.len()))]
    async fn write_contact(
        &self,
        client: &ClientId,
        _existing: Option<&str>,
        card: &Card,
        fields: &[Field],
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let f = &self.cfg.contact_fields;
        let body = pw::contact_body(f, card, fields);
        self.upsert(CONTACT, &f.client_id, client.as_str(), &body, ctx)
            .await
    }

    #[tracing::instrument(name = "crm.write_task", skip_all, fields(vendor = "salesforce"))]
    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        _existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let body = pw::task_body(task, contact);
        self.upsert(
            TASK,
            &self.cfg.task_fields.task_id,
            task.task_id.as_str(),
            &body,
            ctx,
        )
        .await
    }

    #[tracing::instrument(name = "crm.read_task", skip_all, fields(vendor = "salesforce"))]
    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError> {
        let path = self.record_path(TASK, None, crm_id);
        match self.read_record(&path, TASK, "Id").await? {
            Some(obj) => pw::task(&self.cfg.task_fields, &obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.add_interaction", skip_all, fields(vendor = "salesforce"))]
    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let body = pw::interaction_body(interaction, contact);
        self.upsert(
            TASK,
            &self.cfg.task_fields.interaction_id,
            interaction.interaction_id.as_str(),
            &body,
            ctx,
        )
        .await
    }
}
