//! `clickpacer-local`: ClickPacer on one machine (see the README's "Run it locally").
//!
//!   clickpacer-local demo [--clicks N] [--fast] [--until-drained]   seed the demo and run the pipeline
//!   clickpacer-local run [--fast]                                   run the pipeline (upload your own files)
//!   clickpacer-local reconcile                                      print the reconciliation and exit
//!   clickpacer-local api [--api-port P] [--names-prefix X]          serve only the management API
//!
//! Reads DATABASE_URL and the AWS SDK's AWS_ENDPOINT_URL / AWS_REGION, as the functions do.

use std::time::Duration;

use clap::{Parser, Subcommand};
use clickpacer::config::{DatabaseConfig, Env};
use clickpacer::postgres::replay::{self, ReplayScope};
use local::{Names, Pipeline, Timing, demo, render_partner_report, render_reconciliation};
use tokio::sync::watch;

#[derive(Parser)]
#[command(about = "ClickPacer on one machine: the real handlers behind local S3, SQS, schedule and partners")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seed partners, campaigns and click files, then run the pipeline.
    Demo {
        /// Rows per generated click file.
        #[arg(long, default_value_t = 1000)]
        clicks: u32,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the pipeline: drop files with `aws s3 cp ... s3://clickpacer-uploads/incoming/<campaign>/`.
    Run {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print the reconciliation per upload and per campaign.
    Reconcile,
    /// Serve only the management API (no workers), as the local runner serves it, until stopped: for API tests
    /// (schemathesis) and a dashboard against a database of one's own.
    Api {
        #[arg(long, default_value_t = 8787)]
        api_port: u16,
        #[arg(long, default_value = "clickpacer")]
        names_prefix: String,
    },
    /// Give a campaign's dead clicks (or one batch's) another delivery; a running pipeline picks them up.
    Replay {
        /// The campaign whose dead clicks to replay.
        #[arg(long)]
        campaign: String,
        /// Only this batch's dead clicks.
        #[arg(long)]
        batch: Option<i64>,
        /// Why, kept with each replayed click's history.
        #[arg(long, default_value = "replayed by an operator")]
        reason: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Run the pacer every 5 seconds instead of every minute.
    #[arg(long)]
    fast: bool,
    /// Exit when nothing is left to do now, with a non-zero status if the reconciliation does not hold.
    #[arg(long)]
    until_drained: bool,
    /// Give up waiting for the drain after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Name the local bucket, queues and table `<PREFIX>-uploads` and so on (default `clickpacer`), so that a
    /// second runner (a test's) does not take the first one's messages.
    #[arg(long, default_value = "clickpacer")]
    names_prefix: String,
    /// Serve the management API on this local port (0: any free port). When the port is taken, any free port is
    /// used instead; the runner prints the address either way.
    #[arg(long, default_value_t = 8787)]
    api_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    clickpacer::telemetry::init_terminal(&env);
    let cli = Cli::parse();
    let database = DatabaseConfig::from_env(&env)?;
    let sdk = clickpacer::aws::load_sdk_config().await;
    let (run, clicks) = match cli.command {
        Command::Demo { clicks, run } => (run, Some(clicks)),
        Command::Run { run } => (run, None),
        Command::Reconcile => {
            let pipeline = Pipeline::start(&sdk, &database, Names::local(), Timing::default()).await?;
            let (uploads, campaigns) = pipeline.reconciliation().await?;
            let (text, ok) = render_reconciliation(&uploads, &campaigns);
            print!("{text}");
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Api { api_port, names_prefix } => {
            let pipeline =
                Pipeline::start(&sdk, &database, Names::with_prefix(&names_prefix), Timing::default()).await?;
            let api = serve_api(api_state(&pipeline), api_port).await?;
            println!("api: http://{api} (OpenAPI document at /openapi.json)");
            stop_requested().await;
            return Ok(());
        }
        Command::Replay { campaign, batch, reason } => {
            let campaign_id = clickpacer::domain::CampaignId::parse(campaign).map_err(|e| anyhow::anyhow!("{e}"))?;
            let pool = clickpacer::postgres::build_pool(&database)?;
            let mut client = pool.get().await?;
            if clickpacer::postgres::campaigns::get(&**client, &campaign_id).await?.is_none() {
                anyhow::bail!("unknown campaign {campaign_id}");
            }
            let scope = ReplayScope { campaign_id, batch_ids: batch.into_iter().collect() };
            let replayed = replay::replay_dead(&mut client, &scope, &reason).await?;
            println!(
                "replayed {} dead clicks in {} batches of {}",
                replayed.clicks, replayed.batches, scope.campaign_id
            );
            return Ok(());
        }
    };
    let timing = Timing { pacer_every: Duration::from_secs(if run.fast { 5 } else { 60 }), ..Timing::default() };
    let pipeline = Pipeline::start(&sdk, &database, Names::with_prefix(&run.names_prefix), timing).await?;
    let sim = partner_sim::spawn(partner_sim::Config::default()).await?;
    demo::seed_partners(&pipeline.pool, &sim).await?;
    let (requeued, resumed) = pipeline.resume().await?;
    if requeued + resumed > 0 {
        println!("resuming: {requeued} queued batches sent again, {resumed} unfinished uploads restarted");
    }
    if let Some(clicks) = clicks {
        let campaigns = demo::seed_campaigns(&pipeline.pool, clicks).await?;
        let files = demo::generate_files(std::path::Path::new(".local/demo"), &campaigns, clicks)?;
        let put = demo::upload(&pipeline.objects, &pipeline.upload_events, &pipeline.names.bucket, &files).await?;
        println!(
            "demo: {} campaigns, {put} click files put into s3://{}/incoming/",
            campaigns.len(),
            pipeline.names.bucket
        );
    }
    let api = serve_api(api_state(&pipeline), run.api_port).await?;
    println!("api: http://{api} (OpenAPI document at /openapi.json)");
    println!(
        "partners: simulator at {}; pacer every {} s; bucket s3://{}/incoming/<campaign>/",
        sim.url(),
        pipeline.timing.pacer_every.as_secs(),
        pipeline.names.bucket
    );

    let last = std::sync::Mutex::new(String::new());
    let show = |progress: &local::Progress| {
        let table = progress.render();
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != table {
            println!("{}\n{table}", chrono::Utc::now().format("%H:%M:%S"));
            *last = table;
        }
    };
    if run.until_drained {
        let drained = tokio::select! {
            drained = pipeline.run_until_drained(Duration::from_secs(run.timeout), show) => drained?,
            _ = stop_requested() => false,
        };
        let (uploads, campaigns) = pipeline.reconciliation().await?;
        let (text, ok) = render_reconciliation(&uploads, &campaigns);
        print!("{text}");
        let report = sim.sim.report();
        print!("{}", render_partner_report(&report));
        if !drained {
            println!("stopped before the pipeline drained");
        }
        std::process::exit(if ok && report.duplicate_accepted_keys == 0 { 0 } else { 1 });
    }
    let (stop, stopped) = watch::channel(false);
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Ok(progress) = pipeline.progress().await {
                show(&progress);
            }
        }
    };
    tokio::select! {
        _ = pipeline.run(stopped) => {}
        _ = ticker => {}
        _ = stop_requested() => { let _ = stop.send(true); }
    }
    let (uploads, campaigns) = pipeline.reconciliation().await?;
    print!("{}", render_reconciliation(&uploads, &campaigns).0);
    print!("{}", render_partner_report(&sim.sim.report()));
    Ok(())
}

/// What the management API works with locally: the pipeline's database, bucket and queues.
fn api_state(pipeline: &Pipeline) -> api::AppState {
    api::AppState {
        pool: pipeline.pool.clone(),
        objects: pipeline.objects.clone(),
        upload_bucket: pipeline.names.bucket.clone(),
        queues: Some(api::Queues { click: pipeline.click_queue.clone(), dead_letter: pipeline.dead_letters.clone() }),
        events: Some(pipeline.bridge.events.clone()),
        transport: pipeline.bridge.transport.clone(),
        // The simulated partners listen on loopback, as the bridge is allowed to reach locally.
        allow_private_partners: true,
    }
}

/// Serves the management API's router, the one Lambda serves, on 127.0.0.1 until the runner exits.
async fn serve_api(state: api::AppState, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(port, error = %e, "API port taken; using any free port");
            tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?
        }
    };
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) =
            axum::serve(listener, api::router(state).layer(axum::Extension(api::auth::Caller::local_admin()))).await
        {
            tracing::error!(error = %e, "the API server stopped");
        }
    });
    Ok(addr)
}

/// Ctrl-C, or SIGINT or SIGTERM to this process (a service manager, `kill`, or `scripts/demo` passing on the one it
/// got): the runner stops what it runs and prints its reconciliation.
async fn stop_requested() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
