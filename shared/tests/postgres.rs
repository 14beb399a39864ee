//! The schema and repositories against a real PostgreSQL.

use clickpacer::domain::{
    Campaign, CampaignId, CampaignStatus, CatchUp, HourlyWeights, Micros, PacingMode, Partner, PartnerId,
};
use clickpacer::postgres::{self, DbError, campaigns, partners};
use clickpacer::testing::TestDb;

fn partner() -> Partner {
    let mut p = Partner::get(PartnerId::parse("acme").unwrap(), "https://acme.example/click?id={click_id}");
    p.headers = vec![("X-Source".into(), "clickpacer".into())];
    p.rate_per_second = Some(50);
    p.signing_secret = Some("0123456789abcdef".into());
    p
}

fn campaign() -> Campaign {
    let mut c = Campaign::unlimited(CampaignId::parse("spring-sale").unwrap(), PartnerId::parse("acme").unwrap());
    c.time_zone = chrono_tz::America::New_York;
    let mut weights = [0.0; 24];
    weights[9..17].fill(1.0);
    c.pacing = PacingMode::HourlyCurve(HourlyWeights::parse(&weights).unwrap());
    c.catch_up = CatchUp::Ahead(120);
    c.daily_cap = Some(10_000);
    c.max_per_minute = Some(600);
    c.cost_per_click = Micros(250_000);
    c.daily_budget = Some(Micros(2_000_000_000));
    c.flight_start = Some("2026-11-01T00:00:00Z".parse().unwrap());
    c.flight_end = Some("2026-12-01T00:00:00Z".parse().unwrap());
    c
}

async fn seed(db: &TestDb) {
    let client = db.client().await;
    partners::upsert(&**client, &partner()).await.unwrap();
    campaigns::upsert(&**client, &campaign()).await.unwrap();
}

fn expect_violation<T: std::fmt::Debug>(result: Result<T, tokio_postgres::Error>, what: &str) {
    let err = DbError::from(result.expect_err(what));
    assert!(err.is_constraint_violation(), "{what}: expected a constraint violation, got {err}");
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_again() {
    let db = TestDb::new().await; // applies them once
    let again = postgres::migrate(&db.pool).await.unwrap();
    assert!(again.is_empty(), "nothing left to apply: {again:?}");
    let client = db.client().await;
    let applied: i64 = client.query_one("SELECT count(*) FROM refinery_schema_history", &[]).await.unwrap().get(0);
    assert_eq!(applied as usize, postgres::known_migrations().len());
}

#[tokio::test]
async fn partners_and_campaigns_round_trip() {
    let db = TestDb::new().await;
    seed(&db).await;
    let client = db.client().await;
    assert_eq!(partners::get(&**client, &PartnerId::parse("acme").unwrap()).await.unwrap(), Some(partner()));
    assert_eq!(campaigns::get(&**client, &campaign().campaign_id).await.unwrap(), Some(campaign()));

    let mut paused = campaign();
    paused.status = CampaignStatus::Paused;
    paused.pacing = PacingMode::Even;
    campaigns::upsert(&**client, &paused).await.unwrap();
    assert_eq!(campaigns::list(&**client).await.unwrap(), vec![paused]);
    assert_eq!(campaigns::get(&**client, &CampaignId::parse("nope").unwrap()).await.unwrap(), None);
}

#[tokio::test]
async fn the_database_rejects_what_the_design_forbids() {
    let db = TestDb::new().await;
    seed(&db).await;
    let client = db.client().await;

    expect_violation(
        client.execute("UPDATE campaigns SET daily_cap = -1 WHERE campaign_id = 'spring-sale'", &[]).await,
        "negative daily cap",
    );
    expect_violation(
        client
            .execute("UPDATE campaigns SET time_zone = 'Mars/Olympus_Mons' WHERE campaign_id = 'spring-sale'", &[])
            .await,
        "unknown time zone",
    );
    expect_violation(
        client.execute("UPDATE campaigns SET hourly_weights = array_fill(1.0::float8, ARRAY[23])", &[]).await,
        "23 hourly weights",
    );
    expect_violation(
        client.execute("INSERT INTO campaigns (campaign_id, name, partner_id) VALUES ('x', 'x', 'ghost')", &[]).await,
        "unknown partner",
    );

    let upload: i64 = client
        .query_one(
            "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('b', 'k', 'v1') RETURNING upload_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    expect_violation(
        client.execute("INSERT INTO uploads (bucket, object_key, object_version) VALUES ('b', 'k', 'v1')", &[]).await,
        "same object version twice",
    );
    expect_violation(
        client.execute("UPDATE uploads SET accepted_rows = 5 WHERE upload_id = $1", &[&upload]).await,
        "counts that do not add up",
    );

    let insert_batch =
        "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at, state)
                        VALUES ('spring-sale', 'acme', $1, $2, 10, now(), $3)";
    let batch_id: i64 = client
        .query_one(&format!("{insert_batch} RETURNING batch_id"), &[&upload, &0i32, &"pending"])
        .await
        .unwrap()
        .get(0);
    expect_violation(client.execute(insert_batch, &[&upload, &1i32, &"misplaced"]).await, "unknown batch state");
    expect_violation(client.execute(insert_batch, &[&upload, &0i32, &"pending"]).await, "same batch slot twice");
    expect_violation(
        client.execute("UPDATE batches SET state = 'claimed' WHERE batch_id = $1", &[&batch_id]).await,
        "a claim without a lease",
    );

    // A click id enters a campaign once, whatever partition or ingestion time it would land in.
    client.execute("SELECT ensure_click_partition(now())", &[]).await.unwrap();
    let insert_click = "WITH id AS (
                            INSERT INTO click_ids (campaign_id, click_id, ingested_at)
                            VALUES ('spring-sale', 'click-1', $3) RETURNING *)
                        INSERT INTO clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at,
                                            ingested_at)
                        SELECT campaign_id, click_id, $1, 1, $2, now(), ingested_at FROM id";
    let now = chrono::Utc::now();
    client.execute(insert_click, &[&upload, &batch_id, &now]).await.unwrap();
    expect_violation(
        client.execute(insert_click, &[&upload, &batch_id, &(now + chrono::Duration::days(40))]).await,
        "duplicate click id in a campaign",
    );

    // One confirmed delivery per click, ever.
    let deliver = "INSERT INTO delivery_results (batch_id, fence, campaign_id, click_id, partner_id, attempt, outcome)
                   VALUES ($1, 1, 'spring-sale', 'click-1', 'acme', $2, 'delivered')";
    client.execute(deliver, &[&batch_id, &1i32]).await.unwrap();
    expect_violation(client.execute(deliver, &[&batch_id, &2i32]).await, "a second delivery of one click");
}

