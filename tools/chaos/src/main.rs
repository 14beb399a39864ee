//! `clickpacer-chaos`: fault injection on the real pipeline (see `docs/reliability.md`).
//!
//!   clickpacer-chaos run [--rounds N] [--seed S] [--clicks N]   rounds of faults, invariants checked after each
//!   clickpacer-chaos worker --role slicer|pacer|bridge --prefix P   one worker process (started by `run`)
//!
//! Reads DATABASE_URL and the AWS SDK's AWS_ENDPOINT_URL / AWS_REGION, as the functions do; `scripts/chaos`
//! sets them, and CLICKPACER_PG_BINDIR / CLICKPACER_PG_DATA (and CLICKPACER_PG_USER) when it owns the
//! PostgreSQL cluster, for restarts.

use clap::{Parser, Subcommand};
use clickpacer::config::{DatabaseConfig, Env};

use chaos::{Role, RunOptions, worker};

#[derive(Parser)]
#[command(about = "Fault injection on the real ClickPacer pipeline, with every invariant checked after each round")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run rounds of faults against workers started as processes; exit non-zero if an invariant breaks.
    Run {
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seed of every random choice: the same seed replays the same faults in the same order.
        #[arg(long)]
        seed: Option<u64>,
        /// Rows per click file (each round drops one file per campaign).
        #[arg(long, default_value_t = 300)]
        clicks: u32,
        /// Seconds of faults per round, before the pipeline is left to drain.
        #[arg(long, default_value_t = 12)]
        fault_seconds: u64,
    },
    /// One worker: the slicer's, the pacer's or the bridge's trigger loop, as its own process.
    Worker {
        #[arg(long, value_enum)]
        role: Role,
        /// Names of the bucket, queues and table (shared with the runner).
        #[arg(long)]
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clickpacer::telemetry::init();
    let cli = Cli::parse();
    let env = Env::from_process();
    let database = DatabaseConfig::from_env(&env)?;
    match cli.command {
        Command::Worker { role, prefix } => worker::run(role, &prefix, &database).await,
        Command::Run { rounds, seed, clicks, fault_seconds } => {
            let seed = seed.unwrap_or_else(|| fastrand::u64(..1_000_000));
            let options = RunOptions {
                rounds,
                seed,
                clicks,
                fault_seconds,
                postgres: chaos::faults::PostgresControl::from_env(&env),
            };
            let passed = chaos::run(options, &database).await?;
            std::process::exit(if passed { 0 } else { 1 });
        }
    }
}
