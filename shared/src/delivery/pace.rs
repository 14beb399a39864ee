//! Send-time pacing for a partner without a configured rate: the bridge finds the rate the partner takes and
//! spaces its requests to it, across every concurrent bridge, so a hidden rate limit is met with few 429s.
//!
//! The state is one row per partner (`partner_health`), updated under its row lock each time a bridge reserves
//! send slots. It is a rate-based congestion controller in the manner of TCP, with the partner's rate limiter
//! as the bottleneck:
//! - **Slow start**: a partner never throttled starts at [`initial_rate`]: what its `max_concurrency` requests at
//!   once carry if each takes [`ASSUMED_LATENCY`] (at least [`INITIAL_RATE_FLOOR`]), and doubles every
//!   [`SLOW_START_STEP`] of
//!   backlogged sending, so a partner without a limit soon runs at whatever its concurrency allows.
//! - **Throttled** (429/503, once per overload episode): sending at the pace, the rate becomes what the partner
//!   accepted in the last full second or in the second so far, whichever is more (the delivery rate it
//!   demonstrably takes, as BBR measures its bottleneck), times [`BACKOFF_MARGIN`]; sending below the pace (idle
//!   for a second, or an accepted count under [`APP_LIMITED_BELOW`] of it), or with nothing accepted, that count
//!   is our demand or an outage, not the partner's capacity (BBR ignores such app-limited samples), and the rate
//!   is cut by [`THROTTLE_CUT`] instead. Slow start ends. No slot is granted
//!   before the Retry-After instant.
//! - **Probing**: after that the rate grows by [`PROBE_GROWTH`] per [`PROBE_STEP`] of backlogged sending, so a
//!   partner that raises its limit is noticed, at the cost of an occasional throttled request.
//! - **Recovery**: blind cuts (an outage of 429s halves the rate once per Retry-After pause) measured nothing, so
//!   the rate they cut from is kept (`recover_to`, as TCP keeps `ssthresh` after a timeout) and regained at
//!   [`RECOVERY_GROWTH`] per [`RECOVERY_STEP`] once the partner answers again; a measured throttle forgets it.
//!
//! A partner with a configured rate takes its slots from the same stream at that rate (times its AIMD allowance
//! and [`CONFIGURED_RATE_MARGIN`]: see [`configured_pace`]) until it throttles below it: then the rate it showed
//! is learned as above, probed upwards the same way but never past the configured one, and after blind cuts
//! regained up to the configured rate (see [`SendPace::configured_rate_at`]). A partner that takes less than its
//! contract says is then sent what it takes, not throttled every few seconds at the contract's rate.
//!
//! A campaign with a rate limit (per second, per minute or per hour) has a stream of its own ([`CampaignStream`]):
//! each of its requests takes a slot of both, in one reservation, so its batches keep to its limits at the partner
//! even when they reach the bridges late together (their spreads long past, or released late in one minute and
//! sent in the next beside that minute's own) or after a limit was lowered. A per-second limit spaces its slots
//! ([`campaign_pace`]); per-minute and per-hour limits count the slots of each fixed UTC window, as the pacer
//! counts its releases, so a campaign behind its window's schedule may catch up at its partner's pace, as the
//! pacer lets it (see [`CampaignStream`]).
//!
//! Slots follow the generic cell rate algorithm: `next_slot` is the earliest instant the next request may go; a
//! reservation of k requests takes k slots `1/rate` apart from `max(next_slot, now, retry_after)` and moves
//! `next_slot` past them, so the partner sees one evenly spaced stream whoever sends it. A delivery pass
//! reserves for all its due clicks (up to the partner's concurrency) at once: passes are served in turn, and one
//! whose turn is further than the bridge waits goes back to the queue until it is near.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::pacing::RateWindow;

/// The share of a configured rate the slots are spaced at. Requests leave at their slots and arrive a little
/// later, each by its own delay: at `r` a second exactly, one delayed across a second's boundary would make `r + 1`
/// arrivals in that second. Spaced at 95 %, `r` intervals take 1.05 s, so it takes 50 ms of jitter to do that.
pub const CONFIGURED_RATE_MARGIN: f64 = 0.95;

/// The send rate for a partner configured at `rate_per_second` whose AIMD allowance is `allowance`.
pub fn configured_pace(rate_per_second: u32, allowance: f64) -> f64 {
    let allowance = if allowance > 0.0 { allowance.min(1.0) } else { 0.0 };
    (f64::from(rate_per_second) * allowance * CONFIGURED_RATE_MARGIN).max(MIN_RATE.min(f64::from(rate_per_second)))
}

/// A campaign's rate limits, as the bridge reads them when it takes a batch (they may have changed since the
/// release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CampaignLimits {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
}

impl CampaignLimits {
    /// Whether the campaign has a rate limit at all (its requests then take slots of its own stream).
    pub fn any(&self) -> bool {
        self.per_second.is_some() || self.per_minute.is_some() || self.per_hour.is_some()
    }
}

/// How late a request may arrive after its slot, by its own delay, without breaking a window's limit at the partner
/// (see [`campaign_pace`] and [`CampaignStream`]).
pub const ARRIVAL_JITTER: TimeDelta = TimeDelta::milliseconds(50);

