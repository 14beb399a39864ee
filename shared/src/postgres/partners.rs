//! Partners in PostgreSQL.

use tokio_postgres::{GenericClient, Row};

use super::DbError;
use crate::domain::{DeliveryFormat, Partner, PartnerId};

const COLUMNS: &str = "partner_id, name, enabled, delivery_format, endpoint_template, body_template, headers, \
    signing_secret, success_body_match, timeout_ms, rate_per_second, max_concurrency, max_attempts, \
    retry_base_ms, retry_max_ms";

/// Inserts or replaces a partner's configuration.
pub async fn upsert(db: &impl GenericClient, p: &Partner) -> Result<(), DbError> {
    let headers: serde_json::Map<String, serde_json::Value> =
        p.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    db.execute(
        "INSERT INTO partners (partner_id, name, enabled, delivery_format, endpoint_template, body_template,
                               headers, signing_secret, success_body_match, timeout_ms, rate_per_second,
                               max_concurrency, max_attempts, retry_base_ms, retry_max_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (partner_id) DO UPDATE SET
             name = EXCLUDED.name, enabled = EXCLUDED.enabled, delivery_format = EXCLUDED.delivery_format,
             endpoint_template = EXCLUDED.endpoint_template, body_template = EXCLUDED.body_template,
             headers = EXCLUDED.headers, signing_secret = EXCLUDED.signing_secret,
             success_body_match = EXCLUDED.success_body_match, timeout_ms = EXCLUDED.timeout_ms,
             rate_per_second = EXCLUDED.rate_per_second, max_concurrency = EXCLUDED.max_concurrency,
             max_attempts = EXCLUDED.max_attempts, retry_base_ms = EXCLUDED.retry_base_ms,
             retry_max_ms = EXCLUDED.retry_max_ms, updated_at = now()",
        &[
            &p.partner_id.as_str(),
            &p.name,
            &p.enabled,
            &p.delivery_format.as_str(),
            &p.endpoint_template,
            &p.body_template,
            &serde_json::Value::Object(headers),
            &p.signing_secret,
            &p.success_body_match,
            &to_i32(p.timeout_ms)?,
            &p.rate_per_second.map(to_i32).transpose()?,
            &to_i32(p.max_concurrency)?,
            &to_i32(p.max_attempts)?,
            &to_i32(p.retry_base_ms)?,
            &to_i32(p.retry_max_ms)?,
        ],
    )
    .await?;
    Ok(())
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
