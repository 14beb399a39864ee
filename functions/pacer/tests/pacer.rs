//! The pacer against real PostgreSQL and the local SQS, with time moved by an injected clock.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use clickpacer::aws::AwsError;
use clickpacer::aws::sqs::{FailedEntry, OutgoingMessage, SqsQueue};
use clickpacer::domain::{Campaign, CampaignId, CampaignStatus, Partner, PartnerId};
use clickpacer::postgres::pacer::{ClaimSettings, claim_due_batches};
use clickpacer::postgres::{campaigns, partners};
use clickpacer::release::ReleaseMessage;
use clickpacer::testing::{TestAws, TestDb};
use pacer::{ClickQueue, Pacer, PacerSettings};

fn t0() -> DateTime<Utc> {
    "2026-11-28T10:00:00Z".parse().unwrap()
}

async fn seed(db: &TestDb, campaign: &Campaign) {
    let client = db.client().await;
    let partner = Partner::get(campaign.partner_id.clone(), "https://acme.example/c?id={click_id}");
    partners::upsert(&**client, &partner).await.unwrap();
    campaigns::upsert(&**client, campaign).await.unwrap();
}

fn campaign(id: &str) -> Campaign {
    Campaign::unlimited(CampaignId::parse(id).unwrap(), PartnerId::parse("acme").unwrap())
}

/// Batches as the slicer would write them (the pacer does not care who made them).
async fn insert_batches(db: &TestDb, campaign_id: &str, n: i32, clicks: i32, due_at: DateTime<Utc>) {
    let client = db.client().await;
    let upload: i64 = client
        .query_one(
            "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('b', $1, 'v') RETURNING upload_id",
            &[&format!("incoming/{campaign_id}/{}", uuid_like())],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
             SELECT c.campaign_id, c.partner_id, $2, s, $4, $5 FROM campaigns c, generate_series(0, $3 - 1) s
             WHERE c.campaign_id = $1",
            &[&campaign_id, &upload, &n, &clicks, &due_at],
        )
        .await
        .unwrap();
}

fn uuid_like() -> String {
    clickpacer::testing::unique_suffix()
}

async fn drain(queue: &SqsQueue) -> Vec<ReleaseMessage> {
    let mut out = Vec::new();
    loop {
        let got = queue.receive(10, 0).await.unwrap();
        if got.is_empty() {
            return out;
        }
        for m in got {
            out.push(serde_json::from_str(&m.body).unwrap());
            queue.delete(&m.receipt_handle).await.unwrap();
        }
    }
}

async fn states(db: &TestDb) -> HashMap<String, i64> {
    let client = db.client().await;
    client
        .query("SELECT state, count(*) FROM batches GROUP BY state", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn settings() -> PacerSettings {
    // A 1-second horizon keeps SQS delays at zero, so tests can read the queue at once.
    PacerSettings {
        claim: ClaimSettings { horizon_seconds: 1, ..ClaimSettings::default() },
        ..PacerSettings::default()
    }
}

#[tokio::test]
async fn releases_due_batches_to_sqs_and_marks_them_queued() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    insert_batches(&db, "spring", 25, 10, t0()).await;
    insert_batches(&db, "spring", 5, 10, t0() + Duration::hours(1)).await;

    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    let summary = pacer::run_once(&pacer, t0()).await.unwrap();
    assert_eq!((summary.claimed, summary.released, summary.released_clicks, summary.unsent), (25, 25, 250, 0));
    let messages = drain(&queue).await;
    assert_eq!(messages.len(), 25);
    assert!(messages.iter().all(|m| m.fence == 1 && m.clicks == 10 && m.spread_seconds == 1));
    assert_eq!(states(&db).await, HashMap::from([("queued".into(), 25), ("pending".into(), 5)]));

    // Nothing due: nothing happens. An hour later the rest goes.
    assert_eq!(pacer::run_once(&pacer, t0() + Duration::seconds(1)).await.unwrap().claimed, 0);
    assert_eq!(pacer::run_once(&pacer, t0() + Duration::hours(1)).await.unwrap().released, 5);
}

#[tokio::test]
async fn a_paused_campaign_releases_nothing_until_resumed() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    let mut c = campaign("spring");
    c.status = CampaignStatus::Paused;
    seed(&db, &c).await;
    insert_batches(&db, "spring", 3, 10, t0()).await;
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    let summary = pacer::run_once(&pacer, t0()).await.unwrap();
    assert_eq!(summary.released, 0);
    assert_eq!(summary.deferred.get("paused"), Some(&3));
    assert!(drain(&queue).await.is_empty());
    // Paused, its batches sleep: later runs do not take them, rewrite them or count them as late.
    let later = pacer::run_once(&pacer, t0() + Duration::minutes(2)).await.unwrap();
    assert_eq!((later.examined, later.lag_seconds), (0, 0), "{later:?}");

    // A resume wakes them.
    let resumed_at = t0() + Duration::minutes(3);
    assert!(
        campaigns::set_status(&**db.client().await, &c.campaign_id, CampaignStatus::Active, resumed_at).await.unwrap()
    );
    assert_eq!(pacer::run_once(&pacer, resumed_at).await.unwrap().released, 3);
}

