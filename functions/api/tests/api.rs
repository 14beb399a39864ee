//! The API handler against a real PostgreSQL, with requests shaped like API Gateway's (HTTP API, payload 2.0).

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use clickpacer::domain::{Campaign, CampaignId, Partner, PartnerId};
use clickpacer::postgres::{campaigns, partners};
use clickpacer::testing::TestDb;
use serde_json::{Value, json};

fn request(method: &str, path: &str) -> ApiGatewayV2httpRequest {
    serde_json::from_value(json!({
        "version": "2.0", "routeKey": format!("{method} /{{proxy+}}"), "rawPath": path, "rawQueryString": "",
        "headers": {"authorization": "Bearer x"},
        "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.example",
            "domainPrefix": "api", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.1", "userAgent": "test"}, "requestId": "r", "routeKey": "r", "stage": "$default",
            "time": "28/Nov/2026:10:00:00 +0000", "timeEpoch": 1795860000000_i64},
        "isBase64Encoded": false
    }))
    .unwrap()
}

async fn call(db: &TestDb, method: &str, path: &str) -> (i64, Value) {
    let response = api::handle(&db.pool, &request(method, path)).await;
    let Some(Body::Text(body)) = response.body else { panic!("no body") };
    (response.status_code, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn routes_answer_with_json_and_keep_secrets() {
    let db = TestDb::new().await;
    {
        let client = db.client().await;
        let mut p = Partner::get(PartnerId::parse("acme").unwrap(), "https://acme.example/c?id={click_id}");
        p.signing_secret = Some("super-secret-value-123".into());
        partners::upsert(&**client, &p).await.unwrap();
        campaigns::upsert(&**client, &Campaign::unlimited(CampaignId::parse("spring").unwrap(), p.partner_id))
            .await
            .unwrap();
    }
    assert_eq!(call(&db, "GET", "/health").await, (200, json!({"status": "ok", "events_waiting": 0})));
    let (status, body) = call(&db, "GET", "/partners").await;
    assert_eq!(status, 200);
    assert_eq!(body["partners"][0]["partner_id"], "acme");
    assert!(!body.to_string().contains("super-secret"), "signing secrets never leave: {body}");
    let (status, body) = call(&db, "GET", "/campaigns/spring/pacing").await;
    assert_eq!((status, body["campaign"]["campaign_id"].clone()), (200, json!("spring")));
    let (status, body) = call(&db, "GET", "/reconciliation").await;
    assert_eq!((status, body["holds"].clone()), (200, json!(true)));

    assert_eq!(call(&db, "GET", "/campaigns/ghost/pacing").await.0, 404);
    assert_eq!(call(&db, "GET", "/campaigns/bad%20id/pacing").await.0, 400);
    assert_eq!(call(&db, "GET", "/nope").await.0, 404);
    assert_eq!(call(&db, "DELETE", "/campaigns").await.0, 405);
}
