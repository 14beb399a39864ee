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

    c.status = CampaignStatus::Active;
    campaigns::upsert(&**db.client().await, &c).await.unwrap();
    assert_eq!(pacer::run_once(&pacer, t0() + Duration::minutes(1)).await.unwrap().released, 3);
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