/// The spacing rate of a campaign's own slots: a per-second limit of `n` at `n / (1 s + ARRIVAL_JITTER)`, so no
/// second holds more than `n` arrivals unless a request is delayed by more than [`ARRIVAL_JITTER`] against the one
/// a second earlier (5 a second go at 4.76). `None` without a per-second limit.
pub fn campaign_pace(limits: CampaignLimits) -> Option<f64> {
    limits.per_second.map(|n| f64::from(n) / (1.0 + ARRIVAL_JITTER.as_seconds_f64()))
}

/// Slots a campaign's stream granted in one fixed UTC window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSends {
    pub start: Option<DateTime<Utc>>,
    pub count: u32,
}

impl WindowSends {
    fn used_in(&self, start: DateTime<Utc>) -> u32 {
        if self.start == Some(start) { self.count } else { 0 }
    }

    fn add(&mut self, start: DateTime<Utc>, n: u32) {
        *self = Self { start: Some(start), count: self.used_in(start) + n };
    }
}

/// A campaign's own send stream: the earliest instant its next request may go (per-second spacing), and the slots
/// granted in the current UTC minute and hour. A window's limit holds at send: once its slots are granted the next
/// one waits for the next window, and no slot is granted in a window's last [`ARRIVAL_JITTER`], so a request
/// arrives in the window it was counted in.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CampaignStream {
    pub next_slot: Option<DateTime<Utc>>,
    pub minute: WindowSends,
    pub hour: WindowSends,
}

impl CampaignStream {
    /// From `first` on, the first instant at which every window limit has room, and how many slots at `interval`
    /// from there the windows take.
    fn open_at(&self, limits: CampaignLimits, mut first: DateTime<Utc>, interval: TimeDelta) -> (DateTime<Utc>, usize) {
        // Each move goes to the start of a later window, where the moved window has room: a few rounds settle it.
        for _ in 0..4 {
            let mut room = usize::MAX;
            let mut moved = false;
            for (limit, window, sends) in
                [(limits.per_minute, RateWindow::Minute, self.minute), (limits.per_hour, RateWindow::Hour, self.hour)]
            {
                let Some(limit) = limit else { continue };
                let start = window.start_of(first);
                let end = start + window.length();
                let closes = end - ARRIVAL_JITTER;
                let used = sends.used_in(start);
                if used >= limit || first >= closes {
                    first = end;
                    moved = true;
                    break;
                }
                let before_close = ((closes - first).num_microseconds().unwrap_or(i64::MAX) - 1)
                    / interval.num_microseconds().unwrap_or(1).max(1)
                    + 1;
                room = room.min((limit - used) as usize).min(before_close.max(0) as usize);
            }
            if !moved {
                return (first, room);
            }
        }
        (first, 0)
    }

    fn record(&mut self, first: DateTime<Utc>, count: usize) {
        let n = u32::try_from(count).unwrap_or(u32::MAX);
        self.minute.add(RateWindow::Minute.start_of(first), n);
        self.hour.add(RateWindow::Hour.start_of(first), n);
    }
}

/// The slowest a campaign's own stream is spaced: one request an hour.
const MIN_CAMPAIGN_RATE: f64 = 1.0 / 3600.0;

/// The spacing of a campaign's own slots at `rate` a second: unlike a partner's learned rate, a campaign's limit
/// is exact, so it has no floor of [`MIN_RATE`].
fn campaign_interval_of(rate: f64) -> TimeDelta {
    let rate = rate.clamp(MIN_CAMPAIGN_RATE, MAX_RATE);
    TimeDelta::microseconds((1_000_000.0 / rate).round().max(1.0) as i64)
}

/// The lowest starting rate: even a partner that takes one request at a time answers more than one a second.
pub const INITIAL_RATE_FLOOR: f64 = 50.0;
/// The answer time slow start assumes of a partner it knows nothing about.
pub const ASSUMED_LATENCY: TimeDelta = TimeDelta::milliseconds(100);

