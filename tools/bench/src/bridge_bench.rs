//! Bridge benchmark, three measurements in one run against one partner simulator:
//!
//! 1. **Deliveries per second** from queued batches to the simulator with no added latency. `--clicks` clicks
//!    (default 20,000) in batches of 100 for one partner with `max_concurrency` `--concurrency` (default 64) and
//!    no rate, released by the real pacer (`pacer::run_once`, 1-second horizon) to the local SQS queue; the
//!    release messages are received, grouped into SQS-sized events of 10 and handed to `bridge::handle_event`
//!    by `--invocations` concurrent simulated Lambda invocations (default 1, 2, 4 and 8). Each invocation is a
//!    separate execution environment: its own thread and current-thread runtime, its own pool (the production
//!    size, 4) and HTTP client; once the events are used up it polls the click queue for requeued messages. The
//!    clock starts once every batch's release second has passed (the bridge would otherwise wait for it) and
//!    stops when the last batch is final in PostgreSQL; `deliveries_per_s` = clicks the simulator accepted /
//!    that time, best over the invocation counts. Everything `handle_event` does counts, the event-log flush
//!    included; one more run at the best count with the flush off (`outbox_flush_limit` 0) shows its cost.
//! 2. **The limit**: `wrk` (Debian package; `scripts/bench bridge` installs it) against the same simulator
//!    endpoint with as many connections as the partner's `max_concurrency`, for 10 s; `limit_ratio` =
//!    `deliveries_per_s` / wrk's requests per second. Also measured: wrk with as many connections as the bridge
//!    had requests in flight at its peak (a bridge invocation runs 4 messages at once, each up to
//!    `max_concurrency`), and the bridge's HTTP client alone (`HttpTransport` rendering the partner's template,
//!    same concurrency, no PostgreSQL, SQS or event log), which splits the gap into client and bookkeeping.
//! 3. **Throttling**: the simulator admits `--rate` R requests per wall-clock second (default 200) for the
//!    partner and answers 429 with `Retry-After: 1` beyond; ClickPacer does not know R (the partner's
//!    `rate_per_second` is `--partner-rate`, default unset). A backlog of 3 x R x `--seconds` clicks is due;
//!    for `--seconds` seconds (default 60) the real pacer runs every `--pacer-every` seconds (default 10, with
//!    that horizon) on the wall clock into a local SQS queue, and `--throttle-invocations` (default 4) simulated
//!    invocations poll that queue (10 messages, 1 s long poll), call `handle_event` and delete what it did not
//!    report as failed, requeued messages included. At the deadline the simulator's report for the partner
//!    gives `throttled_share` = 429 answers / requests and `capacity_share` = accepted / (R x seconds). A line
//!    per second (accepted / 429 / stored allowance) shows how the pace was found, or not.
//!
//! The simulator runs as the `partner-sim` binary in its own process (built by `scripts/bench`, or here with
//! cargo), so the bridge and wrk meet the very same server and neither shares a runtime or a process with it.
//! The event log: moto's DynamoDB writes only tens of items per second (and slows as a table grows), which would
//! measure moto, so by default the flush goes to a stand-in, a second simulator process answering every
//! BatchWriteItem with no unprocessed items after `--dynamodb-latency-ms` (default 10, DynamoDB-like);
//! `--event-log moto` uses moto. CPU seconds used by this process, the simulator, the whole PostgreSQL server
//! and moto during each run are read from /proc and reported per 1000 deliveries (on a shared machine other
//! work on the same servers counts too).
//!
//! Other options: `--message-concurrency M` and `--pool-size P` (bridge settings per invocation), `--only
//! throughput|throttle`. Targets (issue 5): `limit_ratio` >= 0.7; `capacity_share` >= 0.9 with
//! `throttled_share` < 0.01.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use bridge::{Bridge, BridgeSettings, HttpTransport, PartnerAnswer, SystemClock, Transport};
use chrono::Utc;
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::sqs::{ReceivedMessage, SqsQueue};
use clickpacer::config::DatabaseConfig;
use clickpacer::delivery::{ClickForDelivery, CompiledPartner, RenderedRequest, TransportError, idempotency_key};
use clickpacer::domain::{Campaign, CampaignId, ClickId, Partner, PartnerId};
use clickpacer::postgres::pacer::ClaimSettings;
use clickpacer::postgres::{PgPool, build_pool, campaigns, partners};
use clickpacer::release::ReleaseMessage;
use clickpacer::testing::{TestAws, TestDb};
use futures::StreamExt;
use pacer::{Pacer, PacerSettings};
use partner_sim::{Behaviour, Report};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

const BATCH_SIZE: i64 = 100;
/// Messages per SQS event (the event source's BatchSize).
const EVENT_SIZE: usize = 10;
/// The bridge's production pool size (DATABASE_POOL_SIZE default), unless --pool-size.
pub(crate) const BRIDGE_POOL_SIZE: usize = 4;
const WRK_SECONDS: u64 = 10;
const CLOCK_TICKS_PER_S: f64 = 100.0;

struct Options {
    clicks: i64,
    concurrency: u32,
    invocations: Vec<usize>,
    rate: u32,
    seconds: u64,
    pacer_every: u32,
    partner_rate: Option<u32>,
    throttle_invocations: usize,
    event_log: EventLog,
    message_concurrency: usize,
    pool_size: usize,
    /// `throughput` (parts 1 and 2) or `throttle` (part 3) only.
    only: Option<String>,
}

/// Where the bridge's event-log flush writes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EventLog {
    /// A DynamoDB stand-in answering every BatchWriteItem after this many milliseconds.
    StandIn(u64),
    /// The local moto server (slow: tens of items per second).
    Moto,
}

