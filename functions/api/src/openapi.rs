//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they take and return. A copy
//! is kept in `docs/openapi.json` (a test fails when it is out of date and says how to refresh it).

use utoipa::OpenApi;

use crate::{audit, campaigns, dead_letters, health, partners, problem, reads, uploads};

#[derive(OpenApi)]
#[openapi(
    info(title = "ClickPacer management API", description = "Campaigns, partners and pacing, managed and watched."),
    paths(
        campaigns::list,
        campaigns::create,
        campaigns::read,
        campaigns::replace,
        campaigns::pause,
        campaigns::resume,
        campaigns::archive,
        campaigns::cancel_pending,
        health::health,
        audit::campaign_trail,
        audit::partner_trail,
        partners::list,
        partners::create,
        partners::read,
        partners::replace,
        partners::enable,
        partners::disable,
        reads::reconciliation,
        reads::pacing,
        uploads::list,
        uploads::read,
        dead_letters::list,
        dead_letters::reasons,
        dead_letters::replay,
    ),
    components(schemas(problem::Problem, clickpacer::domain::FieldError)),
    tags((name = "campaigns"), (name = "uploads"), (name = "dead letters"), (name = "partners"), (name = "system"))
)]
struct ApiDoc;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}