#[tokio::test]
async fn click_partitions_are_created_once_per_month() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let name: String =
        client.query_one("SELECT ensure_click_partition('2027-02-14T12:00:00Z')", &[]).await.unwrap().get(0);
    assert_eq!(name, "clicks_2027_02");
    let again: String =
        client.query_one("SELECT ensure_click_partition('2027-02-28T23:59:59Z')", &[]).await.unwrap().get(0);
    assert_eq!(again, name);
    let partitions: i64 = client
        .query_one("SELECT count(*) FROM pg_inherits WHERE inhparent = 'clicks'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 2, "the default partition and February 2027");
}

/// Bridges reserving send slots for one partner concurrently get one evenly spaced stream; a throttle sets the
/// rate to what the partner accepted, pauses every bridge until its Retry-After, and the rate is then learned.
#[tokio::test]
async fn concurrent_bridges_share_one_send_pace_and_learn_from_a_throttle() {
    use clickpacer::delivery::pace::SlotGrant;
    use clickpacer::postgres::bridge;

    let db = TestDb::new().await;
    let mut p = partner();
    p.rate_per_second = None;
    partners::upsert(&**db.client().await, &p).await.unwrap();
    let id = p.partner_id.clone();
    let t0: chrono::DateTime<chrono::Utc> = "2026-11-28T10:00:00Z".parse().unwrap();
    let horizon = chrono::TimeDelta::seconds(20);

    let reservations = (0..8).map(|_| {
        let pool = db.pool.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut client = pool.get().await.unwrap();
            let mut grants = Vec::new();
            for _ in 0..5 {
                grants.push(
                    bridge::reserve_send_slots(
                        &mut client,
                        &id,
                        None,
                        bridge::SlotRequest {
                            want: 4,
                            now: t0,
                            rate: bridge::PaceRate::Learned { initial: 400.0 },
                            horizon,
                        },
                        &[],
                    )
                    .await
                    .unwrap(),
                );
            }
            grants
        })
    });
    let mut slots: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
    for task in reservations {
        for g in task.await.unwrap() {
            let g: SlotGrant = g;
            assert_eq!((g.count, g.interval), (4, chrono::TimeDelta::microseconds(2500)));
            slots.extend((0..g.count).map(|i| g.slot(i)));
        }
    }
    slots.sort();
    let expected: Vec<_> = (0..160).map(|i| t0 + chrono::TimeDelta::microseconds(2500 * i)).collect();
    assert_eq!(slots, expected, "160 distinct slots 2.5 ms apart: no two bridges share one");

    // Sending at 400/s, 180 accepted in the current second, then a 429 with Retry-After 1 s.
    let now = t0 + chrono::TimeDelta::milliseconds(900);
    let until = now + chrono::TimeDelta::seconds(1);
    let mut client = db.client().await;
    bridge::record_throttle(&mut client, &id, now, until, &[(t0 + chrono::TimeDelta::milliseconds(500), 180)])
        .await
        .unwrap();
    let pace = bridge::send_pace(&**client, &id).await.unwrap().unwrap();
    assert!(pace.learned);
    assert!((pace.rate.unwrap() - 180.0 * clickpacer::delivery::pace::BACKOFF_MARGIN).abs() < 1e-9, "{pace:?}");
    let request = bridge::SlotRequest { want: 1, now, rate: bridge::PaceRate::Learned { initial: 400.0 }, horizon };
    let g = bridge::reserve_send_slots(&mut client, &id, None, request, &[]).await.unwrap();
    assert_eq!(g.first, until, "no slot before the Retry-After instant");
    let paused: Option<chrono::DateTime<chrono::Utc>> = client
        .query_one("SELECT retry_after_until FROM partner_health WHERE partner_id = $1", &[&id.as_str()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(paused, Some(until), "the pacer and the other bridges see the pause");

    // A second 429 from a request already in flight extends the pause but does not cut the rate again.
    bridge::record_throttle(&mut client, &id, now, until + chrono::TimeDelta::seconds(1), &[]).await.unwrap();
    let again = bridge::send_pace(&**client, &id).await.unwrap().unwrap();
    assert_eq!(again.rate, pace.rate);
}

#[tokio::test]
async fn the_reconciliation_tells_justified_pending_clicks_from_stranded_ones() {
    let db = TestDb::new().await;
    seed(&db).await;
    let client = db.client().await;
    client.execute("SELECT ensure_click_partition(now())", &[]).await.unwrap();
    let upload: i64 = client
        .query_one(
            "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('b', 'incoming/k', 'v') RETURNING upload_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // One batch of two clicks per situation.
    let situations = [
        ("pending", "due_at = now() + interval '1 hour'"), // due later
        ("pending", "due_at = now() + interval '5 hours', defer_reason = 'daily_cap'"), // deferred by a rule
        ("claimed", "due_at = now(), lease_expires_at = now() + interval '1 minute'"), // claimed, live lease
        ("queued", "due_at = now(), lease_expires_at = now() + interval '1 hour'"), // on the queue, live lease
        ("queued", "due_at = now() - interval '3 hours', lease_expires_at = now() - interval '2 hours'"), // lost
        ("pending", "due_at = now() - interval '2 hours'"), // nobody came
        ("pending", "due_at = now() - interval '2 hours', defer_reason = 'paused'"), // rule relaxed long ago
    ];
    for (seq, (state, set)) in situations.iter().enumerate() {
        let batch: i64 = client
            .query_one(
                "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
                 VALUES ('spring-sale', 'acme', $1, $2, 2, now()) RETURNING batch_id",
                &[&upload, &(seq as i32)],
            )
            .await
            .unwrap()
            .get(0);
        let lease = if *state == "pending" { ", lease_expires_at = NULL" } else { "" };
        client
            .execute(&format!("UPDATE batches SET state = '{state}', {set}{lease} WHERE batch_id = $1"), &[&batch])
            .await
            .unwrap();
        client
            .execute(
                "WITH ids AS (
                     INSERT INTO click_ids (campaign_id, click_id, ingested_at)
                     SELECT 'spring-sale', 'c' || $1::bigint || '-' || g, now() FROM generate_series(1, 2) g
                     RETURNING click_id, ingested_at)
                 INSERT INTO clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, attributes,
                                     ingested_at)
                 SELECT 'spring-sale', click_id, $2, $1::bigint * 10 + row_number() OVER (), $1, now(), '{}', ingested_at
                 FROM ids",
                &[&batch, &upload],
            )
            .await
            .unwrap();
    }
    let campaigns = postgres::reports::campaigns(&**client).await.unwrap();
    let fates = &campaigns[0].fates;
    assert_eq!((fates.accepted, fates.pending), (14, 14));
    assert_eq!((fates.due, fates.deferred, fates.in_flight, fates.stranded), (2, 2, 4, 6), "{fates:?}");
    assert!(!fates.holds(), "stranded clicks break the reconciliation");
    let uploads = postgres::reports::uploads(&**client).await.unwrap();
    assert_eq!(uploads[0].fates.stranded, 6);
}

