//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they take and return. A copy
//! is kept in `docs/openapi.json` (a test fails when it is out of date and says how to refresh it).

use utoipa::OpenApi;

use crate::{audit, batches, campaigns, clicks, dead_letters, health, partners, problem, reads, stats, uploads};

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
        clicks::search,
        clicks::timeline,
        clicks::campaign_events,
        clicks::partner_events,
        batches::list,
        audit::campaign_trail,
        audit::partner_trail,
        partners::list,
        partners::create,
        partners::read,
        partners::replace,
        partners::enable,
        partners::disable,
        partners::test_delivery,
        reads::reconciliation,
        stats::pacing,
        stats::campaign_stats,
        stats::partner_stats,
        uploads::list,
        uploads::read,
        uploads::upload_link,
        dead_letters::list,
        dead_letters::reasons,
        dead_letters::replay,
    ),
    components(schemas(problem::Problem, clickpacer::domain::FieldError)),
    tags((name = "campaigns"), (name = "uploads"), (name = "dead letters"), (name = "batches"), (name = "partners"), (name = "system"))
)]
struct ApiDoc;

/// The document as JSON, with what every operation shares written in once: errors are problem details
/// (`application/problem+json`), and every operation may answer 400 (an unreadable request), 401 (no verified
/// caller), 404 (no such route or resource) and 500; a change may also answer 403 (not an admin), and one with a
/// body 422 (an invalid body).
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    flatten_all_of(&mut document);
    let problem = serde_json::json!({"$ref": "#/components/schemas/Problem"});
    let Some(paths) = document.get_mut("paths").and_then(serde_json::Value::as_object_mut) else { return document };
    for item in paths.values_mut().filter_map(serde_json::Value::as_object_mut) {
        for (method, operation) in item.iter_mut() {
            let changes = method != "get" && method != "head";
            let has_body = operation.get("requestBody").is_some();
            let Some(responses) = operation.get_mut("responses").and_then(serde_json::Value::as_object_mut) else {
                continue;
            };
            let mut common = vec![
                ("400", "the request cannot be read"),
                ("401", "no verified caller"),
                ("404", "no such route or resource"),
                ("500", "an internal error (the cause is in the API's log)"),
            ];
            if changes {
                common.push(("403", "the caller may not change things"));
            }
            if has_body {
                common.push(("422", "the body is not valid: each field and why"));
            }
            for (status, description) in common {
                responses.entry(status).or_insert_with(|| serde_json::json!({"description": description}));
            }
            for (status, response) in responses.iter_mut() {
                if !status.starts_with('2') {
                    response["content"] = serde_json::json!({"application/problem+json": {"schema": problem}});
                }
            }
        }
    }
    document
}

/// A view that flattens a request type (`#[serde(flatten)]`, e.g. a campaign's configuration in its view) comes
/// out of utoipa as `allOf` the request type, whose `additionalProperties: false` (it refuses unknown fields)
/// would then refuse the view's own fields. The view's schema is written as the one object it is instead: the
/// properties and required fields of every part together.
fn flatten_all_of(document: &mut serde_json::Value) {
    let Some(schemas) = document.pointer("/components/schemas").and_then(serde_json::Value::as_object).cloned() else {
        return;
    };
    let Some(targets) = document.pointer_mut("/components/schemas").and_then(serde_json::Value::as_object_mut) else {
        return;
    };
    for schema in targets.values_mut() {
        let Some(parts) = schema.get("allOf").and_then(serde_json::Value::as_array).cloned() else { continue };
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for part in &parts {
            let part = match part.get("$ref").and_then(serde_json::Value::as_str) {
                Some(reference) => reference.rsplit('/').next().and_then(|name| schemas.get(name)).unwrap_or(part),
                None => part,
            };
            if let Some(p) = part.get("properties").and_then(serde_json::Value::as_object) {
                properties.extend(p.clone());
            }
            if let Some(r) = part.get("required").and_then(serde_json::Value::as_array) {
                required.extend(r.iter().cloned());
            }
        }
        let description = schema.get("description").cloned();
        *schema = serde_json::json!({"type": "object", "properties": properties, "required": required});
        if let Some(description) = description {
            schema["description"] = description;
        }
    }
}
