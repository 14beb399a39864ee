//! ClickPacer on one machine. The real function handlers run behind the same triggers as in AWS, reached
//! through the real SDK at the local endpoint:
//!
//! - an object put under `incoming/` in the local bucket becomes an S3 notification (on a queue, as S3 sends
//!   it, URL-encoded key and all) that reaches the slicer as an S3 event; an unfinished upload's event comes
//!   back after the queue's visibility timeout, as Lambda retries an event;
//! - the pacer runs on a schedule (every minute, as in AWS, or faster for demos);
//! - click queue messages reach the bridge as SQS events; only the failures it reports return to the queue,
//!   and the queue's redrive policy moves a message received too often to the dead-letter queue.
//!
//! Nothing here implements a function's logic: the runner only wires events to the handlers the Lambdas run.

pub mod demo;
mod reconciliation;

pub use reconciliation::{render_partner_report, render_reconciliation};

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_s3::types::{
    Event as S3EventType, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use bridge::{Bridge, BridgeSettings, HttpTransport, SystemClock};
use chrono::Utc;
use clickpacer::aws::SdkConfig;
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::s3::S3Objects;
use clickpacer::aws::sqs::{OutgoingMessage, SqsQueue};
use clickpacer::config::DatabaseConfig;
use clickpacer::ingest::encode_event_key;
use clickpacer::postgres::pacer::ClaimSettings;
use clickpacer::postgres::reports::{self, CampaignReconciliation, UploadReconciliation};
use clickpacer::postgres::{self, PgPool};
use clickpacer::release::ReleaseMessage;
use pacer::{Pacer, PacerSettings};
use slicer::{Deadline, Slicer, SlicerSettings};
use tokio::sync::watch;

/// The local resources' names.
#[derive(Debug, Clone)]
pub struct Names {
    pub bucket: String,
    pub upload_events: String,
    pub click_queue: String,
    pub dead_letter_queue: String,
    pub events_table: String,
}

impl Names {
    pub fn local() -> Self {
        Self::with_prefix("clickpacer")
    }

    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            bucket: format!("{prefix}-uploads"),
            upload_events: format!("{prefix}-upload-events"),
            click_queue: format!("{prefix}-clicks"),
            dead_letter_queue: format!("{prefix}-clicks-dlq"),
            events_table: format!("{prefix}-events"),
        }
    }
}

/// How often things happen locally, and how long things may take.
#[derive(Debug, Clone)]
pub struct Timing {
    /// The pacer's schedule (60 s in AWS).
    pub pacer_every: Duration,
    /// How long a received message stays invisible before it comes back (a failed or unfinished one).
    pub visibility: Duration,
    /// Each function's timeout, as `template.yaml` sets it: an invocation still running then is stopped where it
    /// is, as Lambda stops it, and its event comes back after the visibility timeout.
    pub timeouts: FunctionTimeouts,
    /// Leases: the slicer's on an upload, the pacer's on a claimed and on a queued batch (see the functions'
    /// settings); shorter ones make crashed work come back sooner (the chaos runner's rounds).
    pub upload_lease: Duration,
    pub claim_lease: Duration,
    pub queued_lease: Duration,
}

/// The functions' timeouts in `template.yaml` (the template test checks they agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionTimeouts {
    pub slicer: Duration,
    pub pacer: Duration,
    pub bridge: Duration,
}

impl FunctionTimeouts {
    pub const TEMPLATE: Self =
        Self { slicer: Duration::from_secs(900), pacer: Duration::from_secs(60), bridge: Duration::from_secs(30) };
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            pacer_every: Duration::from_secs(60),
            visibility: Duration::from_secs(30),
            timeouts: FunctionTimeouts::TEMPLATE,
            upload_lease: SlicerSettings::default().lease_for,
            claim_lease: ClaimSettings::default().lease_for,
            queued_lease: ClaimSettings::default().queued_lease,
        }
    }
}