pub(crate) fn option<T: std::str::FromStr>(args: &[String], name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let value = args.get(i + 1).with_context(|| format!("{name} needs a value"))?.replace('_', "");
            value.parse().map(Some).map_err(|e| anyhow::anyhow!("{name} {value}: {e}"))
        }
    }
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let invocations = match option::<String>(args, "--invocations")? {
            Some(list) => list.split(',').map(|n| n.trim().parse()).collect::<Result<Vec<usize>, _>>()?,
            None => vec![1, 2, 4, 8],
        };
        if invocations.is_empty() || invocations.contains(&0) {
            bail!("--invocations takes counts of at least 1, e.g. 1,2,4");
        }
        let options = Self {
            clicks: option(args, "--clicks")?.unwrap_or(20_000),
            concurrency: option(args, "--concurrency")?.unwrap_or(64),
            invocations,
            rate: option(args, "--rate")?.unwrap_or(200),
            seconds: option(args, "--seconds")?.unwrap_or(60),
            pacer_every: option(args, "--pacer-every")?.unwrap_or(10),
            partner_rate: option(args, "--partner-rate")?,
            throttle_invocations: option(args, "--throttle-invocations")?.unwrap_or(4),
            event_log: match option::<String>(args, "--event-log")?.as_deref() {
                None | Some("standin") => EventLog::StandIn(option(args, "--dynamodb-latency-ms")?.unwrap_or(10)),
                Some("moto") => EventLog::Moto,
                Some(other) => bail!("--event-log {other}: use standin or moto"),
            },
            message_concurrency: option(args, "--message-concurrency")?
                .unwrap_or(BridgeSettings::default().message_concurrency),
            pool_size: option(args, "--pool-size")?.unwrap_or(BRIDGE_POOL_SIZE),
            only: option(args, "--only")?,
        };
        if options.only.as_deref().is_some_and(|o| o != "throughput" && o != "throttle") {
            bail!("--only takes throughput or throttle");
        }
        if options.clicks < BATCH_SIZE || options.concurrency == 0 || options.rate == 0 || options.seconds == 0 {
            bail!("--clicks must be at least {BATCH_SIZE}; --concurrency, --rate and --seconds at least 1");
        }
        if options.pacer_every == 0 || options.throttle_invocations == 0 {
            bail!("--pacer-every and --throttle-invocations must be at least 1");
        }
        Ok(options)
    }
}

pub(crate) fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The partner simulator in its own process.
pub(crate) struct SimProcess {
    child: tokio::process::Child,
    url: String,
    http: reqwest::Client,
}

impl SimProcess {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let binary = sim_binary().await?;
        let mut child = tokio::process::Command::new(&binary)
            .args(["--port", "0", "--keep-last", "10"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the simulator did not say where it listens")??
            .context("the simulator exited")?;
        let url = first.strip_prefix("listening on ").context("unexpected first line from the simulator")?.to_owned();
        Ok(Self { child, url, http: reqwest::Client::new() })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn partner_url(&self, partner: &str) -> String {
        format!("{}/p/{partner}", self.url)
    }

    pub(crate) async fn set_behaviour(&self, partner: &str, behaviour: &Behaviour) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/control/partners/{partner}", self.url))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(behaviour)?)
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "simulator refused the behaviour: {}", response.status());
        Ok(())
    }

    async fn report(&self, partner: &str) -> anyhow::Result<Report> {
        let text = self.http.get(format!("{}/report/{partner}", self.url)).send().await?.text().await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// What the simulator received, over all partners.
    pub(crate) async fn report_all(&self) -> anyhow::Result<Report> {
        let bytes = self.http.get(format!("{}/report", self.url)).send().await?.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// What each partner and campaign received per second (the simulator's arrival record).
    pub(crate) async fn arrivals(&self) -> anyhow::Result<partner_sim::Arrivals> {
        let bytes = self.http.get(format!("{}/arrivals", self.url)).send().await?.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub(crate) async fn reset(&self) -> anyhow::Result<()> {
        self.http.post(format!("{}/reset", self.url)).send().await?;
        Ok(())
    }
}

/// `partner-sim` next to this binary; built with cargo first when this runs under cargo (a no-op when fresh).
async fn sim_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("partner-sim");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut build = tokio::process::Command::new(cargo);
        build.args(["build", "-q", "-p", "partner-sim"]);
        if binary.parent().is_some_and(|d| d.ends_with("release")) {
            build.arg("--release");
        }
        let status = build.status().await?;
        anyhow::ensure!(status.success(), "cargo build -p partner-sim failed");
    }
    anyhow::ensure!(binary.exists(), "{} is missing: cargo build --release -p partner-sim", binary.display());
    Ok(binary)
}

/// Counts requests in flight across every simulated invocation.
#[derive(Default)]
pub(crate) struct Meter {
    in_flight: AtomicI64,
    peak: AtomicI64,
    requests: AtomicU64,
}

impl Meter {
    fn reset(&self) {
        self.peak.store(0, Ordering::SeqCst);
        self.requests.store(0, Ordering::SeqCst);
    }
}

/// The production transport, metered.
pub(crate) struct Metered {
    inner: HttpTransport,
    meter: Arc<Meter>,
}

impl Transport for Metered {
    async fn send(
        &self,
        request: &RenderedRequest,
        timeout: Duration,
    ) -> Result<PartnerAnswer, (TransportError, Duration)> {
        let now = self.meter.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.meter.peak.fetch_max(now, Ordering::SeqCst);
        self.meter.requests.fetch_add(1, Ordering::Relaxed);
        let answer = self.inner.send(request, timeout).await;
        self.meter.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

/// CPU seconds used so far by this process, the simulator, PostgreSQL and moto, and the machine's busy share.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    ours: f64,
    sim: f64,
    postgres: f64,
    moto: f64,
    machine_busy: f64,
    machine_total: f64,
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    proc_cpu(pid, false)
}

/// CPU seconds of a process; with `reaped`, plus those of its children that ended (PostgreSQL backends that
/// exited count in their postmaster's).
pub(crate) fn proc_cpu(pid: u32, reaped: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) in parentheses: utime, stime, cutime and cstime are the
    // 12th to 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let children = if reaped { ticks(13) + ticks(14) } else { 0.0 };
    (ticks(11) + ticks(12) + children) / CLOCK_TICKS_PER_S
}

pub(crate) fn processes_matching(matches: impl Fn(&str, &str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            matches(comm.trim(), &cmdline)
        })
        .collect()
}

