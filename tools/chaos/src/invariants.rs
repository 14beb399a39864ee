//! What must hold after every round, with everything drained: one line per invariant.

use std::collections::{BTreeMap, HashSet};

use aws_sdk_dynamodb::types::AttributeValue;
use clickpacer::postgres::reports;
use local::Pipeline;
use partner_sim::Running;

/// One invariant's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub holds: bool,
    pub detail: String,
}

/// The figures of a round's table row.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub accepted: i64,
    pub delivered: i64,
    pub dead: i64,
    pub pending: i64,
    pub stranded: i64,
    pub duplicates: u64,
    pub over_cap: i64,
    pub over_rate: i64,
    pub missing_events: i64,
}

/// Checks every invariant over everything ingested so far (all rounds).
pub async fn check(
    pipeline: &Pipeline,
    sim: &Running,
    rated: &[(String, u32)],
) -> anyhow::Result<(Vec<Check>, Figures)> {
    let client = pipeline.pool.get().await?;
    let mut checks = Vec::new();
    let mut figures = Figures::default();

    // 1. Conservation per upload and per campaign, pending justified.
    let uploads = reports::uploads(&**client).await?;
    let campaigns = reports::campaigns(&**client).await?;
    let bad_uploads: Vec<String> = uploads
        .iter()
        .filter(|u| !u.holds() || u.status == "processing")
        .map(|u| {
            format!(
                "{} ({}: rows {} accepted {} stranded {})",
                u.object_key, u.status, u.rows, u.accepted_rows, u.fates.stranded
            )
        })
        .collect();
    for c in &campaigns {
        figures.accepted += c.fates.accepted;
        figures.delivered += c.fates.delivered;
        figures.dead += c.fates.dead;
        figures.pending += c.fates.pending;
        figures.stranded += c.fates.stranded;
    }
    let bad_campaigns: Vec<String> =
        campaigns.iter().filter(|c| !c.fates.holds()).map(|c| format!("{} {:?}", c.campaign_id, c.fates)).collect();
    checks.push(Check {
        name: "conservation",
        holds: bad_uploads.is_empty() && bad_campaigns.is_empty(),
        detail: if bad_uploads.is_empty() && bad_campaigns.is_empty() {
            format!(
                "{} uploads, {} campaigns: accepted {} = delivered {} + dead {} + pending {} (stranded {})",
                uploads.len(),
                campaigns.len(),
                figures.accepted,
                figures.delivered,
                figures.dead,
                figures.pending,
                figures.stranded
            )
        } else {
            format!("uploads {bad_uploads:?}; campaigns {bad_campaigns:?}")
        },
    });

    // 2. No duplicate delivery. A partner's acceptance that the bridge never saw (the connection reset after it
    //    accepted; the bridge crashed between its answer and the recording) must be sent again, with the same
    //    idempotency key, which the partner uses to absorb it: at least once to the network is unavoidable.
    //    What must never happen is a click sent again after the bridge had recorded it delivered: at most one
    //    acceptance of a key may come after the start of the attempt recorded as its delivery.
    let report = sim.sim.report();
    let delivered_at: std::collections::HashMap<String, i64> = client
        .query(
            "SELECT partner_id, campaign_id, click_id, (extract(epoch FROM min(recorded_at)) * 1000)::bigint
             FROM delivery_results WHERE outcome = 'delivered' GROUP BY 1, 2, 3",
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let partner = clickpacer::domain::PartnerId::parse(r.get::<_, String>(0)).ok()?;
            let campaign = clickpacer::domain::CampaignId::parse(r.get::<_, String>(1)).ok()?;
            let click = clickpacer::domain::ClickId::parse(r.get::<_, String>(2)).ok()?;
            Some((clickpacer::delivery::idempotency_key(&partner, &campaign, &click), r.get::<_, i64>(3)))
        })
        .collect();
    let repeats = sim.sim.repeated_acceptances();
    let after_confirmed: Vec<String> = repeats
        .iter()
        .filter(|r| {
            delivered_at
                .get(&r.idempotency_key)
                .is_some_and(|&at| r.accepted_at_ms.iter().filter(|&&accepted| accepted as i64 >= at).count() > 1)
        })
        .map(|r| format!("{} {}", r.partner, r.idempotency_key))
        .collect();
    figures.duplicates = after_confirmed.len() as u64;
    checks.push(Check {
        name: "no duplicate delivery",
        holds: after_confirmed.is_empty(),
        detail: format!(
            "{} requests, {} accepted; {} keys accepted again after an ambiguous outcome (same key, absorbed by the \
             partner), {} after a recorded delivery",
            report.total_requests,
            report.accepted,
            repeats.len(),
            after_confirmed.len()
        ),
    });

    // 3. Caps and budgets on every local day, from what was delivered (the partner's view of our spend).
    let over: Vec<(String, String)> = client
        .query(
            "WITH delivered AS (
                 SELECT d.campaign_id, (d.recorded_at AT TIME ZONE c.time_zone)::date AS day,
                        count(DISTINCT d.click_id) AS clicks
                 FROM delivery_results d JOIN campaigns c USING (campaign_id)
                 WHERE d.outcome = 'delivered' GROUP BY 1, 2
             ), ledger AS (
                 SELECT campaign_id, local_day AS day, released_clicks, spend_micros FROM campaign_day_ledger
             )
             SELECT c.campaign_id, 'day ' || x.day || ': ' || x.what
             FROM campaigns c
             CROSS JOIN LATERAL (
                 SELECT d.day, d.clicks || ' delivered over the cap of ' || c.daily_cap AS what FROM delivered d
                 WHERE d.campaign_id = c.campaign_id AND c.daily_cap IS NOT NULL AND d.clicks > c.daily_cap
                 UNION ALL
                 SELECT l.day, l.released_clicks || ' released over the cap of ' || c.daily_cap FROM ledger l
                 WHERE l.campaign_id = c.campaign_id AND c.daily_cap IS NOT NULL AND l.released_clicks > c.daily_cap
                 UNION ALL
                 SELECT d.day, (d.clicks * c.cost_per_click_micros) || ' micros spent over the daily budget of '
                        || c.daily_budget_micros FROM delivered d
                 WHERE d.campaign_id = c.campaign_id AND c.daily_budget_micros IS NOT NULL
                   AND d.clicks * c.cost_per_click_micros > c.daily_budget_micros
             ) x
             UNION ALL
             SELECT c.campaign_id, sum(d.clicks) * c.cost_per_click_micros || ' micros over the total budget of '
                    || c.total_budget_micros
             FROM campaigns c JOIN delivered d USING (campaign_id)
             WHERE c.total_budget_micros IS NOT NULL
             GROUP BY c.campaign_id, c.cost_per_click_micros, c.total_budget_micros
             HAVING sum(d.clicks) * c.cost_per_click_micros > c.total_budget_micros",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    figures.over_cap = over.len() as i64;
    checks.push(Check {
        name: "caps and budgets",
        holds: over.is_empty(),
        detail: if over.is_empty() {
            "no campaign over its cap or budget on any local day".into()
        } else {
            format!("{over:?}")
        },
    });

    // 4. Partner rates in every one-second window at the partner.
    let mut over_rate = Vec::new();
    for (partner, rate) in rated {
        if let Some(r) = sim.sim.partner_report(partner)
            && r.max_requests_in_one_second > u64::from(*rate)
        {
            over_rate.push(format!("{partner}: {} in one second, rate {rate}", r.max_requests_in_one_second));
        }
    }
    figures.over_rate = over_rate.len() as i64;
    checks.push(Check {
        name: "partner rates",
        holds: over_rate.is_empty(),
        detail: if over_rate.is_empty() {
            let peaks: Vec<String> = rated
                .iter()
                .map(|(p, rate)| {
                    let peak = sim.sim.partner_report(p).map_or(0, |r| r.max_requests_in_one_second);
                    format!("{p} peak {peak}/s of {rate}/s")
                })
                .collect();
            peaks.join(", ")
        } else {
            over_rate.join("; ")
        },
    });

    // 5. The event log holds every click's final state.
    let finals: HashSet<(String, String, &'static str)> = client
        .query(
            "SELECT DISTINCT campaign_id, click_id, outcome FROM delivery_results WHERE outcome IN ('delivered', 'dead')",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), if r.get::<_, &str>(2) == "delivered" { "delivered" } else { "dead" }))
        .collect();
    let logged = event_log_finals(pipeline).await?;
    let missing: Vec<&(String, String, &str)> = finals.iter().filter(|f| !logged.contains(*f)).collect();
    let outbox = clickpacer::postgres::bridge::outbox_depth(&**client).await?;
    figures.missing_events = missing.len() as i64;
    checks.push(Check {
        name: "event log",
        holds: missing.is_empty() && outbox == 0,
        detail: if missing.is_empty() {
            format!("{} final states logged, outbox {outbox}", finals.len())
        } else {
            format!(
                "{} final states missing, e.g. {:?}; outbox {outbox}",
                missing.len(),
                &missing[..missing.len().min(3)]
            )
        },
    });

    // 6. The statistics rollups count what the outcomes and the ledger say, in both tables.
    let disagree: Vec<String> = client
        .query(
            "WITH raw AS (
                 SELECT campaign_id, count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
                        count(*) FILTER (WHERE outcome IN ('retrying', 'dead')) AS failed,
                        count(*) FILTER (WHERE outcome = 'dead') AS dead
                 FROM delivery_results GROUP BY campaign_id),
             ledger AS (SELECT campaign_id, sum(released_clicks) AS released FROM campaign_day_ledger GROUP BY 1),
             rolled AS (
                 SELECT g, campaign_id, sum(released) AS released, sum(delivered) AS delivered, sum(failed) AS failed,
                        sum(dead) AS dead
                 FROM (SELECT 'minute' AS g, * FROM delivery_stats_minute
                       UNION ALL SELECT 'hour', * FROM delivery_stats_hour) s
                 GROUP BY 1, 2)
             SELECT format('%s %s: released %s/%s delivered %s/%s failed %s/%s dead %s/%s', g.g, c.campaign_id,
                           coalesce(r.released, 0), coalesce(l.released, 0), coalesce(r.delivered, 0),
                           coalesce(x.delivered, 0), coalesce(r.failed, 0), coalesce(x.failed, 0),
                           coalesce(r.dead, 0), coalesce(x.dead, 0))
             FROM campaigns c CROSS JOIN (VALUES ('minute'), ('hour')) g(g)
             LEFT JOIN raw x ON x.campaign_id = c.campaign_id
             LEFT JOIN ledger l ON l.campaign_id = c.campaign_id
             LEFT JOIN rolled r ON r.campaign_id = c.campaign_id AND r.g = g.g
             WHERE (coalesce(r.released, 0), coalesce(r.delivered, 0), coalesce(r.failed, 0), coalesce(r.dead, 0))
                   IS DISTINCT FROM (coalesce(l.released, 0), coalesce(x.delivered, 0), coalesce(x.failed, 0),
                                     coalesce(x.dead, 0))",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    checks.push(Check {
        name: "statistics",
        holds: disagree.is_empty(),
        detail: if disagree.is_empty() {
            "minute and hour rollups count every release, delivery, failure and death".to_string()
        } else {
            format!("{} disagree (rollup/truth): {}", disagree.len(), disagree[..disagree.len().min(4)].join("; "))
        },
    });
    Ok((checks, figures))
}

/// Every (campaign, click, final event) item in the event table (a scan: the table holds only this run's).
async fn event_log_finals(pipeline: &Pipeline) -> anyhow::Result<HashSet<(String, String, &'static str)>> {
    let client = pipeline.bridge.events.client();
    let mut out = HashSet::new();
    let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
    loop {
        let page = client
            .scan()
            .table_name(pipeline.bridge.events.table())
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("scanning the event log: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e))
            })?;
        for item in page.items() {
            let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            let kind = match text("event").as_str() {
                "delivered" => "delivered",
                "dead" => "dead",
                _ => continue,
            };
            // A batch's item names its clicks; a click's own item names one.
            match item.get("clicks").and_then(|v| v.as_ss().ok()) {
                Some(clicks) => {
                    for click in clicks {
                        out.insert((text("campaign_id"), click.clone(), kind));
                    }
                }
                None => {
                    out.insert((text("campaign_id"), text("click_id"), kind));
                }
            }
        }
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(out),
        }
    }
}

/// Counts by fault kind, for the report.
pub type FaultCounts = BTreeMap<&'static str, u32>;