pub struct Pipeline {
    pub pool: PgPool,
    pub objects: S3Objects,
    pub names: Names,
    pub upload_events: SqsQueue,
    pub click_queue: SqsQueue,
    pub dead_letters: SqsQueue,
    pub slicer: Slicer,
    pub pacer: Pacer<SqsQueue>,
    pub bridge: Bridge<HttpTransport, SystemClock>,
    pub timing: Timing,
}

impl Pipeline {
    /// Applies the migrations and creates (or finds) the bucket with its notification, the queues and the table.
    pub async fn start(
        sdk: &SdkConfig,
        database: &DatabaseConfig,
        names: Names,
        timing: Timing,
    ) -> anyhow::Result<Self> {
        let pool = postgres::build_pool(database)?;
        postgres::migrate(&pool).await.context("applying migrations")?;
        let objects = S3Objects::new(clickpacer::aws::s3_client(sdk));
        objects.create_bucket(&names.bucket).await?;
        let sqs = clickpacer::aws::sqs_client(sdk);
        let visibility = timing.visibility.as_secs() as u32;
        let upload_events = SqsQueue::create(&sqs, &names.upload_events, visibility, None).await?;
        let dead_letters = SqsQueue::create(&sqs, &names.dead_letter_queue, 30, None).await?;
        let click_queue = SqsQueue::create(&sqs, &names.click_queue, visibility, Some((dead_letters.url(), 5))).await?;
        let events = DynamoEventLog::create_table(&clickpacer::aws::dynamodb_client(sdk), &names.events_table).await?;

        // S3 → queue notifications for uploads, as the SAM template wires S3 → the slicer.
        let filter = NotificationConfigurationFilter::builder()
            .key(
                S3KeyFilter::builder()
                    .filter_rules(FilterRule::builder().name(FilterRuleName::Prefix).value("incoming/").build())
                    .build(),
            )
            .build();
        let queue_config = QueueConfiguration::builder()
            .queue_arn(upload_events.arn().await?)
            .events(S3EventType::from("s3:ObjectCreated:*"))
            .filter(filter)
            .build()
            .context("queue notification")?;
        objects
            .client()
            .put_bucket_notification_configuration()
            .bucket(&names.bucket)
            .notification_configuration(NotificationConfiguration::builder().queue_configurations(queue_config).build())
            .send()
            .await
            .context("bucket notification")?;

        let horizon = timing.pacer_every.as_secs().clamp(1, 60) as u32;
        Ok(Self {
            slicer: Slicer {
                pool: pool.clone(),
                objects: objects.clone(),
                settings: SlicerSettings { lease_for: timing.upload_lease, ..SlicerSettings::default() },
            },
            pacer: Pacer {
                pool: pool.clone(),
                queue: click_queue.clone(),
                settings: PacerSettings {
                    claim: ClaimSettings {
                        horizon_seconds: horizon,
                        lease_for: timing.claim_lease,
                        queued_lease: timing.queued_lease,
                        ..ClaimSettings::default()
                    },
                    ..PacerSettings::default()
                },
            },
            bridge: Bridge {
                pool: pool.clone(),
                // Local partners (the simulator) live on loopback: allowed here, never in AWS.
                transport: HttpTransport::new(true)?,
                clock: SystemClock,
                click_queue: click_queue.clone(),
                events,
                settings: BridgeSettings {
                    queued_lease: timing.queued_lease,
                    // A third of a short timeout (the chaos runner's) is left for recording the last pass.
                    reserve: (timing.timeouts.bridge / 3).min(BridgeSettings::default().reserve),
                    ..BridgeSettings::default()
                },
                partner_slots: Default::default(),
            },
            pool,
            objects,
            names,
            upload_events,
            click_queue,
            dead_letters,
            timing,
        })
    }

