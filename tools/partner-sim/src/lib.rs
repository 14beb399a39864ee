//! A partner endpoint simulator for tests, the demo and benchmarks.
//!
//! Deliveries go to any path under `/p/{partner}/...` (any method). Each partner has a [`Behaviour`] (the
//! command-line defaults, or its own set through `POST /control/partners/{partner}`), so one simulator serves a
//! healthy, a slow and a throttling partner at once. For each request, in order:
//!
//! 1. **hidden rate limit**: beyond `rate_limit` requests admitted in the current wall-clock second (per partner),
//!    the answer is `429` with `Retry-After: <retry_after_s>` at once;
//! 2. **latency**: `latency_ms` of waiting;
//! 3. **signature**: with a `signing_secret`, a missing or wrong `X-ClickPacer-Signature` is answered `401`;
//! 4. **reset**: with probability `reset_rate` the request is processed (counted as accepted) and the connection is
//!    closed without an answer: the "partner accepted, client saw an error" case;
//! 5. **errors**: with probability `error_rate`, `500`;
//! 6. `status_override` if set (with `Retry-After` for 429 and 503), else `200` with `body`.
//!
//! `GET /arrivals` is the record a partner's rate limiter keeps: for each partner and each campaign (the `c` query
//! parameter, where ClickPacer's partner templates put the campaign id), the requests that arrived in each
//! wall-clock second, with how many of them were accepted and how many answered 429. Benchmarks judge pacing by it.
//!
//! `GET /report` (and `/report/{partner}`) says what was received: totals, per-status counts, idempotency keys
//! (distinct, repeated, and accepted more than once: the bridge must keep that at 0), the most requests in one
//! second, 429s, and the last requests for debugging. `POST /reset` clears the counts (behaviours stay).
//! Memory is bounded: counters, one entry per idempotency key, and the last `keep_last` requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

/// Most partners one simulator tracks (names come from request paths; this bounds memory).
pub const MAX_PARTNERS: usize = 1000;
/// Most campaigns the arrival record tracks.
pub const MAX_CAMPAIGNS: usize = 10_000;
/// Most seconds one partner's or campaign's arrival record keeps (the oldest are dropped first): a day.
pub const MAX_ARRIVAL_SECONDS: usize = 86_400;
/// Longest body kept in the recent-request list (bytes, before lossy UTF-8).
pub const MAX_RECORDED_BODY: usize = 4096;
/// How far a signature's timestamp may be from the simulator's clock.
pub const SIGNATURE_TOLERANCE_S: u64 = 300;

/// How a partner answers. Missing JSON fields take the values below (not the command-line defaults): a control
/// request states the partner's whole behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Delay before answering an admitted request.
    pub latency_ms: u64,
    /// Fraction of admitted requests answered 500, in `[0, 1]`.
    pub error_rate: f64,
    /// Requests admitted per wall-clock second; beyond it, 429. `None`: no limit.
    pub rate_limit: Option<u32>,
    /// Answer every admitted request with this status instead of 200.
    pub status_override: Option<u16>,
    /// Body of 2xx answers.
    pub body: String,
    /// `Retry-After` seconds on 429 (and on an overridden 429 or 503).
    pub retry_after_s: u64,
    /// Send `Retry-After` as an HTTP date (`retry_after_s` from now) instead of seconds.
    pub retry_after_as_date: bool,
    /// Fraction of admitted requests accepted and then answered by closing the connection, in `[0, 1]`.
    pub reset_rate: f64,
    /// When set, requests must carry a valid `X-ClickPacer-Signature` (else 401).
    pub signing_secret: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            rate_limit: None,
            status_override: None,
            body: "OK".into(),
            retry_after_s: 1,
            retry_after_as_date: false,
            reset_rate: 0.0,
            signing_secret: None,
        }
    }
}

impl Behaviour {
    /// Refuses fractions outside `[0, 1]` and statuses outside 100..=999.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) || !(0.0..=1.0).contains(&self.reset_rate) {
            return Err("error_rate and reset_rate must be within [0, 1]".into());
        }
        if self.status_override.is_some_and(|s| StatusCode::from_u16(s).is_err()) {
            return Err("status_override must be an HTTP status (100..=999)".into());
        }
        Ok(())
    }
}

