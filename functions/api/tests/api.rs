//! The management API's router against a real PostgreSQL, called as the Lambda adapter and the local runner call
//! it: an HTTP request in, an HTTP response out.

use axum::body::Body;
use axum::http::{Request, header};
use clickpacer::domain::{Campaign, CampaignId, Partner, PartnerId};
use clickpacer::postgres::{campaigns, partners};
use clickpacer::testing::{TestAws, TestDb};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug)]
struct Reply {
    status: u16,
    etag: Option<String>,
    content_type: String,
    body: Value,
}

fn transport(allow_private: bool) -> bridge::HttpTransport {
    bridge::HttpTransport::new(allow_private).unwrap()
}

/// Who a test request comes from.
enum Identity<'a> {
    /// The local runner's user, allowed everything.
    LocalAdmin,
    /// Nobody: no verified identity.
    Anonymous,
    /// A caller through API Gateway: the claims its JWT authorizer passes on.
    Claims(&'a [(&'a str, &'a str)]),
}

async fn send(db: &TestDb, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Reply {
    send_as(db, Identity::LocalAdmin, method, path, headers, body).await
}

async fn send_as(
    db: &TestDb,
    identity: Identity<'_>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match identity {
        Identity::LocalAdmin => request = request.extension(api::auth::Caller::local_admin()),
        Identity::Anonymous => {}
        Identity::Claims(claims) => {
            let context: lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext =
                serde_json::from_value(json!({
                    "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1",
                             "userAgent": "test"},
                    "authorizer": {"jwt": {
                    "claims": claims.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "scopes": null}}}))
                .unwrap();
            request = request.extension(lambda_http::request::RequestContext::ApiGatewayV2(context));
        }
    }
    let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
    let objects = TestAws::new().await.objects();
    let state = api::AppState {
        pool: db.pool.clone(),
        objects,
        upload_bucket: "clickpacer-test-uploads".into(),
        queues: None,
        events: None,
        transport: transport(false),
        allow_private_partners: false,
    };
    let response = api::router(state).oneshot(request.body(body).unwrap()).await.unwrap();
    let get = |name| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (etag, content_type) = (get(header::ETAG), get(header::CONTENT_TYPE).unwrap_or_default());
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    Reply { status, etag, content_type, body }
}

async fn get(db: &TestDb, path: &str) -> Reply {
    send(db, "GET", path, &[], None).await
}

async fn post(db: &TestDb, path: &str, body: Value) -> Reply {
    send(db, "POST", path, &[], Some(body)).await
}

async fn seed_partner(db: &TestDb, id: &str, enabled: bool) {
    let mut p = Partner::get(PartnerId::parse(id).unwrap(), "https://partner.example/c?id={click_id}");
    p.enabled = enabled;
    p.signing_secret = Some("super-secret-value-123".into());
    p.headers = vec![("Authorization".into(), "Bearer partner-token-456".into())];
    partners::upsert(&**db.client().await, &p).await.unwrap();
}

fn spring() -> Value {
    json!({"campaign_id": "spring", "name": "Spring sale", "partner_id": "acme", "time_zone": "America/New_York",
        "pacing_mode": "even", "daily_cap": 1000})
}

#[tokio::test]
async fn read_views_answer_with_json_and_keep_secrets() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    campaigns::upsert(
        &**db.client().await,
        &Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap()),
    )
    .await
    .unwrap();
    let health = get(&db, "/health").await.body;
    assert_eq!(
        (&health["status"], &health["events_waiting"], &health["alerts"]),
        (&json!("ok"), &json!(0), &json!([]))
    );
    assert_eq!(health["partners"][0]["partner_id"], "acme");
    let r = get(&db, "/partners").await;
    assert_eq!((r.status, &r.body["partners"][0]["partner_id"]), (200, &json!("acme")));
    assert!(!r.body.to_string().contains("super-secret"), "signing secrets never leave: {}", r.body);
    assert!(!r.body.to_string().contains("partner-token"), "header values (credentials) never leave: {}", r.body);
    assert_eq!(r.body["partners"][0]["headers"], json!([{"name": "Authorization", "value_set": true}]));
    let r = get(&db, "/campaigns/spring/pacing").await;
    assert_eq!((r.status, &r.body["campaign"]["campaign_id"]), (200, &json!("spring")));
    let r = get(&db, "/reconciliation").await;
    assert_eq!((r.status, &r.body["holds"]), (200, &json!(true)));

    assert_eq!(get(&db, "/campaigns/ghost/pacing").await.status, 404);
    assert_eq!(get(&db, "/campaigns/bad%20id/pacing").await.status, 400);
    let r = get(&db, "/nope").await;
    assert_eq!((r.status, r.content_type.as_str()), (404, "application/problem+json"));
    assert_eq!(r.body["detail"], "no route /nope");
    let r = send(&db, "DELETE", "/campaigns", &[], None).await;
    assert_eq!((r.status, r.content_type.as_str()), (405, "application/problem+json"));
}

#[tokio::test]
async fn a_campaign_is_created_read_and_listed() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let r = post(&db, "/campaigns", spring()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.etag.as_deref(), Some("\"1\""));
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["catch_up"], "spread");
    assert_eq!(r.body["time_zone"], "America/New_York");

    let read = get(&db, "/campaigns/spring").await;
    assert_eq!((read.status, read.etag.as_deref()), (200, Some("\"1\"")));
    assert_eq!(read.body, r.body);
    let stored = campaigns::get(&**db.client().await, &CampaignId::parse("spring").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.daily_cap, Some(1000));

    let again = post(&db, "/campaigns", spring()).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["detail"], "campaign \"spring\" exists already");
    assert_eq!(get(&db, "/campaigns/ghost").await.status, 404);
}

#[tokio::test]
async fn invalid_campaigns_are_answered_field_by_field_and_nothing_is_stored() {
    let db = TestDb::new().await;
    seed_partner(&db, "off", false).await;
    let mut body = spring();
    body["time_zone"] = json!("Mars/Olympus");
    body["partner_id"] = json!("ghost");
    body["pacing_mode"] = json!("hourly_curve");
    body["hourly_weights"] = json!([1, 1, 1]);
    let r = post(&db, "/campaigns", body).await;
    assert_eq!((r.status, r.content_type.as_str()), (422, "application/problem+json"));
    let fields: Vec<&str> = r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["time_zone", "hourly_weights", "partner_id"], "{}", r.body);
    assert_eq!(r.body["errors"][2]["message"], "no partner \"ghost\"");

    let mut body = spring();
    body["partner_id"] = json!("off");
    let r = post(&db, "/campaigns", body).await;
    assert_eq!(r.body["errors"], json!([{"field": "partner_id", "message": "partner \"off\" is disabled"}]));

    let mut body = spring();
    body["daily_cap"] = json!("lots");
    let r = post(&db, "/campaigns", body).await;
    assert_eq!((r.status, &r.body["errors"][0]["field"]), (422, &json!("daily_cap")));
    let r = send(&db, "POST", "/campaigns", &[], None).await;
    assert_eq!(r.status, 400);
    assert!(r.body["detail"].as_str().unwrap().contains("not valid JSON"), "{}", r.body);
    assert!(get(&db, "/campaigns").await.body["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_campaigns_ingest_mapping_is_validated_stored_and_returned() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let mapping = json!({"columns": {"clicked_at": "event_time"}, "derive_click_id_from": ["ip", "app"],
                         "timestamp_zone": "campaign", "csv_delimiter": "semicolon"});
    let mut body = spring();
    body["ingest"] = mapping.clone();
    let r = post(&db, "/campaigns", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["ingest"], mapping);
    let stored = campaigns::get(&**db.client().await, &CampaignId::parse("spring").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.ingest.derive_click_id_from, ["ip", "app"]);
    assert!(get(&db, "/campaigns/spring").await.body.get("ingest").is_some());

    let mut body = spring();
    body["campaign_id"] = json!("summer");
    body["ingest"] = json!({"columns": {"click_id": " ", "ip": "src"}, "derive_click_id_from": ["ip", "IP"]});
    let r = post(&db, "/campaigns", body).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        r.body["errors"],
        json!([{"field": "ingest.columns.click_id", "message": "must name a column"},
               {"field": "ingest.derive_click_id_from[1]", "message": "\"IP\" is listed twice"}])
    );
    let mut body = spring();
    body["campaign_id"] = json!("summer");
    body["ingest"] = json!({"timestamp_zone": "Mars/Base"});
    let r = post(&db, "/campaigns", body).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.to_string().contains("Mars/Base"), "{}", r.body);
}

