//! What a partner's answer means.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx, and the body contains `success_body_match` (when set) | delivered |
//! | 2xx whose body lacks the match | permanent: the partner took the request and said no in its body (`ERROR`, `duplicate`, ...); sending it again would not change that and could double-count it if the match was just worded differently, so it is dead-lettered with the body for a person to look at |
//! | 429, 503 | retry, throttled, not before Retry-After (delta-seconds or HTTP-date) |
//! | other 5xx, 408, 425 | retry |
//! | other 4xx, 1xx, 3xx (redirects are never followed), codes outside 100..=599 | permanent |
//! | connect / DNS / TLS failure | retry (the request never left) |
//! | timeout or broken connection after the request was written | retry, **ambiguous**: the partner may have acted on it; the same idempotency key goes with the retry |

use chrono::{DateTime, TimeDelta, Utc};

/// The fate of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retry {
        /// Not before this instant (the partner's Retry-After); the backoff may ask for later still.
        after: Option<DateTime<Utc>>,
        /// The partner is shedding load (429 or 503): slow the whole partner down, not just this click.
        throttled: bool,
        /// The request may have reached the partner (timeout or reset after it was written).
        ambiguous: bool,
        /// What happened, for the delivery record.
        reason: String,
    },
    Permanent(String),
}

impl Outcome {
    pub fn is_delivered(&self) -> bool {
        matches!(self, Self::Delivered)
    }

    /// The error to record, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Delivered => None,
            Self::Retry { reason, .. } => Some(reason),
            Self::Permanent(reason) => Some(reason),
        }
    }

    fn retry(reason: String) -> Self {
        Self::Retry { after: None, throttled: false, ambiguous: false, reason }
    }
}

/// The longest Retry-After honoured; a larger one (or an absurd date) is cut to this.
pub const MAX_RETRY_AFTER: TimeDelta = TimeDelta::hours(24);

/// Classifies an HTTP answer. `retry_after` is the raw `Retry-After` header; `success_body_match` the partner's
/// required body substring (an empty one always matches).
pub fn classify(
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
    success_body_match: Option<&str>,
    now: DateTime<Utc>,
) -> Outcome {
    match status {
        200..=299 => match success_body_match {
            Some(needle) if !contains(body, needle.as_bytes()) => {
                Outcome::Permanent(format!("HTTP {status} but the body does not contain {needle:?}: {}", excerpt(body)))
            }
            _ => Outcome::Delivered,
        },
        429 | 503 => Outcome::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            throttled: true,
            ambiguous: false,
            reason: format!("HTTP {status}: {}", excerpt(body)),
        },
        408 | 425 | 500..=599 => Outcome::retry(format!("HTTP {status}: {}", excerpt(body))),
        300..=399 => Outcome::Permanent(format!("HTTP {status}: redirects are not followed")),
        _ => Outcome::Permanent(format!("HTTP {status}: {}", excerpt(body))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The start of a body, for error messages: at most 200 bytes, lossy UTF-8.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    if body.is_empty() {
        return "(empty body)".into();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = text.trim();
    if body.len() > MAX { format!("{text}...") } else { text.to_owned() }
}

/// `Retry-After` as an instant: delta-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`), at most
/// [`MAX_RETRY_AFTER`] ahead. `None` when it is malformed or already past.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to parse is "very long": cut to the maximum.
        value.parse::<i64>().ok().and_then(TimeDelta::try_seconds).unwrap_or(MAX_RETRY_AFTER)
    } else {
        let at: DateTime<Utc> = httpdate::parse_http_date(value).ok().map(DateTime::<Utc>::from)?;
        at.signed_duration_since(now)
    };
    (delay > TimeDelta::zero()).then(|| now + delay.min(MAX_RETRY_AFTER))
}

/// A failure below HTTP: no status to classify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Resolving, connecting or the TLS handshake failed: the partner never saw the request.
    Connect(String),
    /// No complete answer within the partner's timeout.
    Timeout {
        /// Whether the request had been (even partly) written when time ran out.
        request_sent: bool,
    },
    /// The connection was reset or closed, or the answer was malformed.
    Broken { request_sent: bool, detail: String },
    /// The destination is refused by the address policy (see [`super::ssrf`]).
    Forbidden(String),
}

