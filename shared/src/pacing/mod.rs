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
//! - **Rate windows** ([`RateWindow`]): fixed UTC windows aligned to the second, minute and hour, stored as
//!   `(window start, count)` pairs for every window still ahead ([`WindowCounts`]). Limits hold in every window. Minute and hour limits accrue second by second
//!   within their window so they never turn into a burst at the window's start.
//! - **Plan window**: the part of the local day inside the flight. A flight that starts or ends mid-day gets the
//!   whole day's volume spread over that part, so a short flight still delivers its daily cap.
//! - **Day's volume**: the daily cap or what the daily budget buys (`floor(daily_budget / cost_per_click)`),
//!   whichever is smaller. With neither, it is what was already released today plus what is pending now: the
//!   waiting clicks are spread over the rest of the day at the day's average rate. New clicks arriving mid-day raise
//!   the volume, and the share of them that the plan says is already due goes at once (bounded by the rate limits).
//! - **Even**: `due(t) = ceil(volume × elapsed(t) / plan window)`, where `elapsed` counts the current second
//!   (so the first click may go in the first second and the full volume is due in the last). Allowed =
//!   `due - released today`, bounded when behind plan by the campaign's catch-up setting (below).
//! - **Catch-up** ([`crate::domain::CatchUp`], for even and curve pacing): what happens when delivery is behind
//!   plan (a file dropped at 15:00, a pause, a pacer or partner outage).
//!   - `spread` (the default): what is still to go spreads over the rest of the plan window along the plan's own
//!     shape, even (or along the curve) from now on. From the start of each UTC hour `h`, with `R_h` the
//!     clicks the day released before `h`: `due_catch_up(t) = R_h + ceil((volume - R_h) × accrued(h, t) /
//!     accrued(h, window end))`, and allowed = `min(due(t), due_catch_up(t)) - released today`. On plan the two
//!     are the same; behind plan the catch-up line lies below the plan's, so it is never ahead of plan. Re-planned
//!     every hour, a campaign that falls behind mid-hour releases at most that hour's share of its spread at once.
//!   - `ahead` with a percent (100-1000; DV360's "ahead" is about 120): the same schedule at that percent of its
//!     pace, so a campaign behind plan catches up within the day at a bounded speed, never ahead of plan.
//!   - `asap`: behind plan is caught up at once, rate limits permitting.
//! - **Hourly curve**: the same with time weighted by the local hour's weight: a repeated hour on a fall-back day
//!   counts twice, a skipped one not at all, a 30-minute Lord Howe hour half, and the day still sums to its volume.
//!   Nothing goes in a zero-weight hour, even behind plan; catching up follows the catch-up setting, as for even.
//! - **Budgets** limit only paid clicks (`cost_per_click > 0`); free clicks are limited by caps and rates.
//!
//! All arithmetic on clicks and money is integer, so every pacer computes the same numbers.

mod calendar;
mod day_view;
mod engine;
mod state;
mod status;

#[cfg(test)]
mod proptests;

pub use calendar::{LocalDay, LocalHour, local_date, local_hour};
pub use day_view::{DayInputs, DayView, HourView, MinuteActuals, day_view};
pub use engine::{Allowance, DayPlan, DeferReason, PlanSpread, allowance, cap_short_of, day_plan, plan_spread};
pub use state::{Overdue, PacingState, PartnerLimit, RateWindow, WindowCounts};
pub use status::{DeliveryState, DeliveryStatus, PendingWork, delivery_status};
