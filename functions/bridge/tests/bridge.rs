//! The bridge against real PostgreSQL, the local SQS and DynamoDB, and the partner simulator over HTTP.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use bridge::{Bridge, BridgeSettings, Clock, HttpTransport, MessageOutcome, PartnerAnswer, Transport};
use chrono::{DateTime, Utc};
use clickpacer::aws::sqs::SqsQueue;
use clickpacer::delivery::{RenderedRequest, TransportError};
use clickpacer::domain::{Campaign, CampaignId, DeliveryFormat, Partner, PartnerId};
use clickpacer::invocation::{Deadline, Unlimited};
use clickpacer::postgres::pacer::ClaimSettings;
use clickpacer::postgres::replay::{self, ReplayScope, ReplaySummary};
use clickpacer::postgres::{campaigns, partners};
use clickpacer::release::ReleaseMessage;
use clickpacer::testing::{TestAws, TestDb};
use pacer::{Pacer, PacerSettings};
use partner_sim::{Behaviour, Running};

/// The wall clock, moved ahead by hand (milliseconds of offset): time runs as it does for the partner, and tests
/// skip waits (backoffs, Retry-After) by jumping.
struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.0.load(Ordering::SeqCst))
    }
}
impl TestClock {
    fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1000, Ordering::SeqCst);
    }

    /// Moves the clock to `at` (never back).
    fn set(&self, at: DateTime<Utc>) {
        let ahead = (at - Utc::now()).num_milliseconds();
        self.0.fetch_max(ahead, Ordering::SeqCst);
    }
}

struct World<T: Transport> {
    db: TestDb,
    bridge: Bridge<T, TestClock>,
    queue: SqsQueue,
    dead: SqsQueue,
    sim: Running,
}

async fn world() -> World<HttpTransport> {
    world_with(HttpTransport::new(true).unwrap()).await
}

async fn world_with<T: Transport>(transport: T) -> World<T> {
    clickpacer::telemetry::init();
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (queue, dead) = aws.queue_with_dead_letter(30, 5).await;
    let events = aws.events_table().await;
    let sim = partner_sim::spawn(partner_sim::Config::default()).await.unwrap();
    let bridge = Bridge {
        pool: db.pool.clone(),
        transport,
        clock: TestClock(AtomicI64::new(0)),
        click_queue: queue.clone(),
        events,
        settings: BridgeSettings::default(),
        partner_slots: Default::default(),
    };
    World { db, bridge, queue, dead, sim }
}

fn partner(w_sim: &Running, id: &str) -> Partner {
    let mut p = Partner::get(
        PartnerId::parse(id).unwrap(),
        format!("{}/click?id={{click_id}}&ua={{user_agent}}&c={{campaign_id}}", w_sim.partner_url(id)),
    );
    p.retry_base_ms = 10;
    p.retry_max_ms = 20;
    p.max_attempts = 3;
    p
}

