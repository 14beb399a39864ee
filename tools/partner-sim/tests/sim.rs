//! The simulator, exercised over real HTTP on 127.0.0.1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use partner_sim::{Arrivals, Behaviour, Config, Report, Running, SecondCounts, spawn};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn start(config: Config) -> Running {
    spawn(config).await.unwrap()
}

async fn report(sim: &Running, partner: Option<&str>) -> Report {
    let url = match partner {
        Some(p) => format!("{}/report/{p}", sim.url()),
        None => format!("{}/report", sim.url()),
    };
    let bytes = client().get(url).send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn control(sim: &Running, partner: &str, behaviour: serde_json::Value) -> reqwest::StatusCode {
    client()
        .post(format!("{}/control/partners/{partner}", sim.url()))
        .header("content-type", "application/json")
        .body(behaviour.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

async fn deliver(sim: &Running, partner: &str, key: &str) -> reqwest::Response {
    client()
        .get(format!("{}/click?k={key}", sim.partner_url(partner)))
        .header("Idempotency-Key", key)
        .send()
        .await
        .unwrap()
}

/// Waits until just after the start of a wall-clock second, so a short burst falls in one second.
async fn at_start_of_second() {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 % 1000;
    tokio::time::sleep(Duration::from_millis(1000 - ms + 5)).await;
}

#[tokio::test]
async fn the_hidden_rate_limit_answers_429_with_retry_after() {
    let sim = start(Config::default()).await;
    assert_eq!(control(&sim, "throttle", serde_json::json!({"rate_limit": 5, "retry_after_s": 2})).await, 200);
    // A burst of 20. On a loaded machine it may span two wall-clock seconds: the limit is judged per second the
    // simulator saw, from its own record of each request, not from how fast the client sent them.
    at_start_of_second().await;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let responses = futures::future::join_all(keys.iter().map(|k| deliver(&sim, "throttle", k))).await;
    for r in &responses {
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "2");
        }
    }
    let mut per_second: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in report(&sim, Some("throttle")).await.recent {
        let (requests, admitted) = per_second.entry(r.at_ms / 1000).or_default();
        *requests += 1;
        *admitted += u64::from(r.status == 200);
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
    }
    assert_eq!(per_second.values().map(|(n, _)| n).sum::<u64>(), 20);
    for (second, (requests, admitted)) in &per_second {
        assert_eq!(*admitted, (*requests).min(5), "second {second}: {admitted} of {requests} admitted");
    }
    let admitted: u64 = per_second.values().map(|(_, a)| a).sum();
    let busiest = per_second.values().map(|(n, _)| *n).max().unwrap_or(0);

    // Another partner has no limit; the limit starts again in the next second.
    assert_eq!(deliver(&sim, "healthy", "h1").await.status(), 200);
    at_start_of_second().await;
    assert_eq!(deliver(&sim, "throttle", "next").await.status(), 200);

    let r = report(&sim, Some("throttle")).await;
    assert_eq!(r.total_requests, 21);
    assert_eq!(r.throttled, 20 - admitted);
    assert_eq!(r.accepted, admitted + 1);
    assert_eq!(r.status_counts[&429], 20 - admitted);
    assert_eq!(r.max_requests_in_one_second, busiest);
    assert!(r.max_requests_in_any_second >= busiest);
    let all = report(&sim, None).await;
    assert_eq!(all.total_requests, 22);
    assert_eq!(all.throttled, 20 - admitted);
    assert_eq!(all.partners.len(), 2);
}

#[tokio::test]
async fn duplicates_are_counted_by_idempotency_key() {
    let sim = start(Config::default()).await;
    assert_eq!(deliver(&sim, "acme", "a").await.status(), 200);
    assert_eq!(deliver(&sim, "acme", "a").await.status(), 200);
    assert_eq!(deliver(&sim, "acme", "b").await.status(), 200);
    // "c" fails first, then succeeds: a retry, not a duplicate.
    assert_eq!(control(&sim, "acme", serde_json::json!({"status_override": 503})).await, 200);
    let r = deliver(&sim, "acme", "c").await;
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (503, "1"));
    assert_eq!(client().delete(format!("{}/control/partners/acme", sim.url())).send().await.unwrap().status(), 204);
    assert_eq!(deliver(&sim, "acme", "c").await.status(), 200);
    // The same key at another partner is another delivery.
    assert_eq!(deliver(&sim, "other", "a").await.status(), 200);
    // No key at all.
    assert_eq!(client().post(sim.partner_url("acme")).body("x").send().await.unwrap().status(), 200);

    let r = report(&sim, Some("acme")).await;
    assert_eq!(r.total_requests, 6);
    assert_eq!(r.accepted, 5);
    assert_eq!(r.distinct_idempotency_keys, 3);
    assert_eq!(r.repeated_idempotency_keys, 2, "a and c");
    assert_eq!(r.duplicate_accepted_keys, 1, "only a was accepted twice");
    assert_eq!(r.duplicate_accepted_requests, 1);
    assert_eq!(r.requests_without_idempotency_key, 1);
    assert_eq!(r.status_counts[&503], 1);
    assert_eq!(r.throttled, 0, "503 is not a 429");
    let all = report(&sim, None).await;
    assert_eq!((all.distinct_idempotency_keys, all.duplicate_accepted_keys), (4, 1));
}

