//! The dashboard's API: read-only views over PostgreSQL. Routes (HTTP API, behind the Cognito JWT authorizer):
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `{"status": "ok", "events_waiting": n}` when the database answers |
//! | `GET /campaigns` | every campaign's configuration |
//! | `GET /campaigns/{id}/pacing` | the campaign's last 30 local days: released, delivered, failed, reserved, spent |
//! | `GET /partners` | every partner's configuration (signing secrets never leave the database) |
//! | `GET /reconciliation` | per upload and per campaign: accepted = delivered + dead + cancelled + pending |
//!
//! Anything else is a 404 (unknown route) or 405 (another method), with a JSON error body.

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use clickpacer::domain::CampaignId;
use clickpacer::postgres::{DbError, PgPool, bridge, campaigns, partners, reports};
use serde_json::{Value, json};

pub async fn handle(pool: &PgPool, request: &ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
    let method = request.request_context.http.method.clone();
    let path = request.raw_path.as_deref().unwrap_or("/");
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let known = matches!(
        segments.as_slice(),
        ["health"] | ["campaigns"] | ["partners"] | ["reconciliation"] | ["campaigns", _, "pacing"]
    );
    if !known {
        return respond(404, json!({ "error": format!("no route {path}") }));
    }
    if method != http::Method::GET {
        return respond(405, json!({ "error": format!("{method} is not allowed on {path}; use GET") }));
    }
    match route(pool, &segments).await {
        Ok((status, body)) => respond(status, body),
        Err(e) => {
            // The cause goes to the log, not to the client.
            tracing::error!(error = %e, path, "request failed");
            respond(500, json!({ "error": "internal error" }))
        }
    }
}

async fn route(pool: &PgPool, segments: &[&str]) -> Result<(i64, Value), DbError> {
    let client = pool.get().await?;
    let db = &**client;
    Ok(match segments {
        ["health"] => (200, json!({ "status": "ok", "events_waiting": bridge::outbox_depth(db).await? })),
        ["campaigns"] => (200, json!({ "campaigns": campaigns::list(db).await? })),
        ["partners"] => (200, json!({ "partners": partners::list(db).await? })),
        ["reconciliation"] => {
            let uploads = reports::uploads(db).await?;
            let campaigns = reports::campaigns(db).await?;
            let holds = uploads.iter().all(|u| u.holds()) && campaigns.iter().all(|c| c.fates.holds());
            (200, json!({ "holds": holds, "uploads": uploads, "campaigns": campaigns }))
        }
        ["campaigns", id, "pacing"] => match CampaignId::parse(*id) {
            Err(e) => (400, json!({ "error": e.to_string() })),
            Ok(id) => match campaigns::get(db, &id).await? {
                None => (404, json!({ "error": format!("unknown campaign {id:?}") })),
                Some(campaign) => {
                    let days = reports::pacing_days(db, id.as_str(), 30).await?;
                    (200, json!({ "campaign": campaign, "days": days }))
                }
            },
        },
        _ => (404, json!({ "error": "no such route" })),
    })
}

fn respond(status: i64, body: Value) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = status;
    response.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.body = Some(Body::Text(body.to_string()));
    response
}
