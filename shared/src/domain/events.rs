//! Events for the DynamoDB event log, and the key design that keeps every partition cool.
//!
//! What happens to a batch's clicks together is one item per pass and kind ([`BatchEvent`]: ingested, released,
//! delivered; the clicks' ids in a string set, a thousand at most per item), so a delivered click costs the log a
//! fiftieth of an item or less; what happens to one click alone is an item of its own ([`ClickEvent`]: a failed
//! attempt, a death). Together they still tell every click's story: its batch's items name it.
//!
//! - Batch items: `pk = "batch#<batch id>"` (a batch's items in one partition, found from the batch id a click
//!   row carries), `sk = "<event time>#<kind>#<part>"`, and the index keys below, sharded by the batch id.
//! - Click items: `pk = "<campaign>#<utc day>#<shard>"`, `pk = "<campaign>#<utc day>#<shard>"`, `sk = "<event time>#<click id>#<kind>"`. The shard is a
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

/// Clicks named by one batch item at most: a thousand ids of up to 256 bytes stay far below DynamoDB's 400 KB
/// item limit.
pub const BATCH_EVENT_CLICKS: usize = 1_000;

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

/// What happened to several clicks of one batch at once, in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEvent {
    pub campaign_id: CampaignId,
    pub partner_id: PartnerId,
    pub batch_id: i64,
    /// Ingested, released or delivered.
    pub kind: ClickEventKind,
    /// Ingested: the clicks' ingestion; released: the batch's release; delivered: the pass's last delivery.
    pub at: DateTime<Utc>,
    pub clicks: Vec<ClickId>,
}

/// One item of a batch event: a part of its clicks, with its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEventPart<'a> {
    pub event: &'a BatchEvent,
    pub clicks: &'a [ClickId],
    pub keys: EventKeys,
}

impl BatchEvent {
    /// The items the event is written as: its clicks a thousand at a time.
    pub fn parts(&self) -> impl Iterator<Item = BatchEventPart<'_>> {
        let hour = self.at.format("%Y-%m-%dT%H");
        let shard = shard_of(&self.batch_id.to_string());
        self.clicks.chunks(BATCH_EVENT_CLICKS).enumerate().map(move |(part, clicks)| BatchEventPart {
            event: self,
            clicks,
            keys: EventKeys {
                pk: batch_partition(self.batch_id),
                // A retried write of the same part maps to the same key: one item.
                sk: format!("{}#{}#{part}", self.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"), self.kind.as_str()),
                campaign_hour: format!("{}#{}#{:02}", self.campaign_id, hour, shard),
                partner_hour: format!("{}#{}#{:02}", self.partner_id, hour, shard),
                failure_day: None,
                expires_at: self.at.timestamp() + EVENT_RETENTION_DAYS * 86_400,
            },
        })
    }
}

/// The partition holding a batch's items.
pub fn batch_partition(batch_id: i64) -> String {
    format!("batch#{batch_id}")
}

/// What one delivery pass gives the event log, as the outbox keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntries {
    #[serde(default)]
    pub batches: Vec<BatchEvent>,
    #[serde(default)]
    pub clicks: Vec<ClickEvent>,
}

impl LogEntries {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.clicks.is_empty()
    }

    /// Items the entries are written as.
    pub fn items(&self) -> usize {
        self.clicks.len() + self.batches.iter().map(|b| b.clicks.len().div_ceil(BATCH_EVENT_CLICKS)).sum::<usize>()
    }

    pub fn extend(&mut self, other: LogEntries) {
        self.batches.extend(other.batches);
        self.clicks.extend(other.clicks);
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
    fn a_batch_event_is_one_item_per_thousand_clicks_in_the_batchs_partition() {
        let clicks: Vec<ClickId> = (0..2_500).map(|i| ClickId::parse(format!("c-{i}")).unwrap()).collect();
        let batch = BatchEvent {
            campaign_id: CampaignId::parse("spring").unwrap(),
            partner_id: PartnerId::parse("acme").unwrap(),
            batch_id: 42,
            kind: ClickEventKind::Delivered,
            at: "2026-03-29T01:30:00Z".parse().unwrap(),
            clicks,
        };
        let parts: Vec<_> = batch.parts().collect();
        assert_eq!(parts.iter().map(|p| p.clicks.len()).collect::<Vec<_>>(), [1_000, 1_000, 500]);
        assert!(parts.iter().all(|p| p.keys.pk == "batch#42" && p.keys.failure_day.is_none()));
        let sks: std::collections::HashSet<_> = parts.iter().map(|p| p.keys.sk.clone()).collect();
        assert_eq!(sks.len(), 3, "each part its own item");
        let shard = format!("{:02}", shard_of("42"));
        assert_eq!(parts[0].keys.campaign_hour, format!("spring#2026-03-29T01#{shard}"));
        let entries = LogEntries { batches: vec![batch], clicks: vec![event(ClickEventKind::Dead, "c-1")] };
        assert_eq!(entries.items(), 4);
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