#[tokio::test]
async fn eight_concurrent_pacers_never_exceed_the_cap_or_claim_twice() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    let mut c = campaign("spring");
    c.daily_cap = Some(1_005);
    seed(&db, &c).await;
    // 300 batches of 5 clicks, of which the cap admits 201 (1,005 clicks).
    insert_batches(&db, "spring", 300, 5, t0()).await;

    let pacers: Vec<_> = (0..8)
        .map(|_| Pacer {
            pool: db.pool.clone(),
            queue: queue.clone(),
            settings: PacerSettings {
                claim: ClaimSettings { horizon_seconds: 1, max_batches: 30, ..ClaimSettings::default() },
                ..PacerSettings::default()
            },
        })
        .collect();
    for round in 0..6 {
        let now = t0() + Duration::seconds(round);
        futures::future::join_all(pacers.iter().map(|p| pacer::run_once(p, now))).await;
    }
    let messages = drain(&queue).await;
    let mut ids: Vec<i64> = messages.iter().map(|m| m.batch_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), messages.len(), "no batch released twice");
    let released: u32 = messages.iter().map(|m| m.clicks).sum();
    assert_eq!(released, 1_005, "exactly the cap, never more");
    let ledger: i64 = db
        .client()
        .await
        .query_one("SELECT released_clicks FROM campaign_day_ledger WHERE campaign_id = 'spring'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, 1_005);
    assert_eq!(states(&db).await, HashMap::from([("queued".into(), 201), ("pending".into(), 99)]));
}

#[tokio::test]
async fn an_expired_lease_brings_a_crashed_claim_back_with_a_new_fence() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    insert_batches(&db, "spring", 4, 10, t0()).await;

    // A pacer claims, then dies before sending anything.
    let claim = ClaimSettings { horizon_seconds: 1, ..ClaimSettings::default() };
    let mut client = db.client().await;
    let (lost, _) = claim_due_batches(&mut client, t0(), &claim).await.unwrap();
    drop(client);
    assert_eq!(lost.len(), 4);
    assert_eq!(states(&db).await, HashMap::from([("claimed".into(), 4)]));

    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    assert_eq!(pacer::run_once(&pacer, t0() + Duration::seconds(30)).await.unwrap().claimed, 0, "lease still held");
    let summary = pacer::run_once(&pacer, t0() + Duration::seconds(121)).await.unwrap();
    assert_eq!((summary.reclaimed, summary.released), (4, 4));
    let messages = drain(&queue).await;
    assert!(messages.iter().all(|m| m.fence == 2), "the new claim's fence: {messages:?}");
    assert_eq!(states(&db).await, HashMap::from([("queued".into(), 4)]));
}

/// A fault injector around the real queue: the first attempt of chosen entries fails.
struct FlakyQueue {
    inner: SqsQueue,
    fail_once: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, u32>>,
}

