//! `partner-sim`: a partner endpoint simulator on 127.0.0.1 (see the library docs for the endpoints).

use std::io::Write;

use clap::Parser;
use partner_sim::{Behaviour, Config, Simulator, serve_simulator};

/// A partner endpoint simulator for tests, the demo and benchmarks. Deliveries go to /p/{partner}/...; GET /report
/// says what was received; POST /control/partners/{partner} sets one partner's behaviour; POST /reset clears.
#[derive(Debug, Parser)]
#[command(name = "partner-sim", version)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the first line printed names it).
    #[arg(long, env = "PARTNER_SIM_PORT", default_value_t = 0)]
    port: u16,
    /// Delay before answering each admitted request.
    #[arg(long, env = "PARTNER_SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of admitted requests answered 500.
    #[arg(long, env = "PARTNER_SIM_ERROR_RATE", default_value_t = 0.0, value_parser = fraction)]
    error_rate: f64,
    /// Hidden limit: requests per wall-clock second per partner beyond which the answer is 429.
    #[arg(long, env = "PARTNER_SIM_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Seconds in the Retry-After of 429 (and overridden 503) answers.
    #[arg(long, env = "PARTNER_SIM_RETRY_AFTER_S", default_value_t = 1)]
    retry_after_s: u64,
    /// Body of successful answers.
    #[arg(long, env = "PARTNER_SIM_BODY", default_value = "OK")]
    body: String,
    /// Answer every admitted request with this status.
    #[arg(long, env = "PARTNER_SIM_STATUS_OVERRIDE")]
    status_override: Option<u16>,
    /// Fraction of admitted requests accepted and then answered by closing the connection.
    #[arg(long, env = "PARTNER_SIM_RESET_RATE", default_value_t = 0.0, value_parser = fraction)]
    reset_rate: f64,
    /// Require a valid X-ClickPacer-Signature made with this secret (else 401).
    #[arg(long, env = "PARTNER_SIM_SIGNING_SECRET")]
    signing_secret: Option<String>,
    /// How many recent requests the report lists.
    #[arg(long, env = "PARTNER_SIM_KEEP_LAST", default_value_t = 100)]
    keep_last: usize,
    /// Seed for the error and reset draws.
    #[arg(long, env = "PARTNER_SIM_SEED")]
    seed: Option<u64>,
}

fn fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{value:?} is not a fraction in [0, 1]")),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = Config {
        defaults: Behaviour {
            latency_ms: args.latency_ms,
            error_rate: args.error_rate,
            rate_limit: args.rate_limit,
            status_override: args.status_override,
            body: args.body,
            retry_after_s: args.retry_after_s,
            retry_after_as_date: false,
            reset_rate: args.reset_rate,
            signing_secret: args.signing_secret,
        },
        keep_last: args.keep_last,
        seed: args.seed,
    };
    if let Err(e) = config.defaults.validate() {
        eprintln!("partner-sim: {e}");
        std::process::exit(2);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve_simulator(listener, Simulator::new(config), shutdown).await
}
