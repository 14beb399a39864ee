//! Campaigns in PostgreSQL.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::DbError;
use super::partners::{to_i32, to_u32};
use crate::domain::{Campaign, CampaignId, CampaignStatus, CatchUp, HourlyWeights, Micros, PacingMode, PartnerId};

pub(crate) const COLUMNS: &str = "campaign_id, name, partner_id, status, time_zone, flight_start, flight_end, pacing_mode, \
    hourly_weights, max_per_second, max_per_minute, max_per_hour, daily_cap, cost_per_click_micros, \
    daily_budget_micros, total_budget_micros, batch_size, catch_up, catch_up_percent, ingest";

/// A campaign's configuration as the 20 values of [`COLUMNS`], in order, as PostgreSQL takes them.
struct Values<'a> {
    campaign: &'a Campaign,
    campaign_id: &'a str,
    partner_id: &'a str,
    status: &'static str,
    time_zone: &'static str,
    pacing_mode: &'static str,
    weights: Option<Vec<f64>>,
    max_per_second: Option<i32>,
    max_per_minute: Option<i32>,
    max_per_hour: Option<i32>,
    daily_cap: Option<i64>,
    daily_budget: Option<i64>,
    total_budget: Option<i64>,
    batch_size: i32,
    catch_up: &'static str,
    catch_up_percent: Option<i32>,
    ingest: postgres_types::Json<&'a crate::ingest::IngestMapping>,
}

impl<'a> Values<'a> {
    fn of(c: &'a Campaign) -> Result<Self, DbError> {
        Ok(Self {
            campaign: c,
            campaign_id: c.campaign_id.as_str(),
            partner_id: c.partner_id.as_str(),
            status: c.status.as_str(),
            time_zone: c.time_zone.name(),
            pacing_mode: c.pacing.name(),
            weights: match &c.pacing {
                PacingMode::HourlyCurve(w) => Some(w.weights().to_vec()),
                _ => None,
            },
            max_per_second: c.max_per_second.map(to_i32).transpose()?,
            max_per_minute: c.max_per_minute.map(to_i32).transpose()?,
            max_per_hour: c.max_per_hour.map(to_i32).transpose()?,
            daily_cap: c.daily_cap.map(i64::try_from).transpose().map_err(|_| DbError::Invalid("daily cap".into()))?,
            daily_budget: c.daily_budget.map(|m| m.0),
            total_budget: c.total_budget.map(|m| m.0),
            batch_size: to_i32(c.batch_size)?,
            catch_up: c.catch_up.name(),
            catch_up_percent: match c.catch_up {
                CatchUp::Ahead(percent) => Some(i32::from(percent)),
                _ => None,
            },
            ingest: postgres_types::Json(&c.ingest),
        })
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 20] {
        let c = self.campaign;
        [
            &self.campaign_id,
            &c.name,
            &self.partner_id,
            &self.status,
            &self.time_zone,
            &c.flight_start,
            &c.flight_end,
            &self.pacing_mode,
            &self.weights,
            &self.max_per_second,
            &self.max_per_minute,
            &self.max_per_hour,
            &self.daily_cap,
            &c.cost_per_click.0,
            &self.daily_budget,
            &self.total_budget,
            &self.batch_size,
            &self.catch_up,
            &self.catch_up_percent,
            &self.ingest,
        ]
    }
}

const INSERT: &str = "INSERT INTO campaigns (campaign_id, name, partner_id, status, time_zone, flight_start,
        flight_end, pacing_mode, hourly_weights, max_per_second, max_per_minute, max_per_hour, daily_cap,
        cost_per_click_micros, daily_budget_micros, total_budget_micros, batch_size, catch_up, catch_up_percent, ingest)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

const SET_ALL: &str = "name = $2, partner_id = $3, status = $4, time_zone = $5, flight_start = $6,
    flight_end = $7, pacing_mode = $8, hourly_weights = $9, max_per_second = $10, max_per_minute = $11,
    max_per_hour = $12, daily_cap = $13, cost_per_click_micros = $14, daily_budget_micros = $15,
    total_budget_micros = $16, batch_size = $17, catch_up = $18, catch_up_percent = $19, ingest = $20, updated_at = now(),
    version = campaigns.version + 1";

/// Inserts or replaces a campaign's configuration.
pub async fn upsert(db: &impl GenericClient, c: &Campaign) -> Result<(), DbError> {
    let values = Values::of(c)?;
    let sql = format!("{INSERT} ON CONFLICT (campaign_id) DO UPDATE SET {SET_ALL}");
    db.execute(&sql, &values.params()).await?;
    Ok(())
}

/// A campaign as stored: its configuration, its version (every change bumps it) and when it was created and last
/// changed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCampaign {
    pub campaign: Campaign,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a change made from a version came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Done(Box<StoredCampaign>),
    /// The campaign changed since that version: this is the version it is at.
    Stale {
        current: i64,
    },
    Missing,
}

pub(crate) const STORED: &str = "version, created_at, updated_at";

/// Creates a campaign; `None` when one with its id exists already.
pub async fn create(db: &impl GenericClient, c: &Campaign) -> Result<Option<StoredCampaign>, DbError> {
    let values = Values::of(c)?;
    let sql = format!("{INSERT} ON CONFLICT (campaign_id) DO NOTHING RETURNING {COLUMNS}, {STORED}");
    db.query_opt(&sql, &values.params()).await?.map(|row| stored_from_row(&row)).transpose()
}

