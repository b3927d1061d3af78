//! The admin API's OpenAPI document, served at `/admin/openapi.json` and committed at
//! `docs/openapi/crm-sync-admin-v1.json` (the `api` tests compare them; `UPDATE_OPENAPI=1`
//! rewrites the committed one).

use super::{dead_letters, overview, search};
use crate::api::problem::Problem;
use backbone_kafka::{
    DeadLetterDetail, DeadLetterList, DeadLetterReplayRequest, DeadLetterSummary, LetterPosition,
};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "crm-sync admin", version = "1.0.0",
         description = "The operator console's view of crm-sync (docs/operator-console.md), on crm-sync's http.listen beside /metrics, served only when http.admin_token is set. Every /admin/v1 call needs `Authorization: Bearer <admin token>`; a write names the person in `X-Operator`. Refusals are RFC 9457 problem details with a stable `code`. Conflicts are the two-way API's /v1/operator-tasks (crm-sync-v1.json)."),
    paths(overview::overview, dead_letters::list, dead_letters::one, dead_letters::replay, search::trace_route),
    components(schemas(Problem, overview::Overview, overview::Now, overview::PartitionLag, overview::Totals,
                       overview::Series, overview::Point, DeadLetterList, DeadLetterSummary, DeadLetterDetail,
                       DeadLetterReplayRequest, LetterPosition, crate::ReplaySummary,
                       crate::replay::ReplayedLetter, search::Found, crate::trace::Trace, crate::trace::Attempt,
                       crate::trace::Source, crate::trace::Retry)),
    modifiers(&AdminBearer)
)]
pub struct AdminDoc;

struct AdminBearer;

impl utoipa::Modify for AdminBearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The admin API's OpenAPI document, pretty-printed.
pub fn openapi_json() -> String {
    AdminDoc::openapi().to_pretty_json().unwrap_or_default()
}