#[tokio::test]
async fn reports_count_per_partner_and_reset_clears() {
    let sim = start(Config { keep_last: 3, ..Config::default() }).await;
    assert_eq!(control(&sim, "broken", serde_json::json!({"error_rate": 1.0})).await, 200);
    assert_eq!(control(&sim, "slow", serde_json::json!({"latency_ms": 200, "body": "ACCEPTED"})).await, 200);
    for i in 0..3 {
        assert_eq!(deliver(&sim, "broken", &format!("b{i}")).await.status(), 500);
    }
    let began = Instant::now();
    let r = deliver(&sim, "slow", "s1").await;
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.text().await.unwrap(), "ACCEPTED");
    let r = client()
        .post(format!("{}/deep/path?x=1", sim.partner_url("healthy")))
        .header("Idempotency-Key", "h1")
        .header("content-type", "application/json")
        .body(r#"{"click":"c1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "OK".to_owned()));

    let all = report(&sim, None).await;
    assert_eq!(all.total_requests, 5);
    assert_eq!(all.accepted, 2);
    assert_eq!(all.status_counts.get(&500), Some(&3));
    assert_eq!(all.status_counts.get(&200), Some(&2));
    assert_eq!(all.partners["broken"].accepted, 0);
    assert_eq!(all.partners["slow"].accepted, 1);
    assert_eq!(all.recent.len(), 3, "bounded by keep_last");
    let last = all.recent.last().unwrap();
    assert_eq!(
        (last.partner.as_str(), last.method.as_str(), last.uri.as_str(), last.body.as_str()),
        ("healthy", "POST", "/p/healthy/deep/path?x=1", r#"{"click":"c1"}"#)
    );
    assert_eq!(last.headers["content-type"], "application/json");
    assert_eq!(last.idempotency_key.as_deref(), Some("h1"));
    assert_eq!(report(&sim, Some("slow")).await.recent.len(), 1);
    assert_eq!(report(&sim, Some("nobody")).await, Report::default());

    assert_eq!(client().post(format!("{}/reset", sim.url())).send().await.unwrap().status(), 204);
    assert_eq!(report(&sim, None).await, Report::default());
    // Behaviours survive a reset.
    assert_eq!(deliver(&sim, "broken", "b9").await.status(), 500);
}

/// The arrival record counts each request in the second it arrived, for its partner and for the campaign its `c`
/// parameter names, with what became of it.
#[tokio::test]
async fn arrivals_are_recorded_per_second_per_partner_and_per_campaign() {
    let sim = start(Config::default()).await;
    assert_eq!(control(&sim, "tight", serde_json::json!({"rate_limit": 2})).await, 200);
    let get = |partner: &'static str, query: &'static str| {
        let url = format!("{}/click?{query}", sim.partner_url(partner));
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    let mut statuses = Vec::new();
    // The burst may straddle a second's boundary on a loaded machine: then do it again.
    let second = loop {
        at_start_of_second().await;
        let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        statuses.clear();
        for query in ["id=1&c=spring%20sale", "id=2&c=spring%20sale", "id=3&c=autumn", "id=4"] {
            statuses.push(get("tight", query).await);
        }
        if SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() == second {
            break second;
        }
        assert_eq!(client().post(format!("{}/reset", sim.url())).send().await.unwrap().status(), 204);
    };
    assert_eq!(statuses, [200, 200, 429, 429]);
    let arrivals: Arrivals = serde_json::from_slice(
        &client().get(format!("{}/arrivals", sim.url())).send().await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    let counts =
        |requests, accepted, throttled| BTreeMap::from([(second, SecondCounts { requests, accepted, throttled })]);
    assert_eq!(arrivals.partners["tight"], counts(4, 2, 2));
    assert_eq!(arrivals.campaigns["spring sale"], counts(2, 2, 0), "percent-decoded");
    assert_eq!(arrivals.campaigns["autumn"], counts(1, 0, 1));
    assert_eq!(arrivals.campaigns.len(), 2, "a request without a campaign counts for its partner only");
    client().post(format!("{}/reset", sim.url())).send().await.unwrap();
    assert_eq!(sim.sim.arrivals(), Arrivals::default());
}

#[tokio::test]
async fn control_requests_are_checked() {
    let sim = start(Config::default()).await;
    assert_eq!(control(&sim, "x", serde_json::json!({"error_rate": 2.0})).await, 422);
    assert_eq!(control(&sim, "x", serde_json::json!({"status_override": 42})).await, 422);
    assert!(control(&sim, "x", serde_json::json!({"latency": 5})).await.is_client_error(), "unknown field");
    let bytes = client().get(format!("{}/control/partners/x", sim.url())).send().await.unwrap().bytes().await.unwrap();
    let b: Behaviour = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(b, Behaviour::default());
}

#[tokio::test]
async fn a_reset_is_accepted_then_the_connection_closes() {
    let sim = start(Config::default()).await;
    assert_eq!(control(&sim, "flaky", serde_json::json!({"reset_rate": 1.0})).await, 200);
    let err = client().get(sim.partner_url("flaky")).header("Idempotency-Key", "r1").send().await.unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    let r = report(&sim, Some("flaky")).await;
    assert_eq!((r.total_requests, r.accepted, r.resets), (1, 1, 1));
    // The server keeps serving other connections.
    assert_eq!(deliver(&sim, "fine", "f1").await.status(), 200);
}

#[tokio::test]
async fn a_client_that_gives_up_is_counted_as_abandoned() {
    let sim = start(Config::default()).await;
    assert_eq!(control(&sim, "slow", serde_json::json!({"latency_ms": 2000})).await, 200);
    let quick = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(100)).build().unwrap();
    assert!(quick.get(sim.partner_url("slow")).send().await.unwrap_err().is_timeout());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = report(&sim, Some("slow")).await;
        if r.abandoned == 1 {
            assert_eq!(r.accepted, 0);
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn signatures_made_by_the_bridge_verify() {
    use clickpacer::delivery::{ClickForDelivery, CompiledPartner};
    use clickpacer::domain::{CampaignId, ClickId, DeliveryFormat, Partner, PartnerId};

    let secret = "a-partner-secret-0123456789";
    let sim = start(Config::default()).await;
    assert_eq!(control(&sim, "signed", serde_json::json!({"signing_secret": secret})).await, 200);
    let click = ClickForDelivery {
        campaign_id: CampaignId::parse("spring").unwrap(),
        click_id: ClickId::parse("c 1/&").unwrap(),
        clicked_at: chrono::Utc::now(),
        ip: None,
        user_agent: Some("UA \"quoted\"".into()),
        landing_url: None,
        sub_id: None,
        attributes: serde_json::Map::new(),
        batch_id: 1,
        idempotency_key: "cp1-test".into(),
    };
    for (format, body) in [
        (DeliveryFormat::Get, None),
        (DeliveryFormat::PostJson, Some(r#"{"c": "{click_id}", "ua": "{user_agent}"}"#)),
        (DeliveryFormat::PostForm, None),
    ] {
        let partner = Partner {
            delivery_format: format,
            body_template: body.map(str::to_owned),
            signing_secret: Some(secret.into()),
            ..Partner::get(
                PartnerId::parse("signed").unwrap(),
                format!("{}/t/{{click_id}}?c={{click_id}}", sim.partner_url("signed")),
            )
        };
        let request = CompiledPartner::compile(&partner).unwrap().render(&click, chrono::Utc::now()).unwrap();
        let send = |body: Option<Vec<u8>>| {
            let mut builder = client().request(request.method.clone(), request.url.as_str());
            for (name, value) in &request.headers {
                builder = builder.header(name, value);
            }
            if let Some(ct) = &request.content_type {
                builder = builder.header("content-type", ct);
            }
            if let Some(body) = body {
                builder = builder.body(body);
            }
            builder.send()
        };
        assert_eq!(send(request.body.clone()).await.unwrap().status(), 200, "{format:?}");
        if let Some(body) = &request.body {
            let mut tampered = body.clone();
            tampered.push(b' ');
            assert_eq!(send(Some(tampered)).await.unwrap().status(), 401, "{format:?}");
        }
    }
    let unsigned = client().get(sim.partner_url("signed")).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let r = report(&sim, Some("signed")).await;
    assert_eq!((r.accepted, r.bad_signatures), (3, 3));
}

#[tokio::test]
async fn the_binary_prints_its_address_first() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_partner-sim"))
        .args(["--port", "0", "--rate-limit", "1", "--body", "YES"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect(&line).to_owned();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");
    at_start_of_second().await;
    let first = client().get(format!("{url}/p/x")).send().await.unwrap();
    let second = client().get(format!("{url}/p/x")).send().await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "YES");
    assert_eq!(second.status(), 429);

    let bad = Command::new(env!("CARGO_BIN_EXE_partner-sim")).args(["--error-rate", "1.5"]).output().unwrap();
    assert!(!bad.status.success());
}