/// Replaces a campaign's configuration (status included) if it is still at version `expected` (any version when
/// `None`), and wakes its deferred batches: the new rules may let them go sooner.
pub async fn replace(
    db: &impl GenericClient,
    c: &Campaign,
    expected: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Change, DbError> {
    let values = Values::of(c)?;
    let mut params = values.params().to_vec();
    params.push(&expected);
    let sql = format!(
        "UPDATE campaigns SET {SET_ALL} WHERE campaign_id = $1 AND ($21::bigint IS NULL OR version = $21)
         RETURNING {COLUMNS}, {STORED}"
    );
    match db.query_opt(&sql, &params).await? {
        Some(row) => {
            wake_deferred(db, &c.campaign_id, now).await?;
            Ok(Change::Done(Box::new(stored_from_row(&row)?)))
        }
        None => not_changed(db, &c.campaign_id).await,
    }
}

/// Pauses, resumes or archives a campaign if it is still at version `expected` (any version when `None`); a
/// resume wakes its sleeping batches.
pub async fn change_status(
    db: &impl GenericClient,
    campaign_id: &CampaignId,
    status: CampaignStatus,
    expected: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Change, DbError> {
    let sql = format!(
        "UPDATE campaigns SET status = $2, updated_at = now(), version = version + 1
         WHERE campaign_id = $1 AND ($3::bigint IS NULL OR version = $3) RETURNING {COLUMNS}, {STORED}"
    );
    match db.query_opt(&sql, &[&campaign_id.as_str(), &status.as_str(), &expected]).await? {
        Some(row) => {
            if status == CampaignStatus::Active {
                wake_deferred(db, campaign_id, now).await?;
            }
            Ok(Change::Done(Box::new(stored_from_row(&row)?)))
        }
        None => not_changed(db, campaign_id).await,
    }
}

async fn not_changed(db: &impl GenericClient, campaign_id: &CampaignId) -> Result<Change, DbError> {
    let row = db.query_opt("SELECT version FROM campaigns WHERE campaign_id = $1", &[&campaign_id.as_str()]).await?;
    Ok(match row {
        Some(row) => Change::Stale { current: row.try_get("version")? },
        None => Change::Missing,
    })
}

/// Pauses, resumes or archives a campaign whatever its version; a resume wakes its sleeping batches. Returns
/// whether the campaign exists.
pub async fn set_status(
    db: &impl GenericClient,
    campaign_id: &CampaignId,
    status: CampaignStatus,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    Ok(matches!(change_status(db, campaign_id, status, None, now).await?, Change::Done(_)))
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

/// A campaign with its version and times.
pub async fn get_stored(db: &impl GenericClient, campaign_id: &CampaignId) -> Result<Option<StoredCampaign>, DbError> {
    let sql = format!("SELECT {COLUMNS}, {STORED} FROM campaigns WHERE campaign_id = $1");
    db.query_opt(&sql, &[&campaign_id.as_str()]).await?.map(|row| stored_from_row(&row)).transpose()
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

/// A row of [`COLUMNS`] and [`STORED`].
pub(crate) fn stored_from_row(row: &Row) -> Result<StoredCampaign, DbError> {
    Ok(StoredCampaign {
        campaign: from_row(row)?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
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
        ingest: row
            .try_get::<_, postgres_types::Json<crate::ingest::IngestMapping>>("ingest")
            .map_err(|e| DbError::Invalid(format!("campaign {id:?} has an invalid ingest mapping: {e}")))?
            .0,
    })
}

/// What the batches of each of `campaign_ids` say now, for their delivery status: clicks waiting, those due or on
/// their way, and the rule holding back the deferred batch due first (a batch due later with no rule waits for
/// its plan).
pub async fn pending_work(
    db: &impl GenericClient,
    campaign_ids: &[&str],
) -> Result<std::collections::HashMap<String, crate::pacing::PendingWork>, DbError> {
    let rows = db
        .query(
            "SELECT campaign_id,
                    sum(click_count - settled_clicks)::bigint AS clicks,
                    coalesce(sum(click_count - settled_clicks) FILTER (WHERE state IN ('claimed', 'queued')
                                                                        OR due_at <= now()), 0)::bigint AS moving,
                    (array_agg(coalesce(defer_reason, 'pacing_plan') ORDER BY due_at)
                        FILTER (WHERE state = 'pending' AND due_at > now()))[1] AS reason,
                    min(due_at) FILTER (WHERE state = 'pending' AND due_at > now()) AS until
             FROM batches WHERE campaign_id = ANY($1) AND state IN ('pending', 'claimed', 'queued')
             GROUP BY campaign_id",
            &[&campaign_ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let reason: Option<String> = r.get("reason");
            let until: Option<DateTime<Utc>> = r.get("until");
            let deferred = reason.as_deref().and_then(crate::pacing::DeferReason::parse).zip(until);
            let work = crate::pacing::PendingWork {
                clicks: u64::try_from(r.get::<_, i64>("clicks")).unwrap_or(0),
                moving: u64::try_from(r.get::<_, i64>("moving")).unwrap_or(0),
                deferred,
            };
            (r.get("campaign_id"), work)
        })
        .collect())
}