/// The simulator's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The behaviour of partners without their own.
    pub defaults: Behaviour,
    /// How many recent requests the report lists.
    pub keep_last: usize,
    /// Seed for the error and reset draws (reproducible runs); `None` for a random one.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self { defaults: Behaviour::default(), keep_last: 100, seed: None }
    }
}

/// What the simulator received, overall or for one partner.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub total_requests: u64,
    /// Requests answered 2xx, plus those accepted and then reset.
    pub accepted: u64,
    /// Requests by status decided (a reset counts as its own pseudo-status 0).
    pub status_counts: BTreeMap<u16, u64>,
    pub distinct_idempotency_keys: u64,
    pub requests_without_idempotency_key: u64,
    /// Keys that came in more than one request (retries: normal).
    pub repeated_idempotency_keys: u64,
    /// Keys accepted more than once: a click delivered twice. The bridge must keep this at 0.
    pub duplicate_accepted_keys: u64,
    /// Accepted requests beyond the first for their key.
    pub duplicate_accepted_requests: u64,
    /// Most requests in one wall-clock second (`[s, s+1)`).
    pub max_requests_in_one_second: u64,
    /// Most requests in any sliding one-second interval (at least the above).
    pub max_requests_in_any_second: u64,
    /// Requests answered 429 by the hidden rate limit or an override.
    pub throttled: u64,
    pub bad_signatures: u64,
    /// Requests accepted and then answered by closing the connection.
    pub resets: u64,
    /// Requests whose client went away before the answer (usually a client timeout).
    pub abandoned: u64,
    /// Unix milliseconds of the first and last request.
    pub first_request_at_ms: Option<u64>,
    pub last_request_at_ms: Option<u64>,
    /// The last requests, oldest first.
    pub recent: Vec<RecordedRequest>,
    /// Per-partner reports (without their own `recent`), in `/report` only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partners: BTreeMap<String, Report>,
}

/// Requests that arrived in one wall-clock second, and what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondCounts {
    pub requests: u64,
    /// Answered 2xx, or accepted and then reset.
    pub accepted: u64,
    /// Answered 429.
    pub throttled: u64,
}

/// Arrivals per unix second, per partner and per campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrivals {
    pub partners: BTreeMap<String, BTreeMap<u64, SecondCounts>>,
    /// Keyed by the request's `c` query parameter; requests without one are counted for their partner only.
    pub campaigns: BTreeMap<String, BTreeMap<u64, SecondCounts>>,
}

impl Arrivals {
    fn second<'a>(
        series: &'a mut BTreeMap<String, BTreeMap<u64, SecondCounts>>,
        name: &str,
        second: u64,
        room: bool,
    ) -> Option<&'a mut SecondCounts> {
        if !series.contains_key(name) && !room {
            return None;
        }
        let seconds = series.entry(name.to_owned()).or_default();
        if !seconds.contains_key(&second) && seconds.len() >= MAX_ARRIVAL_SECONDS {
            seconds.pop_first();
        }
        Some(seconds.entry(second).or_default())
    }

    /// The counts of `second` for the partner and (when tagged) the campaign.
    fn counts(&mut self, partner: &str, campaign: Option<&str>, second: u64) -> Vec<&mut SecondCounts> {
        let room = self.campaigns.len() < MAX_CAMPAIGNS;
        let mut out: Vec<&mut SecondCounts> = Vec::with_capacity(2);
        out.extend(Self::second(&mut self.partners, partner, second, true));
        if let Some(campaign) = campaign {
            out.extend(Self::second(&mut self.campaigns, campaign, second, room));
        }
        out
    }
}

/// One request, for debugging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub at_ms: u64,
    pub partner: String,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub status: u16,
    pub idempotency_key: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// The body as lossy UTF-8, cut to [`MAX_RECORDED_BODY`] bytes.
    pub body: String,
    pub body_len: usize,
}

/// Per-second counts: the current wall-clock second, and a sliding window.
#[derive(Debug, Default)]
struct Rates {
    second: u64,
    in_second: u64,
    max_in_second: u64,
    window: VecDeque<u64>,
    max_in_window: u64,
}

impl Rates {
    fn record(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.in_second = 0;
        }
        self.in_second += 1;
        self.max_in_second = self.max_in_second.max(self.in_second);
        while self.window.front().is_some_and(|&t| t + 1000 <= now_ms) {
            self.window.pop_front();
        }
        self.window.push_back(now_ms);
        self.max_in_window = self.max_in_window.max(self.window.len() as u64);
    }
}

