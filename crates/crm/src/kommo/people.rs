//! [`ClientCrm`] for Kommo: contacts found by a `query` search filtered to the exact value of
//! our client-id custom field, tasks on the contact, history as notes. Every call goes through
//! the adapter's 7/s limiter, block pause and auth, with `X-Request-Id`.

use super::people_wire as pw;
use super::KommoCrm;
use crate::cards;
use crate::wire::Reply;
use async_trait::async_trait;
use backbone_sync::clients::{
    Card, ClientCrm, ClientId, CrmContact, CrmTask, Field, Interaction, Task, TaskState, WriteContext,
};
use backbone_sync::ports::CrmError;
use reqwest::{Method, StatusCode};
use serde_json::Value as Json;

/// `limit` of a search page (Kommo's most).
const PAGE: usize = 250;
/// Search pages read before giving up: a client id is specific, so its contact comes early.
const MAX_PAGES: usize = 4;

fn refused(reply: &Reply, what: &str) -> CrmError {
    let code = if reply.status == StatusCode::BAD_REQUEST {
        pw::validation_summary(&reply.body)
    } else {
        String::new()
    };
    cards::refused(reply.status.as_u16(), reply.retry_after(), what, &code)
}

impl KommoCrm {
    /// A `GET`: `None` when Kommo answers 204 (nothing) or 404.
    async fn fetch(&self, path_and_query: &str, what: &str) -> Result<Option<Json>, CrmError> {
        self.fetch_as(path_and_query, what, &cards::fresh_request_id())
            .await
    }

    /// A `GET`; `None` when Kommo answers `204` (nothing) or `404`.
    async fn fetch_as(
        &self,
        path_and_query: &str,
        what: &str,
        request_id: &str,
    ) -> Result<Option<Json>, CrmError> {
        let reply = self
            .call_as(Method::GET, path_and_query, None, Some(request_id))
            .await?;
        match reply.status {
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => reply.json(what).map(Some),
            _ => Err(refused(&reply, what)),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: &Json,
        ctx: WriteContext<'_>,
        what: &str,
    ) -> Result<Json, CrmError> {
        let reply = self
            .call_as(method, path, Some(body), Some(ctx.request_id))
            .await?;
        if !reply.status.is_success() {
            return Err(refused(&reply, what));
        }
        reply.json(what)
    }
}

#[async_trait]
impl ClientCrm for KommoCrm {
    #[tracing::instrument(name = "crm.read_contact", skip_all, fields(vendor = "kommo"))]
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError> {
        let f = &self.cfg.contact_fields;
        let mut found = Vec::new();
        for page in 1..=MAX_PAGES {
            let query = {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("query", client.as_str())
                    .append_pair("limit", &PAGE.to_string());
                if page > 1 {
                    q.append_pair("page", &page.to_string());
                }
                q.finish()
            };
            let Some(answer) = self
                .fetch(&format!("/api/v4/contacts?{query}"), "Kommo contacts search")
                .await?
            else {
                break;
            };
            let contacts = pw::listed(&answer);
            // `query` is a full-text search: `c-1` also finds `c-10`. Only the exact id counts.
            for c in contacts {
                if pw::client_of(f, c).as_ref() == Some(client) {
                    found.push(pw::contact(f, c)?);
                }
            }
            if contacts.len() < PAGE {
                break;
            }
        }
        found.sort_by(|a, b| a.crm_id.cmp(&b.crm_id));
        found.dedup_by(|a, b| a.crm_id == b.crm_id);
        if found.len() > 1 {
            return Err(CrmError::permanent(
                "several Kommo contacts carry this client id: an operator must merge them",
            ));
        }
        Ok(found.pop())
    }

    #[tracing::instrument(name = "crm.read_contact_by_crm_id", skip_all, fields(vendor = "kommo"))]
    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError> {
        let Ok(id) = crm_id.parse::<u64>() else {
            return Ok(None);
        };
        match self
            .fetch(&format!("/api/v4/contacts/{id}"), "Kommo contact read")
            .await?
        {
            Some(obj) => pw::contact(&self.cfg.contact_fields, &obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.write_contact", skip_all, fields(vendor = "kommo", fields = fields.len()))]
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
            let body = pw::contact_body(f, client, None, card, fields)?;
            let answer = self
                .send(
                    Method::POST,
                    "/api/v4/contacts",
                    &body,
                    ctx,
                    "Kommo contact create",
                )
                .await?;
            return pw::written_id(&answer, "contacts").map(|id| id.to_string());
        };
        let id = cards::numeric_id("contact", existing)?;
        if fields.is_empty() {
            return Ok(existing.to_owned());
        }
        let body = pw::contact_body(f, client, Some(id), card, fields)?;
        self.send(
            Method::PATCH,
            "/api/v4/contacts",
            &body,
            ctx,
            "Kommo contact update",
        )
        .await?;
        Ok(existing.to_owned())
    }

    #[tracing::instrument(name = "crm.write_task", skip_all, fields(vendor = "kommo"))]
    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let contact = cards::numeric_id("contact", contact)?;
        let id = match existing {
            Some(e) => cards::numeric_id("task", e)?,
            None => {
                // A create cut off from our commit by a crash left the task there: take it.
                let listed = self
                    .fetch_as(&pw::task_lookup(contact), "Kommo task list", ctx.request_id)
                    .await?;
                if let Some(id) = pw::find_embedded(listed.as_ref(), "tasks", "/text", |t| {
                    cards::split_ref(t).1 == Some(task.task_id.as_str())
                }) {
                    return self
                        .write_task(task, &contact.to_string(), Some(&id.to_string()), ctx)
                        .await;
                }
                let body = pw::task_body(task, contact, None)?;
                let answer = self
                    .send(Method::POST, "/api/v4/tasks", &body, ctx, "Kommo task create")
                    .await?;
                let id = pw::written_id(&answer, "tasks")?;
                if task.state == TaskState::Open {
                    return Ok(id.to_string());
                }
                id
            }
        };
        // An update, or the completion of a task created done or cancelled.
        let body = pw::task_body(task, contact, Some(id))?;
        self.send(Method::PATCH, "/api/v4/tasks", &body, ctx, "Kommo task update")
            .await?;
        Ok(id.to_string())
    }

    #[tracing::instrument(name = "crm.read_task", skip_all, fields(vendor = "kommo"))]
    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError> {
        let Ok(id) = crm_id.parse::<u64>() else {
            return Ok(None);
        };
        match self
            .fetch(&format!("/api/v4/tasks/{id}"), "Kommo task read")
            .await?
        {
            Some(obj) => pw::task(&obj).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(name = "crm.add_interaction", skip_all, fields(vendor = "kommo"))]
    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        let contact = cards::numeric_id("contact", contact)?;
        // A note made before a crash cut it off from our commit is not made again.
        let listed = self
            .fetch_as(&pw::note_lookup(contact), "Kommo note list", ctx.request_id)
            .await?;
        if let Some(id) = pw::find_embedded(listed.as_ref(), "notes", "/params/text", |t| {
            cards::marks_interaction(t, interaction)
        }) {
            return Ok(id.to_string());
        }
        let answer = self
            .send(
                Method::POST,
                &format!("/api/v4/contacts/{contact}/notes"),
                &pw::note_body(interaction),
                ctx,
                "Kommo note create",
            )
            .await?;
        pw::written_id(&answer, "notes").map(|id| id.to_string())
    }
}
