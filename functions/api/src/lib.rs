//! The management API: one axum [`Router`] that Lambda serves behind API Gateway's HTTP API (through
//! `lambda_http`) and the local runner serves on a port, so the demo, the tests and the dashboard all talk to the
//! same handlers. Its OpenAPI 3.1 document is generated from the handlers and types ([`openapi`]) and served at
//! `/openapi.json`; errors are problem details ([`problem`]).
//!
//! - [`campaigns`]: create, read, list (filters, sort, keyset pages), replace with `If-Match`, pause, resume,
//!   archive;
//! - [`reads`]: health, partners, reconciliation, a campaign's pacing days.
//!
//! An unknown route is a 404 and another method a 405, both as problem details.

pub mod campaigns;
pub mod extract;
pub mod openapi;
pub mod problem;
pub mod reads;

use axum::http::Uri;
use axum::{Json, Router};
use clickpacer::postgres::PgPool;

use crate::problem::Problem;

/// What the handlers share: the database pool.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

impl AppState {
    /// A pooled connection; failing to get one is a 500 whose cause goes to the log.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, Problem> {
        Ok(self.pool.get().await.map_err(clickpacer::postgres::DbError::from)?)
    }
}

/// The whole API.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .merge(campaigns::routes())
        .merge(reads::routes())
        .route("/openapi.json", axum::routing::get(|| async { Json(openapi::document()) }))
        .method_not_allowed_fallback(|uri: Uri| async move {
            Problem::method_not_allowed(format!("{} does not take this method", uri.path()))
        })
        .fallback(|uri: Uri| async move { Problem::not_found(format!("no route {}", uri.path())) })
        .with_state(AppState { pool })
}