#[derive(Debug, Default)]
struct Counters {
    report: Report,
    rates: Rates,
}

impl Counters {
    fn arrive(&mut self, now_ms: u64) {
        let r = &mut self.report;
        r.total_requests += 1;
        r.first_request_at_ms.get_or_insert(now_ms);
        r.last_request_at_ms = Some(now_ms);
        self.rates.record(now_ms);
    }

    fn snapshot(&self) -> Report {
        Report {
            max_requests_in_one_second: self.rates.max_in_second,
            max_requests_in_any_second: self.rates.max_in_window,
            recent: Vec::new(),
            partners: BTreeMap::new(),
            ..self.report.clone()
        }
    }
}

#[derive(Debug, Default)]
struct KeyStats {
    requests: u32,
    accepted: u32,
    /// When the first few acceptances were recorded (ms since the epoch).
    accepted_at: Vec<u64>,
}

/// How many acceptance instants a key keeps: enough to tell a repeat after a confirmed delivery from the repeats
/// an ambiguous outcome forces.
const ACCEPTANCES_KEPT: usize = 8;

/// A key the partner accepted more than once, with when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatedAcceptance {
    pub partner: String,
    pub idempotency_key: String,
    pub accepted_at_ms: Vec<u64>,
}

#[derive(Debug, Default)]
struct PartnerState {
    counters: Counters,
    keys: HashMap<String, KeyStats>,
    /// The hidden rate limit's current second and the requests admitted in it.
    limit_second: u64,
    limit_admitted: u32,
}

#[derive(Debug)]
struct Inner {
    behaviours: HashMap<String, Behaviour>,
    partners: BTreeMap<String, PartnerState>,
    global: Counters,
    recent: VecDeque<RecordedRequest>,
    arrivals: Arrivals,
    rng: fastrand::Rng,
}

/// The simulator's state: behaviours and what it received. Share it with [`router`] or [`serve_simulator`].
#[derive(Debug)]
pub struct Simulator {
    config: Config,
    inner: Mutex<Inner>,
}

/// What the simulator decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Answer(u16),
    Reset,
}