impl<T: Transport> World<T> {
    async fn seed(&self, partner: &Partner, clicks: usize) -> CampaignId {
        let client = self.db.client().await;
        partners::upsert(&**client, partner).await.unwrap();
        let mut c = Campaign::unlimited(
            CampaignId::parse(format!("c-{}", partner.partner_id)).unwrap(),
            partner.partner_id.clone(),
        );
        c.batch_size = clicks as u32;
        c.cost_per_click = clickpacer::domain::Micros(1_000);
        campaigns::upsert(&**client, &c).await.unwrap();
        client.execute("SELECT ensure_click_partition(now())", &[]).await.unwrap();
        let upload: i64 = client
            .query_one(
                "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('b', $1, 'v') RETURNING upload_id",
                &[&format!("incoming/{}", clickpacer::testing::unique_suffix())],
            )
            .await
            .unwrap()
            .get(0);
        let batch: i64 = client
            .query_one(
                "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
                 VALUES ($1, $2, $3, 0, $4, now() - interval '1 minute') RETURNING batch_id",
                &[&c.campaign_id.as_str(), &partner.partner_id.as_str(), &upload, &(clicks as i32)],
            )
            .await
            .unwrap()
            .get(0);
        client
            .execute(
                "WITH ids AS (
                     INSERT INTO click_ids (campaign_id, click_id, ingested_at)
                     SELECT $1, 'click ' || g, now() FROM generate_series(1, $3) g RETURNING click_id, ingested_at)
                 INSERT INTO clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, ip,
                                     user_agent, sub_id, attributes, ingested_at)
                 SELECT $1, click_id, $2, substr(click_id, 7)::bigint, $4, now(), '203.0.113.9', 'Mozilla/5.0 (X11)',
                        's1', '{\"tier\": \"gold\"}', ingested_at FROM ids",
                &[&c.campaign_id.as_str(), &upload, &(clicks as i32), &batch],
            )
            .await
            .unwrap();
        c.campaign_id
    }

    /// The real pacer, planning `seconds` ahead.
    fn pacer_planning(&self, seconds: u32) -> Pacer<SqsQueue> {
        Pacer {
            pool: self.db.pool.clone(),
            queue: self.queue.clone(),
            settings: PacerSettings {
                claim: ClaimSettings { horizon_seconds: seconds, ..ClaimSettings::default() },
                ..PacerSettings::default()
            },
        }
    }

    /// Runs the real pacer once so the release message is exactly what production sends.
    async fn release(&self) -> Vec<SqsMessage> {
        pacer::run_once(&self.pacer_planning(1), Utc::now()).await.unwrap();
        self.receive().await
    }

    async fn receive(&self) -> Vec<SqsMessage> {
        let mut out = Vec::new();
        for _ in 0..3 {
            let got = self.queue.receive(10, 1).await.unwrap();
            if got.is_empty() && !out.is_empty() {
                break;
            }
            for m in got {
                self.queue.delete(&m.receipt_handle).await.unwrap();
                let mut message = SqsMessage::default();
                message.message_id = Some(m.message_id);
                message.body = Some(m.body);
                out.push(message);
            }
        }
        out
    }

    async fn handle(&self, messages: Vec<SqsMessage>) -> Vec<String> {
        let mut event = SqsEvent::default();
        event.records = messages;
        let response = bridge::handle_event(&self.bridge, event, &Unlimited).await;
        response.batch_item_failures.into_iter().map(|f| f.item_identifier).collect()
    }

    /// The last error of each dead click.
    async fn dead_reasons(&self) -> Vec<String> {
        let client = self.db.client().await;
        let rows = client.query("SELECT error FROM delivery_results WHERE outcome = 'dead' ORDER BY result_id", &[]);
        rows.await.unwrap().iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect()
    }

    async fn batch_state(&self) -> String {
        self.db.client().await.query_one("SELECT state FROM batches", &[]).await.unwrap().get(0)
    }

    async fn outcomes(&self) -> Vec<(String, i64)> {
        self.db
            .client()
            .await
            .query("SELECT outcome, count(*) FROM delivery_results GROUP BY outcome ORDER BY outcome", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

fn body(messages: &[SqsMessage]) -> ReleaseMessage {
    serde_json::from_str(messages[0].body.as_deref().unwrap()).unwrap()
}

#[tokio::test]
async fn get_template_delivers_each_click_once_and_logs_every_event() {
    let w = world().await;
    let p = partner(&w.sim, "acme");
    let campaign = w.seed(&p, 5).await;
    let messages = w.release().await;
    assert_eq!(messages.len(), 1);
    assert!(w.handle(messages).await.is_empty());

    let report = w.sim.sim.report();
    assert_eq!((report.total_requests, report.accepted, report.distinct_idempotency_keys), (5, 5, 5));
    let first = &report.recent[0];
    assert!(first.uri.starts_with("/p/acme/click?id=click%20"), "{}", first.uri);
    assert!(first.uri.contains("&ua=Mozilla%2F5.0%20%28X11%29&c=c-acme"), "{}", first.uri);
    assert!(first.idempotency_key.as_deref().is_some_and(|k| k.starts_with("cp1-")));
    assert_eq!(w.batch_state().await, "delivered");
    assert_eq!(w.outcomes().await, vec![("delivered".into(), 5)]);
    let ledger: (i64, i64) = {
        let row =
            w.db.client()
                .await
                .query_one("SELECT delivered_clicks, spend_micros FROM campaign_day_ledger", &[])
                .await
                .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(ledger, (5, 5_000));

    // Event log: the batch's clicks ingested, released and delivered, one item each for all five, through each
    // index, and each click's timeline from them; the outbox is empty.
    let hour = Utc::now().format("%Y-%m-%dT%H").to_string();
    let by_campaign = w.bridge.events.campaign_hour(campaign.as_str(), &hour).await.unwrap();
    let by_partner = w.bridge.events.partner_hour("acme", &hour).await.unwrap();
    let kinds = |items: &Vec<std::collections::HashMap<String, clickpacer::aws::dynamodb::ItemValue>>| {
        let mut kinds: Vec<(String, String)> = items
            .iter()
            .map(|i| (i["event"].as_s().unwrap().clone(), i["click_count"].as_n().unwrap().clone()))
            .collect();
        kinds.sort();
        kinds
    };
    let expected: Vec<(String, String)> =
        ["delivered", "ingested", "released"].iter().map(|k| (k.to_string(), "5".to_string())).collect();
    assert_eq!(kinds(&by_partner), expected);
    assert_eq!(kinds(&by_campaign), expected);
    let batch: i64 = w.db.client().await.query_one("SELECT batch_id FROM batches", &[]).await.unwrap().get(0);
    let today = Utc::now().format("%Y-%m-%d").to_string();
    for click in ["click 1", "click 5"] {
        let story =
            w.bridge.events.click_events(campaign.as_str(), click, batch, std::slice::from_ref(&today)).await.unwrap();
        let story: Vec<&str> = story.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(story, ["ingested", "released", "delivered"], "{click}");
    }
    let outbox = clickpacer::postgres::bridge::outbox_depth(&**w.db.client().await).await.unwrap();
    assert_eq!(outbox, 0);
}

#[tokio::test]
async fn post_json_and_form_bodies() {
    let w = world().await;
    let mut json = partner(&w.sim, "jsonp");
    json.delivery_format = DeliveryFormat::PostJson;
    json.endpoint_template = format!("{}/in", w.sim.partner_url("jsonp"));
    json.body_template = Some(r#"{"click": "{click_id}", "ip": "{ip}", "tier": "{attr.tier}"}"#.into());
    json.headers = vec![("X-Account".into(), "42".into())];
    json.signing_secret = Some("0123456789abcdef0123".into());
    w.seed(&json, 2).await;
    assert!(w.handle(w.release().await).await.is_empty());
    let report = w.sim.sim.partner_report("jsonp").unwrap();
    let request = report.recent.iter().find(|r| r.method == "POST").unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(parsed["ip"], "203.0.113.9");
    assert_eq!(parsed["tier"], "gold");
    assert_eq!(request.headers.get("x-account").map(String::as_str), Some("42"));
    assert!(request.headers.get("x-clickpacer-signature").is_some_and(|s| s.contains("v1=")));

    let mut form = partner(&w.sim, "formp");
    form.delivery_format = DeliveryFormat::PostForm;
    form.endpoint_template = format!("{}/in", w.sim.partner_url("formp"));
    form.body_template = Some("id={click_id}&ua={user_agent}".into());
    w.seed(&form, 1).await;
    assert!(w.handle(w.release().await).await.is_empty());
    let report = w.sim.sim.partner_report("formp").unwrap();
    assert_eq!(report.recent[0].body, "id=click+1&ua=Mozilla%2F5.0+%28X11%29");
}

#[tokio::test]
async fn retry_then_success_with_the_same_idempotency_key() {
    let w = world().await;
    let p = partner(&w.sim, "flaky");
    w.seed(&p, 3).await;
    w.sim.sim.set_behaviour("flaky", Behaviour { status_override: Some(500), ..Behaviour::default() }).unwrap();
    assert!(w.handle(w.release().await).await.is_empty());
    assert_eq!(w.outcomes().await, vec![("retrying".into(), 3)]);
    assert_eq!(w.batch_state().await, "queued");

    // The message came back (delayed by the short backoff); the partner has recovered.
    w.sim.sim.clear_behaviour("flaky");
    w.bridge.clock.advance(1);
    let again = w.receive().await;
    assert_eq!(again.len(), 1, "the message was sent back for the retry");
    assert!(w.handle(again).await.is_empty());
    assert_eq!(w.batch_state().await, "delivered");
    let report = w.sim.sim.report();
    assert_eq!((report.total_requests, report.accepted, report.distinct_idempotency_keys), (6, 3, 3));
    assert_eq!(report.repeated_idempotency_keys, 3, "each retry carried its click's key");
    assert_eq!(report.duplicate_accepted_keys, 0);
}

#[tokio::test]
async fn permanent_client_errors_are_dead_lettered_with_the_reason() {
    let w = world().await;
    let p = partner(&w.sim, "strict");
    w.seed(&p, 2).await;
    w.sim.sim.set_behaviour("strict", Behaviour { status_override: Some(400), ..Behaviour::default() }).unwrap();
    assert!(w.handle(w.release().await).await.is_empty());
    assert_eq!(w.outcomes().await, vec![("dead".into(), 2)]);
    assert_eq!(w.batch_state().await, "dead");
    let reasons = w.dead_reasons().await;
    assert!(reasons.len() == 2 && reasons.iter().all(|r| r.contains("HTTP 400")), "{reasons:?}");
    assert!(w.dead.receive(10, 1).await.unwrap().is_empty(), "the dead-letter queue holds only SQS's redrives");
    assert_eq!(w.sim.sim.report().total_requests, 2, "no retry of a permanent failure");
    let failures = w.bridge.events.failures_on(&Utc::now().format("%Y-%m-%d").to_string()).await.unwrap();
    assert_eq!(failures.len(), 2, "the sparse failures index holds the dead events");
}

#[tokio::test]
async fn retries_exhausted_end_in_the_dead_letter_queue() {
    let w = world().await;
    let p = partner(&w.sim, "down");
    w.seed(&p, 1).await;
    w.sim.sim.set_behaviour("down", Behaviour { status_override: Some(502), ..Behaviour::default() }).unwrap();
    let mut messages = w.release().await;
    for _ in 0..3 {
        assert!(w.handle(messages).await.is_empty());
        w.bridge.clock.advance(1);
        messages = w.receive().await;
    }
    assert!(messages.is_empty(), "no message after the last attempt");
    assert_eq!(w.outcomes().await, vec![("dead".into(), 1), ("retrying".into(), 2)]);
    assert_eq!(w.batch_state().await, "dead");
    let reasons = w.dead_reasons().await;
    assert!(reasons[0].contains("attempt 3 of 3"), "{reasons:?}");
    assert!(w.dead.receive(10, 1).await.unwrap().is_empty(), "the dead-letter queue holds only SQS's redrives");
}

#[tokio::test]
async fn retry_after_is_respected_before_any_new_request() {
    let w = world().await;
    let p = partner(&w.sim, "busy");
    w.seed(&p, 4).await;
    w.sim
        .sim
        .set_behaviour("busy", Behaviour { status_override: Some(429), retry_after_s: 30, ..Behaviour::default() })
        .unwrap();
    let messages = w.release().await;
    let copy = messages.clone();
    assert!(w.handle(messages).await.is_empty());
    let after_first = w.sim.sim.report().total_requests;
    assert!(after_first >= 1, "the first request was answered 429");
    let (allowance, until): (f64, Option<DateTime<Utc>>) = {
        let row =
            w.db.client()
                .await
                .query_one("SELECT allowance, retry_after_until FROM partner_health", &[])
                .await
                .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(allowance < 1.0, "AIMD cut the allowance: {allowance}");
    assert!(until.is_some_and(|u| u > w.bridge.clock.now() + chrono::Duration::seconds(25)));

    // Before Retry-After elapses: the redelivered message sends nothing.
    w.sim.sim.clear_behaviour("busy");
    w.bridge.clock.advance(10);
    let outcome = bridge::handle_message(&w.bridge, &copy[0], &Unlimited).await.unwrap();
    assert!(matches!(outcome, MessageOutcome::Paused { .. }), "{outcome:?}");
    assert_eq!(w.sim.sim.report().total_requests, after_first);

    w.bridge.clock.advance(25);
    bridge::handle_message(&w.bridge, &copy[0], &Unlimited).await.unwrap();
    assert_eq!(w.batch_state().await, "delivered");
    assert_eq!(w.sim.sim.report().duplicate_accepted_keys, 0);
}

#[tokio::test]
async fn redelivered_and_stale_messages_send_nothing_again() {
    let w = world().await;
    let p = partner(&w.sim, "acme");
    w.seed(&p, 3).await;
    let messages = w.release().await;
    let release = body(&messages);
    assert!(w.handle(messages.clone()).await.is_empty());
    // SQS delivers the same message again: the batch is finished, nothing is sent.
    assert!(w.handle(messages).await.is_empty());
    assert_eq!(w.sim.sim.report().total_requests, 3);

    // An older claim's message (stale fence) is acknowledged without delivering.
    let mut stale = release.clone();
    stale.fence -= 1;
    let mut message = SqsMessage::default();
    message.message_id = Some("stale".into());
    message.body = Some(serde_json::to_string(&stale).unwrap());
    let outcome = bridge::handle_message(&w.bridge, &message, &Unlimited).await.unwrap();
    assert!(matches!(outcome, MessageOutcome::Stale { .. }), "{outcome:?}");
    assert_eq!(w.sim.sim.report().total_requests, 3);
}

#[tokio::test]
async fn malformed_messages_are_kept_with_the_reason_and_do_not_fail_the_others() {
    let w = world().await;
    let p = partner(&w.sim, "acme");
    w.seed(&p, 2).await;
    let mut messages = w.release().await;
    let mut junk = SqsMessage::default();
    junk.message_id = Some("junk".into());
    junk.body = Some("{not json".into());
    messages.push(junk);
    assert!(w.handle(messages).await.is_empty(), "nothing goes back to the queue");
    assert_eq!(w.batch_state().await, "delivered");
    let kept: Vec<(String, String)> =
        w.db.client()
            .await
            .query("SELECT body, reason FROM unreadable_messages", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, "{not json");
    assert!(kept[0].1.contains("malformed release message"), "{kept:?}");
    assert!(w.dead.receive(10, 1).await.unwrap().is_empty(), "the dead-letter queue holds only SQS's redrives");
}

/// A fault injector around the real transport: the connection dies after `ok` requests (what was sent was sent,
/// the rest never left). A bridge process killed mid-batch is the chaos runner's `crash-after-answer` fault.
struct DiesAfter {
    inner: HttpTransport,
    ok: AtomicUsize,
    sent: AtomicUsize,
}

impl DiesAfter {
    fn after(ok: usize) -> Self {
        Self { inner: HttpTransport::new(true).unwrap(), ok: AtomicUsize::new(ok), sent: AtomicUsize::new(0) }
    }
}

impl Transport for DiesAfter {
    async fn send(
        &self,
        request: &RenderedRequest,
        timeout: Duration,
    ) -> Result<PartnerAnswer, (TransportError, Duration)> {
        if self.sent.fetch_add(1, Ordering::SeqCst) >= self.ok.load(Ordering::SeqCst) {
            return Err((TransportError::Connect("killed".into()), Duration::ZERO));
        }
        self.inner.send(request, timeout).await
    }
}

/// A world whose connection to the partner dies after `ok` requests, with one batch of `clicks` sent one at a
/// time.
async fn cut_off_after(ok: usize, clicks: usize) -> World<DiesAfter> {
    let w = world_with(DiesAfter::after(ok)).await;
    let mut p = partner(&w.sim, "acme");
    p.max_concurrency = 1;
    w.seed(&p, clicks).await;
    w
}

#[tokio::test]
async fn a_pass_whose_connection_dies_midway_resumes_without_resending_delivered_clicks() {
    let w = cut_off_after(4, 10).await;
    let messages = w.release().await;
    assert!(w.handle(messages.clone()).await.is_empty());
    assert_eq!(w.sim.sim.report().accepted, 4);
    w.bridge.transport.ok.store(usize::MAX, Ordering::SeqCst);
    w.bridge.clock.advance(1);
    let again = w.receive().await;
    assert!(w.handle(again).await.is_empty());
    let report = w.sim.sim.report();
    assert_eq!((report.accepted, report.duplicate_accepted_keys), (10, 0));
    assert_eq!(w.batch_state().await, "delivered");
}

#[tokio::test]
async fn a_message_lost_after_part_of_its_batch_was_delivered_comes_back_by_itself_and_finishes_once() {
    let w = cut_off_after(4, 10).await;
    let messages = w.release().await;
    let first = body(&messages);
    assert!(w.handle(messages).await.is_empty());
    assert_eq!(w.sim.sim.report().accepted, 4);

    // The pass sent the message back for the six clicks left, and the batch's queued lease covers that copy.
    let lease: DateTime<Utc> =
        w.db.client().await.query_one("SELECT lease_expires_at FROM batches", &[]).await.unwrap().get(0);
    let grace = chrono::Duration::from_std(w.bridge.settings.queued_lease).unwrap();
    assert!(lease >= w.bridge.clock.now() + grace, "lease {lease} covers the copy");
    // That copy is lost (received and dropped: a redrive to the dead-letter queue, say).
    assert_eq!(w.receive().await.len(), 1);
    w.bridge.transport.ok.store(usize::MAX, Ordering::SeqCst);

    // Once the lease runs out, the pacer takes the batch back with a new fence; the bridge sends only the six.
    let later = lease + chrono::Duration::seconds(1);
    w.bridge.clock.set(later);
    let pacer = w.pacer_planning(1);
    let summary = pacer::run_once(&pacer, later).await.unwrap();
    assert_eq!((summary.reclaimed, summary.released), (1, 1), "{summary:?}");
    let again = w.receive().await;
    assert_eq!(body(&again).fence, first.fence + 1);
    assert!(w.handle(again).await.is_empty());
    let report = w.sim.sim.report();
    assert_eq!((report.accepted, report.duplicate_accepted_keys), (10, 0));
    assert_eq!(w.batch_state().await, "delivered");
    let ledger: (i64, i64) = {
        let client = w.db.client().await;
        let sql = "SELECT sum(released_clicks)::bigint, sum(delivered_clicks)::bigint FROM campaign_day_ledger";
        let row = client.query_one(sql, &[]).await.unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(ledger, (10, 10), "reserved once, delivered once");
}

#[tokio::test]
async fn a_disabled_partner_parks_its_messages_instead_of_spinning_them_through_the_queue() {
    let w = world().await;
    let mut p = partner(&w.sim, "acme");
    w.seed(&p, 3).await;
    let messages = w.release().await;
    // A person disables the partner after the batch was released.
    p.enabled = false;
    partners::upsert(&**w.db.client().await, &p).await.unwrap();
    for _ in 0..3 {
        let outcome = bridge::handle_message(&w.bridge, &messages[0], &Unlimited).await.unwrap();
        assert!(matches!(outcome, MessageOutcome::PartnerDisabled { .. }), "{outcome:?}");
    }
    assert_eq!(w.sim.sim.report().total_requests, 0);
    // The copies come back minutes later, not at once, and no pass logged the clicks again.
    assert!(w.queue.receive(10, 1).await.unwrap().is_empty(), "no copy visible at once");
    let outbox = clickpacer::postgres::bridge::outbox_depth(&**w.db.client().await).await.unwrap();
    assert_eq!(outbox, 0, "no events while the partner is disabled");

    // Enabled again: the next copy delivers.
    p.enabled = true;
    partners::upsert(&**w.db.client().await, &p).await.unwrap();
    bridge::handle_message(&w.bridge, &messages[0], &Unlimited).await.unwrap();
    assert_eq!(w.batch_state().await, "delivered");
}

#[tokio::test]
async fn spend_counts_at_the_price_reserved_even_when_the_price_changed_since() {
    let w = world().await;
    let p = partner(&w.sim, "acme");
    let campaign_id = w.seed(&p, 5).await;
    let messages = w.release().await;
    // The campaign manager doubles the price after the release (reserved at 1,000 micros a click).
    let client = w.db.client().await;
    client
        .execute("UPDATE campaigns SET cost_per_click_micros = 2000 WHERE campaign_id = $1", &[&campaign_id.as_str()])
        .await
        .unwrap();
    assert!(w.handle(messages).await.is_empty());
    assert_eq!(w.batch_state().await, "delivered");
    assert_eq!(w.sim.sim.report().accepted, 5);
    let row = client
        .query_one("SELECT delivered_clicks, spend_micros, reserved_micros FROM campaign_day_ledger", &[])
        .await
        .unwrap();
    let ledger: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(ledger, (5, 5_000, 5_000), "spent what was reserved, at the reserved price");
}

#[tokio::test]
async fn retries_to_a_rated_partner_keep_to_its_rate_at_the_partner() {
    let w = world().await;
    let mut p = partner(&w.sim, "rated");
    p.rate_per_second = Some(10);
    w.seed(&p, 20).await;
    // Every click fails once: the pacer spread the batch over two seconds for the first pass.
    w.sim.sim.set_behaviour("rated", Behaviour { status_override: Some(500), ..Behaviour::default() }).unwrap();
    let pacer = w.pacer_planning(3);
    assert_eq!(pacer::run_once(&pacer, Utc::now()).await.unwrap().released, 1);
    assert!(w.handle(w.receive().await).await.is_empty());
    assert_eq!(w.outcomes().await, vec![("retrying".into(), 20)]);
    w.sim.sim.clear_behaviour("rated");
    w.sim.sim.reset();

    // The retry pass: the partner sees its rate in every second, not the twenty at once.
    w.bridge.clock.advance(1);
    let again = w.receive().await;
    assert!(w.handle(again).await.is_empty());
    let mut rounds = 0;
    while w.batch_state().await != "delivered" && rounds < 20 {
        w.bridge.clock.advance(1);
        let more = w.receive().await;
        assert!(w.handle(more).await.is_empty());
        rounds += 1;
    }
    let report = w.sim.sim.partner_report("rated").unwrap();
    assert_eq!(report.accepted, 20);
    assert!(report.max_requests_in_one_second <= 10, "{} in one second", report.max_requests_in_one_second);
}

/// Lambda stops an invocation at its timeout wherever it is; the bridge ends its pass before that, with what it
/// sent recorded and the rest of the batch back on the queue, instead of waiting for slots past its deadline.
#[tokio::test]
async fn a_pass_ends_before_the_invocations_deadline_with_what_it_sent_recorded() {
    let mut w = world().await;
    w.bridge.settings.reserve = Duration::from_secs(1);
    let mut p = partner(&w.sim, "slow");
    p.rate_per_second = Some(2);
    p.timeout_ms = 500;
    w.seed(&p, 20).await;
    let pacer = w.pacer_planning(15);
    assert_eq!(pacer::run_once(&pacer, Utc::now()).await.unwrap().released, 1);
    let messages = w.receive().await;

    // Twenty clicks at two a second take ten seconds; the invocation has four, and is killed at four.
    let timeout = Duration::from_secs(4);
    let mut event = SqsEvent::default();
    event.records = messages;
    let budget = Deadline::after(timeout);
    let pass = bridge::handle_event(&w.bridge, event, &budget);
    let response = tokio::time::timeout(timeout, pass).await.expect("the pass outlived its invocation");
    assert!(response.batch_item_failures.is_empty());
    let sent = w.sim.sim.report().accepted;
    assert!(sent > 0 && sent < 20, "{sent} of 20 sent in the first invocation");
    assert_eq!(w.outcomes().await, vec![("delivered".into(), sent as i64)]);

    // The rest came back on the queue, and later invocations finish the batch once, at the partner's rate.
    let mut rounds = 0;
    while w.batch_state().await != "delivered" && rounds < 20 {
        let mut event = SqsEvent::default();
        event.records = w.receive().await;
        let budget = Deadline::after(timeout);
        let pass = bridge::handle_event(&w.bridge, event, &budget);
        assert!(tokio::time::timeout(timeout, pass).await.expect("killed").batch_item_failures.is_empty());
        rounds += 1;
    }
    let report = w.sim.sim.partner_report("slow").unwrap();
    assert_eq!((report.accepted, report.duplicate_accepted_keys), (20, 0));
    assert!(report.max_requests_in_one_second <= 2, "{} in one second", report.max_requests_in_one_second);
}

/// A message whose turn comes after the invocation's time is gone goes back to the queue untouched.
#[tokio::test]
async fn a_message_reached_too_late_in_its_invocation_goes_back_without_a_request() {
    let w = world().await;
    let p = partner(&w.sim, "acme");
    w.seed(&p, 3).await;
    let messages = w.release().await;
    let budget = Deadline::after(w.bridge.settings.reserve / 2);
    let outcome = bridge::handle_message(&w.bridge, &messages[0], &budget).await.unwrap();
    assert!(matches!(outcome, MessageOutcome::OutOfTime { .. }), "{outcome:?}");
    assert_eq!(w.sim.sim.report().total_requests, 0);
    let again = w.receive().await;
    assert_eq!(body(&again), body(&messages));
    assert!(w.handle(again).await.is_empty());
    assert_eq!(w.batch_state().await, "delivered");
}

/// Dead clicks replayed by a person are delivered once; the clicks delivered beside them are not sent again,
/// and the day ledger counts every click once: released = delivered, none failed, spend for each delivery.
#[tokio::test]
async fn replayed_dead_clicks_are_delivered_once_without_resending_the_delivered_ones() {
    let w = world_with(DiesAfter::after(4)).await;
    let mut p = partner(&w.sim, "acme");
    p.max_concurrency = 1;
    p.max_attempts = 1;
    let campaign = w.seed(&p, 10).await;
    assert!(w.handle(w.release().await).await.is_empty());
    assert_eq!(w.batch_state().await, "partially_failed");
    assert_eq!(w.outcomes().await, vec![("dead".into(), 6), ("delivered".into(), 4)]);

    // The partner is reachable again; a person replays the campaign's dead clicks.
    w.bridge.transport.ok.store(usize::MAX, Ordering::SeqCst);
    let scope = ReplayScope { campaign_id: campaign.clone(), batch_ids: Vec::new() };
    let mut client = w.db.pool.get().await.unwrap();
    let summary = replay::replay_dead(&mut client, &scope, "partner fixed").await.unwrap();
    assert_eq!(summary, ReplaySummary { batches: 1, clicks: 6 });
    assert_eq!(w.batch_state().await, "pending");
    // Nothing left to replay.
    let again = replay::replay_dead(&mut client, &scope, "twice").await.unwrap();
    assert_eq!(again, ReplaySummary::default());

    let messages = w.release().await;
    assert_eq!(body(&messages).clicks, 6, "only the dead clicks are released again");
    assert!(w.handle(messages).await.is_empty());
    assert_eq!(w.batch_state().await, "delivered");
    let report = w.sim.sim.report();
    assert_eq!((report.accepted, report.duplicate_accepted_keys, report.total_requests), (10, 0, 10));
    let ledger = client
        .query_one(
            "SELECT sum(released_clicks)::bigint, sum(delivered_clicks)::bigint, sum(failed_clicks)::bigint,
                    sum(spend_micros)::bigint
             FROM campaign_day_ledger WHERE campaign_id = $1",
            &[&campaign.as_str()],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64, i64) = (ledger.get(0), ledger.get(1), ledger.get(2), ledger.get(3));
    assert_eq!(counts, (10, 10, 0, 10_000));
    let fates = clickpacer::postgres::reports::campaigns(&**client).await.unwrap();
    let fates = &fates.iter().find(|c| c.campaign_id == campaign.as_str()).unwrap().fates;
    assert_eq!((fates.accepted, fates.delivered, fates.dead, fates.pending), (10, 10, 0, 0));
}

/// A spread batch's clicks keep the spread's pace on every pass: clicks whose share came while no pass was
/// running (the message came back late) go one spacing apart from now, not all at once.
#[tokio::test]
async fn a_later_pass_of_a_spread_batch_keeps_its_pace_for_overdue_clicks() {
    let mut w = world().await;
    w.bridge.settings.reserve = Duration::from_secs(1);
    let mut p = partner(&w.sim, "spread");
    p.timeout_ms = 500;
    let campaign = w.seed(&p, 40).await;
    let client = w.db.client().await;
    client
        .execute("UPDATE campaigns SET max_per_second = 1 WHERE campaign_id = $1", &[&campaign.as_str()])
        .await
        .unwrap();
    let pacer = w.pacer_planning(60);
    assert_eq!(pacer::run_once(&pacer, Utc::now()).await.unwrap().released, 1);
    let messages = w.receive().await;
    assert!(body(&messages).spread_seconds >= 39, "spread over {} s", body(&messages).spread_seconds);
    // Invocations of five seconds: a pass sends what the spread allows in them.
    let within = |messages: Vec<SqsMessage>| async {
        let mut event = SqsEvent::default();
        event.records = messages;
        let budget = Deadline::after(Duration::from_secs(5));
        bridge::handle_event(&w.bridge, event, &budget).await.batch_item_failures.is_empty()
    };
    assert!(within(messages).await);
    let first = w.sim.sim.report().accepted;
    assert!((2..=6).contains(&first), "{first} sent in the first pass");

    // The message comes back twenty seconds late: about twenty clicks' shares have passed meanwhile.
    w.bridge.clock.advance(20);
    w.sim.sim.reset();
    let again = w.receive().await;
    assert!(within(again).await);
    let report = w.sim.sim.partner_report("spread").unwrap();
    assert!(report.accepted >= 2, "{} sent in the second pass", report.accepted);
    assert!(report.max_requests_in_one_second <= 2, "{} in one second", report.max_requests_in_one_second);
}

/// Requests that waited for the partner's concurrency past their send slot (it hung, then recovered) would go
/// together when it recovers, more than its rate in that second: a request goes at its slot only with a permit in
/// hand, and without one goes back with its message.
#[tokio::test]
async fn requests_held_up_by_a_hung_partner_do_not_burst_when_it_recovers() {
    let w = world().await;
    let mut p = partner(&w.sim, "hung");
    p.rate_per_second = Some(2);
    p.max_concurrency = 1;
    p.timeout_ms = 3_000;
    let campaign = w.seed(&p, 20).await;
    // Four batches of five, so four passes to the partner run at once.
    let client = w.db.client().await;
    for part in 1..4_i64 {
        client
            .execute(
                "WITH b AS (INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
                            SELECT campaign_id, partner_id, upload_id, $2, 5, due_at FROM batches
                            WHERE campaign_id = $1 AND upload_seq = 0 RETURNING batch_id)
                 UPDATE clicks SET batch_id = (SELECT batch_id FROM b)
                 WHERE campaign_id = $1 AND row_number > 5 * $2 AND row_number <= 5 * ($2 + 1)",
                &[&campaign.as_str(), &(part as i32)],
            )
            .await
            .unwrap();
    }
    client.execute("UPDATE batches SET click_count = 5", &[]).await.unwrap();
    w.sim.sim.set_behaviour("hung", Behaviour { latency_ms: 1_500, ..Behaviour::default() }).unwrap();
    let pacer = w.pacer_planning(10);
    assert_eq!(pacer::run_once(&pacer, Utc::now()).await.unwrap().released, 4);
    // The pacer delayed them over its horizon: all four, handled together.
    let mut messages = Vec::new();
    while messages.len() < 4 {
        messages.extend(w.receive().await);
    }
    let recover = async {
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        w.sim.sim.set_behaviour("hung", Behaviour::default()).unwrap();
    };
    let (failures, ()) = tokio::join!(w.handle(messages), recover);
    assert!(failures.is_empty());
    let report = w.sim.sim.partner_report("hung").unwrap();
    assert!(report.max_requests_in_one_second <= 2, "{} in one second", report.max_requests_in_one_second);
}

#[tokio::test]
async fn a_scheduled_invocation_flushes_events_the_last_delivery_could_not() {
    let w = world().await;
    let p = partner(&w.sim, "acme");
    let campaign = w.seed(&p, 3).await;
    // Delivered, but the flush at the end of the invocation did not happen (the event log was unreachable):
    // handle_message records the pass without flushing.
    let messages = w.release().await;
    bridge::handle_message(&w.bridge, &messages[0], &Unlimited).await.unwrap();
    let depth = || async { clickpacer::postgres::bridge::outbox_depth(&**w.db.client().await).await.unwrap() };
    assert!(depth().await > 0);

    // No more clicks come; the schedule's invocation (an EventBridge Scheduler event) flushes the outbox.
    let scheduled = serde_json::json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.scheduler", "account": "123456789012", "time": "2026-12-02T03:00:00Z",
        "region": "us-east-1", "resources": [], "detail": {}
    });
    let answer = bridge::handle_invocation(&w.bridge, scheduled, &Unlimited).await.unwrap();
    assert_eq!(answer["flushed"], 3, "the batch's ingested, released and delivered items: {answer}");
    assert_eq!(depth().await, 0);
    let hour = Utc::now().format("%Y-%m-%dT%H").to_string();
    assert_eq!(w.bridge.events.campaign_hour(campaign.as_str(), &hour).await.unwrap().len(), 3);

    // An SQS event still goes to the delivery handler, and its answer is the partial batch response.
    let answer = bridge::handle_invocation(&w.bridge, serde_json::json!({ "Records": [] }), &Unlimited).await.unwrap();
    assert_eq!(answer, serde_json::json!({ "batchItemFailures": [] }));
}

#[tokio::test]
async fn partner_urls_reaching_private_addresses_are_refused_when_sending() {
    let w = world_with(HttpTransport::new(false).unwrap()).await;
    for (id, url) in [
        ("loopback", "http://127.0.0.1:9/c?id={click_id}"),
        ("metadata", "http://169.254.169.254/latest/meta-data?id={click_id}"),
        ("private", "http://10.1.2.3/c?id={click_id}"),
        ("mapped", "http://[::ffff:127.0.0.1]/c?id={click_id}"),
        ("decimal", "http://2130706433/c?id={click_id}"),
        ("localname", "http://localhost:9/c?id={click_id}"),
    ] {
        let mut p = partner(&w.sim, id);
        p.endpoint_template = url.into();
        w.seed(&p, 1).await;
    }
    assert!(w.handle(w.release().await).await.is_empty());
    let rows =
        w.db.client()
            .await
            .query("SELECT partner_id, outcome, error FROM delivery_results ORDER BY partner_id", &[])
            .await
            .unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        let (partner, outcome, error): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(outcome, "dead", "{partner}");
        assert!(error.as_deref().is_some_and(|e| e.contains("refused")), "{partner}: {error:?}");
    }
    assert_eq!(w.sim.sim.report().total_requests, 0);
}

/// Counts the requests in flight through it and remembers the most at once.
struct InFlight {
    inner: HttpTransport,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Transport for InFlight {
    async fn send(
        &self,
        request: &RenderedRequest,
        timeout: Duration,
    ) -> Result<PartnerAnswer, (TransportError, Duration)> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let answer = self.inner.send(request, timeout).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

#[tokio::test]
async fn concurrency_per_partner_holds_across_messages_handled_together() {
    let w = world_with(InFlight {
        inner: HttpTransport::new(true).unwrap(),
        now: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    })
    .await;
    let mut p = partner(&w.sim, "narrow");
    p.max_concurrency = 2;
    w.sim.sim.set_behaviour("narrow", Behaviour { latency_ms: 100, ..Behaviour::default() }).unwrap();
    w.seed(&p, 12).await;
    // Three batches of four clicks for the same partner: three messages in one event, handled at once.
    w.db.client()
        .await
        .batch_execute(
            "WITH more AS (
                 INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
                 SELECT campaign_id, partner_id, upload_id, s, 4, due_at FROM batches, generate_series(1, 2) s
                 RETURNING batch_id, upload_seq)
             UPDATE clicks c SET batch_id = m.batch_id FROM more m WHERE (c.row_number - 1) / 4 = m.upload_seq;
             UPDATE batches SET click_count = 4 WHERE upload_seq = 0;",
        )
        .await
        .unwrap();
    let mut messages = w.release().await;
    assert_eq!(messages.len(), 3);
    // Requests that find no permit at their slot go back with their message rather than wait and go late.
    for _ in 0..10 {
        assert!(w.handle(messages).await.is_empty());
        if w.sim.sim.report().accepted == 12 {
            break;
        }
        messages = w.receive().await;
    }
    let report = w.sim.sim.report();
    assert_eq!((report.accepted, report.duplicate_accepted_keys), (12, 0));
    let peak = w.bridge.transport.peak.load(Ordering::SeqCst);
    assert!(peak <= 2, "at most max_concurrency in flight to the partner, saw {peak}");
}

/// A partner whose send slots are taken far ahead (other bridges reserved them) must not hold up the other
/// messages of an event: the message waiting for it goes back to the queue until its slot is near, instead of
/// occupying one of the invocation's message slots for as long as it waits while the others' partners sit idle.
#[tokio::test]
async fn a_message_waiting_for_a_busy_partners_slots_goes_back_instead_of_holding_up_the_event() {
    let mut w = world().await;
    // One message at a time, the busy partner's first: what it waits for, the others wait for too.
    w.bridge.settings.message_concurrency = 1;
    let mut busy = partner(&w.sim, "busy");
    busy.rate_per_second = Some(10);
    w.seed(&busy, 5).await;
    let free = partner(&w.sim, "free");
    w.seed(&free, 5).await;
    let client = w.db.client().await;
    client
        .execute(
            "INSERT INTO partner_health (partner_id, next_send_at) VALUES ('busy', now() + interval '6 seconds')
             ON CONFLICT (partner_id) DO UPDATE SET next_send_at = EXCLUDED.next_send_at",
            &[],
        )
        .await
        .unwrap();
    let mut messages = w.release().await;
    assert_eq!(messages.len(), 2);
    messages.sort_by_key(|m| body(std::slice::from_ref(m)).partner_id.as_str() != "busy");
    assert!(w.handle(messages).await.is_empty());
    assert_eq!(w.sim.sim.partner_report("free").map(|r| r.accepted), Some(5), "the free partner's clicks went");
    assert_eq!(w.sim.sim.partner_report("busy"), None, "nothing was sent: its slot is 6 s away");

    // The busy partner's message came back, delayed towards its slot, and is delivered then.
    let mut rounds = 0;
    while client
        .query_one("SELECT count(*) FROM delivery_results WHERE outcome = 'delivered'", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 10
        && rounds < 30
    {
        w.bridge.clock.advance(1);
        let again = w.receive().await;
        assert!(w.handle(again).await.is_empty());
        rounds += 1;
    }
    let report = w.sim.sim.partner_report("busy").unwrap();
    assert_eq!((report.accepted, report.duplicate_accepted_keys), (5, 0));
}

/// A campaign's per-second limit holds at the partner whatever its messages say: two batches of one campaign
/// that reach the bridge late together (their spreads long past), or after a campaign manager lowered the limit,
/// take their requests from the campaign's own send stream, not each its own pace side by side.
#[tokio::test]
async fn late_batches_of_one_campaign_delivered_together_keep_to_its_per_second_limit_at_the_partner() {
    let w = world().await;
    let p = partner(&w.sim, "limited");
    let campaign = w.seed(&p, 20).await;
    let client = w.db.client().await;
    client
        .batch_execute(
            "WITH more AS (
                 INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
                 SELECT campaign_id, partner_id, upload_id, 1, 10, due_at FROM batches
                 RETURNING batch_id)
             UPDATE clicks c SET batch_id = m.batch_id FROM more m WHERE c.row_number > 10;
             UPDATE batches SET click_count = 10 WHERE upload_seq = 0;",
        )
        .await
        .unwrap();
    let messages = w.release().await;
    assert_eq!(messages.len(), 2);
    // Both were planned at 5 a second, two seconds each, and arrive half a minute late.
    client
        .execute("UPDATE campaigns SET max_per_second = 5 WHERE campaign_id = $1", &[&campaign.as_str()])
        .await
        .unwrap();
    client
        .execute("UPDATE batches SET release_at = now() - interval '30 seconds', spread_seconds = 2", &[])
        .await
        .unwrap();
    assert!(w.handle(messages).await.is_empty());
    let mut rounds = 0;
    while w.outcomes().await != vec![("delivered".to_owned(), 20)] && rounds < 20 {
        let again = w.receive().await;
        assert!(w.handle(again).await.is_empty());
        rounds += 1;
    }
    let report = w.sim.sim.report();
    assert_eq!((report.accepted, report.duplicate_accepted_keys), (20, 0));
    let arrivals = w.sim.sim.arrivals();
    let seconds = &arrivals.campaigns[campaign.as_str()];
    let peak = seconds.values().map(|s| s.requests).max().unwrap_or(0);
    assert!(peak <= 5, "at most 5 a second at the partner, saw {peak}: {seconds:?}");
}

/// A campaign's per-minute limit holds at the partner whatever its messages say: a batch that reaches the bridge
/// late (released at the end of one minute, sent in the next beside that minute's own) takes its requests from the
/// campaign's own send stream, which counts each UTC minute; what the minute has no room for waits for the next.
#[tokio::test]
async fn a_late_batch_of_a_campaign_with_a_per_minute_limit_keeps_to_it_at_the_partner() {
    let w = world().await;
    let p = partner(&w.sim, "per-minute");
    let campaign = w.seed(&p, 12).await;
    let messages = w.release().await;
    assert_eq!(messages.len(), 1);
    let client = w.db.client().await;
    client
        .execute("UPDATE campaigns SET max_per_minute = 3 WHERE campaign_id = $1", &[&campaign.as_str()])
        .await
        .unwrap();
    client
        .execute("UPDATE batches SET release_at = now() - interval '30 seconds', spread_seconds = 1", &[])
        .await
        .unwrap();
    assert!(w.handle(messages).await.is_empty());
    let delivered: i64 = client
        .query_one("SELECT count(*) FROM delivery_results WHERE outcome = 'delivered'", &[])
        .await
        .unwrap()
        .get(0);
    // Three in this minute, or three more if the pass crossed into the next one.
    assert!((3..=6).contains(&delivered), "{delivered} delivered at 3 a minute");
    assert_eq!(w.batch_state().await, "queued", "the rest wait for the next minute");
    let arrivals = w.sim.sim.arrivals();
    let mut per_minute: std::collections::BTreeMap<u64, u64> = Default::default();
    for (second, counts) in &arrivals.campaigns[campaign.as_str()] {
        *per_minute.entry(second / 60).or_default() += counts.requests;
    }
    assert!(per_minute.values().all(|n| *n <= 3), "at most 3 in a UTC minute at the partner: {per_minute:?}");
}

/// Sums of a rollup table: released, delivered, failed, throttled, dead, spend, latency samples and their sum.
async fn rollup_totals(client: &tokio_postgres::Client, table: &str) -> [i64; 8] {
    let row = client
        .query_one(
            &format!(
                "SELECT sum(released)::bigint, sum(delivered)::bigint, sum(failed)::bigint, sum(throttled)::bigint,
                        sum(dead)::bigint, sum(spend_micros)::bigint,
                        (SELECT coalesce(sum(h), 0) FROM {table}, unnest(latency_hist) h)::bigint,
                        sum(latency_sum_ms)::bigint
                 FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    std::array::from_fn(|i| row.get::<_, Option<i64>>(i).unwrap_or(0))
}

#[tokio::test]
async fn every_pass_adds_its_outcomes_to_the_minute_and_hour_rollups() {
    let w = world().await;
    let p = partner(&w.sim, "busy");
    w.seed(&p, 4).await;
    w.sim
        .sim
        .set_behaviour("busy", Behaviour { status_override: Some(429), retry_after_s: 1, ..Behaviour::default() })
        .unwrap();
    let messages = w.release().await;
    let copy = messages.clone();
    assert!(w.handle(messages).await.is_empty());
    w.sim.sim.clear_behaviour("busy");
    w.bridge.clock.advance(3);
    bridge::handle_message(&w.bridge, &copy[0], &Unlimited).await.unwrap();
    assert_eq!(w.batch_state().await, "delivered");

    let client = w.db.client().await;
    let raw = client
        .query_one(
            "SELECT count(*) FILTER (WHERE outcome = 'delivered'),
                    count(*) FILTER (WHERE outcome IN ('retrying', 'dead')),
                    count(*) FILTER (WHERE outcome IN ('retrying', 'dead') AND http_status = 429),
                    count(*) FILTER (WHERE outcome = 'dead'),
                    count(latency_ms), coalesce(sum(latency_ms), 0)::bigint
             FROM delivery_results",
            &[],
        )
        .await
        .unwrap();
    let raw: [i64; 6] = std::array::from_fn(|i| raw.get(i));
    assert!(raw[2] >= 1, "the partner throttled at least one request: {raw:?}");
    assert_eq!(raw[0], 4);
    let spend: i64 = client.query_one("SELECT spend_micros FROM campaign_day_ledger", &[]).await.unwrap().get(0);
    let expected = [4, raw[0], raw[1], raw[2], raw[3], spend, raw[4], raw[5]];
    for table in ["delivery_stats_minute", "delivery_stats_hour"] {
        assert_eq!(rollup_totals(&client, table).await, expected, "{table}");
    }
}
