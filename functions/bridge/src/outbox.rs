//! The event outbox: events recorded with each pass, moved to the DynamoDB event log after it (and by the
//! scheduled flush), so a throttled or unreachable event log never holds up delivery.

use std::time::Duration;

use clickpacer::domain::events::LogEntries;
use clickpacer::postgres::DbError;
use clickpacer::postgres::bridge as repo;

use crate::{Bridge, BridgeError, TimeBudget};

/// Time kept for one outbox write to the event log (a few DynamoDB batch writes with their retries).
pub(crate) const FLUSH_WRITE_TIME: Duration = Duration::from_secs(1);

/// Outbox rows taken per event-log write.
pub(crate) const OUTBOX_ROWS_PER_FLUSH: i64 = 5;

/// Moves queued events from the outbox to the event log, while the invocation has time for another write; what
/// is left or fails stays for the next invocation.
pub async fn flush_events<T, C>(bridge: &Bridge<T, C>, budget: &dyn TimeBudget) -> Result<u64, BridgeError> {
    let mut flushed = 0u64;
    while flushed < bridge.settings.outbox_flush_limit as u64 && budget.remaining() > FLUSH_WRITE_TIME {
        let mut client = bridge.pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        // A row holds one pass's entries (a few batch events, and failures click by click).
        let rows = repo::take_outbox(&tx, OUTBOX_ROWS_PER_FLUSH).await?;
        if rows.is_empty() {
            return Ok(flushed);
        }
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        let mut entries = LogEntries::default();
        for (_, row) in rows {
            entries.extend(row);
        }
        bridge.events.put_batch(&entries).await?;
        repo::delete_outbox(&tx, &ids).await?;
        tx.commit().await.map_err(DbError::from)?;
        flushed += entries.items() as u64;
    }
    Ok(flushed)
}
