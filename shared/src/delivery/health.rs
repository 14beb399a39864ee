//! A partner's observed health: the adaptive allowance (AIMD, as TCP congestion control) that scales the rate the
//! pacer releases for it, and the Retry-After pause.
//!
//! The rules, per observed outcome:
//! - **Throttled** (429, 503): the allowance is halved (multiplicative decrease, floor [`MIN_ALLOWANCE`]) and the
//!   partner is paused until its Retry-After (or [`DEFAULT_THROTTLE_PAUSE`] without one). Answers that arrive
//!   while the partner is already paused come from requests sent before the pause (one overload episode), so they
//!   extend the pause but do not halve again: one decrease per episode, as TCP cuts once per round trip, not once
//!   per lost packet. Without that, 16 concurrent requests answered 429 together would cut 16 times.
//! - **Other retryable errors** (5xx, timeouts, resets): counted in `consecutive_failures`; every
//!   [`ERRORS_BEFORE_DECREASE`] consecutive ones halve the allowance (a failing partner is often an overloaded
//!   one), while an isolated error does not.
//! - **Delivered**: `consecutive_failures` resets and the allowance grows by [`INCREASE_PER_SUCCESS`] (additive
//!   increase: +0.05 per 10 deliveries, so from the floor back to 1 takes 190 deliveries), capped at 1.
//! - **Permanent** answers (4xx) say nothing about load: they reset `consecutive_failures` only.
//! - **Time**: an allowance recovers by [`RECOVERY_PER_IDLE_SECOND`] for every second since the row last changed
//!   ([`PartnerHealth::allowance_after`]). With its allowance cut low, a partner may get too little rate for a
//!   whole batch to go, and then nothing is sent and no delivery can raise it again; a partner that has had no
//!   news for a while has had that long to recover, as TCP restarts after an idle period.
//!
//! The state is the `partner_health` row (allowance, retry_after_until, consecutive_failures). A bridge pass
//! loads it, applies its outcomes in order for its own decisions, and records them as a [`HealthChange`]:
//! arithmetic applied to the row as it is then, in one statement, so concurrent passes compose.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::Outcome;

/// The lowest allowance: a throttled partner still gets this share of its rate (at least the probe traffic that
/// shows it recovered).
pub const MIN_ALLOWANCE: f64 = 0.05;
/// Multiplicative decrease on throttling.
pub const DECREASE_FACTOR: f64 = 0.5;
/// Additive increase per delivered click.
pub const INCREASE_PER_SUCCESS: f64 = 0.005;
/// What an allowance recovers per second without news (from the floor back to 1 in under a minute).
pub const RECOVERY_PER_IDLE_SECOND: f64 = 0.02;
/// Consecutive non-throttling failures that count as one overload signal.
pub const ERRORS_BEFORE_DECREASE: u32 = 3;
/// The pause after a 429/503 without Retry-After.
pub const DEFAULT_THROTTLE_PAUSE: TimeDelta = TimeDelta::seconds(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerHealth {
    /// Fraction of the partner's configured rate the pacer may use, in `[MIN_ALLOWANCE, 1]`.
    pub allowance: f64,
    /// No request to this partner before this instant.
    pub retry_after_until: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
}

impl Default for PartnerHealth {
    fn default() -> Self {
        Self { allowance: 1.0, retry_after_until: None, consecutive_failures: 0 }
    }
}

impl PartnerHealth {
    /// A stored state made sane: an allowance outside `[MIN_ALLOWANCE, 1]` (or NaN) is brought inside.
    pub fn normalised(mut self) -> Self {
        self.allowance = clamp_allowance(self.allowance);
        self
    }

    /// The allowance at `now` of a row last changed at `updated_at`: recovered for the time without news.
    pub fn allowance_after(&self, updated_at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
        let idle = (now - updated_at).as_seconds_f64().max(0.0);
        clamp_allowance(self.allowance + idle * RECOVERY_PER_IDLE_SECOND)
    }

    /// Whether nothing may be sent to the partner at `now` (Retry-After).
    pub fn is_paused(&self, now: DateTime<Utc>) -> bool {
        self.retry_after_until.is_some_and(|until| until > now)
    }

    pub fn on_success(&mut self) -> Step {
        self.consecutive_failures = 0;
        self.allowance = clamp_allowance(self.allowance + INCREASE_PER_SUCCESS);
        Step::Increase
    }

    /// A 429 or 503, with the instant its Retry-After names, if any.
    pub fn on_throttled(&mut self, now: DateTime<Utc>, retry_after: Option<DateTime<Utc>>) -> Step {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let step = if self.is_paused(now) { Step::Failure } else { self.decrease() };
        let until = retry_after.unwrap_or(now + DEFAULT_THROTTLE_PAUSE);
        self.retry_after_until = Some(self.retry_after_until.map_or(until, |current| current.max(until)));
        step
    }

    /// A retryable failure that is not throttling (5xx, 408, 425, timeout, connection error).
    pub fn on_error(&mut self) -> Step {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures.is_multiple_of(ERRORS_BEFORE_DECREASE) { self.decrease() } else { Step::Failure }
    }

    /// A permanent answer: the partner is up and not overloaded, but nothing was delivered.
    pub fn on_permanent(&mut self) -> Step {
        self.consecutive_failures = 0;
        Step::Reset
    }

    /// Applies one attempt's outcome.
    pub fn observe(&mut self, outcome: &Outcome, now: DateTime<Utc>) -> Step {
        match outcome {
            Outcome::Delivered => self.on_success(),
            Outcome::Retry { throttled: true, after, .. } => self.on_throttled(now, *after),
            Outcome::Retry { .. } => self.on_error(),
            Outcome::Permanent(_) => self.on_permanent(),
        }
    }

    fn decrease(&mut self) -> Step {
        self.allowance = clamp_allowance(self.allowance * DECREASE_FACTOR);
        Step::Decrease
    }
}

/// What one observation did to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A delivery: the streak of failures ended and the allowance grew additively.
    Increase,
    /// An overload signal: the streak grew and the allowance was cut multiplicatively.
    Decrease,
    /// A failure that changed only the streak.
    Failure,
    /// A permanent answer: the streak ended.
    Reset,
}

