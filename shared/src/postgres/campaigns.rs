//! Campaigns in PostgreSQL.

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};

use super::DbError;
use super::partners::{to_i32, to_u32};
use crate::domain::{Campaign, CampaignId, CampaignStatus, CatchUp, HourlyWeights, Micros, PacingMode, PartnerId};

const COLUMNS: &str = "campaign_id, name, partner_id, status, time_zone, flight_start, flight_end, pacing_mode, \
    hourly_weights, max_per_second, max_per_minute, max_per_hour, daily_cap, cost_per_click_micros, \
    daily_budget_micros, total_budget_micros, batch_size, catch_up, catch_up_percent";

/// Inserts or replaces a campaign's configuration.
pub async fn upsert(db: &impl GenericClient, c: &Campaign) -> Result<(), DbError> {
    let weights: Option<Vec<f64>> = match &c.pacing {
        PacingMode::HourlyCurve(w) => Some(w.weights().to_vec()),
        _ => None,
    };
    let daily_cap = c.daily_cap.map(i64::try_from).transpose().map_err(|_| DbError::Invalid("daily cap".into()))?;
    db.execute(
        "INSERT INTO campaigns (campaign_id, name, partner_id, status, time_zone, flight_start, flight_end,
                                pacing_mode, hourly_weights, max_per_second, max_per_minute, max_per_hour,
                                daily_cap, cost_per_click_micros, daily_budget_micros, total_budget_micros,
                                batch_size, catch_up, catch_up_percent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (campaign_id) DO UPDATE SET
             name = EXCLUDED.name, partner_id = EXCLUDED.partner_id, status = EXCLUDED.status,
             time_zone = EXCLUDED.time_zone, flight_start = EXCLUDED.flight_start,
             flight_end = EXCLUDED.flight_end, pacing_mode = EXCLUDED.pacing_mode,
             hourly_weights = EXCLUDED.hourly_weights, max_per_second = EXCLUDED.max_per_second,
             max_per_minute = EXCLUDED.max_per_minute, max_per_hour = EXCLUDED.max_per_hour,
             daily_cap = EXCLUDED.daily_cap, cost_per_click_micros = EXCLUDED.cost_per_click_micros,
             daily_budget_micros = EXCLUDED.daily_budget_micros,
             total_budget_micros = EXCLUDED.total_budget_micros, batch_size = EXCLUDED.batch_size,
             catch_up = EXCLUDED.catch_up, catch_up_percent = EXCLUDED.catch_up_percent, updated_at = now()",
        &[
            &c.campaign_id.as_str(),
            &c.name,
            &c.partner_id.as_str(),
            &c.status.as_str(),
            &c.time_zone.name(),
            &c.flight_start,
            &c.flight_end,
            &c.pacing.name(),
            &weights,
            &c.max_per_second.map(to_i32).transpose()?,
            &c.max_per_minute.map(to_i32).transpose()?,
            &c.max_per_hour.map(to_i32).transpose()?,
            &daily_cap,
            &c.cost_per_click.0,
            &c.daily_budget.map(|m| m.0),
            &c.total_budget.map(|m| m.0),
            &to_i32(c.batch_size)?,
            &c.catch_up.name(),
            &match c.catch_up {
                CatchUp::Ahead(percent) => Some(i32::from(percent)),
                _ => None,
            },
        ],
    )
    .await?;
    Ok(())
}

/// Pauses, resumes or archives a campaign; a resume wakes its sleeping batches. Returns whether the campaign
/// exists.
pub async fn set_status(
    db: &impl GenericClient,
    campaign_id: &CampaignId,
    status: CampaignStatus,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let updated = db
        .execute(
            "UPDATE campaigns SET status = $2, updated_at = now() WHERE campaign_id = $1",
            &[&campaign_id.as_str(), &status.as_str()],
        )
        .await?;
    if updated == 1 && status == CampaignStatus::Active {
        wake_deferred(db, campaign_id, now).await?;
    }
    Ok(updated == 1)
}

/// Makes a campaign's deferred batches due at `now`, so the next pacer run judges them under its rules as they
/// are (after a resume, or any change that may relax a rule: a budget raised, a flight extended). Returns how
/// many woke.
pub async fn wake_deferred(
    db: &impl GenericClient,
    campaign_id: &CampaignId,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    Ok(db
        .execute(
            "UPDATE batches SET due_at = $2, defer_reason = NULL
             WHERE campaign_id = $1 AND state = 'pending' AND defer_reason IS NOT NULL AND due_at > $2",
            &[&campaign_id.as_str(), &now],
        )
        .await?)
}

