//! The audit log: every change made through the management API, with who made it, when, and the entity before
//! and after. A record is written in the same transaction as its change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;

/// What was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Campaign,
    Partner,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Campaign => "campaign",
            Self::Partner => "partner",
        }
    }
}

/// One change to record. `before` and `after` must never carry secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub entity: Entity,
    pub entity_id: &'a str,
    /// `create`, `replace`, `pause`, `resume`, `archive`, `enable`, `disable`, `cancel_pending`, `replay`.
    pub action: &'a str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Record {
    pub audit_id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub after: Option<serde_json::Value>,
}

pub async fn record(db: &impl GenericClient, change: &Change<'_>) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO audit_log (actor, entity, entity_id, action, before, after) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&change.actor, &change.entity.as_str(), &change.entity_id, &change.action, &change.before, &change.after],
    )
    .await?;
    Ok(())
}

/// Up to `limit` (at least 1) changes of one entity, newest first, below `before` (an audit id); and the id to
/// pass as `before` for the next page, when there is one.
pub async fn page(
    db: &impl GenericClient,
    entity: Entity,
    entity_id: &str,
    before: Option<i64>,
    limit: u32,
) -> Result<(Vec<Record>, Option<i64>), DbError> {
    let limit = limit.max(1);
    let rows = db
        .query(
            "SELECT audit_id, at, actor, action, before, after FROM audit_log
             WHERE entity = $1 AND entity_id = $2 AND ($3::bigint IS NULL OR audit_id < $3)
             ORDER BY audit_id DESC LIMIT $4",
            &[&entity.as_str(), &entity_id, &before, &(i64::from(limit) + 1)],
        )
        .await?;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = (rows.len() > page.len()).then(|| page.last().map(|r| r.get::<_, i64>("audit_id"))).flatten();
    let records = page
        .iter()
        .map(|r| Record {
            audit_id: r.get("audit_id"),
            at: r.get("at"),
            actor: r.get("actor"),
            action: r.get("action"),
            before: r.get("before"),
            after: r.get("after"),
        })
        .collect();
    Ok((records, next))
}