/// Classifies a transport failure: retryable, and ambiguous when the request may have reached the partner.
pub fn classify_transport(error: &TransportError) -> Outcome {
    let retry = |ambiguous: bool, reason: String| Outcome::Retry { after: None, throttled: false, ambiguous, reason };
    match error {
        TransportError::Connect(detail) => retry(false, format!("connection failed: {detail}")),
        TransportError::Timeout { request_sent: true } => {
            retry(true, "timed out after the request was sent (ambiguous)".into())
        }
        TransportError::Timeout { request_sent: false } => retry(false, "timed out before the request was sent".into()),
        TransportError::Broken { request_sent: true, detail } => {
            retry(true, format!("connection broken after the request was sent (ambiguous): {detail}"))
        }
        TransportError::Broken { request_sent: false, detail } => retry(false, format!("connection broken: {detail}")),
        TransportError::Forbidden(detail) => Outcome::Permanent(format!("destination refused: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
    }

    fn c(status: u16) -> Outcome {
        classify(status, b"", None, None, now())
    }

    #[test]
    fn two_hundreds_are_delivered_when_the_body_matches() {
        assert_eq!(c(200), Outcome::Delivered);
        assert_eq!(c(204), Outcome::Delivered);
        assert_eq!(classify(200, b"status: OK\n", None, Some("OK"), now()), Outcome::Delivered);
        assert_eq!(classify(200, b"", None, Some(""), now()), Outcome::Delivered);
        let Outcome::Permanent(reason) = classify(200, b"ERROR bad click", None, Some("OK"), now()) else {
            panic!("a 2xx without the match is permanent")
        };
        assert!(reason.contains("does not contain \"OK\"") && reason.contains("ERROR bad click"), "{reason}");
    }

    #[test]
    fn client_errors_are_permanent_except_timeouts_and_throttling() {
        for status in [400, 401, 403, 404, 409, 410, 413, 422, 451] {
            assert!(matches!(c(status), Outcome::Permanent(_)), "{status}");
        }
        for status in [408, 425] {
            assert!(matches!(c(status), Outcome::Retry { throttled: false, ambiguous: false, after: None, .. }));
        }
        for status in [500, 502, 504, 599] {
            assert!(matches!(c(status), Outcome::Retry { throttled: false, .. }), "{status}");
        }
        for status in [301, 302, 307, 308, 100, 0, 600, 999] {
            assert!(matches!(c(status), Outcome::Permanent(_)), "{status}");
        }
        assert!(c(302).reason().unwrap().contains("redirects are not followed"));
    }

    #[test]
    fn throttling_honours_retry_after() {
        let Outcome::Retry { after, throttled, .. } = classify(429, b"slow down", Some("120"), None, now()) else {
            panic!()
        };
        assert!(throttled);
        assert_eq!(after, Some(now() + TimeDelta::seconds(120)));
        let date = "Sat, 28 Nov 2026 10:05:00 GMT";
        let Outcome::Retry { after, throttled, .. } = classify(503, b"", Some(date), None, now()) else { panic!() };
        assert!(throttled);
        assert_eq!(after, Some(now() + TimeDelta::minutes(5)));
        assert!(matches!(c(429), Outcome::Retry { throttled: true, after: None, .. }));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 ", now()), Some(now() + TimeDelta::seconds(7)));
        assert_eq!(parse_retry_after("0", now()), None);
        assert_eq!(parse_retry_after("-5", now()), None);
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
        assert_eq!(parse_retry_after("Sat, 28 Nov 2026 09:00:00 GMT", now()), None, "a past date means no wait");
        assert_eq!(parse_retry_after("99999999999999999999999", now()), Some(now() + MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now()), Some(now() + MAX_RETRY_AFTER));
        // The obsolete RFC 850 and asctime forms are HTTP-dates too.
        assert_eq!(parse_retry_after("Saturday, 28-Nov-26 10:00:30 GMT", now()), Some(now() + TimeDelta::seconds(30)));
        assert_eq!(parse_retry_after("Sat Nov 28 10:00:30 2026", now()), Some(now() + TimeDelta::seconds(30)));
    }

    #[test]
    fn transport_errors_are_retried_and_ambiguity_is_recorded() {
        let o = classify_transport(&TransportError::Connect("connection refused".into()));
        assert!(matches!(o, Outcome::Retry { ambiguous: false, throttled: false, .. }));
        let o = classify_transport(&TransportError::Timeout { request_sent: true });
        assert!(matches!(o, Outcome::Retry { ambiguous: true, .. }));
        let o = classify_transport(&TransportError::Timeout { request_sent: false });
        assert!(matches!(o, Outcome::Retry { ambiguous: false, .. }));
        let o = classify_transport(&TransportError::Broken { request_sent: true, detail: "reset".into() });
        assert!(matches!(o, Outcome::Retry { ambiguous: true, .. }));
        assert!(o.reason().unwrap().contains("ambiguous"));
        let o = classify_transport(&TransportError::Forbidden("127.0.0.1 is loopback".into()));
        assert!(matches!(o, Outcome::Permanent(_)));
    }

    #[test]
    fn long_bodies_are_cut_in_reasons() {
        let body = vec![b'x'; 5000];
        let reason = classify(500, &body, None, None, now()).reason().unwrap().to_owned();
        assert!(reason.len() < 300 && reason.ends_with("..."), "{reason}");
    }
}