    /// After a restart: messages of queued batches and events of unfinished uploads may have been lost with the
    /// old local endpoint. Sending them again is safe: stale or repeated ones are absorbed (fences, upload
    /// identity, delivered clicks are never sent again).
    pub async fn resume(&self) -> anyhow::Result<(usize, usize)> {
        let client = self.pool.get().await?;
        let queued = client
            .query(
                "SELECT batch_id, fence, campaign_id, partner_id, click_count, spread_seconds,
                        COALESCE(release_at, now()) AS release_at
                 FROM batches WHERE state = 'queued'",
                &[],
            )
            .await?;
        let mut messages = Vec::new();
        for row in &queued {
            let release = ReleaseMessage {
                batch_id: row.get("batch_id"),
                fence: row.get("fence"),
                campaign_id: clickpacer::domain::CampaignId::parse(row.get::<_, String>("campaign_id"))?,
                partner_id: clickpacer::domain::PartnerId::parse(row.get::<_, String>("partner_id"))?,
                clicks: row.get::<_, i32>("click_count") as u32,
                spread_seconds: row.get::<_, i32>("spread_seconds") as u32,
                release_at: row.get("release_at"),
            };
            messages.push(OutgoingMessage {
                id: release.batch_id.to_string(),
                body: serde_json::to_string(&release)?,
                delay_seconds: 0,
            });
        }
        for chunk in messages.chunks(10) {
            self.click_queue.send_batch(chunk).await?;
        }
        let uploads = client
            .query(
                "SELECT object_key, object_version FROM uploads WHERE status = 'processing' AND bucket = $1",
                &[&self.names.bucket],
            )
            .await?;
        for row in &uploads {
            let key: String = row.get(0);
            let version: String = row.get(1);
            let event = s3_event_json(&self.names.bucket, &key, &version);
            self.upload_events
                .send_batch(&[OutgoingMessage { id: "resume".into(), body: event.to_string(), delay_seconds: 0 }])
                .await?;
        }
        Ok((queued.len(), uploads.len()))
    }