#[tokio::test]
async fn an_update_names_the_version_it_was_made_from() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    post(&db, "/campaigns", spring()).await;
    let mut edit = spring();
    edit["daily_cap"] = json!(2000);

    let r = send(&db, "PUT", "/campaigns/spring", &[], Some(edit.clone())).await;
    assert_eq!(r.status, 428, "a change without If-Match is refused");
    let r = send(&db, "PUT", "/campaigns/spring", &[("if-match", "\"1\"")], Some(edit.clone())).await;
    assert_eq!((r.status, r.etag.as_deref(), &r.body["daily_cap"]), (200, Some("\"2\""), &json!(2000)));

    // A second editor still holding version 1 is told the campaign moved on, and changes nothing.
    edit["daily_cap"] = json!(5);
    let r = send(&db, "PUT", "/campaigns/spring", &[("if-match", "\"1\"")], Some(edit.clone())).await;
    assert_eq!(r.status, 412);
    assert!(r.body["detail"].as_str().unwrap().contains("version 2"), "{}", r.body);
    assert_eq!(get(&db, "/campaigns/spring").await.body["daily_cap"], 2000);

    let r = send(&db, "PUT", "/campaigns/spring", &[("if-match", "yesterday")], Some(edit.clone())).await;
    assert_eq!(r.status, 400);
    edit["campaign_id"] = json!("autumn");
    let r = send(&db, "PUT", "/campaigns/spring", &[("if-match", "\"2\"")], Some(edit)).await;
    assert_eq!((r.status, &r.body["errors"][0]["field"]), (422, &json!("campaign_id")));
}

#[tokio::test]
async fn pause_resume_and_archive_move_the_status_and_the_version() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    post(&db, "/campaigns", spring()).await;
    let r = post(&db, "/campaigns/spring/pause", Value::Null).await;
    assert_eq!((r.status, &r.body["status"], &r.body["version"]), (200, &json!("paused"), &json!(2)));
    let r = send(&db, "POST", "/campaigns/spring/resume", &[("if-match", "\"1\"")], None).await;
    assert_eq!(r.status, 412, "a stale If-Match is refused on actions too");
    let r = send(&db, "POST", "/campaigns/spring/resume", &[("if-match", "\"2\"")], None).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("active")));
    let r = post(&db, "/campaigns/spring/archive", Value::Null).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("archived")));
    let r = post(&db, "/campaigns/spring/resume", Value::Null).await;
    assert_eq!(r.status, 409);
    assert_eq!(post(&db, "/campaigns/ghost/pause", Value::Null).await.status, 404);
}