pub async fn get(db: &impl GenericClient, campaign_id: &CampaignId) -> Result<Option<Campaign>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE campaign_id = $1");
    db.query_opt(&sql, &[&campaign_id.as_str()]).await?.map(|row| from_row(&row)).transpose()
}

pub async fn list(db: &impl GenericClient) -> Result<Vec<Campaign>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns ORDER BY campaign_id");
    db.query(&sql, &[]).await?.iter().map(from_row).collect()
}

/// Every campaign that loads, and for each one that does not (a zone PostgreSQL knows and the engine does not,
/// say), its id and the reason: one bad row must not stop the work of every other campaign.
pub async fn list_loadable(db: &impl GenericClient) -> Result<(Vec<Campaign>, Vec<(CampaignId, String)>), DbError> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns ORDER BY campaign_id");
    let mut loaded = Vec::new();
    let mut unloadable = Vec::new();
    for row in db.query(&sql, &[]).await? {
        match from_row(&row) {
            Ok(campaign) => loaded.push(campaign),
            Err(e) => {
                let id: String = row.try_get("campaign_id")?;
                tracing::warn!(campaign_id = id, error = %e, "campaign cannot be loaded");
                if let Ok(id) = CampaignId::parse(id) {
                    unloadable.push((id, e.to_string()));
                }
            }
        }
    }
    Ok((loaded, unloadable))
}

pub(crate) fn from_row(row: &Row) -> Result<Campaign, DbError> {
    let id: String = row.try_get("campaign_id")?;
    let invalid = |what: &str| DbError::Invalid(format!("campaign {id:?} has an invalid {what}"));
    let status: String = row.try_get("status")?;
    let zone: String = row.try_get("time_zone")?;
    let mode: String = row.try_get("pacing_mode")?;
    let weights: Option<Vec<f64>> = row.try_get("hourly_weights")?;
    let pacing = match (mode.as_str(), weights) {
        ("asap", _) => PacingMode::Asap,
        ("even", _) => PacingMode::Even,
        ("hourly_curve", Some(w)) => PacingMode::HourlyCurve(HourlyWeights::parse(&w).map_err(DbError::Invalid)?),
        _ => return Err(invalid("pacing mode")),
    };
    Ok(Campaign {
        campaign_id: CampaignId::parse(id.clone()).map_err(|_| invalid("id"))?,
        name: row.try_get("name")?,
        partner_id: PartnerId::parse(row.try_get::<_, String>("partner_id")?).map_err(|_| invalid("partner"))?,
        status: CampaignStatus::parse(&status).ok_or_else(|| invalid("status"))?,
        // PostgreSQL may know zones chrono-tz does not (and the reverse): refuse rather than guess.
        time_zone: zone.parse().map_err(|_| invalid(&format!("time zone {zone:?} (unknown to the pacing engine)")))?,
        flight_start: row.try_get::<_, Option<DateTime<Utc>>>("flight_start")?,
        flight_end: row.try_get::<_, Option<DateTime<Utc>>>("flight_end")?,
        pacing,
        catch_up: {
            let name: String = row.try_get("catch_up")?;
            let percent = row.try_get::<_, Option<i32>>("catch_up_percent")?.and_then(|p| u16::try_from(p).ok());
            CatchUp::parse(&name, percent).ok_or_else(|| invalid("catch-up setting"))?
        },
        max_per_second: row.try_get::<_, Option<i32>>("max_per_second")?.map(to_u32),
        max_per_minute: row.try_get::<_, Option<i32>>("max_per_minute")?.map(to_u32),
        max_per_hour: row.try_get::<_, Option<i32>>("max_per_hour")?.map(to_u32),
        daily_cap: row.try_get::<_, Option<i64>>("daily_cap")?.map(|v| v.max(0) as u64),
        cost_per_click: Micros(row.try_get("cost_per_click_micros")?),
        daily_budget: row.try_get::<_, Option<i64>>("daily_budget_micros")?.map(Micros),
        total_budget: row.try_get::<_, Option<i64>>("total_budget_micros")?.map(Micros),
        batch_size: to_u32(row.try_get("batch_size")?),
    })
}