impl Cpu {
    pub(crate) fn now(sim_pid: Option<u32>) -> Self {
        let sum = |pids: Vec<u32>| pids.into_iter().map(proc_cpu_seconds).sum::<f64>();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> =
            stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let total: f64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
        Self {
            ours: proc_cpu_seconds(std::process::id()),
            sim: sim_pid.map_or(0.0, proc_cpu_seconds),
            // The whole server: other databases' work on it counts too.
            postgres: processes_matching(|comm, _| comm == "postgres").into_iter().map(|p| proc_cpu(p, true)).sum(),
            moto: sum(processes_matching(|_, cmdline| cmdline.contains("moto_server"))),
            machine_busy: (total - idle) / CLOCK_TICKS_PER_S,
            machine_total: total / CLOCK_TICKS_PER_S,
        }
    }

    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            ours: self.ours - before.ours,
            sim: self.sim - before.sim,
            postgres: self.postgres - before.postgres,
            moto: self.moto - before.moto,
            machine_busy: self.machine_busy - before.machine_busy,
            machine_total: self.machine_total - before.machine_total,
        }
    }

    /// Busy share of the machine's capacity (all CPUs).
    fn busy_share(&self) -> f64 {
        if self.machine_total > 0.0 { self.machine_busy / self.machine_total } else { 0.0 }
    }

    pub(crate) fn describe(&self, per: f64, unit: &str) -> String {
        let ms = |s: f64| s * 1000.0 / per;
        format!(
            "CPU ms per {unit}: bench process {:.2}, simulator {:.2}, PostgreSQL {:.2}, moto {:.2}; machine {:.0}% busy",
            ms(self.ours),
            ms(self.sim),
            ms(self.postgres),
            ms(self.moto),
            self.busy_share() * 100.0
        )
    }

    pub(crate) fn json(&self, per: f64) -> serde_json::Value {
        let ms = |s: f64| round(s * 1000.0 / per, 3);
        json!({
            "bench_process": ms(self.ours), "simulator": ms(self.sim), "postgres": ms(self.postgres),
            "moto": ms(self.moto), "machine_busy_share": round(self.busy_share(), 3),
        })
    }
}

struct World {
    db: TestDb,
    aws: TestAws,
    sim: SimProcess,
    meter: Arc<Meter>,
    events: DynamoEventLog,
}

impl World {
    fn partner(&self, name: &str, concurrency: u32, rate: Option<u32>) -> anyhow::Result<Partner> {
        let mut p = Partner::get(
            PartnerId::parse(name)?,
            format!("{}/click?id={{click_id}}&ua={{user_agent}}&c={{campaign_id}}", self.sim.partner_url(name)),
        );
        p.max_concurrency = concurrency;
        p.rate_per_second = rate;
        Ok(p)
    }

    /// The partner, its campaign (no limits) and `clicks` clicks in batches of 100, all due a minute ago.
    async fn seed(&self, partner: &Partner, clicks: i64) -> anyhow::Result<(CampaignId, i64)> {
        let client = self.db.client().await;
        partners::upsert(&**client, partner).await?;
        let mut campaign =
            Campaign::unlimited(CampaignId::parse(format!("c-{}", partner.partner_id))?, partner.partner_id.clone());
        campaign.batch_size = BATCH_SIZE as u32;
        campaign.cost_per_click = clickpacer::domain::Micros(1_000);
        campaigns::upsert(&**client, &campaign).await?;
        let batches = insert_clicks(&client, &campaign, clicks).await?;
        client.execute("ANALYZE", &[]).await?;
        Ok((campaign.campaign_id, batches))
    }

    /// What one simulated Lambda execution environment is built from.
    fn environment(&self, queue: &SqsQueue, options: &Options, flush: bool) -> Environment {
        let defaults = BridgeSettings::default();
        let settings = BridgeSettings {
            message_concurrency: options.message_concurrency,
            outbox_flush_limit: if flush { defaults.outbox_flush_limit } else { 0 },
            ..defaults
        };
        Environment {
            db_url: self.db.config.url.clone(),
            queue: queue.clone(),
            events: self.events.clone(),
            meter: self.meter.clone(),
            settings,
            pool_size: options.pool_size,
        }
    }
}