impl ClickQueue for FlakyQueue {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<FailedEntry>, AwsError> {
        let mut failed = Vec::new();
        let mut pass = Vec::new();
        for m in messages {
            *self.attempts.lock().unwrap().entry(m.id.clone()).or_default() += 1;
            let mut fail_once = self.fail_once.lock().unwrap();
            if let Some(i) = fail_once.iter().position(|id| *id == m.id) {
                fail_once.remove(i);
                failed.push(FailedEntry { id: m.id.clone(), sender_fault: false, message: "InternalError".into() });
            } else {
                pass.push(m.clone());
            }
        }
        if !pass.is_empty() {
            failed.extend(self.inner.send_batch(&pass).await?);
        }
        Ok(failed)
    }
}

#[tokio::test]
async fn partial_send_failures_retry_only_the_failed_entries() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    insert_batches(&db, "spring", 23, 1, t0()).await;
    let ids: Vec<i64> = db
        .client()
        .await
        .query("SELECT batch_id FROM batches ORDER BY batch_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let flaky = FlakyQueue {
        inner: queue.clone(),
        fail_once: Mutex::new(vec![ids[2].to_string(), ids[13].to_string(), ids[22].to_string()]),
        attempts: Mutex::new(HashMap::new()),
    };
    let pacer = Pacer { pool: db.pool.clone(), queue: flaky, settings: settings() };
    let summary = pacer::run_once(&pacer, t0()).await.unwrap();
    assert_eq!((summary.released, summary.unsent), (23, 0));
    let attempts = pacer.queue.attempts.lock().unwrap().clone();
    assert_eq!(attempts.values().filter(|&&n| n == 2).count(), 3, "only the failed entries were sent again");
    assert_eq!(attempts.values().filter(|&&n| n == 1).count(), 20);
    let mut sent: Vec<i64> = drain(&queue).await.iter().map(|m| m.batch_id).collect();
    sent.sort();
    assert_eq!(sent, ids, "enqueued set = claimed set");
}

/// An SQS outage: every SendMessageBatch call fails.
struct DownQueue;

impl ClickQueue for DownQueue {
    async fn send_batch(&self, _messages: &[OutgoingMessage]) -> Result<Vec<FailedEntry>, AwsError> {
        Err(AwsError { operation: "sqs SendMessageBatch", message: "service unavailable".into() })
    }
}

async fn reserved(db: &TestDb, campaign_id: &str) -> (i64, i64, i64) {
    let client = db.client().await;
    let pacing = client
        .query_one(
            "SELECT released_today, reserved_total_micros FROM campaign_pacing WHERE campaign_id = $1",
            &[&campaign_id],
        )
        .await
        .unwrap();
    let ledger: i64 = client
        .query_one(
            "SELECT coalesce(sum(released_clicks), 0)::bigint FROM campaign_day_ledger WHERE campaign_id = $1",
            &[&campaign_id],
        )
        .await
        .unwrap()
        .get(0);
    (pacing.get(0), pacing.get(1), ledger)
}

