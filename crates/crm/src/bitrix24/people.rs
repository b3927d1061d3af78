//! [`ClientCrm`] for Bitrix24: contacts linked by `ORIGINATOR_ID` + `ORIGIN_ID`, tasks as
//! to-dos on the contact, history as timeline comments. Every call goes through the adapter's
//! limiter, pause and auth, with `X-Request-Id`.

use super::client::Refusal;
use super::people_wire as pw;
use super::Bitrix24Crm;
use crate::cards;
use async_trait::async_trait;
use backbone_sync::clients::{
    Card, ClientCrm, ClientId, CrmContact, CrmTask, Field, Interaction, Task, TaskState, WriteContext,
};
use backbone_sync::ports::CrmError;
use serde_json::{json, Value as Json};

/// Contacts one `crm.contact.list` may name before we stop reading them one by one: more than
/// one is an operator's case already.
const MAX_LISTED: usize = 10;

/// A refusal told by its status and code only: Bitrix24's description may quote a value.
fn refused(method: &str, r: Refusal) -> CrmError {
    if r.code.is_empty() {
        return r.error;
    }
    let status = r
        .error
        .http_status
        .map(|s| format!(" HTTP {s}"))
        .unwrap_or_default();
    CrmError {
        message: format!("{method}:{status} {}", crate::wire::clip(&r.code)),
        ..r.error
    }
}

impl Bitrix24Crm {
    async fn rest(&self, method: &str, params: Json, request_id: &str) -> Result<Json, CrmError> {
        self.call_as(method, params, Some(request_id))
            .await
            .map_err(|r| refused(method, r))
    }

    /// A `*.get` by id: `None` when Bitrix24 answers `NOT_FOUND`.
    async fn get(&self, method: &str, id: u64, request_id: &str) -> Result<Option<Json>, CrmError> {
        match self.call_as(method, json!({"id": id}), Some(request_id)).await {
            Ok(v) => Ok(Some(v)),
            Err(Refusal { code, .. }) if code == "NOT_FOUND" => Ok(None),
            Err(r) => Err(refused(method, r)),
        }
    }

    async fn contact_by_id(&self, id: u64, request_id: &str) -> Result<Option<CrmContact>, CrmError> {
        match self.get("crm.contact.get", id, request_id).await? {
            Some(obj) => pw::contact(&self.cfg.contact_fields, &obj).map(Some),
            None => Ok(None),
        }
    }

    /// An update of a record that has gone since it was read: worth another try, which reads
    /// again (and creates when it is gone for good).
    async fn update(&self, method: &str, params: Json, request_id: &str) -> Result<Json, CrmError> {
        self.call_as(method, params, Some(request_id)).await.map_err(|r| {
            let gone = r.code == "NOT_FOUND";
            let e = refused(method, r);
            if gone {
                e.as_transient()
            } else {
                e
            }
        })
    }

