//! Delivery statistics: per-minute and per-hour rollups of released, delivered, failed, throttled and dead
//! clicks, spend and latency. Pure: the PostgreSQL adapter (`crate::postgres::stats`) stores and reads them.

mod histogram;
mod rollup;

pub use histogram::{BOUNDS_MS, BUCKETS, LatencyHistogram, LatencySummary};
pub use rollup::{Attempt, AttemptOutcome, Counts, Granularity, StatsPoint, series, tally};