#[tokio::test]
async fn an_sqs_outage_does_not_spend_the_cap_and_budget_on_clicks_nobody_received() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    let mut c = campaign("spring");
    c.daily_cap = Some(100);
    c.cost_per_click = clickpacer::domain::Micros(10_000);
    c.total_budget = Some(clickpacer::domain::Micros(1_000_000));
    seed(&db, &c).await;
    insert_batches(&db, "spring", 2, 50, t0()).await;

    // SQS is down: both batches are claimed and reserved, neither is sent.
    let down = Pacer { pool: db.pool.clone(), queue: DownQueue, settings: settings() };
    let summary = pacer::run_once(&down, t0()).await.unwrap();
    assert_eq!((summary.claimed, summary.unsent), (2, 2));
    assert_eq!(reserved(&db, "spring").await, (100, 1_000_000, 100));

    // Their leases expire and SQS is back: the reclaim gives the first reservation back before taking the
    // batches again, so the whole cap and budget still go to them.
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    let summary = pacer::run_once(&pacer, t0() + Duration::seconds(121)).await.unwrap();
    assert_eq!((summary.reclaimed, summary.released, summary.released_clicks), (2, 2, 100), "{summary:?}");
    assert_eq!(drain(&queue).await.len(), 2);
    assert_eq!(reserved(&db, "spring").await, (100, 1_000_000, 100), "reserved once, not twice");
    let released_at = |at: DateTime<Utc>| at.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert_eq!(released_stats(&db).await, [(released_at(t0()), 100, 100)], "the statistics count it once too");

    // A reclaim the next local day gives back the earlier day's reservation and takes today's.
    let mut client = db.client().await;
    client
        .execute("UPDATE batches SET state = 'claimed', lease_expires_at = $1", &[&(t0() + Duration::seconds(200))])
        .await
        .unwrap();
    let next_day = t0() + Duration::days(1);
    let (again, _) =
        claim_due_batches(&mut client, next_day, &ClaimSettings { horizon_seconds: 1, ..ClaimSettings::default() })
            .await
            .unwrap();
    assert_eq!(again.len(), 2);
    let days: Vec<(chrono::NaiveDate, i64, i64)> = client
        .query(
            "SELECT local_day, released_clicks, reserved_micros FROM campaign_day_ledger
             WHERE campaign_id = 'spring' ORDER BY local_day",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let today = t0().date_naive();
    assert_eq!(days, vec![(today, 0, 0), (today.succ_opt().unwrap(), 100, 1_000_000)]);
    assert_eq!(reserved(&db, "spring").await, (100, 1_000_000, 100));
    assert_eq!(released_stats(&db).await, [(released_at(t0()), 0, 0), (released_at(next_day), 100, 100)]);
}

/// Released clicks in the rollups per UTC day: (day, from the minute buckets, from the hour buckets).
async fn released_stats(db: &TestDb) -> Vec<(DateTime<Utc>, i64, i64)> {
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT date_trunc('day', bucket, 'UTC'),
                    sum(released) FILTER (WHERE g = 'minute')::bigint, sum(released) FILTER (WHERE g = 'hour')::bigint
             FROM (SELECT 'minute' AS g, bucket, released FROM delivery_stats_minute
                   UNION ALL SELECT 'hour', bucket, released FROM delivery_stats_hour) s
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

#[tokio::test]
async fn a_queued_batch_whose_message_is_lost_comes_back_by_itself_with_a_new_fence() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    let mut c = campaign("spring");
    c.daily_cap = Some(30);
    seed(&db, &c).await;
    insert_batches(&db, "spring", 3, 10, t0()).await;
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    assert_eq!(pacer::run_once(&pacer, t0()).await.unwrap().released, 3);
    // The messages are lost (a redrive to the dead-letter queue, a bridge killed at its timeout too often):
    // nobody will ever deliver these batches from them.
    let lost = drain(&queue).await;
    assert_eq!(lost.len(), 3);
    assert_eq!(states(&db).await, HashMap::from([("queued".into(), 3)]));

    // While a message may still be on its way, the batch is left alone.
    let grace = ClaimSettings::default().queued_lease;
    let early = t0() + chrono::Duration::from_std(grace).unwrap() - Duration::seconds(5);
    assert_eq!(pacer::run_once(&pacer, early).await.unwrap().claimed, 0);
    assert!(drain(&queue).await.is_empty());

    // One of them is being delivered right now (a bridge holds its delivery lease): that one stays too.
    let late = t0() + chrono::Duration::from_std(grace).unwrap() + Duration::seconds(5);
    let busy = lost[0].batch_id;
    db.client()
        .await
        .execute(
            "UPDATE batches SET delivery_lease_until = $2 WHERE batch_id = $1",
            &[&busy, &(late + Duration::seconds(30))],
        )
        .await
        .unwrap();
    let summary = pacer::run_once(&pacer, late).await.unwrap();
    assert_eq!((summary.reclaimed, summary.released, summary.released_clicks), (2, 2, 20), "{summary:?}");
    let again = drain(&queue).await;
    assert!(again.iter().all(|m| m.fence == 2 && m.batch_id != busy), "{again:?}");
    // Given back and taken again: the cap still holds exactly the three batches.
    assert_eq!(reserved(&db, "spring").await.2, 30);
    assert_eq!(states(&db).await, HashMap::from([("queued".into(), 3)]));
}

