//! Partners in PostgreSQL.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::DbError;
use crate::domain::{DeliveryFormat, Partner, PartnerId};

const COLUMNS: &str = "partner_id, name, enabled, delivery_format, endpoint_template, body_template, headers, \
    signing_secret, success_body_match, timeout_ms, rate_per_second, max_concurrency, max_attempts, \
    retry_base_ms, retry_max_ms";

/// A partner's configuration as the database holds it: its values as PostgreSQL takes them.
fn values(p: &Partner) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, DbError> {
    let headers: serde_json::Map<String, serde_json::Value> =
        p.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    Ok(vec![
        Box::new(p.partner_id.to_string()),
        Box::new(p.name.clone()),
        Box::new(p.enabled),
        Box::new(p.delivery_format.as_str()),
        Box::new(p.endpoint_template.clone()),
        Box::new(p.body_template.clone()),
        Box::new(serde_json::Value::Object(headers)),
        Box::new(p.signing_secret.clone()),
        Box::new(p.success_body_match.clone()),
        Box::new(to_i32(p.timeout_ms)?),
        Box::new(p.rate_per_second.map(to_i32).transpose()?),
        Box::new(to_i32(p.max_concurrency)?),
        Box::new(to_i32(p.max_attempts)?),
        Box::new(to_i32(p.retry_base_ms)?),
        Box::new(to_i32(p.retry_max_ms)?),
    ])
}

const INSERT: &str = "INSERT INTO partners (partner_id, name, enabled, delivery_format, endpoint_template,
        body_template, headers, signing_secret, success_body_match, timeout_ms, rate_per_second, max_concurrency,
        max_attempts, retry_base_ms, retry_max_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

const SET_ALL: &str = "name = $2, enabled = $3, delivery_format = $4, endpoint_template = $5, body_template = $6,
    headers = $7, signing_secret = $8, success_body_match = $9, timeout_ms = $10, rate_per_second = $11,
    max_concurrency = $12, max_attempts = $13, retry_base_ms = $14, retry_max_ms = $15, updated_at = now(),
    version = partners.version + 1";

const STORED: &str = "version, created_at, updated_at";

/// Inserts or replaces a partner's configuration (seeding and tests; the API creates and replaces with versions).
pub async fn upsert(db: &impl GenericClient, p: &Partner) -> Result<(), DbError> {
    let values = values(p)?;
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
    let sql = format!("{INSERT} ON CONFLICT (partner_id) DO UPDATE SET {SET_ALL}");
    db.execute(&sql, &params).await?;
    Ok(())
}

/// A partner with its version and times.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPartner {
    pub partner: Partner,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a change made from a version came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Done(Box<StoredPartner>),
    /// The partner changed since that version: this is the version it is at.
    Stale {
        current: i64,
    },
    Missing,
}

/// Creates a partner; `None` when one with its id exists already.
pub async fn create(db: &impl GenericClient, p: &Partner) -> Result<Option<StoredPartner>, DbError> {
    let values = values(p)?;
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
    let sql = format!("{INSERT} ON CONFLICT (partner_id) DO NOTHING RETURNING {COLUMNS}, {STORED}");
    db.query_opt(&sql, &params).await?.map(|row| stored_from_row(&row)).transpose()
}

/// Replaces a partner's configuration if it is still at `expected` (any version when `None`).
pub async fn replace(db: &impl GenericClient, p: &Partner, expected: Option<i64>) -> Result<Change, DbError> {
    let values = values(p)?;
    let mut params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
    params.push(&expected);
    let sql = format!(
        "UPDATE partners SET {SET_ALL} WHERE partner_id = $1 AND ($16::bigint IS NULL OR version = $16)
         RETURNING {COLUMNS}, {STORED}"
    );
    match db.query_opt(&sql, &params).await? {
        Some(row) => Ok(Change::Done(Box::new(stored_from_row(&row)?))),
        None => missing_or_stale(db, &p.partner_id).await,
    }
}