/// `clicks` clicks of `campaign` (ids `click-1`, `click-2`, ...) in batches of its batch size, all due a minute ago,
/// as one upload.
pub(crate) async fn insert_clicks(
    client: &tokio_postgres::Client,
    campaign: &Campaign,
    clicks: i64,
) -> anyhow::Result<i64> {
    let batch_size = i64::from(campaign.batch_size);
    client.execute("SELECT ensure_click_partition(now())", &[]).await?;
    let upload: i64 = client
        .query_one(
            "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('bench', $1, 'v') RETURNING upload_id",
            &[&format!("incoming/{}", clickpacer::testing::unique_suffix())],
        )
        .await?
        .get(0);
    let batches = (clicks + batch_size - 1) / batch_size;
    client
        .execute(
            "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
             SELECT $1, $2, $3, s, least($5::bigint, $4::bigint - s * $5::bigint)::int, now() - interval '1 minute'
             FROM generate_series(0, $6::bigint - 1) s",
            &[&campaign.campaign_id.as_str(), &campaign.partner_id.as_str(), &upload, &clicks, &batch_size, &batches],
        )
        .await?;
    client
        .execute(
            "WITH ids AS (
                 INSERT INTO click_ids (campaign_id, click_id, ingested_at)
                 SELECT $1, 'click-' || g, now() FROM generate_series(1, $3::bigint) g RETURNING click_id, ingested_at)
             INSERT INTO clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, ip,
                                 user_agent, sub_id, attributes, ingested_at)
             SELECT $1, ids.click_id, $2, n.row_number, b.batch_id, now(), '203.0.113.9',
                    'Mozilla/5.0 (X11; Linux x86_64)', 's1', '{\"tier\": \"gold\"}', ids.ingested_at
             FROM ids
             CROSS JOIN LATERAL (SELECT substr(ids.click_id, 7)::bigint AS row_number) n
             JOIN batches b ON b.upload_id = $2 AND b.upload_seq = (n.row_number - 1) / $4::bigint",
            &[&campaign.campaign_id.as_str(), &upload, &clicks, &batch_size],
        )
        .await?;
    Ok(batches)
}

/// One simulated Lambda execution environment: its own thread and runtime, pool and HTTP client (the AWS clients
/// share one connection pool, as every client made from one SDK configuration does).
#[derive(Clone)]
pub(crate) struct Environment {
    pub(crate) db_url: String,
    pub(crate) queue: SqsQueue,
    pub(crate) events: DynamoEventLog,
    pub(crate) meter: Arc<Meter>,
    pub(crate) settings: BridgeSettings,
    pub(crate) pool_size: usize,
}

impl Environment {
    fn bridge(&self) -> anyhow::Result<Bridge<Metered, SystemClock>> {
        Ok(Bridge {
            pool: build_pool(&DatabaseConfig { url: self.db_url.clone(), pool_size: self.pool_size })?,
            transport: Metered { inner: HttpTransport::new(true)?, meter: self.meter.clone() },
            clock: SystemClock,
            click_queue: self.queue.clone(),
            events: self.events.clone(),
            settings: self.settings.clone(),
            partner_slots: Default::default(),
        })
    }

    /// Runs `work` with a new bridge on a thread of its own (a current-thread runtime, as in Lambda).
    pub(crate) fn spawn<T, F, Fut>(self, work: F) -> std::thread::JoinHandle<anyhow::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(Bridge<Metered, SystemClock>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move { work(self.bridge()?).await })
        })
    }
}

pub(crate) async fn join<T: Send + 'static>(handle: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("an invocation thread panicked"))?
}

pub(crate) fn pacer(pool: &PgPool, queue: &SqsQueue, horizon_seconds: u32) -> Pacer<SqsQueue> {
    Pacer {
        pool: pool.clone(),
        queue: queue.clone(),
        settings: PacerSettings {
            claim: ClaimSettings { horizon_seconds, ..ClaimSettings::default() },
            ..PacerSettings::default()
        },
    }
}

/// Every message on the queue (deleted as received), as the event source hands them over.
async fn drain(queue: &SqsQueue, expected: usize) -> anyhow::Result<Vec<SqsMessage>> {
    let mut out = Vec::with_capacity(expected);
    let mut empty = 0;
    while out.len() < expected && empty < 5 {
        let got = queue.receive(10, 1).await?;
        if got.is_empty() {
            empty += 1;
            continue;
        }
        let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
        futures::stream::iter(handles.iter())
            .map(|h| queue.delete(h))
            .buffer_unordered(10)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        out.extend(got.into_iter().map(|m| {
            let mut message = SqsMessage::default();
            message.message_id = Some(m.message_id);
            message.body = Some(m.body);
            message
        }));
    }
    Ok(out)
}

/// The event source's poller: up to 10 messages from the click queue (1 s long poll) handed to the bridge as one
/// event; what it does not report as failed is deleted. Returns the number of messages handled.
pub(crate) async fn poll_queue(bridge: &Bridge<Metered, SystemClock>) -> anyhow::Result<usize> {
    let queue = &bridge.click_queue;
    let got = queue.receive(EVENT_SIZE as i32, 1).await?;
    if got.is_empty() {
        return Ok(0);
    }
    let response = bridge::handle_event(bridge, event_of(&got), &clickpacer::invocation::Unlimited).await;
    delete_handled(queue, &got, response).await?;
    Ok(got.len())
}

/// The SQS event the event source makes of received messages.
pub(crate) fn event_of(got: &[ReceivedMessage]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = got
        .iter()
        .map(|m| {
            let mut message = SqsMessage::default();
            message.message_id = Some(m.message_id.clone());
            message.body = Some(m.body.clone());
            message
        })
        .collect();
    event
}

/// Deletes what the bridge did not report as failed (its partial batch response), in one call.
pub(crate) async fn delete_handled(
    queue: &SqsQueue,
    got: &[ReceivedMessage],
    response: SqsBatchResponse,
) -> anyhow::Result<()> {
    let failed: HashSet<String> = response.batch_item_failures.into_iter().map(|f| f.item_identifier).collect();
    let handled: Vec<&str> =
        got.iter().filter(|m| !failed.contains(&m.message_id)).map(|m| m.receipt_handle.as_str()).collect();
    if !handled.is_empty() {
        queue.delete_batch(&handled).await?;
    }
    Ok(())
}