#[tokio::test]
async fn a_campaign_that_cannot_be_loaded_is_reported_and_holds_up_nobody_else() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    seed(&db, &campaign("broken")).await;
    insert_batches(&db, "spring", 2, 10, t0()).await;
    insert_batches(&db, "broken", 3, 10, t0()).await;
    // A zone PostgreSQL knows and the pacing engine does not.
    let client = db.client().await;
    client
        .execute("UPDATE campaigns SET time_zone = 'posix/America/New_York' WHERE campaign_id = 'broken'", &[])
        .await
        .unwrap();

    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    let summary = pacer::run_once(&pacer, t0()).await.unwrap();
    assert_eq!((summary.released, summary.released_clicks), (2, 20), "{summary:?}");
    assert_eq!(drain(&queue).await.len(), 2);
    let reason = summary.invalid_campaigns.get("broken").cloned().unwrap_or_default();
    assert!(reason.contains("time zone"), "{summary:?}");
    let held: Vec<(String, Option<String>)> = client
        .query("SELECT state, defer_reason FROM batches WHERE campaign_id = 'broken'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(held, vec![("pending".to_string(), Some("invalid_campaign".to_string())); 3]);

    // Fixed by a person: the next run releases its batches.
    client
        .execute("UPDATE campaigns SET time_zone = 'America/New_York' WHERE campaign_id = 'broken'", &[])
        .await
        .unwrap();
    let summary = pacer::run_once(&pacer, t0() + Duration::minutes(1)).await.unwrap();
    assert_eq!((summary.released, summary.invalid_campaigns.len()), (3, 0), "{summary:?}");
}

#[tokio::test]
async fn a_partner_cut_to_its_floor_still_gets_its_batches_and_recovers_with_time() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    insert_batches(&db, "spring", 1, 10, t0()).await;
    insert_batches(&db, "spring", 1, 10, t0() + Duration::minutes(2)).await;
    let client = db.client().await;
    client.execute("UPDATE partners SET rate_per_second = 10 WHERE partner_id = 'acme'", &[]).await.unwrap();
    // The partner's overload cut its allowance to the floor (1 click a second): a batch of 10 does not fit a
    // one-second run. Held back, it would wait forever, and with nothing sent no delivery could raise the
    // allowance again: it goes spread over the ten seconds the floor rate needs.
    client
        .execute(
            "INSERT INTO partner_health (partner_id, allowance, allowance_changed_at) VALUES ('acme', 0.05, $1)",
            &[&t0()],
        )
        .await
        .unwrap();
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: settings() };
    assert_eq!(pacer::run_once(&pacer, t0()).await.unwrap().released, 1);
    let first = drain(&queue).await;
    assert_eq!((first.len(), first[0].spread_seconds), (1, 10), "{first:?}");
    // The bridge delivered it (clicks still owed to the partner would take the next run's first seconds).
    client
        .execute(
            "UPDATE batches SET state = 'delivered', finished_at = $1, lease_expires_at = NULL WHERE state = 'queued'",
            &[&t0()],
        )
        .await
        .unwrap();
    // An idle partner's allowance recovers with time (its last overload signal grows old): two minutes later the
    // next batch fits one second again.
    let summary = pacer::run_once(&pacer, t0() + Duration::minutes(2)).await.unwrap();
    assert_eq!(summary.released, 1, "{summary:?}");
    let second = drain(&queue).await;
    assert_eq!(second[0].spread_seconds, 1, "{second:?}");
}