/// Two bridges load a partner's health at the same moment: one sees a throttle, the other deliveries. Whichever
/// records last, the cut holds (the row is changed by arithmetic, not overwritten with a value computed from
/// what each loaded).
#[tokio::test]
async fn concurrent_health_updates_keep_every_cut() {
    use clickpacer::delivery::{ObservedHealth, Outcome};
    use clickpacer::postgres::bridge::{partner_health, record_health};
    let db = TestDb::new().await;
    seed(&db).await;
    let client = db.client().await;
    let id = partner().partner_id;
    let now = chrono::Utc::now();
    let loaded = partner_health(&**client, &id, now).await.unwrap();
    assert_eq!(loaded.allowance, 1.0);

    let mut throttled = ObservedHealth::new(loaded.clone());
    let retry = Outcome::Retry { after: None, throttled: true, ambiguous: false, reason: "429".into() };
    throttled.observe(&retry, now);
    let mut delivering = ObservedHealth::new(loaded);
    for _ in 0..10 {
        delivering.observe(&Outcome::Delivered, now);
    }
    record_health(&**client, &id, &throttled).await.unwrap();
    record_health(&**client, &id, &delivering).await.unwrap();

    let stored = partner_health(&**client, &id, now).await.unwrap();
    assert!(stored.allowance < 0.6, "the throttle's cut was erased: allowance {}", stored.allowance);
    assert!(stored.retry_after_until.is_some(), "the pause holds");
}