#[tokio::test]
async fn lists_filter_sort_and_page_by_keyset() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    seed_partner(&db, "beta", true).await;
    for (id, name, partner) in [
        ("c1", "Delta winter", "acme"),
        ("c2", "Alpha", "beta"),
        ("c3", "Charlie WINTER", "acme"),
        ("c4", "Bravo", "acme"),
    ] {
        let body = json!({"campaign_id": id, "name": name, "partner_id": partner});
        assert_eq!(post(&db, "/campaigns", body).await.status, 201);
    }
    post(&db, "/campaigns/c4/pause", Value::Null).await;
    let ids = |r: &Reply| -> Vec<String> {
        r.body["items"].as_array().unwrap().iter().map(|c| c["campaign_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&get(&db, "/campaigns?partner_id=acme&status=active").await), ["c1", "c3"]);
    assert_eq!(ids(&get(&db, "/campaigns?q=Winter").await), ["c1", "c3"]);
    assert_eq!(ids(&get(&db, "/campaigns?sort=name&order=desc").await), ["c1", "c3", "c4", "c2"]);

    let first = get(&db, "/campaigns?sort=name&limit=3").await;
    assert_eq!(ids(&first), ["c2", "c4", "c3"]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = get(&db, &format!("/campaigns?cursor={cursor}&limit=3")).await;
    assert_eq!(ids(&second), ["c1"]);
    assert!(second.body.get("next_cursor").is_none());

    for bad in ["/campaigns?sort=budget", "/campaigns?limit=0", "/campaigns?cursor=zz", "/campaigns?colour=red"] {
        let r = get(&db, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}

#[tokio::test]
async fn the_openapi_document_is_served_and_kept_in_docs() {
    let db = TestDb::new().await;
    let r = get(&db, "/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert!(r.body["paths"]["/campaigns/{campaign_id}"]["put"].is_object());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let pretty = serde_json::to_string_pretty(&r.body).unwrap() + "\n";
    if std::env::var_os("CLICKPACER_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &pretty).unwrap();
    }
    let kept = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        kept == pretty,
        "docs/openapi.json is out of date: run `CLICKPACER_WRITE_OPENAPI=1 cargo nextest run -p api openapi`"
    );
}

/// The partner `acme` and its unlimited, active campaign `spring`; and the slicer on a bucket of its own.
async fn with_spring(db: &TestDb) -> (slicer::Slicer, String) {
    seed_partner(db, "acme", true).await;
    let spring = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
    campaigns::upsert(&**db.client().await, &spring).await.unwrap();
    let (objects, bucket) = TestAws::new().await.bucket().await;
    (slicer::Slicer { pool: db.pool.clone(), objects, settings: slicer::SlicerSettings::default() }, bucket)
}

/// [`with_spring`], and two uploads sliced into it: `a.csv` (a1-a3) and then `b.csv` (b1, b2); their ids.
async fn two_uploads(db: &TestDb) -> (i64, i64) {
    let (slicer, bucket) = with_spring(db).await;
    slice(&slicer, &bucket, "incoming/spring/a.csv", "click_id,ts\na1,1764324000\na2,1764324000\na3,1764324000\n")
        .await;
    slice(&slicer, &bucket, "incoming/spring/b.csv", "click_id,ts\nb1,1764324000\nb2,1764324000\n").await;
    let uploads = get(db, "/uploads").await.body;
    (uploads["items"][1]["upload_id"].as_i64().unwrap(), uploads["items"][0]["upload_id"].as_i64().unwrap())
}

/// Has the slicer ingest `body` under `key`, as an S3 notification would.
async fn slice(slicer: &slicer::Slicer, bucket: &str, key: &str, body: &str) {
    slicer.objects.put(bucket, key, body.as_bytes().to_vec(), "text/csv").await.unwrap();
    let (info, _) = slicer.objects.open(bucket, key).await.unwrap();
    let event = serde_json::from_value(json!({"Records": [{
        "eventName": "ObjectCreated:Put", "eventTime": "2026-12-07T10:00:00Z",
        "userIdentity": {}, "requestParameters": {}, "responseElements": {},
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": body.len(), "eTag": info.version}}
    }]}))
    .unwrap();
    slicer::handle_event(slicer, event, &clickpacer::invocation::Unlimited).await.unwrap();
}

#[tokio::test]
async fn uploads_are_listed_newest_first_and_one_shows_its_reconciliation_and_rejects_report() {
    let db = TestDb::new().await;
    let (slicer, bucket) = with_spring(&db).await;
    let header = "click_id,clicked_at,ip\n";
    slice(
        &slicer,
        &bucket,
        "incoming/spring/a.csv",
        &format!("{header}a1,1764324000,\na2,soon,\na3,1764324000,\n,1764324000,\n"),
    )
    .await;
    slice(&slicer, &bucket, "incoming/spring/b.csv", &format!("{header}b1,1764324000,\n")).await;
    slice(&slicer, &bucket, "incoming/ghost/c.csv", &format!("{header}c1,1764324000,\nc2,1764324000,\n")).await;

    let all = get(&db, "/uploads").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let keys: Vec<&str> =
        all.body["items"].as_array().unwrap().iter().map(|u| u["object_key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["incoming/ghost/c.csv", "incoming/spring/b.csv", "incoming/spring/a.csv"], "newest first");
    let ghost = &all.body["items"][0];
    assert_eq!(ghost["status_detail"], "every row (2) was rejected: unknown campaign \"ghost\"");
    assert_eq!(ghost["reject_counts"], json!({"unknown_campaign": 2}));

    let first = get(&db, "/uploads?campaign_id=spring&limit=1").await;
    assert_eq!(first.body["items"][0]["object_key"], "incoming/spring/b.csv");
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = get(&db, &format!("/uploads?campaign_id=spring&limit=1&cursor={cursor}")).await;
    assert_eq!(second.body["items"][0]["object_key"], "incoming/spring/a.csv");
    assert!(second.body.get("next_cursor").is_none(), "{}", second.body);
    assert_eq!(
        get(&db, "/uploads?status=completed&campaign_id=ghost").await.body["items"].as_array().unwrap().len(),
        1
    );
    assert_eq!(get(&db, "/uploads?status=done").await.status, 400);
    assert_eq!(get(&db, "/uploads?cursor=-4").await.status, 400);

    let id = second.body["items"][0]["upload_id"].as_i64().unwrap();
    let detail = get(&db, &format!("/uploads/{id}")).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let body = &detail.body;
    assert_eq!(
        (body["rows"].as_i64(), body["accepted_rows"].as_i64(), body["rejected_rows"].as_i64()),
        (Some(4), Some(2), Some(2))
    );
    assert_eq!(body["reject_counts"], json!({"invalid_clicked_at": 1, "missing_click_id": 1}));
    assert_eq!(body["reconciliation"]["holds"], true);
    assert_eq!(
        (body["reconciliation"]["accepted"].as_i64(), body["reconciliation"]["pending"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(body["rejects"].as_array().unwrap().len(), 2);
    let url = body["rejects_report"]["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature="), "a presigned link: {url}");
    let report = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(report.starts_with("row,reason,field,raw"), "{report}");
    assert!(report.contains("missing click_id"), "{report}");

    let b = get(&db, "/uploads?campaign_id=spring&limit=1").await.body["items"][0]["upload_id"].as_i64().unwrap();
    assert!(get(&db, &format!("/uploads/{b}")).await.body.get("rejects_report").is_none(), "no rejects, no link");
    assert_eq!(get(&db, "/uploads/999999").await.status, 404);
    assert_eq!(get(&db, "/uploads/abc").await.status, 400);
}

#[tokio::test]
async fn pending_clicks_are_cancelled_after_a_preview_and_in_flight_batches_are_left_to_finish() {
    let db = TestDb::new().await;
    let (a, b) = two_uploads(&db).await;

    let preview = post(&db, &format!("/campaigns/spring/cancel-pending?upload_id={a}&preview=true"), Value::Null).await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(preview.body, json!({"batches": 1, "clicks": 3, "in_flight_batches": 0}));
    assert_eq!(
        get(&db, &format!("/uploads/{a}")).await.body["reconciliation"]["pending"],
        3,
        "a preview changes nothing"
    );

    let done = post(&db, &format!("/campaigns/spring/cancel-pending?upload_id={a}"), Value::Null).await;
    assert_eq!(done.body, json!({"batches": 1, "clicks": 3, "in_flight_batches": 0}));
    let reconciliation = &get(&db, &format!("/uploads/{a}")).await.body["reconciliation"];
    assert_eq!((reconciliation["cancelled"].as_i64(), reconciliation["pending"].as_i64()), (Some(3), Some(0)));
    assert_eq!(reconciliation["holds"], true);
    assert_eq!(get(&db, &format!("/uploads/{b}")).await.body["reconciliation"]["pending"], 2, "another upload's stay");

    // A pacer holds b's batch: it is left to finish, and the answer says so.
    db.client()
        .await
        .execute(
            "UPDATE batches SET state = 'claimed', lease_expires_at = now() + interval '1 minute', fence = fence + 1
             WHERE upload_id = $1",
            &[&b],
        )
        .await
        .unwrap();
    let rest = post(&db, "/campaigns/spring/cancel-pending", Value::Null).await;
    assert_eq!(rest.body, json!({"batches": 0, "clicks": 0, "in_flight_batches": 1}));
    assert_eq!(post(&db, "/campaigns/ghost/cancel-pending", Value::Null).await.status, 404);
    assert_eq!(post(&db, "/campaigns/spring/cancel-pending?upload_id=x", Value::Null).await.status, 400);
}

/// Finishes `upload_id`'s batch as the bridge would after its partner's answers: `(click, outcome, status, error)`.
async fn finish_batch(db: &TestDb, upload_id: i64, state: &str, results: &[(&str, &str, Option<i32>, &str)]) -> i64 {
    let client = db.client().await;
    let batch: i64 = client
        .query_one(
            "UPDATE batches SET state = $2, finished_at = now() WHERE upload_id = $1 RETURNING batch_id",
            &[&upload_id, &state],
        )
        .await
        .unwrap()
        .get(0);
    for (click, outcome, status, error) in results {
        let attempts = if *outcome == "delivered" { 1 } else { 8 };
        client
            .execute(
                "INSERT INTO delivery_results (batch_id, fence, campaign_id, click_id, partner_id, attempt, outcome,
                                               http_status, error)
                 VALUES ($1, 1, 'spring', $2, 'acme', $3, $4, $5, NULLIF($6, ''))",
                &[&batch, click, &attempts, outcome, status, error],
            )
            .await
            .unwrap();
    }
    batch
}

#[tokio::test]
async fn dead_letters_are_listed_grouped_and_replayed_after_a_count_without_resending_delivered_clicks() {
    let db = TestDb::new().await;
    let (a, b) = two_uploads(&db).await;
    let refused = "partner refused the click: 400 Bad Request";
    let batch_a = finish_batch(
        &db,
        a,
        "partially_failed",
        &[("a1", "delivered", Some(200), ""), ("a2", "dead", Some(400), refused), ("a3", "dead", None, "timed out")],
    )
    .await;
    let batch_b =
        finish_batch(&db, b, "dead", &[("b1", "dead", Some(400), refused), ("b2", "dead", Some(400), refused)]).await;

    let all = get(&db, "/dead-letters").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let ids: Vec<&str> =
        all.body["items"].as_array().unwrap().iter().map(|d| d["click_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["b2", "b1", "a3", "a2"], "dead clicks only, newest first");
    assert_eq!(all.body["items"][0]["http_status"], 400);
    let page = get(&db, "/dead-letters?campaign_id=spring&limit=3").await.body;
    let next =
        get(&db, &format!("/dead-letters?campaign_id=spring&limit=3&cursor={}", page["next_cursor"].as_str().unwrap()))
            .await;
    assert_eq!(next.body["items"][0]["click_id"], "a2");
    assert_eq!(get(&db, "/dead-letters?partner_id=other").await.body["items"], json!([]));

    let groups = get(&db, "/dead-letters/reasons?campaign_id=spring").await.body;
    assert_eq!(groups["groups"][0]["clicks"], 3);
    assert_eq!(groups["groups"][0]["reason"], refused);
    assert_eq!(groups["groups"][0]["batch_ids"], json!([batch_a, batch_b]));
    assert_eq!((groups["groups"][1]["clicks"].as_i64(), groups["groups"][1].get("http_status")), (Some(1), None));

    let body = json!({"campaign_id": "spring", "batch_ids": [batch_a], "preview": true});
    assert_eq!(post(&db, "/dead-letters/replay", body).await.body, json!({"batches": 1, "clicks": 2}));
    assert_eq!(get(&db, "/dead-letters").await.body["items"].as_array().unwrap().len(), 4, "a preview changes nothing");
    let body = json!({"campaign_id": "spring", "batch_ids": [batch_a], "reason": "partner fixed its parser"});
    assert_eq!(post(&db, "/dead-letters/replay", body.clone()).await.body, json!({"batches": 1, "clicks": 2}));
    assert_eq!(post(&db, "/dead-letters/replay", body).await.body, json!({"batches": 0, "clicks": 0}), "once");
    let left: Vec<String> = get(&db, "/dead-letters").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["click_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["b2", "b1"]);
    let row = db
        .client()
        .await
        .query_one("SELECT state, click_count - settled_clicks FROM batches WHERE batch_id = $1", &[&batch_a])
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("pending".to_owned(), 2), "a1 is not sent again");

    let r = post(&db, "/dead-letters/replay", json!({"campaign_id": "ghost", "batch_ids": [-1]})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let fields: Vec<&str> = r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["batch_ids[0]", "campaign_id"]);
}

fn acme() -> Value {
    json!({"partner_id": "acme", "name": "Acme", "endpoint_template": "https://track.acme.example/c?id={click_id}&s={attr.extra.segment}",
        "headers": [{"name": "Authorization", "value": "Bearer acme-token-1"}], "signing_secret": "0123456789abcdef-secret",
        "rate_per_second": 40})
}

#[tokio::test]
async fn partners_are_created_checked_when_saved_and_keep_their_secrets_write_only() {
    let db = TestDb::new().await;
    let r = post(&db, "/partners", acme()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.etag.as_deref(), Some("\"1\""));
    assert_eq!(r.body["headers"], json!([{"name": "Authorization", "value_set": true}]));
    assert_eq!(r.body["signing_secret_set"], true);
    assert!(!r.body.to_string().contains("acme-token") && !r.body.to_string().contains("-secret"), "{}", r.body);
    assert_eq!(get(&db, "/partners/acme").await.body, r.body);
    assert_eq!(get(&db, "/partners").await.body["partners"][0]["partner_id"], "acme");
    assert_eq!(post(&db, "/partners", acme()).await.status, 409);

    // Refused when saved: private and metadata addresses, templates that do not parse or render, bad headers.
    for (field, value, expected) in [
        ("endpoint_template", json!("http://127.0.0.1:8080/c?id={click_id}"), "loopback"),
        ("endpoint_template", json!("http://169.254.169.254/latest/meta-data/{click_id}"), "metadata"),
        ("endpoint_template", json!("http://10.1.2.3/c"), "private"),
        ("endpoint_template", json!("https://t.example/c?id={clickid}"), "unknown macro {clickid}"),
        ("headers[0]", json!([{"name": "Host", "value": "x"}]), "cannot be configured"),
    ] {
        let mut body = acme();
        body["partner_id"] = json!("other");
        if field == "headers[0]" {
            body["headers"] = value;
        } else {
            body[field] = value;
        }
        let r = post(&db, "/partners", body).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{}", r.body);
        assert!(r.body["errors"][0]["message"].as_str().unwrap().contains(expected), "{expected}: {}", r.body);
    }
    let mut json_partner = acme();
    json_partner["partner_id"] = json!("other");
    json_partner["delivery_format"] = json!("post_json");
    json_partner["body_template"] = json!("{\"id\": \"{click_id}\"");
    let r = post(&db, "/partners", json_partner).await;
    assert_eq!((r.status, &r.body["errors"][0]["field"]), (422, &json!("body_template")), "{}", r.body);
    assert_eq!(get(&db, "/partners").await.body["partners"].as_array().unwrap().len(), 1, "nothing else stored");

    // A replace names its version; left-out secrets and header values are kept, null removes the secret.
    let mut change = acme();
    change["name"] = json!("Acme Tracking");
    change["headers"] = json!([{"name": "Authorization"}, {"name": "X-Account", "value": "42"}]);
    change.as_object_mut().unwrap().remove("signing_secret");
    assert_eq!(send(&db, "PUT", "/partners/acme", &[], Some(change.clone())).await.status, 428);
    assert_eq!(send(&db, "PUT", "/partners/acme", &[("If-Match", "\"7\"")], Some(change.clone())).await.status, 412);
    let r = send(&db, "PUT", "/partners/acme", &[("If-Match", "\"1\"")], Some(change)).await;
    assert_eq!((r.status, r.etag.as_deref()), (200, Some("\"2\"")), "{}", r.body);
    let stored = partners::get(&**db.client().await, &PartnerId::parse("acme").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.name, "Acme Tracking");
    assert_eq!(
        stored.headers,
        [("Authorization".to_owned(), "Bearer acme-token-1".to_owned()), ("X-Account".to_owned(), "42".to_owned())]
    );
    assert_eq!(stored.signing_secret.as_deref(), Some("0123456789abcdef-secret"));
    let mut removed = acme();
    removed["signing_secret"] = Value::Null;
    let r = send(&db, "PUT", "/partners/acme", &[("If-Match", "\"2\"")], Some(removed)).await;
    assert_eq!(r.body["signing_secret_set"], false, "{}", r.body);

    let r = post(&db, "/partners/acme/disable", Value::Null).await;
    assert_eq!((r.status, &r.body["enabled"], &r.body["version"]), (200, &json!(false), &json!(4)));
    let mut campaign = spring();
    campaign["partner_id"] = json!("acme");
    assert_eq!(
        post(&db, "/campaigns", campaign.clone()).await.body["errors"][0]["message"],
        "partner \"acme\" is disabled"
    );
    assert_eq!(send(&db, "POST", "/partners/acme/enable", &[("If-Match", "\"3\"")], None).await.status, 412);
    assert_eq!(post(&db, "/partners/acme/enable", Value::Null).await.body["enabled"], true);
    assert_eq!(post(&db, "/campaigns", campaign).await.status, 201);
    assert_eq!(get(&db, "/partners/ghost").await.status, 404);
    assert_eq!(get(&db, "/partners/Bad%20Id").await.status, 400);
}

#[tokio::test]
async fn callers_need_a_verified_identity_and_changes_need_an_admin() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let r = send_as(&db, Identity::Anonymous, "GET", "/campaigns", &[], None).await;
    assert_eq!((r.status, r.content_type.as_str()), (401, "application/problem+json"));
    assert_eq!(send_as(&db, Identity::Anonymous, "POST", "/campaigns", &[], Some(spring())).await.status, 401);
    assert_eq!(send_as(&db, Identity::Anonymous, "GET", "/openapi.json", &[], None).await.status, 200, "public");

    let reader = Identity::Claims(&[("sub", "reader-1"), ("cognito:groups", "[readers]")]);
    assert_eq!(send_as(&db, reader, "GET", "/campaigns", &[], None).await.status, 200);
    let reader = Identity::Claims(&[("sub", "reader-1"), ("cognito:groups", "[readers]")]);
    let r = send_as(&db, reader, "POST", "/campaigns", &[], Some(spring())).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("admins"), "{}", r.body);
    assert!(get(&db, "/campaigns").await.body["items"].as_array().unwrap().is_empty(), "nothing was created");

    let admin = Identity::Claims(&[("sub", "admin-1"), ("cognito:groups", "[admins]")]);
    assert_eq!(send_as(&db, admin, "POST", "/campaigns", &[], Some(spring())).await.status, 201);
    let machine = Identity::Claims(&[("sub", "client-1"), ("scope", "clickpacer/write")]);
    assert_eq!(send_as(&db, machine, "POST", "/campaigns/spring/pause", &[], None).await.status, 200);
    let no_subject = Identity::Claims(&[("cognito:groups", "[admins]")]);
    assert_eq!(send_as(&db, no_subject, "GET", "/campaigns", &[], None).await.status, 401);
}

#[tokio::test]
async fn health_shows_queues_lag_stranded_work_stuck_uploads_and_paused_partners_with_alerts() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let spring = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
    campaigns::upsert(&**db.client().await, &spring).await.unwrap();
    let aws = TestAws::new().await;
    let (objects, bucket) = aws.bucket().await;
    let slicer =
        slicer::Slicer { pool: db.pool.clone(), objects: objects.clone(), settings: slicer::SlicerSettings::default() };
    slice(&slicer, &bucket, "incoming/spring/a.csv", "click_id,ts\na1,1764324000\na2,1764324000\n").await;
    let (click, dead_letter) = aws.queue_with_dead_letter(30, 5).await;
    let message = clickpacer::aws::sqs::OutgoingMessage { id: "m1".into(), body: "{}".into(), delay_seconds: 0 };
    dead_letter.send_batch(&[message]).await.unwrap();
    let client = db.client().await;
    // The slice's batch has waited ten minutes past its due time; an upload nobody reads; a partner's pause.
    client.execute("UPDATE batches SET due_at = now() - interval '10 minutes'", &[]).await.unwrap();
    client
        .execute(
            "INSERT INTO uploads (bucket, object_key, object_version, updated_at) VALUES ('b', 'incoming/spring/x.csv', 'v1', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO partner_health (partner_id, retry_after_until) VALUES ('acme', now() + interval '5 minutes')",
            &[],
        )
        .await
        .unwrap();
    drop(client);

    let state = api::AppState {
        pool: db.pool.clone(),
        objects,
        upload_bucket: "clickpacer-test-uploads".into(),
        queues: Some(api::Queues { click, dead_letter }),
        events: None,
        transport: transport(false),
        allow_private_partners: false,
    };
    let request =
        Request::builder().uri("/health").extension(api::auth::Caller::local_admin()).body(Body::empty()).unwrap();
    let response = api::router(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["status"], "attention", "{body}");
    assert!(body["pacer_lag_seconds"].as_f64().unwrap() >= 599.0, "{body}");
    assert_eq!((body["due_batches"].as_i64(), body["stranded_batches"].as_i64()), (Some(1), Some(1)));
    assert_eq!(body["stuck_uploads"], 1);
    assert_eq!(body["dead_letter_queue"]["visible"], 1);
    assert_eq!(body["click_queue"], json!({"visible": 0, "in_flight": 0, "delayed": 0}));
    assert_eq!(body["partners"][0]["open_batches"], 1);
    assert!(body["partners"][0]["paused_until"].is_string(), "{body}");
    let kinds: Vec<&str> = body["alerts"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["pacer_lag", "stranded_work", "stuck_uploads", "dead_letter_queue", "partner_paused"]);
}

#[tokio::test]
async fn each_campaign_says_whether_it_delivers_and_why_not() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let r = post(&db, "/campaigns", spring()).await;
    assert_eq!(r.body["delivery"], json!({"state": "idle", "reason": "idle: no clicks waiting"}));
    let (objects, bucket) = TestAws::new().await.bucket().await;
    let slicer = slicer::Slicer { pool: db.pool.clone(), objects, settings: slicer::SlicerSettings::default() };
    slice(&slicer, &bucket, "incoming/spring/a.csv", "click_id,ts\na1,1764324000\na2,1764324000\n").await;
    // The pacer found the day's cap reached and deferred the batch to the next local midnight.
    let midnight: chrono::DateTime<chrono::Utc> = db
        .client()
        .await
        .query_one(
            "UPDATE batches SET defer_reason = 'daily_cap',
                    due_at = (date_trunc('day', now() AT TIME ZONE 'America/New_York') + interval '1 day')
                             AT TIME ZONE 'America/New_York'
             RETURNING due_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let delivery = &get(&db, "/campaigns/spring").await.body["delivery"];
    assert_eq!(delivery["state"], "not_delivering");
    let reason = delivery["reason"].as_str().unwrap();
    assert!(reason.starts_with("not delivering: daily cap reached, resets"), "{reason}");
    assert!(reason.ends_with("00:00 America/New_York"), "{reason}");
    assert_eq!(delivery["until"], json!(midnight.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)));
    let listed = get(&db, "/campaigns").await.body;
    assert_eq!(listed["items"][0]["delivery"], *delivery);
    let paused = post(&db, "/campaigns/spring/pause", Value::Null).await.body;
    assert_eq!(paused["delivery"], json!({"state": "paused", "reason": "paused; 2 clicks wait"}));
}

#[tokio::test]
async fn every_change_is_in_the_audit_trail_with_who_before_and_after_and_no_secrets() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let admin = || Identity::Claims(&[("sub", "admin-7"), ("cognito:groups", "[admins]")]);
    assert_eq!(send_as(&db, admin(), "POST", "/campaigns", &[], Some(spring())).await.status, 201);
    let mut changed = spring();
    changed["daily_cap"] = json!(500);
    let r = send_as(&db, admin(), "PUT", "/campaigns/spring", &[("If-Match", "\"1\"")], Some(changed.clone())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stale = send_as(&db, admin(), "PUT", "/campaigns/spring", &[("If-Match", "\"1\"")], Some(changed)).await;
    assert_eq!(stale.status, 412);
    assert_eq!(send_as(&db, admin(), "POST", "/campaigns/spring/pause", &[], None).await.status, 200);

    let trail = get(&db, "/campaigns/spring/audit").await.body;
    let actions: Vec<&str> = trail["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["pause", "replace", "create"], "newest first; the stale replace changed nothing");
    assert_eq!(trail["items"][0]["actor"], "admin-7");
    assert_eq!(
        (&trail["items"][1]["before"]["daily_cap"], &trail["items"][1]["after"]["daily_cap"]),
        (&json!(1000), &json!(500))
    );
    assert_eq!(
        (&trail["items"][0]["before"]["status"], &trail["items"][0]["after"]["status"]),
        (&json!("active"), &json!("paused"))
    );
    assert!(trail["items"][2].get("before").is_none());
    let page = get(&db, "/campaigns/spring/audit?limit=2").await.body;
    let rest =
        get(&db, &format!("/campaigns/spring/audit?cursor={}", page["next_cursor"].as_str().unwrap())).await.body;
    assert_eq!(rest["items"][0]["action"], "create");

    assert_eq!(send_as(&db, admin(), "POST", "/partners", &[], Some(acme_two())).await.status, 201);
    let mut replaced = acme_two();
    replaced["name"] = json!("Acme Two Tracking");
    replaced.as_object_mut().unwrap().remove("signing_secret");
    let r = send_as(&db, admin(), "PUT", "/partners/acme-two", &[("If-Match", "\"1\"")], Some(replaced)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(send_as(&db, admin(), "POST", "/partners/acme-two/disable", &[], None).await.status, 200);
    let trail = get(&db, "/partners/acme-two/audit").await.body;
    let actions: Vec<&str> = trail["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["disable", "replace", "create"]);
    assert!(!trail.to_string().contains("acme-token") && !trail.to_string().contains("-secret"), "{trail}");
    assert_eq!(trail["items"][1]["after"]["name"], "Acme Two Tracking");
    assert_eq!(get(&db, "/partners/ghost/audit").await.status, 404);
}

fn acme_two() -> Value {
    let mut body = acme();
    body["partner_id"] = json!("acme-two");
    body
}

#[tokio::test]
async fn a_clicks_timeline_joins_its_row_its_attempts_and_the_event_log() {
    use chrono::DurationRound;
    use clickpacer::domain::events::{BatchEvent, ClickEvent, ClickEventKind, LogEntries};
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let spring = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
    campaigns::upsert(&**db.client().await, &spring).await.unwrap();
    let aws = TestAws::new().await;
    let (objects, bucket) = aws.bucket().await;
    let slicer =
        slicer::Slicer { pool: db.pool.clone(), objects: objects.clone(), settings: slicer::SlicerSettings::default() };
    slice(
        &slicer,
        &bucket,
        "incoming/spring/a.csv",
        "click_id,ts,ip,tier\na1,1764324000,10.0.0.1,gold\na2,1764324000,,\n",
    )
    .await;
    let uploads = get(&db, "/uploads").await.body;
    let batch = finish_batch(
        &db,
        uploads["items"][0]["upload_id"].as_i64().unwrap(),
        "partially_failed",
        &[("a1", "failed", Some(503), "partner answered 503"), ("a1", "delivered", Some(200), "")],
    )
    .await;
    let log = aws.events_table().await;
    // Within the current hour (and day), already past.
    let now = chrono::Utc::now().duration_trunc(chrono::Duration::hours(1)).unwrap();
    let event = |kind, attempt, seconds| ClickEvent {
        campaign_id: spring.campaign_id.clone(),
        partner_id: spring.partner_id.clone(),
        click_id: clickpacer::domain::ClickId::parse("a1").unwrap(),
        batch_id: batch,
        kind,
        attempt,
        at: now + chrono::Duration::seconds(seconds),
        detail: (kind == ClickEventKind::Failed).then(|| "503".to_owned()),
    };
    let together = |kind, seconds, clicks: &[&str]| BatchEvent {
        campaign_id: spring.campaign_id.clone(),
        partner_id: spring.partner_id.clone(),
        batch_id: batch,
        kind,
        at: now + chrono::Duration::seconds(seconds),
        clicks: clicks.iter().map(|c| clickpacer::domain::ClickId::parse(*c).unwrap()).collect(),
    };
    log.put_batch(&LogEntries {
        batches: vec![
            together(ClickEventKind::Ingested, 0, &["a1", "a2"]),
            together(ClickEventKind::Released, 1, &["a1", "a2"]),
            together(ClickEventKind::Delivered, 3, &["a1"]),
        ],
        clicks: vec![event(ClickEventKind::Failed, 1, 2)],
    })
    .await
    .unwrap();

    let state = api::AppState {
        pool: db.pool.clone(),
        objects,
        upload_bucket: "clickpacer-test-uploads".into(),
        queues: None,
        events: Some(log),
        transport: transport(false),
        allow_private_partners: false,
    };
    let call = |path: &str| {
        let request =
            Request::builder().uri(path).extension(api::auth::Caller::local_admin()).body(Body::empty()).unwrap();
        api::router(state.clone()).oneshot(request)
    };
    let response = call("/campaigns/spring/clicks/a1").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!((body["row_number"].as_i64(), body["batch_id"].as_i64()), (Some(1), Some(batch)));
    assert_eq!((&body["ip"], &body["attributes"]["tier"]), (&json!("10.0.0.1"), &json!("gold")));
    let outcomes: Vec<&str> =
        body["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["failed", "delivered"]);
    let events: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["ingested", "released", "failed", "delivered"], "{body}");
    assert_eq!(body["events"][2]["detail"], "503");
    let hour = now.format("%Y-%m-%dT%H");
    for path in [format!("/campaigns/spring/events?hour={hour}"), format!("/partners/acme/events?hour={hour}&limit=3")]
    {
        let response = call(&path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body: Value =
            serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
        let events: Vec<&str> =
            body["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
        let truncated = path.contains("limit=3");
        assert_eq!(events.len(), if truncated { 3 } else { 4 }, "{path}: {body}");
        // The batch's events name how many clicks they hold; a failure names its click.
        assert_eq!((body["truncated"].as_bool(), &body["events"][0]["clicks"]), (Some(truncated), &json!(2)));
        assert_eq!(body["events"][2]["click_id"], "a1");
    }
    assert_eq!(call("/campaigns/spring/events?hour=yesterday").await.unwrap().status(), 400);
    assert_eq!(call("/campaigns/spring/clicks/a9").await.unwrap().status(), 404);
    assert_eq!(call("/campaigns/ghost/clicks/a1").await.unwrap().status(), 404);
}

#[tokio::test]
async fn batches_are_searched_by_campaign_upload_state_and_due_time() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let mut spring = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
    spring.batch_size = 2;
    campaigns::upsert(&**db.client().await, &spring).await.unwrap();
    let (objects, bucket) = TestAws::new().await.bucket().await;
    let slicer = slicer::Slicer { pool: db.pool.clone(), objects, settings: slicer::SlicerSettings::default() };
    slice(&slicer, &bucket, "incoming/spring/a.csv", "click_id,ts\na1,1764324000\na2,1764324000\na3,1764324000\n")
        .await;
    slice(&slicer, &bucket, "incoming/spring/b.csv", "click_id,ts\nb1,1764324000\n").await;
    let uploads = get(&db, "/uploads").await.body;
    let a = uploads["items"][1]["upload_id"].as_i64().unwrap();
    db.client()
        .await
        .execute(
            "UPDATE batches SET state = 'dead', finished_at = now(), due_at = now() - interval '2 hours'
             WHERE upload_id = $1 AND upload_seq = 0",
            &[&a],
        )
        .await
        .unwrap();

    let all = get(&db, "/batches?campaign_id=spring").await.body;
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");
    let ids: Vec<i64> = all["items"].as_array().unwrap().iter().map(|b| b["batch_id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_ne!(all["items"][0]["upload_id"], json!(a), "the later upload's batch comes first");
    assert_eq!(get(&db, &format!("/batches?upload_id={a}")).await.body["items"].as_array().unwrap().len(), 2);
    let dead = get(&db, "/batches?state=dead").await.body;
    assert_eq!((dead["items"].as_array().unwrap().len(), &dead["items"][0]["upload_id"]), (1, &json!(a)));
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let earlier = get(&db, &format!("/batches?due_until={hour_ago}")).await.body;
    assert_eq!(earlier["items"].as_array().unwrap().len(), 1);
    assert_eq!(get(&db, &format!("/batches?due_from={hour_ago}")).await.body["items"].as_array().unwrap().len(), 2);
    let first = get(&db, "/batches?limit=2").await.body;
    let rest = get(&db, &format!("/batches?limit=2&cursor={}", first["next_cursor"].as_str().unwrap())).await.body;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(get(&db, "/batches?state=lost").await.status, 400);
    assert_eq!(get(&db, "/batches?due_from=yesterday").await.status, 400);
}

#[tokio::test]
async fn a_test_delivery_sends_a_sample_click_as_the_bridge_would_and_shows_the_answer() {
    let db = TestDb::new().await;
    let sim = partner_sim::spawn(partner_sim::Config::default()).await.unwrap();
    let mut p = Partner::get(
        PartnerId::parse("simulated").unwrap(),
        format!("{}/click?id={{click_id}}&seg={{attr.extra.segment}}", sim.partner_url("simulated")),
    );
    p.headers = vec![("X-Api-Key".into(), "key-123".into())];
    partners::upsert(&**db.client().await, &p).await.unwrap();
    let objects = TestAws::new().await.objects();
    // Locally, as the runner does, partners on loopback are allowed.
    let state = |allow_private| api::AppState {
        pool: db.pool.clone(),
        objects: objects.clone(),
        upload_bucket: "clickpacer-test-uploads".into(),
        queues: None,
        events: None,
        transport: transport(allow_private),
        allow_private_partners: allow_private,
    };
    let call = |allow_private: bool, path: &str| {
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .extension(api::auth::Caller::local_admin())
            .body(Body::empty())
            .unwrap();
        api::router(state(allow_private)).oneshot(request)
    };
    let response = call(true, "/partners/simulated/test-delivery").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!((&body["outcome"], &body["answer"]["status"]), (&json!("delivered"), &json!(200)), "{body}");
    let url = body["request"]["url"].as_str().unwrap();
    assert!(url.contains("id=sample-click-1") && url.contains("seg=%5B%22returning%22%2C%22mobile%22%5D"), "{url}");
    assert!(body["request"]["header_names"].as_array().unwrap().contains(&json!("Idempotency-Key")));
    assert!(!body.to_string().contains("key-123"), "header values are not shown: {body}");
    let received = sim.sim.report();
    assert_eq!(received.accepted, 1, "the partner got exactly one request");

    // Where private addresses are refused (AWS), the same partner is refused before anything is sent.
    let response = call(false, "/partners/simulated/test-delivery").await.unwrap();
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["outcome"], "permanent", "{body}");
    assert!(body.get("answer").is_none());
    assert_eq!(sim.sim.report().accepted, 1);
    assert_eq!(call(true, "/partners/ghost/test-delivery").await.unwrap().status(), 404);
}

#[tokio::test]
async fn an_upload_link_lets_a_browser_put_a_click_file_into_the_campaigns_folder() {
    let db = TestDb::new().await;
    let (slicer, bucket) = with_spring(&db).await;
    let state = api::AppState {
        pool: db.pool.clone(),
        objects: slicer.objects.clone(),
        upload_bucket: bucket.clone(),
        queues: None,
        events: None,
        transport: transport(false),
        allow_private_partners: false,
    };
    let post_json = |body: Value| {
        let request = Request::builder()
            .method("POST")
            .uri("/uploads/links")
            .header(header::CONTENT_TYPE, "application/json")
            .extension(api::auth::Caller::local_admin())
            .body(Body::from(body.to_string()))
            .unwrap();
        api::router(state.clone()).oneshot(request)
    };
    let response = post_json(json!({"campaign_id": "spring", "file_name": "from the browser.csv"})).await.unwrap();
    assert_eq!(response.status(), 200);
    let link: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!((&link["method"], &link["key"]), (&json!("PUT"), &json!("incoming/spring/from the browser.csv")));
    let put = reqwest::Client::new()
        .put(link["url"].as_str().unwrap())
        .body("click_id,ts\nb1,1764324000\nb2,1764324000\n")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let bytes = slicer.objects.get_bytes(&bucket, "incoming/spring/from the browser.csv").await.unwrap();
    assert!(bytes.starts_with(b"click_id,ts"));

    for (body, field) in [
        (json!({"campaign_id": "ghost", "file_name": "a.csv"}), "campaign_id"),
        (json!({"campaign_id": "spring", "file_name": "../a.csv"}), "file_name"),
        (json!({"campaign_id": "spring", "file_name": ""}), "file_name"),
    ] {
        let response = post_json(body).await.unwrap();
        assert_eq!(response.status(), 422);
        let problem: Value =
            serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
}

/// Adds one minute's and its hour's worth of outcomes to the rollups, through the same writer the bridge uses.
async fn roll_up(
    db: &TestDb,
    campaign: &str,
    partner: &str,
    at: chrono::DateTime<chrono::Utc>,
    delivered: i64,
    latency_ms: &[u32],
) {
    use clickpacer::postgres::stats::{self, StatsKey};
    use clickpacer::stats::{Counts, Granularity};
    let mut deltas = std::collections::BTreeMap::new();
    for granularity in Granularity::ALL {
        let mut counts =
            Counts { released: delivered + 1, delivered, failed: 2, throttled: 1, dead: 1, ..Counts::default() };
        counts.spend_micros = delivered * 1_000;
        for ms in latency_ms {
            counts.latency.record(*ms);
            counts.latency_sum_ms += i64::from(*ms);
        }
        let key = StatsKey {
            campaign_id: campaign.into(),
            partner_id: partner.into(),
            granularity,
            bucket: granularity.start_of(at),
        };
        deltas.insert(key, counts);
    }
    stats::add(&**db.client().await, deltas).await.unwrap();
}

#[tokio::test]
async fn stats_come_per_minute_and_hour_for_a_campaign_and_its_partner_with_latency_percentiles() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    assert_eq!(post(&db, "/campaigns", spring()).await.status, 201);
    let mut other = spring();
    other["campaign_id"] = json!("autumn");
    assert_eq!(post(&db, "/campaigns", other).await.status, 201);
    let t: chrono::DateTime<chrono::Utc> = "2026-12-07T10:15:30Z".parse().unwrap();
    roll_up(&db, "spring", "acme", t, 40, &[10, 20, 30, 900]).await;
    roll_up(&db, "spring", "acme", t + chrono::Duration::minutes(2), 10, &[]).await;
    roll_up(&db, "autumn", "acme", t, 5, &[40]).await;

    let r =
        get(&db, "/campaigns/spring/stats?granularity=minute&from=2026-12-07T10:14:00Z&to=2026-12-07T10:20:00Z").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let delivered: Vec<i64> =
        r.body["points"].as_array().unwrap().iter().map(|p| p["delivered"].as_i64().unwrap()).collect();
    assert_eq!(delivered, [0, 40, 0, 10, 0, 0], "every minute present, empty ones as zeros");
    let totals = &r.body["totals"];
    assert_eq!(
        (&totals["released"], &totals["delivered"], &totals["failed"], &totals["throttled"], &totals["dead"]),
        (&json!(52), &json!(50), &json!(4), &json!(2), &json!(2))
    );
    assert_eq!(totals["spend_micros"], 50_000);
    let p99 = totals["latency"]["p99_ms"].as_f64().unwrap();
    assert!((800.0..=1000.0).contains(&p99), "the slow attempt sets p99: {totals}");
    assert_eq!(totals["latency"]["mean_ms"], 240.0);
    assert!(r.body["points"][0].get("latency").is_none(), "no latency where nothing took time");

    // Hours by default; the partner's series adds up its campaigns.
    let r = get(&db, "/partners/acme/stats?from=2026-12-07T00:00:00Z&to=2026-12-08T00:00:00Z").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.body["granularity"].as_str(), r.body["points"].as_array().unwrap().len()), (Some("hour"), 24));
    assert_eq!(r.body["points"][10]["delivered"], 55);
    assert_eq!(r.body["totals"]["delivered"], 55);

    let too_long =
        get(&db, "/campaigns/spring/stats?granularity=minute&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z").await;
    assert_eq!(too_long.status, 400);
    assert!(too_long.body["detail"].as_str().unwrap().contains("at most 7 days"), "{}", too_long.body);
    assert_eq!(get(&db, "/campaigns/spring/stats?from=2026-12-08T00:00:00Z&to=2026-12-07T00:00:00Z").await.status, 400);
    assert_eq!(get(&db, "/campaigns/spring/stats?granularity=second").await.status, 400);
    assert_eq!(get(&db, "/campaigns/ghost/stats").await.status, 404);
    assert_eq!(get(&db, "/partners/ghost/stats").await.status, 404);
}

#[tokio::test]
async fn pacing_shows_the_local_day_against_its_plan_and_the_budget() {
    let db = TestDb::new().await;
    seed_partner(&db, "acme", true).await;
    let mut body = spring();
    body["cost_per_click_micros"] = json!(2_000);
    body["daily_budget_micros"] = json!(10_000_000);
    assert_eq!(post(&db, "/campaigns", body).await.status, 201);
    let now = chrono::Utc::now();
    roll_up(&db, "spring", "acme", now - chrono::Duration::seconds(1), 7, &[25]).await;

    let r = get(&db, "/campaigns/spring/pacing").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let day = &r.body["day"];
    assert_eq!((&day["time_zone"], &day["volume"]), (&json!("America/New_York"), &json!(1000)), "{day}");
    let hours = day["hours"].as_array().unwrap();
    assert_eq!(hours.len() as f64, day["length_hours"].as_f64().unwrap());
    assert_eq!(hours.last().unwrap()["expected_cumulative"], 1000, "the plan ends the day at its volume");
    assert_eq!(hours.last().unwrap()["delivered_cumulative"], 7);
    assert_eq!(day["delivered"], 7);
    assert!(day["expected_now"].as_u64().unwrap() <= 1000);
    assert_eq!(r.body["budget"]["daily_budget_micros"], 10_000_000);
    assert_eq!(r.body["budget"]["cost_per_click_micros"], 2_000);
    assert!(r.body["days"].is_array());

    // A DST day of the past has 23 hours; a day not yet begun is refused.
    let r = get(&db, "/campaigns/spring/pacing?day=2026-03-08").await;
    assert_eq!((r.status, r.body["day"]["hours"].as_array().map(Vec::len)), (200, Some(23)), "{}", r.body);
    assert_eq!(r.body["day"]["projected_delivered"], 0);
    assert_eq!(get(&db, "/campaigns/spring/pacing?day=2999-01-01").await.status, 400);
    assert_eq!(get(&db, "/campaigns/spring/pacing?day=yesterday").await.status, 400);
}

#[tokio::test]
async fn clicks_are_searched_by_upload_state_and_click_time_a_page_at_a_time() {
    let db = TestDb::new().await;
    let (a, b) = two_uploads(&db).await;
    finish_batch(
        &db,
        a,
        "partially_failed",
        &[("a1", "delivered", Some(200), ""), ("a2", "dead", Some(400), "refused")],
    )
    .await;
    // a3 is still on its way: its batch is final here only for the test's sake, so give it no row and look at b.
    let ids = |r: &Reply| -> Vec<String> {
        r.body["items"].as_array().unwrap().iter().map(|c| c["click_id"].as_str().unwrap().to_string()).collect()
    };
    let states = |r: &Reply| -> Vec<String> {
        r.body["items"].as_array().unwrap().iter().map(|c| c["state"].as_str().unwrap().to_string()).collect()
    };

    let r = get(&db, "/campaigns/spring/clicks").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r), ["a1", "a2", "a3", "b1", "b2"]);
    assert_eq!(states(&r)[..2], ["delivered", "dead"]);
    assert_eq!(states(&r)[3..], ["pending", "pending"], "upload b waits for the pacer");
    assert_eq!(r.body["items"][1]["last_error"], "refused");
    assert_eq!(r.body["items"][1]["attempts"], 1);

    let r = get(&db, &format!("/campaigns/spring/clicks?upload_id={b}&limit=1")).await;
    assert_eq!(ids(&r), ["b1"]);
    let next = r.body["next_cursor"].as_str().unwrap().to_string();
    let r = get(&db, &format!("/campaigns/spring/clicks?upload_id={b}&limit=1&cursor={next}")).await;
    assert_eq!((ids(&r), r.body.get("next_cursor")), (vec!["b2".to_string()], None));

    assert_eq!(ids(&get(&db, "/campaigns/spring/clicks?state=dead").await), ["a2"]);
    let r =
        get(&db, "/campaigns/spring/clicks?clicked_from=2025-11-28T10:00:00Z&clicked_until=2025-11-28T10:00:01Z").await;
    assert_eq!(ids(&r).len(), 5, "every click of the files was clicked then: {}", r.body);
    assert!(ids(&get(&db, "/campaigns/spring/clicks?clicked_from=2026-01-01T00:00:00Z").await).is_empty());

    assert_eq!(get(&db, "/campaigns/spring/clicks?state=queued").await.status, 400);
    assert_eq!(get(&db, "/campaigns/spring/clicks?clicked_from=yesterday").await.status, 400);
    assert_eq!(get(&db, "/campaigns/ghost/clicks").await.status, 404);
}