fn events_of(messages: Vec<SqsMessage>) -> VecDeque<SqsEvent> {
    let mut events = VecDeque::new();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut event = SqsEvent::default();
        event.records = messages.by_ref().take(EVENT_SIZE).collect();
        events.push_back(event);
    }
    events
}

struct Throughput {
    invocations: usize,
    flush: bool,
    delivered: u64,
    seconds: f64,
    seconds_with_flush: f64,
    peak_in_flight: i64,
    failures: usize,
    /// Messages the bridge sent back to the queue (clicks to try again) and handled again.
    requeued: usize,
    cpu: Cpu,
    report: Report,
}

impl Throughput {
    fn per_s(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
}

/// Part 1: queued batches delivered by `invocations` concurrent simulated invocations.
async fn throughput(world: &World, options: &Options, invocations: usize, flush: bool) -> anyhow::Result<Throughput> {
    let name = format!("fast-{invocations}{}", if flush { "" } else { "-nolog" });
    let partner = world.partner(&name, options.concurrency, None)?;
    let (campaign, batches) = world.seed(&partner, options.clicks).await?;
    let (queue, _dead) = world.aws.queue_with_dead_letter(30, 5).await;
    let run = pacer::run_once(&pacer(&world.db.pool, &queue, 1), Utc::now()).await?;
    anyhow::ensure!(run.released == batches as u64, "the pacer released {} of {batches} batches", run.released);
    let messages = drain(&queue, batches as usize).await?;
    anyhow::ensure!(messages.len() == batches as usize, "received {} of {batches} messages", messages.len());
    let last_second = messages
        .iter()
        .filter_map(|m| serde_json::from_str::<ReleaseMessage>(m.body.as_deref()?).ok())
        .map(|m| m.release_at + chrono::Duration::seconds(i64::from(m.spread_seconds)))
        .max()
        .unwrap_or_else(Utc::now);
    if let Ok(wait) = (last_second - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }

    let environment = world.environment(&queue, options, flush);
    let events = Arc::new(Mutex::new(events_of(messages)));
    world.meter.reset();
    let watch_pool = world.db.pool.clone();
    let before = Cpu::now(world.sim.pid());
    let started = Instant::now();

    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let campaign = campaign.to_string();
        let done = done.clone();
        async move {
            let client = watch_pool.get().await?;
            loop {
                let finished: i64 = client
                    .query_one(
                        "SELECT count(*) FROM batches WHERE campaign_id = $1 AND finished_at IS NOT NULL",
                        &[&campaign],
                    )
                    .await?
                    .get(0);
                if finished >= batches {
                    done.store(true, Ordering::SeqCst);
                    return anyhow::Ok(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(600) {
                    done.store(true, Ordering::SeqCst);
                    bail!("{finished} of {batches} batches finished after 600 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let workers: Vec<_> = (0..invocations)
        .map(|_| {
            let (events, done) = (events.clone(), done.clone());
            environment.clone().spawn(move |bridge| async move {
                let mut failures = 0;
                loop {
                    let Some(event) = events.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { break };
                    failures += bridge::handle_event(&bridge, event, &clickpacer::invocation::Unlimited)
                        .await
                        .batch_item_failures
                        .len();
                }
                // Then whatever came back to the queue (clicks to try again), until every batch is final.
                let mut requeued = 0;
                while !done.load(Ordering::SeqCst) {
                    requeued += poll_queue(&bridge).await?;
                }
                Ok((failures, requeued))
            })
        })
        .collect();
    let (mut failures, mut requeued) = (0, 0);
    for worker in workers {
        let (f, r) = join(worker).await?;
        failures += f;
        requeued += r;
    }
    let seconds_with_flush = started.elapsed().as_secs_f64();
    let delivered_after =
        tokio::time::timeout(Duration::from_secs(30), watcher).await.context("batches did not all finish")???;
    let cpu = Cpu::now(world.sim.pid()).since(before);
    let report = world.sim.report(&name).await?;
    Ok(Throughput {
        invocations,
        flush,
        delivered: report.accepted,
        seconds: delivered_after.as_secs_f64(),
        seconds_with_flush,
        peak_in_flight: world.meter.peak.load(Ordering::SeqCst),
        failures,
        requeued,
        cpu,
        report,
    })
}

/// wrk against the partner's endpoint: requests per second.
async fn wrk(url: &str, connections: u32, seconds: u64) -> anyhow::Result<(f64, String)> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(connections as usize);
    let output = tokio::process::Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s")])
        .args(["-H", "Idempotency-Key: cp1-0123456789abcdef0123456789abcdef", url])
        .output()
        .await
        .context("wrk is not installed: apt-get install -y wrk (scripts/bench bridge does it)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    Ok((rps, threads.to_string()))
}

/// The bridge's HTTP client alone: `requests` rendered clicks sent at `concurrency`.
async fn transport_only(world: &World, options: &Options, requests: u64) -> anyhow::Result<(f64, Cpu)> {
    let name = "transport";
    let partner = world.partner(name, options.concurrency, None)?;
    let compiled = CompiledPartner::compile(&partner).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let transport = HttpTransport::new(true)?;
    let campaign = CampaignId::parse("c-transport")?;
    let clicks: Vec<ClickForDelivery> = (1..=requests)
        .map(|i| {
            let click_id = ClickId::parse(format!("click-{i}")).unwrap_or_else(|_| unreachable!());
            ClickForDelivery {
                idempotency_key: idempotency_key(&partner.partner_id, &campaign, &click_id),
                campaign_id: campaign.clone(),
                click_id,
                clicked_at: Utc::now(),
                ip: Some([203, 0, 113, 9].into()),
                user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
                landing_url: None,
                sub_id: Some("s1".into()),
                attributes: serde_json::Map::new(),
                batch_id: 1,
            }
        })
        .collect();
    let before = Cpu::now(world.sim.pid());
    let started = Instant::now();
    let ok = futures::stream::iter(clicks.iter())
        .map(|click| {
            let (compiled, transport) = (&compiled, &transport);
            async move {
                let request = compiled.render(click, Utc::now()).ok()?;
                transport.send(&request, Duration::from_secs(5)).await.ok().filter(|a| a.status == 200)
            }
        })
        .buffer_unordered(options.concurrency as usize)
        .filter(|a| futures::future::ready(a.is_some()))
        .count()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = Cpu::now(world.sim.pid()).since(before);
    anyhow::ensure!(ok as u64 == requests, "{ok} of {requests} requests succeeded");
    Ok((requests as f64 / seconds, cpu))
}

struct Throttled {
    report: Report,
    seconds: f64,
    dead: i64,
    delivered_in_db: i64,
    per_second: Vec<(u64, u64, f64)>,
    pacer_runs: u64,
    released_clicks: u64,
    cpu: Cpu,
}

/// Part 3: pacer and bridge on the wall clock against a partner with a hidden limit.
async fn throttled(world: &World, options: &Options) -> anyhow::Result<Throttled> {
    let name = "limited";
    let partner = world.partner(name, options.concurrency, options.partner_rate)?;
    let backlog = i64::from(options.rate) * options.seconds as i64 * 3;
    world.seed(&partner, backlog).await?;
    world
        .sim
        .set_behaviour(name, &Behaviour { rate_limit: Some(options.rate), retry_after_s: 1, ..Behaviour::default() })
        .await?;
    let (queue, _dead) = world.aws.queue_with_dead_letter(30, 5).await;
    let environment = world.environment(&queue, options, true);
    world.sim.reset().await?;
    let before = Cpu::now(world.sim.pid());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);

    let released = Arc::new(AtomicU64::new(0));
    let runs = Arc::new(AtomicU64::new(0));
    // The scheduled pacer, on a thread of its own with its own pool (as its own Lambda function).
    let pacer_thread = {
        let pool = build_pool(&DatabaseConfig { url: world.db.config.url.clone(), pool_size: 2 })?;
        let pacer = pacer(&pool, &queue, options.pacer_every);
        let (released, runs) = (released.clone(), runs.clone());
        let every = Duration::from_secs(u64::from(options.pacer_every));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(started), every);
                let runs_until_deadline = async {
                    loop {
                        tick.tick().await;
                        match pacer::run_once(&pacer, Utc::now()).await {
                            Ok(run) => {
                                released.fetch_add(run.released_clicks, Ordering::SeqCst);
                                runs.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => eprintln!("  pacer run failed: {e}"),
                        }
                    }
                };
                let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), runs_until_deadline).await;
                anyhow::Ok(())
            })
        })
    };
    let workers: Vec<_> = (0..options.throttle_invocations)
        .map(|_| {
            environment.clone().spawn(move |bridge| async move {
                let work = async {
                    loop {
                        if let Err(e) = poll_queue(&bridge).await {
                            eprintln!("  {e}");
                        }
                    }
                };
                // At the deadline the invocation is cut wherever it is (its batch lease simply expires).
                let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work).await;
                Ok(())
            })
        })
        .collect();

    // Once a second: what the partner accepted and refused in that second, and the stored allowance.
    let mut per_second = Vec::new();
    let mut last = Report::default();
    let client = world.db.client().await;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let report = loop {
        tick.tick().await;
        let report = world.sim.report(name).await.unwrap_or_default();
        let allowance: f64 = client
            .query_opt("SELECT allowance FROM partner_health WHERE partner_id = $1", &[&name])
            .await?
            .map_or(1.0, |r| r.get(0));
        per_second.push((report.accepted - last.accepted, report.throttled - last.throttled, allowance));
        last = report.clone();
        if Instant::now() + Duration::from_millis(50) >= deadline {
            break report;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu = Cpu::now(world.sim.pid()).since(before);
    join(pacer_thread).await?;
    for worker in workers {
        join(worker).await?;
    }
    let outcomes: BTreeMap<String, i64> = client
        .query("SELECT outcome, count(*) FROM delivery_results WHERE partner_id = $1 GROUP BY outcome", &[&name])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Throttled {
        report,
        seconds,
        dead: outcomes.get("dead").copied().unwrap_or(0),
        delivered_in_db: outcomes.get("delivered").copied().unwrap_or(0),
        per_second,
        pacer_runs: runs.load(Ordering::SeqCst),
        released_clicks: released.load(Ordering::SeqCst),
        cpu,
    })
}

