//! Benchmarks. Each prints its figures as it goes and, last, one JSON object.
//!
//!   scripts/bench slicer [--rows N] [--format parquet]
//!                                      ingest N generated clicks from the local S3 (default 1,000,000) as
//!                                      CSV, and with `--format parquet` as Parquet too, in the same run
//!   scripts/bench pacer [--batches N]  claim + reserve + mark throughput with 1, 2, 4 and 8 pacers over N due
//!                                      batches (default 200,000), one run through the local SQS, pacing accuracy
//!                                      over a simulated day, release latency (see pacer_bench.rs)
//!   scripts/bench bridge [options]     deliveries/s, the HTTP limit, a hidden rate limit (see bridge_bench.rs)
//!   scripts/bench pacing [--seconds S] pacers and bridges together, judged by arrivals at the partners (see
//!                                      pacing_bench.rs)
//!   scripts/bench stats [--clicks N]   a 30-day statistics query through the API at N delivery outcomes
//!                                      (default 10,000,000), with the raw-table query as baseline (stats_bench.rs)
//!   scripts/bench pipeline [--clicks N] the local runtime as `scripts/demo run` runs it, one file of N clicks
//!                                      (default 1,000,000) end to end, against the bridge alone (pipeline_bench.rs)
//!
//! `scripts/bench` starts (or reuses) PostgreSQL and the local AWS endpoint, as the tests do.

mod bridge_bench;
mod pacer_bench;
mod pacing_bench;
mod pipeline_bench;
mod slicer_bench;
mod stats_bench;

use anyhow::{Context, bail};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(which) = args.first() else { bail!("usage: bench slicer|pacer|bridge|pacing|stats|pipeline [options]") };
    let rows = match args.iter().position(|a| a == "--rows") {
        Some(i) => args.get(i + 1).context("--rows needs a number")?.replace('_', "").parse()?,
        None => 1_000_000,
    };
    let batches = match args.iter().position(|a| a == "--batches") {
        Some(i) => args.get(i + 1).context("--batches needs a number")?.replace('_', "").parse()?,
        None => 200_000,
    };
    match which.as_str() {
        "slicer" => {
            let format = match args.iter().position(|a| a == "--format") {
                Some(i) => slicer_bench::Format::parse(args.get(i + 1).context("--format needs csv or parquet")?)?,
                None => slicer_bench::Format::Csv,
            };
            slicer_bench::run(rows, format).await
        }
        "pacer" => pacer_bench::run(batches).await,
        "bridge" => bridge_bench::run(&args).await,
        "pacing" => pacing_bench::run(&args).await,
        "stats" => stats_bench::run(&args).await,
        "pipeline" => pipeline_bench::run(&args).await,
        other => bail!("unknown benchmark {other:?}: use slicer, pacer, bridge, pacing, stats or pipeline"),
    }
}

/// Peak resident set size of this process since the last [`reset_peak_rss`], in MiB.
pub fn peak_rss_mib() -> f64 {
    peak_rss_of(std::process::id())
}

/// Peak resident set size of a process so far (`VmHWM`), in MiB; 0 when it cannot be read.
pub fn peak_rss_of(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Starts a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
