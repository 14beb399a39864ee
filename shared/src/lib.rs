//! ClickPacer's library crate.
//!
//! - [`config`], [`telemetry`]: what every function needs at cold start; [`invocation`]: the time it has.
//! - [`domain`]: the business model (campaigns, partners, batches and their state machine). Pure: nothing here
//!   knows about AWS or PostgreSQL.
//! - [`stats`]: delivery statistics rolled up per minute and per hour (pure, like [`domain`]).
//! - [`postgres`], [`aws`]: the adapters that implement the ports against real services.
//! - [`testing`] (feature `testing`): the one integration-test harness every crate's tests use.

pub mod config;
pub mod delivery;
pub mod domain;
pub mod ingest;
pub mod invocation;
pub mod pacing;
pub mod postgres;
pub mod release;
pub mod stats;
pub mod telemetry;

pub mod aws;

#[cfg(feature = "testing")]
pub mod testing;