/// The event log written to a DynamoDB stand-in: a simulator process answering every BatchWriteItem with no
/// unprocessed items after `latency_ms` (moto's DynamoDB takes tens of items per second, far from DynamoDB).
pub(crate) async fn event_log_stand_in(aws: &TestAws, latency_ms: u64) -> anyhow::Result<(DynamoEventLog, SimProcess)> {
    let log_sim = SimProcess::start().await?;
    let body = r#"{"UnprocessedItems":{}}"#.to_owned();
    log_sim.set_behaviour("dynamodb", &Behaviour { latency_ms, body, ..Behaviour::default() }).await?;
    let config = aws_sdk_dynamodb::config::Builder::from(&aws.sdk)
        .endpoint_url(format!("{}/api", log_sim.partner_url("dynamodb")));
    let client = aws_sdk_dynamodb::Client::from_conf(config.build());
    eprintln!("event log: DynamoDB stand-in answering BatchWriteItem after {latency_ms} ms (own process)");
    Ok((DynamoEventLog::new(client, "clickpacer-events"), log_sim))
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let options = Options::parse(args)?;
    let (world, log_sim) = World::start(&options).await?;
    let mut out = serde_json::Map::new();
    out.insert("benchmark".into(), json!("bridge"));

    if options.only.as_deref() != Some("throttle") {
        throughput_and_limit(&world, &options, log_sim.as_ref(), &mut out).await?;
    }
    if options.only.as_deref() != Some("throughput") {
        throttling(&world, &options, &mut out).await?;
    }
    // Headline figures first, then the raw ones.
    let mut line = serde_json::Map::new();
    for key in ["benchmark", "deliveries_per_s", "limit_ratio", "throttled_share", "capacity_share"] {
        line.insert(key.into(), out.remove(key).unwrap_or(serde_json::Value::Null));
    }
    line.extend(out);
    println!("{}", serde_json::Value::Object(line));
    Ok(())
}

