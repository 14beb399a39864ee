//! End to end on one machine: a click file put into the local bucket goes through the slicer, the pacer and
//! the bridge to partner endpoints, the same path the demo takes; the reconciliation must hold at the end.

use std::time::Duration;

use clickpacer::aws::sqs::OutgoingMessage;
use clickpacer::domain::{Campaign, CampaignId, Partner, PartnerId};
use clickpacer::postgres::{campaigns, partners};
use clickpacer::testing::{TestAws, TestDb, unique_suffix};
use local::{Names, Pipeline, Timing, render_reconciliation, s3_event_json};
use partner_sim::Behaviour;

#[tokio::test]
async fn a_file_with_a_bad_row_a_duplicate_event_and_a_throttling_partner_reconciles() {
    clickpacer::telemetry::init();
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let names = Names::with_prefix(&format!("e2e-{}", unique_suffix()));
    let timing =
        Timing { pacer_every: Duration::from_secs(1), visibility: Duration::from_secs(5), ..Timing::default() };
    let pipeline = Pipeline::start(&aws.sdk, &db.config, names.clone(), timing).await.unwrap();

    let sim = partner_sim::spawn(partner_sim::Config::default()).await.unwrap();
    sim.sim.set_behaviour("tight", Behaviour { rate_limit: Some(8), ..Behaviour::default() }).unwrap();
    {
        let client = db.client().await;
        let mut partner =
            Partner::get(PartnerId::parse("tight").unwrap(), format!("{}/c?id={{click_id}}", sim.partner_url("tight")));
        partner.retry_base_ms = 200;
        partner.retry_max_ms = 1000;
        partner.max_concurrency = 4;
        partners::upsert(&**client, &partner).await.unwrap();
        let mut campaign = Campaign::unlimited(CampaignId::parse("launch").unwrap(), partner.partner_id.clone());
        campaign.batch_size = 5;
        campaigns::upsert(&**client, &campaign).await.unwrap();
    }

    let mut body = String::from("click_id,clicked_at,ip\n");
    for i in 0..40 {
        body.push_str(&format!("c{i},2026-11-28T10:{:02}:00Z,10.0.0.{}\n", i % 60, i + 1));
    }
    body.push_str("c-bad,not a time,10.0.0.99\n");
    let key = "incoming/launch/Launch Day clicks.csv";
    pipeline.objects.put(&names.bucket, key, body.into_bytes(), "text/csv").await.unwrap();
    // The same notification a second time, as S3 may send it.
    let (info, _) = pipeline.objects.open(&names.bucket, key).await.unwrap();
    let again = s3_event_json(&names.bucket, key, &info.version).to_string();
    pipeline
        .upload_events
        .send_batch(&[OutgoingMessage { id: "dup".into(), body: again, delay_seconds: 0 }])
        .await
        .unwrap();

    let drained = pipeline.run_until_drained(Duration::from_secs(120), |_| {}).await.unwrap();
    assert!(drained, "the pipeline drains");
    let (uploads, campaigns) = pipeline.reconciliation().await.unwrap();
    let (text, holds) = render_reconciliation(&uploads, &campaigns);
    assert!(holds, "{text}");
    assert_eq!(uploads.len(), 1, "one upload for the duplicate event: {text}");
    let upload = &uploads[0];
    assert_eq!((upload.rows, upload.accepted_rows, upload.rejected_rows, upload.duplicate_rows), (41, 40, 1, 0));
    assert_eq!(upload.rejects.len(), 1);
    assert_eq!(campaigns[0].fates.delivered, 40, "{text}");

    let report = sim.sim.report();
    assert_eq!(report.accepted, 40);
    assert_eq!(report.duplicate_accepted_keys, 0, "no click delivered twice");
    assert!(report.max_requests_in_one_second <= 8 + report.throttled, "{report:?}");
}