/// The starting rate of a partner that takes `max_concurrency` requests at once.
pub fn initial_rate(max_concurrency: u32) -> f64 {
    let per_request = ASSUMED_LATENCY.as_seconds_f64();
    (f64::from(max_concurrency) / per_request).max(INITIAL_RATE_FLOOR)
}
/// Doubling period in slow start.
pub const SLOW_START_STEP: TimeDelta = TimeDelta::milliseconds(250);
/// The share of the measured accepted rate the bridge sends at after a throttle.
pub const BACKOFF_MARGIN: f64 = 0.97;
/// The cut on a throttle that measured nothing about the partner's capacity (sending below the pace, or
/// nothing accepted): multiplicative decrease, as TCP halves its window on a loss.
pub const THROTTLE_CUT: f64 = 0.5;
/// An accepted count under this share of the pace is taken as what we asked (app-limited, in BBR's words), not as
/// what the partner takes: a partner that really takes less is found by successive cuts, a few throttles apart.
/// Low enough that the count of a second still under way (a fraction of a full one) still measures.
pub const APP_LIMITED_BELOW: f64 = 0.25;
/// Growth per [`PROBE_STEP`] once a throttle taught the partner's rate.
pub const PROBE_GROWTH: f64 = 0.01;
pub const PROBE_STEP: TimeDelta = TimeDelta::seconds(10);
/// Growth per [`RECOVERY_STEP`] back towards the rate blind cuts started from: from the floor of [`MIN_RATE`] to
/// 100 a second in about 11 s of backlogged sending.
pub const RECOVERY_GROWTH: f64 = 0.5;
pub const RECOVERY_STEP: TimeDelta = TimeDelta::seconds(1);
/// Bounds on a learned rate (requests per second).
pub const MIN_RATE: f64 = 1.0;
pub const MAX_RATE: f64 = 100_000.0;
/// Sending counts as backlogged (and grows the rate) while the next free slot is at most this far in the past.
pub const IDLE_AFTER: TimeDelta = TimeDelta::seconds(1);

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendPace {
    /// Requests per second; `None` until the partner is first sent to.
    pub rate: Option<f64>,
    /// A throttle taught the rate (the pacer may then release at it); `false` in slow start.
    pub learned: bool,
    /// When the rate last grew (or was set).
    pub grown_at: Option<DateTime<Utc>>,
    /// The rate blind cuts started from, regained quickly (see Recovery in the module doc); `None` when nothing
    /// is to be regained.
    pub recover_to: Option<f64>,
    /// The earliest instant the next request may go.
    pub next_slot: Option<DateTime<Utc>>,
    /// Requests the partner accepted per wall-clock second: the current second and the one before.
    pub window: AcceptedWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AcceptedWindow {
    pub second: Option<DateTime<Utc>>,
    pub accepted: u32,
    pub previous: u32,
}

impl AcceptedWindow {
    /// Counts `n` requests accepted during the second that holds `at`. Counts for seconds older than the
    /// window are dropped (they arrive late and no longer tell the current rate).
    pub fn add(&mut self, at: DateTime<Utc>, n: u32) {
        let second = floor_second(at);
        match self.second {
            Some(current) if second == current => self.accepted += n,
            Some(current) if second == current - TimeDelta::seconds(1) => self.previous += n,
            Some(current) if second < current => {}
            Some(current) if second == current + TimeDelta::seconds(1) => {
                *self = Self { second: Some(second), accepted: n, previous: self.accepted }
            }
            _ => *self = Self { second: Some(second), accepted: n, previous: 0 },
        }
    }

    /// The accepted rate the window shows at `now`: the more of the last full second and the current one.
    pub fn rate_at(&self, now: DateTime<Utc>) -> u32 {
        let second = floor_second(now);
        match self.second {
            Some(s) if s == second => self.accepted.max(self.previous),
            Some(s) if s == second - TimeDelta::seconds(1) => self.accepted,
            _ => 0,
        }
    }
}

/// Slots granted to one reservation: `count` requests, the first at `first`, then every `interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotGrant {
    pub first: DateTime<Utc>,
    pub interval: TimeDelta,
    pub count: usize,
}

impl SlotGrant {
    pub fn slot(&self, i: usize) -> DateTime<Utc> {
        self.first + self.interval * i as i32
    }
}

impl SendPace {
    /// The rate the pacer may release at for this partner: only a learned one (slow start limits nothing yet).
    pub fn learned_rate(&self) -> Option<f64> {
        self.rate.filter(|_| self.learned)
    }

    /// Reserves up to `want` slots no later than `horizon` after `now`, none before `paused_until`. A grant of
    /// zero slots says when the next one is free (`first`).
    pub fn reserve(
        &mut self,
        want: usize,
        now: DateTime<Utc>,
        paused_until: Option<DateTime<Utc>>,
        initial_rate: f64,
        horizon: TimeDelta,
    ) -> SlotGrant {
        let rate = self.learned_rate_at(now, initial_rate);
        self.reserve_at(want, now, paused_until, rate, horizon)
    }

    /// The learned rate to send at `now` (grown for the backlogged sending since it last grew), starting at
    /// `initial_rate`.
    pub fn learned_rate_at(&mut self, now: DateTime<Utc>, initial_rate: f64) -> f64 {
        self.grow(now, initial_rate);
        self.rate.unwrap_or(initial_rate)
    }

    /// The rate to send at `now` to a partner configured at `rate_per_second` whose AIMD allowance is
    /// `allowance`: [`configured_pace`], or less when a throttle taught that the partner takes less (the learned
    /// rate, grown while backlogged, held at the configured pace at most). Blind cuts of an outage are regained up
    /// to the configured pace, which is known, rather than to the rate before the cut.
    pub fn configured_rate_at(&mut self, now: DateTime<Utc>, rate_per_second: u32, allowance: f64) -> f64 {
        let cap = configured_pace(rate_per_second, allowance);
        if !self.learned {
            return cap;
        }
        let ceiling = configured_pace(rate_per_second, 1.0);
        if let Some(target) = self.recover_to.as_mut() {
            *target = target.max(ceiling);
        }
        self.grow(now, ceiling);
        let rate = self.rate.unwrap_or(ceiling).min(ceiling);
        if rate >= ceiling {
            // The partner takes its configured rate again: nothing learned holds it back any more.
            (self.learned, self.rate, self.recover_to, self.grown_at) = (false, None, None, None);
        } else {
            self.rate = Some(rate);
        }
        rate.min(cap)
    }

    /// [`Self::reserve`] at a rate set from outside (a partner's configured rate under its AIMD allowance) instead
    /// of the learned one, from the same slot stream and pause: every request to the partner, first attempts,
    /// retries and spread batches alike, by any bridge, takes its slot here.
    pub fn reserve_at(
        &mut self,
        want: usize,
        now: DateTime<Utc>,
        paused_until: Option<DateTime<Utc>>,
        rate: f64,
        horizon: TimeDelta,
    ) -> SlotGrant {
        self.reserve_within(want, now, paused_until, rate, horizon, None)
    }