impl Simulator {
    pub fn new(config: Config) -> Arc<Self> {
        let rng = config.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        let inner = Inner {
            behaviours: HashMap::new(),
            partners: BTreeMap::new(),
            global: Counters::default(),
            recent: VecDeque::new(),
            arrivals: Arrivals::default(),
            rng,
        };
        Arc::new(Self { config, inner: Mutex::new(inner) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters that are still counters: keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The partner's behaviour: its own, or the defaults.
    pub fn behaviour(&self, partner: &str) -> Behaviour {
        self.lock().behaviours.get(partner).cloned().unwrap_or_else(|| self.config.defaults.clone())
    }

    /// Sets a partner's whole behaviour.
    pub fn set_behaviour(&self, partner: &str, behaviour: Behaviour) -> Result<(), String> {
        behaviour.validate()?;
        let mut inner = self.lock();
        if !inner.behaviours.contains_key(partner) && inner.behaviours.len() >= MAX_PARTNERS {
            return Err("too many partners".into());
        }
        inner.behaviours.insert(partner.to_owned(), behaviour);
        Ok(())
    }

    /// Puts a partner back on the defaults.
    pub fn clear_behaviour(&self, partner: &str) {
        self.lock().behaviours.remove(partner);
    }

    /// Forgets everything received (behaviours stay).
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.partners.clear();
        inner.global = Counters::default();
        inner.recent.clear();
        inner.arrivals = Arrivals::default();
    }

    /// Requests per second, per partner and per campaign, since the start or the last reset.
    pub fn arrivals(&self) -> Arrivals {
        self.lock().arrivals.clone()
    }

    /// Everything received, with a report per partner.
    /// Every key accepted more than once, with the instants of its acceptances.
    pub fn repeated_acceptances(&self) -> Vec<RepeatedAcceptance> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (partner, state) in &inner.partners {
            for (key, stats) in state.keys.iter().filter(|(_, s)| s.accepted > 1) {
                out.push(RepeatedAcceptance {
                    partner: partner.clone(),
                    idempotency_key: key.clone(),
                    accepted_at_ms: stats.accepted_at.clone(),
                });
            }
        }
        out
    }

    pub fn report(&self) -> Report {
        let inner = self.lock();
        let mut report = inner.global.snapshot();
        for (name, partner) in &inner.partners {
            let r = partner_snapshot(partner);
            report.distinct_idempotency_keys += r.distinct_idempotency_keys;
            report.repeated_idempotency_keys += r.repeated_idempotency_keys;
            report.duplicate_accepted_keys += r.duplicate_accepted_keys;
            report.partners.insert(name.clone(), r);
        }
        report.recent = inner.recent.iter().cloned().collect();
        report
    }

    /// What one partner received (`None` if nothing).
    pub fn partner_report(&self, partner: &str) -> Option<Report> {
        let inner = self.lock();
        let mut report = partner_snapshot(inner.partners.get(partner)?);
        report.recent = inner.recent.iter().filter(|r| r.partner == partner).cloned().collect();
        Some(report)
    }

    /// Counts the request's arrival, applies the rate limit and draws the outcome.
    fn decide(
        &self,
        partner: &str,
        campaign: Option<&str>,
        behaviour: &Behaviour,
        now_ms: u64,
    ) -> Result<(Decision, bool), ()> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !inner.partners.contains_key(partner) && inner.partners.len() >= MAX_PARTNERS {
            return Err(());
        }
        let state = inner.partners.entry(partner.to_owned()).or_default();
        inner.global.arrive(now_ms);
        state.counters.arrive(now_ms);
        for counts in inner.arrivals.counts(partner, campaign, now_ms / 1000) {
            counts.requests += 1;
        }
        if let Some(limit) = behaviour.rate_limit {
            let second = now_ms / 1000;
            if state.limit_second != second {
                state.limit_second = second;
                state.limit_admitted = 0;
            }
            if state.limit_admitted >= limit {
                return Ok((Decision::Answer(429), false));
            }
            state.limit_admitted += 1;
        }
        let reset = behaviour.reset_rate > 0.0 && inner.rng.f64() < behaviour.reset_rate;
        let error = behaviour.error_rate > 0.0 && inner.rng.f64() < behaviour.error_rate;
        let decision = match (reset, error, behaviour.status_override) {
            (true, _, _) => Decision::Reset,
            (_, true, _) => Decision::Answer(500),
            (_, _, Some(status)) => Decision::Answer(status),
            _ => Decision::Answer(200),
        };
        Ok((decision, true))
    }

    /// Records the final decision of a request that arrived earlier.
    fn record(&self, request: &Received<'_>, decision: Decision, now_ms: u64) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let status = match decision {
            Decision::Answer(s) => s,
            Decision::Reset => 0,
        };
        let accepted = matches!(decision, Decision::Reset) || (200..300).contains(&status);
        let Some(state) = inner.partners.get_mut(request.partner) else { return };
        for counts in inner.arrivals.counts(request.partner, request.campaign.as_deref(), request.arrived_ms / 1000) {
            counts.accepted += u64::from(accepted);
            counts.throttled += u64::from(status == 429);
        }
        for report in [&mut inner.global.report, &mut state.counters.report] {
            *report.status_counts.entry(status).or_default() += 1;
            report.accepted += u64::from(accepted);
            report.throttled += u64::from(status == 429);
            report.bad_signatures += u64::from(status == 401 && request.bad_signature);
            report.resets += u64::from(decision == Decision::Reset);
        }
        match request.key.as_deref() {
            None => {
                inner.global.report.requests_without_idempotency_key += 1;
                state.counters.report.requests_without_idempotency_key += 1;
            }
            Some(key) => {
                let stats = state.keys.entry(key.to_owned()).or_default();
                stats.requests += 1;
                if accepted {
                    stats.accepted += 1;
                    if stats.accepted_at.len() < ACCEPTANCES_KEPT {
                        stats.accepted_at.push(now_ms);
                    }
                    if stats.accepted > 1 {
                        inner.global.report.duplicate_accepted_requests += 1;
                        state.counters.report.duplicate_accepted_requests += 1;
                    }
                }
            }
        }
        if self.config.keep_last > 0 {
            while inner.recent.len() >= self.config.keep_last {
                inner.recent.pop_front();
            }
            inner.recent.push_back(request.recorded(status, now_ms));
        }
    }

    fn abandoned(&self, partner: &str) {
        let mut inner = self.lock();
        inner.global.report.abandoned += 1;
        if let Some(state) = inner.partners.get_mut(partner) {
            state.counters.report.abandoned += 1;
        }
    }
}