    async fn set_completed(&self, id: u64, state: TaskState, request_id: &str) -> Result<(), CrmError> {
        self.update(
            "crm.activity.update",
            pw::completion_params(id, state),
            request_id,
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ClientCrm for Bitrix24Crm {
    #[tracing::instrument(name = "crm.read_contact", skip_all, fields(vendor = "bitrix24"))]
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError> {
        let rid = cards::fresh_request_id();
        let f = &self.cfg.contact_fields;
        let listed = pw::listed_ids(
            &self
                .rest("crm.contact.list", pw::list_params(f, client), &rid)
                .await?,
        )?;
        if listed.len() > MAX_LISTED {
            return Err(CrmError::permanent(
                "several Bitrix24 contacts carry this client id: an operator must merge them",
            ));
        }
        // The list filter may match without regard to case: keep exact matches only.
        let mut found = Vec::new();
        for id in listed {
            if let Some(c) = self.contact_by_id(id, &rid).await? {
                if c.client_id.as_ref() == Some(client) {
                    found.push(c);
                }
            }
        }
        if found.len() > 1 {
            return Err(CrmError::permanent(
                "several Bitrix24 contacts carry this client id: an operator must merge them",
            ));
        }
        Ok(found.pop())
    }

    #[tracing::instrument(name = "crm.read_contact_by_crm_id", skip_all, fields(vendor = "bitrix24"))]
    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError> {
        // Bitrix24 ids are numbers: any other id names no contact.
        let Ok(id) = crm_id.parse::<u64>() else {
            return Ok(None);
        };
        self.contact_by_id(id, &cards::fresh_request_id()).await
    }

    #[tracing::instrument(name = "crm.write_contact", skip_all, fields(vendor = "bitrix24", fields = fields.len()))]
    async fn write_contact(
        &self,
        client: &ClientId,
        existing: Option<&str>,
        card: &Card,
        fields: &[Field],
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let f = &self.cfg.contact_fields;
        let Some(existing) = existing else {
            let params = pw::add_params(f, client, card, fields)?;
            let result = self.rest("crm.contact.add", params, ctx.request_id).await?;
            return pw::as_id(Some(&result))
                .map(|id| id.to_string())
                .ok_or_else(|| CrmError::permanent("crm.contact.add: result is not an id"));
        };
        let id = cards::numeric_id("contact", existing)?;
        if fields.is_empty() {
            return Ok(existing.to_owned());
        }
        let result = self
            .update(
                "crm.contact.update",
                pw::update_params(f, id, card, fields)?,
                ctx.request_id,
            )
            .await?;
        if result != Json::Bool(true) {
            return Err(CrmError::permanent(
                "crm.contact.update: the contact was not updated",
            ));
        }
        Ok(existing.to_owned())
    }

    #[tracing::instrument(name = "crm.write_task", skip_all, fields(vendor = "bitrix24"))]
    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let f = &self.cfg.contact_fields;
        let owner = cards::numeric_id("contact", contact)?;
        let rid = ctx.request_id;
        let Some(existing) = existing else {
            // A create cut off from our commit by a crash left the to-do there: take it.
            let marker = pw::todo_marker(f, task);
            let listed = self
                .rest("crm.activity.list", pw::todo_lookup_params(owner), rid)
                .await?;
            if let Some(id) = pw::find_listed(&listed, "DESCRIPTION", |d| d.trim() == marker) {
                return self.write_task(task, contact, Some(&id.to_string()), ctx).await;
            }
            let params = pw::todo_params(f, task, owner, None)?;
            let id = pw::todo_id(&self.rest("crm.activity.todo.add", params, rid).await?)?;
            if task.state != TaskState::Open {
                self.set_completed(id, task.state, rid).await?;
            }
            return Ok(id.to_string());
        };
        let id = cards::numeric_id("task", existing)?;
        let params = pw::todo_params(f, task, owner, Some(id))?;
        // Reopen before editing, edit before completing: a completed to-do is left as it is.
        if task.state == TaskState::Open {
            self.set_completed(id, task.state, rid).await?;
        }
        self.update("crm.activity.todo.update", params, rid).await?;
        if task.state != TaskState::Open {
            self.set_completed(id, task.state, rid).await?;
        }
        Ok(existing.to_owned())
    }

    #[tracing::instrument(name = "crm.read_task", skip_all, fields(vendor = "bitrix24"))]
    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError> {
        let Ok(id) = crm_id.parse::<u64>() else {
            return Ok(None);
        };
        match self
            .get("crm.activity.get", id, &cards::fresh_request_id())
            .await?
        {
            Some(obj) => pw::task(&self.cfg.contact_fields, &obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.add_interaction", skip_all, fields(vendor = "bitrix24"))]
    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let owner = cards::numeric_id("contact", contact)?;
        // A comment made before a crash cut it off from our commit is not made again.
        let listed = self
            .rest(
                "crm.timeline.comment.list",
                pw::comment_lookup_params(owner),
                ctx.request_id,
            )
            .await?;
        if let Some(id) = pw::find_listed(&listed, "COMMENT", |c| cards::marks_interaction(c, interaction)) {
            return Ok(id.to_string());
        }
        let result = self
            .rest(
                "crm.timeline.comment.add",
                pw::comment_params(interaction, owner),
                ctx.request_id,
            )
            .await?;
        pw::as_id(Some(&result))
            .map(|id| id.to_string())
            .ok_or_else(|| CrmError::permanent("crm.timeline.comment.add: result is not an id"))
    }
}