/// Two runs plan the same minute for two campaigns of one partner (two pacers, or a run and the next): the
/// partner's counts of every second the first planned are seen by the second, so together they keep to its rate
/// in each second, not only in the last one the first run planned.
#[tokio::test]
async fn overlapping_runs_keep_a_partners_rate_in_every_second_they_plan() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    seed(&db, &campaign("autumn")).await;
    let client = db.client().await;
    client.execute("UPDATE partners SET rate_per_second = 2 WHERE partner_id = 'acme'", &[]).await.unwrap();
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: planning_a_minute() };
    insert_batches(&db, "spring", 40, 1, t0()).await;
    assert_eq!(pacer::run_once(&pacer, t0()).await.unwrap().released, 40);
    insert_batches(&db, "autumn", 40, 1, t0()).await;
    assert_eq!(pacer::run_once(&pacer, t0() + Duration::seconds(1)).await.unwrap().released, 40);

    let per_second = planned_per_second(&db).await;
    let busiest = per_second.values().max().copied().unwrap_or(0);
    assert!(busiest <= 2, "{busiest} clicks planned for the partner in one second: {per_second:?}");
}

/// The same for a campaign's own per-second limit: a run planning more of its batches after an earlier run
/// planned the minute sees every second the earlier one filled.
#[tokio::test]
async fn overlapping_runs_keep_a_campaigns_per_second_limit_in_every_second() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    let mut c = campaign("spring");
    c.max_per_second = Some(2);
    seed(&db, &c).await;
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: planning_a_minute() };
    insert_batches(&db, "spring", 40, 1, t0()).await;
    assert_eq!(pacer::run_once(&pacer, t0()).await.unwrap().released, 40);
    insert_batches(&db, "spring", 40, 1, t0()).await;
    assert_eq!(pacer::run_once(&pacer, t0() + Duration::seconds(1)).await.unwrap().released, 40);
    let busiest = planned_per_second(&db).await.into_values().max().unwrap_or(0);
    assert!(busiest <= 2, "{busiest} clicks of the campaign planned in one second");
}

/// A pacer planning a whole minute, as the schedule's runs do.
fn planning_a_minute() -> PacerSettings {
    PacerSettings {
        claim: ClaimSettings { horizon_seconds: 60, ..ClaimSettings::default() },
        ..PacerSettings::default()
    }
}

/// Clicks planned per second (Unix seconds): each message is delayed to its second, so the plan is read from the
/// batches' release instants.
async fn planned_per_second(db: &TestDb) -> HashMap<i64, i64> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT extract(epoch FROM date_trunc('second', release_at))::bigint, sum(click_count)::bigint
             FROM batches GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Clicks released to a partner that the bridges have not delivered seconds after their slots (its queue backed
/// up, its answers slowed) are still owed to it: the next run plans them into the partner's first seconds and
/// releases new work after them, so the backlog at the bridge stops growing.
#[tokio::test]
async fn clicks_the_bridges_still_owe_a_partner_hold_back_its_next_releases() {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, _dlq) = aws.queue_with_dead_letter(30, 5).await;
    seed(&db, &campaign("spring")).await;
    seed(&db, &campaign("autumn")).await;
    let client = db.client().await;
    client.execute("UPDATE partners SET rate_per_second = 4 WHERE partner_id = 'acme'", &[]).await.unwrap();
    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: planning_a_minute() };
    insert_batches(&db, "spring", 12, 1, t0()).await;
    assert_eq!(pacer::run_once(&pacer, t0()).await.unwrap().released, 12);
    // Half a minute on, the bridge has delivered 4 of the 12; 8 are overdue.
    client
        .execute(
            "UPDATE batches SET state = 'delivered', finished_at = $1, lease_expires_at = NULL
             WHERE batch_id IN (SELECT batch_id FROM batches WHERE campaign_id = 'spring' ORDER BY batch_id LIMIT 4)",
            &[&t0()],
        )
        .await
        .unwrap();
    let now = t0() + Duration::seconds(30);
    insert_batches(&db, "autumn", 4, 1, now).await;
    assert_eq!(pacer::run_once(&pacer, now).await.unwrap().released, 4);
    let first: DateTime<Utc> =
        client.query_one("SELECT min(release_at) FROM batches WHERE campaign_id = 'autumn'", &[]).await.unwrap().get(0);
    assert_eq!(first, now + Duration::seconds(2), "the 8 overdue clicks take the partner's first two seconds");
}