    /// [`Self::reserve_at`] for a campaign with a stream of its own under `limits`: each slot is free in both
    /// streams, so the grant goes at the slower of the partner's rate and the campaign's per-second pace, from the
    /// later of their next slots and the first instant the campaign's minute and hour have room; it ends within one
    /// window of each. Each stream moves past the last slot by its own interval (the partner's slots between go to
    /// other campaigns), and the campaign's windows count the grant.
    pub fn reserve_within(
        &mut self,
        want: usize,
        now: DateTime<Utc>,
        paused_until: Option<DateTime<Utc>>,
        rate: f64,
        horizon: TimeDelta,
        campaign: Option<(&mut CampaignStream, CampaignLimits)>,
    ) -> SlotGrant {
        let own = interval_of(rate);
        let mut interval = own;
        let mut first = [Some(now), self.next_slot, paused_until].into_iter().flatten().max().unwrap_or(now);
        let mut windows_room = usize::MAX;
        let campaign_interval =
            campaign.as_ref().and_then(|(_, limits)| campaign_pace(*limits)).map(campaign_interval_of);
        if let Some((stream, limits)) = &campaign {
            if let Some(spacing) = campaign_interval {
                interval = interval.max(spacing);
                first = first.max(stream.next_slot.unwrap_or(first));
            }
            (first, windows_room) = stream.open_at(*limits, first, interval);
        }
        let room = (horizon - (first - now)).num_microseconds().unwrap_or(0).max(-1);
        let fits = if room < 0 { 0 } else { (room / interval.num_microseconds().unwrap_or(1)) as usize + 1 };
        let count = want.min(fits).min(windows_room);
        if count > 0 {
            let last = first + interval * (count as i32 - 1);
            self.next_slot = Some(last + own);
            if let Some((stream, _)) = campaign {
                if let Some(spacing) = campaign_interval {
                    stream.next_slot = Some(last + spacing);
                }
                stream.record(first, count);
            }
        }
        SlotGrant { first, interval, count }
    }

    /// The partner throttled at `now`. Sending at the pace, the rate becomes the accepted rate it showed (at least
    /// [`MIN_RATE`]): what it demonstrably takes. Sending below the pace, or with nothing accepted, the count
    /// tells only what we asked (or an outage), not what it takes: the rate is cut by [`THROTTLE_CUT`] instead.
    /// Called once per overload episode (not for every 429 of requests already in flight).
    pub fn on_throttled(&mut self, now: DateTime<Utc>, paused_until: DateTime<Utc>) {
        let shown = f64::from(self.window.rate_at(now));
        let backlogged = self.next_slot.is_some_and(|slot| slot >= now - IDLE_AFTER);
        let current = self.rate.unwrap_or(shown);
        // The partner took `shown`; sending at `current` was too much. A count that lags (requests still in
        // flight elsewhere) must not raise the rate.
        // Sending at a small share of the pace, the requests were our demand, not the partner's capacity.
        let at_the_pace = backlogged && shown > 0.0 && shown >= current * APP_LIMITED_BELOW;
        let measured = if at_the_pace { shown * BACKOFF_MARGIN } else { current * THROTTLE_CUT };
        let rate = measured.min(current).clamp(MIN_RATE, MAX_RATE);
        self.recover_to = if at_the_pace {
            None
        } else {
            // A learned rate was held before the cut: it is what to come back to. In slow start the rate before
            // the cut overshot, and what the cut left is the most to regain.
            let before = if self.learned { current } else { rate };
            Some(self.recover_to.map_or(before, |r| r.max(before)))
        };
        self.rate = Some(rate);
        self.learned = true;
        self.grown_at = Some(paused_until);
        self.next_slot = Some(self.next_slot.map_or(paused_until, |s| s.max(paused_until)));
    }

    fn grow(&mut self, now: DateTime<Utc>, initial_rate: f64) {
        let Some(rate) = self.rate else {
            self.rate = Some(initial_rate.clamp(MIN_RATE, MAX_RATE));
            self.grown_at = Some(now);
            return;
        };
        let grown_at = self.grown_at.unwrap_or(now);
        let backlogged = self.next_slot.is_some_and(|slot| slot >= now - IDLE_AFTER);
        if !backlogged {
            // Idle time proves nothing about the partner: it does not count towards growth.
            self.grown_at = Some(now);
            return;
        }
        let recovering = self.recover_to.filter(|target| self.learned && rate < *target);
        let (step, factor) = match (self.learned, recovering) {
            (true, Some(_)) => (RECOVERY_STEP, 1.0 + RECOVERY_GROWTH),
            (true, None) => (PROBE_STEP, 1.0 + PROBE_GROWTH),
            (false, _) => (SLOW_START_STEP, 2.0),
        };
        let steps = ((now - grown_at).num_milliseconds() / step.num_milliseconds()).max(0);
        if steps > 0 {
            let mut grown = rate * factor.powi(steps.min(64) as i32);
            if let Some(target) = recovering {
                grown = grown.min(target);
            }
            self.rate = Some(grown.clamp(MIN_RATE, MAX_RATE));
            self.grown_at = Some(grown_at + step * steps as i32);
        }
        if self.recover_to.is_some_and(|target| self.rate.is_some_and(|r| r >= target)) {
            self.recover_to = None;
        }
    }
}

/// The spacing of slots at `rate` a second (within [`MIN_RATE`] and [`MAX_RATE`]).
fn interval_of(rate: f64) -> TimeDelta {
    let rate = rate.clamp(MIN_RATE, MAX_RATE);
    TimeDelta::microseconds((1_000_000.0 / rate).round().max(1.0) as i64)
}