/// A delivery pass's observations, as arithmetic on whatever the stored state is when the pass records them:
/// `allowance × factor + increase` (then clamped), the failure streak continued or restarted, and the pause
/// extended. Other bridges write the same row meanwhile; a pass that stored the value it computed from what it
/// loaded would erase their cuts (the last writer wins), while these compose: a cut made anywhere holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthChange {
    pub factor: f64,
    pub increase: f64,
    /// Failures since the pass's last delivery or permanent answer (all of its observations, if it had none).
    pub failures: u32,
    /// The pass saw a delivery or a permanent answer: the stored streak restarts at `failures`.
    pub streak_ended: bool,
    pub retry_after_until: Option<DateTime<Utc>>,
}

impl Default for HealthChange {
    fn default() -> Self {
        Self { factor: 1.0, increase: 0.0, failures: 0, streak_ended: false, retry_after_until: None }
    }
}

impl HealthChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn record(&mut self, step: Step, retry_after_until: Option<DateTime<Utc>>) {
        match step {
            Step::Increase => {
                self.increase += INCREASE_PER_SUCCESS;
                (self.failures, self.streak_ended) = (0, true);
            }
            Step::Decrease => {
                self.factor *= DECREASE_FACTOR;
                self.increase *= DECREASE_FACTOR;
                self.failures += 1;
            }
            Step::Failure => self.failures += 1,
            Step::Reset => (self.failures, self.streak_ended) = (0, true),
        }
        self.retry_after_until = self.retry_after_until.max(retry_after_until);
    }

    /// The change applied to a stored allowance (already recovered for its idle time).
    pub fn allowance_from(&self, stored: f64) -> f64 {
        clamp_allowance(stored * self.factor + self.increase)
    }
}

/// The state a pass loaded, moved by what it observes (its decisions within the pass), and the same
/// observations as a [`HealthChange`] to record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedHealth {
    pub health: PartnerHealth,
    pub change: HealthChange,
}

impl ObservedHealth {
    pub fn new(health: PartnerHealth) -> Self {
        Self { health, change: HealthChange::default() }
    }

    pub fn observe(&mut self, outcome: &Outcome, now: DateTime<Utc>) {
        let step = self.health.observe(outcome, now);
        self.change.record(step, self.health.retry_after_until);
    }
}