fn partner_snapshot(partner: &PartnerState) -> Report {
    let mut report = partner.counters.snapshot();
    report.distinct_idempotency_keys = partner.keys.len() as u64;
    report.repeated_idempotency_keys = partner.keys.values().filter(|k| k.requests > 1).count() as u64;
    report.duplicate_accepted_keys = partner.keys.values().filter(|k| k.accepted > 1).count() as u64;
    report
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One delivery request as received.
struct Received<'a> {
    partner: &'a str,
    campaign: Option<String>,
    arrived_ms: u64,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    key: Option<String>,
    bad_signature: bool,
}

impl Received<'_> {
    fn recorded(&self, status: u16, at_ms: u64) -> RecordedRequest {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| *v = format!("{v}, {value}"))
                .or_insert_with(|| value.into_owned());
        }
        RecordedRequest {
            at_ms,
            partner: self.partner.to_owned(),
            method: self.method.as_str().to_owned(),
            uri: self.uri.path_and_query().map_or_else(|| self.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            status,
            idempotency_key: self.key.clone(),
            headers,
            body: String::from_utf8_lossy(&self.body[..self.body.len().min(MAX_RECORDED_BODY)]).into_owned(),
            body_len: self.body.len(),
        }
    }
}

/// The connection a request came in on: notified to close it without an answer.
#[derive(Clone)]
struct ConnectionAbort(Arc<Notify>);

/// Counts a request whose handler was dropped before it answered (the client went away).
struct AbandonGuard<'a> {
    sim: &'a Simulator,
    partner: &'a str,
    done: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.sim.abandoned(self.partner);
        }
    }
}

#[derive(Deserialize)]
struct PartnerPath {
    partner: String,
}

