//! [`ClientCrm`] for the generic REST CRM: contacts, tasks and interactions are each `PUT` by our
//! external id (an upsert, so `existing` ids are not needed) and read by either id. Signed like
//! every other call; `X-Request-Id` is the change's request id on writes, a fresh one on reads.

use super::people_wire as pw;
use super::GenericRestCrm;
use crate::cards;
use async_trait::async_trait;
use backbone_sync::clients::{
    Card, ClientCrm, ClientId, CrmContact, CrmTask, Field, Interaction, Task, WriteContext,
};
use backbone_sync::ports::CrmError;
use reqwest::{Method, StatusCode};
use serde_json::Value as Json;

impl GenericRestCrm {
    /// `GET`: the record, `None` on 404.
    async fn fetch(&self, path: &str, what: &str) -> Result<Option<Json>, CrmError> {
        let reply = self
            .call(Method::GET, path, Vec::new(), &cards::fresh_request_id())
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(cards::refused(
                reply.status.as_u16(),
                reply.retry_after(),
                what,
                &pw::problem_code(&reply.body),
            ));
        }
        reply.json(what).map(Some)
    }

    /// `PUT` by external id: the stored record (`201` created, `200` updated).
    async fn put(
        &self,
        path: &str,
        body: &Json,
        ctx: WriteContext<'_>,
        what: &str,
    ) -> Result<Json, CrmError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CrmError::permanent(e.to_string()))?;
        let reply = self.call(Method::PUT, path, bytes, ctx.request_id).await?;
        if !reply.status.is_success() {
            return Err(cards::refused(
                reply.status.as_u16(),
                reply.retry_after(),
                what,
                &pw::problem_code(&reply.body),
            ));
        }
        reply.json(what)
    }
}

#[async_trait]
impl ClientCrm for GenericRestCrm {
    #[tracing::instrument(name = "crm.read_contact", skip_all, fields(vendor = "generic"))]
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError> {
        let path = cards::path("/api/v1/contacts", &[client.as_str()]);
        let Some(obj) = self.fetch(&path, "read contact").await? else {
            return Ok(None);
        };
        let contact = pw::contact(&obj)?;
        if contact.client_id.as_ref().is_some_and(|c| c != client) {
            return Err(CrmError::permanent(
                "read contact: the CRM answered with another client's contact",
            ));
        }
        Ok(Some(contact))
    }

    #[tracing::instrument(name = "crm.read_contact_by_crm_id", skip_all, fields(vendor = "generic"))]
    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError> {
        let path = cards::path("/api/v1/contacts/by-id", &[crm_id]);
        match self.fetch(&path, "read contact").await? {
            Some(obj) => pw::contact(&obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.write_contact", skip_all, fields(vendor = "generic", fields = fields.len()))]
    async fn write_contact(
        &self,
        client: &ClientId,
        _existing: Option<&str>,
        card: &Card,
        fields: &[Field],
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let path = cards::path("/api/v1/contacts", &[client.as_str()]);
        let answer = self
            .put(&path, &pw::contact_body(card, fields), ctx, "write contact")
            .await?;
        pw::record_id(&answer, "write contact")
    }

    #[tracing::instrument(name = "crm.write_task", skip_all, fields(vendor = "generic"))]
    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        _existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let path = cards::path("/api/v1/tasks", &[task.task_id.as_str()]);
        let answer = self
            .put(&path, &pw::task_body(task, contact), ctx, "write task")
            .await?;
        pw::record_id(&answer, "write task")
    }

    #[tracing::instrument(name = "crm.read_task", skip_all, fields(vendor = "generic"))]
    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError> {
        let path = cards::path("/api/v1/tasks/by-id", &[crm_id]);
        match self.fetch(&path, "read task").await? {
            Some(obj) => pw::task(&obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.add_interaction", skip_all, fields(vendor = "generic"))]
    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let path = cards::path("/api/v1/interactions", &[interaction.interaction_id.as_str()]);
        let answer = self
            .put(
                &path,
                &pw::interaction_body(interaction, contact),
                ctx,
                "add interaction",
            )
            .await?;
        pw::record_id(&answer, "add interaction")
    }
}