fn clamp_allowance(value: f64) -> f64 {
    if value.is_nan() { MIN_ALLOWANCE } else { value.clamp(MIN_ALLOWANCE, 1.0) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_allowance_recovers_with_time() {
        let t0: DateTime<Utc> = "2026-11-28T10:00:00Z".parse().unwrap();
        let health = PartnerHealth { allowance: MIN_ALLOWANCE, ..PartnerHealth::default() };
        assert_eq!(health.allowance_after(t0, t0), MIN_ALLOWANCE);
        assert!((health.allowance_after(t0, t0 + TimeDelta::seconds(10)) - 0.25).abs() < 1e-9);
        assert_eq!(health.allowance_after(t0, t0 + TimeDelta::minutes(5)), 1.0);
        assert_eq!(health.allowance_after(t0, t0 - TimeDelta::seconds(10)), MIN_ALLOWANCE, "a clock behind");
    }

    use chrono::TimeZone;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
    }

    #[test]
    fn throttling_halves_once_per_episode_and_pauses() {
        let mut h = PartnerHealth::default();
        let until = t0() + TimeDelta::seconds(5);
        h.on_throttled(t0(), Some(until));
        assert_eq!(h.allowance, 0.5);
        assert_eq!(h.retry_after_until, Some(until));
        assert!(h.is_paused(t0()) && !h.is_paused(until));
        // The other in-flight requests of the same burst come back 429 too: no further cut.
        for _ in 0..15 {
            h.on_throttled(t0() + TimeDelta::milliseconds(20), None);
        }
        assert_eq!(h.allowance, 0.5);
        assert_eq!(h.retry_after_until, Some(until), "a shorter default pause does not shorten Retry-After");
        assert_eq!(h.consecutive_failures, 16);
        // After the pause, a new 429 is a new episode.
        h.on_throttled(until, None);
        assert_eq!(h.allowance, 0.25);
        assert_eq!(h.retry_after_until, Some(until + DEFAULT_THROTTLE_PAUSE));
    }

    #[test]
    fn the_allowance_has_a_floor_and_recovers_additively() {
        let mut h = PartnerHealth::default();
        let mut now = t0();
        for _ in 0..20 {
            h.on_throttled(now, None);
            now += TimeDelta::seconds(2);
        }
        assert_eq!(h.allowance, MIN_ALLOWANCE);
        h.on_success();
        assert_eq!(h.consecutive_failures, 0);
        assert!((h.allowance - 0.055).abs() < 1e-9);
        for _ in 0..189 {
            h.on_success();
        }
        assert!((h.allowance - 1.0).abs() < 1e-9, "{}", h.allowance);
        h.on_success();
        assert_eq!(h.allowance, 1.0);
    }

    #[test]
    fn errors_cut_only_when_they_persist() {
        let mut h = PartnerHealth::default();
        h.on_error();
        h.on_error();
        assert_eq!(h.allowance, 1.0);
        h.on_success();
        h.on_error();
        h.on_error();
        assert_eq!(h.allowance, 1.0, "the streak restarted");
        h.on_error();
        assert_eq!(h.allowance, 0.5);
        assert_eq!(h.consecutive_failures, 3);
        assert!(!h.is_paused(t0()), "errors do not pause");
        for _ in 0..3 {
            h.on_error();
        }
        assert_eq!(h.allowance, 0.25);
        h.on_permanent();
        assert_eq!((h.allowance, h.consecutive_failures), (0.25, 0));
    }

    #[test]
    fn outcomes_drive_the_state() {
        let mut h = PartnerHealth::default();
        let after = t0() + TimeDelta::seconds(3);
        h.observe(
            &Outcome::Retry { after: Some(after), throttled: true, ambiguous: false, reason: String::new() },
            t0(),
        );
        assert_eq!((h.allowance, h.retry_after_until), (0.5, Some(after)));
        h.observe(&Outcome::Delivered, after);
        assert!((h.allowance - 0.505).abs() < 1e-9);
        h.observe(&Outcome::Permanent("404".into()), after);
        assert!((h.allowance - 0.505).abs() < 1e-9);
        for _ in 0..3 {
            h.observe(&Outcome::Retry { after: None, throttled: false, ambiguous: true, reason: String::new() }, after);
        }
        assert!((h.allowance - 0.2525).abs() < 1e-9);
    }

    #[test]
    fn a_change_applied_to_what_was_loaded_gives_what_the_pass_computed() {
        let error = Outcome::Retry { after: None, throttled: false, ambiguous: false, reason: String::new() };
        let mut observed = ObservedHealth::new(PartnerHealth { allowance: 0.8, ..PartnerHealth::default() });
        for outcome in [&Outcome::Delivered, &error, &error, &error, &Outcome::Delivered, &error] {
            observed.observe(outcome, t0());
        }
        assert!((observed.change.allowance_from(0.8) - observed.health.allowance).abs() < 1e-9);
        assert_eq!((observed.change.failures, observed.change.streak_ended), (1, true));
        // Applied to a row another pass cut meanwhile, the cut holds.
        assert!(observed.change.allowance_from(0.2) < 0.2);
    }

    #[test]
    fn stored_values_are_normalised() {
        let h = PartnerHealth { allowance: f64::NAN, ..PartnerHealth::default() }.normalised();
        assert_eq!(h.allowance, MIN_ALLOWANCE);
        let h = PartnerHealth { allowance: 7.0, ..PartnerHealth::default() }.normalised();
        assert_eq!(h.allowance, 1.0);
    }
}