fn floor_second(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::seconds(1)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
    }

    fn ms(n: i64) -> TimeDelta {
        TimeDelta::milliseconds(n)
    }

    #[test]
    fn slots_are_evenly_spaced_and_shared_between_reservations() {
        let mut pace = SendPace::default();
        let a = pace.reserve(5, t0(), None, 100.0, TimeDelta::seconds(20));
        assert_eq!((a.first, a.interval, a.count), (t0(), ms(10), 5));
        let b = pace.reserve(5, t0(), None, 100.0, TimeDelta::seconds(20));
        assert_eq!(b.first, t0() + ms(50), "the second reservation continues where the first ended");
        assert_eq!(b.slot(4), t0() + ms(90));
    }

    #[test]
    fn reservations_stop_at_the_horizon_and_say_when_the_next_slot_is_free() {
        let mut pace = SendPace::default();
        let a = pace.reserve(1000, t0(), None, 10.0, TimeDelta::seconds(2));
        assert_eq!(a.count, 21, "slots at 0, 0.1, ..., 2.0 s");
        let b = pace.reserve(10, t0(), None, 10.0, TimeDelta::seconds(2));
        assert_eq!((b.count, b.first), (0, t0() + ms(2100)));
    }

    fn limits(per_second: Option<u32>, per_minute: Option<u32>, per_hour: Option<u32>) -> CampaignLimits {
        CampaignLimits { per_second, per_minute, per_hour }
    }

    #[test]
    fn a_campaigns_stream_spaces_its_own_requests_and_leaves_the_partners_slots_between_to_others() {
        let mut pace = SendPace::default();
        let mut limited = CampaignStream::default();
        let five = limits(Some(5), None, None);
        let spacing = campaign_interval_of(campaign_pace(five).unwrap());
        let a = pace.reserve_within(3, t0(), None, 40.0, TimeDelta::seconds(2), Some((&mut limited, five)));
        assert_eq!((a.first, a.count), (t0(), 3));
        assert_eq!(a.interval, spacing, "at the campaign's pace, not the partner's");
        // The partner's next slot is one of its own intervals after the campaign's last request.
        assert_eq!(pace.next_slot, Some(a.slot(2) + ms(25)));
        assert_eq!(limited.next_slot, Some(a.slot(2) + spacing));
        // Another campaign of the partner goes in the partner's slots at once; the limited one waits for its own.
        let other = pace.reserve_at(2, t0(), None, 40.0, TimeDelta::seconds(2));
        assert_eq!(other.first, a.slot(2) + ms(25));
        let b = pace.reserve_within(1, t0(), None, 40.0, TimeDelta::seconds(2), Some((&mut limited, five)));
        assert_eq!(b.first, a.slot(2) + spacing);
    }

    #[test]
    fn a_per_second_limit_is_spaced_with_room_for_arrival_jitter() {
        assert_eq!(campaign_pace(limits(None, Some(60), Some(100))), None, "minutes and hours are counted, not spaced");
        let pace = campaign_pace(limits(Some(5), Some(60), None)).unwrap();
        assert!((pace - 5.0 / 1.05).abs() < 1e-9, "{pace}");
    }

    /// Back-to-back reservations of a campaign limited per minute (and per hour) from `start`, at a partner of 40
    /// a second, for `seconds`: the slots granted.
    fn reserved_for(limits: CampaignLimits, start: DateTime<Utc>, seconds: i64) -> Vec<DateTime<Utc>> {
        let (mut pace, mut stream) = (SendPace::default(), CampaignStream::default());
        let mut slots = Vec::new();
        for k in 0..seconds * 10 {
            let now = start + ms(100 * k);
            let grant = pace.reserve_within(4, now, None, 40.0, TimeDelta::seconds(2), Some((&mut stream, limits)));
            slots.extend((0..grant.count).map(|i| grant.slot(i)));
        }
        slots
    }

    #[test]
    fn a_per_minute_limit_holds_in_every_utc_minute_and_its_last_instant_stays_free() {
        // From the middle of a minute: what the minute allows goes at the partner's pace, as the pacer releases a
        // backlog behind the minute's schedule; the rest waits for the next minute.
        let start = t0() + TimeDelta::seconds(30);
        let slots = reserved_for(limits(None, Some(240), None), start, 140);
        let mut per_minute: std::collections::BTreeMap<DateTime<Utc>, usize> = Default::default();
        for slot in &slots {
            *per_minute.entry(RateWindow::Minute.start_of(*slot)).or_default() += 1;
            let end = RateWindow::Minute.start_of(*slot) + TimeDelta::minutes(1);
            assert!(end - *slot > ARRIVAL_JITTER, "a slot at {slot}, in its minute's last 50 ms");
        }
        let counts: Vec<usize> = per_minute.values().copied().collect();
        assert_eq!(counts, vec![240, 240, 240], "{per_minute:?}");
        // The first minute's 240 took six seconds at the partner's 40 a second, not the minute.
        assert!(slots[239] - slots[0] < TimeDelta::seconds(7), "{} to {}", slots[0], slots[239]);
        assert_eq!(slots[240], t0() + TimeDelta::minutes(1), "the next minute starts the next slot");
    }

    #[test]
    fn a_per_hour_limit_counts_the_hour() {
        let slots = reserved_for(limits(None, None, Some(100)), t0() + TimeDelta::minutes(59), 70);
        let in_first_hour = slots.iter().filter(|s| **s < t0() + TimeDelta::hours(1)).count();
        assert_eq!((in_first_hour, slots.len()), (100, 200));
        assert_eq!(slots[100], t0() + TimeDelta::hours(1));
    }

    #[test]
    fn a_configured_partner_that_throttles_below_its_rate_is_sent_what_it_took() {
        let mut pace = SendPace::default();
        let ceiling = configured_pace(40, 1.0);
        assert_eq!(pace.configured_rate_at(t0(), 40, 1.0), ceiling, "nothing learned: the configured pace");
        assert_eq!(pace.configured_rate_at(t0(), 40, 0.5), configured_pace(40, 0.5), "under the allowance");
        // Sending at the pace, the partner took 20 in the last second and throttled.
        pace.reserve_at(40, t0(), None, ceiling, TimeDelta::seconds(1));
        pace.window.add(t0() + ms(999), 20);
        pace.on_throttled(t0() + ms(1200), t0() + ms(2200));
        let learned = 20.0 * BACKOFF_MARGIN;
        assert!((pace.configured_rate_at(t0() + ms(2200), 40, 1.0) - learned).abs() < 1e-9);
        // Probing upwards while backlogged, never past the configured pace; at it, the learning is forgotten.
        let mut now = t0() + ms(2200);
        for _ in 0..100 {
            now += PROBE_STEP;
            pace.reserve_at(1, now, None, 10.0, TimeDelta::seconds(1));
            let rate = pace.configured_rate_at(now, 40, 1.0);
            assert!(rate <= ceiling && rate >= learned);
        }
        assert!(!pace.learned && pace.rate.is_none(), "{pace:?}");
        assert_eq!(pace.configured_rate_at(now, 40, 1.0), ceiling);
    }

    #[test]
    fn a_configured_partner_regains_its_configured_rate_after_an_outages_blind_cuts() {
        let mut pace = SendPace::default();
        // Nothing accepted: each throttle of the outage halves the rate.
        for k in 0..6 {
            let at = t0() + TimeDelta::seconds(2 * k);
            pace.reserve_at(1, at, None, 38.0, TimeDelta::seconds(1));
            pace.on_throttled(at, at + TimeDelta::seconds(1));
        }
        let mut now = t0() + TimeDelta::seconds(12);
        let low = pace.configured_rate_at(now, 40, 1.0);
        assert!(low < 5.0, "{low}");
        // The partner answers again: within seconds of backlogged sending it is back at its configured pace.
        for _ in 0..12 {
            now += RECOVERY_STEP;
            pace.reserve_at(1, now, None, 10.0, TimeDelta::seconds(1));
            pace.configured_rate_at(now, 40, 1.0);
        }
        assert_eq!(pace.configured_rate_at(now, 40, 1.0), configured_pace(40, 1.0));
    }

    #[test]
    fn no_slot_before_retry_after() {
        let mut pace = SendPace::default();
        let g = pace.reserve(3, t0(), Some(t0() + TimeDelta::seconds(5)), 10.0, TimeDelta::seconds(20));
        assert_eq!(g.first, t0() + TimeDelta::seconds(5));
    }

    #[test]
    fn slow_start_doubles_while_backlogged_only() {
        let mut pace = SendPace::default();
        pace.reserve(100, t0(), None, 64.0, TimeDelta::seconds(20));
        assert_eq!(pace.rate, Some(64.0));
        pace.reserve(1, t0() + ms(500), None, 64.0, TimeDelta::seconds(20));
        assert_eq!(pace.rate, Some(256.0), "two doublings in 500 ms of backlog");
        // An idle minute: no growth for it.
        pace.reserve(1, t0() + TimeDelta::seconds(60), None, 64.0, TimeDelta::seconds(20));
        assert_eq!(pace.rate, Some(256.0));
    }

    #[test]
    fn a_throttle_sets_the_rate_to_what_the_partner_accepted() {
        let mut pace = SendPace::default();
        pace.reserve(1, t0(), None, 64.0, TimeDelta::seconds(20));
        pace.rate = Some(320.0);
        let now = t0() + ms(1400);
        // Sending at the pace: its next slot is now.
        pace.next_slot = Some(now);
        pace.window.add(t0() + ms(200), 150);
        pace.window.add(t0() + ms(1100), 200);
        pace.on_throttled(now, now + TimeDelta::seconds(1));
        assert!((pace.rate.unwrap() - 194.0).abs() < 1e-9, "{:?}", pace.rate);
        // Far above what the partner took (slow start overshot fivefold), the cut comes first: the next throttles
        // measure.
        let mut overshot = SendPace { rate: Some(1000.0), next_slot: Some(now), ..SendPace::default() };
        overshot.window = pace.window;
        overshot.on_throttled(now, now + TimeDelta::seconds(1));
        assert_eq!(overshot.rate, Some(500.0));
        assert!(pace.learned);
        assert_eq!(pace.learned_rate(), pace.rate);
        let g = pace.reserve(1, now, None, 64.0, TimeDelta::seconds(20));
        assert_eq!(g.first, now + TimeDelta::seconds(1), "the pause holds even without retry_after passed in");
    }

    #[test]
    fn a_lagging_count_never_raises_the_rate() {
        let mut pace = SendPace { rate: Some(50.0), learned: true, next_slot: Some(t0()), ..SendPace::default() };
        pace.window.add(t0(), 400);
        pace.on_throttled(t0(), t0() + TimeDelta::seconds(1));
        assert_eq!(pace.rate, Some(50.0));
        let mut silent = SendPace { rate: Some(50.0), next_slot: Some(t0()), ..SendPace::default() };
        silent.on_throttled(t0(), t0());
        assert_eq!(silent.rate, Some(25.0), "nothing accepted (an outage, say): cut, not set to nothing");
    }

    /// Sending far below its pace (the campaigns wanted one click a second), the bridge is throttled: what the
    /// partner accepted is what we asked, not what it takes. The rate is cut, not set to that demand, from
    /// which probing at 1 % per 10 s would take an hour to come back.
    #[test]
    fn a_throttle_while_sending_below_the_pace_cuts_the_rate_instead_of_learning_the_demand() {
        let mut pace = SendPace { rate: Some(100.0), learned: true, ..SendPace::default() };
        pace.next_slot = Some(t0() - TimeDelta::seconds(5));
        pace.window.add(t0() - ms(500), 1);
        pace.window.add(t0(), 1);
        pace.on_throttled(t0(), t0() + TimeDelta::seconds(1));
        assert_eq!(pace.rate, Some(100.0 * THROTTLE_CUT));
        // Sending in the last second, but at a trickle (one request a second against a pace of 100): the count is
        // our demand again, not what the partner takes.
        let mut trickle = SendPace { rate: Some(100.0), learned: true, next_slot: Some(t0()), ..SendPace::default() };
        trickle.window.add(t0() - ms(500), 1);
        trickle.on_throttled(t0(), t0() + TimeDelta::seconds(1));
        assert_eq!(trickle.rate, Some(100.0 * THROTTLE_CUT));
    }

    /// A 429 outage (the partner answering nothing but 429 for a few seconds) cuts the rate blindly, once per
    /// Retry-After pause: five pauses take a partner that took 80 a second down to 2.5. Those cuts measured
    /// nothing about its capacity; once it answers again the rate must come back to where it was within seconds
    /// of backlogged sending, not at the 1 % per 10 s a measured rate probes with (two minutes left a round's
    /// 200 clicks undelivered).
    #[test]
    fn the_rate_comes_back_quickly_after_blind_cuts_of_an_outage() {
        let mut pace = SendPace { rate: Some(80.0), learned: true, grown_at: Some(t0()), ..SendPace::default() };
        let mut now = t0();
        for _ in 0..5 {
            // Backlogged, nothing accepted (every answer a 429): blind cuts.
            pace.next_slot = Some(now);
            pace.on_throttled(now, now + TimeDelta::seconds(1));
            now += TimeDelta::seconds(1);
        }
        assert_eq!(pace.rate, Some(2.5));
        // The partner answers again; the bridge sends backlogged for 15 s.
        for _ in 0..150 {
            now += ms(100);
            let rate = pace.rate.unwrap();
            pace.reserve(1, now, None, 64.0, TimeDelta::seconds(20));
            pace.next_slot = Some(now);
            pace.window.add(now, (rate / 10.0).ceil() as u32);
        }
        let rate = pace.rate.unwrap();
        assert!((79.0..=80.0).contains(&rate), "back at {rate}/s, not at the 80/s before the outage");
        // Above the rate before the outage, growth is the slow probe again.
        pace.next_slot = Some(now + TimeDelta::seconds(10));
        pace.reserve(1, now + TimeDelta::seconds(10), None, 64.0, TimeDelta::seconds(20));
        assert!(pace.rate.unwrap() <= 80.0 * (1.0 + PROBE_GROWTH) + 1e-9, "{:?}", pace.rate);
    }

    /// A measured throttle (sending at the pace, the partner accepted a count) teaches its capacity: nothing to
    /// come back to quickly, only the slow probe.
    #[test]
    fn a_measured_throttle_leaves_only_the_slow_probe() {
        let mut pace = SendPace { rate: Some(80.0), learned: true, next_slot: Some(t0()), ..SendPace::default() };
        pace.next_slot = Some(t0());
        pace.on_throttled(t0(), t0() + TimeDelta::seconds(1));
        assert_eq!(pace.rate, Some(40.0), "blind cut: nothing accepted");
        let now = t0() + TimeDelta::seconds(2);
        pace.next_slot = Some(now);
        pace.window.add(now - ms(500), 30);
        pace.on_throttled(now, now + TimeDelta::seconds(1));
        assert!((pace.rate.unwrap() - 30.0 * BACKOFF_MARGIN).abs() < 1e-9, "{:?}", pace.rate);
        let later = now + TimeDelta::seconds(21);
        pace.next_slot = Some(later);
        pace.reserve(1, later, None, 64.0, TimeDelta::seconds(20));
        let expected = 30.0 * BACKOFF_MARGIN * (1.0 + PROBE_GROWTH).powi(2);
        assert!((pace.rate.unwrap() - expected).abs() < 1e-9, "{:?} against {expected}", pace.rate);
    }

    #[test]
    fn learned_rates_grow_slowly() {
        let mut pace = SendPace { rate: Some(100.0), learned: true, grown_at: Some(t0()), ..Default::default() };
        pace.next_slot = Some(t0() + TimeDelta::seconds(30));
        pace.reserve(1, t0() + TimeDelta::seconds(30), None, 64.0, TimeDelta::seconds(20));
        let rate = pace.rate.unwrap();
        assert!((rate - 100.0 * 1.01f64.powi(3)).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn the_initial_rate_follows_the_partners_concurrency() {
        assert_eq!(initial_rate(64), 640.0);
        assert_eq!(initial_rate(1), INITIAL_RATE_FLOOR);
    }

    #[test]
    fn the_window_counts_per_second() {
        let mut w = AcceptedWindow::default();
        w.add(t0() + ms(100), 3);
        w.add(t0() + ms(900), 2);
        w.add(t0() + ms(1100), 7);
        w.add(t0() + ms(800), 1); // late, for the previous second
        assert_eq!((w.accepted, w.previous), (7, 6));
        assert_eq!(w.rate_at(t0() + ms(1500)), 7);
        assert_eq!(w.rate_at(t0() + ms(2500)), 7, "the last full second");
        assert_eq!(w.rate_at(t0() + ms(3500)), 0, "too old");
        w.add(t0() + ms(5000), 1);
        assert_eq!((w.accepted, w.previous), (1, 0));
    }
}

/// The send timing's limits under any interleaving of reservations: several bridges, each with its own clock
/// skew, reserving chunks of slots from the one row at random moments, with throttles in between.
#[cfg(test)]
mod properties {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    struct Step {
        bridge: usize,
        after_ms: i64,
        want: usize,
        horizon_ms: i64,
        throttle: bool,
        campaign: usize,
    }

    fn step() -> impl Strategy<Value = Step> {
        (0..4_usize, 0..400_i64, 1..20_usize, 0..3_000_i64, proptest::bool::weighted(0.05), 0..3_usize).prop_map(
            |(bridge, after_ms, want, horizon_ms, throttle, campaign)| Step {
                bridge,
                after_ms,
                want,
                horizon_ms,
                throttle,
                campaign,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
            ..ProptestConfig::default()
        })]

        /// A partner configured at `rate` a second gets at most `rate` requests in any one-second window, whichever
        /// bridge sends them and however skewed their clocks, and none during a Retry-After pause; nor does any of
        /// its campaigns get more than its per-second limit in any second, or its per-minute or per-hour limit in
        /// a UTC minute or hour (nor a slot in such a window's last instant).
        #[test]
        fn configured_rates_hold_in_every_second_across_bridges(
            rate in 1..200_u32,
            skews in proptest::collection::vec(0..80_i64, 4),
            limits in proptest::collection::vec(
                (proptest::option::of(1..50_u32), proptest::option::of(1..600_u32), proptest::option::of(1..2_000_u32))
                    .prop_map(|(per_second, per_minute, per_hour)| CampaignLimits { per_second, per_minute, per_hour }),
                3,
            ),
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut pace = SendPace::default();
            let mut streams = [CampaignStream::default(); 3];
            let mut campaign_slots: [Vec<DateTime<Utc>>; 3] = Default::default();
            let mut now = Utc.with_ymd_and_hms(2026, 12, 2, 10, 59, 40).unwrap();
            let mut paused_until: Option<DateTime<Utc>> = None;
            let mut slots: Vec<DateTime<Utc>> = Vec::new();
            let send_rate = configured_pace(rate, 1.0);
            for s in steps {
                now += TimeDelta::milliseconds(s.after_ms);
                let seen = now - TimeDelta::milliseconds(skews[s.bridge]);
                if s.throttle {
                    let until = seen + TimeDelta::seconds(1);
                    pace.on_throttled(seen, until);
                    paused_until = paused_until.max(Some(until));
                    continue;
                }
                let horizon = TimeDelta::milliseconds(s.horizon_ms);
                let own = Some((&mut streams[s.campaign], limits[s.campaign]));
                let grant = pace.reserve_within(s.want, seen, paused_until, send_rate, horizon, own);
                prop_assert!(grant.count <= s.want);
                campaign_slots[s.campaign].extend((0..grant.count).map(|k| grant.slot(k)));
                for k in 0..grant.count {
                    let slot = grant.slot(k);
                    prop_assert!(paused_until.is_none_or(|until| slot >= until), "slot {slot} inside a pause");
                    prop_assert!(slot <= seen + TimeDelta::milliseconds(s.horizon_ms), "slot {slot} past the horizon");
                    slots.push(slot);
                }
            }
            slots.sort();
            for (i, first) in slots.iter().enumerate() {
                let in_second = slots[i..].iter().take_while(|t| **t < *first + TimeDelta::seconds(1)).count();
                prop_assert!(in_second <= rate as usize, "{in_second} slots in the second from {first} at {rate}/s");
            }
            for (slots, limits) in campaign_slots.iter_mut().zip(&limits) {
                slots.sort();
                if let Some(limit) = limits.per_second {
                    for (i, first) in slots.iter().enumerate() {
                        let within = slots[i..].iter().take_while(|t| **t < *first + TimeDelta::seconds(1)).count();
                        prop_assert!(within <= limit as usize, "{within} of a campaign's slots in a second at {limit}/s");
                    }
                }
                for (limit, window) in [(limits.per_minute, RateWindow::Minute), (limits.per_hour, RateWindow::Hour)] {
                    let Some(limit) = limit else { continue };
                    let mut counts: std::collections::BTreeMap<DateTime<Utc>, u32> = Default::default();
                    for slot in slots.iter() {
                        let start = window.start_of(*slot);
                        prop_assert!(start + window.length() - *slot > ARRIVAL_JITTER, "slot {slot} at its window's end");
                        *counts.entry(start).or_default() += 1;
                    }
                    prop_assert!(counts.values().all(|n| *n <= limit), "{counts:?} over {limit} per {window:?}");
                }
            }
        }
    }
}
