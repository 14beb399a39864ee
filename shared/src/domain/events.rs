//! Click events for the DynamoDB event log, and the key design that keeps every partition cool.
//!
//! - Table key: `pk = "<campaign>#<utc day>#<shard>"`, `sk = "<event time>#<click id>#<kind>"`. The shard is a
//!   stable hash of the click id modulo [`EVENT_SHARDS`], so one campaign's busiest day spreads over that many
//!   partitions (each stays far below DynamoDB's 1,000 writes/s per partition).
//! - GSI `by_campaign`: `campaign_hour` (`"<campaign>#<utc hour>#<shard>"`) + `sk`: a campaign's events in time
//!   order.
//! - GSI `by_partner`: `partner_hour` (`"<partner>#<utc hour>#<shard>"`) + `sk`: a partner's events in time order.
//! - GSI `failures` (sparse): `failure_day` (`"<utc day>#<shard>"`, only on failed and dead events) + `sk`.
//! - `expires_at` (epoch seconds) is the TTL attribute.
//!
//! Every index key carries the same shard as the table key: an index partition throttles its table when it is
//! hot, and one busy partner's hour (every campaign's clicks to it) or a day of failures would otherwise put all
//! their writes on one index partition. Readers query the hours they need and fan each out over the shards,
//! merging by `sk`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{CampaignId, ClickId, PartnerId};

/// Shards per campaign-day in the event table's partition key.
pub const EVENT_SHARDS: u32 = 16;
/// How long events are kept before DynamoDB's TTL removes them.
pub const EVENT_RETENTION_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClickEventKind {
    Ingested,
    Released,
    Delivered,
    Failed,
    Dead,
}

impl ClickEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingested => "ingested",
            Self::Released => "released",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Dead)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickEvent {
    pub campaign_id: CampaignId,
    pub partner_id: PartnerId,
    pub click_id: ClickId,
    pub batch_id: i64,
    pub kind: ClickEventKind,
    /// Delivery attempt the event belongs to (0 for ingestion and release).
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub detail: Option<String>,
}

/// Where an event lives in the table and its indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKeys {
    pub pk: String,
    pub sk: String,
    pub campaign_hour: String,
    pub partner_hour: String,
    pub failure_day: Option<String>,
    pub expires_at: i64,
}

impl ClickEvent {
    pub fn keys(&self) -> EventKeys {
        let day = self.at.format("%Y-%m-%d");
        let hour = self.at.format("%Y-%m-%dT%H");
        let shard = shard_of(self.click_id.as_str());
        EventKeys {
            pk: format!("{}#{}#{:02}", self.campaign_id, day, shard),
            // The attempt makes two failures of the same click distinct items; a retried write of the same
            // event maps to the same key, which the conditional put turns into a no-op.
            sk: format!(
                "{}#{}#{}#{}",
                self.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                self.click_id,
                self.kind.as_str(),
                self.attempt
            ),
            campaign_hour: format!("{}#{}#{:02}", self.campaign_id, hour, shard),
            partner_hour: format!("{}#{}#{:02}", self.partner_id, hour, shard),
            failure_day: self.kind.is_failure().then(|| format!("{day}#{shard:02}")),
            expires_at: self.at.timestamp() + EVENT_RETENTION_DAYS * 86_400,
        }
    }
}

/// FNV-1a: stable across processes and releases (unlike std's randomly seeded hasher).
pub fn shard_of(click_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in click_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % EVENT_SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: ClickEventKind, click: &str) -> ClickEvent {
        ClickEvent {
            campaign_id: CampaignId::parse("spring").unwrap(),
            partner_id: PartnerId::parse("acme").unwrap(),
            click_id: ClickId::parse(click).unwrap(),
            batch_id: 7,
            kind,
            attempt: 1,
            at: "2026-03-29T01:30:00Z".parse().unwrap(),
            detail: None,
        }
    }

    #[test]
    fn keys_follow_the_design() {
        let keys = event(ClickEventKind::Delivered, "c-1").keys();
        let shard = format!("{:02}", shard_of("c-1"));
        assert_eq!(keys.pk, format!("spring#2026-03-29#{shard}"));
        assert_eq!(keys.campaign_hour, format!("spring#2026-03-29T01#{shard}"));
        assert_eq!(keys.partner_hour, format!("acme#2026-03-29T01#{shard}"), "sharded like the table key");
        assert_eq!(keys.failure_day, None);
        let dead = event(ClickEventKind::Dead, "c-1").keys();
        assert_eq!(dead.failure_day, Some(format!("2026-03-29#{shard}")), "a day of failures spreads too");
    }

    #[test]
    fn shards_spread_clicks() {
        let mut used = std::collections::HashSet::new();
        for i in 0..1000 {
            used.insert(shard_of(&format!("click-{i}")));
        }
        assert_eq!(used.len(), EVENT_SHARDS as usize);
    }
}
