//! Pacing engine: how many clicks may go now, and when the next release can happen. Pure: no I/O.
//!
//! The pacer loads a campaign, its [`PacingState`] and its partner's [`PartnerLimit`] in the claim transaction,
//! asks [`allowance`], reserves that many clicks (and their spend) with [`PacingState::record_release`]'s update,
//! and commits before sending. Because the answer depends only on committed counters and the clock, concurrent
//! pacers cannot together exceed a cap, a budget or a rate: each one's reservation is serialised by the row lock.
//!
//! # Definitions
//!
//! - **Local day** ([`LocalDay`]): `[first instant of local date D, first instant of the next local date)` in the
//!   campaign's IANA zone, so 23 or 25 hours on DST changes; a skipped midnight starts the day at the first valid
//!   instant, a repeated one at the earlier. Daily caps and daily budgets reset exactly at its end.
//! - **Rate windows** ([`RateWindow`]): fixed UTC windows aligned to the second, minute and hour, each stored as
//!   one `(window start, count)` pair. Limits hold in every window. Minute and hour limits accrue second by second
//!   within their window so they never turn into a burst at the window's start.
//! - **Plan window**: the part of the local day inside the flight. A flight that starts or ends mid-day gets the
//!   whole day's volume spread over that part, so a short flight still delivers its daily cap.
//! - **Day's volume**: the daily cap or what the daily budget buys (`floor(daily_budget / cost_per_click)`),
//!   whichever is smaller. With neither, it is what was already released today plus what is pending now: the
//!   waiting clicks are spread over the rest of the day at the day's average rate. New clicks arriving mid-day raise
//!   the volume, and the share of them that the plan says is already due goes at once (bounded by the rate limits).
//! - **Even**: `due(t) = ceil(volume × elapsed(t) / plan window)`, where `elapsed` counts the current second
//!   (so the first click may go in the first second and the full volume is due in the last). Allowed =
//!   `due - released today`: behind plan (a late upload, a pacer outage) is caught up at once, rate limits permitting.
//! - **Hourly curve**: the same with time weighted by the local hour's weight: a repeated hour on a fall-back day
//!   counts twice, a skipped one not at all, a 30-minute Lord Howe hour half, and the day still sums to its volume.
//!   Nothing goes in a zero-weight hour, even behind plan.
//! - **Budgets** limit only paid clicks (`cost_per_click > 0`); free clicks are limited by caps and rates.
//!
//! All arithmetic on clicks and money is integer, so every pacer computes the same numbers.

mod calendar;
mod engine;
mod state;

#[cfg(test)]
mod proptests;

pub use calendar::{LocalDay, LocalHour, local_date, local_hour};
pub use engine::{Allowance, DeferReason, PlanSpread, allowance, plan_spread};
pub use state::{PacingState, PartnerLimit, RateWindow, WindowCounts};