/// Enables or disables a partner if it is still at `expected` (any version when `None`).
pub async fn set_enabled(
    db: &impl GenericClient,
    partner_id: &PartnerId,
    enabled: bool,
    expected: Option<i64>,
) -> Result<Change, DbError> {
    let sql = format!(
        "UPDATE partners SET enabled = $2, updated_at = now(), version = version + 1
         WHERE partner_id = $1 AND ($3::bigint IS NULL OR version = $3) RETURNING {COLUMNS}, {STORED}"
    );
    match db.query_opt(&sql, &[&partner_id.as_str(), &enabled, &expected]).await? {
        Some(row) => Ok(Change::Done(Box::new(stored_from_row(&row)?))),
        None => missing_or_stale(db, partner_id).await,
    }
}

async fn missing_or_stale(db: &impl GenericClient, partner_id: &PartnerId) -> Result<Change, DbError> {
    let current = db.query_opt("SELECT version FROM partners WHERE partner_id = $1", &[&partner_id.as_str()]).await?;
    Ok(current.map_or(Change::Missing, |row| Change::Stale { current: row.get(0) }))
}

/// A partner with its version and times.
pub async fn get_stored(db: &impl GenericClient, partner_id: &PartnerId) -> Result<Option<StoredPartner>, DbError> {
    let sql = format!("SELECT {COLUMNS}, {STORED} FROM partners WHERE partner_id = $1");
    db.query_opt(&sql, &[&partner_id.as_str()]).await?.map(|row| stored_from_row(&row)).transpose()
}

/// Every partner with its version and times, by id.
pub async fn list_stored(db: &impl GenericClient) -> Result<Vec<StoredPartner>, DbError> {
    let sql = format!("SELECT {COLUMNS}, {STORED} FROM partners ORDER BY partner_id");
    db.query(&sql, &[]).await?.iter().map(stored_from_row).collect()
}

fn stored_from_row(row: &Row) -> Result<StoredPartner, DbError> {
    Ok(StoredPartner {
        partner: from_row(row)?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn get(db: &impl GenericClient, partner_id: &PartnerId) -> Result<Option<Partner>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM partners WHERE partner_id = $1");
    db.query_opt(&sql, &[&partner_id.as_str()]).await?.map(|row| from_row(&row)).transpose()
}

pub async fn list(db: &impl GenericClient) -> Result<Vec<Partner>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM partners ORDER BY partner_id");
    db.query(&sql, &[]).await?.iter().map(from_row).collect()
}

fn from_row(row: &Row) -> Result<Partner, DbError> {
    let invalid = |what: &str| DbError::Invalid(format!("partner row has an invalid {what}"));
    let headers: serde_json::Value = row.try_get("headers")?;
    let headers = headers
        .as_object()
        .ok_or_else(|| invalid("headers object"))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(|| invalid("header value"))?.to_owned())))
        .collect::<Result<_, DbError>>()?;
    let format: String = row.try_get("delivery_format")?;
    Ok(Partner {
        partner_id: PartnerId::parse(row.try_get::<_, String>("partner_id")?).map_err(|_| invalid("id"))?,
        name: row.try_get("name")?,
        enabled: row.try_get("enabled")?,
        delivery_format: DeliveryFormat::parse(&format).ok_or_else(|| invalid("delivery format"))?,
        endpoint_template: row.try_get("endpoint_template")?,
        body_template: row.try_get("body_template")?,
        headers,
        signing_secret: row.try_get("signing_secret")?,
        success_body_match: row.try_get("success_body_match")?,
        timeout_ms: to_u32(row.try_get("timeout_ms")?),
        rate_per_second: row.try_get::<_, Option<i32>>("rate_per_second")?.map(to_u32),
        max_concurrency: to_u32(row.try_get("max_concurrency")?),
        max_attempts: to_u32(row.try_get("max_attempts")?),
        retry_base_ms: to_u32(row.try_get("retry_base_ms")?),
        retry_max_ms: to_u32(row.try_get("retry_max_ms")?),
    })
}

pub(crate) fn to_i32(value: u32) -> Result<i32, DbError> {
    i32::try_from(value).map_err(|_| DbError::Invalid(format!("{value} is out of range")))
}

/// Columns read here carry CHECK (> 0) or (>= 0) constraints, so a negative value cannot occur.
pub(crate) fn to_u32(value: i32) -> u32 {
    value.max(0) as u32
}