    /// Runs the three triggers until `stop` turns true.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let stopped = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::select! {
            _ = stopped => {}
            _ = self.upload_loop() => {}
            _ = self.pacer_loop() => {}
            _ = self.bridge_loop() => {}
        }
    }

    /// The slicer's trigger: S3 notifications from the upload events queue, one invocation per message. As S3's
    /// asynchronous invocation does, an event is not handed out again while its invocation runs (it stays hidden
    /// for the function's timeout), and one whose invocation failed or timed out comes back shortly after.
    pub async fn upload_loop(&self) {
        let running_for = self.timing.timeouts.slicer.as_secs() as i32 + 5;
        let retry_in = self.timing.visibility.as_secs() as i32;
        loop {
            let messages = match self.upload_events.receive_hidden_for(1, 1, Some(running_for)).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "upload events not reachable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for message in messages {
                let mut value: serde_json::Value = serde_json::from_str(&message.body).unwrap_or_default();
                fill_omitted_fields(&mut value);
                if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
                    let _ = self.upload_events.delete(&message.receipt_handle).await;
                    continue;
                }
                let Ok(event) = serde_json::from_value::<S3Event>(value) else {
                    tracing::warn!(body = message.body, "not an S3 event; dropped");
                    let _ = self.upload_events.delete(&message.receipt_handle).await;
                    continue;
                };
                // The invocation's budget is the function's timeout, and the timeout is enforced.
                let timeout = self.timing.timeouts.slicer;
                let budget = Deadline::after(timeout);
                match tokio::time::timeout(timeout, slicer::handle_event(&self.slicer, event, &budget)).await {
                    Ok(Ok(reports)) => {
                        // One line per finished upload for the person watching (the slicer logs each object
                        // as fields too, at info).
                        for report in reports {
                            if let Some(line) = reconciliation::render_upload_finished(&report) {
                                println!("{line}");
                            }
                        }
                        let _ = self.upload_events.delete(&message.receipt_handle).await;
                    }
                    // Left on the queue, back shortly, as Lambda retries a failed asynchronous invocation.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "upload not finished; its event will come back");
                        let _ = self.upload_events.hide_for(&message.receipt_handle, retry_in).await;
                    }
                    Err(_) => {
                        tracing::warn!(timeout_s = timeout.as_secs(), "slicer stopped at its timeout");
                        let _ = self.upload_events.hide_for(&message.receipt_handle, retry_in).await;
                    }
                }
            }
        }
    }

    /// The pacer's schedule.
    pub async fn pacer_loop(&self) {
        let mut tick = tokio::time::interval(self.timing.pacer_every);
        loop {
            tick.tick().await;
            let run = pacer::run_once(&self.pacer, Utc::now());
            match tokio::time::timeout(self.timing.timeouts.pacer, run).await {
                Ok(Ok(_)) => {} // run_once logs its summary
                Ok(Err(e)) => tracing::warn!(error = %e, "pacer run failed"),
                Err(_) => tracing::warn!("pacer stopped at its timeout"),
            }
        }
    }

    /// The bridge's trigger: click queue messages, up to 10 an invocation. When the queue is idle, the event
    /// outbox is flushed (what an invocation could not flush, a database restart say, must not wait for the
    /// next click).
    pub async fn bridge_loop(&self) {
        loop {
            let received = match self.click_queue.receive(10, 1).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "click queue not reachable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if received.is_empty() {
                if let Err(e) = bridge::flush_events(&self.bridge, &Deadline::after(self.timing.timeouts.bridge)).await
                {
                    tracing::warn!(error = %e, "event outbox not flushed");
                }
                continue;
            }
            let mut handles = HashMap::new();
            let mut event = SqsEvent::default();
            for m in received {
                let mut message = SqsMessage::default();
                message.message_id = Some(m.message_id.clone());
                message.receipt_handle = Some(m.receipt_handle.clone());
                message.body = Some(m.body);
                message.event_source = Some("aws:sqs".into());
                message.attributes.insert("ApproximateReceiveCount".into(), m.receive_count.to_string());
                handles.insert(m.message_id, m.receipt_handle);
                event.records.push(message);
            }
            let timeout = self.timing.timeouts.bridge;
            let budget = Deadline::after(timeout);
            let handled = bridge::handle_event(&self.bridge, event, &budget);
            let Ok(response) = tokio::time::timeout(timeout, handled).await else {
                // Stopped where it was, as Lambda stops it: every message of the event comes back after the
                // visibility timeout.
                tracing::warn!(timeout_s = timeout.as_secs(), "bridge stopped at its timeout");
                continue;
            };
            // Partial batch response: only the reported failures stay on the queue.
            for failure in &response.batch_item_failures {
                handles.remove(&failure.item_identifier);
            }
            // In one call, as the event source deletes; a failed entry just comes back after its visibility timeout.
            let handles: Vec<&str> = handles.values().map(String::as_str).collect();
            if !handles.is_empty()
                && let Err(e) = self.click_queue.delete_batch(&handles).await
            {
                tracing::warn!(error = %e, "handled messages not deleted; they come back and are stale");
            }
        }
    }

    /// Nothing left to do now: no upload event waiting, no upload being read, nothing claimed or queued, and
    /// nothing due before the next pacer runs twice (what remains waits for a later day, cap or budget).
    pub async fn drained(&self) -> anyhow::Result<bool> {
        let horizon = (2 * self.timing.pacer_every.as_secs() + 5) as i64;
        let client = self.pool.get().await?;
        Ok(self.upload_events.depth().await? == 0 && reports::work_in_progress(&**client, horizon).await? == 0)
    }

    /// Runs until drained (checked three times in a row) or `limit` passes; returns whether it drained.
    pub async fn run_until_drained(&self, limit: Duration, on_tick: impl Fn(&Progress)) -> anyhow::Result<bool> {
        let (tx, rx) = watch::channel(false);
        let watcher = async {
            let started = std::time::Instant::now();
            let mut quiet = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(progress) = self.progress().await {
                    on_tick(&progress);
                }
                quiet = if self.drained().await.unwrap_or(false) { quiet + 1 } else { 0 };
                if quiet >= 3 || started.elapsed() > limit {
                    let _ = tx.send(true);
                    return quiet >= 3;
                }
            }
        };
        let (_, drained) = tokio::join!(self.run(rx), watcher);
        Ok(drained)
    }

    /// Live counts per campaign, cheap enough to print every few seconds at any volume: clicks from the batches,
    /// what happened to them from the statistics rollups (the exact per-click reconciliation is printed at the
    /// end).
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT b.campaign_id, b.ingested, b.waiting, coalesce(s.released, 0)::bigint AS released,
                        coalesce(s.delivered, 0)::bigint AS delivered, coalesce(s.failed, 0)::bigint AS failed,
                        coalesce(s.dead, 0)::bigint AS dead
                 FROM (SELECT campaign_id, sum(click_count)::bigint AS ingested,
                              coalesce(sum(click_count - settled_clicks)
                                       FILTER (WHERE state IN ('pending', 'claimed', 'queued')), 0)::bigint AS waiting
                       FROM batches GROUP BY 1) b
                 LEFT JOIN (SELECT campaign_id, sum(released) AS released, sum(delivered) AS delivered,
                                   sum(failed) AS failed, sum(dead) AS dead
                            FROM delivery_stats_hour GROUP BY 1) s USING (campaign_id)
                 ORDER BY 1",
                &[],
            )
            .await?;
        let campaigns = rows
            .iter()
            .map(|r| CampaignProgress {
                campaign_id: r.get("campaign_id"),
                ingested: r.get("ingested"),
                released: r.get("released"),
                delivered: r.get("delivered"),
                failed: r.get("failed"),
                dead: r.get("dead"),
                waiting: r.get("waiting"),
            })
            .collect();
        Ok(Progress { campaigns })
    }

    pub async fn reconciliation(&self) -> anyhow::Result<(Vec<UploadReconciliation>, Vec<CampaignReconciliation>)> {
        let client = self.pool.get().await?;
        Ok((reports::uploads(&**client).await?, reports::campaigns(&**client).await?))
    }
}