async fn deliver(
    State(sim): State<Arc<Simulator>>,
    Path(PartnerPath { partner }): Path<PartnerPath>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    abort: Option<Extension<ConnectionAbort>>,
    body: Bytes,
) -> Response {
    let behaviour = sim.behaviour(&partner);
    let campaign = campaign_of(&uri);
    let arrived_ms = now_ms();
    let Ok((decision, admitted)) = sim.decide(&partner, campaign.as_deref(), &behaviour, arrived_ms) else {
        return (StatusCode::NOT_FOUND, "too many partners\n").into_response();
    };
    let mut guard = AbandonGuard { sim: &sim, partner: &partner, done: false };
    if admitted && behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    let key = headers.get("idempotency-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let bad_signature = admitted
        && behaviour
            .signing_secret
            .as_deref()
            .is_some_and(|secret| !signature_ok(secret, &method, &uri, &headers, &body));
    let decision = if bad_signature { Decision::Answer(401) } else { decision };
    let received = Received {
        partner: &partner,
        campaign,
        arrived_ms,
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
        key,
        bad_signature,
    };
    sim.record(&received, decision, now_ms());
    guard.done = true;
    match decision {
        Decision::Reset => match abort {
            Some(Extension(ConnectionAbort(notify))) => {
                notify.notify_one();
                // The connection task drops this future with the connection.
                std::future::pending::<Response>().await
            }
            None => (StatusCode::INTERNAL_SERVER_ERROR, "reset requested but not served by serve_simulator\n")
                .into_response(),
        },
        Decision::Answer(status) => answer(status, &behaviour),
    }
}

/// The campaign a request is for: its `c` query parameter, percent-decoded.
fn campaign_of(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let value = query.split('&').find_map(|pair| pair.strip_prefix("c="))?;
    let decoded = percent_decode(value);
    (!decoded.is_empty()).then_some(decoded)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(status: u16, behaviour: &Behaviour) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match status {
        200..=299 => behaviour.body.clone(),
        401 => "bad signature\n".into(),
        429 => "rate limited\n".into(),
        500 => "simulated error\n".into(),
        _ => format!("status {status}\n"),
    };
    let mut response = (code, body).into_response();
    if status == 429 || status == 503 {
        let value = if behaviour.retry_after_as_date {
            let at = SystemTime::now() + Duration::from_secs(behaviour.retry_after_s);
            HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from(behaviour.retry_after_s))
        } else {
            HeaderValue::from(behaviour.retry_after_s)
        };
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Checks `X-ClickPacer-Signature: t=<unix>,v1=<hex HMAC-SHA256("<t>." + payload)>` where the payload is the body,
/// or the path and query for GET and HEAD. Written independently of ClickPacer's signer, so tests check one
/// against the other.
fn signature_ok(secret: &str, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> bool {
    let Some(header) = headers.get("x-clickpacer-signature").and_then(|v| v.to_str().ok()) else { return false };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else { return false };
    if (now_ms() / 1000).abs_diff(timestamp) > SIGNATURE_TOLERANCE_S {
        return false;
    }
    let payload: &[u8] = if method == Method::GET || method == Method::HEAD {
        uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()).as_bytes()
    } else {
        body
    };
    signatures.iter().any(|signature| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(payload);
        mac.verify_slice(signature).is_ok()
    })
}

async fn report(State(sim): State<Arc<Simulator>>) -> Json<Report> {
    Json(sim.report())
}

async fn partner_report(
    State(sim): State<Arc<Simulator>>,
    Path(PartnerPath { partner }): Path<PartnerPath>,
) -> Json<Report> {
    Json(sim.partner_report(&partner).unwrap_or_default())
}

async fn arrivals(State(sim): State<Arc<Simulator>>) -> Json<Arrivals> {
    Json(sim.arrivals())
}

async fn reset(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

async fn get_behaviour(
    State(sim): State<Arc<Simulator>>,
    Path(PartnerPath { partner }): Path<PartnerPath>,
) -> Json<Behaviour> {
    Json(sim.behaviour(&partner))
}

async fn set_behaviour(
    State(sim): State<Arc<Simulator>>,
    Path(PartnerPath { partner }): Path<PartnerPath>,
    Json(behaviour): Json<Behaviour>,
) -> Response {
    match sim.set_behaviour(&partner, behaviour) {
        Ok(()) => Json(sim.behaviour(&partner)).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    }
}

async fn clear_behaviour(
    State(sim): State<Arc<Simulator>>,
    Path(PartnerPath { partner }): Path<PartnerPath>,
) -> StatusCode {
    sim.clear_behaviour(&partner);
    StatusCode::NO_CONTENT
}

/// The simulator's routes.
pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route("/p/{partner}", any(deliver))
        .route("/p/{partner}/{*rest}", any(deliver))
        .route("/report", get(report))
        .route("/report/{partner}", get(partner_report))
        .route("/arrivals", get(arrivals))
        .route("/reset", post(reset))
        .route("/control/partners/{partner}", get(get_behaviour).post(set_behaviour).delete(clear_behaviour))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(sim)
}

/// Serves a new simulator with `config` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, config: Config) -> std::io::Result<()> {
    serve_simulator(listener, Simulator::new(config), std::future::pending()).await
}

/// Serves `sim` on `listener` until `shutdown` completes; open connections are closed then.
pub async fn serve_simulator(
    listener: TcpListener,
    sim: Arc<Simulator>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = router(sim);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    eprintln!("partner-sim: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        connections.spawn(async move {
            let abort = Arc::new(Notify::new());
            let service = hyper::service::service_fn({
                let abort = abort.clone();
                move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(ConnectionAbort(abort.clone()));
                    let app = app.clone();
                    async move { app.oneshot(request).await }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = abort.notified() => {}
            }
        });
    }
}

/// A simulator running in this process (for tests): dropped, it stops.
pub struct Running {
    pub addr: SocketAddr,
    pub sim: Arc<Simulator>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The delivery URL prefix of a partner: `http://127.0.0.1:PORT/p/NAME`.
    pub fn partner_url(&self, partner: &str) -> String {
        format!("http://{}/p/{partner}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a simulator on `127.0.0.1` at a free port, in this process.
pub async fn spawn(config: Config) -> std::io::Result<Running> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let sim = Simulator::new(config);
    let task = tokio::spawn(serve_simulator(listener, sim.clone(), std::future::pending()));
    Ok(Running { addr, sim, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sliding_seconds() {
        let mut rates = Rates::default();
        // Ten requests at the end of one second, ten at the start of the next.
        for i in 0..10 {
            rates.record(10_900 + i * 10);
        }
        for i in 0..10 {
            rates.record(11_000 + i * 10);
        }
        assert_eq!(rates.max_in_second, 10);
        assert_eq!(rates.max_in_window, 20);
        rates.record(12_500);
        assert_eq!(rates.window.len(), 1, "old timestamps leave the window");
    }
}