impl World {
    /// A database, the local AWS endpoint, the simulator in its own process, and the event log (with its
    /// stand-in's process, unless it is moto).
    async fn start(options: &Options) -> anyhow::Result<(Self, Option<SimProcess>)> {
        let db = TestDb::new().await;
        let aws = TestAws::new().await;
        let sim = SimProcess::start().await?;
        eprintln!("partner simulator: own process (pid {}), {}", sim.pid().unwrap_or(0), sim.url);
        // The event log: moto's DynamoDB takes tens of items per second, far from DynamoDB, so by default the
        // flush writes to a stand-in (another simulator process) answering BatchWriteItem after DynamoDB-like
        // latency.
        let (events, log_sim) = match options.event_log {
            EventLog::Moto => (aws.events_table().await, None),
            EventLog::StandIn(latency_ms) => {
                let (events, log_sim) = event_log_stand_in(&aws, latency_ms).await?;
                (events, Some(log_sim))
            }
        };
        Ok((Self { db, aws, sim, meter: Arc::new(Meter::default()), events }, log_sim))
    }
}

/// Part 1 alone, as the pipeline benchmark's baseline: the best deliveries/s over the invocation counts.
pub async fn deliveries_per_s(args: &[String]) -> anyhow::Result<f64> {
    let options = Options::parse(args)?;
    let (world, _log_sim) = World::start(&options).await?;
    let mut best = 0.0_f64;
    for &invocations in &options.invocations {
        let r = throughput(&world, &options, invocations, true).await?;
        eprintln!("  {invocations} invocation(s): {:.0} deliveries/s", r.per_s());
        best = best.max(r.per_s());
    }
    Ok(best)
}

