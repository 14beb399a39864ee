//! The AWS adapters against the local endpoint, through the real SDK.

use clickpacer::aws::dynamodb::PutOutcome;
use clickpacer::aws::sqs::OutgoingMessage;
use clickpacer::domain::events::{BatchEvent, ClickEvent, ClickEventKind, LogEntries};
use clickpacer::domain::{CampaignId, ClickId, PartnerId};
use clickpacer::testing::TestAws;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn s3_put_then_streamed_get() {
    let aws = TestAws::new().await;
    let (objects, bucket) = aws.bucket().await;
    let body = "click_id,campaign_id\nc1,spring\n".repeat(1000);
    objects.put(&bucket, "incoming/spring/clicks 1.csv", body.clone().into_bytes(), "text/csv").await.unwrap();

    let (info, mut stream) = objects.open(&bucket, "incoming/spring/clicks 1.csv").await.unwrap();
    assert_eq!(info.size, Some(body.len() as i64));
    assert!(!info.version.is_empty(), "an ETag or version id identifies the bytes");
    let mut read = String::new();
    stream.read_to_string(&mut read).await.unwrap();
    assert_eq!(read, body);

    let missing = objects.open(&bucket, "incoming/none.csv").await.err().expect("missing object");
    assert!(missing.to_string().contains("NoSuchKey"), "{missing}");
}

#[tokio::test]
async fn sqs_send_receive_delete_and_dead_letter() {
    let aws = TestAws::new().await;
    let (queue, dead) = aws.queue_with_dead_letter(1, 2).await;
    let messages: Vec<_> = (0..10)
        .map(|i| OutgoingMessage { id: format!("m{i}"), body: format!("{{\"batch_id\":{i}}}"), delay_seconds: 0 })
        .collect();
    assert!(queue.send_batch(&messages).await.unwrap().is_empty());
    assert!(queue.send_batch(&[]).await.is_err(), "an empty batch is refused before the call");

    let mut bodies = Vec::new();
    let mut first = true;
    while bodies.len() < 10 {
        let received = queue.receive(10, 1).await.unwrap();
        assert!(!received.is_empty(), "all ten messages arrive");
        let mut handles = Vec::new();
        for m in &received {
            bodies.push(m.body.clone());
            if m.body == "{\"batch_id\":0}" {
                continue;
            }
            // One message deleted alone, the others together.
            if std::mem::take(&mut first) {
                queue.delete(&m.receipt_handle).await.unwrap();
            } else {
                handles.push(m.receipt_handle.as_str());
            }
        }
        if !handles.is_empty() {
            assert_eq!(queue.delete_batch(&handles).await.unwrap(), []);
        }
    }
    assert!(queue.delete_batch(&[]).await.is_err(), "an empty batch is refused before the call");
    let failed = queue.delete_batch(&["not-a-receipt-handle"]).await.unwrap();
    assert_eq!(failed.len(), 1, "a bad handle is a failed entry, not an error of the call: {failed:?}");
    assert_eq!(failed[0].id, "0");
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 10);

    // The one message never deleted is received again after its visibility timeout, then dead-lettered.
    let mut moved = Vec::new();
    for _ in 0..20 {
        let _ = queue.receive(10, 1).await.unwrap();
        moved = dead.receive(10, 0).await.unwrap();
        if !moved.is_empty() {
            break;
        }
    }
    assert_eq!(moved.len(), 1, "redriven after max receives");
    assert_eq!(moved[0].body, "{\"batch_id\":0}");
}

#[tokio::test]
async fn dynamodb_conditional_put_and_query_by_each_index() {
    let aws = TestAws::new().await;
    let log = aws.events_table().await;
    let event = |click: &str, kind, minute: u32| ClickEvent {
        campaign_id: CampaignId::parse("spring").unwrap(),
        partner_id: PartnerId::parse("acme").unwrap(),
        click_id: ClickId::parse(click).unwrap(),
        batch_id: 1,
        kind,
        attempt: 1,
        at: format!("2026-11-28T10:{minute:02}:00Z").parse().unwrap(),
        detail: None,
    };
    let delivered = event("c1", ClickEventKind::Delivered, 1);
    assert_eq!(log.put(&delivered).await.unwrap(), PutOutcome::Written);
    assert_eq!(log.put(&delivered).await.unwrap(), PutOutcome::AlreadyLogged);
    assert_eq!(log.put(&event("c2", ClickEventKind::Dead, 2)).await.unwrap(), PutOutcome::Written);
    assert_eq!(log.put(&event("c3", ClickEventKind::Released, 0)).await.unwrap(), PutOutcome::Written);

    let clicks = |items: Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>| {
        items.iter().map(|i| i["click_id"].as_s().unwrap().clone()).collect::<Vec<_>>()
    };
    assert_eq!(clicks(log.campaign_hour("spring", "2026-11-28T10").await.unwrap()), ["c3", "c1", "c2"]);
    assert_eq!(clicks(log.partner_hour("acme", "2026-11-28T10").await.unwrap()), ["c3", "c1", "c2"]);
    assert_eq!(clicks(log.failures_on("2026-11-28").await.unwrap()), ["c2"], "sparse: only failures");
    assert!(log.campaign_hour("spring", "2026-11-28T11").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_event_is_written_in_parts_and_found_for_each_of_its_clicks() {
    let aws = TestAws::new().await;
    let log = aws.events_table().await;
    let clicks: Vec<ClickId> = (0..2_100).map(|i| ClickId::parse(format!("k{i}")).unwrap()).collect();
    let at = |minute: u32| format!("2026-11-28T10:{minute:02}:00Z").parse().unwrap();
    let together = |kind, minute, clicks: Vec<ClickId>| BatchEvent {
        campaign_id: CampaignId::parse("spring").unwrap(),
        partner_id: PartnerId::parse("acme").unwrap(),
        batch_id: 9,
        kind,
        at: at(minute),
        clicks,
    };
    let dead = ClickEvent {
        campaign_id: CampaignId::parse("spring").unwrap(),
        partner_id: PartnerId::parse("acme").unwrap(),
        click_id: ClickId::parse("k2050").unwrap(),
        batch_id: 9,
        kind: ClickEventKind::Dead,
        attempt: 3,
        at: at(5),
        detail: Some("HTTP 400".into()),
    };
    let entries = LogEntries {
        batches: vec![
            together(ClickEventKind::Released, 1, clicks.clone()),
            together(ClickEventKind::Delivered, 4, clicks[..2_000].to_vec()),
        ],
        clicks: vec![dead],
    };
    assert_eq!(entries.items(), 6);
    log.put_batch(&entries).await.unwrap();
    log.put_batch(&entries).await.unwrap();

    let hour = log.campaign_hour("spring", "2026-11-28T10").await.unwrap();
    assert_eq!(hour.len(), 6, "a retried write leaves one item per part");
    let story = |click: &str| {
        let log = log.clone();
        let click = click.to_owned();
        async move {
            let events = log.click_events("spring", &click, 9, &["2026-11-28".into()]).await.unwrap();
            events.into_iter().map(|e| (e.event, e.click_id.unwrap_or_default())).collect::<Vec<_>>()
        }
    };
    let named = |events: &[&str], click: &str| -> Vec<(String, String)> {
        events.iter().map(|e| (e.to_string(), click.to_string())).collect()
    };
    assert_eq!(story("k1999").await, named(&["released", "delivered"], "k1999"), "found in the second part");
    assert_eq!(story("k2050").await, named(&["released", "dead"], "k2050"), "its own item for its death");
    assert!(story("k9999").await.is_empty());
}
