//! The management API: one axum [`Router`] that Lambda serves behind API Gateway's HTTP API (through
//! `lambda_http`) and the local runner serves on a port, so the demo, the tests and the dashboard all talk to the
//! same handlers. Its OpenAPI 3.1 document is generated from the handlers and types ([`openapi`]) and served at
//! `/openapi.json`; errors are problem details ([`problem`]).
//!
//! - [`campaigns`]: create, read, list (filters, sort, keyset pages), replace with `If-Match`, pause, resume,
//!   archive;
//! - [`uploads`]: uploads with their counts and reasons, one upload with its reconciliation and a link to its
//!   rejects report;
//! - [`partners`]: create, read, list, replace with `If-Match`, enable, disable; checked when saved, secrets
//!   write-only;
//! - [`batches`]: batches by campaign, upload, state and due time;
//! - [`clicks`]: one click's row, batch, delivery attempts and event log timeline;
//! - [`audit`]: every change of a campaign or partner, who made it, before and after;
//! - [`dead_letters`]: dead clicks with their reasons, grouped, and their replay (a count first);
//! - [`stats`]: series per minute or hour for a campaign or a partner, and a campaign's local day against its
//!   plan with its budget;
//! - [`reads`]: health and reconciliation.
//!
//! Every route but `/openapi.json` needs a signed-in caller, and changes need an admin ([`auth`]). An unknown
//! route is a 404 and another method a 405, both as problem details.

pub mod audit;
pub mod auth;
pub mod batches;
pub mod campaigns;
pub mod clicks;
pub mod dead_letters;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod partners;
pub mod problem;
pub mod reads;
pub mod stats;
pub mod uploads;

use axum::http::Uri;
use axum::{Json, Router};
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::s3::S3Objects;
use clickpacer::aws::sqs::SqsQueue;
use clickpacer::postgres::PgPool;

use crate::problem::Problem;

/// What the handlers share: the database pool, the upload bucket's client (for links to rejects reports), the
/// queues whose depths the health view shows, and whether partner endpoints may be private addresses (local use
/// only, as for the bridge).
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub objects: S3Objects,
    /// The bucket click files are uploaded to.
    pub upload_bucket: String,
    pub queues: Option<Queues>,
    /// The click event log, for click timelines.
    pub events: Option<DynamoEventLog>,
    /// The bridge's partner-facing HTTP client (address policy included), for test deliveries.
    pub transport: bridge::HttpTransport,
    pub allow_private_partners: bool,
}

/// The click queue and its dead-letter queue.
#[derive(Clone)]
pub struct Queues {
    pub click: SqsQueue,
    pub dead_letter: SqsQueue,
}

impl AppState {
    /// A pooled connection; failing to get one is a 500 whose cause goes to the log.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, Problem> {
        Ok(self.pool.get().await.map_err(clickpacer::postgres::DbError::from)?)
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(campaigns::routes())
        .merge(uploads::routes())
        .merge(dead_letters::routes())
        .merge(partners::routes())
        .merge(audit::routes())
        .merge(clicks::routes())
        .merge(batches::routes())
        .merge(reads::routes())
        .merge(stats::routes())
        .route("/openapi.json", axum::routing::get(|| async { Json(openapi::document()) }))
        .method_not_allowed_fallback(|uri: Uri| async move {
            Problem::method_not_allowed(format!("{} does not take this method", uri.path()))
        })
        .fallback(|uri: Uri| async move { Problem::not_found(format!("no route {}", uri.path())) })
        .layer(axum::middleware::from_fn(auth::authorize))
        .with_state(state)
}