/// Parts 1 and 2.
async fn throughput_and_limit(
    world: &World,
    options: &Options,
    log_sim: Option<&SimProcess>,
    out: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    eprintln!(
        "throughput: {} clicks in batches of {BATCH_SIZE}, partner max_concurrency {}, no rate, no latency; \
         events of {EVENT_SIZE} messages, message_concurrency {}, pool {} per invocation",
        options.clicks, options.concurrency, options.message_concurrency, options.pool_size
    );
    let mut runs = Vec::new();
    for &invocations in &options.invocations {
        let r = throughput(world, options, invocations, true).await?;
        eprintln!(
            "  {invocations} invocation(s): {} clicks in {:.2} s = {:.0} deliveries/s ({:.2} s with the last event-log \
             flush), peak {} requests in flight, {} failed and {} requeued messages",
            r.delivered,
            r.seconds,
            r.per_s(),
            r.seconds_with_flush,
            r.peak_in_flight,
            r.failures,
            r.requeued
        );
        eprintln!("    {}", r.cpu.describe(r.delivered as f64 / 1000.0, "1000 deliveries"));
        anyhow::ensure!(r.report.duplicate_accepted_keys == 0, "a click was accepted twice");
        runs.push(r);
    }
    let best = runs.iter().max_by(|a, b| a.per_s().total_cmp(&b.per_s())).context("no run")?;
    let no_log = throughput(world, options, best.invocations, false).await?;
    eprintln!(
        "  {} invocation(s), event-log flush off: {:.0} deliveries/s, peak {} in flight",
        no_log.invocations,
        no_log.per_s(),
        no_log.peak_in_flight
    );
    eprintln!("    {}", no_log.cpu.describe(no_log.delivered as f64 / 1000.0, "1000 deliveries"));
    let outbox = clickpacer::postgres::bridge::outbox_depth(&**world.db.client().await).await?;
    if let Some(log_sim) = log_sim {
        let r = log_sim.report("dynamodb").await?;
        eprintln!(
            "  event log: {} BatchWriteItem calls answered {:?}; {outbox} events left in the outbox",
            r.total_requests, r.status_counts
        );
    }

    // 2. The limit: a plain load generator at the partner's concurrency (and at the bridge's peak), and the
    //    bridge's HTTP client alone.
    let wrk_url = format!("{}/click?id=click-1&ua=Mozilla%2F5.0&c=c-wrk", world.sim.partner_url("wrk"));
    let cpu_before = Cpu::now(world.sim.pid());
    let (wrk_rps, wrk_threads) = wrk(&wrk_url, options.concurrency, WRK_SECONDS).await?;
    let wrk_cpu = Cpu::now(world.sim.pid()).since(cpu_before);
    eprintln!(
        "wrk -t {wrk_threads} -c {} -d {WRK_SECONDS}s: {wrk_rps:.0} requests/s; simulator CPU {:.3} ms per request, \
         machine {:.0}% busy",
        options.concurrency,
        wrk_cpu.sim * 1000.0 / (wrk_rps * WRK_SECONDS as f64),
        wrk_cpu.busy_share() * 100.0
    );
    let peak = best.peak_in_flight.max(1) as u32;
    let (wrk_peak_rps, _) = wrk(&wrk_url, peak, WRK_SECONDS).await?;
    eprintln!("wrk -c {peak} (the bridge's peak in flight): {wrk_peak_rps:.0} requests/s");
    let (transport_rps, transport_cpu) = transport_only(world, options, options.clicks as u64).await?;
    eprintln!(
        "bridge HTTP client alone (render + HttpTransport, concurrency {}): {transport_rps:.0} requests/s",
        options.concurrency
    );
    eprintln!("    {}", transport_cpu.describe(options.clicks as f64 / 1000.0, "1000 requests"));
    let deliveries_per_s = best.per_s();
    let limit_ratio = deliveries_per_s / wrk_rps;
    eprintln!("limit_ratio = {deliveries_per_s:.0} / {wrk_rps:.0} = {limit_ratio:.3} (target >= 0.7)");

    let run_json = |r: &Throughput| {
        json!({
            "invocations": r.invocations, "event_log_flush": r.flush, "clicks": r.delivered,
            "seconds": round(r.seconds, 3), "seconds_with_last_flush": round(r.seconds_with_flush, 3),
            "deliveries_per_s": r.per_s().round(), "peak_in_flight": r.peak_in_flight,
            "failed_messages": r.failures, "requeued_messages": r.requeued,
            "cpu_ms_per_1000": r.cpu.json(r.delivered as f64 / 1000.0),
        })
    };
    out.insert("deliveries_per_s".into(), json!(deliveries_per_s.round()));
    out.insert("limit_ratio".into(), json!(round(limit_ratio, 3)));
    out.insert("clicks".into(), json!(options.clicks));
    out.insert("max_concurrency".into(), json!(options.concurrency));
    out.insert("message_concurrency".into(), json!(options.message_concurrency));
    out.insert("best_invocations".into(), json!(best.invocations));
    out.insert("runs".into(), json!(runs.iter().chain([&no_log]).map(run_json).collect::<Vec<_>>()));
    out.insert("without_event_log_deliveries_per_s".into(), json!(no_log.per_s().round()));
    out.insert("wrk_requests_per_s".into(), json!(wrk_rps.round()));
    out.insert("wrk_connections".into(), json!(options.concurrency));
    out.insert("wrk_at_bridge_peak_requests_per_s".into(), json!(wrk_peak_rps.round()));
    out.insert("http_client_only_per_s".into(), json!(transport_rps.round()));
    Ok(())
}

/// Part 3.
async fn throttling(
    world: &World,
    options: &Options,
    out: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    eprintln!(
        "throttling: hidden limit {} requests/s (429, Retry-After 1), partner rate_per_second {}, max_concurrency {}; \
         backlog {} clicks; pacer every {} s (horizon {} s), {} invocations, {} s",
        options.rate,
        options.partner_rate.map_or("unset".into(), |r| r.to_string()),
        options.concurrency,
        i64::from(options.rate) * options.seconds as i64 * 3,
        options.pacer_every,
        options.pacer_every,
        options.throttle_invocations,
        options.seconds
    );
    let t = throttled(world, options).await?;
    let r = &t.report;
    let throttled_share = if r.total_requests > 0 { r.throttled as f64 / r.total_requests as f64 } else { 0.0 };
    let delivered_rate = r.accepted as f64 / t.seconds;
    let capacity_share = delivered_rate / f64::from(options.rate);
    let line: Vec<String> = t.per_second.iter().map(|(a, th, al)| format!("{a}/{th}/{al:.2}")).collect();
    eprintln!("  per second, accepted/429/allowance: {}", line.join(" "));
    eprintln!(
        "  {} requests, {} accepted ({delivered_rate:.1}/s), {} answered 429, most in one second {}; {} pacer runs \
         released {} clicks; {} delivered and {} dead clicks recorded",
        r.total_requests,
        r.accepted,
        r.throttled,
        r.max_requests_in_one_second,
        t.pacer_runs,
        t.released_clicks,
        t.delivered_in_db,
        t.dead
    );
    eprintln!("    {}", t.cpu.describe(t.seconds, "second"));
    eprintln!(
        "throttled_share = {throttled_share:.4} (target < 0.01), capacity_share = {capacity_share:.3} (target >= 0.9)"
    );
    out.insert("throttled_share".into(), json!(round(throttled_share, 4)));
    out.insert("capacity_share".into(), json!(round(capacity_share, 3)));
    out.insert(
        "throttle".into(),
        json!({
            "hidden_rate": options.rate, "partner_rate_per_second": options.partner_rate,
            "seconds": round(t.seconds, 1), "pacer_every_s": options.pacer_every,
            "invocations": options.throttle_invocations,
            "requests": r.total_requests, "accepted": r.accepted, "throttled": r.throttled,
            "delivered_per_s": round(delivered_rate, 1), "max_requests_in_one_second": r.max_requests_in_one_second,
            "dead_clicks": t.dead, "duplicate_accepted_keys": r.duplicate_accepted_keys,
            "pacer_runs": t.pacer_runs, "released_clicks": t.released_clicks,
        }),
    );
    Ok(())
}
