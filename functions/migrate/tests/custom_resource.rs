//! The migrate function as CloudFormation runs it: a real HTTP server as the pre-signed `ResponseURL` and a real
//! PostgreSQL, checking the body CloudFormation would receive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use clickpacer::config::DatabaseConfig;
use clickpacer::postgres;
use clickpacer::testing::{TEST_DATABASE_PREFIX, TestDb, unique_suffix};
use migrate::{HttpResponder, PHYSICAL_RESOURCE_ID, PgSchema, Timing};
use serde_json::{Value, json};
use tokio::time::Instant;

/// One PUT as the server saw it.
#[derive(Debug, Clone)]
struct Put {
    path_and_query: String,
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Server {
    puts: Arc<Mutex<Vec<Put>>>,
    /// Requests to refuse (503) before accepting, like a flaky S3.
    refuse: Arc<AtomicUsize>,
}

async fn record(State(server): State<Server>, uri: Uri, headers: HeaderMap, body: String) -> StatusCode {
    server.puts.lock().unwrap().push(Put {
        path_and_query: uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        content_type: headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()),
        body: serde_json::from_str(&body).expect("the response body is JSON"),
    });
    let refuse = server.refuse.load(Ordering::SeqCst);
    if refuse > 0 {
        server.refuse.store(refuse - 1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::OK
}

/// A response endpoint on 127.0.0.1 and the pre-signed-looking URL pointing at it.
async fn response_endpoint(refuse: usize) -> (Server, String) {
    let server = Server { refuse: Arc::new(AtomicUsize::new(refuse)), ..Server::default() };
    let app = axum::Router::new().route("/{*path}", axum::routing::put(record)).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!(
        "http://{address}/arn%3Aaws%3Acloudformation%3Aus-east-1%3A123456789012%3Astack/clickpacer/1b2c%7CDatabaseMigrations%7C5d2a?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc123"
    );
    (server, url)
}

fn request(kind: &str, url: &str) -> Value {
    let mut event = json!({
        "RequestType": kind,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:clickpacer-MigrateFunction",
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/clickpacer/1b2c",
        "RequestId": format!("request-{kind}"),
        "ResourceType": "Custom::DatabaseMigrations",
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceProperties": {"ServiceToken": "arn", "MigrateVersion": "7"},
    });
    if kind != "Create" {
        event["PhysicalResourceId"] = json!(PHYSICAL_RESOURCE_ID);
    }
    if kind == "Update" {
        event["OldResourceProperties"] = json!({"ServiceToken": "arn", "MigrateVersion": "6"});
    }
    event
}

/// Sends `event` through the function and returns what the server received.
async fn invoke(event: Value, database: DatabaseConfig, server: &Server, timing: &Timing) -> Result<Vec<Put>, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let result =
        migrate::handle(event, &PgSchema::new(database), &HttpResponder::new().unwrap(), deadline, timing).await;
    let puts = server.puts.lock().unwrap().clone();
    match result {
        Ok(returned) => {
            assert_eq!(&returned, &puts.last().expect("a response was sent").body, "returns what it sent");
            Ok(puts)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn assert_identifies(put: &Put, kind: &str, url: &str) {
    let sent_to = url::Url::parse(url).unwrap();
    let sent_to = format!("{}?{}", sent_to.path(), sent_to.query().unwrap());
    assert_eq!(put.path_and_query, sent_to, "the pre-signed URL, unchanged");
    assert_eq!(put.content_type.as_deref(), Some(""), "the content type CloudFormation's pre-signed URL expects");
    assert_eq!(put.body["StackId"], "arn:aws:cloudformation:us-east-1:123456789012:stack/clickpacer/1b2c");
    assert_eq!(put.body["RequestId"], format!("request-{kind}"));
    assert_eq!(put.body["LogicalResourceId"], "DatabaseMigrations");
    assert_eq!(put.body["PhysicalResourceId"], PHYSICAL_RESOURCE_ID);
    assert!(serde_json::to_string(&put.body).unwrap().len() <= migrate::MAX_RESPONSE_BYTES);
}

/// A database with no migrations at all, as on the first deploy.
async fn empty_database(db: &TestDb) -> DatabaseConfig {
    let name = format!("{TEST_DATABASE_PREFIX}{}", unique_suffix());
    db.client().await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut url = url::Url::parse(&db.config.url).unwrap();
    url.set_path(&format!("/{name}"));
    DatabaseConfig { url: url.to_string(), pool_size: 2 }
}

fn all_known() -> String {
    postgres::known_migrations().iter().map(|(v, n)| format!("V{v}__{n}")).collect::<Vec<_>>().join(",")
}

#[tokio::test]
async fn create_on_the_first_deploy_applies_everything_and_update_then_finds_nothing_pending() {
    let db = TestDb::new().await;
    let database = empty_database(&db).await;
    let (server, url) = response_endpoint(0).await;

    let puts = invoke(request("Create", &url), database.clone(), &server, &Timing::default()).await.unwrap();
    assert_eq!(puts.len(), 1);
    assert_identifies(&puts[0], "Create", &url);
    assert_eq!(puts[0].body["Status"], "SUCCESS");
    assert_eq!(puts[0].body["Data"], json!({"applied": all_known()}));
    let reason = puts[0].body["Reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("applied {0} of {0} migrations: V1__", postgres::known_migrations().len())));
    let pool = postgres::build_pool(&database).unwrap();
    let known: Vec<i32> = postgres::known_migrations().iter().map(|(v, _)| *v).collect();
    assert_eq!(postgres::applied_migrations(&pool).await.unwrap(), known);

    let puts = invoke(request("Update", &url), database, &server, &Timing::default()).await.unwrap();
    assert_eq!(puts.len(), 2);
    assert_identifies(&puts[1], "Update", &url);
    assert_eq!(puts[1].body["Status"], "SUCCESS");
    assert_eq!(puts[1].body["Data"], json!({"applied": ""}));
    assert!(puts[1].body["Reason"].as_str().unwrap().starts_with("schema up to date"));
}

#[tokio::test]
async fn update_after_a_rollback_to_an_older_release_succeeds_without_changes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (999999, 'from_a_later_release', '2026-01-01T00:00:00Z', '1')",
        )
        .await
        .unwrap();
    let (server, url) = response_endpoint(0).await;

    let puts = invoke(request("Update", &url), db.config.clone(), &server, &Timing::default()).await.unwrap();
    assert_identifies(&puts[0], "Update", &url);
    assert_eq!(puts[0].body["Status"], "SUCCESS");
    assert_eq!(puts[0].body["Data"], json!({"applied": ""}));
    let reason = puts[0].body["Reason"].as_str().unwrap();
    assert!(reason.contains("does not know (V999999)") && reason.contains("nothing changed"), "{reason}");
    let rows: i64 = client.query_one("SELECT count(*) FROM refinery_schema_history", &[]).await.unwrap().get(0);
    assert_eq!(rows as usize, postgres::known_migrations().len() + 1);
}

#[tokio::test]
async fn diverged_histories_answer_failed() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "DELETE FROM refinery_schema_history WHERE version = (SELECT max(version) FROM refinery_schema_history);
             INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (999999, 'from_another_branch', '2026-01-01T00:00:00Z', '1')",
        )
        .await
        .unwrap();
    let (server, url) = response_endpoint(0).await;

    let puts = invoke(request("Update", &url), db.config.clone(), &server, &Timing::default()).await.unwrap();
    assert_identifies(&puts[0], "Update", &url);
    assert_eq!(puts[0].body["Status"], "FAILED");
    assert!(puts[0].body["Reason"].as_str().unwrap().contains("histories diverged"));
}

/// Nothing listens on port 1.
fn unreachable_database() -> DatabaseConfig {
    DatabaseConfig { url: "postgres://postgres@127.0.0.1:1/clickpacer".into(), pool_size: 1 }
}

#[tokio::test]
async fn an_unreachable_database_answers_failed_after_retrying() {
    let (server, url) = response_endpoint(0).await;
    let timing = Timing { connect_for: Duration::from_secs(2), ..Timing::default() };
    let started = Instant::now();

    let puts = invoke(request("Create", &url), unreachable_database(), &server, &timing).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "retried");
    assert_identifies(&puts[0], "Create", &url);
    assert_eq!(puts[0].body["Status"], "FAILED");
    let reason = puts[0].body["Reason"].as_str().unwrap();
    assert!(reason.starts_with("could not reach the database (2 attempts"), "{reason}");
}

#[tokio::test]
async fn delete_answers_success_without_the_database_even_when_the_first_put_fails() {
    let (server, url) = response_endpoint(1).await;

    let puts = invoke(request("Delete", &url), unreachable_database(), &server, &Timing::default()).await.unwrap();
    assert_eq!(puts.len(), 2, "retried after a 503");
    for put in &puts {
        assert_identifies(put, "Delete", &url);
        assert_eq!(put.body["Status"], "SUCCESS");
    }
}

#[tokio::test]
async fn a_plain_invoke_returns_the_report_and_puts_nothing() {
    let db = TestDb::new().await;
    let database = empty_database(&db).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let responder = HttpResponder::new().unwrap();
    let schema = PgSchema::new(database);

    let report = migrate::handle(json!({}), &schema, &responder, deadline, &Timing::default()).await.unwrap();
    let known = postgres::known_migrations();
    assert_eq!(report["known"], known.len());
    assert_eq!(report["applied"].as_array().unwrap().len(), known.len());
    let report = migrate::handle(json!({}), &schema, &responder, deadline, &Timing::default()).await.unwrap();
    assert_eq!(report, json!({"applied": [], "known": known.len()}));
}
