//! PostgreSQL: the pool every function builds once at cold start, the migrations, and the repositories
//! (SQL lives beside the code that runs it).

pub mod audit;
pub mod batch_list;
pub mod bridge;
pub mod campaign_list;
pub mod campaigns;
pub mod cancel;
pub mod clicks;
pub mod dead_letters;
pub mod health;
pub mod pacer;
pub mod partners;
pub mod replay;
pub mod reports;
pub mod stats;
pub mod upload_list;
pub mod uploads;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::config::DatabaseConfig;

pub use deadpool_postgres::Pool as PgPool;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database pool setup: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("migrations: {0}")]
    Migration(#[from] refinery::Error),
    #[error("{0}")]
    Invalid(String),
}

/// tokio-postgres prints a server error as just "db error"; the server's message, detail and code are what an
/// operator needs.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => e.to_string(),
    }
}

fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}

impl DbError {
    /// True when the failure came from a constraint the schema enforces (the caller sent bad data),
    /// as opposed to an outage worth retrying.
    pub fn is_constraint_violation(&self) -> bool {
        self.sql_state().is_some_and(|code| code.code().starts_with("23"))
    }

    pub fn is_unique_violation(&self) -> bool {
        self.sql_state() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    }

    pub fn sql_state(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Self::Postgres(e) => e.code(),
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => e.code(),
            _ => None,
        }
    }
}

/// The one pool builder. `Verified` recycling checks a connection before reuse, so a restarted server or a
/// proxy-closed connection costs one retry-free reconnect instead of a failed invocation.
pub fn build_pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    let pg: tokio_postgres::Config =
        config.url.parse().map_err(|_| DbError::Invalid("DATABASE_URL is not a PostgreSQL URL".into()))?;
    let manager =
        Manager::from_config(pg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Verified });
    Ok(Pool::builder(manager).max_size(config.pool_size).build()?)
}

/// The migrations compiled into the binary, in order: `(version, name)`.
pub fn known_migrations() -> Vec<(i32, String)> {
    let mut known: Vec<(i32, String)> =
        embedded::migrations::runner().get_migrations().iter().map(|m| (m.version(), m.name().to_owned())).collect();
    // In the order they apply (the embedded list follows file names, where V10 sorts before V2).
    known.sort_by_key(|(version, _)| *version);
    known
}

/// Applies every pending migration; safe to run again (already applied ones are skipped) and from several
/// processes at once (a session-level advisory lock serialises them).
pub async fn migrate(pool: &Pool) -> Result<Vec<(i32, String)>, DbError> {
    let mut client = pool.get().await?;
    client.execute("SELECT pg_advisory_lock(hashtext('clickpacer.migrate'))", &[]).await?;
    let result = embedded::migrations::runner().run_async(&mut **client).await;
    client.execute("SELECT pg_advisory_unlock(hashtext('clickpacer.migrate'))", &[]).await?;
    let report = result?;
    Ok(report.applied_migrations().iter().map(|m| (m.version(), m.name().to_owned())).collect())
}

/// Versions already applied to the database (empty before the first migration).
pub async fn applied_migrations(pool: &Pool) -> Result<Vec<i32>, DbError> {
    let client = pool.get().await?;
    if client.query_one("SELECT to_regclass('refinery_schema_history') IS NULL", &[]).await?.get(0) {
        return Ok(Vec::new());
    }
    let rows = client.query("SELECT version FROM refinery_schema_history ORDER BY version", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