/// Live counts per campaign.
pub struct Progress {
    pub campaigns: Vec<CampaignProgress>,
}

/// One campaign's line: clicks ingested, released, delivered, failed attempts (each retry counts), dead, and
/// waiting or on their way.
pub struct CampaignProgress {
    pub campaign_id: String,
    pub ingested: i64,
    pub released: i64,
    pub delivered: i64,
    pub failed: i64,
    pub dead: i64,
    pub waiting: i64,
}

impl Progress {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "campaign", "ingested", "released", "delivered", "failures", "dead", "waiting"
        );
        for c in &self.campaigns {
            out.push_str(&format!(
                "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                c.campaign_id, c.ingested, c.released, c.delivered, c.failed, c.dead, c.waiting,
            ));
        }
        out
    }
}

/// The local endpoint leaves out record fields S3 always sends (who made the request and from where); they carry
/// nothing the slicer uses, so empty ones are filled in rather than making the handler lenient.
fn fill_omitted_fields(event: &mut serde_json::Value) {
    if let Some(records) = event.get_mut("Records").and_then(|r| r.as_array_mut()) {
        for record in records.iter_mut().filter_map(|r| r.as_object_mut()) {
            for field in ["userIdentity", "requestParameters", "responseElements"] {
                record.entry(field).or_insert_with(|| serde_json::json!({}));
            }
        }
    }
}

/// An S3 notification as S3 sends it, for one object.
pub fn s3_event_json(bucket: &str, key: &str, etag: &str) -> serde_json::Value {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": Utc::now().to_rfc3339(), "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "local"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "incoming",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"}, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": encode_event_key(key), "eTag": etag}}
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timeout `template.yaml` gives a function (the first `Timeout:` after its resource name).
    fn template_timeout(function: &str) -> Duration {
        let template = include_str!("../../../template.yaml");
        let at = template.find(&format!("\n  {function}:\n")).unwrap_or_else(|| panic!("{function} in the template"));
        let line = template[at..].lines().find(|l| l.trim_start().starts_with("Timeout:")).unwrap();
        Duration::from_secs(line.trim_start().trim_start_matches("Timeout:").trim().parse().unwrap())
    }

    #[test]
    fn the_local_timeouts_are_the_templates() {
        let t = FunctionTimeouts::TEMPLATE;
        assert_eq!(t.slicer, template_timeout("SlicerFunction"));
        assert_eq!(t.pacer, template_timeout("PacerFunction"));
        assert_eq!(t.bridge, template_timeout("BridgeFunction"));
    }
}
