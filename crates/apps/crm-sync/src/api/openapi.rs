//! The OpenAPI document of the API, as served at `/openapi.json` and committed at
//! `docs/openapi/crm-sync-v1.json` (the `api` tests compare them; `UPDATE_OPENAPI=1` rewrites
//! the committed one).

use super::problem::Problem;
use super::{clients, operator, webhooks};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "crm-sync", version = "1.0.0",
         description = "The two-way CRM sync of client cards, tasks and interaction history (docs/two-way-sync.md). Every /v1 call needs a bearer service token; every PUT, PATCH and POST needs an Idempotency-Key (the same key with the same body answers the first answer again, with `idempotent-replayed: true`). X-Request-Id is accepted (1 to 128 of A-Z a-z 0-9 . _ : -) or generated, and answered back. Refusals are RFC 9457 problem details with a stable `code`."),
    paths(clients::put_card, clients::patch_card, clients::get_card, clients::put_task, clients::put_interaction,
          operator::list, operator::one, operator::resolve,
          webhooks::receive, webhooks::receive_with_secret),
    components(schemas(Problem, clients::CardFields, clients::CardRequest, clients::CardResponse, clients::FieldTime,
                       clients::SourceName, clients::TaskStateName, clients::TaskRequest, clients::TaskResponse,
                       clients::ChannelName, clients::DirectionName, clients::InteractionRequest,
                       clients::InteractionResponse, operator::OperatorTaskStateName, operator::ChoiceName,
                       operator::FieldValueDoc, operator::OperatorTaskResponse, operator::OperatorTaskList,
                       operator::ResolveRequest, webhooks::VendorName)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, pretty-printed.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}
